#!/usr/bin/env bash
# Stock reads at flash-sale scale, with an external load generator (wrk), against one release
# inventory-service, all cases in one run (docs/benchmarks.md "Reads"):
#   1. builds the release binary (skip with SKIP_BUILD=1), installs wrk if missing, starts the
#      service on its own port, Redis key prefix and fresh database;
#   2. stocks a hot SKU (STOCK units) and SKUS other SKUs (1000 units each) through the API;
#   3. measures, each for DURATION seconds with wrk -t$WRK_THREADS -c$CONNECTIONS:
#      - GET /health (the HTTP ceiling);
#      - GET /inventory/{hot}: live (Redis through the cache) and ?source=db (the DB path
#        every read took before);
#      - GET /inventory/{random of SKUS}: live and ?source=db, with the cache's hit ratio;
#      - POST /inventory/query with QUERY_SIZE random positions;
#      - POST /inventory/reserve on the hot SKU alone, then the same while GETs of the hot SKU
#        run beside it (half the connections each): once as fast as they go, once paced to
#        READ_RATE GETs/s (wrk's delay()); then alone again (both alone runs bracket them);
#        RESERVE_CONNECTIONS (default 128: enough that the reserve rate is what the machine
#        gives, not what 32 connections waiting on their answers give) connections reserve;
#   4. verifies: no read answered anything but 200 (query: with nothing not found); reconcile
#      finds no difference on any position; RESERVED rows' units + available == stock loaded;
#   5. stops the service, drops the database and the Redis keys of its prefix.
# Exits 1 when a verification fails, 2 on a setup problem.
#
# Settings (environment): DURATION=10 CONNECTIONS=64 WRK_THREADS=2 SKUS=10000 QUERY_SIZE=20
#   STOCK=1000000 HOT_SKU=900000 PORT=18083 READ_RATE=10000 REDIS_URL DATABASE_URL KEEP=1 SKIP_BUILD=1
#   INVENTORY__* (any service setting, e.g. INVENTORY__CACHE__STOCK_TTL_MS=0)
# Output: the summary on stdout and in .run/bench-reads-<ts>/summary.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
SKUS=${SKUS:-10000}
QUERY_SIZE=${QUERY_SIZE:-20}
STOCK=${STOCK:-1000000}
HOT_SKU=${HOT_SKU:-900000}
PORT=${PORT:-18083}
READ_RATE=${READ_RATE:-10000}
RESERVE_CONNECTIONS=${RESERVE_CONNECTIONS:-128}
SKU_FROM=$((HOT_SKU + 1))
SKU_TO=$((HOT_SKU + SKUS))
HALF=$((CONNECTIONS / 2))
BENCH_NAME=bench-reads
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"
bench_setup
bench_start

stocked=$(admin -X POST "$BASE/inventory/$HOT_SKU/stock" -d "{\"delta\": $STOCK, \"reason\": \"INBOUND\"}")
[ "$(jq -r '.data.availableQty // empty' <<<"$stocked")" = "$STOCK" ] || die "stocking failed: $stocked"
log "stocking $SKUS SKUs ($SKU_FROM..$SKU_TO) through POST /inventory/{skuId}/stock"
for sku in $(seq "$SKU_FROM" "$SKU_TO"); do
  printf 'url = "%s/inventory/%s/stock"\noutput = "/dev/null"\n' "$BASE" "$sku"
done >"$RUN_DIR/stock-urls.cfg"
curl -sS --parallel --parallel-max 16 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"delta": 1000, "reason": "INBOUND"}' \
  -w '%{http_code}\n' --config "$RUN_DIR/stock-urls.cfg" >"$RUN_DIR/stock-codes.txt"
stocked_ok=$(grep -c '^200$' "$RUN_DIR/stock-codes.txt" || true)
[ "$stocked_ok" = "$SKUS" ] || die "stocked $stocked_ok of $SKUS SKUs: $(sort "$RUN_DIR/stock-codes.txt" | uniq -c | tr '\n' ' ')"

