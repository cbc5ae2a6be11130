# Shared by the wrk benchmarks (scripts/bench-http.sh, scripts/bench-reads.sh); sourced, not
# run. A script sets BENCH_NAME (its log tag and the stem of its names) and PORT, then calls
#   bench_setup        tools, connections, release build, the run's names and cleanup trap
#   bench_start        its own database, then the service on it (waits for /health)
#   bench_stop_service / bench_start_service   restart it on the same database
# and uses log, die, sql (mariadb client on $DB_* ), rcli (redis-cli), admin (curl with the
# admin token), BASE, RUN_DIR, DB, PREFIX, TS, ADMIN_TOKEN, SERVICE_TOKEN, SERVICE_PID, BIN.
# A script may define bench_cleanup_extra (called before the database is dropped).
# Environment: REDIS_URL, DATABASE_URL (admin connection), CARGO_TARGET_DIR, SKIP_BUILD=1,
# KEEP=1 (keep the database, the Redis keys and the run directory), RUST_LOG,
# INVENTORY__* (passed through to the service).

REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DATABASE_URL=${DATABASE_URL:-mysql://inventory:inventory@127.0.0.1:3306/inventory}
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR
BIN="$CARGO_TARGET_DIR/release/inventory-service"

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { log "$*"; exit 2; }

# mysql://user:password@host:port/db
db_rest=${DATABASE_URL#mysql://}
DB_USERPASS=${db_rest%%@*}
DB_USER=${DB_USERPASS%%:*}
DB_PASSWORD=${DB_USERPASS#*:}
db_hostport=${db_rest#*@}
db_hostport=${db_hostport%%/*}
DB_HOST=${db_hostport%%:*}
DB_PORT=${db_hostport##*:}
[ "$DB_PORT" = "$db_hostport" ] && DB_PORT=3306
redis_hostport=${REDIS_URL#redis://}
redis_hostport=${redis_hostport##*@}
redis_hostport=${redis_hostport%%/*}
REDIS_HOST=${redis_hostport%%:*}
REDIS_PORT=${redis_hostport##*:}
[ "$REDIS_PORT" = "$redis_hostport" ] && REDIS_PORT=6379

sql() { mariadb --protocol=tcp -h "$DB_HOST" -P "$DB_PORT" -u "$DB_USER" -p"$DB_PASSWORD" -N -B "$@"; }
rcli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"; }
admin() { curl -sS -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' "$@"; }
# The value of key k in a "RESULT k=v ..." line.
value() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

bench_setup() {
  for host in "$DB_HOST" "$REDIS_HOST"; do
    case "$host" in 127.0.0.1 | localhost) ;; *) die "only 127.0.0.1 is benchmarked (got $host)" ;; esac
  done
  if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  fi
  for tool in wrk jq curl mariadb redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (make services installs mariadb and redis-cli; apt-get install jq curl)"
  done
  rcli ping >/dev/null 2>&1 || die "redis does not answer on $REDIS_HOST:$REDIS_PORT (make services)"
  sql -e "SELECT 1" >/dev/null 2>&1 || die "mariadb does not answer on $DB_HOST:$DB_PORT (make services)"
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is taken; set PORT"
  fi
  if [ "${SKIP_BUILD:-0}" != "1" ]; then
    log "cargo build --release --bin inventory-service (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release --bin inventory-service >&2
  fi
  [ -x "$BIN" ] || die "$BIN is missing"

  TS=$(date +%Y%m%d_%H%M%S)_$$
  DB="inventory_${BENCH_NAME//-/_}_$TS"
  PREFIX="${BENCH_NAME//-/}$TS:"
  RUN_DIR="$ROOT/.run/$BENCH_NAME-$TS"
  mkdir -p "$RUN_DIR"
  ADMIN_TOKEN="bench-admin-$(bench_token)"
  SERVICE_TOKEN="bench-service-$(bench_token)"
  BASE="http://127.0.0.1:$PORT"
  SERVICE_PID=""
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

bench_stop_service() {
  if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
    log "stopping the service (pid $SERVICE_PID)"
    kill -TERM "$SERVICE_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVICE_PID" 2>/dev/null || true
    wait "$SERVICE_PID" 2>/dev/null || true
  fi
  SERVICE_PID=""
}

bench_cleanup() {
  local rc=$?
  bench_stop_service
  if [ "${KEEP:-0}" = "1" ]; then
    log "kept: database $DB, Redis prefix $PREFIX, $RUN_DIR"
  else
    if declare -F bench_cleanup_extra >/dev/null; then bench_cleanup_extra; fi
    sql -e "DROP DATABASE IF EXISTS \`$DB\`" 2>/dev/null || true
    rcli --scan --pattern "${PREFIX}*" 2>/dev/null | xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" unlink >/dev/null 2>&1 || true
  fi
  exit "$rc"
}

# The verdict: the failures the script collected in its array `failures` (exit 1), or
# "OK: <what held>".
bench_verdict() {
  if [ ${#failures[@]} -gt 0 ]; then
    echo
    echo "FAIL: ${#failures[@]} verification failure(s):"
    printf '  %s\n' "${failures[@]}"
    exit 1
  fi
  echo
  echo "OK: $1"
}

bench_start() {
  log "database $DB, Redis prefix $PREFIX, port $PORT, run directory $RUN_DIR"
  sql -e "CREATE DATABASE \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
  bench_start_service
}

# Starts the service on the run's database (which must exist); the service migrates it.
bench_start_service() {
  INVENTORY__HTTP__BIND="127.0.0.1:$PORT" \
  INVENTORY__REDIS__URL="$REDIS_URL" \
  INVENTORY__REDIS__KEY_PREFIX="$PREFIX" \
  INVENTORY__DATABASE__URL="mysql://$DB_USER:$DB_PASSWORD@$DB_HOST:$DB_PORT/$DB" \
  INVENTORY__AUTH__ADMIN_TOKENS="$ADMIN_TOKEN" \
  INVENTORY__AUTH__SERVICE_TOKENS="$SERVICE_TOKEN" \
  INVENTORY__LOG__FORMAT=json \
  RUST_LOG="${RUST_LOG:-warn}" \
    "$BIN" >>"$RUN_DIR/service.log" 2>&1 &
  SERVICE_PID=$!
  for _ in $(seq 1 300); do
    curl -fsS "$BASE/health" >/dev/null 2>&1 && break
    kill -0 "$SERVICE_PID" 2>/dev/null || { tail -20 "$RUN_DIR/service.log" >&2; die "the service exited"; }
    sleep 0.1
  done
  curl -fsS "$BASE/health" >/dev/null || die "the service does not answer on $BASE"
  log "service up (pid $SERVICE_PID)"
}
