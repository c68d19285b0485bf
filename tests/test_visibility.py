"""A step never runs where the engine cannot see the job's workspace (issue: logist in a
container, a remote DOCKER_HOST, another mount namespace): exit 3, nothing ran, nothing left."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest

from tests.helpers import create_job, run_logist

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

LOGIST_IMAGE = "logist/logist:latest"
SCRIPT = """
set -u
git init -q /src && git -C /src -c user.name=a -c user.email=a@a commit -q --allow-empty -m init
logist --jobs-dir {root} job create vis --repo /src --step 'echo ran > ran.txt' >/dev/null
logist --jobs-dir {root} job run vis 2>/tmp/err; echo "rc=$?"
echo "stderr=$(cat /tmp/err)"
logist --jobs-dir {root} job status vis --json
"""


def in_logist_container(docker_client, script: str, root: str, volumes: dict) -> str:
    """The output of ``script`` run in ``logist/logist:latest`` against the host's engine;
    every container of the jobs root ``root`` is removed after."""
    container = docker_client.containers.run(
        LOGIST_IMAGE,
        entrypoint=["sh", "-c", script],
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}, **volumes},
        detach=True,
    )
    try:
        container.wait(timeout=180)
        return container.logs().decode()
    finally:
        container.remove(force=True)
        for c in docker_client.containers.list(
            all=True, filters={"label": f"logist.jobs-dir={root}"}
        ):
            c.remove(force=True)


def run_logist_in_container(docker_client, root: str, volumes: dict) -> tuple[int, str, dict]:
    """Run a job with logist inside ``logist/logist:latest`` against the host's engine."""
    out = in_logist_container(docker_client, SCRIPT.format(root=root), root, volumes)
    code = int(next(line for line in out.splitlines() if line.startswith("rc="))[3:])
    stderr = next(line for line in out.splitlines() if line.startswith("stderr="))[7:]
    status = json.loads(out[out.index("{") :])
    return code, stderr, status


def test_logist_in_a_container_without_the_jobs_root_at_the_same_path_runs_nothing(
    docker_client,
):
    root = f"/logist-unseen-{secrets.token_hex(4)}"  # exists only inside logist's container
    code, stderr, status = run_logist_in_container(docker_client, root, {})
    assert code == 3, stderr
    assert "does not see" in stderr and "logist doctor" in stderr
    assert "Traceback" not in stderr
    assert status["state"] == "pending"
    assert [s["state"] for s in status["steps"]] == ["pending"]
    assert not Path(root).exists(), "the engine made the bind-mount path on its host"


def test_logist_in_a_container_with_the_jobs_root_at_the_same_path_runs_the_job(
    docker_client, tmp_path
):
    root = tmp_path / "jobs"
    root.mkdir()
    code, stderr, status = run_logist_in_container(
        docker_client, str(root), {str(root): {"bind": str(root), "mode": "rw"}}
    )
    assert code == 0, stderr
    assert status["state"] == "succeeded"
    assert (root / "vis" / "result.bundle").is_file()


def test_step_and_helper_containers_use_bind_mounts_that_fail_on_a_missing_source(
    docker_client, tmp_path
):
    """What logist sends: ``Mounts`` of type bind (the engine refuses a missing source), never
    ``Binds`` (which makes an empty directory on the engine's host)."""
    from logist import containers
    from logist.errors import Rejected

    missing = tmp_path / "not-there"
    with pytest.raises(Rejected, match="bind source path does not exist"):
        containers.run_helper(
            docker_client,
            image="logist/busybox:latest",
            command=["true"],
            job_id="vis",
            jobs_root=tmp_path,
            owner="test:1:1",
            binds={str(missing): ("/x", False)},
        )
    assert not missing.exists()


