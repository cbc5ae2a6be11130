#!/usr/bin/env bash
# Highest offered rate the DB keeps up with: bisection over `cargo bench --bench oversell --
# --sustain-secs` runs (see benches/oversell.rs). A rate passes when the run verifies (zero
# oversell, invariants) and its backlog stays flat (the JSON's sustained.flat).
#
#   LO=1000 HI=20000 STEPS=4 SECS=60 SKUS=10000 TARGET=inprocess scripts/bench-sustain-search.sh [extra bench flags]
#
# Each step is one bench run of SECS seconds (plus stocking SKUS SKUs and the verification),
# so the search takes about STEPS x (SECS + 30) s. LO is measured first (it must pass); HI is
# taken as failing without being run. Prints one line per step and the result.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LO=${LO:-1000}
HI=${HI:-20000}
STEPS=${STEPS:-4}
SECS=${SECS:-60}
SKUS=${SKUS:-10000}
TARGET=${TARGET:-inprocess}
OUT="$ROOT/.run/bench-sustain-search-$(date +%Y%m%d_%H%M%S)"
mkdir -p "$OUT"
command -v jq >/dev/null || { echo "jq is missing (apt-get install jq)" >&2; exit 2; }

# Runs one rate; prints "<flat> <persisted/s steady> <backlog tail max>", returns 0 when it
# verified and stayed flat.
try_rate() {
  local rate=$1 json="$OUT/rate-$1.json" rc=0
  cargo bench --bench oversell -- --target "$TARGET" --skus "$SKUS" --rate "$rate" \
    --sustain-secs "$SECS" --json "$json" "${@:2}" >"$OUT/rate-$rate.txt" 2>&1 || rc=$?
  if [ ! -s "$json" ]; then
    echo "no-result 0 0"
    return 1
  fi
  local flat persisted tail
  flat=$(jq -r '.sustained.flat' "$json")
  persisted=$(jq -r '.sustained.persistedPerSecSteady | floor' "$json")
  tail=$(jq -r '.sustained.backlogTailMax' "$json")
  if [ "$rc" != "0" ]; then
    echo "VERIFY-FAILED $persisted $tail"
    return 1
  fi
  echo "$flat $persisted $tail"
  [ "$flat" = "true" ]
}

echo "| offered orders/s | flat | persisted/s (steady) | backlog, largest in the tail |"
echo "|---|---|---|---|"
ok=1
r=$(try_rate "$LO" "$@") || ok=0
read -r flat persisted tail <<<"$r"
echo "| $LO | $flat | $persisted | $tail |"
if [ "$ok" = "0" ]; then
  echo "even LO=$LO does not keep up or verify (details in $OUT)"
  exit 1
fi
good=$LO
bad=$HI
for _ in $(seq 1 "$STEPS"); do
  mid=$(((good + bad) / 2))
  [ "$mid" -le "$good" ] && break
  ok=1
  r=$(try_rate "$mid" "$@") || ok=0
  read -r flat persisted tail <<<"$r"
  echo "| $mid | $flat | $persisted | $tail |"
  if [ "$ok" = "1" ]; then good=$mid; else bad=$mid; fi
done
echo
echo "highest rate kept up with: $good orders/s (lowest known to fail, or HI untried: $bad); runs in $OUT"
