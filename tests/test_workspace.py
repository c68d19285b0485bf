"""Workspace setup (issue 4): one real clone per job, made once, safe under concurrency, never
writing to the source; remote sources through a mirror made once; set up by the engine once per
job before its first step.

Real git repositories in ``tmp_path``, real threads and processes, a real ``git daemon`` in a
container, the real engine. The only wrappers are counters around ``gitops`` functions.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from logist import gitops
from logist.errors import LogistError, UsageError
from logist.jobrun import JobRun
from logist.jobs import create_job
from logist.model import WS_ABSENT, WS_READY
from logist.store import Store, job_lock
from logist.workspace import TMP_PREFIX, make_writable_for, setup_workspace
from tests.helpers import commit_file, git, make_repo, run_logist
from tests.support_wait import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
STEP_IMAGE = "logist/step:latest"


# --- helpers -------------------------------------------------------------------------------------


def new_job(store: Store, repo: Path | str, job_id: str, **extra) -> str:
    raw = {"id": job_id, "repo": str(repo), "image": STEP_IMAGE, "steps": ["true"], **extra}
    return create_job(store, raw).id


def head_of(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "rev-parse", rev).strip()


def git_dir_inode(ws: Path) -> int:
    return os.stat(ws / ".git", follow_symlinks=False).st_ino


def assert_ready_clone(store: Store, job_id: str, ws: Path, commit: str) -> None:
    """``ws`` is the job's own clone, on ``logist/<id>`` at ``commit``, with a clean tree."""
    assert ws == store.job_dir(job_id) / "workspace"
    assert not ws.is_symlink() and ws.is_dir()
    dot_git = ws / ".git"
    assert dot_git.is_dir() and not dot_git.is_symlink(), ".git must be a directory, not a file"
    assert Path(git(ws, "rev-parse", "--absolute-git-dir").strip()) == dot_git.resolve()
    assert not (dot_git / "objects" / "info" / "alternates").exists(), "objects must be its own"
    assert git(ws, "symbolic-ref", "HEAD").strip() == f"refs/heads/logist/{job_id}"
    assert head_of(ws) == commit
    assert head_of(ws, f"refs/heads/logist/{job_id}") == commit
    assert git(ws, "status", "--porcelain", "--untracked-files=all") == ""
    job = store.load(job_id)
    assert job.workspace_state == WS_READY
    assert job.base_commit == commit
    assert not list(store.job_dir(job_id).glob(TMP_PREFIX + "*")), "temp clone left behind"


def source_state(repo: Path, object_mtimes: bool = True) -> dict:
    """Everything setup could change in a source: refs, HEAD, config, remotes, worktrees, the
    working tree, and every file under ``.git`` (but the index, which ``git status`` may refresh)
    with its inode, size, mtime, mode and owner. ``object_mtimes=False`` leaves out the mtimes
    of object files: a commit in a workspace that writes an object the source already has
    "freshens" it (utime), and the hardlinked file is the same inode."""
    files = {}
    dot_git = repo / ".git"
    for dirpath, dirnames, filenames in os.walk(dot_git):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(dot_git))
            if rel == "index":
                continue
            st = os.lstat(path)
            kind = "dir" if path.is_dir() and not path.is_symlink() else "file"
            meta = (kind, st.st_mode, st.st_uid, st.st_gid)
            if kind == "file":
                meta += (st.st_ino, st.st_size)
                if object_mtimes or not rel.startswith("objects" + os.sep):
                    meta += (st.st_mtime_ns,)
            files[rel] = meta
    return {
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname) %(symref)"),
        "head": (dot_git / "HEAD").read_text(),
        "config": (dot_git / "config").read_bytes(),
        "remotes": git(repo, "remote", "-v"),
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored"),
        "files": files,
    }


def make_dirty(repo: Path) -> None:
    """A source a user is working in: a modified tracked file and an untracked one."""
    (repo / "README.md").write_text("edited, not committed\n")
    (repo / "notes.txt").write_text("untracked\n")


@pytest.fixture
def store(jobs_root: Path) -> Store:
    return Store(jobs_root)


