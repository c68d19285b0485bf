"""The job's workspace: ``setup_workspace`` (one real clone per job) and ``delete_tree`` (the
paranoid deletion: fd-based, never follows a symlink, fixes permissions it owns)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from logist import gitops
from logist.errors import GitError, LogistError, UsageError
from logist.model import WS_READY, WS_REMOVING, Job
from logist.spec import is_url
from logist.store import Store, job_lock

TMP_PREFIX = ".workspace.tmp-"


def workspace_valid(ws: Path, branch: str) -> bool:
    """A ready workspace is a real directory with its own ``.git`` and the job branch."""
    if ws.is_symlink() or not (ws / ".git").is_dir():
        return False
    try:
        _, gitdir = gitops.git("rev-parse", "--absolute-git-dir", cwd=ws)
        if Path(gitdir.strip()) != (ws / ".git").resolve():
            return False  # a broken .git: git found a repository enclosing the jobs root
        return gitops.branch_commit(ws, branch) is not None
    except GitError:
        return False


def setup_workspace(store: Store, job_id: str) -> Path:
    """Make ``$JOB_DIR/workspace`` a clone of the job's source on branch ``logist/<id>``.

    Idempotent and safe under concurrency: it runs under the job's lock, reuses a ready
    workspace, and discards a half-made one. The clone is made in a temp directory and renamed
    into place, so a crash never leaves a workspace that looks ready but is not. Never writes to
    the source. Resuming a job whose work was harvested clones the job branch, never ``ref``.
    """
    job_dir = store.job_dir(job_id)
    with job_lock(job_dir):
        job = store.load(job_id)
        ws = job_dir / "workspace"
        if job.workspace_state == WS_READY and workspace_valid(ws, job.branch):
            return ws
        for leftover in setup_leftovers(job_dir):
            delete_tree(leftover, job_dir, allow_tmp=True)
        if ws.exists() or ws.is_symlink():
            # made, but the manifest was not updated; never a tree a cleanup began deleting
            if job.workspace_state != WS_REMOVING and workspace_valid(ws, job.branch):
                _mark_ready(store, job)
                return ws
            delete_tree(ws, job_dir)
        tmp = job_dir / f"{TMP_PREFIX}{os.getpid()}"
        try:
            _clone_into(store, job, tmp)
        except GitError as exc:
            _discard(tmp, job_dir)
            if not _source_exists(job):
                raise UsageError(
                    f"source {job.repo} has vanished since the job was created"
                ) from None
            raise _disk_full(exc) or exc from None
        except BaseException:
            _discard(tmp, job_dir)
            raise
        os.replace(tmp, ws)
        _mark_ready(store, job)
        return ws


def setup_leftovers(job_dir: Path) -> list[Path]:
    """Temp clones a killed setup left in the job directory."""
    return sorted(job_dir.glob(TMP_PREFIX + "*"))


def has_workspace(job_dir: Path) -> bool:
    """Whether anything of a workspace (or a half-made one) is in the job directory."""
    return os.path.lexists(job_dir / "workspace") or bool(setup_leftovers(job_dir))


def _discard(tmp: Path, job_dir: Path) -> None:
    if tmp.exists():
        delete_tree(tmp, job_dir, allow_tmp=True)


def _mark_ready(store: Store, job: Job) -> None:
    job.workspace_state = WS_READY
    store.save(job)


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


def _clone_into(store: Store, job: Job, dest: Path) -> None:
    """Clone the source into ``dest`` and check out the job branch at the right commit."""
    if is_url(job.repo):
        key = gitops.source_key(job.repo)
        mirror = store.private_dir("mirrors") / f"{key}.git"
        with gitops.file_lock(store.private_dir("locks") / f"mirror-{key}.lock"):
            gitops.update_mirror(job.repo, mirror)
        gitops.clone(str(mirror), dest, local=True)
        gitops.git("remote", "set-url", "origin", job.repo, cwd=dest)
        origin = mirror
    else:
        origin = Path(job.repo)
        if not origin.is_dir():
            raise UsageError(f"source {job.repo} has vanished since the job was created")
        gitops.clone(str(origin), dest, local=True)

    bundle = store.job_dir(job.id) / "result.bundle"
    if job.harvested_commit:  # resume: the job branch, from the bundle or the source's branch
        if bundle.is_file():
            gitops.fetch_branch(dest, str(bundle), job.branch)
        else:
            gitops.fetch_branch(dest, str(origin), job.branch)
        commit = gitops.branch_commit(dest, job.branch)
        if commit is None:
            raise LogistError(f"job branch {job.branch} not found to resume from")
        gitops.checkout_branch(dest, job.branch, commit)
        return
    if job.base_commit is None:
        job.base_commit = gitops.resolve_ref(origin, job.ref)
        store.save(job)
    gitops.checkout_branch(dest, job.branch, job.base_commit)


def make_writable_for(ws: Path, user: str, only: Path | None = None) -> None:
    """Let the step's ``UID:GID`` write the workspace: by ownership as root, else by mode.
    ``only`` limits the walk to a part of it (``.git`` after a harvest made new files there)."""
    uid, gid = (int(x) for x in user.split(":"))
    me = os.geteuid()
    if uid == me:
        return
    objects = os.path.join(ws, ".git", "objects") + os.sep
    for path in _walk_no_follow(only or ws):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and path.startswith(objects):
            # hardlinked with the source by the local clone: changing it changes the source
            if st.st_mode & 0o004:
                continue  # readable by the step as it is; git never writes an object file
            _unshare(path)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if me == 0 and (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
            continue
        if me == 0:
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
        elif st.st_uid == me:
            extra = 0o777 if stat.S_ISDIR(st.st_mode) else (0o777 if st.st_mode & 0o111 else 0o666)
            if st.st_mode & extra != extra:
                os.chmod(path, stat.S_IMODE(st.st_mode) | extra)


def _unshare(path: str) -> None:
    """Replace a hardlinked file by a private copy of it (the other links keep the original)."""
    tmp = f"{path}.logist-unshare"
    shutil.copy2(path, tmp)
    os.replace(tmp, path)


def _walk_no_follow(root: Path):
    yield str(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            yield os.path.join(dirpath, name)


# --- deletion ----------------------------------------------------------------------------------


@dataclass
class DeleteResult:
    bytes_freed: int = 0
    foreign: list[str] = field(default_factory=list)  # not removable: owned by another uid
    stuck: list[str] = field(default_factory=list)  # not removable: immutable, busy, ...


def check_inside(path: Path, job_dir: Path, *, allow_tmp: bool = False) -> Path:
    """Refuse any path but ``<job_dir>/workspace`` (or a setup temp dir) itself."""
    job_dir = Path(os.path.realpath(job_dir))
    parent = Path(os.path.realpath(path.parent))
    ok_name = path.name == "workspace" or (allow_tmp and path.name.startswith(TMP_PREFIX))
    if parent != job_dir or not ok_name:
        raise UsageError(f"refusing to delete {path}: not {job_dir}/workspace")
    return parent / path.name


def delete_tree(path: Path, job_dir: Path, *, allow_tmp: bool = False) -> DeleteResult:
    """Delete the workspace at ``path`` without following symlinks, fixing the modes of
    directories we own and retrying transient errors. A symlink in its place is unlinked, its
    target untouched. What cannot be removed is reported, not raised."""
    path = check_inside(path, job_dir, allow_tmp=allow_tmp)
    result = DeleteResult()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return result
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)  # a symlink (or file) where the workspace should be
        return result
    _delete_with_retries(path, result)
    return result


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, _Retry)


class _Retry(Exception):
    pass


@retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(6),
    wait=wait_exponential(multiplier=0.05, max=1),
    reraise=True,
)
def _delete_with_retries(path: Path, result: DeleteResult) -> None:
    result.foreign.clear()
    result.stuck.clear()
    parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        busy = _remove_entry(parent_fd, path.name, str(path), result)
    finally:
        os.close(parent_fd)
    if busy:
        raise _Retry(busy)


_BUSY = {errno.EBUSY, errno.ENOTEMPTY, errno.EAGAIN}


def _remove_entry(parent_fd: int, name: str, shown: str, result: DeleteResult) -> list[str]:
    """Remove ``name`` (in directory ``parent_fd``) recursively; return paths to retry."""
    busy: list[str] = []
    me = os.geteuid()
    try:
        st = os.lstat(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return busy
    if stat.S_ISDIR(st.st_mode):
        if st.st_uid == me and st.st_mode & 0o700 != 0o700:
            os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=parent_fd)
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
            )
        except PermissionError:
            (result.foreign if st.st_uid != me else result.stuck).append(shown)
            return busy
        try:
            with os.scandir(fd) as it:
                entries = [e.name for e in it]
            if entries and _foreign_unwritable(parent_fd, name, st, me):
                # nothing in it can be unlinked by us: walking it (every unlink failing) is
                # wasted work; the root helper removes it whole
                result.foreign.append(shown)
                return busy
            for child in entries:
                busy += _remove_entry(fd, child, f"{shown}/{child}", result)
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in _BUSY and not (result.foreign or result.stuck):
                busy.append(shown)
            elif exc.errno not in _BUSY:
                _record(exc, st, shown, result)
        return busy
    try:
        os.unlink(name, dir_fd=parent_fd)
        result.bytes_freed += st.st_blocks * 512 if st.st_nlink == 1 else 0
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in _BUSY:
            busy.append(shown)
        else:
            _record(exc, st, shown, result)
    return busy


def _foreign_unwritable(parent_fd: int, name: str, st: os.stat_result, me: int) -> bool:
    """Whether the directory ``name`` is another user's and we may not write it."""
    if me == 0 or st.st_uid == me:
        return False
    mode = os.W_OK | os.X_OK
    return not os.access(name, mode, dir_fd=parent_fd, effective_ids=True, follow_symlinks=False)


def _record(exc: OSError, st: os.stat_result, shown: str, result: DeleteResult) -> None:
    if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        parent_uid = None
        with contextlib.suppress(OSError):
            parent_uid = os.lstat(os.path.dirname(shown)).st_uid
        if parent_uid != os.geteuid() or st.st_uid != os.geteuid():
            result.foreign.append(shown)
            return
    result.stuck.append(f"{shown} ({exc.strerror})")


def tree_size(path: Path) -> int:
    """Bytes used by the tree at ``path`` (no symlinks followed); 0 if absent."""
    total = 0
    for p in _walk_no_follow(path) if path.is_dir() and not path.is_symlink() else ():
        with contextlib.suppress(OSError):
            total += os.lstat(p).st_blocks * 512
    return total


__all__ = [
    "DeleteResult",
    "delete_tree",
    "make_writable_for",
    "setup_workspace",
    "tree_size",
    "workspace_valid",
]
