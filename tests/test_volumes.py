"""Workspaces as named volumes (what a remote engine gets), on the local engine:
``LOGIST_WORKSPACES=volume`` gives the same code path the nodes' tests take over tcp://."""

from __future__ import annotations

import json
import shutil

import docker
import pytest

from tests.helpers import create_job, git
from tests.helpers import job_status as status

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

VOLUME = {"LOGIST_WORKSPACES": "volume"}


@pytest.fixture
def vlogist(logist):
    """The CLI with volume workspaces."""

    def run(*args: str, **kwargs):
        return logist(*args, env={**VOLUME, **kwargs.pop("env", {})}, **kwargs)

    return run


def volumes_of(cli, jobs_root) -> list[str]:
    return [v.name for v in cli.volumes.list(filters={"label": f"logist.jobs-dir={jobs_root}"})]


def kept_job(vlogist, source_repo, step: str) -> str:
    """A job of one step in logist/busybox whose workspace cleanup keeps (``never``)."""
    extra = ("--cleanup", "never", "--image", "logist/busybox:latest")
    return create_job(vlogist, source_repo, step, extra=extra)


def test_a_job_on_a_volume_workspace_lands_its_work_and_leaves_no_volume(
    vlogist, source_repo, jobs_root, docker_client
):
    out = vlogist(
        "run", "vol1", "--repo", str(source_repo), "--image", "logist/step:latest",
        "--step", "echo one > one.txt && mkdir -p d && ln -s one.txt d/link",
        "--step", 'cat one.txt && git log --oneline | head -1 && test -z "$(git status -s)"',
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "one\n" in out.stdout and "logist: vol1 step 1" in out.stdout
    st = status(vlogist, "vol1")
    assert st["state"] == "succeeded"
    assert st["workspace"]["volume"].startswith("logist-vol1-")
    assert st["engine"] == "default"  # DOCKER_HOST, else the socket, of each command
    assert git(source_repo, "show", "logist/vol1:one.txt") == "one\n"
    assert git(source_repo, "show", "logist/vol1:d/link") == "one.txt"  # a link, as data
    assert not (jobs_root / "vol1" / "workspace").exists()  # never on this host
    assert volumes_of(docker_client, jobs_root) == []


def test_a_non_root_step_owns_its_volume_workspace(vlogist, source_repo):
    out = vlogist(
        "run", "vol2", "--repo", str(source_repo), "--image", "logist/step:latest",
        "--user", "1000:1000",
        "--step", "stat -c '%u:%g' . .git README.md && echo new > new.txt && mkdir sub",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1000:1000"] * 3
    assert git(source_repo, "show", "logist/vol2:new.txt") == "new\n"


def test_a_kept_volume_workspace_is_removed_by_cleanup_and_counted(
    vlogist, source_repo, jobs_root, docker_client
):
    job = kept_job(vlogist, source_repo, "echo kept > k.txt")
    assert vlogist("job", "run", job).returncode == 0
    st = status(vlogist, job)
    assert st["workspace"]["state"] == "ready"
    assert volumes_of(docker_client, jobs_root) == [st["workspace"]["volume"]]
    # work left after the last harvest (written into the volume from outside) is harvested
    docker_client.containers.run(
        "logist/busybox:latest", ["sh", "-c", "echo late > /w/late.txt"], remove=True,
        mounts=[docker.types.Mount("/w", st["workspace"]["volume"], type="volume")],
    )  # fmt: skip
    out = vlogist("job", "cleanup", job, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [(c["job"], c["workspace_removed"]) for c in report["cleaned"]] == [(job, True)]
    assert report["failed"] == []
    assert volumes_of(docker_client, jobs_root) == []
    assert git(source_repo, "show", f"logist/{job}:late.txt") == "late\n"
    assert status(vlogist, job)["workspace"]["state"] == "removed"


def test_the_stale_sweep_removes_idle_volumes_and_orphan_volumes(
    vlogist, source_repo, jobs_root, docker_client
):
    kept, gone = (kept_job(vlogist, source_repo, "true") for _ in range(2))
    assert vlogist("job", "run", kept, gone).returncode == 0
    assert len(volumes_of(docker_client, jobs_root)) == 2
    shutil.rmtree(jobs_root / gone)  # its job directory is gone: its volume is an orphan
    out = vlogist("job", "cleanup", "--stale", "--older-than", "0s", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [c["job"] for c in report["cleaned"]] == [kept]
    assert report["cleaned"][0]["workspace_removed"] is True
    assert report["orphans_removed"] == 1 and report["failed"] == []
    assert volumes_of(docker_client, jobs_root) == []


def test_cancel_of_a_running_volume_job_removes_its_containers_and_volume(
    vlogist, source_repo, jobs_root, docker_client, tmp_path
):
    import subprocess
    import sys

    from tests.helpers import wait_for

    job = create_job(
        vlogist, source_repo, "echo started > s.txt; sleep 300",
        extra=("--image", "logist/busybox:latest"),
    )  # fmt: skip
    runner = subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job],
        env={**__import__("os").environ, **VOLUME},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: status(vlogist, job)["steps"][0]["state"] == "running", 60, "the step")
        out = vlogist("job", "cancel", job, "--grace", "1")
        assert out.returncode == 0, out.stderr
        runner.communicate(timeout=60)
    finally:
        runner.kill()
    st = status(vlogist, job)
    assert st["state"] == "canceled"
    assert git(source_repo, "show", f"logist/{job}:s.txt") == "started\n"
    assert volumes_of(docker_client, jobs_root) == []
