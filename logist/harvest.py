"""Harvest: commit a step's work on the job branch, then bundle it and land it in the source."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from logist import gitops
from logist.errors import GitError, LogistError
from logist.model import WS_REMOVING, Job
from logist.spec import is_url
from logist.store import Store, owner_id
from logist.workspace import workspace_valid


def stale_git_locks(ws: Path) -> None:
    """Remove ``.git/index.lock`` left by a step that was killed mid-git (no container runs)."""
    lock = ws / ".git" / "index.lock"
    if lock.is_file() and not lock.is_symlink():
        os.unlink(lock)


def _unreadable_foreign(ws: Path) -> bool:
    """Walk ``ws`` (no symlinks followed), making our own unreadable entries readable; say
    whether something of another uid stays unreadable to us."""
    me = os.geteuid()
    foreign = False
    stack = [str(ws)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if not is_dir and not stat.S_ISREG(st.st_mode):
                continue
            if not os.access(entry.path, os.R_OK | (os.X_OK if is_dir else 0)):
                if st.st_uid != me:
                    foreign = True
                    continue
                os.chmod(entry.path, stat.S_IMODE(st.st_mode) | (0o700 if is_dir else 0o400))
            if is_dir:
                stack.append(entry.path)
    return foreign


def make_readable(store: Store, job: Job, ws: Path) -> None:
    """A non-root logist must read everything a step made before committing it: what a step
    running as another user (root) left unreadable is opened (``chmod -R a+rX``) by a
    short-lived root helper container, else git would skip or refuse it and work would be lost
    to cleanup."""
    if os.geteuid() == 0 or not _unreadable_foreign(ws):
        return
    from logist import containers

    containers.run_as_root(
        containers.client(),
        images=(containers.BUSYBOX, job.image),
        command=["chmod", "-R", "a+rX", "/workspace"],
        job_id=job.id,
        jobs_root=store.root,
        owner=owner_id(),
        host_path=ws,
        mount_at="/workspace",
    )


def harvest(store: Store, job: Job, ws: Path, label: str) -> str:
    """Commit everything in ``ws`` as ``logist: <id> <label>``; record the commit."""
    stale_git_locks(ws)
    make_readable(store, job, ws)
    commit = gitops.commit_all(ws, f"logist: {job.id} {label}")
    if commit != job.harvested_commit:
        job.harvested_commit = commit
        store.save(job)
    return commit


def finish(store: Store, job: Job, ws: Path) -> None:
    """Write ``result.bundle`` from the job branch and, for a local source, set the source's
    ``logist/<id>`` (under a per-source lock, retried on git's lock files). Idempotent."""
    bundle = store.job_dir(job.id) / "result.bundle"
    head = gitops.branch_commit(ws, job.branch)
    job.harvested_commit = head or job.harvested_commit
    if not bundle.is_file() or job.bundled_commit != job.harvested_commit:
        gitops.write_bundle(ws, job.branch, bundle)
        job.bundled_commit = job.harvested_commit
        job.result_bundle = str(bundle)
        job.result_branch = None
    if not is_url(job.repo) and job.result_branch is None:
        source = Path(job.repo)
        try:
            lock = store.private_dir("locks") / f"source-{gitops.source_key(job.repo)}.lock"
            with gitops.file_lock(lock):
                gitops.publish_branch(source, bundle, job.branch)
            job.result_branch = job.branch
        except GitError as exc:
            job.error = f"could not set {job.branch} in {source}: {exc}"
    store.save(job)


def last_started_step(job: Job) -> int | None:
    started = [s.index for s in job.steps if s.started_at]
    return max(started) if started else None


def harvest_leftover(store: Store, job: Job, ws: Path) -> None:
    """Before a workspace goes: commit what is not yet in the job branch, then ``finish``.
    Raises ``LogistError`` (exit 4: the workspace must be kept) when that fails."""
    if job.workspace_state == WS_REMOVING:
        return  # an earlier cleanup harvested, then began deleting: the record is the work
    if not workspace_valid(ws, job.branch):
        return  # .git gone (a partial removal): the recorded harvest is the work
    make_readable(store, job, ws)
    try:
        if gitops.has_unharvested(ws, job.harvested_commit):
            n = last_started_step(job)
            harvest(store, job, ws, f"step {n}" if n else "setup")
        finish(store, job, ws)
    except GitError as exc:
        raise LogistError(f"harvest failed, workspace kept: {exc}", exit_code=4) from None
