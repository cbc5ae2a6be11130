#!/usr/bin/env bash
# Every reservation-path and Kafka case of docs/benchmarks.md in one run, one build, one
# session: the figures and their ceilings side by side (../shared/measuring.md: compare
# only within a run). Writes each case's full output and a summary table to $OUT_DIR
# (default target/bench-all/<UTC time>) and prints the table.
#
#   bash scripts/bench-all.sh            (make bench-all)
#
# Environment: SKIP_BUILD=1 (use the binaries already built), CARGO_TARGET_DIR, CASES (a
# space-separated subset of: hot flash skus10k mixed sustain http kafka-hot kafka-16p),
# SUSTAIN_RATE (offered rate of the sustained case, default 7000/s), OUT_DIR.
# Services must be up (make services); tansu is restarted before the Kafka cases (a tansu
# that has served many runs is slower: docs/benchmarks.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export DATABASE_URL=${DATABASE_URL:-mysql://inventory:inventory@127.0.0.1:3306/inventory}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
CASES=${CASES:-hot flash skus10k mixed sustain http kafka-hot kafka-16p}
SUSTAIN_RATE=${SUSTAIN_RATE:-7000}
OUT_DIR=${OUT_DIR:-$CARGO_TARGET_DIR/bench-all/$(date -u +%Y%m%dT%H%M%SZ)}
log() { printf '[bench-all] %s\n' "$*" >&2; }
for case in $CASES; do
    case $case in
    hot | flash | skus10k | mixed | sustain | http | kafka-hot | kafka-16p) ;;
    *) log "unknown case $case (known: hot flash skus10k mixed sustain http kafka-hot kafka-16p)"; exit 2 ;;
    esac
done
mkdir -p "$OUT_DIR"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building the bench and the service (release)"
    cargo bench --bench oversell --no-run 2>&1 | tail -1 >&2
    cargo build --release --bin inventory-service 2>&1 | tail -1 >&2
fi
BENCH=$(ls -t "$CARGO_TARGET_DIR"/release/deps/oversell-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
[ -n "$BENCH" ] && [ -x "$BENCH" ] || { log "no bench binary under $CARGO_TARGET_DIR/release/deps (build it: cargo bench --bench oversell --no-run)"; exit 2; }
log "bench binary: $BENCH; output in $OUT_DIR"

SUMMARY="$OUT_DIR/summary.md"
{
    echo "Run of $(git rev-parse --short HEAD) at $(date -u +%FT%TZ) on $(nproc) cores"
    echo
    echo "| case | command | result |"
    echo "|---|---|---|"
} > "$SUMMARY"
failed=0

# run <case> <args...>: the bench with those arguments; its table row and verdict go to
# the summary. A run that fails verification fails the script (after every case ran).
run() {
    local name=$1
    shift
    log "case $name: $*"
    local out="$OUT_DIR/$name.txt"
    if "$BENCH" --bench "$@" > "$out" 2>&1; then
        verdict="ok"
    else
        verdict="FAILED (exit $?)"
        failed=1
    fi
    local rows
    rows=$(grep -E '^\| (inprocess|kafka|reference|redis-benchmark|broker)' "$out" | tr '\n' ' ' || true)
    local extra
    extra=$(grep -E 'journal drained|persisted/s|ceiling|of the echo|after the first 2 s|OK: |FAIL' "$out" \
        | head -8 | tr '\n' ' ' || true)
    printf '| %s | `%s` | %s %s; %s |\n' "$name" "$*" "$verdict" "$rows" "$extra" >> "$SUMMARY"
}

# The machine's own tansu (scripts/services.sh started it); a restart that fails fails
# the Kafka case, not the script.
restart_tansu() {
    pkill -f "tansu broker --listener-url tcp://127.0.0.1:9092" 2>/dev/null || true
    sleep 1
    bash scripts/services.sh > "$OUT_DIR/services.log" 2>&1
}

for case in $CASES; do
    case $case in
    hot) run hot --target inprocess --skus 1 --stock 1000000 --requests 200000 --concurrency 256 --compare ;;
    flash) run flash --target inprocess --flash-sale ;;
    skus10k) run skus10k --target inprocess --skus 10000 --stock 100 --requests 200000 ;;
    mixed) run mixed --target inprocess --skus 100 --stock 1000 --requests 100000 --lines 3 \
        --duplicates 0.1 --confirm 0.5 --release 0.2 ;;
    sustain) run sustain --target inprocess --skus 10000 --rate "$SUSTAIN_RATE" --sustain-secs 60 ;;
    http)
        log "case http: scripts/bench-http.sh"
        if SKIP_BUILD=1 CONNECTIONS="64 256" DURATION=10 HEALTH_DURATION=5 \
            bash scripts/bench-http.sh > "$OUT_DIR/http.txt" 2>&1; then
            verdict=ok
        else
            verdict="FAILED"
            failed=1
        fi
        rows=$(grep -E 'requests/s|of /health|p99|OK|FAIL' "$OUT_DIR/http.txt" | head -10 | tr '\n' ' ' || true)
        printf '| http | `%s` | %s %s |\n' "scripts/bench-http.sh (-c64, -c256)" "$verdict" "$rows" >> "$SUMMARY"
        ;;
    kafka-hot)
        restart_tansu || { printf '| kafka-hot | | FAILED: tansu did not restart (%s) |\n' "$OUT_DIR/services.log" >> "$SUMMARY"; failed=1; continue; }
        run kafka-hot --target kafka --skus 1 --stock 100000 --requests 40000 --concurrency 2000 \
            --set kafka.clock_skew_ms=500
        ;;
    kafka-16p)
        restart_tansu || { printf '| kafka-16p | | FAILED: tansu did not restart (%s) |\n' "$OUT_DIR/services.log" >> "$SUMMARY"; failed=1; continue; }
        run kafka-16p --target kafka --skus 10000 --stock 10 --requests 40000 --concurrency 2000 \
            --set kafka.topic_partitions=16 --set kafka.clock_skew_ms=500
        ;;
    esac
done

cat "$SUMMARY"
exit $failed