@pytest.fixture
def clones(monkeypatch) -> list[tuple[str, str]]:
    """Every workspace clone as (origin remote, dest): a counter around the real function."""
    calls: list[tuple[str, str]] = []
    guard = threading.Lock()
    real = gitops.clone_workspace

    def counting(job_repo: Path, dest: Path, branch: str, commit: str, origin: str) -> None:
        with guard:
            calls.append((origin, str(dest)))
        return real(job_repo, dest, branch, commit, origin)

    monkeypatch.setattr(gitops, "clone_workspace", counting)
    return calls


def run_threads(n: int, fn, timeout: float) -> list:
    """Call ``fn(i)`` in ``n`` threads released together; every result, or the first error."""
    barrier = threading.Barrier(n)

    def go(i: int):
        barrier.wait(timeout=timeout)
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(go, i) for i in range(n)]
        return [f.result(timeout=timeout) for f in futures]


# --- fresh setup ---------------------------------------------------------------------------------


def test_fresh_setup_makes_a_real_clone_on_the_job_branch_at_the_source_head(
    store, source_repo, clones
):
    job_id = new_job(store, source_repo, "fresh")
    assert store.load(job_id).workspace_state == WS_ABSENT
    ws = setup_workspace(store, job_id)
    assert_ready_clone(store, job_id, ws, head_of(source_repo))
    assert (ws / "README.md").read_text() == "hello\n"
    assert clones == [(str(source_repo), clones[0][1])]
    assert Path(clones[0][1]).name.startswith(TMP_PREFIX), "cloned aside, then renamed in place"
    assert git(ws, "remote", "get-url", "origin").strip() == str(source_repo)
    # other branches of the source (other jobs' results among them) are not shown to a step
    assert git(ws, "for-each-ref", "--format=%(refname)", "refs/heads", "refs/remotes") == (
        "refs/heads/logist/fresh\n"
    )


def test_workspace_objects_are_copies_sharing_no_file_with_the_source(store, source_repo):
    obj = head_of(source_repo)
    src_obj = source_repo / ".git" / "objects" / obj[:2] / obj[2:]
    assert src_obj.is_file()
    ws = setup_workspace(store, new_job(store, source_repo, "copied"))
    ws_obj = ws / ".git" / "objects" / obj[:2] / obj[2:]
    assert os.stat(ws_obj).st_ino != os.stat(src_obj).st_ino
    assert os.stat(ws_obj).st_nlink == 1
    assert not (ws / ".git" / "objects" / "info" / "alternates").exists()


def test_default_ref_is_whatever_the_source_head_points_at(store, source_repo):
    git(source_repo, "checkout", "-q", "-b", "dev")
    dev = commit_file(source_repo, "dev.txt", "dev\n", "on dev")
    ws = setup_workspace(store, new_job(store, source_repo, "default-ref"))
    assert_ready_clone(store, "default-ref", ws, dev)
    assert (ws / "dev.txt").is_file()


@pytest.mark.parametrize("kind", ["tag", "annotated-tag", "branch", "sha", "short-sha"])
def test_ref_may_be_a_tag_a_branch_or_a_sha(store, source_repo, kind):
    first = head_of(source_repo)
    git(source_repo, "tag", "v1", first)
    git(source_repo, "tag", "-a", "-m", "release", "v1-annotated", first)
    git(source_repo, "checkout", "-q", "-b", "feature")
    feature = commit_file(source_repo, "feature.txt", "f\n", "feature")
    git(source_repo, "checkout", "-q", "main")
    commit_file(source_repo, "later.txt", "later\n", "later on main")
    ref, expected = {
        "tag": ("v1", first),
        "annotated-tag": ("v1-annotated", first),
        "branch": ("feature", feature),
        "sha": (first, first),
        "short-sha": (first[:10], first),
    }[kind]
    job_id = new_job(store, source_repo, f"ref-{kind}", ref=ref)
    ws = setup_workspace(store, job_id)
    assert_ready_clone(store, job_id, ws, expected)
    assert (ws / "feature.txt").exists() == (kind == "branch")
    assert not (ws / "later.txt").exists()


# --- reuse and recovery --------------------------------------------------------------------------


def test_ready_workspace_is_reused_without_a_new_clone(store, source_repo, clones):
    job_id = new_job(store, source_repo, "reuse")
    ws = setup_workspace(store, job_id)
    inode = git_dir_inode(ws)
    (ws / "work-in-progress.txt").write_text("a step wrote this\n")
    again = setup_workspace(store, job_id)
    assert again == ws
    assert git_dir_inode(again) == inode
    assert (again / "work-in-progress.txt").read_text() == "a step wrote this\n"
    assert len(clones) == 1


