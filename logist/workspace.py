"""The job's workspace: ``setup_workspace`` (one fresh clone per job, sharing no file with the
source), logist's own repository of the job (``repo.git``) and the hand-over to the step's
user; its deletion is ``safefs.delete_tree``. No git command runs in a workspace here: once a
step has run, its repository is read only by the helper container (``logist/sandbox.py``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from logist import gitops, safefs
from logist.errors import GitError, LogistError, UsageError
from logist.jobrun import JobRun
from logist.layout import SETUP_TMP, JobDir
from logist.model import WS_READY, Job
from logist.safefs import delete_tree, is_real_dir
from logist.spec import is_url
from logist.store import Store, owner_id

TMP_PREFIX = SETUP_TMP


def setup_workspace(store: Store, job_id: str) -> Path:
    """``prepare_workspace`` of ``job_id``, under its lock (for callers that own no run)."""
    with JobRun.open(store, job_id) as run:
        return prepare_workspace(run)


def prepare_workspace(run: JobRun) -> Path:
    """Make ``$JOB_DIR/workspace`` a clone of the job's work on branch ``logist/<id>``.

    Idempotent and safe under concurrency: the caller holds the job's lock; a ready workspace
    is reused without reading it (no git on the host in a tree a step has seen). Anything else
    there (half-made, half-deleted) is discarded. The clone is made in a temp directory and
    renamed into place, so a crash never leaves a workspace that looks ready but is not. Never
    writes to the source. A resumed job gets the job branch at its last harvest, never ``ref``.
    """
    job, paths = run.job, run.dir
    ws = paths.workspace
    repo = ensure_job_repo(run)
    if job.volume is not None:
        _setup_volume(run, repo)
        return ws
    if job.workspace_state == WS_READY and is_real_dir(ws):
        return ws
    for leftover in paths.setup_leftovers():
        delete_tree(leftover, paths.path, allow_tmp=True)
    if os.path.lexists(ws):
        delete_tree(ws, paths.path)
    tmp = paths.setup_tmp(os.getpid())
    commit = job.harvested_commit or job.base_commit
    assert commit is not None
    try:
        gitops.clone_workspace(repo, tmp, job.branch, commit, job.repo)
    except GitError as exc:
        _discard(tmp, paths.path)
        raise _disk_full(exc) or exc from None
    except BaseException:
        _discard(tmp, paths.path)
        raise
    os.replace(tmp, ws)
    job.workspace_state = WS_READY
    run.save()
    return ws


def _setup_volume(run: JobRun, repo: Path) -> None:
    """The workspace as the named volume ``job.volume`` on the job's engine: a clone made
    here (as for a bind mount) and sent into the volume, owned by the step's user."""
    from logist import containers, volumes
    from logist.container_spec import helper_image

    job, paths = run.job, run.dir
    cli = run.dock.client()
    if job.workspace_state == WS_READY and containers.volume_exists(cli, job.volume):
        return
    job_dir = paths.path
    assert job.volume is not None
    for leftover in paths.setup_leftovers():
        delete_tree(leftover, job_dir, allow_tmp=True)
    if containers.volume_exists(cli, job.volume):  # half-made: a killed setup's
        containers.stop_and_remove(containers.using_volume(cli, job.volume), grace=0)
        containers.remove_volume(cli, job.volume)
    image = helper_image()
    containers.ensure_image(cli, image, "missing")
    root = run.store.root
    containers.create_volume(cli, job.volume, job_id=job.id, jobs_root=root, owner=owner_id())
    tmp = paths.setup_tmp(os.getpid())
    commit = job.harvested_commit or job.base_commit
    assert commit is not None
    try:
        gitops.clone_workspace(repo, tmp, job.branch, commit, job.repo)
        volumes.put_tree(cli, run, tmp, image=image)
    except GitError as exc:
        raise _disk_full(exc) or exc from None
    finally:
        _discard(tmp, job_dir)
    job.workspace_state = WS_READY
    run.save()


def ensure_job_repo(run: JobRun) -> Path:
    """logist's own repository of the job (``$JOB_DIR/repo.git``), holding the base commit and
    every harvest; made from the source (or its mirror), plus ``result.bundle`` or the source's
    job branch when a job resumes after its repository was removed. The caller holds the lock."""
    job, paths = run.job, run.dir
    job_dir, repo = paths.path, paths.repo
    wanted = job.harvested_commit or job.base_commit
    ready = is_real_dir(repo) and (repo / "HEAD").is_file()
    if ready and wanted and gitops.commit_of(repo, wanted) == wanted:
        return repo
    origin = _origin(run.store, job)
    for leftover in paths.repo_leftovers():  # a killed setup's (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = paths.repo_tmp(os.getpid())
    try:
        gitops.make_job_repo(origin, tmp)
        if job.base_commit is None:
            job.base_commit = gitops.resolve_ref(origin, job.ref)
            run.save()
        if job.harvested_commit:
            _restore_harvest(run, tmp, origin)
        else:
            gitops.set_ref(tmp, f"refs/heads/{job.branch}", job.base_commit)
    except GitError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _source_exists(job):
            raise UsageError(f"source {job.repo} has vanished since the job was created") from None
        raise _disk_full(exc) or exc from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(repo):
        delete_tree(repo, job_dir)
    os.replace(tmp, repo)
    return repo


