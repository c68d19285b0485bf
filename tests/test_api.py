"""The Python API (contract v3, "Python API"): ``logist.Runtime`` in-process, errors carrying the
CLI's exit codes, ``on_output``, several runtimes side by side in threads, and docs/api.md's
example run as written."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

import logist
from tests.helpers import git, make_repo, wait_for

STEP_IMAGE = "logist/step:latest"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def rt(jobs_root: Path) -> logist.Runtime:
    return logist.Runtime(jobs_dir=jobs_root, notify=lambda msg: None)


# --- no engine -----------------------------------------------------------------------------


def test_usage_errors_raise_logist_errors_with_exit_code_2(rt, source_repo):
    with pytest.raises(logist.UsageError) as bad_id:
        rt.create("../x", repo=str(source_repo), image=STEP_IMAGE, steps=["true"])
    assert bad_id.value.exit_code == 2 and "job id" in str(bad_id.value)
    with pytest.raises(logist.UsageError, match="unknown spec key 'colour'"):
        rt.create(repo=str(source_repo), image=STEP_IMAGE, steps=["true"], colour="red")
    with pytest.raises(logist.JobNotFound) as missing:
        rt.status("nope")
    assert missing.value.exit_code == 2
    with pytest.raises(logist.UsageError):
        logist.Runtime(jobs_dir=rt.jobs_dir, engines=["ftp://x"])
    assert rt.list() == []  # nothing was stored by the refused creations


def test_create_takes_the_yaml_specs_keys_and_returns_the_id(rt, source_repo):
    job_id = rt.create(
        "api-keys",
        repo=str(source_repo),
        image=STEP_IMAGE,
        steps=["true", {"name": "two", "run": "echo 2", "timeout": 5}],
        env={"A": "1"},
        resources={"memory": "256m", "pids": 64},
        cleanup="never",
    )
    assert job_id == "api-keys"
    view = rt.status(job_id)
    assert view["state"] == "pending"
    assert [s["name"] for s in view["steps"]] == [None, "two"]
    assert rt.logs(job_id) == b""  # no step ran yet
    assert [v["id"] for v in rt.list(containers=False)] == ["api-keys"]


def test_runtimes_keep_their_own_roots_and_engines(tmp_path, monkeypatch):
    monkeypatch.delenv("LOGIST_ENGINES", raising=False)
    a = logist.Runtime(tmp_path / "a", engines=["tcp://127.0.0.1:1"])
    b = logist.Runtime(tmp_path / "b")
    assert (a.jobs_dir, b.jobs_dir) == (tmp_path / "a", tmp_path / "b")
    assert a.engines == ["tcp://127.0.0.1:1"] and b.engines == ["default"]


def test_arguments_of_the_wrong_type_or_range_raise_usage_errors_before_acting(
    rt, source_repo, tmp_path
):
    """Red team of the API (12-06): these raised AttributeError, TypeError or ValueError, or
    were taken (a session stale from its start, a sweep of every age), or ``cancel`` acted
    before its ``wait`` was refused."""
    bad_calls = [
        lambda: logist.Runtime(jobs_dir=5),
        lambda: logist.Runtime(jobs_dir=tmp_path, engines=[5]),
        lambda: logist.Runtime(jobs_dir=tmp_path, engines=[""]),
        lambda: logist.Runtime(jobs_dir=tmp_path, engines=7),
        lambda: rt.create(file=5, repo=str(source_repo), steps=["true"]),
        lambda: rt.create(repo=str(source_repo), steps=["true"], env={"A": b"x"}),
        lambda: rt.sweep(older_than=float("nan")),
        lambda: rt.sweep(older_than=-1),
        lambda: rt.session(idle_timeout=-5, repo=str(source_repo), image=STEP_IMAGE),
    ]
    for call in bad_calls:
        with pytest.raises(logist.UsageError) as refused:
            call()
        assert refused.value.exit_code == 2
    job_id = rt.create(repo=str(source_repo), image=STEP_IMAGE, steps=["true"])
    with pytest.raises(logist.UsageError):
        rt.logs(job_id, step="1")
    with pytest.raises(logist.UsageError, match="on_output"):
        rt.run(job_id, on_output=5)
    with pytest.raises(logist.UsageError):
        rt.cancel(job_id, wait=None)
    assert rt.status(job_id)["state"] == "pending"  # not canceled by the refused call
    assert [v["id"] for v in rt.list(containers=False)] == [job_id]


def test_a_path_argument_holding_a_nul_byte_is_a_one_line_usage_error(rt, source_repo, tmp_path):
    """``Runtime(jobs_dir="a\\0b")`` raised a bare ValueError ("embedded null byte") (red
    team, 12-06); so did a spec ``file`` with one."""
    for call in (
        lambda: logist.Runtime(jobs_dir="a\0b"),
        lambda: logist.Runtime(jobs_dir=tmp_path / "a\0b"),
        lambda: logist.Runtime(jobs_dir=b"/tmp/jobs"),
        lambda: rt.create(file="s\0.yaml", repo=str(source_repo), steps=["true"]),
    ):
        with pytest.raises(logist.UsageError, match="is not a path") as refused:
            call()
        assert refused.value.exit_code == 2 and "\n" not in str(refused.value)
    assert logist.Runtime(jobs_dir=str(tmp_path / "ok")).jobs_dir == tmp_path / "ok"


# --- the engine ----------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_run_returns_the_status_dict_and_streams_masked_output(rt, source_repo, monkeypatch):
    monkeypatch.setenv("API_TOKEN", "s3cr3t-value")
    chunks: list[tuple[int, bytes]] = []
    job_id = rt.create(
        repo=str(source_repo),
        image=STEP_IMAGE,
        steps=["echo one; echo $API_TOKEN", "echo two > two.txt"],
        secrets=["API_TOKEN"],
        network="none",
    )
    view = rt.run(job_id, on_output=lambda step, chunk: chunks.append((step, chunk)))
    assert view["state"] == "succeeded"
    assert [s["state"] for s in view["steps"]] == ["succeeded", "succeeded"]
    assert view["result"]["branch"] == f"logist/{job_id}"
    assert git(source_repo, "show", f"logist/{job_id}:two.txt").strip() == "two"
    said = b"".join(c for step, c in chunks if step == 1)
    assert said == b"one\n***\n"
    assert rt.logs(job_id, step=1) == b"one\n***\n"
    assert view == rt.status(job_id)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_failed_step_is_a_result_and_an_environment_problem_raises_exit_3(rt, source_repo):
    failing = rt.create(repo=str(source_repo), image=STEP_IMAGE, steps=["exit 7", "true"])
    view = rt.run(failing)
    assert view["state"] == "failed"
    assert [(s["state"], s["exit_code"]) for s in view["steps"]] == [
        ("failed", 7),
        ("pending", None),
    ]
    missing = rt.create(
        repo=str(source_repo), image="logist/absent:nope", steps=["true"], pull="never"
    )
    with pytest.raises(logist.EnvironmentProblem) as problem:
        rt.run(missing)
    assert problem.value.exit_code == 3
    assert isinstance(problem.value, logist.ImageMissing)
    assert rt.status(missing)["state"] == "pending"  # nothing ran: it can run later


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_step_runs_one_step_and_cancel_cleanup_and_sweep_return_reports(rt, source_repo):
    job_id = rt.create(
        repo=str(source_repo), image=STEP_IMAGE, steps=["echo a > a.txt", "true"], cleanup="never"
    )
    view = rt.step(job_id)
    assert view["state"] == "pending"
    assert [s["state"] for s in view["steps"]] == ["succeeded", "pending"]
    assert view["workspace"]["state"] == "ready"
    canceled = rt.cancel(job_id, grace=0)
    assert canceled["state"] == "canceled"
    report = rt.cleanup(job_id)
    assert [c["job"] for c in report["cleaned"]] == [job_id]
    assert rt.status(job_id)["workspace"]["state"] == "removed"
    swept = rt.sweep(older_than="0s")
    assert swept["failed"] == [] and swept["cleaned"] == []


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_two_runtimes_in_threads_interrupting_one_leaves_the_other_running(tmp_path):
    """Nothing is global: each runtime has its own root and its own interruption."""
    src = make_repo(tmp_path / "src")
    roots = [tmp_path / "jobs-a", tmp_path / "jobs-b"]
    a, b = (logist.Runtime(r, notify=lambda msg: None) for r in roots)
    step = (  # a run after the interruption finds `started` harvested, and is done at once
        "[ -e started ] && exit 0; touch started; i=0; "
        "while [ $i -lt 100 ]; do [ -e /workspace/go ] && exit 0; i=$((i+1)); sleep 0.1; done"
    )
    ids = [
        rt.create(repo=str(src), image=STEP_IMAGE, steps=[step], network="none") for rt in (a, b)
    ]
    views: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(rt, job_id):
        try:
            views[job_id] = rt.run(job_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip((a, b), ids, strict=True)]
    for t in threads:
        t.start()
    for root, job_id in zip(roots, ids, strict=True):
        wait_for(lambda r=root, j=job_id: (r / j / "workspace" / "started").exists(), 60, "starts")
    a.interrupt()
    threads[0].join(timeout=60)
    assert views[ids[0]]["state"] == "interrupted"
    (roots[1] / ids[1] / "workspace" / "go").touch()
    threads[1].join(timeout=60)
    assert not errors, errors
    assert views[ids[1]]["state"] == "succeeded"
    assert [v["id"] for v in a.list()] == [ids[0]] and [v["id"] for v in b.list()] == [ids[1]]
    assert a.run(ids[0])["state"] == "succeeded"  # resumes: a later run is not interrupted


@pytest.mark.docker
@pytest.mark.timeout(180)
@pytest.mark.parametrize("error", [ValueError, SystemExit, logist.LogistError])
def test_an_on_output_that_raises_interrupts_its_own_job_only(error, rt, source_repo):
    """The callback's exception ends its job `interrupted` (resumable) as a ``LogistError``
    caused by it; ``run_jobs`` still returns every other job's result (it raised the bare
    exception and lost them: red teams, 12-06; a ``BaseException`` such as ``SystemExit`` too;
    a ``LogistError`` of its own, which failed the job for good)."""
    from logist.streams import Callback

    spec = {"repo": str(source_repo), "image": STEP_IMAGE, "network": "none"}
    ids = [rt.create(steps=[f"echo {i} > out.txt; echo said"], **spec) for i in range(3)]

    def boom(step: int, chunk: bytes) -> None:
        raise error("boom")

    with pytest.raises(logist.LogistError) as raised:
        rt.run(ids[0], on_output=boom)
    assert isinstance(raised.value.__cause__, error) and "boom" in str(raised.value)
    assert rt.status(ids[0])["state"] == "interrupted"

    def listen(job_id: str, step: int):
        return Callback(boom if job_id == ids[0] else (lambda s, c: None), step)

    results = rt.run_jobs(ids, parallel=2, listen=listen)
    assert [r.job.id for r in results] == ids
    assert isinstance(results[0].error, logist.LogistError)
    assert [(r.error, r.job.state) for r in results[1:]] == [(None, "succeeded")] * 2
    assert rt.run(ids[0])["state"] == "succeeded"  # resumes, its work intact


@pytest.mark.docker
@pytest.mark.timeout(180)
@pytest.mark.parametrize("call", ["run", "step"])
def test_ctrl_c_stops_the_running_step_gracefully_harvests_and_raises_keyboard_interrupt(
    call, rt, source_repo
):
    """Python's own SIGINT handler (no ``rt.signals()``): the KeyboardInterrupt used to wait for
    the whole job to end under ``rt.run``, and killed the step with its container under
    ``rt.step`` (red teams, 12-06). Now the step gets its stop signal and grace (its trap
    runs), its work is harvested, then KeyboardInterrupt."""
    job_id = rt.create(
        repo=str(source_repo),
        image=STEP_IMAGE,
        steps=["trap 'echo bye > bye.txt; exit 0' TERM; touch started; sleep 60 & wait"],
        network="none",
    )
    started = rt.jobs_dir / job_id / "workspace" / "started"

    def press() -> None:
        wait_for(started.exists, 60, "the step to start")
        os.kill(os.getpid(), signal.SIGINT)

    # Python's own handler, whatever this process inherited (a shell's background job starts
    # with SIGINT ignored, and Python then installs none)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=press, daemon=True).start()
    begun = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            getattr(rt, call)(job_id)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - begun < 40  # not the step's 60 s
    assert rt.status(job_id)["state"] == "interrupted"
    assert rt.status(job_id)["steps"][0]["exit_code"] == 0  # stopped (its trap), not killed
    assert git(source_repo, "show", f"logist/{job_id}:bye.txt") == "bye\n"  # and harvested


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_the_example_of_docs_api_md_runs_as_written(tmp_path, capsys):
    text = (REPO_ROOT / "docs" / "api.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None, "docs/api.md has no python example"
    src = make_repo(tmp_path / "src", {"README.md": "teh typo\n"})
    code = example.group(1).replace("/srv/src", str(src)).replace("/srv/jobs", str(tmp_path / "j"))
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "example"})
    out = capsys.readouterr().out
    assert "succeeded" in out
    assert git(src, "show", "logist/fix-typo:README.md") == "the typo\n"


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_an_image_pull_that_never_finishes_is_given_up_at_its_deadline(
    jobs_root, source_repo, monkeypatch
):
    """A registry of the test's own on loopback that takes the connection and never answers:
    the pull ends at ``LOGIST_PULL_TIMEOUT`` with exit 3, nothing ran, the job can run later."""
    import socket
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        monkeypatch.setenv("LOGIST_PULL_TIMEOUT", "3")
        rt = logist.Runtime(jobs_root, notify=lambda msg: None)
        image = f"127.0.0.1:{server.getsockname()[1]}/logist-never:1"
        job_id = rt.create(repo=str(source_repo), image=image, steps=["true"], network="none")
        started = time.monotonic()
        with pytest.raises(logist.ImageMissing, match="did not finish within 3s") as missing:
            rt.run(job_id)
        assert missing.value.exit_code == 3
        assert time.monotonic() - started < 30
        assert rt.status(job_id)["state"] == "pending"
    finally:
        stop.set()
        acceptor.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def _job_of(rt, source_repo, *steps: str) -> str:
    return rt.create(repo=str(source_repo), image=STEP_IMAGE, network="none", steps=list(steps))


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_cancel_from_the_jobs_own_on_output_ends_it_canceled(rt, source_repo):
    """``rt.cancel`` from inside the job's own callback: the lock is the calling thread's, so
    the cancel took the job for ownerless, removed its workspace under the running step, and
    the run then saved it back as pending (red team, 12-06). Now it asks the run, which ends
    the job canceled."""
    job_id = _job_of(rt, source_repo, "echo go; sleep 3; echo a > a.txt", "echo b > b.txt")
    asked: list[str] = []

    def cancel_once(step: int, chunk: bytes) -> None:
        if not asked:
            asked.append(rt.cancel(job_id, grace=1, wait=5)["state"])

    view = rt.run(job_id, on_output=cancel_once)
    assert asked == ["running"]
    assert view["state"] == "canceled"
    assert [s["state"] for s in view["steps"]] == ["canceled", "canceled"]
    with pytest.raises(logist.LogistError):
        rt.run(job_id)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_run_jobs_takes_any_iterable_of_ids_and_refuses_a_bad_parallel(rt, source_repo):
    """A generator of ids was read by the check and ran nothing; a bare string was taken
    letter by letter; parallel "2", -1 or 1.5 raised TypeError or were taken (red team,
    12-06)."""
    with pytest.raises(logist.UsageError, match="job_ids"):
        rt.run_jobs("job-x")
    for bad in ("2", -1, 0, 1.5, True):
        with pytest.raises(logist.UsageError, match="parallel"):
            rt.run_jobs([], parallel=bad)
    job_id = rt.create(repo=str(source_repo), image=STEP_IMAGE, network="none", steps=["true"])
    [result] = rt.run_jobs(x for x in [job_id])
    assert result.error is None and result.job.state == "succeeded"


def test_a_jobs_root_removed_under_a_runtime_is_no_jobs_and_a_usage_error(rt, source_repo):
    """After ``rm -rf`` of the jobs root, list and create raised a bare FileNotFoundError
    (red team, 12-06)."""
    import shutil

    shutil.rmtree(rt.jobs_dir)
    assert rt.list() == []
    with pytest.raises(logist.UsageError, match="is gone"):
        rt.create(repo=str(source_repo), steps=["true"])


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_forced_cleanup_from_the_jobs_own_on_output_is_refused_and_loses_nothing(rt, source_repo):
    """``rt.cleanup(job, force=True)`` from the job's own callback took the job for its own
    (the lock is the calling thread's): it removed the workspace under the running step, the
    run then saved the job back without its harvest, and a rerun's result.bundle lost step 1
    (red team, 12-06). It is refused; the run goes on and lands both steps."""
    job_id = _job_of(rt, source_repo, "echo go; sleep 1; echo one > one.txt", "echo two > two.txt")
    refused: list[BaseException] = []

    def clean_once(step: int, chunk: bytes) -> None:
        if not refused:
            try:
                rt.cleanup(job_id, force=True)
            except logist.LogistError as exc:
                refused.append(exc)

    view = rt.run(job_id, on_output=clean_once)
    assert refused and isinstance(refused[0], logist.JobActive)
    assert view["state"] == "succeeded"
    assert git(source_repo, "show", f"logist/{job_id}:one.txt") == "one\n"
    assert git(source_repo, "show", f"logist/{job_id}:two.txt") == "two\n"