def test_workspace_whose_manifest_was_not_updated_is_made_again_not_read(
    store, source_repo, clones
):
    """A crash between the rename into place and the manifest write: the host never reads a
    workspace's repository to decide whether it is valid, so it is made again."""
    job_id = new_job(store, source_repo, "adopt")
    ws = setup_workspace(store, job_id)
    (ws / "stray.txt").write_text("x")
    with job_lock(store.job_dir(job_id)):
        job = store.load(job_id)
        job.workspace_state = WS_ABSENT
        store.save(job)
    assert setup_workspace(store, job_id) == ws
    assert not (ws / "stray.txt").exists()
    assert store.load(job_id).workspace_state == WS_READY
    assert len(clones) == 2


def test_leftover_temp_clone_from_a_crash_is_removed_and_the_workspace_made(
    store, source_repo, clones
):
    job_id = new_job(store, source_repo, "leftover")
    job_dir = store.job_dir(job_id)
    for pid in (os.getpid(), 999999):  # one this process would reuse, one of a dead process
        half = job_dir / f"{TMP_PREFIX}{pid}"
        subprocess.run(["git", "init", "-q", str(half)], check=True)
        (half / ".git" / "objects" / "pack" / "tmp_pack_x").write_bytes(b"half a pack")
    ws = setup_workspace(store, job_id)
    assert_ready_clone(store, job_id, ws, head_of(source_repo))
    assert len(clones) == 1


def _no_git(ws: Path, outside: Path) -> None:
    ws.mkdir()
    (ws / "stray.txt").write_text("x")


def _empty_git_dir(ws: Path, outside: Path) -> None:
    (ws / ".git").mkdir(parents=True)
    (ws / "stray.txt").write_text("x")


def _git_file(ws: Path, outside: Path) -> None:  # a worktree's .git file
    ws.mkdir()
    (ws / ".git").write_text(f"gitdir: {outside}\n")
    (ws / "stray.txt").write_text("x")


def _clone_without_branch(ws: Path, outside: Path) -> None:  # the checkout never happened
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / "stray.txt").write_text("x")


def _symlink_elsewhere(ws: Path, outside: Path) -> None:
    ws.symlink_to(outside, target_is_directory=True)


@pytest.mark.parametrize(
    "damage", [_no_git, _empty_git_dir, _git_file, _clone_without_branch, _symlink_elsewhere]
)
def test_half_made_workspace_is_detected_removed_and_made_again(
    store, source_repo, tmp_path, clones, damage
):
    job_id = new_job(store, source_repo, "half")
    ws = store.workspace(job_id)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not logist's\n")
    damage(ws, outside)
    got = setup_workspace(store, job_id)
    assert_ready_clone(store, job_id, got, head_of(source_repo))
    assert not (got / "stray.txt").exists()
    assert (outside / "keep.txt").read_text() == "not logist's\n", "followed a symlink out"
    assert len(clones) == 1


@pytest.mark.parametrize("gone", ["HEAD", "refs", "objects"])
def test_ready_workspace_with_a_broken_repository_is_kept_as_the_step_left_it(
    store, source_repo, clones, gone
):
    """What a step did to its repository is its work, read only by the harvest helper (which
    commits the files on the last harvest and mends the repository): setup never runs git in
    it, never judges it, and never throws it away."""
    job_id = new_job(store, source_repo, "partly")
    ws = setup_workspace(store, job_id)
    target = ws / ".git" / gone
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    (ws / "work.txt").write_text("a step's work\n")
    got = setup_workspace(store, job_id)
    assert got == ws and (ws / "work.txt").read_text() == "a step's work\n"
    assert not os.path.lexists(target)
    assert len(clones) == 1


# --- errors --------------------------------------------------------------------------------------


def test_unknown_ref_is_refused_at_create_with_exit_2_naming_the_ref(jobs_root, source_repo):
    out = run_logist(
        jobs_root,
        "job",
        "create",
        "wrong-ref",
        "--repo",
        str(source_repo),
        "--image",
        STEP_IMAGE,
        "--step",
        "true",
        "--ref",
        "no-such-branch",
    )
    assert out.returncode == 2, out.stderr
    assert "no-such-branch" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (jobs_root / "wrong-ref").exists()


