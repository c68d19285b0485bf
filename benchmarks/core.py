"""Shared pieces: the run's context, results, timing, commands and the leftover guard."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = "logist/busybox:latest"
BENCH_LABEL = "logist.bench"  # on the baselines' containers, so a crash leaves none behind
GIT_IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]


class BenchError(Exception):
    """A measure could not be taken (a command failed, a precondition is missing)."""


def tail(text: str, lines: int = 5) -> str:
    return " | ".join(line for line in (text or "").strip().splitlines()[-lines:])


def run(
    cmd: Sequence[str | os.PathLike],
    *,
    check: bool = True,
    user: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` (as ``user`` through ``runuser`` when given), capturing its output."""
    argv = [str(c) for c in cmd]
    if user:
        # found on our PATH: ``env`` (the user's environment) may not name /usr/sbin
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        argv = [runuser, "-u", user, "--", *argv]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, input=input
    )
    if check and proc.returncode != 0:
        shown = " ".join(argv)
        raise BenchError(
            f"{shown[:200]} exited {proc.returncode}: {tail(proc.stderr or proc.stdout)}"
        )
    return proc


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took (wall clock)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_run(cmd: Sequence[str | os.PathLike], **kwargs) -> float:
    return timed(lambda: run(cmd, **kwargs))


def settle() -> None:
    """Flush dirty pages before a timed file-system operation, so that the write-back of the
    previous repetition's set-up is not charged to it."""
    os.sync()


def alternate(
    reps: int,
    a: Callable[[int], float],
    b: Callable[[int], float] | None,
    progress: Callable[[str], None] | None = None,
    b_name: str = "baseline",
) -> tuple[list[float], list[float]]:
    """Run ``a`` (logist) and ``b`` (the baseline) ``reps`` times, alternating which goes
    first (A B, B A, ...). Each returns the seconds of its timed part."""
    la: list[float] = []
    lb: list[float] = []
    for i in range(reps):
        if b is None:
            la.append(a(i))
        elif i % 2 == 0:
            la.append(a(i))
            lb.append(b(i))
        else:
            lb.append(b(i))
            la.append(a(i))
        if progress:
            shown = f"logist {la[-1]:.3f} s" + (f", {b_name} {lb[-1]:.3f} s" if lb else "")
            progress(f"rep {i + 1}/{reps}: {shown}")
    return la, lb


@dataclass
class Result:
    """One row of the table."""

    name: str
    title: str
    kind: str  # "ratio": logist/baseline; "delta": logist-baseline; "limit": logist alone
    target: float
    baseline_text: str = ""
    logist: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_fixed: float | None = None  # a computed baseline (the ideal time), not measured
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0  # the measure's wall time, set-up included
    load: tuple[float, float] | None = None  # 1-min load average before and after

    @property
    def logist_median(self) -> float | None:
        return statistics.median(self.logist) if self.logist else None

    @property
    def baseline_median(self) -> float | None:
        if self.baseline_fixed is not None:
            return self.baseline_fixed
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def comparison(self) -> float | None:
        lm, bm = self.logist_median, self.baseline_median
        if lm is None:
            return None
        if self.kind == "limit":
            return lm
        if bm is None:
            return None
        if self.kind == "ratio":
            return lm / bm if bm > 0 else None
        return lm - bm

    @property
    def met(self) -> bool | None:
        value = self.comparison
        if self.error is not None or value is None:
            return None
        return value <= self.target

    @property
    def target_text(self) -> str:
        if self.kind == "ratio":
            return f"<= {self.target:g}x"
        if self.kind == "delta":
            return f"<= +{self.target * 1000:.0f} ms"
        return f"<= {self.target:g} s"

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(
            logist_median=self.logist_median,
            baseline_median=self.baseline_median,
            comparison=self.comparison,
            target_text=self.target_text,
            met=self.met,
        )
        return out


@dataclass
class Context:
    """What every measure needs: options, the run's scratch directory, the commands."""

    quick: bool
    image: str
    work: Path
    run_id: str
    verbose: bool = True
    python: str = sys.executable
    reps_override: int | None = None

    @property
    def logist(self) -> list[str]:
        exe = Path(self.python).parent / "logist"
        return [str(exe)] if exe.exists() else [self.python, "-m", "logist"]

    def lg(self, root: Path, *args: str) -> list[str]:
        """The ``logist --jobs-dir ROOT ARGS`` command line."""
        return [*self.logist, "--jobs-dir", str(root), *args]

    def pick(self, full, quick):
        return quick if self.quick else full

    def reps(self, full: int, quick: int) -> int:
        """Repetitions: ``--reps`` when given, else ``quick`` with ``--quick``, else ``full``."""
        return self.reps_override or self.pick(full, quick)

    def say(self, msg: str) -> None:
        if self.verbose:
            print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- leftovers ---------------------------------------------------------------------------------


def docker_client():
    import docker

    return docker.from_env(timeout=120)


def our_containers(ctx: Context) -> list:
    """Containers this run made: logist's (labelled with a jobs root inside the run's scratch
    directory) and the baselines' (labelled with the run id). Never anyone else's."""
    import docker

    cli = docker_client()
    for attempt in range(5):  # a container removed while the list is read (another process's)
        try:
            mine = {}
            for c in cli.containers.list(all=True, filters={"label": "logist.managed=true"}):
                root = (c.labels or {}).get("logist.jobs-dir", "")
                if root == str(ctx.work) or root.startswith(str(ctx.work) + "/"):
                    mine[c.id] = c
            bench = {"label": f"{BENCH_LABEL}={ctx.run_id}"}
            for c in cli.containers.list(all=True, filters=bench):
                mine[c.id] = c
            return list(mine.values())
        except docker.errors.NotFound:
            if attempt == 4:
                raise
    return []


def remove_leftovers(ctx: Context) -> list[str]:
    """Remove this run's containers that are still there; return their names."""
    import docker

    names = []
    for c in our_containers(ctx):
        names.append(f"{c.name} ({(c.labels or {}).get('logist.job', 'baseline')})")
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)
    return names


def remove_tree(path: Path) -> None:
    """``rm -rf`` (we run as root: files of any owner go)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            run(["rm", "-rf", "--one-file-system", str(path)])
