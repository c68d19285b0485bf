"""Output floods (issue 21): a step printing as fast as it can through ``logist run`` vs
``docker run`` of the same command with its output to /dev/null, measured in the same run."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.core import BENCH_LABEL, BenchError, Context, Result, alternate, timed
from benchmarks.fixtures import make_repo

MIB = 1 << 20


def _flood(ctx: Context, scratch: Path, res: Result, kind: str) -> None:
    size = ctx.pick(100, 10) * MIB
    if kind == "newlines":
        cmd = f"head -c {size} /dev/zero | tr '\\0' '\\n'"
    else:  # random text: base64 of random bytes, 76 columns, ``size`` bytes in all
        cmd = f"head -c {size * 3 // 4} /dev/urandom | base64 | head -c {size}"
    res.title = f"a step printing {size // MIB} MiB of {kind}"
    repo = make_repo(scratch / "src", 3)
    root = scratch / "jobs"
    label = f"{BENCH_LABEL}={ctx.run_id}"

    def quiet(argv: list[str]) -> None:
        proc = subprocess.run(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900, check=False
        )
        if proc.returncode != 0:
            raise BenchError(
                f"{' '.join(argv)[:120]} exited {proc.returncode}: {proc.stderr[-300:]}"
            )

    def logist(i: int) -> float:
        argv = ctx.lg(root, "run", "--repo", str(repo), "--image", ctx.image, "--step", cmd)
        return timed(lambda: quiet(argv))

    def baseline(i: int) -> float:
        argv = ["docker", "run", "--rm", "--init", "--label", label, ctx.image, "sh", "-c", cmd]
        return timed(lambda: quiet(argv))

    res.logist, res.baseline = alternate(ctx.reps(3, 2), logist, baseline, ctx.say)
    logs = sorted(root.glob("*/logs/step-1.log"))
    if not logs:
        raise BenchError("no stored log")
    res.notes.append(f"stored log {logs[-1].stat().st_size // MIB} MiB (log_limit 64 MiB)")


def newlines(ctx: Context, scratch: Path, res: Result) -> None:
    _flood(ctx, scratch, res, "newlines")


def random_text(ctx: Context, scratch: Path, res: Result) -> None:
    _flood(ctx, scratch, res, "random text")
