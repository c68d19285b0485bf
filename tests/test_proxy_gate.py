"""The first step of an ``--allow-host`` job starts beside its proxy and waits at the gate until
the proxy listens (logist/gate.py), against the real engine. The proxy is made slow (an image
of the test's own: ``sleep``, then Squid) or absent (an image with no Squid); "the internet"
is a network of the test's own (tests/support_net.py). No traffic goes anywhere else."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX
from tests.helpers import git, job_status, run_logist, wait_for
from tests.support_containers import built_image
from tests.support_net import NAMES, left_behind, network_with_server
from tests.support_wait import ended

pytestmark = pytest.mark.docker

SLOW = 4  # seconds the slow proxy sleeps before Squid starts
FETCH = "wget -q -O- http://web.example.test/ && echo fetched"


@pytest.fixture(scope="module")
def outside(docker_client):
    """The stand-in internet: (network name, its subnet), its web server under NAMES."""
    subnets = [f"198.18.{n}.0/24" for n in random.sample(range(256), 12)]
    net, server, _ip = network_with_server(docker_client, "gate", subnets, NAMES)
    net.reload()
    yield net.name, net.attrs["IPAM"]["Config"][0]["Subnet"]
    server.remove(force=True)
    net.remove()


def _image(docker_client, name: str, dockerfile: str):
    return built_image(docker_client, f"logist-test/{name}:{os.getpid()}", dockerfile)


@pytest.fixture(scope="module")
def slow_proxy(docker_client):
    """The job's proxy, listening only SLOW seconds after its start."""
    tag = _image(
        docker_client,
        "slow-proxy",
        f'FROM logist/proxy:latest\nENTRYPOINT ["/bin/sh", "-c", "sleep {SLOW}; '
        'exec /usr/local/bin/logist-proxy"]\n',
    )
    yield tag
    docker_client.images.remove(tag, force=True)


def _env(outside, proxy: str | None = None) -> dict:
    env = {"LOGIST_EGRESS_NETWORK": outside[0]}
    if proxy:
        env["LOGIST_PROXY_IMAGE"] = proxy
    return env


def _args(outside, job_id: str, repo: Path, step: str, *extra: str) -> list[str]:
    # the stand-in internet is in a range the proxy refuses unless granted
    return [
        "run", job_id, "--repo", str(repo), "--image", BUSYBOX, "--allow-host",
        "web.example.test", "--allow-private", outside[1], *extra, "--step", step,
    ]  # fmt: skip


def _run_on(docker_client, dockerfile: str, jobs_root: Path, args: list[str], env: dict):
    """``logist ARGS`` with the step's image built from ``dockerfile`` (removed after)."""
    tag = _image(docker_client, "step", dockerfile)
    try:
        args[args.index(BUSYBOX)] = tag
        return run_logist(jobs_root, *args, env=env, timeout=120)
    finally:
        docker_client.images.remove(tag, force=True)


