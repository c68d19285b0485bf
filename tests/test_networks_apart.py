"""Jobs' networks stay apart while the engine makes other networks (docs/security.md, "Docker's
isolation lapses while it makes a network"), against the real engine: Docker 20.10 to 27
delete and insert again the jump to their isolation chain each time they make a network, and
the host's firewall (scripts/job-bridges.sh, run by scripts/ensure-docker.sh) closes that gap.
Traffic goes only between containers of the test's own jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logist.networks import network_name
from tests.conftest import BUSYBOX, STEP_IMAGE
from tests.helpers import commit_file, run_logist, wait_for
from tests.support_wait import ended

pytestmark = pytest.mark.docker

# the prober's step: connects to ADDRESS:8080 for SECONDS, as fast as it can; prints how many
# tries and how many HTTP answers came back
PROBE = r"""
import socket, sys, time
address, seconds = sys.argv[1], float(sys.argv[2])
tries = answers = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    tries += 1
    try:
        s = socket.create_connection((address, 8080), timeout=0.05)
        s.settimeout(0.05)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        if s.recv(64).startswith(b"HTTP/"):
            answers += 1
        s.close()
    except OSError:
        pass
print(f"tries {tries} answers {answers}", flush=True)
"""


def _cmd(jobs_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), *args]


def _step_box(docker_client, jobs_root: Path, job_id: str):
    label = [f"logist.jobs-dir={jobs_root}", f"logist.job={job_id}", "logist.step=1"]
    [box] = wait_for(
        lambda: docker_client.containers.list(filters={"label": label}), 60, f"{job_id}'s step"
    )
    return box


@pytest.mark.slow
def test_another_jobs_step_cannot_reach_a_job_while_the_engine_makes_networks(
    jobs_root, source_repo, docker_client
):
    commit_file(source_repo, "probe.py", PROBE)
    repo = str(source_repo)
    serve = _cmd(
        jobs_root, "run", "serves", "--repo", repo, "--step", "python3 -m http.server 8080"
    )
    try:
        with ended(subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE)):
            box = _step_box(docker_client, jobs_root, "serves")
            own = network_name("serves", jobs_root)
            options = docker_client.networks.get(own).attrs.get("Options") or {}
            bridge = options.get("com.docker.network.bridge.name", "")
            assert bridge.startswith("lgj") and len(bridge) == 15, bridge  # for the firewall
            address = box.attrs["NetworkSettings"]["Networks"][own]["IPAddress"]
            # a container on the serving job's own network gets answers: the server is up
            seen = docker_client.containers.run(
                STEP_IMAGE, ["python3", "-c", PROBE, address, "2"], network=own, remove=True
            )
            assert b" answers 0" not in seen, seen
            probe = _cmd(jobs_root, "run", "probes", "--repo", repo, "--step",
                         f"python3 probe.py {address} 12")  # fmt: skip
            with ended(subprocess.Popen(probe, stdout=subprocess.PIPE, text=True)) as prober:
                _step_box(docker_client, jobs_root, "probes")
                made = _make_networks(docker_client, f"logist-test-apart-{box.id[:8]}", 8)
                out = prober.communicate(timeout=120)[0]
            assert prober.returncode == 0, out
            tries, answers = (int(w) for w in out.split()[1::2])
            assert tries > 100 and made >= 5, (out, made)  # it tried while networks were made
            assert answers == 0, f"{answers} answers to another job's step in {tries} tries"
    finally:
        run_logist(jobs_root, "job", "cancel", "serves", timeout=60)


def _make_networks(docker_client, prefix: str, seconds: float) -> int:
    """Make and remove networks for ``seconds`` (another job's, another user's): each time,
    Docker 20.10 to 27 drop the jump to their isolation rules for a moment. How many."""
    end, made = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        net = docker_client.networks.create(f"{prefix}-{made}")
        try:
            made += 1
        finally:
            net.remove()
    return made


# through the proxy in $HTTP_PROXY (a step), or the proxy at argv[1] (a container beside it):
# the status of GET http://web.apart.test/
FETCH = r"""
import os, socket, sys
proxy = sys.argv[1] if len(sys.argv) > 1 else os.environ["HTTP_PROXY"].split("//")[1]
host, port = proxy.rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(b"GET http://web.apart.test/ HTTP/1.0\r\nHost: web.apart.test\r\n\r\n")
print("status", s.recv(64).split()[1].decode(), flush=True)
"""


def test_another_container_on_the_egress_network_cannot_use_a_jobs_proxy(
    jobs_root, source_repo, docker_client
):
    """The proxy serves the job's own network only (red team, 12-06: any container on the
    default bridge got the job's allowed names, and its grants, through the job's proxy)."""
    import random

    commit_file(source_repo, "fetch.py", FETCH)
    for n in random.sample(range(256), 12):  # the stand-in internet: a network of the test's own
        try:
            ipam = {"Driver": "default", "Config": [{"Subnet": f"198.19.{n}.0/24"}]}
            outside = docker_client.networks.create(f"logist-test-egress-{n}", ipam=ipam)
            break
        except Exception:  # another test's subnet
            continue
    else:
        raise AssertionError("no free subnet for the stand-in internet")
    web = docker_client.containers.run(
        BUSYBOX, ["sh", "-c", "mkdir /w && echo hi > /w/index.html && exec httpd -f -p 80 -h /w"],
        detach=True, network=outside.name,
    )  # fmt: skip
    step = "python3 fetch.py && sleep 60"
    command = _cmd(jobs_root, "run", "px", "--repo", str(source_repo), "--allow-host",
                   "web.apart.test", "--step", step)  # fmt: skip
    env = {**os.environ, "LOGIST_EGRESS_NETWORK": outside.name}
    try:
        outside.disconnect(web)
        outside.connect(web, aliases=["web.apart.test"])
        with ended(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)) as job:
            try:
                label = [f"logist.jobs-dir={jobs_root}", "logist.job=px", "logist.step=proxy"]
                [proxy] = wait_for(
                    lambda: docker_client.containers.list(filters={"label": label}), 60, "the proxy"
                )
                address = proxy.attrs["NetworkSettings"]["Networks"][outside.name]["IPAddress"]
                logs = lambda: run_logist(jobs_root, "job", "logs", "px").stdout  # noqa: E731
                assert "status 200" in wait_for(lambda: "status" in logs() and logs(), 60, "fetch")
                beside = docker_client.containers.run(
                    STEP_IMAGE, ["python3", "-c", FETCH, f"{address}:3128"],
                    network=outside.name, remove=True,
                )  # fmt: skip
                assert beside.split() == [b"status", b"403"], beside
            finally:
                run_logist(jobs_root, "job", "cancel", "px", timeout=60)
                job.communicate(timeout=60)
    finally:
        web.remove(force=True)
        outside.remove()


def test_doctor_says_when_the_hosts_firewall_does_not_keep_job_networks_apart(jobs_root):
    """Checked with the host's rules (scripts/ensure-docker.sh made them), then in a network
    namespace of its own, whose firewall is empty (the host's is not touched)."""
    import json

    def check(out) -> dict:
        return next(
            c for c in json.loads(out.stdout)["checks"] if c["name"] == "job-networks-apart"
        )

    here = run_logist(jobs_root, "doctor", "--json")
    assert check(here)["ok"] and "keeps" in check(here)["detail"], here.stdout
    bare = subprocess.run(
        ["unshare", "--net", "--", *_cmd(jobs_root, "doctor", "--json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bare.returncode == 3, bare.stderr
    assert not check(bare)["ok"] and "scripts/job-bridges.sh" in check(bare)["detail"]
