#!/usr/bin/env bash
# A demo of logist's cleanup that is also a check (CI runs it from tests/test_cleanup.py):
#   1. a job with a `sleep 3` step runs in the background: its workspace exists while the step
#      runs and is gone once the job is over (policy `always`), its work on branch logist/<id>;
#   2. a kept workspace (`--cleanup never`) is removed by hand with `logist job cleanup`;
#   3. a stale sweep (`logist job cleanup --stale`) skips recent jobs, then cleans idle ones.
# Exits non-zero as soon as one expectation fails; prints "demo: ok" at the end.
#
# LOGIST is the logist command (default: `logist` on PATH; CI passes the venv's, e.g.
# LOGIST=.venv/bin/logist, and "python -m logist" works too). LOGIST_DEMO_IMAGE is the steps'
# image (default logist/step:latest). Everything happens in a temp jobs root, removed at the end.
set -euo pipefail

LOGIST=${LOGIST:-logist}
IMAGE=${LOGIST_DEMO_IMAGE:-logist/step:latest}
work=$(mktemp -d "${TMPDIR:-/tmp}/logist-demo.XXXXXX")
jobs="$work/jobs"
repo="$work/repo"
runner=""

say() { printf 'demo: %s\n' "$*"; }
fail() { printf 'demo: FAIL: %s\n' "$*" >&2; exit 1; }
# shellcheck disable=SC2086  # LOGIST may be a command with arguments ("python -m logist")
lg() { $LOGIST --jobs-dir "$jobs" "$@"; }

finish() {
  local rc=$?
  if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then
    kill -TERM "$runner" 2>/dev/null || true  # logist stops its containers, then exits 130
    wait "$runner" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ]; then  # leave no container or workspace behind after a failure either
    lg job cleanup --stale --older-than 0s >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap finish EXIT

# wait_until SECONDS CONDITION...: poll CONDITION every 0.1 s, at most SECONDS.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

say "jobs root $jobs"
git init -q -b main "$repo"
echo "hello" > "$repo/README.md"
git -C "$repo" add -A
git -C "$repo" -c user.name=demo -c user.email=demo@localhost commit -qm "initial"

# --- 1. the workspace exists while the job runs, and is gone after ---------------------------
id=$(lg job create --repo "$repo" --image "$IMAGE" --network none \
  --step 'echo "made by a step" > result.txt && sleep 3')
ws="$jobs/$id/workspace"
say "created job $id (cleanup policy: always)"
lg job run "$id" >"$work/run.log" 2>&1 &
runner=$!
started() { [ -f "$ws/result.txt" ] || ! kill -0 "$runner" 2>/dev/null; }
wait_until 60 started || fail "the step did not start within 60 s"
if [ ! -f "$ws/result.txt" ]; then
  cat "$work/run.log" >&2
  fail "logist job run $id ended before its step ran"
fi
[ -d "$ws/.git" ] || fail "no workspace at $ws while the job runs"
lg job status "$id" --json | grep -q '"active": true' || fail "job $id not active while running"
say "while it runs: workspace $ws exists: $(ls -A "$ws" | tr '\n' ' ')"
if ! wait "$runner"; then
  cat "$work/run.log" >&2
  fail "logist job run $id failed"
fi
runner=""
[ ! -e "$ws" ] || fail "workspace $ws still exists after the job"
[ "$(git -C "$repo" show "logist/$id:result.txt")" = "made by a step" ] ||
  fail "the step's work is not on branch logist/$id"
[ -f "$jobs/$id/result.bundle" ] || fail "no result.bundle for $id"
say "after the job: workspace gone, work on branch logist/$id and in result.bundle"

# --- 2. a kept workspace, removed with `logist job cleanup` ----------------------------------
kept=$(lg job create --repo "$repo" --image "$IMAGE" --network none --cleanup never \
  --step 'echo kept > kept.txt')
lg job run "$kept" >/dev/null
[ -f "$jobs/$kept/workspace/kept.txt" ] || fail "--cleanup never did not keep the workspace"
say "job $kept (cleanup never) kept its workspace"
echo "written after the last step" > "$jobs/$kept/workspace/late.txt"
lg job cleanup "$kept"
[ ! -e "$jobs/$kept/workspace" ] || fail "logist job cleanup left $jobs/$kept/workspace"
git -C "$repo" cat-file -e "logist/$kept:late.txt" 2>/dev/null ||
  fail "job cleanup did not harvest late.txt first"
lg job cleanup "$kept" | grep -q "nothing to clean" || fail "a second cleanup had work to do"
say "logist job cleanup removed it (after harvesting late.txt); again: nothing to clean"

# --- 3. the stale sweep ----------------------------------------------------------------------
idle=()
for n in 1 2; do
  j=$(lg job create --repo "$repo" --image "$IMAGE" --network none --cleanup never \
    --step "echo $n > n.txt")
  lg job run "$j" >/dev/null
  idle+=("$j")
done
lg job cleanup --stale --older-than 1h
for j in "${idle[@]}"; do
  [ -d "$jobs/$j/workspace" ] || fail "the sweep removed $j, active less than 1h ago"
done
say "a sweep with --older-than 1h kept both recent workspaces"
lg job cleanup --stale --older-than 0s --json | tee "$work/sweep.json"
for j in "${idle[@]}"; do
  [ ! -e "$jobs/$j/workspace" ] || fail "the sweep left $jobs/$j/workspace"
  grep -q "\"job\": \"$j\"" "$work/sweep.json" || fail "the sweep's report does not list $j"
done
say "a sweep with --older-than 0s cleaned ${idle[*]}"

say "ok"
