"""Steps in containers: job step / job run, harvest into the job branch, cancel and signals."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

from tests.helpers import create_job as create
from tests.helpers import git, run_logist, wait_for
from tests.helpers import job_status as status
from tests.support_cli import popen_logist, run_failing_at_step_2
from tests.support_registry import Registry, image_with_files

pytestmark = pytest.mark.docker

BUSYBOX = "logist/busybox:latest"


def _signals_until_death(events) -> list[str]:
    """The signals of the ``kill`` events of a docker event stream, up to the first ``die``."""
    signals = []
    for event in events:
        if event.get("Action") == "die":
            return signals
        signals.append(event["Actor"]["Attributes"].get("signal"))
    return signals


def job_containers(docker_client, jobs_root: Path, job_id: str, running_only: bool = False):
    return docker_client.containers.list(
        all=not running_only,
        filters={"label": [f"logist.jobs-dir={jobs_root}", f"logist.job={job_id}"]},
    )


@contextlib.contextmanager
def running_step(jobs_root: Path, docker_client, job: str, step: int):
    """``job run JOB`` in the background, yielded once step ``step``'s container runs; the
    runner is killed on the way out if it is still alive."""
    runner = popen_logist(jobs_root, "job", "run", job)
    try:
        wait_for(
            lambda: any(
                c.labels.get("logist.step") == str(step)
                for c in job_containers(docker_client, jobs_root, job, running_only=True)
            )
        )
        yield runner
    finally:
        if runner.poll() is None:
            runner.kill()


def test_three_step_job_sees_env_passes_files_and_lands_its_branch(
    logist, source_repo, jobs_root, tmp_path
):
    head_before = git(source_repo, "rev-parse", "HEAD")
    status_before = git(source_repo, "status", "--porcelain")
    job = create(
        logist,
        source_repo,
        'echo "id=$LOGIST_JOB_ID step=$LOGIST_STEP foo=$FOO prompt=$LOGIST_PROMPT"',
        "echo from-step-2 > made.txt",
        'cat made.txt && test "$(pwd)" = /workspace',
        extra=("--env", "FOO=bar", "--prompt", "fix it"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert f"id={job} step=1 foo=bar prompt=fix it" in out.stdout
    st = status(logist, job)
    assert st["state"] == "succeeded"
    assert [s["state"] for s in st["steps"]] == ["succeeded"] * 3
    assert [s["exit_code"] for s in st["steps"]] == [0, 0, 0]
    log3 = Path(st["steps"][2]["log"])
    assert log3 == jobs_root / job / "logs" / "step-3.log"
    assert log3.read_text() == "from-step-2\n"
    assert logist("job", "logs", job, "--step", "1").stdout.startswith(f"id={job}")
    # the work is in the source's branch and in the bundle
    assert git(source_repo, "show", f"logist/{job}:made.txt") == "from-step-2\n"
    clone = tmp_path / "from-bundle"
    git(
        tmp_path,
        "clone",
        "-q",
        "-b",
        f"logist/{job}",
        str(jobs_root / job / "result.bundle"),
        str(clone),
    )
    assert (clone / "made.txt").read_text() == "from-step-2\n"
    assert st["result"] == {
        "bundle": str(jobs_root / job / "result.bundle"),
        "branch": f"logist/{job}",
    }
    # the source's HEAD and working tree are untouched; the workspace is gone
    assert git(source_repo, "rev-parse", "HEAD") == head_before
    assert git(source_repo, "status", "--porcelain") == status_before
    assert not (source_repo / "made.txt").exists()
    assert st["workspace"]["state"] == "removed"
    assert not (jobs_root / job / "workspace").exists()
    commits = git(source_repo, "log", "--format=%s", f"logist/{job}").splitlines()
    assert commits[0] == f"logist: {job} step 2"


def test_failing_step_exits_1_keeps_later_steps_pending_and_its_work(logist, source_repo):
    job, _ = run_failing_at_step_2(logist, source_repo, code=7)
    assert git(source_repo, "show", f"logist/{job}:two.txt") == "partial\n"
    assert "three.txt" not in git(source_repo, "ls-tree", "--name-only", f"logist/{job}")


def test_job_step_runs_one_step_at_a_time_then_finishes(logist, source_repo, jobs_root):
    job = create(logist, source_repo, "echo a > a.txt", "cat a.txt")
    first = logist("job", "step", job)
    assert first.returncode == 0, first.stderr
    st = status(logist, job)
    assert st["state"] == "pending" and st["workspace"]["state"] == "ready"
    assert [s["state"] for s in st["steps"]] == ["succeeded", "pending"]
    assert (jobs_root / job / "workspace" / "a.txt").exists()
    second = logist("job", "step", job)
    assert second.returncode == 0 and "a" in second.stdout
    st = status(logist, job)
    assert st["state"] == "succeeded" and st["workspace"]["state"] == "removed"
    again = logist("job", "step", job)
    assert again.returncode == 2 and "succeeded" in again.stderr


def test_step_timeout_stops_the_container_and_fails_the_job(
    logist, source_repo, jobs_root, docker_client
):
    job = create(logist, source_repo, "sleep 600", extra=("--timeout", "2"))
    out = logist("job", "run", job)  # the step would sleep 600 s: it was stopped
    assert out.returncode == 1
    st = status(logist, job)
    assert st["state"] == "failed" and st["steps"][0]["state"] == "timed_out"
    assert st["steps"][0]["exit_code"] in (137, 143)  # ended by a signal
    assert not job_containers(docker_client, jobs_root, job)


def test_missing_image_is_exit_3_naming_the_image(logist, source_repo):
    job = create(logist, source_repo, "true", extra=("--image", "logist/no-such-image:1"))
    out = logist("job", "run", job)
    assert out.returncode == 3
    assert "logist/no-such-image:1" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_running_container_has_labels_init_user_mount_and_limits(
    logist, source_repo, jobs_root, docker_client
):
    job = create(
        logist,
        source_repo,
        "sleep 30",
        extra=(
            "--user",
            "1234:2345",
            "--memory",
            "256m",
            "--cpus",
            "0.5",
            "--pids",
            "64",
            "--network",
            "none",
        ),
    )
    runner = popen_logist(jobs_root, "job", "run", job)
    try:
        c = wait_for(
            lambda: [
                c
                for c in job_containers(docker_client, jobs_root, job, running_only=True)
                if c.labels.get("logist.step") == "1"
            ]
        )[0]
        c.reload()
        labels = c.labels
        assert labels["logist.managed"] == "true"
        assert labels["logist.job"] == job and labels["logist.step"] == "1"
        assert labels["logist.jobs-dir"] == str(jobs_root)
        host, pid, start = labels["logist.owner"].rsplit(":", 2)
        assert int(pid) == runner.pid and start.isdigit() and host
        cfg, hc = c.attrs["Config"], c.attrs["HostConfig"]
        assert hc["Init"] is True
        assert cfg["User"] == "1234:2345"
        assert cfg["Cmd"] == ["/bin/sh", "-c", "sleep 30"]
        assert cfg["WorkingDir"] == "/workspace"
        mount = next(m for m in c.attrs["Mounts"] if m["Destination"] == "/workspace")
        assert mount["Source"] == str(jobs_root / job / "workspace") and mount["RW"] is True
        assert hc["Memory"] == 256 * 1024 * 1024 and hc["NanoCpus"] == 500_000_000
        assert hc["PidsLimit"] == 64 and hc["NetworkMode"] == "none"
        # the workspace was made writable for that uid (logist runs as root here)
        assert (jobs_root / job / "workspace").stat().st_uid == 1234
        assert c.id in status(logist, job)["containers"]
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
    assert runner.returncode == 130


def test_background_process_of_a_step_does_not_linger(
    logist, source_repo, jobs_root, docker_client
):
    job = create(logist, source_repo, "(sleep 1234 &) ; echo started")
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    assert not job_containers(docker_client, jobs_root, job)
    ps = subprocess.run(["pgrep", "-f", "sleep 1234"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_step_printing_200_mb_keeps_logist_memory_flat(jobs_root, source_repo, logist):
    job = create(
        logist, source_repo, "head -c 150000000 /dev/zero | base64 -w 4096"
    )  # ~200 MB of text
    proc = popen_logist(jobs_root, "job", "run", job, stdout=subprocess.DEVNULL)
    peak, samples = 0, 0
    while proc.poll() is None:
        try:
            status_text = Path(f"/proc/{proc.pid}/status").read_text()
        except FileNotFoundError:  # it ended between poll() and the read
            break
        for line in status_text.splitlines():
            if line.startswith("VmRSS:"):
                peak, samples = max(peak, int(line.split()[1]) * 1024), samples + 1
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()
    assert samples >= 10 and peak > 10 * 1024 * 1024, f"only {samples} samples of its memory"
    log = jobs_root / job / "logs" / "step-1.log"
    data = log.read_bytes()  # capped at log_limit (64 MiB): head and tail, the drop said
    dropped = 200_000_000 + 200_000_000 // 4096 - (64 << 20)
    assert len(data) - (64 << 20) == len(f"\n[logist: {dropped} bytes of output dropped]\n")
    assert peak < 100 * 1024 * 1024, f"peak RSS {peak / 2**20:.0f} MiB"


def test_cancel_from_another_process_stops_a_step_that_ignores_sigterm(
    logist, source_repo, jobs_root, docker_client, monkeypatch
):
    monkeypatch.setenv("LOGIST_TEST_SUBPROCESS", "1")  # the canceller: a process of its own
    job = create(
        logist,
        source_repo,
        "echo keep > kept.txt",
        "trap '' TERM; echo waiting; while true; do sleep 1; done",
        "echo never",
    )
    with running_step(jobs_root, docker_client, job, 2) as runner:
        out = logist("job", "cancel", job)  # the step never ends by itself (timings: benchmarks)
        assert out.returncode == 0, out.stderr
        _, err = runner.communicate(timeout=30)
    assert runner.returncode == 1, err
    st = status(logist, job)
    assert st["state"] == "canceled"
    assert [s["state"] for s in st["steps"]] == ["succeeded", "canceled", "canceled"]
    assert not job_containers(docker_client, jobs_root, job)
    assert git(source_repo, "show", f"logist/{job}:kept.txt") == "keep\n"


def test_cancel_with_a_short_grace_kills_a_sigterm_ignoring_step_at_once(
    logist, source_repo, jobs_root, docker_client
):
    job = create(logist, source_repo, "trap '' TERM; while true; do sleep 1; done")
    events = docker_client.events(
        decode=True,
        filters={"event": ["kill", "die"], "label": f"logist.jobs-dir={jobs_root}"},
    )
    try:
        with running_step(jobs_root, docker_client, job, 1) as runner:
            out = logist("job", "cancel", job, "--grace", "0")
            assert out.returncode == 0, out.stderr
            runner.wait(timeout=30)
        signals = _signals_until_death(events)
    finally:
        events.close()
    assert "9" in signals  # SIGKILLed: it ignores SIGTERM (how fast: benchmarks, cancel)
    assert status(logist, job)["state"] == "canceled"
    assert not job_containers(docker_client, jobs_root, job)


def test_cancel_of_a_pending_job_marks_it_canceled(logist, source_repo):
    job = create(logist, source_repo, "true")
    out = logist("job", "cancel", job)
    assert out.returncode == 0, out.stderr
    assert status(logist, job)["state"] == "canceled"
    assert logist("job", "run", job).returncode == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_job_run_stops_containers_marks_interrupted_exit_130(
    logist, source_repo, jobs_root, docker_client, sig
):
    job = create(logist, source_repo, "echo one > one.txt", "trap '' TERM; sleep 300")
    with running_step(jobs_root, docker_client, job, 2) as runner:
        runner.send_signal(sig)
        runner.wait(timeout=30)  # the step ignores SIGTERM and would sleep 300 s
    assert runner.returncode == 130, runner.stderr.read()
    assert not job_containers(docker_client, jobs_root, job)
    st = status(logist, job)
    assert st["state"] == "interrupted" and st["active"] is False
    assert [s["state"] for s in st["steps"]] == ["succeeded", "pending"]
    assert git(source_repo, "show", f"logist/{job}:one.txt") == "one\n"
    assert not (jobs_root / job / "workspace").exists()  # cleanup ran (policy always)


@pytest.mark.timeout(180)
def test_eight_jobs_finishing_into_one_source_all_land_their_branch(logist, source_repo):
    jobs = [create(logist, source_repo, f"echo {n} > n.txt; echo done-{n}") for n in range(8)]
    out = logist("job", "run", *jobs, "--parallel", "8", timeout=170)
    assert out.returncode == 0, out.stderr
    for n, job in enumerate(jobs):
        assert git(source_repo, "show", f"logist/{job}:n.txt") == f"{n}\n"
        assert f"[{job}] done-{n}\n" in out.stdout  # output of parallel jobs is prefixed


def test_step_as_non_root_user_leaves_no_root_owned_files(logist, source_repo, jobs_root, tmp_path):
    job = create(
        logist,
        source_repo,
        "echo x > new.txt && mkdir -p d && id -u > d/uid",
        extra=("--user", "4321:4321", "--cleanup", "never"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stderr
    ws = jobs_root / job / "workspace"
    assert (ws / "d" / "uid").read_text().strip() == "4321"
    assert (ws / "new.txt").stat().st_uid == 4321
    assert git(source_repo, "show", f"logist/{job}:d/uid").strip() == "4321"
    assert logist("job", "cleanup", job).returncode == 0


@pytest.mark.timeout(120)
def test_step_output_reaches_the_terminal_while_the_step_still_runs(jobs_root, source_repo, logist):
    job = create(
        logist,
        source_repo,
        "echo first; while [ ! -e .release ]; do sleep 0.1; done; echo second",
    )
    proc = popen_logist(jobs_root, "job", "run", job, stderr=None)
    try:
        assert proc.stdout.readline() == "first\n"  # the step is blocked until released
        (jobs_root / job / "workspace" / ".release").touch()
        assert proc.stdout.readline() == "second\n"
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_oom_killed_step_is_recorded_failed_with_the_flag(logist, source_repo):
    job = create(
        logist,
        source_repo,
        'python3 -c "chunks = [bytearray(8 << 20) for _ in range(64)]"',
        extra=("--memory", "48m"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 1
    step = status(logist, job)["steps"][0]
    assert step["state"] == "failed"
    assert step["oom_killed"] is True and step["exit_code"] == 137
    assert "out of memory" in step["error"]


def test_pull_never_with_a_missing_image_is_exit_3_and_nothing_runs(logist, source_repo):
    job = create(
        logist, source_repo, "true", extra=("--image", "logist/absent:never", "--pull", "never")
    )
    out = logist("job", "run", job)
    assert out.returncode == 3 and "logist/absent:never" in out.stderr
    st = status(logist, job)
    assert st["steps"][0]["state"] == "pending" and st["steps"][0]["exit_code"] is None


PULLED = b"from the registry\n"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("pull", "local", "served", "code", "asked", "runs"),
    [
        # always: the registry is asked even though the image is here, and its image runs
        ("always", True, True, 0, True, "pulled"),
        # always, the registry lacks it: the pull was tried, failed, and the local image runs
        ("always", True, False, 0, True, "local"),
        # missing: an image that is here is used as it is; the registry is never asked
        ("missing", True, True, 0, False, "local"),
        ("missing", False, True, 0, True, "pulled"),
        # not here and not pullable: exit 3, nothing runs
        ("always", False, False, 3, True, None),
    ],
)
def test_the_pull_policy_asks_the_registry_and_runs_what_it_pulled(
    logist, source_repo, docker_client, pull, local, served, code, asked, runs
):
    """The image's name is in a registry of the test's own: a local tag of it (when ``local``)
    is logist/busybox:latest; the registry serves (when ``served``) that image plus a layer
    with /pulled.txt, so the step's output says which of the two ran."""
    with Registry() as registry:
        name, tag = "logist-test/pull", f"t{time.time_ns()}"
        image = f"{registry.host}/{name}:{tag}"
        if served:
            registry.serve(
                name, tag, *image_with_files(docker_client, BUSYBOX, {"pulled.txt": PULLED})
            )
        if local:
            docker_client.images.get(BUSYBOX).tag(image)
        try:
            job = create(
                logist,
                source_repo,
                "cat /pulled.txt 2>/dev/null || echo local image",
                extra=("--image", image, "--pull", pull),
            )
            out = logist("job", "run", job)
            assert out.returncode == code, out.stderr
            assert bool(registry.manifest_requests(name, tag)) is asked, registry.requests
            step = status(logist, job)["steps"][0]
            if runs is None:
                assert image in out.stderr and step["exit_code"] is None
            else:
                assert step["state"] == "succeeded"
                expected = PULLED.decode() if runs == "pulled" else "local image\n"
                assert Path(step["log"]).read_text() == expected
                local_id = docker_client.images.get(BUSYBOX).id
                assert (docker_client.images.get(image).id == local_id) is (runs == "local")
        finally:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(image, force=True)


