"""Failure paths (issue 13): a refused setting, a permanent setup error, the engine's container
list unknown, signals during cleanup, a stale sweep that meets a broken job, cancel races, and
step logs that are in the file at once."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import create_job as create
from tests.helpers import git, wait_for
from tests.helpers import job_status as status
from tests.support_cli import popen_logist
from tests.support_containers import labelled_container

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line: {stderr!r}"
    assert "Traceback" not in stderr
    return lines[0]


# --- the engine refuses a setting; a permanent setup error -----------------------------------


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_setting_the_engine_refuses_is_exit_2_in_one_line_and_the_job_failed(logist, source_repo):
    # more CPUs than the machine has: logist cannot know the engine's host, the engine refuses
    job = create(logist, source_repo, "echo hi > hi.txt", extra=("--cpus", "4000"))
    out = logist("job", "run", job)
    assert out.returncode == 2, out.stderr
    line = one_line(out.stderr)
    assert "refused" in line and "cpus" in line.lower()  # the engine's own explanation
    st = status(logist, job)
    assert st["state"] == "failed"
    assert st["steps"][0]["state"] == "failed"
    again = logist("job", "run", "--all")  # a failed job is not retried forever
    assert again.returncode == 0, again.stderr
    assert status(logist, job)["state"] == "failed"


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_ref_gone_at_run_time_fails_the_job_with_exit_2(logist, source_repo, jobs_root):
    git(source_repo, "branch", "feature")
    job = create(logist, source_repo, "true", extra=("--ref", "feature"))
    git(source_repo, "branch", "-D", "feature")
    out = logist("job", "run", job)
    assert out.returncode == 2, out.stderr
    assert "feature" in one_line(out.stderr)
    st = status(logist, job)
    assert st["state"] == "failed"
    step = st["steps"][0]
    assert (step["state"], step["started_at"], step["exit_code"]) == ("pending", None, None)
    assert not (jobs_root / job / "logs" / "step-1.log").exists()  # no container ever ran
    assert st["workspace"]["state"] != "ready" and st["result"]["branch"] is None


# --- the container list when the engine does not answer --------------------------------------


def test_status_says_the_container_list_is_unknown_when_the_engine_is_down(logist, source_repo):
    job = create(logist, source_repo, "true")
    out = logist("job", "status", job, "--json", env=NO_ENGINE)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["containers"] is None
    assert "unreachable" in view["containers_error"]
    rows = json.loads(logist("job", "list", "--json", env=NO_ENGINE).stdout)
    assert rows[0]["containers"] is None and rows[0]["containers_error"]
    assert set(rows[0]) == set(view)


@pytest.mark.docker
def test_status_lists_containers_and_no_error_when_the_engine_answers(
    logist, source_repo, jobs_root, docker_client
):
    """A job's own containers, by id: not another job's, not another jobs root's."""
    job = create(logist, source_repo, "true")
    other = create(logist, source_repo, "true")
    view = status(logist, job)
    assert view["containers"] == [] and view["containers_error"] is None  # none: known empty
    mine = labelled_container(docker_client, jobs_root, job)
    theirs = labelled_container(docker_client, jobs_root, other)
    elsewhere = labelled_container(docker_client, jobs_root.parent / "other-root", job)
    try:
        view = status(logist, job)
        assert view["containers"] == [mine.id] and view["containers_error"] is None
        out = logist("job", "list", "--json")
        assert out.returncode == 0, out.stderr
        listed = {row["id"]: row["containers"] for row in json.loads(out.stdout)}
        assert listed == {job: [mine.id], other: [theirs.id]}
    finally:
        for container in (mine, theirs, elsewhere):
            container.remove(force=True)


