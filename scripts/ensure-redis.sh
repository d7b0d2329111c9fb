#!/usr/bin/env bash
# Installs Debian's redis-server (the shared store of issue 11), idempotently; quick when present (run as root).
# The tests start their own redis-server processes (one per test, on a loopback port, with AOF on) and stop them
# by PID, so nothing here starts a system-wide server. Without root: checks that redis-server is on PATH.
set -euo pipefail

log() { printf 'ensure-redis: %s\n' "$*" >&2; }

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  log "redis-server is not installed and installing it needs root (apt-get install -y redis-server)"
  exit 1
fi
log "installing redis-server"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends redis-server redis-tools || { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server redis-tools; }
# Debian's package starts a system server on 6379; the platform's tests do not use it.
command -v redis-server >/dev/null 2>&1 || { log "redis-server still missing after install"; exit 1; }
