"""Measures over remote engines: "nodes" (containers running their own dockerd, reached over
tcp://, made by tests/nodes.py's ``NodeFactory``), started before the timed part and removed
after it."""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

from benchmarks.core import BenchError, Context, Result, alternate, docker_client, timed_run
from benchmarks.fixtures import make_repo
from benchmarks.measures_jobs import expect_done, sleeping_jobs


@contextlib.contextmanager
def started_nodes(ctx: Context, count: int) -> Iterator[list]:
    """``count`` nodes with the steps' image and the helper's; removed at the end."""
    from tests.nodes import NodeFactory, reap_stale_nodes

    host = docker_client()
    reap_stale_nodes(host)
    factory = NodeFactory(host)
    try:
        nodes = [factory.new(images=(ctx.image, "logist/step:latest")) for _ in range(count)]
        for node in nodes:
            ctx.say(
                f"node {node.url}: up in {node.timings.get('start', 0):.1f} s, "
                f"{node.memory() / 2**20:.0f} MiB idle"
            )
        yield nodes
    finally:
        problems = factory.close()
        if problems:
            raise BenchError(f"nodes not removed: {problems}")


def _check_clean(nodes: list, root: Path) -> None:
    for node in nodes:
        left = node.leftovers(root)
        if left:
            raise BenchError(f"left on {node.url}: {left}")


def remote(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist run`` of 3 x ``true`` (a 20-file repository) on a remote node (a volume
    workspace, the clone sent in, bundles read back) vs the same on the local engine."""
    repo = make_repo(scratch / "src", 20)
    root = scratch / "jobs"
    steps = [arg for _ in range(3) for arg in ("--step", "true")]
    with started_nodes(ctx, 1) as (node,):

        def on_node(i: int) -> float:
            job_id = f"remote-{i}"
            cmd = ctx.lg(root, "--engine", node.url, "run", job_id, "--repo", str(repo))
            seconds = timed_run([*cmd, "--image", ctx.image, *steps])
            expect_done(root, job_id)
            return seconds

        def local(i: int) -> float:
            job_id = f"local-{i}"
            cmd = ctx.lg(root, "run", job_id, "--repo", str(repo), "--image", ctx.image)
            seconds = timed_run([*cmd, *steps])
            expect_done(root, job_id)
            return seconds

        res.logist, res.baseline = alternate(ctx.reps(5, 2), on_node, local, ctx.say)
        _check_clean([node], root)


def nodes(ctx: Context, scratch: Path, res: Result) -> None:
    """``job run --all --parallel P`` of N jobs of 2 x ``sleep 1`` over two nodes vs over one
    (P slots per node): the speed-up of a second node."""
    jobs, par, steps = ctx.pick(16, 8), 4, 2
    res.title = f"{jobs} jobs x {steps} x sleep 1, --parallel {par}, 2 nodes vs 1"
    repo = make_repo(scratch / "src", 20)
    with started_nodes(ctx, 2) as pair:

        def over(engines: list, i: int, tag: str) -> float:
            root = scratch / f"jobs-{tag}-{i}"
            ids = sleeping_jobs(root, repo, ctx.image, jobs, steps)
            flags = [a for node in engines for a in ("--engine", node.url)]
            seconds = timed_run(ctx.lg(root, *flags, "job", "run", "--all", "--parallel", str(par)))
            for job_id in ids:
                expect_done(root, job_id)
            _check_clean(pair, root)
            return seconds

        res.logist, res.baseline = alternate(
            ctx.reps(2, 1),
            lambda i: over(pair, i, "two"),
            lambda i: over(pair[:1], i, "one"),
            ctx.say,
        )
    two, one = statistics.median(res.logist), statistics.median(res.baseline)
    ideal_one = math.ceil(jobs / par) * steps
    ideal_two = math.ceil(jobs / (2 * par)) * steps
    res.notes.append(
        f"speed-up of the second node: {one / two:.2f}x (ideal {ideal_one / ideal_two:.0f}x: "
        f"{ideal_one} s vs {ideal_two} s of sleeping); both nodes, logist and the engines share "
        "this machine's 2 cores, which bounds it"
    )