# --- signals during cleanup and the stale sweep ----------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_stale_sweep_ends_it_with_130_and_the_next_sweep_finishes(
    logist, source_repo, jobs_root, docker_client, sig
):
    jobs = []
    for name in ("a-first", "b-second"):
        out = logist(
            "job", "create", name, "--repo", str(source_repo), "--cleanup", "never",
            "--step", f"echo {name} > {name}.txt",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert logist("job", "run", name).returncode == 0
        jobs.append(name)
    stubborn = labelled_container(docker_client, jobs_root, "a-first")
    events = docker_client.events(decode=True, filters={"container": stubborn.id, "event": "kill"})
    try:
        sweep = popen_logist(jobs_root, "job", "cleanup", "--stale", "--older-than", "0s")
        next(events)  # the sweep is stopping a-first's container (it ignores SIGTERM)
        sweep.send_signal(sig)
        _, err = sweep.communicate(timeout=60)
    finally:
        events.close()
    assert sweep.returncode == 130, err
    assert "interrupted" in one_line(err)
    assert (jobs_root / "b-second" / "workspace").is_dir()  # the sweep did not go on
    for job in jobs:
        json.loads((jobs_root / job / "job.json").read_text())
        assert status(logist, job)["active"] is False
    again = logist("job", "cleanup", "--stale", "--older-than", "0s", "--json")
    assert again.returncode == 0, again.stderr
    assert not docker_client.containers.list(
        all=True, filters={"label": f"logist.jobs-dir={jobs_root}"}
    )
    for job in jobs:
        assert not (jobs_root / job / "workspace").exists()
        assert git(source_repo, "show", f"logist/{job}:{job}.txt") == f"{job}\n"


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_signal_during_job_cleanup_ends_it_with_130(
    logist, source_repo, jobs_root, docker_client
):
    job = create(logist, source_repo, "echo x > x.txt", extra=("--cleanup", "never"))
    assert logist("job", "run", job).returncode == 0
    stubborn = labelled_container(docker_client, jobs_root, job)
    events = docker_client.events(decode=True, filters={"container": stubborn.id, "event": "kill"})
    try:
        cleanup = popen_logist(jobs_root, "job", "cleanup", job)
        next(events)
        cleanup.send_signal(signal.SIGINT)
        _, err = cleanup.communicate(timeout=60)
    finally:
        events.close()
    assert cleanup.returncode == 130, err
    one_line(err)
    json.loads((jobs_root / job / "job.json").read_text())
    assert logist("job", "cleanup", job).returncode == 0
    assert not (jobs_root / job / "workspace").exists()


# --- one broken job never stops a sweep ------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "manifest",
    ['{"id": "broken"}', '{"id": "broken", "steps": [{"bogus": 1}]}', "[1, 2]"],
)
def test_a_job_whose_cleanup_raises_is_failed_and_the_sweep_goes_on(
    logist, source_repo, jobs_root, manifest
):
    good = create(logist, source_repo, "echo ok > ok.txt", extra=("--cleanup", "never"))
    assert logist("job", "run", good).returncode == 0
    broken = jobs_root / "broken"
    (broken / "workspace").mkdir(parents=True)
    (broken / "job.json").write_text(manifest)
    out = logist("job", "cleanup", "--stale", "--older-than", "0s", "--json")
    assert out.returncode == 4, out.stderr
    assert "Traceback" not in out.stderr
    report = json.loads(out.stdout)
    assert [f["job"] for f in report["failed"]] == ["broken"]
    assert [c["job"] for c in report["cleaned"]] == [good]
    assert not (jobs_root / good / "workspace").exists()


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_cleanup_removes_a_1500_deep_directory_tree(logist, source_repo, jobs_root):
    deep = "d/" * 1500
    job = create(
        logist,
        source_repo,
        f"mkdir -p {deep} && echo bottom > {deep}f",
        extra=("--cleanup", "never"),
    )
    ws = jobs_root / job / "workspace"
    try:
        out = logist("job", "run", job, timeout=280)
        assert out.returncode == 0, out.stderr
        out = logist("job", "cleanup", job, timeout=280)
        assert out.returncode == 0, out.stderr
        assert not ws.exists()
        assert status(logist, job)["workspace"]["state"] == "removed"
    finally:  # pytest's own tmp_path removal recurses: never leave the tree to it
        subprocess.run(["rm", "-rf", str(ws)], check=True)


