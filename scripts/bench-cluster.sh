#!/usr/bin/env bash
# Single Redis vs the local cluster, alternated, one run.
# Build first: cargo bench --bench oversell --no-run; then set B to the executable it names.
B=${B:?set B to the oversell bench executable}
run() { echo "== $*"; timeout 900 $B --bench --target inprocess "$@" 2>&1 | grep -E "^\| inprocess|^OK|FAIL|violation|Error|error:" | grep -v WARN; }
for round in 1 2; do
  run --skus 1 --stock 20000 --requests 50000 --concurrency 256
  run --skus 1 --stock 20000 --requests 50000 --concurrency 256 --redis-cluster
  run --skus 10000 --stock 10 --requests 50000 --concurrency 256
  run --skus 10000 --stock 10 --requests 50000 --concurrency 256 --redis-cluster
done
run --skus 1000 --stock 1000 --lines 3 --requests 30000 --concurrency 256
run --skus 1000 --stock 1000 --lines 3 --requests 30000 --concurrency 256 --redis-cluster
run --skus 1 --stock 20000 --requests 50000 --concurrency 256 --redis-cluster --set redis.wait_replicas=1
run --skus 10000 --stock 10 --requests 50000 --concurrency 256 --redis-cluster --set redis.wait_replicas=1
