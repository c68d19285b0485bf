"""The job's workspace: ``setup_workspace`` (one fresh clone per job of logist's own repository
of the job, ``harvest.ensure_job_repo``; it shares no file with the source) and the hand-over to
the step's user; its deletion is ``safefs.delete_tree``. No git command runs in a workspace here:
once a step has run, its repository is read only by the helper container (``logist/sandbox.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from logist import gitops, safefs
from logist.errors import GitError, LogistError, UsageError
from logist.harvest import ensure_job_repo
from logist.hostprocs import discard_leftover
from logist.jobrun import JobRun
from logist.layout import SETUP_TMP, JobDir
from logist.model import WS_READY
from logist.safefs import delete_tree, is_real_dir
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
        discard_leftover(leftover, paths.path)
    if os.path.lexists(ws):
        delete_tree(ws, paths.path)
    tmp = paths.setup_tmp(os.getpid())
    commit = _checked(run, repo)
    try:
        gitops.clone_workspace(repo, tmp, job.branch, commit, job.repo)
    except GitError as exc:
        _discard(tmp, paths.path)
        raise gitops.disk_full(exc) or exc from None
    except BaseException:
        _discard(tmp, paths.path)
        raise
    os.replace(tmp, ws)
    paths.set_aside.unlink(missing_ok=True)  # what a killed harvest set aside went with the old
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
        discard_leftover(leftover, job_dir)
    if containers.volume_exists(cli, job.volume):  # half-made: a killed setup's
        containers.stop_and_remove(containers.using_volume(cli, job.volume), grace=0)
        containers.remove_volume(cli, job.volume)
    image = helper_image()
    containers.ensure_image(cli, image, "missing")
    root = run.store.root
    containers.create_volume(cli, job.volume, job_id=job.id, jobs_root=root, owner=owner_id())
    tmp = paths.setup_tmp(os.getpid())
    commit = _checked(run, repo)
    try:
        gitops.clone_workspace(repo, tmp, job.branch, commit, job.repo)
        volumes.put_tree(cli, run, tmp, image=image)
    except GitError as exc:
        raise gitops.disk_full(exc) or exc from None
    finally:
        _discard(tmp, job_dir)
    paths.set_aside.unlink(missing_ok=True)
    job.workspace_state = WS_READY
    run.save()


def _checked(run: JobRun, repo: Path) -> str:
    """The commit the workspace is checked out at; the source's (untrusted content) within
    ``max_tree_paths`` first, so a tree that repeats its subtrees cannot fill the disk on the
    host's checkout (a harvest's commits passed the same bound on their way in).

    Raises:
        UsageError: over the bound (exit 2; the job fails, nothing is checked out).
    """
    from logist import intake

    job = run.job
    commit = job.harvested_commit or job.base_commit
    assert commit is not None
    if commit == job.base_commit:
        most = job.limits.max_tree_paths
        try:
            paths = intake.tree_paths(repo, commit, job.limits)
        except GitError as exc:  # a malformed tree of the source's
            raise UsageError(f"commit {commit[:12]} of {job.repo}: {exc}") from None
        if paths > most:
            raise UsageError(
                f"commit {commit[:12]} of {job.repo} has over {most:,} paths in its tree "
                "(max_tree_paths): not checked out"
            )
    return commit


def has_workspace(paths: JobDir) -> bool:
    """Whether anything of a workspace (or a half-made one) is in the job directory."""
    return os.path.lexists(paths.workspace) or bool(paths.setup_leftovers())


def _discard(tmp: Path, job_dir: Path) -> None:
    if os.path.lexists(tmp):
        delete_tree(tmp, job_dir, allow_tmp=True)


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


__all__ = [
    "make_writable_for",
    "prepare_workspace",
    "setup_workspace",
]
