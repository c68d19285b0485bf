"""The steps of one run share a held network namespace (logist/netns.py), against the real
engine: the job's network (or none) made once a run, the holder hardened and gone after, and
jobs still apart. No traffic leaves the test's own containers and networks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logist.networks import network_name
from tests.conftest import STEP_IMAGE
from tests.helpers import commit_file, run_logist, wait_for
from tests.support_net import left_behind
from tests.support_wait import ended

pytestmark = pytest.mark.docker

WAIT_GO = "while [ ! -f go ]; do sleep 0.05; done"
MAC = "cat /sys/class/net/eth0/address"


def _cmd(jobs_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), *args]


def _boxes(cli, jobs_root: Path, step: str) -> list:
    import docker

    label = {"label": [f"logist.jobs-dir={jobs_root}", f"logist.step={step}"]}
    for _ in range(20):
        try:
            return cli.containers.list(all=True, filters=label)
        except docker.errors.NotFound:  # one went between the list and its inspection
            time.sleep(0.05)
    return cli.containers.list(all=True, filters=label)


def _started(jobs_root: Path, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        _cmd(jobs_root, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _running(cli, jobs_root: Path, step: str):
    [box] = wait_for(
        lambda: [b for b in _boxes(cli, jobs_root, step) if b.status == "running"],
        60,
        f"step {step} running",
    )
    return box


def test_the_steps_of_a_run_share_one_held_namespace_on_the_jobs_network(
    jobs_root, source_repo, docker_client
):
    first = f"{MAC} > mac1"
    second = f"{WAIT_GO}; echo $(cat mac1) $({MAC})"
    args = ["run", "held", "--repo", str(source_repo), "--step", first, "--step", second]
    with ended(_started(jobs_root, *args)) as runner:
        step = _running(docker_client, jobs_root, "2")
        [holder] = _boxes(docker_client, jobs_root, "netns")
        own = network_name("held", jobs_root)
        assert step.attrs["HostConfig"]["NetworkMode"] == f"container:{holder.id}"
        assert list(holder.attrs["NetworkSettings"]["Networks"]) == [own]
        host = holder.attrs["HostConfig"]
        assert holder.attrs["Config"]["User"] == "65534:65534"
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["ReadonlyRootfs"] and not host["Privileged"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["PidsLimit"] == 16 and host["Memory"] == 32 * 2**20
        assert holder.attrs["Mounts"] == []  # nothing of the workspace
        (jobs_root / "held" / "workspace" / "go").write_text("")
        out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    mine, shared = out.split()
    assert mine == shared  # the second step is in the first one's namespace
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_one_step_at_a_time_gets_the_jobs_network_without_a_holder(
    jobs_root, source_repo, docker_client
):
    create = ["job", "create", "--repo", str(source_repo), "--step", WAIT_GO, "--step", "true"]
    job_id = run_logist(jobs_root, *create).stdout.strip()
    with ended(_started(jobs_root, "job", "step", job_id)) as runner:
        step = _running(docker_client, jobs_root, "1")
        assert step.attrs["HostConfig"]["NetworkMode"] == network_name(job_id, jobs_root)
        assert _boxes(docker_client, jobs_root, "netns") == []
        (jobs_root / job_id / "workspace" / "go").write_text("")
        _, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_steps_without_a_network_share_a_namespace_with_loopback_only(
    jobs_root, source_repo, docker_client
):
    steps = ["--step", WAIT_GO, "--step", "ls /sys/class/net"]
    args = ["run", "none", "--repo", str(source_repo), "--network", "none", *steps]
    with ended(_started(jobs_root, *args)) as runner:
        step = _running(docker_client, jobs_root, "1")
        [holder] = _boxes(docker_client, jobs_root, "netns")
        assert step.attrs["HostConfig"]["NetworkMode"] == f"container:{holder.id}"
        assert holder.attrs["HostConfig"]["NetworkMode"] == "none"
        (jobs_root / "none" / "workspace" / "go").write_text("")
        out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    assert out.split() == ["lo"]
    assert left_behind(docker_client, jobs_root) == ([], [])


@pytest.mark.timeout(180)
def test_a_canceled_or_killed_run_leaves_no_holder(jobs_root, source_repo, docker_client):
    steps = ["--step", "sleep 60", "--step", "true"]
    # canceled: its owner removes the holder and the network
    with ended(_started(jobs_root, "run", "canceled", "--repo", str(source_repo), *steps)) as r:
        _running(docker_client, jobs_root, "1")
        wait_for(lambda: _boxes(docker_client, jobs_root, "netns"), 60, "the holder")
        out = run_logist(jobs_root, "job", "cancel", "canceled", timeout=60)
        assert out.returncode == 0, out.stderr
        r.communicate(timeout=60)
    assert left_behind(docker_client, jobs_root) == ([], [])
    # killed: the sweep removes what it left
    args = ["run", "killed", "--repo", str(source_repo), *steps]
    with ended(_started(jobs_root, *args, start_new_session=True)) as runner:
        _running(docker_client, jobs_root, "1")
        wait_for(lambda: _boxes(docker_client, jobs_root, "netns"), 60, "the holder")
        os.killpg(runner.pid, signal.SIGKILL)
        runner.communicate(timeout=30)
    boxes, nets = left_behind(docker_client, jobs_root)
    assert {b.labels["logist.step"] for b in boxes} >= {"1", "netns"} and len(nets) == 1
    out = run_logist(jobs_root, "job", "cleanup", "--stale", "--older-than", "0s", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert left_behind(docker_client, jobs_root) == ([], [])


FETCH = """
import sys, time, urllib.request
for _ in range(int(sys.argv[2])):
    try:
        print(urllib.request.urlopen(f"http://{sys.argv[1]}:8080/", timeout=3).status)
        break
    except Exception:
        time.sleep(0.25)
