"""Measures of the file system work: workspace setup, cleanup, cleanup of another user's files."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks import benchuser
from benchmarks.core import (
    BENCH_LABEL,
    BUSYBOX,
    BenchError,
    Context,
    Result,
    alternate,
    remove_tree,
    settle,
    timed,
    timed_run,
)
from benchmarks.fixtures import chown_tree, clone, kept_job, make_repo


def setup(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist.workspace.setup_workspace(store, id)`` of a fresh job (in-process), vs
    ``git clone --local`` of the same repository."""
    from logist.jobs import create_job
    from logist.store import Store
    from logist.workspace import setup_workspace

    files = ctx.pick(20_000, 2_000)
    res.title = f"workspace setup, {files:,} files"
    repo = make_repo(scratch / "src", files)
    root = scratch / "jobs"
    root.mkdir()
    store = Store(root)
    clone(repo, scratch / "warm-up")  # the source's pack in the page cache for both sides
    remove_tree(scratch / "warm-up")

    def logist(i: int) -> float:
        job_id = f"setup-{i}"
        create_job(store, {"id": job_id, "repo": str(repo), "image": ctx.image, "steps": ["true"]})
        settle()
        seconds = timed(lambda: setup_workspace(store, job_id))
        ws = store.workspace(job_id)
        if not (ws / "d0000" / "f000000.txt").is_file():
            raise BenchError("setup_workspace did not check the files out")
        remove_tree(ws)
        return seconds

    def baseline(i: int) -> float:
        dest = scratch / f"clone-{i}"
        settle()
        seconds = timed_run(["git", "clone", "-q", "--local", str(repo), str(dest)])
        remove_tree(dest)
        return seconds

    res.logist, res.baseline = alternate(ctx.reps(4, 2), logist, baseline, ctx.say)


def cleanup(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist job cleanup ID`` of a kept workspace (a job that ran with ``cleanup: never``),
    vs ``rm -rf`` of a clone of the same repository."""
    from logist.store import Store

    files = ctx.pick(50_000, 5_000)
    res.title = f"cleanup, {files:,}-file workspace"
    repo = make_repo(scratch / "src", files)
    root = scratch / "jobs"
    root.mkdir()
    store = Store(root)

    def logist(i: int) -> float:
        job_id = f"clean-{i}"
        ws = kept_job(store, repo, ctx.image, job_id)
        settle()
        seconds = timed_run(ctx.lg(root, "job", "cleanup", job_id))
        if os.path.lexists(ws):
            raise BenchError("logist job cleanup left the workspace")
        return seconds

    def baseline(i: int) -> float:
        ws = scratch / f"baseline-{i}" / "workspace"
        ws.parent.mkdir()
        clone(repo, ws)
        settle()
        seconds = timed_run(["rm", "-rf", str(ws)])
        if os.path.lexists(ws):
            raise BenchError("rm -rf left the workspace")
        return seconds

    res.logist, res.baseline = alternate(ctx.reps(3, 2), logist, baseline, ctx.say)


def cleanup_nonroot(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist job cleanup ID`` run by the non-root user ``logist-bench`` (in group docker)
    of a kept workspace whose files are all root's, vs ``docker run --rm -v JOBDIR:/job
    busybox rm -rf /job/workspace`` run by the same user."""
    from logist.store import Store

    files = ctx.pick(50_000, 5_000)
    res.title = f"cleanup, {files:,} root-owned files, non-root"
    pw, bench_logist = benchuser.ensure_venv(ctx.say)
    env = benchuser.user_env(pw)
    uid, gid = pw.pw_uid, pw.pw_gid
    repo = make_repo(scratch / "src", files)
    root = scratch / "jobs"
    root.mkdir()
    store = Store(root)
    label = f"{BENCH_LABEL}={ctx.run_id}"

    def logist(i: int) -> float:
        job_id = f"nonroot-{i}"
        ws = kept_job(store, repo, ctx.image, job_id)  # made as root: every file is root's
        chown_tree(root, uid, gid, skip=ws)  # the jobs root and job directory are the user's
        if os.stat(ws).st_uid != 0 or os.stat(ws.parent).st_uid != uid:
            raise BenchError("the workspace is not root's in a job directory of the user")
        settle()
        cmd = [bench_logist, "--jobs-dir", str(root), "job", "cleanup", job_id]
        seconds = timed_run(cmd, user=benchuser.USER, env=env)
        if os.path.lexists(ws):
            raise BenchError("logist job cleanup (non-root) left the workspace")
        return seconds

    def baseline(i: int) -> float:
        job_dir = scratch / f"baseline-{i}"
        job_dir.mkdir()
        clone(repo, job_dir / "workspace")
        os.chown(job_dir, uid, gid)
        settle()
        cmd = ["docker", "run", "--rm", "--label", label, "-v", f"{job_dir}:/job", BUSYBOX]
        seconds = timed_run([*cmd, "rm", "-rf", "/job/workspace"], user=benchuser.USER, env=env)
        if os.path.lexists(job_dir / "workspace"):
            raise BenchError("the baseline's rm -rf left the workspace")
        return seconds

    res.logist, res.baseline = alternate(ctx.reps(3, 2), logist, baseline, ctx.say)
