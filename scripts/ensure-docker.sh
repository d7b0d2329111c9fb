#!/usr/bin/env bash
# Makes a Docker engine answer on /var/run/docker.sock, idempotently, on a fresh Debian 12 machine (run as root).
#  1. installs docker.io when the `docker` client or `dockerd` is missing (/usr/local/bin/docker may be a
#     client-only binary: dockerd, containerd and runc come from docker.io);
#  2. starts dockerd in the background when the socket does not answer (no systemd on these machines),
#     logging to $KINDLING_DOCKERD_LOG and writing $KINDLING_DOCKERD_PIDFILE, and waits until it answers;
#  3. removes containers labelled kindling.instance left by earlier runs.
set -euo pipefail

DOCKERD_LOG="${KINDLING_DOCKERD_LOG:-/tmp/kindling-dockerd.log}"
DOCKERD_PIDFILE="${KINDLING_DOCKERD_PIDFILE:-/var/run/docker.pid}"
WAIT_SECONDS="${KINDLING_DOCKERD_WAIT_SECONDS:-60}"

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (installs packages, starts dockerd)"
  exit 1
fi

if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends docker.io
fi

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! answers; then
  # A stale pid file from a dead dockerd makes the next dockerd refuse to start.
  if [ -f "$DOCKERD_PIDFILE" ] && ! kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
    rm -f "$DOCKERD_PIDFILE"
  fi
  if [ -f "$DOCKERD_PIDFILE" ]; then
    log "dockerd (pid $(cat "$DOCKERD_PIDFILE")) is running but not answering yet; waiting"
  else
    log "starting dockerd (log: $DOCKERD_LOG)"
    # containerd is started by dockerd itself when no system containerd runs.
    # Its own session: dockerd outlives the shell (and the process group) that ran this script.
    setsid nohup dockerd --pidfile "$DOCKERD_PIDFILE" >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 $((WAIT_SECONDS * 4))); do
    if answers; then break; fi
    if [ -f "$DOCKERD_PIDFILE" ] && ! kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
      log "dockerd exited; last lines of $DOCKERD_LOG:"; tail -n 30 "$DOCKERD_LOG" >&2 || true
      exit 1
    fi
    sleep 0.25
  done
  if ! answers; then
    log "dockerd did not answer within ${WAIT_SECONDS}s; last lines of $DOCKERD_LOG:"
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    exit 1
  fi
fi

stale="$(docker ps -aq --filter label=kindling.instance)"
if [ -n "$stale" ]; then
  log "removing $(printf '%s\n' "$stale" | wc -l) container(s) left by earlier runs"
  # shellcheck disable=SC2086
  docker rm -f $stale >/dev/null
fi

log "docker $(docker version --format '{{.Server.Version}}') ready ($(docker info --format '{{.Driver}} storage, {{.CgroupDriver}} cgroup driver, cgroup v{{.CgroupVersion}}'))"
