#!/usr/bin/env bash
# Everything a fresh machine needs, then the full test suite:
#   engine (installed and started if missing) -> venv with logist[test] -> images -> ruff -> pytest
#   -> the core of the suite against Podman, rootful and rootless (scripts/test-podman.sh)
# Extra arguments go to pytest (e.g. scripts/test.sh -k cleanup -x).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

scripts/ensure-docker.sh
scripts/setup-venv.sh
PYTHON=.venv/bin/python scripts/build-images.sh
.venv/bin/ruff check logist tests benchmarks
.venv/bin/ruff format --check logist tests benchmarks >/dev/null || echo "test.sh: (ruff format would reformat some files)" >&2
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
echo "test.sh: pytest exit $rc after $(( $(date +%s) - start ))s" >&2
# The core of the suite against rootful and rootless Podman (docs/podman.md); as root only,
# and not when pytest was given arguments (a chosen subset of the Docker suite).
if [ "$(id -u)" = 0 ] && [ $# -eq 0 ] && [ "${LOGIST_SKIP_PODMAN:-0}" != 1 ]; then
  set +e
  scripts/test-podman.sh
  rc_podman=$?
  set -e
  echo "test.sh: Podman runs exit $rc_podman after $(( $(date +%s) - start ))s" >&2
  [ "$rc" != 0 ] || rc=$rc_podman
fi
exit $rc