wait_drained() {
  local lag
  for _ in $(seq 1 1200); do
    lag=$(curl -sS "$BASE/health/ready" | jq -r '.data.journal.notPersisted // "null"')
    [ "$lag" = "0" ] && return 0
    sleep 0.1
  done
  log "the journal did not drain in 120 s (lag $lag)"
  return 1
}
wait_drained
cache_counter() { curl -sS "$BASE/metrics" | awk -v r="$1" '$1 == "inventory_stock_cache_lookups_total{result=\"" r "\"}" {print $2}'; }

# run NAME wrk-args...: one wrk run; its RESULT line goes to $RUN_DIR/NAME.result.
run() {
  local name=$1
  shift
  log "$name: wrk $*"
  REPORT="$RUN_DIR/$name.result" wrk --latency "$@" >"$RUN_DIR/$name.wrk.txt" 2>&1 || die "wrk failed: $(tail -5 "$RUN_DIR/$name.wrk.txt")"
  [ -s "$RUN_DIR/$name.result" ] || die "wrk gave no result for $name: $(tail -5 "$RUN_DIR/$name.wrk.txt")"
}
W=(-t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s")
export SKU_FROM SKU_TO QUERY_SIZE

run health "${W[@]}" -s benches/wrk/health.lua "$BASE/health"
run hot_live "${W[@]}" -s benches/wrk/health.lua "$BASE/inventory/$HOT_SKU?warehouseId=1"
run hot_db "${W[@]}" -s benches/wrk/health.lua "$BASE/inventory/$HOT_SKU?warehouseId=1&source=db"
hits0=$(cache_counter hit); misses0=$(cache_counter miss)
run many_live "${W[@]}" -s benches/wrk/read-many.lua "$BASE"
hits1=$(cache_counter hit); misses1=$(cache_counter miss)
SOURCE=db run many_db "${W[@]}" -s benches/wrk/read-many.lua "$BASE"
run query "${W[@]}" -s benches/wrk/query.lua "$BASE"
reserve_alone() {
  mkdir -p "$RUN_DIR/$1"
  TOKEN="$SERVICE_TOKEN" SKU="$HOT_SKU" RUN="$TS-$1" LOG_DIR="$RUN_DIR/$1" \
    run "$1" -t1 -c"$RESERVE_CONNECTIONS" -d"${DURATION}s" -s benches/wrk/reserve.lua "$BASE"
  wait_drained
}
reserve_alone reserve_alone
# beside NAME [RATE]: reserves and GETs of the hot SKU side by side (the GETs paced to RATE
# requests/s when given, else as fast as they go).
beside() {
  local name=$1 rate=${2:-}
  log "$name: reserve and GET of the hot SKU side by side${rate:+ (GETs paced to $rate/s)}"
  RATE="$rate" CONNECTIONS_PER_RUN="$HALF" REPORT="$RUN_DIR/${name}_reads.result" \
    wrk --latency -t1 -c"$HALF" -d"${DURATION}s" -s benches/wrk/health.lua \
    "$BASE/inventory/$HOT_SKU?warehouseId=1" >"$RUN_DIR/${name}_reads.wrk.txt" 2>&1 &
  local reads_pid=$!
  mkdir -p "$RUN_DIR/$name"
  TOKEN="$SERVICE_TOKEN" SKU="$HOT_SKU" RUN="$TS-$name" LOG_DIR="$RUN_DIR/$name" \
    run "$name" -t1 -c"$RESERVE_CONNECTIONS" -d"${DURATION}s" -s benches/wrk/reserve.lua "$BASE"
  wait "$reads_pid" || die "the reads beside the reserves failed"
  wait_drained
}
beside reserve_with_reads
beside reserve_with_paced_reads "$READ_RATE"
# Again alone: the reservation table grew meanwhile; the two alone runs bracket the others.
reserve_alone reserve_alone_again

# ---------- verification ----------
failures=()
# Every run: answers at all, and no connection, read or timeout errors.
for f in "$RUN_DIR"/*.result; do
  name=$(basename "$f" .result)
  r=$(tail -1 "$f")
  [ "$(value "$r" requests)" -gt 0 ] || failures+=("$name: no answer at all")
  for e in err_connect err_read err_timeout; do
    [ "$(value "$r" "$e")" = "0" ] || failures+=("$name: $(value "$r" "$e") $e")
  done
done
for name in hot_live hot_db reserve_with_reads_reads reserve_with_paced_reads_reads; do
  r=$(tail -1 "$RUN_DIR/$name.result")
  [ "$(value "$r" err_status)" = "0" ] || failures+=("$name: $(value "$r" err_status) non-2xx answers")
done
# Every reserve run held orders, and refused none for another reason than stock.
for name in reserve_alone reserve_with_reads reserve_with_paced_reads reserve_alone_again; do
  r=$(tail -1 "$RUN_DIR/$name.result")
  [ "$(value "$r" held)" -gt 0 ] || failures+=("$name: nothing held")
  bad_answers=$(( $(value "$r" repeats) + $(value "$r" conflict) + $(value "$r" overloaded) + $(value "$r" other) ))
  [ "$bad_answers" = "0" ] || failures+=("$name: $bad_answers answers other than held or out of stock")
done
for name in many_live many_db; do
  r=$(tail -1 "$RUN_DIR/$name.result")
  [ "$(value "$r" not_200)" = "0" ] || failures+=("$name: $(value "$r" not_200) answers that were not 200")
done
r=$(tail -1 "$RUN_DIR/query.result")
[ "$(value "$r" bad)" = "0" ] || failures+=("query: $(value "$r" bad) answers not 200 or with positions not found")
report=$(admin -X POST "$BASE/inventory/reconcile?repair=false")
differences=$(jq -r '.data.differences | length' <<<"$report" 2>/dev/null || echo "?")
checked=$(jq -r '.data.positionsChecked // 0' <<<"$report" 2>/dev/null || echo 0)
[ "$differences" = "0" ] && [ "$checked" -ge "$SKUS" ] || failures+=("reconcile: $differences difference(s) over $checked position(s)")
read -r available reserved_qty <<<"$(sql "$DB" -e "SELECT available_qty, reserved_qty FROM t_inventory WHERE sku_id = $HOT_SKU AND warehouse_id = 1")"
units=$(sql "$DB" -e "SELECT COALESCE(SUM(qty), 0) FROM t_inventory_reservation WHERE sku_id = $HOT_SKU AND status = 'RESERVED'")
[ "$((units + available))" = "$STOCK" ] || failures+=("hot SKU: RESERVED units ($units) + available ($available) != stock loaded ($STOCK)")
[ "$reserved_qty" = "$units" ] || failures+=("hot SKU: reserved_qty ($reserved_qty) != RESERVED units ($units)")
# The 200s wrk saw against the RESERVED rows, order by order (as scripts/bench-http.sh).
sql "$DB" -e "SELECT order_no FROM t_inventory_reservation WHERE sku_id = $HOT_SKU AND status = 'RESERVED'" | sort >"$RUN_DIR/rows.sorted"
cat "$RUN_DIR"/reserve_*/responses-*.txt 2>/dev/null | awk '$2 == 200 {print $1}' | sort >"$RUN_DIR/ok.sorted"
seen_ok=$(wc -l <"$RUN_DIR/ok.sorted")
ok_without_row=$(comm -23 "$RUN_DIR/ok.sorted" "$RUN_DIR/rows.sorted" | wc -l)
row_without_ok=$(comm -13 "$RUN_DIR/ok.sorted" "$RUN_DIR/rows.sorted" | wc -l)
[ "$seen_ok" -gt 0 ] || failures+=("no reserve answered 200")
[ "$ok_without_row" = "0" ] || failures+=("$ok_without_row order(s) answered 200 have no RESERVED row")
# wrk abandons up to one request per connection when it stops (4 reserve runs).
[ "$row_without_ok" -le $((4 * RESERVE_CONNECTIONS + 4)) ] || failures+=("$row_without_ok RESERVED row(s) without a 200 seen")

# ---------- report ----------
H=$(tail -1 "$RUN_DIR/health.result")
HEALTH_RPS=$(value "$H" rps)
row() {
  local label=$1 name=$2 r
  r=$(tail -1 "$RUN_DIR/$name.result")
  printf '| %s | %.0f | %s | %s / %s / %s |\n' "$label" "$(value "$r" rps)" \
    "$(awk -v a="$(value "$r" rps)" -v b="$HEALTH_RPS" 'BEGIN {printf "%.0f%%", 100 * a / b}')" \
    "$(value "$r" p50_ms)" "$(value "$r" p99_ms)" "$(value "$r" max_ms)"
}
hit_ratio=$(awk -v h=$((hits1 - hits0)) -v m=$((misses1 - misses0)) 'BEGIN {printf "%.1f%%", (h + m > 0 ? 100 * h / (h + m) : 0)}')
alone=$(awk -v a="$(value "$(tail -1 "$RUN_DIR/reserve_alone.result")" rps)" \
  -v b="$(value "$(tail -1 "$RUN_DIR/reserve_alone_again.result")" rps)" 'BEGIN {print (a + b) / 2}')
beside=$(value "$(tail -1 "$RUN_DIR/reserve_with_reads.result")" rps)
paced=$(value "$(tail -1 "$RUN_DIR/reserve_with_paced_reads.result")" rps)
{
  echo
  echo "## scripts/bench-reads.sh $(date -u +%Y-%m-%dT%H:%MZ): wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, hot SKU $HOT_SKU x $STOCK, $SKUS SKUs x 1000, cache.stock_ttl_ms ${INVENTORY__CACHE__STOCK_TTL_MS:-default}"
  echo
  echo "| case | requests/s | of /health | latency p50 / p99 / max (ms) |"
  echo "|---|---|---|---|"
  row "GET /health (ceiling)" health
  row "GET /inventory/{hot SKU} (live: Redis through the cache)" hot_live
  row "GET /inventory/{hot SKU}?source=db (the DB path)" hot_db
  row "GET /inventory/{1 of $SKUS SKUs} (live; cache hits $hit_ratio)" many_live
  row "GET /inventory/{1 of $SKUS SKUs}?source=db" many_db
  row "POST /inventory/query, $QUERY_SIZE positions of $SKUS" query
  row "POST /inventory/reserve, hot SKU, -t1 -c$RESERVE_CONNECTIONS alone" reserve_alone
  row "POST /inventory/reserve, hot SKU, -t1 -c$RESERVE_CONNECTIONS beside GETs of it" reserve_with_reads
  row "GET /inventory/{hot SKU}, -t1 -c$HALF beside the reserves" reserve_with_reads_reads
  row "POST /inventory/reserve, hot SKU, -t1 -c$RESERVE_CONNECTIONS beside GETs paced to $READ_RATE/s" reserve_with_paced_reads
  row "GET /inventory/{hot SKU}, -t1 -c$HALF paced to $READ_RATE/s, beside the reserves" reserve_with_paced_reads_reads
  row "POST /inventory/reserve, hot SKU, -t1 -c$RESERVE_CONNECTIONS alone, again" reserve_alone_again
  echo
  echo "reserve rate beside reads as fast as they go: $(awk -v a="$beside" -v b="$alone" 'BEGIN {printf "%.1f%%", 100 * a / b}') of alone (the mean of both alone runs: $(printf '%.0f' "$beside") vs $(printf '%.0f' "$alone")/s); beside reads paced to $READ_RATE/s: $(awk -v a="$paced" -v b="$alone" 'BEGIN {printf "%.1f%%", 100 * a / b}')"
  echo "verification: reconcile $differences difference(s) over $checked positions; hot SKU RESERVED units $units + available $available = $((units + available)) (stock $STOCK); 200s seen $seen_ok, each a RESERVED row; rows whose 200 wrk abandoned at its stop: $row_without_ok"
} | tee "$RUN_DIR/summary.md"

bench_verdict "every read answered; zero oversell; Redis == DB (reconcile). Summary: $RUN_DIR/summary.md"