def test_ref_removed_from_the_source_after_create_is_a_usage_error_naming_it(store, source_repo):
    git(source_repo, "branch", "short-lived")
    job_id = new_job(store, source_repo, "gone-ref", ref="short-lived")
    git(source_repo, "branch", "-D", "short-lived")
    with pytest.raises(UsageError, match="short-lived") as err:
        setup_workspace(store, job_id)
    assert err.value.exit_code == 2
    job_dir = store.job_dir(job_id)
    assert not (job_dir / "workspace").exists()
    assert not list(job_dir.glob(TMP_PREFIX + "*"))
    assert store.load(job_id).workspace_state == WS_ABSENT


@pytest.mark.parametrize("how", ["directory-removed", "no-longer-a-repository"])
def test_source_vanished_since_create_is_a_clear_usage_error(store, source_repo, how):
    job_id = new_job(store, source_repo, "vanished")
    if how == "directory-removed":
        shutil.rmtree(source_repo)
    else:
        shutil.rmtree(source_repo / ".git")
    with pytest.raises(UsageError, match="vanished") as err:
        setup_workspace(store, job_id)
    assert str(source_repo) in str(err.value)
    assert err.value.exit_code == 2
    job_dir = store.job_dir(job_id)
    assert not (job_dir / "workspace").exists()
    assert not list(job_dir.glob(TMP_PREFIX + "*"))


def test_disk_full_during_the_clone_is_reported_and_leaves_nothing_half_made(tmp_path):
    source = make_repo(tmp_path / "src", {"big.bin": ""})
    (source / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    git(source, "add", "-A")
    git(source, "commit", "-qm", "big")
    with tmpfs(tmp_path / "small", "1m") as root:
        store = Store(root)
        job_id = new_job(store, source, "full")
        with pytest.raises(LogistError, match="disk full") as err:
            setup_workspace(store, job_id)
        assert err.value.exit_code == 3
        assert not list(store.job_dir(job_id).glob(TMP_PREFIX + "*"))
        assert not (store.job_dir(job_id) / "workspace").exists()


# --- the source is only read ---------------------------------------------------------------------


def test_setup_never_writes_to_the_source(store, source_repo):
    git(source_repo, "tag", "v1")
    git(source_repo, "branch", "feature")
    make_dirty(source_repo)
    before = source_state(source_repo)
    for n, ref in enumerate([None, "v1", "feature", head_of(source_repo)]):
        ws = setup_workspace(store, new_job(store, source_repo, f"ro-{n}", ref=ref))
        commit_file(ws, "job.txt", "a job's work\n", "work in the workspace")
    assert source_state(source_repo) == before


@pytest.mark.parametrize("objects_mode", [0o444, 0o400])
def test_making_the_workspace_writable_for_a_step_user_leaves_the_source_files_alone(
    store, source_repo, objects_mode
):
    """Giving the workspace to another uid must not chown or chmod the source's files, and
    the step can read every object of its own copy."""
    for dirpath, _, filenames in os.walk(source_repo / ".git" / "objects"):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), objects_mode)
    before = source_state(source_repo)
    job_id = new_job(store, source_repo, "chown", user="4242:4242")
    ws = setup_workspace(store, job_id)
    make_writable_for(JobRun(store, store.load(job_id)), ws)
    assert source_state(source_repo) == before
    for dirpath, _, filenames in os.walk(ws / ".git" / "objects"):
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            readable = st.st_mode & 0o004 or (st.st_uid == 4242 and st.st_mode & 0o400)
            assert readable, f"{dirpath}/{name} unreadable for the step user"
    assert git(ws, "cat-file", "-t", head_of(ws)).strip() == "commit"


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs and needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_jobs_root_on_another_filesystem_than_the_source_gets_a_copied_clone(tmp_path, source_repo):
    """Hardlinks cannot cross filesystems: the clone copies the objects instead of failing."""
    with tmpfs(tmp_path / "other-fs", "64m") as root:
        store = Store(root)
        job_id = new_job(store, source_repo, "cross-device")
        ws = setup_workspace(store, job_id)
        assert_ready_clone(store, job_id, ws, head_of(source_repo))
        assert os.stat(ws / ".git").st_dev != os.stat(source_repo / ".git").st_dev