# --- cancel races ----------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_cancel_request_made_just_after_the_runner_took_the_lock_is_honoured(
    jobs_root, source_repo, logist, monkeypatch
):
    """The request lands between the runner's lock and its start: it must not be dropped as a
    request of an earlier run (the step would then run to its end)."""
    from logist import Runtime
    from logist.jobrun import JobRun
    from logist.store import request_cancel

    job = create(logist, source_repo, "echo ran > ran.txt")
    rt = Runtime(jobs_root)
    recover = JobRun.recover_dead_owner

    def cancel_arrives(run):
        request_cancel(run.dir.path)
        return recover(run)

    monkeypatch.setattr(JobRun, "recover_dead_owner", cancel_arrives)
    [result] = rt.run_jobs([job])
    assert result.job.state == "canceled"
    assert [s["state"] for s in status(logist, job)["steps"]] == ["canceled"]
    assert not (jobs_root / job / "logs" / "step-1.log").exists()  # no container ran


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_stale_cancel_request_of_an_earlier_run_is_dropped(jobs_root, source_repo, logist):
    from logist.store import Store, request_cancel

    job = create(logist, source_repo, "true")
    request_cancel(Store(jobs_root).job_dir(job))
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert status(logist, job)["state"] == "succeeded"


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_step_whose_container_the_canceling_process_stopped_is_canceled_not_failed(
    jobs_root, source_repo, logist, docker_client, monkeypatch
):
    """The canceling process stops the container itself; even when the runner's own watcher
    never sees the request first, the step is canceled."""
    from logist import Runtime, runner
    from logist.store import request_cancel

    job = create(logist, source_repo, "echo started > started.txt; sleep 300", "echo never")
    rt = Runtime(jobs_root)
    store = rt.store

    def stopped_by_another_process() -> None:
        ws = jobs_root / job / "workspace"
        wait_for(lambda: (ws / "started.txt").exists(), what="the step to start")
        request_cancel(store.job_dir(job))
        labels = [f"logist.job={job}", f"logist.jobs-dir={jobs_root}"]
        for c in docker_client.containers.list(filters={"label": labels}):
            c.stop(timeout=0)

    helper = threading.Thread(target=stopped_by_another_process)
    real = runner.step_run.run_container

    def run_container(container, **kw):  # the runner's watcher never stops it itself
        kw["should_stop"] = lambda: None
        return real(container, **kw)

    monkeypatch.setattr(runner.step_run, "run_container", run_container)
    helper.start()
    try:
        [result] = rt.run_jobs([job])
    finally:
        helper.join(timeout=60)
    assert result.job.state == "canceled", (result.error, result.job.steps)
    assert [s.state for s in result.job.steps] == ["canceled", "canceled"]
    assert git(source_repo, "show", f"logist/{job}:started.txt") == "started\n"


