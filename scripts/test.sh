#!/usr/bin/env bash
# The whole test suite, as the README's second command runs it (`npm test`).
# As root it first makes the real parts answer: a Docker engine (installed and started when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/ensure-docker.sh
else
  echo "test: not root — the docker and cgroup suites need root and will fail without it" >&2
fi
npx tsc --noEmit -p .
npx tsc -p tsconfig.build.json
npx tap "$@"
