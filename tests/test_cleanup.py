"""Cleanup (issue 6): ``remove_workspace`` through ``logist job cleanup``, the automatic cleanup
after every job per its policy, and the stale sweep for cron. Real git repositories, real
processes, the real engine; nothing is mocked.

Long-running steps use distinctive ``sleep`` durations (see ``SLEEPS``) so that the autouse
guard below can prove none of them outlives its test. Steps and containers use
``--network none``: nothing here needs a network, and it keeps the tests independent of the
engine's bridge.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.helpers import create_job, git, make_repo, run_logist, wait_for
from tests.helpers import job_status as status
from tests.support_cli import run_failing_at_step_2
from tests.support_wait import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
STEP_IMAGE = "logist/step:latest"
BUSYBOX = "logist/busybox:latest"
SLEEPS = ("307", "67", "37", "4.7")  # the sleep durations only these tests use


# --- guards --------------------------------------------------------------------------------


def _boot_ticks() -> float:
    """Now, in the clock ticks since boot that /proc/<pid>/stat counts process starts in."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")


def _this_engines(cgroup: str) -> bool:
    """Whether a process in ``cgroup`` (its /proc/PID/cgroup) is a container of the engine
    these tests run against: the Podman lanes run this module at the same time as the Docker
    one, with the same sleeps (rootless Podman on cgroup v1 makes no cgroup of its own)."""
    host = os.environ.get("DOCKER_HOST", "")
    if "/run/podman/" in host:
        return "libpod" in cgroup
    if "/run/user/" in host:
        return "libpod" not in cgroup and "/docker/" not in cgroup
    return "/docker/" in cgroup or "docker-" in cgroup


def _our_sleeps(since: float) -> list[tuple[int, str]]:
    """Processes of this engine's containers started after ``since`` (boot ticks) running one
    of this module's ``sleep`` commands (their processes are host processes too)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            started = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[19])
            cgroup = Path(entry.path, "cgroup").read_text()
        except (OSError, IndexError, ValueError):
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if (
            started >= since
            and len(args) >= 2
            and os.path.basename(args[0]) == "sleep"
            and args[1] in SLEEPS
            and _this_engines(cgroup)
        ):
            found.append((int(entry.name), " ".join(args)))
    return found


@pytest.fixture(autouse=True)
def _no_sleep_left_behind():
    """After every test: no ``sleep`` it started is left on the host."""
    since = _boot_ticks() - 1
    yield
    wait_until(lambda: not _our_sleeps(since), timeout=10, interval=0.2)
    left = _our_sleeps(since)
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"sleep processes left on the host: {left}"


# --- helpers -------------------------------------------------------------------------------


def create(logist, repo: Path, *steps: str, job_id: str | None = None, **opts: str) -> str:
    """``logist job create`` with the step image; ``opts`` are long options (``cleanup=...``)."""
    args = [
        "job",
        "create",
        *([job_id] if job_id else []),
        "--repo",
        str(repo),
        "--image",
        STEP_IMAGE,
        "--network",
        "none",
    ]
    for step in steps:
        args += ["--step", step]
    for key, value in opts.items():
        args += [f"--{key.replace('_', '-')}", value]
    out = logist(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def cleanup(logist, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    """``logist job cleanup ARGS --json``; the parsed report (None if stdout is not JSON)."""
    out = logist("job", "cleanup", *args, "--json")
    try:
        report = json.loads(out.stdout)
    except ValueError:
        report = None
    return out, report


def branch_files(repo: Path, branch: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", branch).split())


def bundle_files(bundle: Path, branch: str, tmp: Path) -> set[str]:
    """Files of ``branch`` as stored in the bundle (fetched into a fresh repository)."""
    probe = tmp / f"bundle-probe-{time.monotonic_ns()}"
    subprocess.run(["git", "init", "-q", str(probe)], check=True)
    git(probe, "fetch", "-q", str(bundle), f"+refs/heads/{branch}:refs/heads/probe")
    return branch_files(probe, "probe")


def workspace(jobs_root: Path, job_id: str) -> Path:
    return jobs_root / job_id / "workspace"


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``path`` (not following symlinks) with its size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return out


def new_job_with_workspace(jobs_root: Path, repo: Path, job_id: str, **raw) -> Path:
    """A job created and its workspace set up through the core API, without running a step."""
    from logist.jobs import create_job
    from logist.store import Store
    from logist.workspace import setup_workspace

    store = Store(jobs_root)
    create_job(
        store,
        {
            "id": job_id,
            "repo": str(repo),
            "image": STEP_IMAGE,
            "network": "none",
            "steps": ["true"],
            **raw,
        },
    )
    return setup_workspace(store, job_id)


def run_kept_job(logist, repo: Path, *steps: str, job_id: str | None = None) -> str:
    """Create and run a job with ``--cleanup never``: its workspace stays for the test."""
    job_id = create(logist, repo, *steps, job_id=job_id, cleanup="never")
    out = logist("job", "run", job_id)
    assert out.returncode == 0, out.stderr
    return job_id


HOLD_LOCK = """
import sys, time
from pathlib import Path
from logist.store import job_lock
with job_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def lock_held_elsewhere(job_dir: Path) -> Iterator[subprocess.Popen]:
    """Another process holds the job's lock (so the job is active) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(job_dir)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def running_step_container(docker_client, jobs_root: Path, job_id: str, step: int):
    filters = {
        "label": [f"logist.jobs-dir={jobs_root}", f"logist.job={job_id}", f"logist.step={step}"],
        "status": "running",
    }
    found = docker_client.containers.list(sparse=True, filters=filters)
    return found[0] if found else None


def start_run(jobs_root: Path, job_id: str) -> subprocess.Popen:
    """``logist job run JOB_ID`` in the background (its own process group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def while_running(runner: subprocess.Popen, predicate, timeout: float, what: str):
    """``wait_for(predicate)`` while ``runner`` runs; a run that ends first, or a wait that
    times out, fails the test with what the run said."""

    def check():
        if runner.poll() is not None:
            raise AssertionError(f"the run ended (exit {runner.returncode}) before {what}")
        return predicate()

    try:
        return wait_for(check, timeout, what)
    except AssertionError as exc:
        stop_process(runner)
        raise AssertionError(f"{exc}; the run said: {runner.stderr.read()[-2000:]}") from None


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def remove_container(container) -> None:
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)


def container_exists(docker_client, container_id: str) -> bool:
    import docker

    try:
        docker_client.containers.get(container_id)
    except docker.errors.NotFound:
        return False
    return True