@pytest.mark.timeout(120)
def test_a_helper_that_does_not_see_the_marker_written_for_it_runs_no_step(
    docker_client, jobs_root, source_repo, logist, monkeypatch
):
    """The engine mounts another directory than logist's at the same path (here: the exchange
    directory replaced between the helper's create and its start): the engine does not find
    the marker through the helper, the job stays pending, no step ran, nothing is left."""
    from logist import Runtime, containers
    from logist.errors import WorkspaceUnseen
    from tests.helpers import job_status as status

    job = create_job(logist, source_repo, "echo ran > ran.txt")
    exchange = jobs_root / job / ".exchange"
    real = containers.create

    def create(cli, spec):
        made = real(cli, spec)
        if spec.step == "helper":  # the engine will mount what is at the path at start
            exchange.rename(exchange.with_name(".exchange-logist-wrote"))
            exchange.mkdir()
        return made

    monkeypatch.setattr(containers, "create", create)
    [result] = Runtime(jobs_root).run_jobs([job])
    assert isinstance(result.error, WorkspaceUnseen)
    assert "not visible inside containers" in str(result.error)
    view = status(logist, job)
    assert view["state"] == "pending"
    assert [s["state"] for s in view["steps"]] == ["pending"]
    assert not (jobs_root / job / "workspace" / "ran.txt").exists()
    labels = [f"logist.job={job}", f"logist.jobs-dir={jobs_root}"]
    assert docker_client.containers.list(all=True, filters={"label": labels}) == []


def _replace_exchange_after_helper_create(monkeypatch, exchange: Path) -> None:
    """The engine will mount what is at the exchange's path, not what logist wrote there."""
    from logist import containers

    real = containers.create

    def create(cli, spec):
        made = real(cli, spec)
        if spec.step == "helper":
            exchange.rename(exchange.with_name(".exchange-logist-wrote"))
            exchange.mkdir()
        return made

    monkeypatch.setattr(containers, "create", create)


@pytest.mark.timeout(120)
def test_an_engine_that_cannot_stat_the_marker_leaves_the_check_to_the_helpers_first_line(
    docker_client, jobs_root, source_repo, logist, monkeypatch
):
    """Where the engine does not answer the archive stat, the started helper's first line
    decides, still before any step: a replaced directory is caught, a real one runs."""
    from logist import Runtime, visibility
    from logist.errors import WorkspaceUnseen
    from tests.helpers import job_status as status

    asked: list[str] = []

    def unanswered(container, token):
        asked.append(token)
        return None

    monkeypatch.setattr(visibility, "stat_says", unanswered)
    unseen = create_job(logist, source_repo, "echo ran > ran.txt")
    with monkeypatch.context() as m:
        _replace_exchange_after_helper_create(m, jobs_root / unseen / ".exchange")
        [result] = Runtime(jobs_root).run_jobs([unseen])
    assert isinstance(result.error, WorkspaceUnseen), result.error
    assert "not visible inside containers" in str(result.error)
    assert [s["state"] for s in status(logist, unseen)["steps"]] == ["pending"]
    assert not (jobs_root / unseen / "workspace" / "ran.txt").exists()

    seen = create_job(logist, source_repo, "echo ran > ran.txt")
    [result] = Runtime(jobs_root).run_jobs([seen])
    assert result.error is None, result.error
    assert status(logist, seen)["state"] == "succeeded"
    assert len(asked) == 2, "the stat was not asked first"


def test_the_marker_is_found_by_the_engines_stat_of_the_created_helper(
    docker_client, jobs_root, source_repo, logist
):
    """The stat the check relies on, on the real engine: the marker is found through the
    created, never started, helper's mount, and a missing one is not."""
    from logist import Runtime, visibility
    from logist.jobrun import JobRun
    from logist.sandbox import Sandbox

    job = create_job(logist, source_repo, "true")
    runtime = Runtime(jobs_root)
    with JobRun.open(runtime.store, job) as run, Sandbox(run) as sandbox:
        run.dir.repo.mkdir()
        run.dir.workspace.mkdir()
        assert sandbox._create(check=True) is None  # found: no first line needed
        container = sandbox._container
        container.reload()
        assert container.status == "created"
        token = "0123456789abcdef"
        assert visibility.stat_says(container, token) is False
        (run.dir.exchange / visibility.marker_name(token)).write_text(token)
        assert visibility.stat_says(container, token) is True
        (run.dir.exchange / visibility.marker_name(token)).write_text(token + "x")
        assert visibility.stat_says(container, token) is False


