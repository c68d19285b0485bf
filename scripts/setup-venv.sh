#!/usr/bin/env bash
# Make .venv with logist installed (editable) and its test extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import logist, pytest, pytest_timeout, xdist, testcontainers, docker, tenacity, yaml, typer" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 |
    grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  touch .venv/.installed
fi
# logist's bytecode, as an installed package has it: where PYTHONDONTWRITEBYTECODE is set (this
# machine sets it) an editable install is otherwise compiled from source by every process
# (~90 ms a command here, and the test suite starts ~1,500 of them)
.venv/bin/python -m compileall -q logist >/dev/null
