"""The command: choose the measures, run each in its own scratch directory, clean up, report."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import (
    measures_cli,
    measures_fs,
    measures_jobs,
    measures_networks,
    measures_nodes,
    measures_output,
    measures_sessions,
    report,
)
from benchmarks.core import (
    BENCH_LABEL,
    BUSYBOX,
    BenchError,
    Context,
    Result,
    docker_client,
    remove_leftovers,
    remove_tree,
    run,
)


@dataclass(frozen=True)
class Measure:
    name: str
    title: str
    kind: str
    target: float
    baseline: str
    fn: Callable[[Context, Path, Result], None]


MEASURES = (
    Measure(
        "whole-job",
        "whole job: clone + 3 steps + harvest + cleanup",
        "ratio",
        1.4,
        "bash: git clone --local, 3 x docker run --rm --init -v WS:/workspace IMAGE true, "
        "git add -A, git commit, rm -rf",
        measures_jobs.whole_job,
    ),
    Measure(
        "whole-job-writes",
        "whole job, 200 files, 3 steps that write files",
        "ratio",
        1.4,
        "the same bash script with the same steps",
        measures_jobs.whole_job_writes,
    ),
    Measure(
        "whole-job-careful",
        "whole job, 200 files, 3 steps that write files, vs the careful script",
        "ratio",
        1.0,
        "bash: as above, but after each step git add/commit/bundle in a docker run of a git "
        "image (no network, DAC_OVERRIDE only) and a host fetch of the bundle",
        measures_jobs.whole_job_careful,
    ),
    Measure(
        "step",
        "one trivial step, ready workspace (job step)",
        "delta",
        0.200,
        "docker run --rm --init -v WS:/workspace IMAGE true",
        measures_jobs.one_step,
    ),
    Measure(
        "step-in-run",
        "each step inside one job run ((10 steps - 1 step) / 9)",
        "delta",
        0.100,
        "docker run --rm --init -v WS:/workspace IMAGE true",
        measures_jobs.step_in_run,
    ),
    Measure(
        "first-step",
        "job created -> its first step's command runs (200 files, logist run)",
        "limit",
        0.3,
        "",
        measures_jobs.first_step,
    ),
    Measure(
        "setup",
        "workspace setup, 20,000 files",
        "ratio",
        1.5,
        "git clone --local SRC DEST",
        measures_fs.setup,
    ),
    Measure(
        "cleanup",
        "cleanup, 50,000-file workspace",
        "ratio",
        1.2,
        "rm -rf WS",
        measures_fs.cleanup,
    ),
    Measure(
        "cleanup-nonroot",
        "cleanup, 50,000 root-owned files, non-root",
        "ratio",
        1.3,
        "docker run --rm -v JOBDIR:/job logist/busybox:latest rm -rf /job/workspace "
        "(as the same non-root user)",
        measures_fs.cleanup_nonroot,
    ),
    Measure(
        "cancel",
        "cancel of a step ignoring SIGTERM",
        "limit",
        1.5,
        "",
        measures_jobs.cancel,
    ),
    Measure(
        "cancel-grace1",
        "cancel, same step, job cancel --grace 1",
        "limit",
        1.5,
        "",
        measures_jobs.cancel_grace1,
    ),
    Measure(
        "cancel-term",
        "cancel of a step honouring SIGTERM",
        "delta",
        0.25,
        "docker stop of the same step alone",
        measures_jobs.cancel_term,
    ),
    Measure(
        "timeout",
        "job run of a step with --timeout 2",
        "limit",
        4.0,
        "",
        measures_jobs.step_timeout,
    ),
    Measure(
        "interrupt",
        "SIGTERM to job run, step ignoring SIGTERM",
        "limit",
        7.0,
        "",
        measures_jobs.interrupt,
    ),
    Measure(
        "stale",
        "cleanup --stale, 10,000 jobs, nothing to do",
        "limit",
        2.0,
        "",
        measures_cli.stale,
    ),
    Measure("list", "job list, 1,000 jobs", "limit", 0.3, "", measures_cli.job_list),
    Measure(
        "parallel",
        "16 jobs x 2 x sleep 1, --parallel 8",
        "ratio",
        1.3,
        "docker alone: xargs -P 8 of the same docker run --rm --init IMAGE sleep 1 (x2 per job)",
        measures_jobs.parallel,
    ),
    Measure("help", "logist --help", "limit", 0.1, "", measures_cli.help_),
    Measure(
        "output-newlines",
        "a step printing 100 MiB of newlines (logist run)",
        "ratio",
        1.5,
        "docker run --rm --init IMAGE sh -c CMD > /dev/null",
        measures_output.newlines,
    ),
    Measure(
        "output-random",
        "a step printing 100 MiB of random text (logist run)",
        "ratio",
        1.5,
        "docker run --rm --init IMAGE sh -c CMD > /dev/null",
        measures_output.random_text,
    ),
    Measure(
        "session-exec",
        "one s.exec(['true']) round trip of a running session (Python API)",
        "delta",
        0.030,
        "the docker SDK's container.exec_run(['true']) in the same container",
        measures_sessions.exec_round_trip,
    ),
    Measure(
        "job-network",
        "one-step job on a network of its own (the default)",
        "delta",
        0.100,
        "the same job without a network of its own (--network none + a bridge's cost)",
        measures_networks.job_network,
    ),
    Measure(
        "allow-host",
        "one-step job with --allow-host (internal network + proxy)",
        "delta",
        0.300,
        "the same job without --allow-host, on a shared bridge (--network none + a bridge's cost)",
        measures_networks.allow_host,
    ),
    Measure(
        "proxy-download",
        "a 100 MB download through the job's proxy",
        "ratio",
        1.2,
        "the same download from a container on the outside network (no proxy)",
        measures_networks.download,
    ),
    Measure(
        "remote",
        "whole job on a remote node (volume workspace) vs local engine",
        "ratio",
        2.0,
        "the same logist run on the local engine (bind-mounted workspace)",
        measures_nodes.remote,
    ),
    Measure(
        "nodes",
        "16 jobs x 2 x sleep 1, --parallel 4, 2 nodes vs 1",
        "ratio",
        0.75,
        "the same jobs over one node",
        measures_nodes.nodes,
    ),
)
NAMES = [m.name for m in MEASURES]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run logist's benchmarks (issue 8) against their baselines, with the real "
        "Docker engine, and print the table. Exit 0 when every measure was taken (missed "
        "targets are reported, not failed), 1 when one could not be, 3 without an engine.",
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these measures (repeat, or comma-separated): {', '.join(NAMES)}",
    )
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    p.add_argument(
        "--image",
        default=BUSYBOX,
        help=f"image of the steps, for logist and the baselines alike (default {BUSYBOX})",
    )
    p.add_argument(
        "--reps", type=int, metavar="N", help="repetitions of every measure (default: per measure)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    wanted = [n.strip() for item in args.only or [] for n in item.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in NAMES]
    if unknown:
        p.error(f"unknown measure {unknown[0]!r}; known: {', '.join(NAMES)}")
    args.selected = [m for m in MEASURES if not wanted or m.name in wanted]
    return args


def preflight(image: str) -> str | None:
    """Why the benchmarks cannot run here, or None."""
    try:
        import docker

        cli = docker_client()
        cli.ping()
        for name in {image, BUSYBOX}:
            try:
                cli.images.get(name)
            except docker.errors.ImageNotFound:
                return f"image {name} missing: run scripts/build-images.sh"
    except Exception as exc:  # the engine is not there
        return f"Docker engine unreachable ({exc}): run scripts/ensure-docker.sh"
    return None


def run_one(ctx: Context, m: Measure) -> Result:
    res = Result(name=m.name, title=m.title, kind=m.kind, target=m.target, baseline_text=m.baseline)
    scratch = ctx.work / m.name
    scratch.mkdir()
    os.chmod(scratch, 0o755)
    ctx.say(f"--- {m.name}: {m.title}")
    load = os.getloadavg()[0]
    start = time.monotonic()
    try:
        m.fn(ctx, scratch, res)
    except Exception as exc:
        res.error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        ctx.say(f"{m.name}: ERROR {res.error}")
    finally:
        try:
            left = remove_leftovers(ctx)
        except Exception as exc:  # the engine went away: say so, go on
            left = [f"(could not list containers: {exc})"]
        if left:
            res.notes.append(
                "containers left behind (removed by the benchmark): " + ", ".join(left)
            )
        remove_tree(scratch)
        if scratch.exists():
            res.notes.append(f"could not remove {scratch}")
    res.seconds = time.monotonic() - start
    res.load = (load, os.getloadavg()[0])
    verdict = {True: "met", False: "MISSED", None: "-"}[res.met]
    lm, bm = res.logist_median, res.baseline_median
    shown = f"logist {lm:.3f} s" if lm is not None else "no result"
    shown += f", baseline {bm:.3f} s" if bm is not None else ""
    ctx.say(f"{m.name}: {shown}: {verdict}")
    return res


def warm_up(ctx: Context) -> None:
    """Page cache and engine warm for everyone: one container, one logist start."""
    label = f"{BENCH_LABEL}={ctx.run_id}"
    run(["docker", "run", "--rm", "--init", "--label", label, ctx.image, "true"])
    run([*ctx.logist, "--help"])


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    problem = preflight(args.image)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 3
    base = os.environ.get("LOGIST_BENCH_TMP") or tempfile.gettempdir()
    work = Path(tempfile.mkdtemp(prefix="logist-bench.", dir=base)).resolve()
    os.chmod(work, 0o755)  # the non-root measure's user must reach its jobs root
    ctx = Context(
        quick=args.quick,
        image=args.image,
        work=work,
        run_id=work.name.replace(".", "-"),
        verbose=not args.quiet,
        reps_override=args.reps,
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    start = time.monotonic()
    info = report.machine()
    results: list[Result] = []
    load0 = os.getloadavg()
    try:
        ctx.say(f"scratch {work}; {report.describe(info)}; load {load0[0]:.2f}")
        warm_up(ctx)
        for m in args.selected:
            results.append(run_one(ctx, m))
    finally:
        with contextlib.suppress(Exception):  # each measure already removed its own
            remove_leftovers(ctx)
        remove_tree(work)
    total = time.monotonic() - start
    load1 = os.getloadavg()
    mode = "quick" if args.quick else "full"
    print(f"logist benchmarks ({mode}), {started}, {total:.0f} s")
    print(f"machine: {report.describe(info)}")
    print(f"load average (1, 5, 15 min): start {_load(load0)}, end {_load(load1)}")
    if args.quick:
        print("note: --quick uses smaller sizes and fewer repetitions, so fixed costs weigh more:")
        print("      judge the targets on a full run")
    print()
    print(report.table(results))
    print()
    print(report.details(results))
    if args.json:
        extra = {"started": started, "mode": mode, "seconds": round(total, 1)}
        extra["load"] = {"start": load0, "end": load1}
        report.write_json(args.json, results, info, extra)
    return 1 if any(r.error for r in results) else 0


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)
