#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test (test/ui/dashboard.test.ts, driven by
# playwright-core), idempotently (run as root; quick when present). No browser is downloaded from elsewhere.
set -euo pipefail

log() { printf 'ensure-browser: %s\n' "$*" >&2; }

if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (installs chromium)"
  exit 1
fi
log "installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }
/usr/bin/chromium --version >&2