# --- remove_workspace through `job cleanup JOB_ID` -----------------------------------------


@pytest.mark.docker
def test_cleanup_removes_a_populated_workspace_and_reports_bytes_and_seconds(
    logist, jobs_root, source_repo
):
    job_id = run_kept_job(
        logist, source_repo, "mkdir -p a/b/c && seq 1 200000 > a/b/c/big.txt && touch a/x a/b/y"
    )
    ws = workspace(jobs_root, job_id)
    assert (ws / "a/b/c/big.txt").is_file()

    out, report = cleanup(logist, job_id)

    assert out.returncode == 0, out.stderr
    assert report["failed"] == [] and report["skipped"] == []
    [cleaned] = report["cleaned"]
    assert cleaned["job"] == job_id and cleaned["workspace_removed"] is True
    assert cleaned["bytes_freed"] > 1_000_000  # big.txt alone is ~1.3 MB
    assert isinstance(cleaned["seconds"], float) and cleaned["seconds"] >= 0
    assert cleaned["containers_removed"] == 0
    assert not os.path.lexists(ws)
    assert (jobs_root / job_id / "job.json").is_file()  # only the workspace goes
    view = status(logist, job_id)
    assert view["workspace"]["state"] == "removed" and view["left_behind"] == []
    assert "a/b/c/big.txt" in branch_files(source_repo, f"logist/{job_id}")


@pytest.mark.docker
def test_cleanup_removes_an_empty_workspace_directory(logist, jobs_root, source_repo):
    ws = new_job_with_workspace(jobs_root, source_repo, "empty")
    shutil.rmtree(ws)
    ws.mkdir()  # an empty directory where the workspace is (no .git at all)

    out, report = cleanup(logist, "empty")

    assert out.returncode == 0, out.stderr
    assert [c["job"] for c in report["cleaned"]] == ["empty"]
    assert report["cleaned"][0]["workspace_removed"] is True
    assert not os.path.lexists(ws)


@pytest.mark.docker
def test_cleanup_removes_a_300_level_deep_tree(logist, jobs_root, source_repo):
    ws = new_job_with_workspace(jobs_root, source_repo, "deep")
    deep = ws.joinpath(*(["d"] * 300))
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("deep\n")

    out, report = cleanup(logist, "deep")

    assert out.returncode == 0, out.stderr
    assert report["cleaned"][0]["workspace_removed"] is True
    assert not os.path.lexists(ws)
    files = branch_files(source_repo, "logist/deep")
    assert "/".join(["d"] * 300) + "/bottom.txt" in files  # harvested before the removal


@pytest.mark.docker
def test_cleanup_of_a_missing_workspace_succeeds_with_nothing_to_clean(
    logist, jobs_root, source_repo
):
    job_id = create(logist, source_repo, "true")  # never run: no workspace
    assert not os.path.lexists(workspace(jobs_root, job_id))

    plain = logist("job", "cleanup", job_id)
    out, report = cleanup(logist, job_id)

    assert plain.returncode == 0, plain.stderr
    assert "nothing to clean" in plain.stdout
    assert out.returncode == 0, out.stderr
    assert report == {"cleaned": [], "skipped": [], "failed": [], "orphans_removed": 0}
    assert status(logist, job_id)["state"] == "pending"


@pytest.mark.docker
def test_cleanup_removes_a_permission_denied_directory_it_owns(logist, jobs_root, source_repo):
    ws = new_job_with_workspace(jobs_root, source_repo, "locked")
    (ws / "locked/inner").mkdir(parents=True)
    (ws / "locked/inner/f.txt").write_text("x\n")
    (ws / "ro-file").write_text("r\n")
    os.chmod(ws / "ro-file", 0o000)
    os.chmod(ws / "locked", 0o000)
    try:
        out, report = cleanup(logist, "locked")
    finally:
        if (ws / "locked").exists():
            os.chmod(ws / "locked", 0o700)

    assert out.returncode == 0, out.stderr
    assert report["cleaned"][0]["workspace_removed"] is True
    assert not os.path.lexists(ws)


def _chattr_works(directory: Path) -> bool:
    probe = directory / f".chattr-probe-{os.getpid()}"
    probe.write_text("")
    try:
        return subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink()


@pytest.fixture
def immutable_capable(jobs_root, source_repo, docker_client) -> Iterator[dict]:
    """A jobs root (and source) on a filesystem where ``chattr +i`` works: tmp_path's, else
    one under /var/tmp; with a ``logist`` runner for it."""
    if _chattr_works(jobs_root):
        yield {
            "root": jobs_root,
            "source": source_repo,
            "logist": lambda *a: run_logist(jobs_root, *a),
        }
        return
    base = Path(tempfile.mkdtemp(prefix="logist-chattr-", dir="/var/tmp"))
    try:
        if not _chattr_works(base):
            pytest.fail("chattr +i works neither on tmp_path's filesystem nor under /var/tmp")
        root = base / "jobs"
        root.mkdir()
        yield {
            "root": root,
            "source": make_repo(base / "src"),
            "logist": lambda *a: run_logist(root, *a),
        }
    finally:
        subprocess.run(["chattr", "-R", "-i", str(base)], capture_output=True)
        left = docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"logist.jobs-dir={base / 'jobs'}"}
        )
        for c in left:
            c.remove(force=True)
        shutil.rmtree(base)


@pytest.mark.docker
def test_cleanup_names_an_immutable_file_exits_4_and_succeeds_once_it_is_released(
    immutable_capable,
):
    logist, source_repo = immutable_capable["logist"], immutable_capable["source"]
    ws = new_job_with_workspace(immutable_capable["root"], source_repo, "immutable")
    stuck = ws / "sub" / "pinned.txt"
    stuck.parent.mkdir()
    stuck.write_text("cannot delete me\n")
    (ws / "other.txt").write_text("goes\n")
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        out, report = cleanup(logist, "immutable")
        assert out.returncode == 4, out.stdout + out.stderr
        [failed] = report["failed"]
        assert failed["job"] == "immutable" and str(stuck) in failed["error"]
        assert report["cleaned"] == []
        plain = logist("job", "cleanup", "immutable")
        assert plain.returncode == 4 and str(stuck) in plain.stderr
        assert stuck.is_file() and not (ws / "other.txt").exists()
        view = status(logist, "immutable")
        assert any(str(stuck) in item for item in view["left_behind"])
        # what could go went, and the work was harvested first
        assert {"sub/pinned.txt", "other.txt"} <= branch_files(source_repo, "logist/immutable")

        # the recorded leftover makes the next sweep retry at once, whatever --older-than says
        sweep_out, sweep = cleanup(logist, "--stale")
        assert sweep_out.returncode == 4
        assert [f["job"] for f in sweep["failed"]] == ["immutable"]
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)

    sweep_out, sweep = cleanup(logist, "--stale")
    assert sweep_out.returncode == 0, sweep_out.stdout + sweep_out.stderr
    assert [c["job"] for c in sweep["cleaned"]] == ["immutable"]
    assert not os.path.lexists(ws)
    assert status(logist, "immutable")["left_behind"] == []
    out, report = cleanup(logist, "immutable")
    assert out.returncode == 0 and report["failed"] == []


