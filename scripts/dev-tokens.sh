#!/usr/bin/env bash
# Development tokens for `make run`: created once in .data/dev-tokens.env (git-ignored),
# then reused. Load them into a shell with: source .data/dev-tokens.env
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FILE="$ROOT/.data/dev-tokens.env"
mkdir -p "$ROOT/.data"
if [ ! -f "$FILE" ]; then
  token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  umask 077
  {
    echo "export ADMIN_TOKEN=dev-admin-$(token)"
    echo "export SERVICE_TOKEN=dev-service-$(token)"
  } >"$FILE"
fi
# shellcheck disable=SC1090
. "$FILE"
cat >&2 <<MSG
[dev-tokens] mutating endpoints need a bearer token (from $FILE):
  admin   (stock, sync, reconcile, everything): $ADMIN_TOKEN
  service (reserve, confirm, release):          $SERVICE_TOKEN
  try:  source .data/dev-tokens.env
        curl -s -X POST localhost:8082/inventory/reserve -H "Authorization: Bearer \$SERVICE_TOKEN" \\
          -H 'Content-Type: application/json' -d '{"orderNo":"ORD001","skuId":1001,"warehouseId":1,"qty":5}'
MSG