# --- concurrency ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sixteen_threads_setting_up_one_job_make_exactly_one_clone(store, source_repo, clones):
    job_id = new_job(store, source_repo, "one-job")
    results = run_threads(
        16,
        lambda i: (setup_workspace(store, job_id), git_dir_inode(store.workspace(job_id))),
        timeout=45,
    )
    paths = {path for path, _ in results}
    inodes = {inode for _, inode in results}
    assert paths == {store.workspace(job_id)}
    assert len(inodes) == 1 and inodes == {git_dir_inode(store.workspace(job_id))}
    assert len(clones) == 1
    assert_ready_clone(store, job_id, store.workspace(job_id), head_of(source_repo))


_CHILD = r"""
import os, sys, time
from pathlib import Path
from logist import gitops
from logist.store import Store
from logist.workspace import setup_workspace

root, job_id, counter, go = sys.argv[1:5]
real = gitops.clone_workspace

def counting(job_repo, dest, branch, commit, origin):
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{os.getpid()} {dest}\n".encode())
    os.close(fd)
    return real(job_repo, dest, branch, commit, origin)

gitops.clone_workspace = counting
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
ws = setup_workspace(Store(Path(root)), job_id)
print(ws, os.stat(ws / ".git").st_ino)
"""


def setup_in_processes(
    jobs_root: Path, job_ids: list[str], tmp_path: Path, timeout: float
) -> tuple[list[str], list[str]]:
    """Set up ``job_ids`` in one process each, all released at once; their outputs and the
    clones they made (one line per clone)."""
    counter, go = tmp_path / "clones.log", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(jobs_root), job_id, str(counter), str(go)],
            cwd=REPO_ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for job_id in job_ids
    ]
    outs = []
    try:
        for p in procs:  # every child is up and waiting: release them at once
            assert p.stdout.readline() == "ready\n", p.stderr.read()
        go.touch()
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err
            outs.append(out.strip())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    made = counter.read_text().splitlines() if counter.exists() else []
    return outs, made


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sixteen_processes_setting_up_one_job_make_exactly_one_clone(
    store, jobs_root, source_repo, tmp_path
):
    job_id = new_job(store, source_repo, "one-job-procs")
    outs, made = setup_in_processes(jobs_root, [job_id] * 16, tmp_path, timeout=60)
    ws = store.workspace(job_id)
    assert set(outs) == {f"{ws} {git_dir_inode(ws)}"}
    assert len(made) == 1, made
    assert_ready_clone(store, job_id, ws, head_of(source_repo))


@pytest.mark.timeout(120)
def test_sixteen_jobs_set_up_at_once_from_one_source_are_all_ready_and_the_source_unchanged(
    store, source_repo, clones
):
    git(source_repo, "tag", "v1")
    make_dirty(source_repo)
    head = head_of(source_repo)
    job_ids = [new_job(store, source_repo, f"many-{i:02d}") for i in range(16)]
    before = source_state(source_repo)
    paths = run_threads(16, lambda i: setup_workspace(store, job_ids[i]), timeout=100)
    assert paths == [store.workspace(j) for j in job_ids]
    for job_id, ws in zip(job_ids, paths, strict=True):
        assert_ready_clone(store, job_id, ws, head)
    assert len({git_dir_inode(ws) for ws in paths}) == 16, "each job has its own clone"
    assert len(clones) == 16
    assert source_state(source_repo) == before


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sixteen_jobs_set_up_at_once_by_separate_processes_leave_the_source_unchanged(
    store, jobs_root, source_repo, tmp_path
):
    make_dirty(source_repo)
    head = head_of(source_repo)
    job_ids = [new_job(store, source_repo, f"procs-{i:02d}") for i in range(16)]
    before = source_state(source_repo)
    outs, made = setup_in_processes(jobs_root, job_ids, tmp_path, timeout=90)
    assert len(made) == 16
    for job_id, out in zip(job_ids, outs, strict=True):
        ws = store.workspace(job_id)
        assert out == f"{ws} {git_dir_inode(ws)}"
        assert_ready_clone(store, job_id, ws, head)
    assert source_state(source_repo) == before


