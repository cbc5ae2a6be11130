#!/usr/bin/env bash
# A local Redis Cluster for development and tests: 6 redis-server processes in cluster mode
# on 127.0.0.1:7000-7005 (3 masters, 3 replicas), AOF fsync every second, data under
# .data/cluster/<port>. A replica may take over however long it was cut off
# (cluster-replica-validity-factor 0): the tests cut links on purpose. Idempotent: a cluster that already answers "cluster_state:ok" is left
# alone. `scripts/redis-cluster.sh stop` stops it (data kept), `reset` also wipes it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA="${INVENTORY_DATA_DIR:-$ROOT/.data}/cluster"
FIRST_PORT="${CLUSTER_FIRST_PORT:-7000}"
PORTS=()
for i in 0 1 2 3 4 5; do PORTS+=($((FIRST_PORT + i))); done

log() { printf '[cluster] %s\n' "$*" >&2; }

stop() {
  for p in "${PORTS[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  reset) stop; sleep 0.5; rm -rf "$DATA"; log "stopped and wiped"; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|reset]" >&2; exit 2 ;;
esac

command -v redis-server >/dev/null 2>&1 || bash "$ROOT/scripts/services.sh"

# A node restarted after a kill must find its own nodes.conf: when some nodes of a cluster
# already run (perhaps started from another checkout), use their data directory.
for p in "${PORTS[@]}"; do
  running_dir=$(redis-cli -p "$p" config get dir 2>/dev/null | sed -n 2p || true)
  if [ -n "$running_dir" ]; then
    DATA=$(dirname "$running_dir")
    break
  fi
done

all_up=1
for p in "${PORTS[@]}"; do redis-cli -p "$p" ping >/dev/null 2>&1 || all_up=0; done
if [ "$all_up" = 1 ] && redis-cli -p "$FIRST_PORT" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
  log "cluster already answering on :$FIRST_PORT"
  exit 0
fi

for p in "${PORTS[@]}"; do
  mkdir -p "$DATA/$p"
  if redis-cli -p "$p" ping >/dev/null 2>&1; then continue; fi
  redis-server --port "$p" --bind 127.0.0.1 --dir "$DATA/$p" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --cluster-replica-validity-factor 0 --repl-diskless-sync-delay 0 \
    --appendonly yes --appendfsync everysec --save "" \
    --daemonize yes --pidfile "$DATA/$p/redis.pid" --logfile "$DATA/$p/redis.log"
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do
    redis-cli -p "$p" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
done

# Nodes restarted from their nodes.conf find each other again; a fresh set is joined here.
if ! redis-cli -p "$FIRST_PORT" cluster info | grep -q 'cluster_known_nodes:6'; then
  log "creating the cluster (3 masters, 3 replicas)"
  hosts=()
  for p in "${PORTS[@]}"; do hosts+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${hosts[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
fi
# A node restarted after a failover rejoins as a replica: allow a minute.
for _ in $(seq 1 600); do
  ok=1
  for p in "${PORTS[@]}"; do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
  done
  # Every replica attached and in sync (the failover test needs one per master).
  [ "$(redis-cli -p "$FIRST_PORT" cluster nodes | grep -c slave)" = 3 ] || ok=0
  for p in "${PORTS[@]}"; do
    info=$(redis-cli -p "$p" info replication 2>/dev/null || true)
    if grep -q 'role:slave' <<<"$info"; then
      grep -q 'master_link_status:up' <<<"$info" || ok=0
    fi
  done
  [ "$ok" = 1 ] && break
  sleep 0.1
done
[ "$ok" = 1 ] || { log "cluster did not reach state ok"; exit 1; }
log "ready: redis://127.0.0.1:$FIRST_PORT .. :${PORTS[5]}"