else:
    print("unreachable")
"""


@pytest.mark.timeout(240)
def test_jobs_whose_steps_share_held_namespaces_cannot_reach_each_other(
    jobs_root, source_repo, docker_client
):
    commit_file(source_repo, "fetch.py", FETCH)
    serve = ["--step", "true", "--step", "exec python3 -m http.server 8080"]
    with ended(_started(jobs_root, "run", "serves", "--repo", str(source_repo), *serve)):
        _running(docker_client, jobs_root, "2")
        [holder] = _boxes(docker_client, jobs_root, "netns")
        own = network_name("serves", jobs_root)
        ip = holder.attrs["NetworkSettings"]["Networks"][own]["IPAddress"]
        # a container of the test's own on the serving job's network reaches it: it is up
        seen = docker_client.containers.run(
            STEP_IMAGE, ["python3", "-c", FETCH, ip, "40"], network=own, remove=True
        )
        assert seen.strip() == b"200"
        probe = ["--step", "true", "--step", f"python3 fetch.py {ip} 4"]
        out = run_logist(jobs_root, "run", "other", "--repo", str(source_repo), *probe)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "unreachable"
        assert run_logist(jobs_root, "job", "cancel", "serves", timeout=60).returncode == 0
    wait_for(lambda: left_behind(docker_client, jobs_root) == ([], []), 60, "nothing left")


def test_steps_get_the_jobs_network_itself_when_the_holder_cannot_start(
    jobs_root, source_repo, docker_client, monkeypatch
):
    from logist import Runtime, netns
    from logist.errors import EnvironmentProblem

    def broken(*args, **kwargs):
        raise EnvironmentProblem("the engine could not start the holder")

    monkeypatch.setattr(netns, "hold", broken)  # the holder only makes steps faster
    rt = Runtime(jobs_root, notify=lambda message: None)
    steps = ["true", "true", "ls /sys/class/net > nets"]
    rt.create("direct", repo=str(source_repo), image=STEP_IMAGE, steps=steps)
    [result] = rt.run_jobs(["direct"])
    assert result.exit_code == 0 and result.job.state == "succeeded", result.error
    shown = subprocess.run(
        ["git", "-C", str(source_repo), "show", "logist/direct:nets"],
        capture_output=True,
        text=True,
    )
    assert shown.stdout.split() == ["eth0", "lo"]  # on the job's network all the same
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_a_holder_stopped_outside_logist_interrupts_the_job_and_a_rerun_resumes_it(
    jobs_root, source_repo, docker_client
):
    steps = ["--step", WAIT_GO, "--step", "echo second > second"]
    with ended(_started(jobs_root, "run", "lost", "--repo", str(source_repo), *steps)) as runner:
        _running(docker_client, jobs_root, "1")
        [holder] = _boxes(docker_client, jobs_root, "netns")
        holder.kill()  # the operator, or the engine: no step reaches it
        (jobs_root / "lost" / "workspace" / "go").write_text("")
        _, err = runner.communicate(timeout=120)
    assert runner.returncode == 3, err
    assert f"network holder (container {holder.short_id}) stopped outside logist" in err
    view = json.loads(run_logist(jobs_root, "job", "status", "lost", "--json").stdout)
    assert view["state"] == "interrupted"
    assert [s["state"] for s in view["steps"]] == ["succeeded", "pending"]
    assert left_behind(docker_client, jobs_root) == ([], [])
    out = run_logist(jobs_root, "job", "run", "lost")
    assert out.returncode == 0, out.stderr
    shown = subprocess.run(
        ["git", "-C", str(source_repo), "show", "logist/lost:second"], capture_output=True
    )
    assert shown.stdout == b"second\n"
    assert left_behind(docker_client, jobs_root) == ([], [])


def test_steps_under_another_runtime_keep_a_namespace_each(jobs_root, source_repo, docker_client):
    """gVisor's runsc takes the addresses of the namespace it starts in for itself: a second
    sandbox in the same namespace would find none. Any runtime the job names keeps the direct
    way (shown with ``runc``, the one this engine has)."""
    steps = ["--step", WAIT_GO, "--step", "true"]
    args = ["run", "rt", "--repo", str(source_repo), "--runtime", "runc", *steps]
    with ended(_started(jobs_root, *args)) as runner:
        step = _running(docker_client, jobs_root, "1")
        assert step.attrs["HostConfig"]["NetworkMode"] == network_name("rt", jobs_root)
        assert _boxes(docker_client, jobs_root, "netns") == []
        (jobs_root / "rt" / "workspace" / "go").write_text("")
        _, err = runner.communicate(timeout=120)
    assert runner.returncode == 0, err
    assert left_behind(docker_client, jobs_root) == ([], [])