def _restore_harvest(run: JobRun, repo: Path, origin: Path) -> None:
    """Bring the job branch (and kept refs) back into a remade repository: from
    ``result.bundle`` (logist's own, fsck'd again) or else the source's ``logist/<id>``."""
    job, bundle = run.job, run.dir.result
    specs = [f"+refs/heads/{job.branch}:refs/heads/{job.branch}"]
    if bundle.is_file() and not bundle.is_symlink():
        specs.append(f"+refs/logist/{job.id}/*:refs/logist/{job.id}/*")
        gitops.fetch_bundle_into(repo, bundle, specs)
    elif not is_url(job.repo):
        gitops.git(
            f"--git-dir={repo}",
            *gitops.FSCK,
            "fetch",
            "--quiet",
            "--no-tags",
            "--",
            str(origin),
            *specs,
            trust=origin,
        )
    if gitops.commit_of(repo, f"refs/heads/{job.branch}") is None:
        raise LogistError(f"job branch {job.branch} not found to resume from")
    job.harvested_commit = gitops.commit_of(repo, f"refs/heads/{job.branch}")
    run.save()


def _origin(store: Store, job: Job) -> Path:
    """The trusted repository the job's code comes from: the source, or its mirror."""
    if not is_url(job.repo):
        origin = Path(job.repo)
        if not origin.is_dir():
            raise UsageError(f"source {job.repo} has vanished since the job was created")
        return origin
    key = gitops.source_key(job.repo)
    mirror = store.private_dir("mirrors") / f"{key}.git"
    with gitops.file_lock(store.private_dir("locks") / f"mirror-{key}.lock"):
        try:
            gitops.update_mirror(job.repo, mirror)
        except GitError:
            if not _source_exists(job):
                raise UsageError(
                    f"source {job.repo} has vanished since the job was created"
                ) from None
            raise
    return mirror


def has_workspace(paths: JobDir) -> bool:
    """Whether anything of a workspace (or a half-made one) is in the job directory."""
    return os.path.lexists(paths.workspace) or bool(paths.setup_leftovers())


def _discard(tmp: Path, job_dir: Path) -> None:
    if os.path.lexists(tmp):
        delete_tree(tmp, job_dir, allow_tmp=True)


def _source_exists(job: Job) -> bool:
    """Whether the source still answers as a git repository (asked after a failed clone)."""
    if is_url(job.repo):
        try:
            gitops.check_remote_source(job.repo, None)
        except UsageError:
            return False
        return True
    path = Path(job.repo)
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _disk_full(exc: GitError) -> LogistError | None:
    text = exc.stderr.lower()
    if "no space left" in text or "disk quota" in text:
        return LogistError(f"disk full while setting up the workspace: {exc}", exit_code=3)
    return None


def make_writable_for(run: JobRun, ws: Path) -> None:
    """Let the step's ``UID:GID`` write the workspace. As root: ownership, walked fd-based
    without following a symlink. Not root: a short-lived root helper changes the owner (never
    a world-writable workspace); nothing to do when the step runs as us."""
    job = run.job
    if job.volume is not None:
        return  # the volume's files were written as the step's user
    uid, gid = (int(x) for x in job.user.split(":"))
    me = os.geteuid()
    if uid == me:
        return
    if me == 0:
        safefs.chown_tree(ws, uid, gid)
        return
    from logist import containers

    done = containers.run_as_root(
        run.dock.client(),
        images=(containers.BUSYBOX, "logist/step:latest"),
        command=["chown", "-hR", f"{uid}:{gid}", "/workspace"],
        job_id=job.id,
        jobs_root=run.store.root,
        owner=owner_id(),
        host_path=ws,
        mount_at="/workspace",
    )
    if not done:
        raise LogistError(
            f"could not hand the workspace to {job.user} (no helper image: run "
            "scripts/build-images.sh)",
            exit_code=3,
        )


def processes_using(path: Path) -> list[tuple[int, str]]:
    """Host processes whose working directory or an open file is inside ``path``."""
    target = os.path.realpath(path)
    prefix = target + "/"
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
        with contextlib.suppress(OSError):
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        for link in links:
            try:
                dest = os.readlink(link)
            except OSError:
                continue
            if dest == target or dest.startswith(prefix):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
                except OSError:
                    cmd = b"?"
                found.append((pid, cmd.decode(errors="replace")[:120]))
                break
    return found


def terminate(pids: list[int], grace: float = 2.0) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


__all__ = [
    "ensure_job_repo",
    "make_writable_for",
    "prepare_workspace",
    "setup_workspace",
]