@pytest.mark.docker
def test_cleanup_never_follows_a_symlink_inside_the_workspace(
    logist, jobs_root, source_repo, tmp_path
):
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me\n")
    (outside / "deeper/also.txt").write_text("keep me too\n")
    os.chmod(outside / "deeper", 0o500)  # a mode the deletion would "fix" if it went there
    before = snapshot(outside)
    ws = new_job_with_workspace(jobs_root, source_repo, "links")
    (ws / "sub").mkdir()
    os.symlink(outside, ws / "dir-link")
    os.symlink(outside, ws / "sub" / "nested-link")
    os.symlink(outside / "precious.txt", ws / "file-link")
    os.symlink("../../../../outside", ws / "relative-link")

    out, report = cleanup(logist, "links")

    assert out.returncode == 0, out.stderr
    assert report["cleaned"][0]["workspace_removed"] is True
    assert not os.path.lexists(ws)
    assert snapshot(outside) == before
    assert (outside / "precious.txt").read_text() == "keep me\n"
    assert os.stat(outside / "deeper").st_mode & 0o777 == 0o500


@pytest.mark.docker
def test_cleanup_of_a_workspace_that_is_a_symlink_removes_only_the_link(
    logist, jobs_root, source_repo, tmp_path
):
    outside = tmp_path / "elsewhere"
    (outside / "sub").mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me\n")
    (outside / "sub/more.txt").write_text("and me\n")
    before = snapshot(outside)
    ws = new_job_with_workspace(jobs_root, source_repo, "linked")
    shutil.rmtree(ws)
    os.symlink(outside, ws)

    out, report = cleanup(logist, "linked")

    assert out.returncode == 0, out.stderr
    assert report["failed"] == []
    assert not os.path.lexists(ws)
    assert outside.is_dir() and snapshot(outside) == before


# --- harvest before removal ------------------------------------------------------------------


@pytest.mark.docker
def test_cleanup_harvests_unharvested_work_into_the_branch_and_the_bundle_first(
    logist, jobs_root, source_repo, tmp_path
):
    job_id = run_kept_job(logist, source_repo, "echo one > one.txt")
    ws = workspace(jobs_root, job_id)
    (ws / "late.txt").write_text("written after the last step\n")
    (ws / "README.md").write_text("changed after the last step\n")
    branch = f"logist/{job_id}"
    assert "late.txt" not in branch_files(source_repo, branch)

    out, report = cleanup(logist, job_id)

    assert out.returncode == 0, out.stderr
    assert report["cleaned"][0]["workspace_removed"] is True
    assert not os.path.lexists(ws)
    assert {"one.txt", "late.txt"} <= branch_files(source_repo, branch)
    assert git(source_repo, "show", f"{branch}:README.md") == "changed after the last step\n"
    bundle = jobs_root / job_id / "result.bundle"
    assert {"one.txt", "late.txt"} <= bundle_files(bundle, branch, tmp_path)
    assert (
        git(source_repo, "rev-parse", "HEAD").strip()
        == git(source_repo, "rev-parse", "main").strip()
    )
    assert git(source_repo, "status", "--porcelain") == ""


@pytest.mark.docker
def test_a_container_the_engine_makes_mid_cleanup_for_a_killed_runner_is_removed_too(
    logist, jobs_root, source_repo, docker_client, monkeypatch
):
    """A runner SIGKILLed while its create request is at the engine: the engine still makes the
    container, after the cleanup's first pass over the job's containers (seen once in the
    twenty-kills test: "left behind: container ..."). The cleanup's last look removes it."""
    from logist import cleanup as cleanup_module

    job_id = run_kept_job(logist, source_repo, "true")
    harvest = cleanup_module.harvest_leftover
    late = []

    def harvest_then_the_engine_makes_a_container(run, sandbox, *args, **kwargs):
        done = harvest(run, sandbox, *args, **kwargs)
        labels = {"logist.managed": "true", "logist.jobs-dir": str(jobs_root), "logist.job": job_id}
        late.append(
            docker_client.containers.run(BUSYBOX, ["sleep", "300"], labels=labels, detach=True)
        )
        return done

    monkeypatch.setattr(
        cleanup_module, "harvest_leftover", harvest_then_the_engine_makes_a_container
    )
    out, report = cleanup(logist, job_id)

    assert late, "the cleanup harvested nothing: the late container was never made"
    assert out.returncode == 0, out.stdout + out.stderr
    assert report["cleaned"][0]["workspace_removed"] is True
    assert not container_exists(docker_client, late[0].id)


@pytest.mark.docker
def test_a_job_failing_at_step_2_of_3_is_cleaned_up_with_its_partial_work_in_the_branch(
    logist, jobs_root, source_repo, tmp_path
):
    job_id, view = run_failing_at_step_2(logist, source_repo, code=3)

    assert view["workspace"]["state"] == "removed"
    assert not os.path.lexists(workspace(jobs_root, job_id))
    files = branch_files(source_repo, f"logist/{job_id}")
    assert {"one.txt", "two.txt"} <= files and "three.txt" not in files
    bundle = jobs_root / job_id / "result.bundle"
    assert {"one.txt", "two.txt"} <= bundle_files(bundle, f"logist/{job_id}", tmp_path)


# --- containers --------------------------------------------------------------------------------


