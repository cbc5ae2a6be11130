#!/usr/bin/env bash
# Installs (when missing) and starts the stores the service and its tests need:
# redis-server and MariaDB, with their data under .data/ of this repo (git-ignored).
# Idempotent: a store that already answers on its port is left alone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA="${INVENTORY_DATA_DIR:-$ROOT/.data}"
REDIS_PORT="${REDIS_PORT:-6379}"
DB_PORT="${DB_PORT:-3306}"
DB_NAME="${DB_NAME:-inventory}"
DB_USER="${DB_USER:-inventory}"
DB_PASSWORD="${DB_PASSWORD:-inventory}"

log() { printf '[services] %s\n' "$*" >&2; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
# Prometheus (alert rule tests and the alerting test) only when asked: `make test` asks.
if [ "${PROMETHEUS:-0}" = 1 ]; then
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
fi
# The console's browser tests drive Debian's chromium through chromium-driver (WebDriver).
if [ "${BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-liberation)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fi

if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages' own init scripts may try to start a system-wide instance; ours runs from .data/.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$DATA/redis" "$DATA/mariadb"

# ---------- Redis (AOF on, fsync every second) ----------
if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  log "redis already answering on :$REDIS_PORT"
else
  log "starting redis on :$REDIS_PORT (data in $DATA/redis)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DATA/redis" \
    --appendonly yes --appendfsync everysec --save "" \
    --daemonize yes --pidfile "$DATA/redis/redis.pid" --logfile "$DATA/redis/redis.log"
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$REDIS_PORT" ping >/dev/null
fi

# ---------- MariaDB ----------
SOCK="$DATA/mariadb.sock"
db_ping() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$DB_PORT" -u "$DB_USER" -p"$DB_PASSWORD" ping >/dev/null 2>&1; }
root_sql() {
  # Our own instance is reached through its socket; a system-wide one through the default socket.
  if [ -S "$SOCK" ]; then mariadb --socket="$SOCK" -u root "$@"; else mariadb -u root "$@"; fi
}

if db_ping; then
  log "mariadb already answering on :$DB_PORT"
else
  if ! mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$DB_PORT" ping >/dev/null 2>&1 \
      && ! mariadb-admin --protocol=tcp -h 127.0.0.1 -P "$DB_PORT" -u root ping 2>&1 | grep -q 'Access denied'; then
    if [ ! -d "$DATA/mariadb/mysql" ]; then
      log "initialising mariadb data dir $DATA/mariadb"
      mariadb-install-db --user=root --datadir="$DATA/mariadb" --auth-root-authentication-method=socket \
        --skip-test-db >"$DATA/mariadb-install.log" 2>&1
    fi
    log "starting mariadb on :$DB_PORT (data in $DATA/mariadb)"
    setsid mariadbd --user=root --datadir="$DATA/mariadb" --port="$DB_PORT" --bind-address=127.0.0.1 \
      --socket="$SOCK" --pid-file="$DATA/mariadb.pid" --log-error="$DATA/mariadb.err" \
      --skip-name-resolve --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=1 \
      --max-connections=1000 --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 150); do
      mariadb-admin --socket="$SOCK" -u root ping >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  log "creating database $DB_NAME and user $DB_USER"
  root_sql <<SQL
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
-- Tests create one database per test (inventory_t_*), so the dev user may create databases.
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'%';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
  db_ping || { log "mariadb does not answer for $DB_USER on :$DB_PORT"; tail -20 "$DATA/mariadb.err" >&2 || true; exit 1; }
fi
# ---------- Kafka-compatible broker (tansu) ----------
# No Kafka in Debian: tansu speaks the Kafka protocol. Installed once with cargo (about
# 15 minutes), then reused. Built with SQLite storage as well as memory: the dev broker runs
# in memory (every start is a clean broker); the broker-restart fault test runs one of its
# own on SQLite so that its messages and offsets survive the restart.
KAFKA_PORT="${KAFKA_PORT:-9092}"
TANSU_ROOT="$HOME/.cargo/tansu-libsql"
TANSU="$TANSU_ROOT/bin/tansu"
if [ "${SKIP_KAFKA:-0}" != "1" ]; then
  if [ ! -x "$TANSU" ]; then
    command -v cc >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq build-essential >/dev/null; }
    log "installing tansu into $TANSU_ROOT (a Kafka-compatible broker; once, takes several minutes)"
    cargo install tansu --locked --no-default-features --features dynostore,libsql --root "$TANSU_ROOT" \
      >"$DATA/tansu-install.log" 2>&1 || { tail -30 "$DATA/tansu-install.log" >&2; exit 1; }
  fi
  kafka_up() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; }
  if kafka_up; then
    log "kafka broker already answering on :$KAFKA_PORT"
  else
    log "starting tansu on :$KAFKA_PORT"
    setsid "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine memory://tansu/ </dev/null >"$DATA/tansu.log" 2>&1 &
    echo $! >"$DATA/tansu.pid"
    for _ in $(seq 1 100); do kafka_up && break; sleep 0.1; done
    kafka_up || { log "tansu did not start"; tail -20 "$DATA/tansu.log" >&2; exit 1; }
  fi
fi

log "ready: redis://127.0.0.1:$REDIS_PORT mysql://$DB_USER@127.0.0.1:$DB_PORT/$DB_NAME kafka 127.0.0.1:$KAFKA_PORT"
