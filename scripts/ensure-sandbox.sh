#!/usr/bin/env bash
# Installs what the process backend's sandbox needs, idempotently, on Debian (run as root; quick when present):
#  - iproute2 (`ip`): brings `lo` up inside each instance's network namespace;
#  - slirp4netns: user-mode networking for `network: egress` instances, without the host's loopback.
set -euo pipefail

log() { printf 'ensure-sandbox: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (installs packages)"
  exit 1
fi

missing=()
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
command -v slirp4netns >/dev/null 2>&1 || [ -x /usr/bin/slirp4netns ] || missing+=(slirp4netns)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
fi