@pytest.mark.docker
def test_cleanup_stops_and_removes_a_foreign_container_that_mounts_the_workspace(
    logist, jobs_root, source_repo, docker_client
):
    job_id = run_kept_job(logist, source_repo, "echo hi > hi.txt")
    ws = workspace(jobs_root, job_id)
    foreign = docker_client.containers.run(
        BUSYBOX,
        ["sleep", "307"],
        detach=True,
        network_mode="none",
        volumes={str(ws): {"bind": "/mnt/ws", "mode": "rw"}},
    )
    try:
        foreign.reload()
        assert foreign.status == "running" and "logist.managed" not in foreign.labels

        out, report = cleanup(logist, job_id)

        assert out.returncode == 0, out.stderr
        [cleaned] = report["cleaned"]
        assert cleaned["containers_removed"] == 1 and cleaned["workspace_removed"] is True
        assert not container_exists(docker_client, foreign.id)
        assert not os.path.lexists(ws)
    finally:
        remove_container(foreign)


@pytest.mark.docker
def test_cleanup_refuses_while_a_host_process_uses_the_workspace_and_force_terminates_it(
    logist, jobs_root, source_repo
):
    ws = new_job_with_workspace(jobs_root, source_repo, "inuse")
    squatter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=ws)
    try:
        out, report = cleanup(logist, "inuse")
        assert out.returncode == 4, out.stdout + out.stderr
        [failed] = report["failed"]
        assert str(squatter.pid) in failed["error"] and "--force" in failed["error"]
        assert ws.is_dir() and squatter.poll() is None

        out, report = cleanup(logist, "inuse", "--force")

        assert out.returncode == 0, out.stdout + out.stderr
        assert report["cleaned"][0]["workspace_removed"] is True
        assert squatter.wait(timeout=10) != 0  # terminated
        assert not os.path.lexists(ws)
    finally:
        if squatter.poll() is None:
            squatter.kill()
        squatter.wait()


# --- policies ----------------------------------------------------------------------------------


@pytest.mark.docker
def test_policy_always_removes_the_workspace_after_the_job(logist, jobs_root, source_repo):
    job_id = create(logist, source_repo, "echo a > a.txt")  # always is the default
    assert status(logist, job_id)["cleanup"] == "always"

    out = logist("job", "run", job_id)

    assert out.returncode == 0, out.stderr
    assert not os.path.lexists(workspace(jobs_root, job_id))
    assert status(logist, job_id)["workspace"]["state"] == "removed"
    assert "a.txt" in branch_files(source_repo, f"logist/{job_id}")


@pytest.mark.docker
def test_policy_on_success_keeps_a_failed_jobs_workspace_and_removes_a_succeeded_one(
    logist, jobs_root, source_repo
):
    failing = create(logist, source_repo, "echo f > f.txt && exit 1", cleanup="on-success")
    passing = create(logist, source_repo, "echo p > p.txt", cleanup="on-success")

    assert logist("job", "run", failing).returncode == 1
    assert logist("job", "run", passing).returncode == 0

    kept = workspace(jobs_root, failing)
    assert (kept / "f.txt").read_text() == "f\n"
    assert status(logist, failing)["workspace"]["state"] == "ready"
    assert not os.path.lexists(workspace(jobs_root, passing))
    assert "f.txt" in branch_files(source_repo, f"logist/{failing}")  # harvested all the same


@pytest.mark.docker
def test_policy_never_keeps_the_workspace(logist, jobs_root, source_repo):
    ok = create(logist, source_repo, "echo a > a.txt", cleanup="never")
    bad = create(logist, source_repo, "exit 2", cleanup="never")

    assert logist("job", "run", ok).returncode == 0
    assert logist("job", "run", bad).returncode == 1

    assert (workspace(jobs_root, ok) / "a.txt").is_file()
    assert (workspace(jobs_root, bad) / ".git").is_dir()
    assert "a.txt" in branch_files(source_repo, f"logist/{ok}")


# --- active jobs, --force, --dry-run ------------------------------------------------------------


@pytest.mark.docker
def test_cleanup_refuses_a_job_whose_lock_another_process_holds_with_exit_2(
    logist, jobs_root, source_repo
):
    ws = new_job_with_workspace(jobs_root, source_repo, "held")
    (ws / "work.txt").write_text("in progress\n")
    before = snapshot(ws)

    with lock_held_elsewhere(jobs_root / "held"):
        assert status(logist, "held")["active"] is True
        out, _ = cleanup(logist, "held")
        dry, _ = cleanup(logist, "held", "--dry-run")
        assert snapshot(ws) == before

    assert out.returncode == 2
    assert "active" in out.stderr and "--force" in out.stderr
    assert dry.returncode == 2
    out, report = cleanup(logist, "held")
    assert out.returncode == 0, out.stderr
    assert [c["job"] for c in report["cleaned"]] == ["held"]
    assert not os.path.lexists(ws)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_cleanup_force_stops_a_running_job_and_removes_its_workspace(
    logist, jobs_root, source_repo, docker_client
):
    job_id = create(logist, source_repo, "echo started > started.txt && sleep 37")
    runner = start_run(jobs_root, job_id)
    try:
        wait_for(
            lambda: running_step_container(docker_client, jobs_root, job_id, 1),
            60,
            "the step's container to run",
        )
        ws = workspace(jobs_root, job_id)
        assert ws.is_dir()

        refused, _ = cleanup(logist, job_id)
        assert refused.returncode == 2 and "active" in refused.stderr
        assert ws.is_dir() and runner.poll() is None

        out, report = cleanup(logist, job_id, "--force")  # the step sleeps 37 s: not waited
        assert out.returncode == 0, out.stdout + out.stderr
        assert report["failed"] == []
        # what this cleanup ended is what it reports, though the owner removed the workspace
        # (it said nothing cleaned: red team, 12-06)
        cleaned = [(c["job"], c["workspace_removed"]) for c in report["cleaned"]]
        assert cleaned == [(job_id, True)]  # (its containers: the owner's race to remove them)
        assert not running_step_container(docker_client, jobs_root, job_id, 1)
        runner.communicate(timeout=30)
        assert runner.returncode not in (0, None)  # its `job run` ends non-zero
    finally:
        stop_process(runner)

    assert not os.path.lexists(ws)
    assert (
        docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"logist.jobs-dir={jobs_root}"}
        )
        == []
    )
    view = status(logist, job_id)
    assert view["state"] == "canceled" and view["active"] is False
    assert "started.txt" in branch_files(source_repo, f"logist/{job_id}")