def _popen(jobs_root: Path, args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def _boxes(docker_client, jobs_root: Path, step: str):
    label = {"label": [f"logist.jobs-dir={jobs_root}", f"logist.step={step}"]}
    return docker_client.containers.list(filters=label)


def _at_the_gate(box) -> bool:
    """Whether a process of ``box`` has the gate open (seen from the host, as root)."""
    for row in box.top()["Processes"]:
        fds = Path(f"/proc/{row[1]}/fd")
        with contextlib.suppress(OSError):
            if any("gate" in os.readlink(fd) for fd in fds.iterdir()):
                return True
    return False


@pytest.mark.timeout(180)
def test_the_first_step_starts_beside_a_slow_proxy_and_runs_once_it_listens(
    jobs_root, source_repo, outside, slow_proxy, docker_client
):
    args = _args(outside, "slow", source_repo, FETCH)
    with ended(_popen(jobs_root, args, _env(outside, slow_proxy))) as runner:
        [step] = wait_for(lambda: _boxes(docker_client, jobs_root, "1"), 60, "the step to run")
        [proxy] = wait_for(lambda: _boxes(docker_client, jobs_root, "proxy"), 60, "the proxy")
        # the step's container runs while the proxy is still asleep, Squid not started
        assert "squid" not in json.dumps(proxy.top()), proxy.top()
        assert step.attrs["Config"]["Cmd"] == ["/bin/sh", "-c", FETCH]
        mounts = {m["Destination"]: m for m in step.attrs["Mounts"]}
        assert mounts["/run/logist/gate"]["RW"] is False
        out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    assert out.decode().split() == ["hello-web", "fetched"]
    assert not (jobs_root / "slow" / ".proxy-gate").exists()
    assert left_behind(docker_client, jobs_root) == ([], [])


@pytest.mark.timeout(180)
def test_a_proxy_that_does_not_start_leaves_the_gated_step_unrun_and_the_job_resumable(
    logist, jobs_root, source_repo, outside, docker_client
):
    """An image with no Squid (busybox's shell, which ends at once) in the proxy's place: the
    step's container started beside it never runs its command; the job is interrupted (exit
    3) and runs once a proxy listens."""
    step = "touch ran-it && " + FETCH
    args = _args(outside, "deadproxy", source_repo, step)
    out = run_logist(jobs_root, *args, env=_env(outside, BUSYBOX), timeout=120)
    assert out.returncode == 3, out.stderr
    assert "proxy" in out.stderr and "did not start listening" in out.stderr
    status = job_status(logist, "deadproxy")
    assert status["state"] == "interrupted" and status["steps"][0]["state"] == "pending"
    assert not (jobs_root / "deadproxy" / "workspace" / "ran-it").exists()
    assert left_behind(docker_client, jobs_root) == ([], [])

    again = run_logist(jobs_root, "job", "run", "deadproxy", env=_env(outside), timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["hello-web", "fetched"]
    files = git(source_repo, "ls-tree", "--name-only", "logist/deadproxy").split()
    assert "ran-it" in files
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_the_images_own_entrypoint_runs_after_the_gate(
    jobs_root, source_repo, outside, docker_client
):
    dockerfile = (
        f"FROM {BUSYBOX}\n"
        'ENTRYPOINT ["/bin/sh", "-c", "export FROM_ENTRYPOINT=yes; exec \\"$@\\"", "ep"]\n'
    )
    step = 'echo "entrypoint:$FROM_ENTRYPOINT" && ' + FETCH
    args = _args(outside, "ep", source_repo, step)
    out = _run_on(docker_client, dockerfile, jobs_root, args, _env(outside))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["entrypoint:yes", "hello-web", "fetched"]


@pytest.mark.timeout(180)
def test_a_step_canceled_at_the_gate_never_runs_and_leaves_nothing(
    logist, jobs_root, source_repo, outside, slow_proxy, docker_client
):
    args = _args(outside, "gatecancel", source_repo, "touch ran-it")
    with ended(_popen(jobs_root, args, _env(outside, slow_proxy))) as runner:
        wait_for(lambda: _boxes(docker_client, jobs_root, "1"), 60, "the step to start")
        cancel = run_logist(jobs_root, "job", "cancel", "gatecancel", timeout=60)
        assert cancel.returncode == 0, cancel.stderr
        runner.communicate(timeout=60)
    assert job_status(logist, "gatecancel")["state"] == "canceled"
    assert not (jobs_root / "gatecancel" / "workspace" / "ran-it").exists()
    assert left_behind(docker_client, jobs_root) == ([], [])


@pytest.mark.timeout(180)
def test_a_step_at_the_gate_of_a_killed_runner_never_runs_and_the_sweep_leaves_nothing(
    jobs_root, source_repo, outside, slow_proxy, docker_client
):
    args = _args(outside, "gatekill", source_repo, "touch ran-it")
    runner = _popen(jobs_root, args, _env(outside, slow_proxy), start_new_session=True)
    try:
        [step] = wait_for(lambda: _boxes(docker_client, jobs_root, "1"), 60, "the step to start")
        wait_for(lambda: _at_the_gate(step), 30, "the step's gate to open the FIFO")
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.communicate(timeout=30)
    # logist's end of the gate closed with it: the step's gate ends the step, unrun
    assert step.wait(timeout=30)["StatusCode"] == 125
    assert not (jobs_root / "gatekill" / "workspace" / "ran-it").exists()
    out = run_logist(jobs_root, "job", "cleanup", "--stale", "--older-than", "0s", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert left_behind(docker_client, jobs_root) == ([], [])
    assert not os.path.lexists(jobs_root / "gatekill" / ".proxy-gate")


@pytest.mark.timeout(180)
def test_an_images_healthcheck_does_not_run_before_the_gate_opens(
    jobs_root, source_repo, outside, slow_proxy, docker_client
):
    """Red team: Docker runs an image's HEALTHCHECK from the container's start; one that wrote
    "go" into the gate (a step of logist's uid, or root, may write a FIFO on a read-only mount)
    ran the step while the proxy slept, and even when it never listened. Steps run their
    command only."""
    dockerfile = (
        f"FROM {BUSYBOX}\nHEALTHCHECK --interval=1s CMD sh -c "
        '"touch /tmp/health-ran; echo go > /run/logist/gate"\n'
    )
    step = "ls /tmp/health-ran 2>/dev/null || echo no-healthcheck && " + FETCH
    args = _args(outside, "hc", source_repo, step)
    out = _run_on(docker_client, dockerfile, jobs_root, args, _env(outside, slow_proxy))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["no-healthcheck", "hello-web", "fetched"]


@pytest.mark.timeout(180)
def test_a_steps_timeout_counts_from_its_gate_not_from_the_proxys_start(
    logist, jobs_root, source_repo, outside, slow_proxy, docker_client
):
    """Red team: the wait at the gate (the proxy's start, SLOW seconds here) is not the step's
    time: a step shorter than its timeout succeeds however long the proxy took."""
    args = _args(outside, "budget", source_repo, "sleep 1 && echo ran", "--timeout", "3")
    out = run_logist(jobs_root, *args, env=_env(outside, slow_proxy), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ran"]
    assert job_status(logist, "budget")["steps"][0]["state"] == "succeeded"


@pytest.mark.timeout(180)
def test_a_step_whose_image_ignores_the_gate_is_stopped_when_the_proxy_fails(
    logist, jobs_root, source_repo, outside, docker_client
):
    """Red team: an image whose own ``/bin/sh`` skips the gate runs the step whatever it says
    (the gate is no boundary); when the proxy then fails, the gate's "no" gave the step no
    deadline at all (its timeout counts from "go"). It is stopped at the "no" now."""
    shell = (
        '#!/bin/busybox sh\nif [ "$3" = logist-gate ]; then shift 4; exec "$@"; fi\n'
        'exec /bin/busybox sh "$@"\n'
    )
    encoded = base64.b64encode(shell.encode()).decode()
    dockerfile = (
        f"FROM {BUSYBOX}\n"
        f"RUN rm /bin/sh && echo {encoded} | base64 -d > /bin/sh && chmod 755 /bin/sh\n"
    )
    step = "echo step-ran; sleep 60; echo done-sleeping"
    args = _args(outside, "skipgate", source_repo, step)
    # a proxy that fails once the step runs (one that fails at once can be known failed before
    # the step is made: it then never starts, which is right, but not this test's case)
    dying = _image(
        docker_client, "dying-proxy", 'FROM logist/proxy:latest\nENTRYPOINT ["sleep", "3"]\n'
    )
    try:
        out = _run_on(docker_client, dockerfile, jobs_root, args, _env(outside, dying))
    finally:
        docker_client.images.remove(dying, force=True)
    assert out.returncode == 3, out.stderr
    assert "did not start listening" in out.stderr
    log = (jobs_root / "skipgate" / "logs" / "step-1.log").read_text()
    assert "step-ran" in log and "done-sleeping" not in log
    assert job_status(logist, "skipgate")["steps"][0]["state"] == "pending"
    assert left_behind(docker_client, jobs_root) == ([], [])