def test_step_as_another_user_can_commit_after_logist_harvested(logist, source_repo):
    job = create(
        logist,
        source_repo,
        "echo a > a.txt",
        "echo b > b.txt && git add b.txt && "
        "git -c user.name=s -c user.email=s@s commit -qm 'made by the step'",
        extra=("--user", "1234:1234"),
    )
    out = logist("job", "run", job)
    assert out.returncode == 0, out.stdout + out.stderr
    subjects = git(source_repo, "log", "--format=%s", f"logist/{job}").splitlines()
    assert subjects[:2] == ["made by the step", f"logist: {job} step 1"]


def test_a_step_silent_longer_than_the_engine_request_timeout_is_not_an_engine_error(
    jobs_root, source_repo, logist
):
    # 4 s: Podman's first /version runs conmon and the OCI runtime; 2 s was missed under load
    job = create(logist, source_repo, "sleep 7; echo woke")
    out = run_logist(jobs_root, "job", "run", job, env={"LOGIST_DOCKER_TIMEOUT": "4"})
    assert out.returncode == 0, out.stderr
    assert "woke" in out.stdout


@pytest.mark.timeout(180)
def test_the_next_steps_container_is_made_during_a_harvest_and_removed_when_the_job_stops(
    docker_client, jobs_root, source_repo, logist, monkeypatch
):
    """While step 1's harvest runs, step 2's container already exists (created, not started);
    a cancel that lands during that harvest stops the job before step 2, and the container
    made for it goes too: nothing of the job is left."""
    from logist import Runtime, runner
    from logist.store import request_cancel
    from tests.helpers import job_status

    job = create(logist, source_repo, "echo one > one.txt", "echo two > two.txt")
    labels = [f"logist.job={job}", f"logist.jobs-dir={jobs_root}", "logist.step=2"]
    seen: list[list[str]] = []
    real = runner.harvest

    def harvest(run, sandbox, what, notify, last=False):
        if what == "step 1":
            made = wait_for(
                lambda: docker_client.containers.list(all=True, filters={"label": labels}),
                60,
                "step 2's container made during the harvest",
            )
            seen.append([c.status for c in made])
            request_cancel(run.dir.path)
        return real(run, sandbox, what, notify, last=last)

    monkeypatch.setattr(runner, "harvest", harvest)
    [result] = Runtime(jobs_root).run_jobs([job])
    assert seen == [["created"]]
    view = job_status(logist, job)
    assert view["state"] == "canceled", result.error
    assert [s["state"] for s in view["steps"]] == ["succeeded", "canceled"]
    assert view["steps"][1]["started_at"] is None, "step 2 ran"
    everything = [f"logist.job={job}", f"logist.jobs-dir={jobs_root}"]
    assert docker_client.containers.list(all=True, filters={"label": everything}) == []