@pytest.mark.docker
def test_cleanup_dry_run_reports_what_it_would_do_and_changes_nothing(
    logist, jobs_root, source_repo, docker_client
):
    job_id = run_kept_job(logist, source_repo, "echo one > one.txt")
    ws = workspace(jobs_root, job_id)
    (ws / "unharvested.txt").write_text("not yet in the branch\n")
    before = snapshot(ws)
    manifest = (jobs_root / job_id / "job.json").read_bytes()
    branch_before = git(source_repo, "rev-parse", f"logist/{job_id}")
    foreign = docker_client.containers.run(
        BUSYBOX,
        ["sleep", "307"],
        detach=True,
        network_mode="none",
        volumes={str(ws): {"bind": "/mnt/ws", "mode": "ro"}},
    )
    try:
        out, report = cleanup(logist, job_id, "--dry-run")
        plain = logist("job", "cleanup", job_id, "--dry-run")

        assert out.returncode == 0, out.stderr
        [would] = report["cleaned"]
        assert would["job"] == job_id and would["workspace_removed"] is True
        assert would["containers_removed"] == 1 and would["bytes_freed"] > 0
        assert plain.returncode == 0 and "would remove" in plain.stdout
        foreign.reload()
        assert foreign.status == "running"
        assert snapshot(ws) == before
        assert (jobs_root / job_id / "job.json").read_bytes() == manifest
        assert git(source_repo, "rev-parse", f"logist/{job_id}") == branch_before

        sweep_out, sweep = cleanup(logist, "--stale", "--older-than", "0s", "--dry-run")
        assert sweep_out.returncode == 0, sweep_out.stderr
        assert [c["job"] for c in sweep["cleaned"]] == [job_id]
        assert snapshot(ws) == before
        assert (jobs_root / job_id / "job.json").read_bytes() == manifest
    finally:
        remove_container(foreign)


# --- the stale sweep --------------------------------------------------------------------------


@pytest.mark.docker
def test_sweep_cleans_idle_jobs_and_skips_recent_ones(logist, jobs_root, source_repo):
    for job_id in ("idle-a", "idle-b"):
        new_job_with_workspace(jobs_root, source_repo, job_id)
    never_set_up = create(logist, source_repo, "true", job_id="no-workspace")

    recent, report = cleanup(logist, "--stale", "--older-than", "1h")
    assert recent.returncode == 0, recent.stderr
    assert report["cleaned"] == []
    assert sorted((s["job"], s["reason"]) for s in report["skipped"]) == [
        ("idle-a", "recent"),
        ("idle-b", "recent"),
    ]
    assert workspace(jobs_root, "idle-a").is_dir() and workspace(jobs_root, "idle-b").is_dir()

    out, report = cleanup(logist, "--stale", "--older-than", "0s")

    assert out.returncode == 0, out.stderr
    assert sorted(c["job"] for c in report["cleaned"]) == ["idle-a", "idle-b"]
    assert all(c["workspace_removed"] and c["bytes_freed"] > 0 for c in report["cleaned"])
    assert report["failed"] == [] and report["orphans_removed"] == 0
    assert not os.path.lexists(workspace(jobs_root, "idle-a"))
    assert not os.path.lexists(workspace(jobs_root, "idle-b"))
    assert status(logist, never_set_up)["state"] == "pending"

    again, report = cleanup(logist, "--stale", "--older-than", "0s")
    assert again.returncode == 0 and report["cleaned"] == []


@pytest.mark.docker
def test_sweep_skips_an_active_job_as_active_and_leaves_its_workspace_alone(
    logist, jobs_root, source_repo
):
    ws = new_job_with_workspace(jobs_root, source_repo, "busy")
    (ws / "in-progress.txt").write_text("working\n")
    new_job_with_workspace(jobs_root, source_repo, "idle")
    before = snapshot(ws)
    manifest = (jobs_root / "busy" / "job.json").read_bytes()

    with lock_held_elsewhere(jobs_root / "busy"):
        out, report = cleanup(logist, "--stale", "--older-than", "0s")
        assert snapshot(ws) == before

    assert out.returncode == 0, out.stderr
    assert {"job": "busy", "reason": "active"} in report["skipped"]
    assert [c["job"] for c in report["cleaned"]] == ["idle"]
    assert (jobs_root / "busy" / "job.json").read_bytes() == manifest


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_sweep_does_not_disturb_a_job_that_is_running(
    logist, jobs_root, source_repo, docker_client
):
    job_id = create(logist, source_repo, "echo a > a.txt && sleep 4.7", "echo b > b.txt")
    runner = start_run(jobs_root, job_id)
    try:
        container = wait_for(
            lambda: running_step_container(docker_client, jobs_root, job_id, 1),
            60,
            "step 1's container to run",
        )

        out, report = cleanup(logist, "--stale", "--older-than", "0s")

        assert out.returncode == 0, out.stdout + out.stderr
        assert report["skipped"] == [{"job": job_id, "reason": "active"}]
        assert report["cleaned"] == [] and report["orphans_removed"] == 0
        container.reload()
        assert container.status == "running"
        assert workspace(jobs_root, job_id).is_dir()
        stdout, stderr = runner.communicate(timeout=90)
        assert runner.returncode == 0, stdout + stderr
    finally:
        stop_process(runner)

    view = status(logist, job_id)
    assert view["state"] == "succeeded"
    assert {"a.txt", "b.txt"} <= branch_files(source_repo, f"logist/{job_id}")


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_sweep_recovers_a_job_whose_runner_was_sigkilled_mid_step(
    logist, jobs_root, source_repo, docker_client
):
    job_id = create(
        logist,
        source_repo,
        "echo one > one.txt",
        "echo two > two.txt && sleep 67",
        "echo three > three.txt",
    )
    runner = start_run(jobs_root, job_id)
    try:
        container = while_running(
            runner,
            lambda: running_step_container(docker_client, jobs_root, job_id, 2),
            60,
            "step 2's container to run",
        )
        while_running(
            runner,
            lambda: (workspace(jobs_root, job_id) / "two.txt").is_file(),
            30,
            "step 2 to write two.txt",
        )
        os.killpg(runner.pid, signal.SIGKILL)
        runner.communicate(timeout=30)
    finally:
        stop_process(runner)

    view = status(logist, job_id)
    assert view["state"] == "interrupted" and view["active"] is False
    assert [s["state"] for s in view["steps"]] == ["succeeded", "pending", "pending"]
    assert container.id in view["containers"]  # the dead runner's step still runs
    assert workspace(jobs_root, job_id).is_dir()

    out, report = cleanup(logist, "--stale", "--older-than", "0s")

    assert out.returncode == 0, out.stdout + out.stderr
    [cleaned] = report["cleaned"]
    assert cleaned["job"] == job_id and cleaned["workspace_removed"] is True
    assert cleaned["containers_removed"] >= 1
    assert not container_exists(docker_client, container.id)
    assert not os.path.lexists(workspace(jobs_root, job_id))
    view = status(logist, job_id)
    assert view["state"] == "interrupted" and view["containers"] == []
    manifest = json.loads((jobs_root / job_id / "job.json").read_text())
    assert manifest["state"] == "interrupted"  # recorded, not only reported
    files = branch_files(source_repo, f"logist/{job_id}")
    assert {"one.txt", "two.txt"} <= files and "three.txt" not in files


