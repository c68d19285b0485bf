#!/usr/bin/env bash
# logist end to end on a fresh machine: engine, install, images, then a 3-step job in containers
# on a small git repository, and its result: the job branch, a log, and nothing left behind.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-docker.sh
scripts/setup-venv.sh
PYTHON=.venv/bin/python scripts/build-images.sh
LOGIST=${LOGIST:-$PWD/.venv/bin/logist}

work=$(mktemp -d /tmp/logist-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
export LOGIST_JOBS_DIR="$work/jobs"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "a small git repository"
git init -q -b main "$work/project"
printf 'print("hello")\n' > "$work/project/app.py"
printf '__pycache__/\n' > "$work/project/.gitignore"
git -C "$work/project" add -A
git -C "$work/project" -c user.name=demo -c user.email=demo@example.invalid commit -qm "first"
git -C "$work/project" log --oneline

say "create a job with 3 steps"
id=$("$LOGIST" job create demo --repo "$work/project" --prompt "add a test" \
  --step 'echo "step $LOGIST_STEP of job $LOGIST_JOB_ID: $LOGIST_PROMPT"; python3 app.py' \
  --step 'printf "import app\n" > test_app.py && echo wrote test_app.py' \
  --step 'python3 -c "import test_app" && git log --oneline | head -3')
echo "job id: $id"

say "run it (each step in its own container)"
"$LOGIST" job run "$id"

say "the job"
"$LOGIST" job status "$id"

say "its branch in the source repository (HEAD and working tree untouched)"
git -C "$work/project" log --oneline "logist/$id"
git -C "$work/project" show --stat --format='%h %s' "logist/$id" | head -5
git -C "$work/project" status --short --branch

say "the log of step 1"
"$LOGIST" job logs "$id" --step 1

say "nothing left behind"
if [ -e "$LOGIST_JOBS_DIR/$id/workspace" ]; then echo "workspace still there" >&2; exit 1; fi
echo "workspace: gone"
left=$(docker ps -aq --filter "label=logist.jobs-dir=$LOGIST_JOBS_DIR")
if [ -n "$left" ]; then echo "containers left: $left" >&2; exit 1; fi
echo "containers: none"
git -C "$work/project" cat-file -e "logist/$id:test_app.py"
echo "result: test_app.py is on branch logist/$id; bundle at $LOGIST_JOBS_DIR/$id/result.bundle"
say "demo OK"
