#!/usr/bin/env bash
# Installs schemathesis (API fuzzing from the OpenAPI document) into .data/venv, once.
# The fuzz test (tests/api/fuzz.rs) runs .data/venv/bin/st against a live instance.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV=.data/venv
log() { echo "[fuzz-tools] $*"; }
if [ -x "$VENV/bin/st" ] && "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  log "installing python3 and python3-venv"
  apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
fi
log "installing schemathesis $VERSION into $VENV"
mkdir -p .data
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
"$VENV/bin/st" --version