# --- engines that answer the stat oddly, a jobs root seen elsewhere (red team, 12-05) ------------

CID = r"/containers/[0-9a-f]{12,}"


def _bodiless(code: int) -> bytes:
    """An engine's error answer to a HEAD request: no body."""
    return f"HTTP/1.1 {code} Error\r\nContent-Length: 0\r\n\r\n".encode()


@pytest.fixture
def proxy(monkeypatch):
    import tests.faultproxy as fp

    monkeypatch.setattr(fp, "_error_response", _bodiless)
    monkeypatch.setenv("LOGIST_TEST_SUBPROCESS", "1")
    with fp.FaultProxy() as p:
        yield p


def _via(proxy, jobs_root, *args):
    env = {"DOCKER_HOST": proxy.host, "LOGIST_DOCKER_TIMEOUT": "5"}
    return run_logist(jobs_root, *args, env=env)


@pytest.mark.timeout(120)
def test_an_engine_that_answers_the_stat_404_falls_back_to_the_first_line(
    proxy, jobs_root, source_repo, logist
):
    """An engine (or socket proxy) without HEAD .../archive answers 404, like a missing file:
    the job must not be called unseen when the helper's first line would prove it seen."""
    proxy.fail("HEAD", r"/archive$", "status:404")
    job = create_job(logist, source_repo, "echo ran > ran.txt")
    out = _via(proxy, jobs_root, "job", "run", job)
    assert out.returncode == 0, out.stderr


@pytest.mark.timeout(120)
def test_an_engine_fault_after_the_stat_is_exit_3_without_a_traceback(
    proxy, jobs_root, source_repo, logist
):
    """HEAD 404, then the helper's inspect (``container.reload`` in ``stat_says``, outside
    ``engine_errors``) fails with a 500: a raw APIError, traceback, exit 1."""
    proxy.fail("HEAD", r"/archive$", "status:404")
    proxy.fail("GET", CID + r"/json$", "500", skip=1, times=1)  # the 1st is create's own
    job = create_job(logist, source_repo, "echo ran > ran.txt")
    out = _via(proxy, jobs_root, "job", "run", job)  # conftest: no traceback allowed
    assert out.returncode == 3, out.stderr


LOGIST_PKG = Path(__file__).resolve().parent.parent / "logist"
SITE = "/opt/logist/lib/python3.11/site-packages/logist"


@pytest.mark.timeout(240)
def test_a_job_continued_where_the_engine_sees_another_directory_runs_no_step(
    docker_client, jobs_root, source_repo, logist, tmp_path
):
    """`job step` ran step 1 where the engine saw the jobs root. `job run` then comes from a
    logist whose jobs root (here a copy, at the same path) the engine does not see: the job is
    pending, ready and harvested, so ``seen`` skips the check and step 2 runs in the engine's
    directory at that path. Promise: exit 3, nothing ran."""
    job = create_job(logist, source_repo, "echo one > one.txt", "echo two > two.txt")
    assert logist("job", "step", job).returncode == 0
    copy = tmp_path / "jobs-copy"
    shutil.copytree(jobs_root, copy, symlinks=True)
    text = in_logist_container(
        docker_client,
        f"logist --jobs-dir {jobs_root} job run {job}; echo rc=$?",
        str(jobs_root),
        {
            str(copy): {"bind": str(jobs_root), "mode": "rw"},
            str(source_repo): {"bind": str(source_repo), "mode": "rw"},
            str(LOGIST_PKG): {"bind": SITE, "mode": "ro"},  # this checkout's code
        },
    )
    assert not (jobs_root / job / "workspace" / "two.txt").exists(), text
    assert "rc=3" in text, text
