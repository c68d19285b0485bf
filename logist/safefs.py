"""Host file operations on an untrusted tree: fd-based, never following a symlink, iterative.

``walk`` visits a tree holding two directory fds at most, whatever its depth: it descends with
``openat(O_NOFOLLOW)`` and climbs back with ``openat("..")``, checking that ``..`` is the
directory it came from (device and inode). No recursion, so a 100,000-deep tree is no
``RecursionError`` and no fd exhaustion. ``delete_tree`` is the paranoid deletion of a job
directory's own entries (the workspace, ``repo.git``, the exchange, setup temp names) on it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from logist.errors import UsageError
from logist.layout import DELETABLE, REPO_TMP, SETUP_TMP

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeChanged(OSError):
    """The tree changed under the walk (a directory was moved): stop rather than guess."""


@dataclass
class Entry:
    """One entry of a walk: ``name`` inside the directory open as ``dir_fd``."""

    dir_fd: int
    name: str
    path: str  # for messages only: never used to open anything
    st: os.stat_result
    post: bool = False  # a directory, visited again after its contents

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


@dataclass
class _Level:
    fd_st: os.stat_result
    names: list[str]
    name: str = ""
    path: str = ""
    st: os.stat_result | None = None


def open_dir(path: str | os.PathLike) -> int:
    """Open a directory without following a symlink at its last component."""
    return os.open(path, _DIR_FLAGS)


def walk(
    top: str | os.PathLike,
    *,
    descend: Callable[[Entry], bool] = lambda e: True,
    on_error: Callable[[Entry, OSError], None] | None = None,
) -> Iterator[Entry]:
    """Every entry below ``top`` (pre-order; directories again post-order with ``post``).
    ``descend(entry)`` decides whether a directory is entered; a directory that cannot be
    opened or listed is reported to ``on_error`` and not entered."""
    fd = open_dir(top)
    try:
        stack = [_Level(os.fstat(fd), _listdir(fd), path=str(top))]
        while stack:
            level = stack[-1]
            if not level.names:
                stack.pop()
                if not stack:
                    break
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                pst = os.fstat(parent)
                if (pst.st_dev, pst.st_ino) != (stack[-1].fd_st.st_dev, stack[-1].fd_st.st_ino):
                    os.close(parent)
                    raise TreeChanged(f"{level.path} moved during the walk")
                os.close(fd)
                fd = parent
                assert level.st is not None
                yield Entry(fd, level.name, level.path, level.st, post=True)
                continue
            name = level.names.pop()
            path = f"{level.path}/{name}"
            try:
                st = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            entry = Entry(fd, name, path, st)
            yield entry
            if not entry.is_dir or not descend(entry):
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if on_error:
                    on_error(entry, exc)
                continue
            try:
                cst = os.fstat(child)
                names = _listdir(child)
            except OSError as exc:
                os.close(child)
                if on_error:
                    on_error(entry, exc)
                continue
            if (cst.st_dev, cst.st_ino) != (st.st_dev, st.st_ino):
                os.close(child)
                raise TreeChanged(f"{path} was replaced during the walk")
            os.close(fd)
            fd = child
            stack.append(_Level(cst, names, name, path, st))
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _listdir(fd: int) -> list[str]:
    with os.scandir(fd) as it:
        return [e.name for e in it]


def tree_size(top: str | os.PathLike) -> int:
    """Bytes used below ``top`` (no symlink followed); 0 if it is not a directory."""
    try:
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            return 0
    except OSError:
        return 0
    total = 0
    with contextlib.suppress(OSError):
        for e in walk(top):
            if not e.post:
                total += e.st.st_blocks * 512
    return total


def chown_tree(top: str | os.PathLike, uid: int, gid: int) -> None:
    """Give every entry of ``top`` (itself included) to ``uid:gid``; symlinks themselves."""
    fd = open_dir(top)
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    for e in walk(top):
        if not e.post and (e.st.st_uid, e.st.st_gid) != (uid, gid):
            os.chown(e.name, uid, gid, dir_fd=e.dir_fd, follow_symlinks=False)


@dataclass
class Removal:
    bytes_freed: int = 0
    foreign: list[str] = field(default_factory=list)  # not removable: another uid's
    stuck: list[str] = field(default_factory=list)  # not removable: immutable, busy, ...
    busy: list[str] = field(default_factory=list)  # worth a retry (EBUSY, ENOTEMPTY)


def remove_tree(top: str | os.PathLike, name: str) -> Removal:
    """Remove the entry ``name`` of directory ``top`` and everything below it, without following
    a symlink; directories we own are opened up (mode u+rwx) as needed. Never raises for what
    it cannot remove: the result names it."""
    import errno

    result = Removal()
    me = os.geteuid()
    busy_errnos = {errno.EBUSY, errno.ENOTEMPTY, errno.EAGAIN}
    parent = open_dir(top)
    try:
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return result
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)  # a symlink or file in its place: only it goes
            return result
        _open_up(parent, name, st, me)
        if me != 0 and st.st_uid != me and not _writable(Entry(parent, name, name, st)):
            try:  # another uid's, closed to us (a root step's chmod 000 /workspace)
                os.rmdir(name, dir_fd=parent)  # emptied by the root helper: ours to unlink
            except OSError:
                result.foreign.append(os.path.join(top, name))
            return result
        skipped: set[str] = set()

        def descend(e: Entry) -> bool:
            if me != 0 and e.st.st_uid != me and not _writable(e):
                result.foreign.append(e.path)  # the root helper removes it whole
                skipped.add(e.path)
                return False
            _open_up(e.dir_fd, e.name, e.st, me)
            return True

        def on_error(e: Entry, exc: OSError) -> None:
            (result.foreign if e.st.st_uid != me else result.stuck).append(e.path)
            skipped.add(e.path)

        def fail(e: Entry, exc: OSError) -> None:
            if exc.errno in busy_errnos:
                result.busy.append(e.path)
            elif exc.errno in (errno.EACCES, errno.EPERM) and me != 0 and e.st.st_uid != me:
                result.foreign.append(e.path)
            else:
                result.stuck.append(f"{e.path} ({exc.strerror})")

        for e in walk(os.path.join(top, name), descend=descend, on_error=on_error):
            if e.is_dir and not e.post:
                continue
            if e.post and e.path in skipped:
                continue
            try:
                if e.is_dir:
                    os.rmdir(e.name, dir_fd=e.dir_fd)
                else:
                    os.unlink(e.name, dir_fd=e.dir_fd)
                    if e.st.st_nlink == 1:
                        result.bytes_freed += e.st.st_blocks * 512
            except FileNotFoundError:
                pass
            except OSError as exc:
                if not (e.is_dir and exc.errno in busy_errnos and (result.foreign or result.stuck)):
                    fail(e, exc)
        try:
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not (exc.errno in busy_errnos and (result.foreign or result.stuck)):
                fail(Entry(parent, name, os.path.join(top, name), st), exc)
    finally:
        os.close(parent)
    return result


def _open_up(dir_fd: int, name: str, st: os.stat_result, me: int) -> None:
    """Make a directory we own listable and writable for us (``u+rwx``)."""
    if stat.S_ISDIR(st.st_mode) and st.st_uid == me and st.st_mode & 0o700 != 0o700:
        with contextlib.suppress(OSError):
            os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd)


def _writable(e: Entry) -> bool:
    return os.access(
        e.name,
        os.R_OK | os.W_OK | os.X_OK,
        dir_fd=e.dir_fd,
        effective_ids=True,
        follow_symlinks=False,
    )


def is_real_dir(path: str | os.PathLike) -> bool:
    """A directory that is not a symlink (checked with ``lstat``)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# --- a job directory's own entries ----------------------------------------------------------------


