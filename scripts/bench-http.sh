#!/usr/bin/env bash
# HTTP benchmark with an external load generator (wrk), see docs/benchmarks.md and
# ../shared/measuring.md. One run:
#   1. builds the release inventory-service (skip with SKIP_BUILD=1) and installs wrk if missing;
#   2. starts it on its own port, Redis key prefix and fresh database (inventory_bench_http_<ts>),
#      with fresh tokens, and stocks one hot SKU through POST /inventory/{skuId}/stock;
#   3. measures the ceiling: wrk -t1 -c64 /health against the same instance;
#   4. for each connection count: wrk POST /inventory/reserve (benches/wrk/reserve.lua, a new
#      orderNo per request and per wrk thread), with before/after snapshots of each service
#      thread's CPU (/proc/<pid>/task/*/stat, utime+stime), of Redis and MariaDB's CPU and of
#      `redis-cli info commandstats`; then waits for the journal to drain;
#   5. verifies: POST /inventory/reconcile finds no difference; in SQL, units held by RESERVED
#      rows + available == stock loaded, and reserved_qty == those units; every orderNo wrk saw
#      a 200 for has a RESERVED row, no order refused with 409 has one, and RESERVED rows with
#      no 200 seen are at most the requests wrk left unanswered when it stopped;
#   6. stops the service, drops the database and the Redis keys of its prefix.
# Exits 1 when a verification fails, 2 on a setup problem.
# wrk abandons the requests in flight when its time is up (up to one per connection); the
# service may still hold those orders, so RESERVED rows can exceed the 200s seen by that many.
# "unanswered" counts them (plus the one request wrk builds to check the script, per run).
#
# Settings (environment):
#   DURATION=10          seconds per reserve run
#   CONNECTIONS="64 256" wrk connection counts, one reserve run each
#   WRK_THREADS=2        wrk threads for the reserve runs (the /health ceiling uses -t1 -c64)
#   HEALTH_DURATION=10   seconds of the /health ceiling (0: skip it)
#   STOCK=1000000        units of the hot SKU (STOCK=10000 makes it a flash sale)
#   SKU=800001  QTY=1    the hot SKU and units per order
#   PORT=18082           the service's port (127.0.0.1 only)
#   REDIS_URL=redis://127.0.0.1:6379
#   DATABASE_URL=mysql://inventory:inventory@127.0.0.1:3306/inventory  (admin connection)
#   KEEP=1               keep the database, the Redis keys and the run directory
#   SKIP_BUILD=1         use the binary in $CARGO_TARGET_DIR/release as it is
#   INVENTORY__*         any service setting, passed through (e.g. INVENTORY__HTTP__WORKERS=1)
# Output: a summary on stdout, everything else under .run/bench-http-<ts>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-"64 256"}
WRK_THREADS=${WRK_THREADS:-2}
HEALTH_DURATION=${HEALTH_DURATION:-10}
STOCK=${STOCK:-1000000}
SKU=${SKU:-800001}
QTY=${QTY:-1}
PORT=${PORT:-18082}
BENCH_NAME=bench-http
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"
CLK_TCK=$(getconf CLK_TCK)
bench_cleanup_extra() { rm -f "$RUN_DIR"/c*/responses-*.txt "$RUN_DIR"/*.sorted; }
bench_setup
bench_start

stocked=$(admin -X POST "$BASE/inventory/$SKU/stock" -d "{\"delta\": $STOCK, \"reason\": \"INBOUND\", \"remark\": \"bench-http\"}")
[ "$(jq -r '.data.availableQty // empty' <<<"$stocked")" = "$STOCK" ] || die "stocking failed: $stocked"
log "stocked SKU $SKU with $STOCK units"

journal_lag() { curl -sS "$BASE/health/ready" | jq -r '.data.journal.notPersisted // "null"'; }
# Waits until the journal is persisted; prints the milliseconds it took.
wait_drained() {
  local started lag
  started=$(date +%s%N)
  for _ in $(seq 1 1200); do
    lag=$(journal_lag)
    [ "$lag" = "0" ] && { echo $((($(date +%s%N) - started) / 1000000)); return 0; }
    sleep 0.1
  done
  log "the journal did not drain in 120 s (lag $lag)"
  echo -1
  return 1
}

# "<tid> <comm> <ticks>" per service thread (comm may hold spaces: the name is cut at the
# last ')'; utime and stime are fields 14 and 15, i.e. 12 and 13 after it).
thread_cpu() {
  local f line comm rest
  for f in /proc/"$SERVICE_PID"/task/*/stat; do
    line=$(cat "$f" 2>/dev/null) || continue
    comm=${line#*(}
    comm=${comm%)*}
    rest=${line##*) }
    read -r -a fields <<<"$rest"
    printf '%s\t%s\t%s\n' "${line%% *}" "${comm// /_}" $((fields[11] + fields[12]))
  done
}
# Busy ticks of the whole machine (every CPU): user nice system irq softirq steal.
machine_cpu() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# utime+stime of a whole process (every thread, dead ones included).
process_cpu() {
  local line rest
  line=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  rest=${line##*) }
  read -r -a fields <<<"$rest"
  echo $((fields[11] + fields[12]))
}
REDIS_PID=$(rcli info server | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}')
MARIADB_PID=$(pidof mariadbd 2>/dev/null | awk '{print $1}' || true)
[ -d "/proc/${REDIS_PID:-none}" ] || REDIS_PID=""
[ -d "/proc/${MARIADB_PID:-none}" ] || MARIADB_PID=""


SUMMARY="$RUN_DIR/summary.md"
: >"$SUMMARY"

# ---------- the ceiling: /health on the same instance ----------
HEALTH_RPS=""
if [ "$HEALTH_DURATION" != "0" ]; then
  log "ceiling: wrk -t1 -c64 -d${HEALTH_DURATION}s $BASE/health"
  REPORT="$RUN_DIR/health.result" wrk -t1 -c64 -d"${HEALTH_DURATION}s" --latency \
    -s benches/wrk/health.lua "$BASE/health" >"$RUN_DIR/health.wrk.txt"
  HEALTH=$(tail -1 "$RUN_DIR/health.result")
  HEALTH_RPS=$(value "$HEALTH" rps)
fi

# ---------- reserve runs ----------
declare -a ROWS=()
TOTAL_SENT=0
TOTAL_ANSWERED=0
for c in $CONNECTIONS; do
  run="$TS-c$c"
  log "reserve: wrk -t$WRK_THREADS -c$c -d${DURATION}s POST /inventory/reserve (run $run)"
  mkdir -p "$RUN_DIR/c$c"
  thread_cpu >"$RUN_DIR/c$c/cpu.before"
  svc0=$(process_cpu "$SERVICE_PID")
  redis0=$([ -n "$REDIS_PID" ] && process_cpu "$REDIS_PID" || echo 0)
  maria0=$([ -n "$MARIADB_PID" ] && process_cpu "$MARIADB_PID" || echo 0)
  machine0=$(machine_cpu)
  rcli info commandstats | tr -d '\r' >"$RUN_DIR/c$c/commandstats.before"
  TIMEFORMAT='%U %S'
  { time TOKEN="$SERVICE_TOKEN" SKU="$SKU" QTY="$QTY" RUN="$run" LOG_DIR="$RUN_DIR/c$c" \
      REPORT="$RUN_DIR/c$c/wrk.result" \
      wrk -t"$WRK_THREADS" -c"$c" -d"${DURATION}s" --latency -s benches/wrk/reserve.lua "$BASE" \
      >"$RUN_DIR/c$c/wrk.txt" 2>"$RUN_DIR/c$c/wrk.err"; } 2>"$RUN_DIR/c$c/wrk.time"
  [ -s "$RUN_DIR/c$c/wrk.result" ] || { cat "$RUN_DIR/c$c/wrk.err" "$RUN_DIR/c$c/wrk.txt" >&2; die "wrk gave no result"; }
  thread_cpu >"$RUN_DIR/c$c/cpu.after"
  svc1=$(process_cpu "$SERVICE_PID")
  redis1=$([ -n "$REDIS_PID" ] && process_cpu "$REDIS_PID" || echo 0)
  maria1=$([ -n "$MARIADB_PID" ] && process_cpu "$MARIADB_PID" || echo 0)
  machine1=$(machine_cpu)
  rcli info commandstats | tr -d '\r' >"$RUN_DIR/c$c/commandstats.after"
  drain_ms=$(wait_drained) || true

  R=$(tail -1 "$RUN_DIR/c$c/wrk.result")
  requests=$(value "$R" requests)
  secs=$(value "$R" duration_s)
  held=$(value "$R" held)
  sent=$(value "$R" sent)
  answered=$(value "$R" answered)
  TOTAL_SENT=$((TOTAL_SENT + sent))
  TOTAL_ANSWERED=$((TOTAL_ANSWERED + answered))
  read -r wrk_user wrk_sys <"$RUN_DIR/c$c/wrk.time"
  rps=$(value "$R" rps)
  ratio=$([ -n "$HEALTH_RPS" ] && awk -v a="$rps" -v b="$HEALTH_RPS" 'BEGIN {printf "%.1f%%", 100 * a / b}' || echo "n/a")
  ROWS+=("| -t$WRK_THREADS -c$c -d${DURATION}s | $(printf '%.0f' "$rps") | $(awk -v h="$held" -v s="$secs" 'BEGIN {printf "%.0f", h / s}') | $ratio | $(value "$R" p50_ms) / $(value "$R" p90_ms) / $(value "$R" p99_ms) / $(value "$R" max_ms) | $held / $(value "$R" refused) / $(( $(value "$R" repeats) + $(value "$R" conflict) + $(value "$R" overloaded) + $(value "$R" other) )) | $((sent - answered)) | $drain_ms |")

  {
    echo
    echo "### -c$c: $requests responses in ${secs}s; held $held, refused $(value "$R" refused), repeats $(value "$R" repeats), other 409 $(value "$R" conflict), 503 $(value "$R" overloaded), other $(value "$R" other); wrk errors: connect $(value "$R" err_connect) read $(value "$R" err_read) write $(value "$R" err_write) timeout $(value "$R" err_timeout)"
    echo
    echo "CPU per request (us): utime+stime from /proc/<pid>/task/*/stat (service threads; names are cut at 15 characters, so each thread has its row and a name shared by several threads a total) and /proc/<pid>/stat; $requests requests in ${secs}s, 1 tick = $((1000000 / CLK_TCK)) us:"
    echo
    echo "| thread (comm) / process | threads | CPU ms | us / request | % of a core |"
    echo "|---|---|---|---|---|"
    awk -F'\t' -v n="$requests" -v tck="$CLK_TCK" -v secs="$secs" '
      # Prefixed with the ticks for sort, cut afterwards; "|" in names is escaped (markdown).
      function row(name, k, ticks) {
        gsub(/\|/, "\\|", name)
        printf "%d\t| %s | %s | %.0f | %.1f | %.0f%% |\n", ticks, name, k, ticks * 1000 / tck, (n > 0 ? ticks * 1e6 / tck / n : 0), ticks * 100 / tck / secs
      }
      NR == FNR { before[$1] = $3; next }
      { d = $3 - (($1 in before) ? before[$1] : 0); cpu[$2] += d; threads[$2]++; tid[$1] = $2; tcpu[$1] = d }
      END {
        for (t in tid) if (threads[tid[t]] > 1 && tcpu[t] > 0) row(tid[t] " (tid " t ")", 1, tcpu[t])
        for (c in cpu) row(c (threads[c] > 1 ? " (all)" : ""), threads[c], cpu[c])
      }' "$RUN_DIR/c$c/cpu.before" "$RUN_DIR/c$c/cpu.after" | sort -t$'\t' -k1,1nr -k2 | cut -f2-
    wrk_ticks=$(awk -v u="$wrk_user" -v s="$wrk_sys" -v tck="$CLK_TCK" 'BEGIN {printf "%.0f", (u + s) * tck}')
    for p in "inventory-service (process, all threads):$svc0:$svc1" "redis-server:$redis0:$redis1" \
             "mariadbd:$maria0:$maria1" "wrk (the load generator):0:$wrk_ticks" \
             "everything else on the machine:$((svc1 - svc0 + redis1 - redis0 + maria1 - maria0 + wrk_ticks)):$((machine1 - machine0))" \
             "the whole machine ($(nproc) cores):$machine0:$machine1"; do
      IFS=: read -r name a b <<<"$p"
      awk -v name="$name" -v a="$a" -v b="$b" -v n="$requests" -v tck="$CLK_TCK" -v secs="$secs" \
        'BEGIN {printf "| %s | | %.0f | %.1f | %.0f%% |\n", name, (b - a) * 1000 / tck, (n > 0 ? (b - a) * 1e6 / tck / n : 0), (b - a) * 100 / tck / secs}'
    done
    echo
    echo "Redis (INFO commandstats, whole server) per held order ($held held):"
    echo
    awk -F'[:,=]' -v held="$held" -v n="$requests" '
      /^cmdstat_/ { name = substr($1, 9); c = $3; u = $5
        if (FNR == NR) { c0[name] = c; u0[name] = u; next }
        dc = c - c0[name]; du = u - u0[name]
        if (dc <= 0) next
        if (name ~ /^(evalsha|eval|evalsha_ro|eval_ro|fcall|fcall_ro)$/) { sc += dc; su += du }
        else { oc[name] = dc; ou[name] = du }
      }
      END {
        printf "- scripts (EVALSHA/EVAL): %.1f us per held order, %.2f us per request, %.4f calls per held order (%.1f us per call)\n", (held > 0 ? su / held : 0), (n > 0 ? su / n : 0), (held > 0 ? sc / held : 0), (sc > 0 ? su / sc : 0)
        printf "- other commands, calls per held order / per request (those inside the scripts, the persister'"'"'s, the readiness probe'"'"'s):"
        # Largest first (a small insertion sort: a few dozen commands at most).
        k = 0
        for (c in oc) { names[++k] = c }
        for (i = 2; i <= k; i++) { v = names[i]; j = i - 1; while (j > 0 && oc[names[j]] < oc[v]) { names[j + 1] = names[j]; j-- } names[j + 1] = v }
        for (i = 1; i <= k; i++) printf "%s %s %.3f / %.3f", (i > 1 ? "," : ""), names[i], (held > 0 ? oc[names[i]] / held : 0), (n > 0 ? oc[names[i]] / n : 0)
        printf "\n"
      }' "$RUN_DIR/c$c/commandstats.before" "$RUN_DIR/c$c/commandstats.after"
    echo
    echo "journal drained ${drain_ms} ms after wrk stopped"
  } >"$RUN_DIR/c$c/detail.md"
done

# ---------- verification ----------
log "verifying"
failures=()
report=$(admin -X POST "$BASE/inventory/reconcile?skuId=$SKU&repair=false")
differences=$(jq -r '.data.differences | length' <<<"$report" 2>/dev/null || echo "?")
checked=$(jq -r '.data.positionsChecked // 0' <<<"$report" 2>/dev/null || echo 0)
[ "$differences" = "0" ] && [ "$checked" -ge 1 ] || failures+=("reconcile: $differences difference(s) over $checked position(s): $(jq -c '.data.differences // .' <<<"$report")")

read -r available reserved_qty <<<"$(sql "$DB" -e "SELECT available_qty, reserved_qty FROM t_inventory WHERE sku_id = $SKU AND warehouse_id = 1")"
read -r rows units <<<"$(sql "$DB" -e "SELECT COUNT(*), COALESCE(SUM(qty), 0) FROM t_inventory_reservation WHERE sku_id = $SKU AND status = 'RESERVED'")"
other_rows=$(sql "$DB" -e "SELECT COUNT(*) FROM t_inventory_reservation WHERE status <> 'RESERVED'")
[ "$((units + available))" = "$STOCK" ] || failures+=("units held by RESERVED rows ($units) + available ($available) != stock loaded ($STOCK)")
[ "$reserved_qty" = "$units" ] || failures+=("t_inventory.reserved_qty ($reserved_qty) != units of RESERVED rows ($units)")
[ "$available" -ge 0 ] || failures+=("negative available: $available")
[ "$other_rows" = "0" ] || failures+=("$other_rows reservation row(s) in another state than RESERVED")

# The 200s wrk saw against the RESERVED rows, order by order.
sql "$DB" -e "SELECT order_no FROM t_inventory_reservation WHERE sku_id = $SKU AND status = 'RESERVED'" | sort >"$RUN_DIR/rows.sorted"
cat "$RUN_DIR"/c*/responses-*.txt 2>/dev/null | awk '$2 == 200 {print $1}' | sort >"$RUN_DIR/ok.sorted"
cat "$RUN_DIR"/c*/responses-*.txt 2>/dev/null | awk '$2 != 200 && $1 != "?" {print $1}' | sort >"$RUN_DIR/refused.sorted"
seen_ok=$(wc -l <"$RUN_DIR/ok.sorted")
ok_without_row=$(comm -23 "$RUN_DIR/ok.sorted" "$RUN_DIR/rows.sorted" | wc -l)
row_without_ok=$(comm -13 "$RUN_DIR/ok.sorted" "$RUN_DIR/rows.sorted" | wc -l)
refused_with_row=$(comm -12 "$RUN_DIR/refused.sorted" "$RUN_DIR/rows.sorted" | wc -l)
unanswered=$((TOTAL_SENT - TOTAL_ANSWERED))
[ "$ok_without_row" = "0" ] || failures+=("$ok_without_row order(s) answered 200 have no RESERVED row")
[ "$refused_with_row" = "0" ] || failures+=("$refused_with_row order(s) answered with an error hold stock")
[ "$row_without_ok" -le "$unanswered" ] || failures+=("$row_without_ok RESERVED row(s) without a 200, but only $unanswered request(s) were left unanswered")

# ---------- report ----------
{
  echo
  echo "## scripts/bench-http.sh $(date -u +%Y-%m-%dT%H:%MZ): SKU $SKU x $STOCK units, qty $QTY, service $(basename "$BIN") on 127.0.0.1:$PORT"
  echo
  if [ -n "$HEALTH_RPS" ]; then
    echo "ceiling: wrk -t1 -c64 -d${HEALTH_DURATION}s /health: $(printf '%.0f' "$HEALTH_RPS") requests/s, p50 / p99 $(value "$HEALTH" p50_ms) / $(value "$HEALTH" p99_ms) ms"
    echo
  fi
  echo "| wrk POST /inventory/reserve | requests/s | reservations/s | of /health | latency p50 / p90 / p99 / max (ms) | held / refused / other | unanswered at stop | journal drain (ms) |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  for c in $CONNECTIONS; do cat "$RUN_DIR/c$c/detail.md"; done
  echo
  echo "verification: reconcile $differences difference(s); RESERVED rows $rows holding $units units + available $available = $((units + available)) (stock $STOCK); t_inventory.reserved_qty $reserved_qty"
  echo "200 responses seen: $seen_ok; RESERVED rows: $rows = $((rows - row_without_ok)) with a 200 seen + $row_without_ok whose request wrk abandoned when it stopped (of $unanswered unanswered); 200s without a row: $ok_without_row; refused orders holding stock: $refused_with_row"
} | tee -a "$SUMMARY"

bench_verdict "zero oversell; every 200 is a RESERVED row; Redis == DB (reconcile). Summary: $SUMMARY"
