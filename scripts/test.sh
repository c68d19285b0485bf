#!/usr/bin/env bash
# Everything a fresh machine needs, then the full test suite:
#   engine (installed and started if missing) -> venv with logist[test] -> images -> ruff -> pytest
#   in parallel workers, with the core of the suite against Podman, rootful and rootless
#   (scripts/test-podman.sh), running alongside
# Extra arguments go to pytest (e.g. scripts/test.sh -k cleanup -x).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

scripts/ensure-docker.sh
scripts/setup-venv.sh
PYTHON=.venv/bin/python scripts/build-images.sh
.venv/bin/ruff check logist tests benchmarks
.venv/bin/ruff format --check logist tests benchmarks >/dev/null || echo "test.sh: (ruff format would reformat some files)" >&2
# The core of the suite against rootful and rootless Podman (docs/podman.md) runs alongside the
# Docker suite (other engines, other jobs roots); as root only, and not when pytest was given
# arguments (a chosen subset of the Docker suite). Its output is shown after the Docker run's.
podman_pid=
if [ "$(id -u)" = 0 ] && [ $# -eq 0 ] && [ "${LOGIST_SKIP_PODMAN:-0}" != 1 ]; then
  podman_log=$(mktemp)
  scripts/test-podman.sh >"$podman_log" 2>&1 &
  podman_pid=$!
fi
# The Docker suite in parallel workers (tests of one machine-wide resource share a worker:
# tests/conftest.py, GROUPS); LOGIST_TEST_WORKERS=0 runs it in one process.
workers=${LOGIST_TEST_WORKERS:-3}
parallel=()
[ "$workers" = 0 ] || parallel=(-n "$workers" --dist loadgroup)
set +e
.venv/bin/python -m pytest "${parallel[@]}" "$@"
rc=$?
set -e
echo "test.sh: pytest exit $rc after $(( $(date +%s) - start ))s" >&2
if [ -n "$podman_pid" ]; then
  set +e
  wait "$podman_pid"
  rc_podman=$?
  set -e
  cat "$podman_log" >&2
  rm -f "$podman_log"
  echo "test.sh: Podman runs exit $rc_podman after $(( $(date +%s) - start ))s" >&2
  [ "$rc" != 0 ] || rc=$rc_podman
fi
exit $rc