@pytest.mark.docker
def test_sweep_removes_orphan_containers_of_its_jobs_root_only(
    logist, jobs_root, source_repo, docker_client, tmp_path
):
    from logist import containers
    from logist.container_spec import ContainerSpec
    from logist.dock import Dock

    other_root = tmp_path / "other-jobs"
    other_root.mkdir()
    cli = Dock().client()

    def ghost(root):
        spec = ContainerSpec(BUSYBOX, ["sleep", "307"], "ghost", 1, root, owner="nohost:1:1")
        return containers.create(cli, spec)

    orphan = ghost(jobs_root)
    theirs = ghost(other_root)
    try:
        orphan.start()
        theirs.start()
        assert not (jobs_root / "ghost").exists() and not (other_root / "ghost").exists()

        out, report = cleanup(logist, "--stale", "--older-than", "0s")

        assert out.returncode == 0, out.stderr
        assert report["orphans_removed"] == 1
        assert not container_exists(docker_client, orphan.id)
        theirs.reload()
        assert theirs.status == "running"  # another jobs root's container is never touched
    finally:
        remove_container(orphan)
        remove_container(theirs)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_concurrent_sweeps_both_succeed_and_split_the_jobs_without_overlap(
    jobs_root, source_repo
):
    ids = [f"idle-{n}" for n in range(10)]
    for job_id in ids:
        ws = new_job_with_workspace(jobs_root, source_repo, job_id)
        (ws / "data.txt").write_text(job_id * 1000)
    cmd = [
        sys.executable,
        "-m",
        "logist",
        "--jobs-dir",
        str(jobs_root),
        "job",
        "cleanup",
        "--stale",
        "--older-than",
        "0s",
        "--json",
    ]
    sweeps = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = []
    for proc in sweeps:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stdout + stderr
        outs.append(json.loads(stdout))

    first, second = ({c["job"] for c in o["cleaned"]} for o in outs)
    assert not first & second
    assert first | second == set(ids)
    assert all(o["failed"] == [] for o in outs)
    for job_id in ids:
        assert not os.path.lexists(workspace(jobs_root, job_id))
        assert "data.txt" in branch_files(source_repo, f"logist/{job_id}")


# --- a non-root logist ----------------------------------------------------------------------


@pytest.fixture
def nonroot_env(nonroot_user, docker_client) -> Iterator[dict]:
    """A jobs root and a source repository owned by the non-root user, in a directory that
    user can reach (tmp_path's parents are private to root); the user's ``run`` helper."""
    base = Path(tempfile.mkdtemp(prefix="logist-nonroot-", dir="/tmp"))
    os.chmod(base, 0o755)
    jobs_root = base / "jobs"
    jobs_root.mkdir()
    source = make_repo(base / "src")
    uid, gid = nonroot_user["uid"], nonroot_user["gid"]
    for path in (base, jobs_root):
        os.chown(path, uid, gid)
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(source)], check=True)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "runuser",
                "-u",
                nonroot_user["name"],
                "--",
                nonroot_user["logist"],
                "--jobs-dir",
                str(jobs_root),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )

    try:
        yield {"root": jobs_root, "source": source, "run": run, **nonroot_user}
    finally:
        left = docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"logist.jobs-dir={jobs_root}"}
        )
        for c in left:
            c.remove(force=True)
        subprocess.run(["rm", "-rf", str(base)], check=True)
        assert not left, f"containers left behind: {[c.short_id for c in left]}"


