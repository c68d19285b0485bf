"""Networks (issue 24): what a job's own network and a job's proxy (``--allow-host``) cost a
one-step job, each against the same job without a network (``--network none``), and a 100 MB
download through the proxy against the same download straight from a container on the same
outside network. The outside is a network of this run's own in 198.18.0.0/15 with a web server
of its own: no traffic goes anywhere else."""

from __future__ import annotations

import os
import random
import re
import statistics
from pathlib import Path

from benchmarks.core import BENCH_LABEL, BUSYBOX, BenchError, Context, Result, alternate, run
from benchmarks.fixtures import make_repo
from benchmarks.measures_jobs import expect_done

SERVE = (
    "mkdir -p /www && head -c {size} /dev/zero > /www/blob && echo ok > /www/index.html && "
    "exec httpd -f -p 80 -h /www"
)
# the stand-in internet's server: /paced at RATE bytes/s (an internet link), /fast as fast as it can
PACED = r"""
import http.server, os, time
SIZE, RATE = int(os.environ["SIZE"]), float(os.environ["RATE"])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(SIZE)); self.end_headers()
        chunk, sent, t = bytes(1 << 20), 0, time.monotonic()
        while sent < SIZE:
            n = min(len(chunk), SIZE - sent); self.wfile.write(chunk[:n]); sent += n
            ahead = sent / RATE - (time.monotonic() - t) if self.path == "/paced" else 0
            if ahead > 0: time.sleep(ahead)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("", 80), H).serve_forever()
"""
# the step's side: GET URL (through $HTTP_PROXY when set), or CONNECT to the host through it
# (what an HTTPS download does) and GET in the tunnel; prints BYTES SECONDS
FETCH = r"""
import os, socket, sys, time, urllib.request
url, mode = sys.argv[1], sys.argv[2]
t, n = time.monotonic(), 0
if mode == "connect":
    host = url.split("/")[2]
    proxy = os.environ["HTTP_PROXY"].split("//")[1].rsplit(":", 1)
    s = socket.create_connection((proxy[0], int(proxy[1])), timeout=120)
    s.sendall(f"CONNECT {host}:80 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    path = "/" + url.split("/", 3)[3]
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(1 << 16)
    n = len(buf.split(b"\r\n\r\n", 1)[1])
    while chunk := s.recv(1 << 20):
        n += len(chunk)
else:
    with urllib.request.urlopen(url, timeout=120) as r:
        while chunk := r.read(1 << 20):
            n += len(chunk)
print(f"{n} {time.monotonic() - t:.4f}")
"""
LINK = 125_000_000  # bytes/s of the paced server: a 1 Gbit/s internet link
MB = 1 << 20
STEP_IMAGE = "logist/step:latest"  # python3 for the download, on both sides


class Outside:
    """A network of the run's own with a web server (``web.bench.test``) serving a blob."""

    def __init__(self, ctx: Context, size: int, paced: bool = False) -> None:
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
        if paced:
            env = {"SIZE": str(size), "RATE": str(LINK)}
            cmd, image = ["python3", "-c", PACED], STEP_IMAGE
        else:
            env, cmd, image = {}, ["sh", "-c", SERVE.format(size=size)], BUSYBOX
        self.server = self.cli.containers.create(
            image, cmd, labels=label, network=self.net.name, environment=env
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
    _against_a_bridge(ctx, res)


def _against_a_bridge(ctx: Context, res: Result) -> None:
    """The baseline becomes the job without a network of its own, on a bridge it shares: the
    ``--network none`` job plus what any container on a bridge pays over ``none`` (its veth,
    the engine's rules; ``docker run --rm`` on the default bridge vs none, in this run)."""
    from benchmarks.core import timed_run

    label = f"{BENCH_LABEL}={ctx.run_id}"

    def on(network: str):
        return lambda i: timed_run(
            ["docker", "run", "--rm", "--label", label, "--network", network, BUSYBOX, "true"]
        )

    bridge, none = alternate(ctx.reps(10, 3), on("bridge"), on("none"), ctx.say)
    delta = statistics.median(bridge) - statistics.median(none)
    measured = statistics.median(res.baseline)
    res.baseline_fixed = measured + delta
    res.notes.append(
        f"baseline = the --network none job ({measured:.3f} s) + a bridge's cost over none "
        f"(docker run --rm true, bridge vs none: {delta:+.3f} s); vs the none job alone: "
        f"{statistics.median(res.logist) - measured:+.3f} s"
    )


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
        _against_a_bridge(ctx, res)
    finally:
        outside.close()


def download(ctx: Context, scratch: Path, res: Result) -> None:
    """A 100 MB download in a step through the job's proxy vs the same download in a container
    on the outside network (no proxy), from a server paced like a 1 Gbit/s internet link; the
    download's own time, measured inside each. Noted beside: the same through a CONNECT
    tunnel (HTTPS), and both unpaced (the proxy's own ceiling on this machine)."""
    size = ctx.pick(100, 20) * MB
    repo = make_repo(scratch / "src", 3)
    (repo / "fetch.py").write_text(FETCH)
    run(["git", "-C", str(repo), "add", "fetch.py"])
    run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "f"])
    root = scratch / "jobs"
    outside = Outside(ctx, size, paced=True)
    env = {**os.environ, "LOGIST_EGRESS_NETWORK": outside.net.name}
    base = "http://web.bench.test"
    res.title = f"a {size // MB} MB download (1 Gbit/s link): through the job's proxy vs direct"
    reps = ctx.reps(5, 2)
    cases = [("paced", "http"), ("paced", "connect"), ("fast", "http"), ("fast", "connect")]
    try:
        # one job, one step per download: the proxy's start is not in the figures
        steps = [
            a
            for path, mode in cases
            for _ in range(reps)
            for a in ("--step", f"python3 fetch.py {base}/{path} {mode}")
        ]
        cmd = ctx.lg(root, "run", "dl", "--repo", str(repo), "--image", STEP_IMAGE)
        done = run([*cmd, "--allow-host", "web.bench.test", *steps], env=env)
        proxied = _parse(done.stdout, size)

        def direct(path: str) -> float:
            out = run(
                ["docker", "run", "--rm", "--network", outside.net.name, "--label",
                 f"{BENCH_LABEL}={ctx.run_id}", STEP_IMAGE, "python3", "-c", FETCH,
                 f"{base}/{path}", "http"]
            )  # fmt: skip
            return _parse(out.stdout, size)[0]

        paced = [direct("paced") for _ in range(reps)]
        fast = [direct("fast") for _ in range(reps)]
        res.logist, res.baseline = proxied[:reps], paced
        med = statistics.median
        connect, fast_http, fast_connect = (
            proxied[reps : 2 * reps],
            proxied[2 * reps : 3 * reps],
            proxied[3 * reps :],
        )
        res.notes.append(
            f"through a CONNECT tunnel (HTTPS), same link: {med(connect):.3f} s "
            f"({med(connect) / med(paced):.2f}x)"
        )
        res.notes.append(
            f"unpaced (this machine's bridge, the proxy's ceiling): direct {med(fast):.3f} s, "
            f"proxy {med(fast_http):.3f} s ({size / MB / med(fast_http):.0f} MB/s), "
            f"CONNECT {med(fast_connect):.3f} s ({size / MB / med(fast_connect):.0f} MB/s)"
        )
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