def check_inside(path: Path, job_dir: Path, *, allow_tmp: bool = False) -> Path:
    """Refuse any path but ``<job_dir>/workspace`` (logist's own ``repo.git`` and exchange
    directory, or a setup temp dir) itself."""
    job_dir = Path(os.path.realpath(job_dir))
    parent = Path(os.path.realpath(path.parent))
    ok_name = path.name in DELETABLE or (allow_tmp and path.name.startswith((SETUP_TMP, REPO_TMP)))
    if parent != job_dir or not ok_name:
        raise UsageError(f"refusing to delete {path}: not {job_dir}/workspace")
    return parent / path.name


def delete_tree(path: Path, job_dir: Path, *, allow_tmp: bool = False) -> Removal:
    """Delete the workspace at ``path`` without following symlinks, fixing the modes of
    directories we own and retrying transient errors. A symlink in its place is unlinked, its
    target untouched. What cannot be removed is reported, not raised."""
    path = check_inside(path, job_dir, allow_tmp=allow_tmp)
    return _delete_with_retries(path)


class _Busy(Exception):
    def __init__(self, result: Removal) -> None:
        super().__init__(", ".join(result.busy))
        self.result = result


@retry(
    retry=retry_if_exception(lambda exc: isinstance(exc, _Busy)),
    stop=stop_after_attempt(6),
    wait=wait_exponential(multiplier=0.05, max=1),
    reraise=True,
)
def _delete_once(path: Path) -> Removal:
    result = remove_tree(path.parent, path.name)
    if result.busy and not (result.foreign or result.stuck):
        raise _Busy(result)
    return result


def _delete_with_retries(path: Path) -> Removal:
    try:
        result = _delete_once(path)
    except _Busy as exc:  # still busy after the retries
        result = exc.result
        result.stuck += [f"{p} (busy)" for p in result.busy]
    result.busy.clear()
    return result
