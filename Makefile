# Quick start on a fresh Debian machine (root):  make run   |   make test
SHELL := /bin/bash
export DATABASE_URL ?= mysql://inventory:inventory@127.0.0.1:3306/inventory
export REDIS_URL ?= redis://127.0.0.1:6379
export KAFKA_BROKERS ?= 127.0.0.1:9092

.PHONY: run run-cluster cluster test alert-rules services fuzz-tools lint fmt clippy clean-test-dbs stop-services bench bench-all bench-flash bench-http bench-sustain bench-expiry bench-reads bench-reconcile sim bench-faults

## Install and start Redis + MariaDB when missing, build, migrate, load demo stock, serve on :8082.
run: services
	cargo build --release --bin inventory-service --bin inventory-events
	@bash scripts/dev-tokens.sh
	. .data/dev-tokens.env && \
	INVENTORY__AUTH__ADMIN_TOKENS=$$ADMIN_TOKEN INVENTORY__AUTH__SERVICE_TOKENS=$$SERVICE_TOKEN \
	INVENTORY__DEMO__SEED_STOCK=true INVENTORY__KAFKA__ENABLED=true INVENTORY__KAFKA__BROKERS=$(KAFKA_BROKERS) \
	  ./target/release/inventory-service --config config/local.toml

## Everything CI checks: formatting, clippy with -D warnings, all tests against real stores
## (fault injection and schemathesis fuzzing included).
# Prometheus is installed for the tests too (promtool and the alerting test).
test: export PROMETHEUS := 1
# Chromium and chromium-driver for the console's browser tests (tests/api/browser.rs).
test: export BROWSER := 1
test: services cluster fuzz-tools lint clean-test-dbs alert-rules
	cargo test --all-targets --features fault-injection -- --test-threads=4

## The alert rules' unit tests (promtool; deploy/prometheus/alerts_test.yml).
alert-rules: export PROMETHEUS := 1
alert-rules: services
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

services:
	@bash scripts/services.sh

## The local Redis Cluster (6 nodes on 127.0.0.1:7000-7005, data under .data/cluster).
cluster: services
	@bash scripts/redis-cluster.sh

## `make run` against the local Redis Cluster instead of the single Redis.
run-cluster: cluster
	INVENTORY__REDIS__CLUSTER_URLS=redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002 $(MAKE) run

fuzz-tools:
	@bash scripts/fuzz-tools.sh

lint: fmt clippy

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features fault-injection -- -D warnings

# Each test creates its own database (inventory_t_*); drop the ones earlier runs left behind.
clean-test-dbs:
	@mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u inventory -pinventory -N -e \
	  "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'inventory\_t\_%'" \
	  | while read -r db; do mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u inventory -pinventory -e "DROP DATABASE \`$$db\`"; done

stop-services:
	-bash scripts/redis-cluster.sh stop
	-redis-cli -p 6379 shutdown nosave
	-[ -f .data/mariadb.pid ] && kill $$(cat .data/mariadb.pid)
	-[ -f .data/tansu.pid ] && kill $$(cat .data/tansu.pid)

## Oversell benchmark (release build): hot SKU through the in-process engine.
bench: services
	cargo bench --bench oversell -- --target inprocess --skus 1 --stock 20000 --requests 50000 --concurrency 256

## Flash sale: 1 SKU x 10,000 units, 500,000 orders (98% refused).
bench-flash: services
	cargo bench --bench oversell -- --target inprocess --flash-sale

## HTTP through wrk against a release service (ceiling: /health on the same instance).
bench-http: services
	bash scripts/bench-http.sh

## 60 s at a fixed offered rate on 10,000 SKUs: does the DB keep up?
bench-sustain: services
	cargo bench --bench oversell -- --target inprocess --skus 10000 --rate 7000 --sustain-secs 60

## Every reservation-path and Kafka case in one run, one build (docs/benchmarks.md):
## hot SKU with its ceilings, flash sale, 10k SKUs, mixed, sustained, HTTP (wrk), Kafka.
bench-all: services
	bash scripts/bench-all.sh

## Reads benchmark (wrk, release build): hot SKU, 10,000 SKUs, queries, reserves beside reads.
bench-reads: services
	bash scripts/bench-reads.sh

## Seeded fault simulation against a model (docs/reliability.md): SEEDS seeds from
## SIM_SEED_FROM (make test runs 3). Replay a failure: make sim SIM_SEED_FROM=<seed> SEEDS=1
sim: services
	SIM_SEEDS=$(or $(SEEDS),100) SIM_SEED_FROM=$(or $(SIM_SEED_FROM),1) \
	  cargo test --features fault-injection --test api sim::seeded -- --nocapture

## Fault drills at bench scale: kill -9 of the service 100 times under load, MariaDB stopped
## for 60 s under load (make test runs them with 12 rounds and 20 s).
bench-faults: services
	FAULT_KILL_ROUNDS=100 FAULT_DB_OUTAGE_SECS=60 cargo test --features fault-injection --test api \
	  -- --nocapture --test-threads=1 crash::kill_9 faults::mariadb_stopped

## Reconciliation over 10,000 positions with 1,000,000 ledger rows (release build).
bench-reconcile: services
	bash scripts/bench-reconcile.sh

## Expiry benchmark: 100,000 holds expire at once (10,000 SKUs, then one hot SKU).
bench-expiry: services
	cargo bench --bench expiry -- --holds 100000 --skus 10000
	cargo bench --bench expiry -- --holds 100000 --skus 1