# --- the container made ahead, in a long job and under a prune (red team, 12-05) ---------------

SLOW = "for i in 1 2 3; do head -c 25000000 /dev/urandom > big$i.bin; done"  # harvest: seconds


@pytest.mark.timeout(300)
def test_a_long_job_keeps_no_engine_connection_per_step(jobs_root, source_repo, logist):
    """A client made by a thread that ended (one a step: the next step's container is made
    in a thread) is not kept with its connection: 40 steps under a 100-descriptor limit."""
    job = create(logist, source_repo, *["true"] * 40)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out = logist(
        "job",
        "run",
        job,
        timeout=280,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard)),
    )
    assert out.returncode == 0, out.stderr[-1500:]
    assert status(logist, job)["state"] == "succeeded"


def test_a_container_prune_during_the_harvest_does_not_fail_the_next_step(
    docker_client, jobs_root, source_repo, logist
):
    """Step 2's container, created ahead, sits in ``created`` for the whole of step 1's
    harvest: a `docker container prune` then (a cron's) removes it and step 2 fails with
    "the step's container disappeared" (nothing ran; the job is failed for good)."""
    job = create(logist, source_repo, SLOW, "echo two > two.txt")
    proc = popen_logist(jobs_root, "job", "run", job)
    labels = [f"logist.jobs-dir={jobs_root}", f"logist.job={job}", "logist.step=2"]
    wait_for(
        lambda: docker_client.containers.list(all=True, sparse=True, filters={"label": labels}),
        120,
        "step 2's container made ahead",
    )
    docker_client.containers.prune(filters={"label": f"logist.jobs-dir={jobs_root}"})
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert status(logist, job)["state"] == "succeeded"