@pytest.mark.timeout(60)
def test_setup_of_one_job_does_not_wait_for_another_job_of_the_same_source(store, source_repo):
    busy = new_job(store, source_repo, "busy")
    free = new_job(store, source_repo, "free")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with job_lock(store.job_dir(busy)):
            holding.set()
            release.wait(timeout=50)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(timeout=10)
        with ThreadPoolExecutor(max_workers=1) as pool:
            ws = pool.submit(setup_workspace, store, free).result(timeout=30)
        assert_ready_clone(store, free, ws, head_of(source_repo))
        assert not store.workspace(busy).exists()
    finally:
        release.set()
        holder.join(timeout=10)


# --- remote sources: a git daemon in a container -------------------------------------------------


@contextlib.contextmanager
def git_daemon(served: Path):
    """``git daemon`` in a testcontainers container of the step image, serving the repositories
    under ``served`` (bind-mounted read-only); yields the base ``git://`` URL."""
    from testcontainers.core.config import testcontainers_config

    testcontainers_config.ryuk_disabled = True  # its image cannot be pulled here
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(STEP_IMAGE)
        .with_volume_mapping(str(served), "/srv/git", "ro")
        .with_exposed_ports(9418)
        .with_kwargs(user="0:0", labels={"logist.test": "test_workspace-git-daemon"})
        .with_command(
            [
                "git",
                "-c",
                "safe.directory=*",
                "daemon",
                "--export-all",
                "--base-path=/srv/git",
                "--reuseaddr",
                "--listen=0.0.0.0",
                "--port=9418",
                "--verbose",
                "/srv/git",
            ]
        )
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        if host == "localhost":
            host = "127.0.0.1"
        base = f"git://{host}:{container.get_exposed_port(9418)}"
        probes = []

        def answers() -> bool:
            probes.append(
                subprocess.run(
                    ["git", "ls-remote", f"{base}/{next(served.iterdir()).name}"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
            )
            return probes[-1].returncode == 0

        assert wait_until(answers, timeout=30, interval=0.2), (
            f"git daemon did not answer: {probes[-1].stderr}"
        )
        yield base, container
    finally:
        container.stop()


def _served_repo(served: Path, name: str) -> Path:
    """A bare repository with some history under ``served`` (so a re-download is a real one)."""
    repo = make_repo(served / f"{name}-src", {"README.md": "remote\n"})
    for i in range(30):
        commit_file(repo, f"f{i}.txt", f"{i}\n" * 100, f"commit {i}")
    bare = served / name
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    shutil.rmtree(repo)
    return bare


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One ``git daemon`` container for the module's remote tests (each serves a repository of
    its own from it): (served directory, base URL)."""
    served = tmp_path_factory.mktemp("served")
    _served_repo(served, "probe.git")
    with git_daemon(served) as (base, _container):
        yield served, base


@pytest.fixture
def remote(daemon):
    """A repository of this test's own, served by the module's ``git daemon``: (url, host path
    of the repo)."""
    served, base = daemon
    name = f"project-{secrets.token_hex(4)}.git"
    bare = _served_repo(served, name)
    yield f"{base}/{name}", bare


@pytest.fixture
def lone_remote(tmp_path):
    """A repository served by a ``git daemon`` of this test's own, which the test may stop:
    (url, container)."""
    served = tmp_path / "served"
    _served_repo(served, "project.git")
    with git_daemon(served) as (base, container):
        yield f"{base}/project.git", container


@pytest.fixture
def mirror_git_calls(monkeypatch) -> list[tuple[str, ...]]:
    """Every git command that ``gitops.update_mirror`` runs (a counter around ``gitops.git``)."""
    calls: list[tuple[str, ...]] = []
    guard = threading.Lock()
    real = gitops.git

    def counting(*args: str, **kwargs):
        if args and args[0] in ("clone", "fetch") and ("--mirror" in args or "--prune" in args):
            with guard:
                calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(gitops, "git", counting)
    return calls


def mirror_packs(store: Store) -> dict[str, int]:
    mirrors = list((store.root / ".mirrors").glob("*.git"))
    assert len(mirrors) == 1, mirrors
    return {p.name: p.stat().st_ino for p in (mirrors[0] / "objects" / "pack").iterdir()}


def push_to_bare(bare: Path, tmp_path: Path, name: str) -> str:
    """Add a commit to the served bare repository (from the host, through a scratch clone)."""
    work = tmp_path / f"scratch-{name}"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True)
    commit = commit_file(work, f"{name}.txt", "new\n", f"add {name}")
    git(work, "push", "-q", "origin", "HEAD:main")
    return commit


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_remote_source_is_cloned_through_a_mirror_made_once(
    store, remote, tmp_path, clones, mirror_git_calls
):
    url, bare = remote
    head = git(bare, "rev-parse", "HEAD").strip()
    first = new_job(store, url, "remote-1")
    ws1 = setup_workspace(store, first)
    assert_ready_clone(store, first, ws1, head)
    assert git(ws1, "remote", "get-url", "origin").strip() == url
    assert (ws1 / "f29.txt").is_file()
    mirror = next((store.root / ".mirrors").glob("*.git"))
    mirror_inode = mirror.stat().st_ino
    packs = mirror_packs(store)
    assert any(name.endswith(".pack") for name in packs)

    newer = push_to_bare(bare, tmp_path, "newer")  # the remote moves on between the two jobs
    second = new_job(store, url, "remote-2")
    ws2 = setup_workspace(store, second)
    assert_ready_clone(store, second, ws2, newer)
    assert git(ws2, "remote", "get-url", "origin").strip() == url
    assert (ws2 / "newer.txt").is_file()

    # the mirror was made once and then only fetched: same directory, the first pack untouched
    assert mirror.stat().st_ino == mirror_inode
    after = mirror_packs(store)
    assert {k: v for k, v in after.items() if k in packs} == packs
    kinds = [args[0] for args in mirror_git_calls]
    assert kinds == ["clone", "fetch"], mirror_git_calls
    # one workspace clone per job, made from logist's repository of the job (itself a clone
    # of the mirror: the URL was only reached by the mirror's clone and fetch above)
    assert len(clones) == 2
    assert ws1 != ws2 and git_dir_inode(ws1) != git_dir_inode(ws2)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_jobs_of_one_remote_set_up_at_once_share_one_mirror_clone(
    store, remote, clones, mirror_git_calls
):
    url, bare = remote
    head = git(bare, "rev-parse", "HEAD").strip()
    job_ids = [new_job(store, url, f"remote-many-{i}") for i in range(6)]
    paths = run_threads(6, lambda i: setup_workspace(store, job_ids[i]), timeout=100)
    for job_id, ws in zip(job_ids, paths, strict=True):
        assert_ready_clone(store, job_id, ws, head)
        assert git(ws, "remote", "get-url", "origin").strip() == url
    assert [args[0] for args in mirror_git_calls].count("clone") == 1, mirror_git_calls
    assert len(clones) == 6
    assert len(list((store.root / ".mirrors").iterdir())) == 1, "no temp mirror left behind"


@pytest.mark.timeout(60)
def test_file_url_source_goes_through_one_mirror_and_origin_is_the_url(
    store, source_repo, clones, mirror_git_calls
):
    url = f"file://{source_repo}"
    before = source_state(source_repo)
    ws1 = setup_workspace(store, new_job(store, url, "file-url-1"))
    packs = mirror_packs(store)
    ws2 = setup_workspace(store, new_job(store, url, "file-url-2"))
    for job_id, ws in (("file-url-1", ws1), ("file-url-2", ws2)):
        assert_ready_clone(store, job_id, ws, head_of(source_repo))
        assert git(ws, "remote", "get-url", "origin").strip() == url
    assert mirror_packs(store) == packs
    assert [args[0] for args in mirror_git_calls] == ["clone", "fetch"]
    assert len(clones) == 2
    assert source_state(source_repo) == before


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_half_made_mirror_left_by_a_crash_is_discarded_and_made_again(store, remote, clones):
    url, bare = remote
    mirrors = store.private_dir("mirrors")
    key = gitops.source_key(url)
    for pid in (os.getpid(), 999999):  # one this process would reuse, one of a dead process
        half = mirrors / f"{key}.git.tmp-{pid}"
        subprocess.run(["git", "init", "-q", "--bare", str(half)], check=True)
        (half / "objects" / "pack" / "tmp_pack_x").write_bytes(b"half a pack")
    job_id = new_job(store, url, "after-crash")
    ws = setup_workspace(store, job_id)
    assert_ready_clone(store, job_id, ws, git(bare, "rev-parse", "HEAD").strip())
    assert sorted(p.name for p in mirrors.iterdir()) == [f"{key}.git"]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_remote_errors_unknown_ref_at_create_and_unreachable_source_at_setup(
    store, jobs_root, lone_remote
):
    url, container = lone_remote
    out = run_logist(
        jobs_root,
        "job",
        "create",
        "--repo",
        url,
        "--image",
        STEP_IMAGE,
        "--step",
        "true",
        "--ref",
        "no-such-ref",
    )
    assert out.returncode == 2 and "no-such-ref" in out.stderr, out.stderr
    job_id = new_job(store, url, "remote-gone")
    container.get_wrapped_container().stop(timeout=1)  # the fixture removes it
    with pytest.raises(UsageError) as err:
        setup_workspace(store, job_id)
    assert url in str(err.value)
    assert not store.workspace(job_id).exists()
    assert not list(store.job_dir(job_id).glob(TMP_PREFIX + "*"))


# --- the engine sets the workspace up once per job, before its first step ------------------------


EVIDENCE_STEPS = [
    "ls -di /workspace | cut -d' ' -f1 > inode-1 && echo one > one.txt",
    "ls -di /workspace | cut -d' ' -f1 > inode-2 && test -f one.txt",
]


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_engine_sets_the_workspace_up_once_before_the_first_of_two_steps(
    store, source_repo, clones, monkeypatch
):
    from logist import Runtime, containers, workspaces

    events: list[str] = []
    real_setup, real_create = workspaces.prepare_workspace, containers.create

    def counting_setup(*args, **kwargs):
        events.append("setup")
        return real_setup(*args, **kwargs)

    def counting_create(*args, **kwargs):
        events.append({"helper": "helper", "netns": "holder"}.get(str(args[1].step), "container"))
        return real_create(*args, **kwargs)

    monkeypatch.setattr(workspaces, "prepare_workspace", counting_setup)
    monkeypatch.setattr(containers, "create", counting_create)
    job_id = new_job(store, source_repo, "engine-once", steps=EVIDENCE_STEPS, cleanup="never")
    [result] = Runtime(store.root).run_jobs([job_id])
    assert result.error is None and result.exit_code == 0, result.error
    # the network's holder is made beside the set-up (its thread of its own)
    assert [e for e in events if e != "holder"] == ["setup", "helper", "container", "container"]
    assert events.count("holder") == 1
    assert len(clones) == 1
    ws = store.workspace(job_id)
    inode = str(ws.stat().st_ino)  # the workspace itself (its .git is remade by each harvest)
    assert (ws / "inode-1").read_text().strip() == inode
    assert (ws / "inode-2").read_text().strip() == inode


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_job_step_twice_from_the_cli_runs_both_steps_in_one_workspace(logist, source_repo):
    args = ["job", "create", "--repo", str(source_repo)]
    for step in EVIDENCE_STEPS:
        args += ["--step", step]
    created = logist(*args)
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.strip()
    for _ in EVIDENCE_STEPS:
        out = logist("job", "step", job_id)
        assert out.returncode == 0, out.stderr
    branch = f"logist/{job_id}"
    first = git(source_repo, "show", f"{branch}:inode-1").strip()
    second = git(source_repo, "show", f"{branch}:inode-2").strip()
    assert first and first == second


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sixteen_job_step_processes_at_once_each_set_up_their_job_from_one_source(
    jobs_root, source_repo, store
):
    """Separate CLI processes through the real engine: every job's workspace ready after its
    first step, the source's refs and working tree unchanged."""
    make_dirty(source_repo)
    job_ids = [
        new_job(store, source_repo, f"cli-{i:02d}", steps=["true", "true"]) for i in range(16)
    ]
    before = source_state(source_repo, object_mtimes=False)  # a harvest ran in each workspace
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "logist", "--jobs-dir", str(jobs_root), "job", "step", job_id],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for job_id in job_ids
    ]
    try:
        for p in procs:
            _, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for job_id in job_ids:
        job = store.load(job_id)
        assert job.state == "pending" and job.workspace_state == WS_READY
        ws = store.workspace(job_id)
        assert git(ws, "symbolic-ref", "HEAD").strip() == f"refs/heads/logist/{job_id}"
    assert source_state(source_repo, object_mtimes=False) == before
