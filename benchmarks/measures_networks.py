"""Networks (issue 24): what a job's own network and a job's proxy (``--allow-host``) cost a
one-step job, each against the same job without a network (``--network none``), and a 100 MB
download through the proxy against the same download straight from a container on the same
outside network. The outside is a network of this run's own in 198.18.0.0/15 with a web server
of its own: no traffic goes anywhere else."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from benchmarks.core import BENCH_LABEL, BUSYBOX, BenchError, Context, Result, alternate, run
from benchmarks.fixtures import make_repo
from benchmarks.measures_jobs import expect_done

SERVE = (
    "mkdir -p /www && head -c {size} /dev/zero > /www/blob && echo ok > /www/index.html && "
    "exec httpd -f -p 80 -h /www"
)
FETCH = (
    "import sys, time, urllib.request\n"
    "t = time.monotonic()\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=120) as r:\n"
    "    n = 0\n"
    "    while chunk := r.read(1 << 20):\n"
    "        n += len(chunk)\n"
    "print(f'{n} {time.monotonic() - t:.4f}')\n"
)
MB = 1 << 20


class Outside:
    """A network of the run's own with a web server (``web.bench.test``) serving a blob."""

    def __init__(self, ctx: Context, size: int) -> None:
        import docker

        self.cli = docker.from_env()
        label = {BENCH_LABEL: ctx.run_id}
        for n in random.sample(range(256), 16):
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=f"198.19.{n}.0/24")]
            )
            try:
                self.net = self.cli.networks.create(
                    f"bench-out-{ctx.run_id}-{n}", ipam=ipam, labels=label, check_duplicate=True
                )
                break
            except docker.errors.APIError:
                continue
        else:
            raise BenchError("no free 198.19.x.0/24 subnet for the outside network")
        self.server = self.cli.containers.create(
            BUSYBOX, ["sh", "-c", SERVE.format(size=size)], labels=label, network=self.net.name
        )
        self.net.disconnect(self.server)
        self.net.connect(self.server, aliases=["web.bench.test"])
        self.server.start()

    def close(self) -> None:
        self.server.remove(force=True)
        self.net.remove()
        self.cli.close()


def _job(ctx: Context, root: Path, repo: Path, job_id: str, *extra: str, env=None) -> float:
    from benchmarks.core import timed_run

    cmd = ctx.lg(root, "run", job_id, "--repo", str(repo), "--image", ctx.image)
    seconds = timed_run([*cmd, *extra, "--step", "true"], env=env)
    expect_done(root, job_id)
    return seconds


def job_network(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist run`` of one ``true`` step with its own network (the default) vs ``--network
    none``."""
    repo = make_repo(scratch / "src", 20)
    root = scratch / "jobs"

    def own(i: int) -> float:
        return _job(ctx, root, repo, f"own-{i}")

    def none(i: int) -> float:
        return _job(ctx, root, repo, f"none-{i}", "--network", "none")

    res.logist, res.baseline = alternate(ctx.reps(10, 3), own, none, ctx.say)


def allow_host(ctx: Context, scratch: Path, res: Result) -> None:
    """``logist run`` of one ``true`` step with ``--allow-host`` (network + proxy) vs
    ``--network none``."""
    repo = make_repo(scratch / "src", 20)
    root = scratch / "jobs"
    outside = Outside(ctx, 1)
    env = {**os.environ, "LOGIST_EGRESS_NETWORK": outside.net.name}
    try:

        def proxied(i: int) -> float:
            return _job(ctx, root, repo, f"proxy-{i}", "--allow-host", "web.bench.test", env=env)

        def none(i: int) -> float:
            return _job(ctx, root, repo, f"none-{i}", "--network", "none")

        res.logist, res.baseline = alternate(ctx.reps(10, 3), proxied, none, ctx.say)
    finally:
        outside.close()


def download(ctx: Context, scratch: Path, res: Result) -> None:
    """A 100 MB download in a step through the job's proxy vs the same download in a container
    on the outside network (no proxy); the download's own time, measured inside each."""
    size = ctx.pick(100, 20) * MB
    repo = make_repo(scratch / "src", 3)
    (repo / "fetch.py").write_text(FETCH)
    run(["git", "-C", str(repo), "add", "fetch.py"])
    run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "f"])
    root = scratch / "jobs"
    outside = Outside(ctx, size)
    env = {**os.environ, "LOGIST_EGRESS_NETWORK": outside.net.name}
    url = "http://web.bench.test/blob"
    res.title = f"a {size // MB} MB download: through the job's proxy vs direct"
    reps = ctx.reps(5, 2)
    try:
        # one job, one step per download: the proxy's start is not in the figure
        steps = [a for _ in range(reps) for a in ("--step", f"python3 fetch.py {url}")]
        cmd = ctx.lg(root, "run", "dl", "--repo", str(repo), "--image", ctx.image)
        done = run([*cmd, "--allow-host", "web.bench.test", *steps], env=env)
        proxied = _parse(done.stdout, size)

        def direct_one() -> float:
            out = run(
                ["docker", "run", "--rm", "--network", outside.net.name, "--label",
                 f"{BENCH_LABEL}={ctx.run_id}", ctx.image, "python3", "-c", FETCH, url]
            )  # fmt: skip
            return _parse(out.stdout, size)[0]

        direct = [direct_one() for _ in range(reps)]
        res.logist, res.baseline = proxied, direct
    finally:
        outside.close()


def _parse(stdout: str, size: int) -> list[float]:
    """The seconds of each ``BYTES SECONDS`` line (every download must be whole)."""
    out = []
    for line in stdout.splitlines():
        found = re.search(r"(\d+) (\d+\.\d+)$", line)
        if found:
            if int(found[1]) != size:
                raise BenchError(f"a download got {found[1]} bytes, not {size}")
            out.append(float(found[2]))
    if not out:
        raise BenchError(f"no download figures in {stdout[-300:]!r}")
    return out
