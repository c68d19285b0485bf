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
# The Docker suite in two lanes at once: the tests of the machine-wide test engines (the
# nodes, the second engine), the heaviest concurrency tests and the fault-injection tests (their
# deadlines are seconds) in one process, the rest in
# LOGIST_TEST_WORKERS parallel workers (0: everything in one process). With arguments, one
# pytest run of just those.
workers=${LOGIST_TEST_WORKERS:-2}
SERIAL=(tests/test_engines.py tests/test_nodes.py tests/test_concurrency.py tests/test_faults.py)
set +e
if [ $# -gt 0 ] || [ "$workers" = 0 ]; then
  .venv/bin/python -m pytest "$@"
  rc=$?
else
  base=$(mktemp -d)
  serial_log="$base/serial.log"
  .venv/bin/python -m pytest -p no:cacheprovider --durations=15 "${SERIAL[@]}" >"$serial_log" 2>&1 &
  serial_pid=$!
  ignore=()
  for f in "${SERIAL[@]}"; do ignore+=(--ignore "$f"); done
  .venv/bin/python -m pytest -p no:cacheprovider --durations="${LOGIST_TEST_DURATIONS:-30}" -n "$workers" --dist worksteal "${ignore[@]}"
  rc=$?
  wait "$serial_pid"
  rc_serial=$?
  echo "test.sh: the engines lane (${SERIAL[*]}):" >&2
  cat "$serial_log" >&2
  [ "$rc" != 0 ] || rc=$rc_serial
  rm -rf "$base"
fi
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