@contextlib.contextmanager
def owner_of(job_dir: Path, holds: str) -> Iterator[subprocess.Popen]:
    """Another process that takes the job's lock and, holding it, runs ``holds`` (a line of
    Python that sees ``job_dir``); yielded once it holds the lock, killed on the way out."""
    script = (
        "import sys, time; from pathlib import Path; from logist.store import job_lock\n"
        "job_dir = Path(sys.argv[1])\n"
        "with job_lock(job_dir):\n"
        "    print('locked', flush=True)\n"
        f"    {holds}\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(job_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert owner.stdout.readline().strip() == "locked"
        yield owner
    finally:
        owner.kill()
        owner.wait(timeout=10)


@pytest.mark.docker
@pytest.mark.timeout(60)
def test_cancel_exits_1_when_the_owner_still_runs_after_the_wait(logist, source_repo, jobs_root):
    job = create(logist, source_repo, "true")
    with owner_of(jobs_root / job, holds="time.sleep(300)"):
        out = logist("job", "cancel", job, "--wait", "1")
    assert out.returncode == 1, out.stderr
    assert "still runs" in one_line(out.stderr)
    assert status(logist, job)["state"] == "pending"  # the owner decides; nothing was faked


@pytest.mark.docker
@pytest.mark.timeout(60)
def test_cancel_finishes_the_cancel_itself_when_the_owner_stops_without_honouring_it(
    logist, source_repo, jobs_root
):
    """An owner that releases the job (``job step`` ending) without seeing the request: the
    canceling process takes the lock and cancels the job itself."""
    job = create(logist, source_repo, "true")
    released = "while not (job_dir / 'cancel-requested').exists(): time.sleep(0.05)"
    with owner_of(jobs_root / job, holds=released):
        out = logist("job", "cancel", job, "--wait", "30")
    assert out.returncode == 0, out.stderr
    assert status(logist, job)["state"] == "canceled"


# --- logs are in the file at once ------------------------------------------------------------


def _read_line_within(proc: subprocess.Popen, deadline: float) -> str:
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline()
    return ""


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_line_a_running_step_printed_is_in_its_log_file_and_follow_within_a_second(
    logist, source_repo, jobs_root
):
    job = create(
        logist,
        source_repo,
        "echo first-line; touch .printed; while [ ! -e .release ]; do sleep 0.1; done",
    )
    runner = popen_logist(jobs_root, "job", "run", job, stdout=subprocess.DEVNULL)
    ws = jobs_root / job / "workspace"
    log = jobs_root / job / "logs" / "step-1.log"
    follow = None
    try:
        wait_for(lambda: (ws / ".printed").exists(), timeout=60, what="the step to print")
        wait_for(  # the contract: within a second (plus a margin for a busy machine)
            lambda: log.exists() and b"first-line\n" in log.read_bytes(),
            timeout=1.5,
            what="the line in the log file while the step runs",
        )
        follow = popen_logist(jobs_root, "job", "logs", job, "--follow")
        assert _read_line_within(follow, time.monotonic() + 5) == "first-line\n"
        (ws / ".release").touch()
        assert runner.wait(timeout=60) == 0, runner.stderr.read()
        follow.wait(timeout=30)  # --follow ends with the step
    finally:
        for proc in (runner, follow):
            if proc is not None and proc.poll() is None:
                proc.kill()


@pytest.mark.docker
def test_a_harvest_killed_at_its_deadline_leaves_no_nested_git_under_another_name(
    logist, source_repo, jobs_root
):
    """The harvest sets a nested repository's .git aside while it adds the files; killed at its
    deadline it could not put it back, and the next harvest (the cleanup's) took the .git's
    files as work. The next harvest now puts it back first."""
    step = (
        "git init -q sub && echo code > sub/code.txt && mkdir many && cd many && "
        "i=0; while [ $i -lt 20000 ]; do echo $i > f$i; i=$((i+1)); done"
    )
    job = create(logist, source_repo, step, extra=("--image", "logist/step:latest"))
    out = logist("job", "run", job, env={"LOGIST_HARVEST_TIMEOUT": "1"}, timeout=300)
    assert out.returncode == 4, out.stderr  # the harvest killed: the workspace kept
    ws = jobs_root / job / "workspace"
    assert list((ws / "sub").glob(".git.logist-hidden-*")), "the harvest was not killed mid-way"

    out = logist("job", "cleanup", job, timeout=300)

    assert out.returncode == 0, out.stderr
    names = git(source_repo, "ls-tree", "-r", "--name-only", f"logist/{job}").split()
    assert "sub/code.txt" in names and "many/f19999" in names
    assert not [n for n in names if "logist-hidden" in n], [n for n in names if "sub/" in n]


@pytest.mark.docker
def test_a_run_resumed_after_a_harvest_that_never_answered_harvests_before_its_next_step(
    logist, source_repo, jobs_root
):
    """A harvest killed mid-way (with its runner, say) left a nested repository's .git set
    aside and the step's own .git in place; the resumed run went straight to the next step,
    which met both (red team). It now harvests first, so the step finds neither."""
    first = "git init -q sub && echo code > sub/code.txt && echo one > one.txt"
    check = (
        "test -d sub/.git && test ! -e .git/hooks/planted && "
        'test "$(git -C sub rev-parse --show-toplevel)" = /workspace/sub'
    )
    job = create(logist, source_repo, first, check, extra=("--image", "logist/step:latest"))
    assert logist("job", "step", job).returncode == 0
    job_dir = jobs_root / job
    ws, nonce = job_dir / "workspace", "0123456789abcdef"
    (ws / "sub" / ".git").rename(ws / "sub" / f".git.logist-hidden-{nonce}")
    (ws / ".git" / "hooks").mkdir(exist_ok=True)
    (ws / ".git" / "hooks" / "planted").write_text("#!/bin/sh\nexit 1\n")
    (ws / "two.txt").write_text("two\n")  # work of step 1 the killed harvest did not take
    (job_dir / ".set-aside").write_text(f"{nonce}\nowed\n")  # as a killed harvest leaves it

    out = logist("job", "step", job)

    assert out.returncode == 0, out.stderr
    assert status(logist, job)["state"] == "succeeded"
    names = git(source_repo, "ls-tree", "-r", "--name-only", f"logist/{job}").split()
    assert {"one.txt", "two.txt", "sub/code.txt"} <= set(names)
    assert not [n for n in names if "logist-hidden" in n], names


@pytest.mark.docker
def test_a_run_resumed_after_a_write_back_that_never_ran_writes_back_before_its_next_step(
    logist, source_repo, jobs_root, monkeypatch
):
    """A runner stopped after its harvest was taken in but before the write-back (a separate
    call when the step is not root) left the step's own .git to the resumed run's next step
    (red team): the mark now stays until the write-back is done."""
    from logist.errors import Interrupted
    from logist.sandbox import Sandbox

    first = "git config core.hooksPath .git/myhooks && echo one > one.txt"
    check = 'test -z "$(git config core.hooksPath)"'
    job = create(
        logist,
        source_repo,
        first,
        check,
        extra=("--image", "logist/step:latest", "--user", "1000:1000"),
    )

    def stopped(self, commit):
        raise Interrupted("stopped before the write-back")

    with monkeypatch.context() as patch:
        patch.setattr(Sandbox, "write_back", stopped)
        logist("job", "step", job)
    assert status(logist, job)["state"] == "interrupted"
    assert "owed" in (jobs_root / job / ".set-aside").read_text().split()

    out = logist("job", "step", job)

    assert out.returncode == 0, out.stderr
    assert status(logist, job)["state"] == "succeeded"
    assert not (jobs_root / job / ".set-aside").exists()