def _nonroot_kept_job(env: dict, *steps: str, **opts: str) -> str:
    args = [
        "job",
        "create",
        "--repo",
        str(env["source"]),
        "--image",
        STEP_IMAGE,
        "--network",
        "none",
        "--cleanup",
        "never",
    ]
    for step in steps:
        args += ["--step", step]
    for key, value in opts.items():
        args += [f"--{key}", value]
    out = env["run"](*args)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    ran = env["run"]("job", "run", job_id)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return job_id


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unprivileged_cleanup_removes_root_owned_unreadable_dirs_through_the_helper(nonroot_env):
    job_id = _nonroot_kept_job(
        nonroot_env,
        "mkdir -p d/e && touch d/e/f && chmod 700 d && echo s > secret && chmod 600 secret",
        user="root",
    )
    ws = workspace(nonroot_env["root"], job_id)
    st = os.lstat(ws / "d")
    assert st.st_uid == 0 and (ws / "d/e/f").exists()
    # what root made there cannot be deleted by the non-root user
    probe = subprocess.run(
        ["runuser", "-u", nonroot_env["name"], "--", "rm", "-rf", str(ws / "d")],
        capture_output=True,
    )
    assert probe.returncode != 0 and (ws / "d/e/f").exists()

    out = nonroot_env["run"]("job", "cleanup", job_id, "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    [cleaned] = report["cleaned"]
    assert cleaned["workspace_removed"] is True and cleaned["bytes_freed"] > 0
    assert not os.path.lexists(ws)
    assert (nonroot_env["root"] / job_id / "job.json").is_file()
    # and nothing root made was lost: it was harvested before the removal
    assert {"d/e/f", "secret"} <= branch_files(nonroot_env["source"], f"logist/{job_id}")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unprivileged_cleanup_removes_a_root_owned_tree_deeper_than_path_max(nonroot_env):
    """~2,000 levels of root's directories (over 4 KiB of path): busybox's `rm -rf` could not
    remove them, so every cleanup failed and the workspace stayed for ever (red team, 12-06)."""
    deep = "i=0; while [ $i -lt 2500 ]; do mkdir d && cd d || break; i=$((i+1)); done; touch f"
    # the job's image is busybox too: no GNU rm to fall back on
    job_id = _nonroot_kept_job(nonroot_env, deep, user="root", image="logist/busybox:latest")
    ws = workspace(nonroot_env["root"], job_id)
    assert os.lstat(ws / "d").st_uid == 0
    out = nonroot_env["run"]("job", "cleanup", job_id, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not os.path.lexists(ws)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unprivileged_cleanup_removes_a_workspace_whose_root_a_root_step_closed(nonroot_env):
    """A root step's `chmod 000 /workspace` (and chown): the host could not open the
    workspace itself, cleanup failed with an internal error and the workspace stayed (red
    team, 12-06). The root helper empties it; the host removes the directory."""
    job_id = _nonroot_kept_job(
        nonroot_env, "echo w > w.txt; chown 0:0 /workspace; chmod 000 /workspace", user="root"
    )
    ws = workspace(nonroot_env["root"], job_id)
    assert os.lstat(ws).st_uid == 0 and os.lstat(ws).st_mode & 0o077 == 0  # closed to others
    out = nonroot_env["run"]("job", "cleanup", job_id, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not os.path.lexists(ws)
    assert "w.txt" in branch_files(nonroot_env["source"], f"logist/{job_id}")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unprivileged_cleanup_fixes_the_mode_of_a_chmod_000_directory_it_owns(nonroot_env):
    job_id = _nonroot_kept_job(
        nonroot_env,
        "mkdir -p locked/inner sealed && echo x > locked/inner/f && "
        "echo y > sealed/g && chmod 000 sealed",
    )
    ws = workspace(nonroot_env["root"], job_id)
    os.chmod(ws / "locked", 0o000)
    st = os.lstat(ws / "locked")
    assert st.st_uid == nonroot_env["uid"]
    probe = subprocess.run(
        ["runuser", "-u", nonroot_env["name"], "--", "ls", str(ws / "locked")], capture_output=True
    )
    assert probe.returncode != 0  # permission denied, to its owner too

    out = nonroot_env["run"]("job", "cleanup", job_id, "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["cleaned"][0]["workspace_removed"] is True
    assert not os.path.lexists(ws)
    # a directory the step itself sealed was read (and harvested) all the same
    files = branch_files(nonroot_env["source"], f"logist/{job_id}")
    assert {"locked/inner/f", "sealed/g"} <= files


# --- the demo script --------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_script_shows_the_workspace_lifecycle_and_passes(tmp_path, docker_client):
    script = REPO_ROOT / "scripts" / "test-demo.sh"
    venv_logist = Path(sys.executable).parent / "logist"
    launcher = str(venv_logist) if venv_logist.exists() else shutil.which("logist")
    assert launcher, "no logist executable next to the test interpreter"
    out = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "LOGIST": launcher, "TMPDIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo: ok" in out.stdout
    # sparse: other tests' containers may vanish while this lists them
    leftovers = docker_client.containers.list(
        all=True, sparse=True, filters={"label": "logist.managed=true"}
    )
    assert not [
        c.id
        for c in leftovers
        if str(tmp_path) in (c.attrs.get("Labels") or {}).get("logist.jobs-dir", "")
    ]


# --- what the orphan reap of `job run` / `job step` must and must not do (red team, 12-05) ---

_APPENDS = (  # first run: appends to `trace` for ever; resumed: fails while `trace` still grows
    "if [ -e trace ]; then a=$(wc -l < trace); sleep 2; b=$(wc -l < trace); "
    '[ "$a" = "$b" ] || { echo old step still writing; exit 9; }; exit 0; fi; '
    "trap '' TERM; while :; do echo x >> trace; sleep 0.1; done"
)


@pytest.mark.timeout(180)
def test_job_step_after_a_killed_run_never_runs_beside_the_old_step(logist, jobs_root, source_repo):
    """`job step` reaps the killed run's containers (its owner is dead) before its first."""
    job = create_job(logist, source_repo, _APPENDS, "true", extra=("--network", "none"))
    command = [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "run", job]
    runner = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: (jobs_root / job / "workspace" / "trace").exists(), 60, "the step")
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    out = logist("job", "step", job)
    assert out.returncode == 0, out.stdout + out.stderr
    assert logist("job", "cleanup", job).returncode == 0


@pytest.mark.timeout(120)
def test_a_broken_manifest_of_another_job_does_not_break_job_run(
    logist, jobs_root, source_repo, docker_client
):
    """The reap meets an orphan of a job whose manifest is JSON but no job: it is housekeeping,
    the job that runs is not failed by it."""
    import socket

    bad = create_job(logist, source_repo, "true")
    good = create_job(logist, source_repo, "true")
    labels = {
        "logist.managed": "true",
        "logist.job": bad,
        "logist.step": "proxy",
        "logist.jobs-dir": str(jobs_root),
        "logist.owner": f"{socket.gethostname()}:1:0",  # a killed run's proxy
    }
    fake = docker_client.containers.create(BUSYBOX, ["true"], labels=labels)
    (jobs_root / bad / "job.json").write_text(f'{{"id": "{bad}"}}\n')
    try:
        out = logist("job", "run", good)
    finally:
        with contextlib.suppress(docker.errors.NotFound):  # the reap's: an orphan
            fake.remove(force=True)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.timeout(180)
def test_a_sweep_by_another_path_of_the_jobs_root_reaps_a_killed_runs_containers(
    tmp_path, jobs_root, source_repo, docker_client
):
    """A job run through ``--jobs-dir LINK`` (a symlink to the jobs root) and SIGKILLed; cron
    sweeps by the real path: the jobs root has one name (its real path) in labels and mount
    sources, so the sweep finds the killed run's containers and network."""
    link = tmp_path / "link"
    link.symlink_to(jobs_root)
    out = run_logist(link, "job", "create", "x", "--repo", str(source_repo), "--step", "sleep 300")
    assert out.returncode == 0, out.stderr
    command = [sys.executable, "-m", "logist", "--jobs-dir", str(link), "job", "run", "x"]
    runner = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    real = jobs_root.resolve()
    try:
        step = {"label": ["logist.job=x", "logist.step=1", f"logist.jobs-dir={real}"]}
        wait_for(lambda: docker_client.containers.list(filters=step), 60, "the step")
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    out = run_logist(jobs_root, "job", "cleanup", "--stale", "--older-than", "0s")
    assert out.returncode == 0, out.stderr
    for root in (real, link):
        mine = {"label": ["logist.job=x", f"logist.jobs-dir={root}"]}
        assert docker_client.containers.list(all=True, filters=mine) == []
        assert docker_client.networks.list(filters=mine) == []
    assert not (jobs_root / "x" / "workspace").exists()


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_a_file_left_behind_is_named_without_the_control_characters_its_step_chose(
    logist, source_repo, jobs_root
):
    """A name a step chose (an OSC 52 clipboard write, colours) in logist's own lines about
    what a cleanup left: as `?`, in the end-of-run line and in `job cleanup`'s (red team,
    12-06). The file is made unremovable with the operator's grant to the step."""
    name = "evil\x1b]52;c;SGVsbG8=\x07\x1b[31mRED"
    step = 'f="$(printf \'evil\\033]52;c;SGVsbG8=\\007\\033[31mRED\')"; touch "$f"; chattr +i "$f"'
    job = create_job(
        logist, source_repo, step, extra=("--user", "root", "--cap-add", "LINUX_IMMUTABLE")
    )
    ws = jobs_root / job / "workspace"
    try:
        ran = logist("job", "run", job)
        assert ran.returncode == 4, ran.stderr
        assert "cleanup of" in ran.stderr and "evil" in ran.stderr
        assert "\x1b" not in ran.stderr and "\x07" not in ran.stderr
        again = logist("job", "cleanup", job)
        assert again.returncode == 4 and "evil" in again.stderr
        assert "\x1b" not in again.stderr and "\x07" not in again.stderr
    finally:
        subprocess.run(["chattr", "-i", str(ws / name)], capture_output=True)
    assert logist("job", "cleanup", job).returncode == 0


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_a_copied_job_directory_never_lets_the_sweep_touch_the_running_job(
    logist, source_repo, jobs_root
):
    """`cp -a jobs/X jobs/X-copy` while X runs: the copy's manifest names X, whose paths and
    containers the sweep then cleaned (it stopped X's step, deleted its workspace: red team,
    12-06). A manifest naming another job is refused; X runs on and lands its work."""
    from tests.support_cli import popen_logist

    job = create_job(
        logist, source_repo, "echo one > one.txt", "touch started; sleep 8; echo two > two.txt"
    )
    runner = popen_logist(jobs_root, "job", "run", job)
    try:
        wait_for(lambda: (jobs_root / job / "workspace" / "started").exists(), 60, "step 2")
        shutil.copytree(jobs_root / job, jobs_root / f"{job}-copy", symlinks=True)
        swept = logist("job", "cleanup", "--stale", "--json")
        out = json.loads(swept.stdout)
        assert job not in [c["job"] for c in out["cleaned"]], out
        assert any(f["job"] == f"{job}-copy" and "names job" in f["error"] for f in out["failed"])
        assert runner.wait(timeout=120) == 0, runner.stderr.read() if runner.stderr else ""
    finally:
        if runner.poll() is None:
            runner.kill()
    assert status(logist, job)["state"] == "succeeded"
    assert git(source_repo, "show", f"logist/{job}:two.txt") == "two\n"
    shutil.rmtree(jobs_root / f"{job}-copy")


@pytest.mark.docker
def test_a_job_directory_that_is_a_link_is_refused_and_its_target_untouched(
    logist, source_repo, jobs_root, tmp_path
):
    other = tmp_path / "other-jobs"
    elsewhere = run_logist(
        other, "run", "far", "--repo", str(source_repo), "--image", "logist/busybox:latest",
        "--cleanup", "never", "--step", "echo w > w.txt",
    )  # fmt: skip
    assert elsewhere.returncode == 0, elsewhere.stderr
    os.symlink(other / "far", jobs_root / "far")
    refused = logist("job", "cleanup", "far")
    assert refused.returncode == 2 and "symbolic link" in refused.stderr
    assert (other / "far" / "workspace" / "w.txt").read_text() == "w\n"
    assert run_logist(other, "job", "cleanup", "far").returncode == 0


# --- a killed setup's half-made clones ----------------------------------------------------------


def _checkout_under_way(into: Path, files: int) -> subprocess.Popen:
    """A ``git checkout`` of ``files`` files in ``into`` (a new repository), started: a git a
    killed runner left behind, still writing (and making again the directories it needs)."""
    subprocess.run(["git", "init", "-q", str(into)], check=True)
    stream = ["commit refs/heads/main", "committer t <t@t> 0 +0000", "data 1", "x"]
    stream += [f"M 644 inline d{i % 100}/f{i}\ndata 2\n{i % 10}\n" for i in range(files)]
    subprocess.run(
        ["git", "-C", str(into), "fast-import", "--quiet"],
        input="\n".join(stream) + "\n",
        text=True,
        check=True,
    )
    return subprocess.Popen(
        ["git", "checkout", "-q", "-f", "main"], cwd=into, stderr=subprocess.DEVNULL
    )


@pytest.mark.docker
@pytest.mark.parametrize("name", [".workspace.tmp-99999", ".repo.git.tmp-99999"])
def test_a_killed_setups_clone_with_its_git_still_writing_is_removed(
    logist, jobs_root, source_repo, name
):
    """A git a killed runner started can outlive it (a fetch's index-pack has no death signal;
    a git held in the kernel on a slow disk ends late) and write on: it is ended, and the
    half-made clone (of the workspace, or of ``repo.git``) removed."""
    job_id = create_job(logist, source_repo, "true")
    tmp = jobs_root / job_id / name
    writer = _checkout_under_way(tmp, 30_000)
    try:
        wait_for(lambda: any(tmp.glob("d*/f*")), 60, "the checkout writing")
        assert writer.poll() is None, "the checkout ended before the cleanup"
        out, _report = cleanup(logist, job_id)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not os.path.lexists(tmp)
        assert writer.wait(timeout=10) != 0  # ended, not finished
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait()


@pytest.mark.docker
def test_a_git_named_process_of_another_mount_namespace_is_not_killed_with_a_leftover(
    logist, jobs_root, source_repo, docker_client
):
    """A process is found "in" a half-made clone by the path it names, which in a container
    is a path of its own (red team): only this user's gits in logist's own mount namespace
    are ended."""
    job_id = create_job(logist, source_repo, "true")
    tmp = jobs_root / job_id / ".workspace.tmp-77777"
    tmp.mkdir()
    script = f"mkdir -p {tmp} && cd {tmp} && cp /bin/sleep /tmp/git && exec /tmp/git 300"
    other = docker_client.containers.run(
        STEP_IMAGE, ["sh", "-c", script], detach=True, labels={"logist.test": "namespace"}
    )
    try:
        wait_for(lambda: other.top()["Processes"][0][-1].startswith("/tmp/git"), 30, "its git")
        out, _report = cleanup(logist, job_id)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not os.path.lexists(tmp)
        other.reload()
        assert other.status == "running"
    finally:
        remove_container(other)
