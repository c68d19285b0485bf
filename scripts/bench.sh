#!/usr/bin/env bash
# logist's benchmarks (issue 8): every measure against its baseline, with the real engine.
#   engine (installed and started if missing) -> venv with logist -> images -> python -m benchmarks
# Arguments go to the benchmarks: --quick, --only NAME, --json FILE, --image IMAGE, --quiet.
# Runs as root (the non-root cleanup measure creates the user logist-bench and owns files as root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-docker.sh
scripts/setup-venv.sh
PYTHON=.venv/bin/python scripts/build-images.sh
exec .venv/bin/python -m benchmarks "$@"
