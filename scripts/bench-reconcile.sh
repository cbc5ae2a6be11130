#!/usr/bin/env bash
# Reconciliation in bounded time (docs/reliability.md "Reconciliation"): one release service
# on a database holding a long history, each run timed by the service itself (durationMs):
#   1. starts the service once on a fresh database (it migrates it), stops it, and writes
#      POSITIONS positions' history straight into the DB: 100 ledger rows each (an inbound,
#      a write-off, 33 reserve+confirm pairs, 16 reserve+release pairs) and their 49 lines,
#      as the journal would have; then starts it again, so Redis is loaded from that DB;
#   2. reconciles four times:
#      - first: folds the whole history into checkpoints, then compares every position;
#      - again, nothing new: the compare alone;
#      - after NEW_ORDERS orders through the API (half confirmed) and the fold margin: reads
#        only those;
#      - full=true: against every row ever written (what every run cost before checkpoints);
#   3. verifies: no run found a difference or skipped a position, each checked POSITIONS,
#      and the checkpoints' stock on hand sums to what the history says.
# Exits 1 when a verification fails, 2 on a setup problem.
#
# Settings (environment): POSITIONS=10000 NEW_ORDERS=5000 PORT=18084 SKIP_BUILD=1 KEEP=1
#   REDIS_URL DATABASE_URL INVENTORY__* (any service setting)
# Output: the summary on stdout and in .run/bench-reconcile-<ts>/summary.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
POSITIONS=${POSITIONS:-10000}
NEW_ORDERS=${NEW_ORDERS:-5000}
PORT=${PORT:-18084}
BENCH_NAME=bench-reconcile
# The scheduled run stays off (every run here is timed on request); the fold margin is short
# so that the orders placed between runs are folded by the next one.
export INVENTORY__RECONCILE__ENABLED=false
export INVENTORY__RECONCILE__FOLD_MARGIN_MS=${INVENTORY__RECONCILE__FOLD_MARGIN_MS:-1000}
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"
bench_setup
bench_start
bench_stop_service

log "writing the history of $POSITIONS positions: $((POSITIONS * 100)) ledger rows, $((POSITIONS * 49)) lines"
start_ms=$(date +%s%3N)
sql "$DB" <<SQL
SET SESSION max_heap_table_size = 268435456;
INSERT INTO t_inventory_txn (txn_id, order_no, sku_id, warehouse_id, delta_available, delta_reserved,
                             available_after, reserved_after, reason, created_at)
SELECT CONCAT('hist-', p.seq, '-', r.seq),
       IF(r.seq > 2, CONCAT('H', p.seq, '-', (r.seq - 1) DIV 2), NULL),
       p.seq, 1,
       CASE WHEN r.seq = 1 THEN 100 WHEN r.seq = 2 THEN -1
            WHEN r.seq % 2 = 1 THEN -1 WHEN r.seq <= 68 THEN 0 ELSE 1 END,
       CASE WHEN r.seq <= 2 THEN 0 WHEN r.seq % 2 = 1 THEN 1 ELSE -1 END,
       0, 0,
       CASE WHEN r.seq = 1 THEN 'INBOUND' WHEN r.seq = 2 THEN 'OUTBOUND'
            WHEN r.seq % 2 = 1 THEN 'RESERVE' WHEN r.seq <= 68 THEN 'CONFIRM' ELSE 'RELEASE' END,
       NOW(3) - INTERVAL 30 DAY + INTERVAL r.seq SECOND
FROM seq_1_to_${POSITIONS} p CROSS JOIN seq_1_to_100 r;
INSERT INTO t_inventory_reservation (order_no, sku_id, warehouse_id, qty, status, expire_at, version,
                                     release_reason, created_at, updated_at)
SELECT CONCAT('H', p.seq, '-', o.seq), p.seq, 1, 1, IF(o.seq <= 33, 'CONFIRMED', 'RELEASED'),
       NOW(3) - INTERVAL 30 DAY, 2, IF(o.seq <= 33, NULL, 'CANCEL'),
       NOW(3) - INTERVAL 30 DAY, NOW(3) - INTERVAL 30 DAY
