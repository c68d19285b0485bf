"""Measures of commands over many jobs, and of start-up: ``cleanup --stale``, ``job list``,
``--help``."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.core import BenchError, Context, Result, alternate, run, timed
from benchmarks.fixtures import make_job_dirs, make_repo


def stale(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist job cleanup --stale`` over N finished jobs without workspaces."""
    count = ctx.pick(10_000, 1_000)
    res.title = f"cleanup --stale, {count:,} jobs, nothing to do"
    repo = make_repo(scratch / "src", 3)
    root = scratch / "jobs"
    make_job_dirs(root, count, str(repo), ctx.image)

    def logist(i: int) -> float:
        out: list[str] = []
        seconds = timed(lambda: out.append(run(ctx.lg(root, "job", "cleanup", "--stale")).stdout))
        if out[0].strip() != "nothing to clean":
            raise BenchError(f"the sweep had something to do: {out[0][:200]}")
        return seconds

    res.logist, _ = alternate(ctx.reps(5, 2), logist, None, ctx.say)
    left = sum(1 for p in root.iterdir() if (p / "job.json").is_file())
    if left != count:
        raise BenchError(f"{count - left} job directories went missing")


def job_list(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist job list`` (the table) with N jobs."""
    count = ctx.pick(1_000, 200)
    res.title = f"job list, {count:,} jobs"
    repo = make_repo(scratch / "src", 3)
    root = scratch / "jobs"
    make_job_dirs(root, count, str(repo), ctx.image)

    def logist(i: int) -> float:
        out: list[str] = []
        seconds = timed(lambda: out.append(run(ctx.lg(root, "job", "list")).stdout))
        if len(out[0].splitlines()) != count + 1:
            raise BenchError(f"job list printed {len(out[0].splitlines())} lines")
        return seconds

    res.logist, _ = alternate(ctx.reps(5, 3), logist, None, ctx.say)


def help_(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist --help`` vs ``python -c pass`` (the same interpreter)."""
    run([*ctx.logist, "--help"])  # warm: files in the page cache, .pyc written
    run([ctx.python, "-c", "pass"])

    def logist(i: int) -> float:
        return timed(lambda: run([*ctx.logist, "--help"]))

    def baseline(i: int) -> float:
        return timed(lambda: run([ctx.python, "-c", "pass"]))

    res.logist, ref = alternate(ctx.reps(10, 4), logist, baseline, ctx.say, "reference")
    res.notes.append(f"`python -c pass` (the same interpreter) took {statistics.median(ref):.3f} s")
