"""logist's own repository of the job (``repo.git``) and the harvests into it: made from the
source or its mirror (``ensure_job_repo``); a step's work, made into a commit by the helper
container, checked and accepted into it (``harvest``, ``accept``); then ``result.bundle`` and
the source's ``logist/<id>`` written from it (``finish``).

The helper is handed in by the caller (``Helper``: a ``logist.sandbox.Sandbox``): nothing here
runs a container, nor git in a workspace. What the helper hands back is untrusted: the bundle is
copied out of the exchange directory without following a link, fetched with every object
fsck'd, and the new commit must be a commit that descends from the last harvest, so nothing
harvested before can be lost."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from logist import gitops, intake, notes
from logist.errors import GitError, HarvestFailed, LogistError, UsageError
from logist.helper import GIT_KEPT, HarvestOutput
from logist.hostprocs import discard_leftover
from logist.jobrun import JobRun
from logist.layout import JobDir
from logist.model import WS_REMOVING, Job
from logist.safefs import delete_tree, is_real_dir
from logist.spec import is_url
from logist.store import Store

_BUNDLE_NAME = re.compile(r"[0-9a-f]{16}\.bundle")
_NONCE = re.compile(r"[0-9a-f]{16}")
_OWED = "owed"  # in .set-aside: a harvest and its write-back are owed before the next step
_NOT_IN_REFS = frozenset(" ~^:?*[\\")  # git check-ref-format's, with the unprintable

Notify = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Helper(Protocol):
    """The job's helper container as a harvest asks it (``logist.sandbox.Sandbox``), made and
    closed by the caller: every git command over the workspace runs there, none here."""

    def workspace_present(self) -> bool:
        """Whether the workspace it mounts is there."""

    def harvest(
        self,
        *,
        previous: str,
        message: str,
        nonce: str,
        unfinished: list[str],
        write_back: bool = True,
    ) -> HarvestOutput:
        """Commit the workspace's work on top of ``previous``; what it hands back is data.
        ``nonce`` marks what it sets aside meanwhile; names ``unfinished`` harvests set
        aside (killed before they put them back) are put back first."""

    def write_back(self, commit: str) -> list[str]:
        """Make the workspace's repository show ``commit``; warnings. ``HarvestFailed``
        when it failed (the step's own .git may be left)."""

    def release(self) -> None:
        """Start removing the helper (its last harvest is in)."""

    def close(self) -> None:
        """Remove the helper, or wait for ``release`` to have removed it."""


# --- logist's repository of the job ---------------------------------------------------------------


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
        discard_leftover(leftover, job_dir)
    tmp = paths.repo_tmp(os.getpid())
    try:
        if job.base_commit is None:
            job.base_commit = gitops.resolve_ref(origin, job.ref)
            run.save()
        try:
            gitops.make_job_repo(origin, tmp, job.base_commit, job.branch)
        except GitError as exc:  # a source that answers but cannot give it: corrupt objects
            cannot = f"copy commit {job.base_commit} from it"
            raise _source_failure(job, exc, cannot) from None
        if job.harvested_commit:  # a resume: the job branch, from result.bundle or the source
            source = None if is_url(job.repo) else origin
            kept = f"refs/logist/{job.id}/"
            restored = gitops.restore_branch(tmp, job.branch, kept, paths.result, source)
            if restored is None:
                raise LogistError(f"job branch {job.branch} not found to resume from")
            job.harvested_commit = restored
            run.save()
    except GitError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _source_failure(job, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(repo):
        delete_tree(repo, job_dir)
    os.replace(tmp, repo)
    return repo


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
        except GitError as exc:
            raise _source_failure(job, exc, "mirror it") from None
    return mirror


def _source_failure(job: Job, exc: GitError, cannot: str | None = None) -> LogistError:
    """What git failing over the job's source means: the source gone (exit 2), the disk full
    (exit 3); else, where ``cannot`` says what git could not do with a source that answers,
    its content (exit 2, git's last line), or ``exc`` itself. The source is asked once."""
    if not gitops.source_answers(job.repo, url=is_url(job.repo)):
        return UsageError(f"source {job.repo} has vanished since the job was created")
    if (full := gitops.disk_full(exc)) is not None:
        return full
    if cannot is None:
        return exc
    tail = exc.stderr.strip().splitlines()[-1:] or ["no output"]
    return UsageError(f"source {job.repo}: git cannot {cannot}: {tail[0]}")


# --- harvests -------------------------------------------------------------------------------------


def harvest(
    run: JobRun,
    sandbox: Helper,
    label: str,
    notify: Notify = _stderr,
    write_back: bool = True,
    last: bool = False,
) -> str:
    """Commit everything in the workspace as ``logist: <id> <label>`` (in the helper), accept
    it into logist's repository and record it; return the job branch's commit. ``last``: no
    step follows, so the helper's removal starts as soon as it has answered.
    Raises ``HarvestFailed`` (exit 4: the workspace must be kept)."""
    job = run.job
    previous = job.harvested_commit or job.base_commit
    assert previous is not None
    message = f"logist: {job.id} {label}"
    nonce, unfinished = secrets.token_hex(8), _unfinished(run.dir)
    # until it answers: a harvest killed meanwhile (its deadline, its runner) leaves nested
    # repositories' .git under names marked with it, which the next one puts back; and until
    # its write-back is done, a run resumed harvests before its next step
    _mark(run.dir, [*unfinished, nonce], owed=True)
    out = sandbox.harvest(
        previous=previous,
        message=message,
        nonce=nonce,
        unfinished=unfinished,
        write_back=write_back,
    )
    if out.cut:  # the helper bounds its answer: one over that is not read as whole (red team)
        raise HarvestFailed("the harvest helper's answer was over 1 MiB: refused")
    # it ended: what it and its killed elders set aside is back, but names a new .git took
    aside = [x for x in out.aside if x in unfinished]
    _mark(run.dir, aside, owed=True)
    done = out.written_back  # else a write-back follows: config and hooks never survive
    if last and done:
        sandbox.release()
    odd, job.unkept = _unkept(out, f"refs/logist/{job.id}/")
    if job.unkept:  # no work lost to a bound: the workspace has them, and stays (red team)
        odd.append(
            f"{job.unkept} refs the step made are not in the job's result; its workspace has "
            f"them, and a cleanup keeps it unless forced (`logist job cleanup {job.id} --force`)"
        )
    for warning in [*out.warnings, *odd]:
        notify(f"logist: {job.id}: warning: {warning}")
    commit = accept(run, out, previous)
    job.harvested_commit = commit
    run.save()  # the commit, and the step's end the caller recorded
    if out.git_kept:  # its work is in; no step may meet the step's config and hooks
        raise HarvestFailed(GIT_KEPT)
    if not done:
        for warning in sandbox.write_back(commit):
            notify(f"logist: {job.id}: {warning}")
    if write_back:  # the workspace's repository is logist's again
        _mark(run.dir, aside, owed=False)
    return commit


def owes_harvest(paths: JobDir) -> bool:
    """Whether a harvest of the workspace never answered or was never written back (its
    runner killed, say): a run then harvests before its next step."""
    return _OWED in _marks(paths)


def _mark(paths: JobDir, nonces: list[str], *, owed: bool) -> None:
    """``$JOB_DIR/.set-aside``: the nonces whose names may stay set aside in the workspace,
    and whether a harvest is owed (none of either: no file)."""
    lines = [*nonces, _OWED] if owed else nonces
    if lines:
        paths.set_aside.write_text("".join(f"{x}\n" for x in lines))
    else:
        paths.set_aside.unlink(missing_ok=True)


def _unfinished(paths: JobDir) -> list[str]:
    """The nonces of earlier harvests of this workspace that never answered (at most 16)."""
    return [x for x in _marks(paths) if _NONCE.fullmatch(x)][-16:]


def _marks(paths: JobDir) -> list[str]:
    """What ``_mark`` wrote (none: no file)."""
    try:
        return paths.set_aside.read_text(errors="replace").split()
    except OSError:
        return []


def accept(run: JobRun, out: HarvestOutput, previous: str) -> str:
    """Check what a helper handed back and take it into the job's repository."""
    job, repo = run.job, run.dir.repo
    commit = out.commit or ""
    prefix = f"refs/logist/{job.id}/"
    if not gitops.is_oid(commit):
        raise HarvestFailed("harvest refused: the helper named no commit")
    if out.bundle is not None:
        copy = _copy_out(run.dir, out.bundle)
        try:
            intake.index_bundle(repo, copy, job.limits)
        except GitError as exc:
            raise HarvestFailed(f"harvest refused (the bundle failed its checks): {exc}") from None
        finally:
            copy.unlink(missing_ok=True)
    named = {name: oid for name, oid in out.refs.items() if _kept_ref_ok(name, prefix)}
    types = intake.object_types(repo, [commit, *named.values()], job.limits)
    if types.get(commit) != "commit":
        raise HarvestFailed(f"harvest refused: {commit} is not a commit logist has")
    if not gitops.is_ancestor(repo, previous, commit):
        raise HarvestFailed(f"harvest refused: {commit} does not contain the last harvest")
    gitops.update_refs(repo, {f"refs/heads/{job.branch}": commit})  # first, on its own
    kept = {name: oid for name, oid in named.items() if oid in types}
    # the kept refs mirror the workspace's: old ones go first, so a/b then a never clash
    old = gitops.refs(repo, prefix)
    try:
        gitops.update_refs(repo, {name: None for name in old if kept.get(name) != old[name]})
        gitops.update_refs(repo, {n: o for n, o in kept.items() if old.get(n) != o})
    except GitError as exc:
        raise HarvestFailed(f"kept refs could not be set: {exc}") from None
    return commit


def _kept_ref_ok(name: str, prefix: str) -> bool:
    """A kept ref's name: under the job's prefix, ``heads/`` or ``tags/`` then components git
    takes (printable, any script: a step's ``fix#12`` or ``feature/ünï`` is its work too), or
    the stash."""
    if not name.startswith(prefix):
        return False
    parts = name[len(prefix) :].split("/")
    if parts == ["stash"]:
        return True
    return len(parts) >= 2 and parts[0] in ("heads", "tags") and all(map(_ref_part, parts[1:]))


def _ref_part(part: str) -> bool:
    """One component of a ref name as ``git check-ref-format`` takes it (and printable)."""
    return (
        part.isprintable()
        and part not in ("", "@")
        and not part.startswith(".")
        and not part.endswith((".lock", "."))
        and ".." not in part
        and "@{" not in part
        and not _NOT_IN_REFS.intersection(part)
    )


def _unkept(out: HarvestOutput, prefix: str) -> tuple[list[str], int]:
    """How many refs the helper named, or said it left, are not kept (a name git would not
    take, one not UTF-8, the helper's bounds), and a warning naming those it sent."""
    odd = [name for name in out.refs if not _kept_ref_ok(name, prefix)]
    warnings = []
    if odd or out.unread:
        shown = ", ".join(
            repr(name[len(prefix) :] if name.startswith(prefix) else name)[:80] for name in odd[:3]
        )
        more = max(len(odd) - 3, 0) + out.unread
        shown += f"{', ' if shown else ''}{more} more" if more > 0 else ""
        warnings.append(f"names logist does not take as a ref's: {shown}")
    return warnings, len(odd) + out.unread + out.over


def _copy_out(job_dir: JobDir, name: str) -> Path:
    """Copy a bundle out of the exchange directory: no symlink followed, a regular file only."""
    if not _BUNDLE_NAME.fullmatch(name):
        raise HarvestFailed("harvest refused: the helper named a strange bundle")
    dir_fd = os.open(job_dir.exchange, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO: no wait
            src = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            raise HarvestFailed(f"harvest refused: bundle {name}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                raise HarvestFailed("harvest refused: the bundle is not a regular file")
            dest = job_dir.incoming(name)
            with open(dest, "wb") as fh:
                while chunk := os.read(src, 1 << 20):
                    fh.write(chunk)
        finally:
            os.close(src)
        os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return dest


def finish(run: JobRun) -> None:
    """Write ``result.bundle`` from logist's repository and, for a local source, set the
    source's ``logist/<id>`` (under a per-source lock, retried on git's lock files; objects
    fsck'd on the way in). Idempotent."""
    job, repo, bundle = run.job, run.dir.repo, run.dir.result
    if not is_real_dir(repo) or job.harvested_commit is None:
        return
    kept = gitops.refs(repo, f"refs/logist/{job.id}/")
    names = [f"refs/heads/{job.branch}", *sorted(kept)]
    state = job.harvested_commit
    if kept:  # the kept refs can change while the branch does not
        text = "\n".join(f"{k} {v}" for k, v in sorted(kept.items()))
        state += "+" + hashlib.sha1(text.encode()).hexdigest()[:12]
    if not bundle.is_file() or job.bundled_commit != state:
        if job.base_commit is not None:
            job.notes = notes.scan(repo, job.base_commit, job.harvested_commit, job.limits)
        gitops.write_bundle(repo, names, bundle)
        job.bundled_commit = state
        job.result_bundle = str(bundle)
        job.result_branch = None
    if not is_url(job.repo) and job.result_branch is None:
        source = Path(job.repo)
        try:
            lock = run.store.private_dir("locks") / f"source-{gitops.source_key(job.repo)}.lock"
            with gitops.file_lock(lock):
                gitops.publish_branch(source, repo, job.branch, job.harvested_commit)
            job.result_branch = job.branch
        except GitError as exc:
            job.error = f"could not set {job.branch} in {source}: {exc}"
    run.save()


def session_label(job: Job) -> str:
    """The label of a session's next harvest (``session harvest N``), counted in its record."""
    assert job.session is not None
    k = int(job.session.get("harvests") or 0) + 1
    job.session["harvests"] = k
    return f"session harvest {k}"


def leftover_label(job: Job) -> str:
    """What a harvest of a workspace's leftover work is called: after its last step."""
    n = last_started_step(job)
    return session_label(job) if job.session is not None else f"step {n}" if n else "setup"


def last_started_step(job: Job) -> int | None:
    started = [s.index for s in job.steps if s.started_at]
    return max(started) if started else None


def harvest_leftover(run: JobRun, sandbox: Helper, notify: Notify = _stderr) -> None:
    """Before a workspace goes: commit what is not yet in the job branch (in ``sandbox``, a
    helper of its own that the caller made; it is closed once the harvest is in), then
    ``finish``. Raises ``LogistError`` (exit 4: the workspace must be kept) when that fails."""
    job = run.job
    if job.workspace_state == WS_REMOVING:
        return  # an earlier cleanup harvested, then began deleting: the record is the work
    if (job.harvested_commit or job.base_commit) is None:
        return
    if not sandbox.workspace_present():
        return
    try:
        ensure_job_repo(run)
        harvest(run, sandbox, leftover_label(job), notify, write_back=False)
        sandbox.close()  # the helper holds no work now: it goes before the host's own steps
        finish(run)
    except (GitError, HarvestFailed) as exc:
        raise LogistError(f"harvest failed, workspace kept: {exc}", exit_code=4) from None