FROM seq_1_to_${POSITIONS} p CROSS JOIN seq_1_to_49 o;
INSERT INTO t_inventory (sku_id, warehouse_id, available_qty, reserved_qty, version)
SELECT p.seq, 1, 66, 0, 100 FROM seq_1_to_${POSITIONS} p;
SQL
log "history written in $(( $(date +%s%3N) - start_ms )) ms"
# Redis is loaded from this DB at start (no epoch key: the whole state is rebuilt).
rcli --scan --pattern "${PREFIX}*" | xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" unlink >/dev/null
bench_start_service

failures=()
reconcile() { # name, query
  local out
  out=$(admin -X POST "$BASE/inventory/reconcile?repair=false$2")
  echo "$out" >"$RUN_DIR/$1.json"
  local diffs skipped checked
  diffs=$(jq '.data.differences | length' <<<"$out")
  skipped=$(jq '.data.skipped | length' <<<"$out")
  checked=$(jq '.data.positionsChecked' <<<"$out")
  [ "$diffs" = 0 ] || failures+=("$1: $diffs differences ($(jq -c '.data.differences[:3]' <<<"$out"))")
  [ "$skipped" = 0 ] || failures+=("$1: $skipped positions skipped ($(jq -c '.data.skipped[:3]' <<<"$out"))")
  [ "$checked" -ge "$POSITIONS" ] || failures+=("$1: checked $checked of $POSITIONS positions")
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$(jq '.data.durationMs' <<<"$out")" \
    "$(jq '.data.checkpointsFolded' <<<"$out")" "$checked" "$diffs"
}

summary="$RUN_DIR/summary.md"
{
  echo "## Reconciliation: $POSITIONS positions, $((POSITIONS * 100)) ledger rows, $((POSITIONS * 49)) lines"
  echo
  echo "| run | duration ms | checkpoints folded | positions | differences |"
  echo "|---|---|---|---|---|"
} | tee "$summary"
reconcile "first (folds the history)" "" | tee -a "$summary"
reconcile "again, nothing new" "" | tee -a "$summary"

log "placing $NEW_ORDERS orders through the API (half confirmed)"
order() { # i: reserve one unit of a position as order NEW-i
  curl -sS -o /dev/null -w '%{http_code}\n' -X POST -H "Authorization: Bearer $SERVICE_TOKEN" \
    -H 'Content-Type: application/json' "$BASE/inventory/reserve" \
    -d "{\"orderNo\": \"NEW-$1\", \"items\": [{\"skuId\": $(( ($1 * 7919) % POSITIONS + 1 )), \"qty\": 1}]}"
}
confirm() { # i
  curl -sS -o /dev/null -w '%{http_code}\n' -X POST -H "Authorization: Bearer $SERVICE_TOKEN" \
    "$BASE/inventory/reservations/confirm?orderNo=NEW-$1"
}
export -f order confirm
export SERVICE_TOKEN BASE POSITIONS
seq 1 "$NEW_ORDERS" | xargs -P 32 -I{} bash -c 'order {}' >"$RUN_DIR/order-codes.txt"
seq 1 2 "$NEW_ORDERS" | xargs -P 32 -I{} bash -c 'confirm {}' >>"$RUN_DIR/order-codes.txt"
bad=$(grep -vc '^200$' "$RUN_DIR/order-codes.txt" || true)
[ "$bad" = 0 ] || failures+=("$bad order calls did not answer 200: $(sort "$RUN_DIR/order-codes.txt" | uniq -c | tr '\n' ' ')")
sleep $(( INVENTORY__RECONCILE__FOLD_MARGIN_MS / 1000 + 2 ))
reconcile "after $NEW_ORDERS new orders (folds them)" "" | tee -a "$summary"
reconcile "full=true (every row)" "&full=true" | tee -a "$summary"

on_hand=$(sql "$DB" -e "SELECT COALESCE(SUM(on_hand), 0) FROM t_reconcile_checkpoint")
[ "$on_hand" = "$((POSITIONS * 99))" ] || failures+=("checkpoints' stock on hand sums to $on_hand, the history says $((POSITIONS * 99))")
bench_verdict "no difference, no position skipped; the checkpoints hold the history's $((POSITIONS * 99)) units on hand"
