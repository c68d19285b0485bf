"""The jobs root: job directories, atomic manifests, the per-job OS lock, liveness."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from logist.errors import JobActive, JobNotFound, UsageError
from logist.layout import CANCEL, LOCK, LOGS, MANIFEST, WORKSPACE, JobDir
from logist.model import Job
from logist.spec import validate_id

if TYPE_CHECKING:
    from logist.dock import Docks


def default_root(option: str | None = None) -> Path:
    """``--jobs-dir``, else ``$LOGIST_JOBS_DIR``, else ``~/.logist/jobs``; absolute, without
    symlinks (one name for it however it is given: labels and mount sources compare equal),
    created private (0700), and tightened to that when it holds only jobs (``doctor`` reports
    a jobs root that others can still reach)."""
    raw = option or os.environ.get("LOGIST_JOBS_DIR") or "~/.logist/jobs"
    root = Path(raw).expanduser().absolute()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create jobs root {root}: {exc.strerror}") from None
    root = root.resolve()
    with contextlib.suppress(OSError):
        _tighten(root)
    return root


def _tighten(root: Path) -> None:
    """chmod go-rwx a jobs root that is ours and holds nothing but jobs and logist's hidden
    directories; never a shared directory (sticky, like /tmp) or one with other files in it."""
    st = os.stat(root)
    if not st.st_mode & 0o077 or st.st_uid != os.geteuid() or st.st_mode & stat.S_ISVTX:
        return
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue  # logist's own: mirrors, locks, temp directories
            job = entry.is_dir(follow_symlinks=False) and os.path.exists(
                os.path.join(entry.path, MANIFEST)
            )
            if not job:
                return
    os.chmod(root, stat.S_IMODE(st.st_mode) & ~0o077)


def private_problem(root: Path) -> str | None:
    """Why other users can reach ``root`` (None when only its owner can)."""
    st = os.stat(root)
    if not st.st_mode & 0o077:
        return None
    who = "" if st.st_uid == os.geteuid() else f"its owner, uid {st.st_uid}, can run: "
    return (
        f"{root} has mode {stat.S_IMODE(st.st_mode):o}: other users can reach what steps "
        f"leave in workspaces ({who}chmod 700 {root})"
    )


# --- process identity: the owner label -------------------------------------------------------


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot


def owner_id(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (default: this one); survives pid reuse."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process an owner id names still runs. Another host's owner counts as alive."""
    if not owner:
        return False
    try:
        host, pid, start = owner.rsplit(":", 2)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    return pid.isdigit() and _start_ticks(int(pid)) == start


# --- the per-job lock --------------------------------------------------------------------------


class _Held:
    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.fd: int | None = None
        self.count = 0
        self.thread: int | None = None  # the thread that holds it
        self.users = 0  # threads holding or waiting for it: the entry goes with the last


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def job_lock(job_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the job's OS lock (flock). Reentrant within a thread, exclusive across threads and
    processes. ``timeout=None`` waits; otherwise ``JobActive`` once it runs out."""
    key = str(job_dir)
    with _held_guard:
        held = _held.setdefault(key, _Held())
        held.users += 1
    try:
        with _mutex(held, job_dir, timeout):
            yield
    finally:
        with _held_guard:
            held.users -= 1
            if held.users == 0:  # a process that runs many jobs keeps no entry per job
                del _held[key]


@contextlib.contextmanager
def _mutex(held: _Held, job_dir: Path, timeout: float | None) -> Iterator[None]:
    deadline = None if timeout is None else time.monotonic() + timeout
    if not held.mutex.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
        raise JobActive(f"job {job_dir.name} is active in this process")
    try:
        if held.count == 0:
            held.fd = _flock(job_dir, deadline)
            held.thread = threading.get_ident()
        held.count += 1
        try:
            yield
        finally:
            held.count -= 1
            if held.count == 0:
                held.thread = None
            if held.count == 0 and held.fd is not None:
                os.close(held.fd)  # closing releases the flock
                held.fd = None
    finally:
        held.mutex.release()


def _flock(job_dir: Path, deadline: float | None) -> int:
    try:
        fd = os.open(job_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise JobNotFound(f"no job {job_dir.name!r} in {job_dir.parent}") from None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                raise JobActive(
                    f"job {job_dir.name} is active: owned by a live logist process "
                    f"({read_owner(job_dir) or 'unknown'})"
                ) from None
            time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.pwrite(fd, owner_id().encode(), 0)
    return fd


def read_owner(job_dir: Path) -> str | None:
    try:
        return (job_dir / LOCK).read_text().strip() or None
    except OSError:
        return None


def held_here(job_dir: Path) -> bool:
    """Whether the calling thread holds the job's lock (a callback of the job's own run)."""
    held = _held.get(str(job_dir))
    return held is not None and held.count > 0 and held.thread == threading.get_ident()


def is_active(job_dir: Path) -> bool:
    """True while some live process (this one included) holds the job's lock."""
    held = _held.get(str(job_dir))
    if held is not None and held.count > 0:
        return True
    try:
        fd = os.open(job_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's shared lock at once
    return False


# --- cancel requests ---------------------------------------------------------------------------


def request_cancel(job_dir: Path, why: str = "cancel") -> None:
    """Ask the job's owner to cancel: a request file carrying the time it was made."""
    write_atomic(job_dir / CANCEL, f"{time.time():.6f} {why}\n".encode())


def cancel_requested(job_dir: Path, since: float | None = None) -> bool:
    """Whether a cancel request exists (made at or after ``since``, a ``time.time()``, when
    given). A request without a readable time counts as current."""
    try:
        text = (job_dir / CANCEL).read_text()
    except OSError:
        return False
    if since is None:
        return True
    try:
        made = float(text.split()[0])
    except (IndexError, ValueError):
        return True
    return made >= since


def drop_cancel_request(job_dir: Path, before: float | None = None) -> None:
    """Remove the cancel request (only one made before ``before``, when given)."""
    if before is not None and cancel_requested(job_dir, since=before):
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(job_dir / CANCEL)


# --- manifests ---------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Store:
    """One jobs root, and the engines its jobs run on (``docks``: made by its ``Runtime``,
    one connection per engine, passed on with the store)."""

    def __init__(self, root: Path, docks: Docks | None = None) -> None:
        from logist.dock import Docks

        self.root = Path(root)
        self.docks = docks if docks is not None else Docks()

    def job_dir(self, job_id: str) -> Path:
        return self.root / validate_id(job_id)

    def dir(self, job_id: str) -> JobDir:
        """The job directory's paths (``logist/layout.py``)."""
        return JobDir(self.job_dir(job_id))

    def workspace(self, job_id: str) -> Path:
        return self.job_dir(job_id) / WORKSPACE

    def exists(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / MANIFEST).is_file()

    def create(self, job: Job) -> Path:
        """Make the job's directory with its first manifest, atomically: it is assembled in a
        hidden temp directory and renamed into place, so a crash never leaves a job directory
        without a manifest. An existing id is refused."""
        job_dir = self.job_dir(job.id)
        if job_dir.exists():
            raise UsageError(f"job {job.id!r} already exists in {self.root}")
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".create-{job.id}-", dir=self.root))
        except FileNotFoundError:
            raise UsageError(f"jobs root {self.root} is gone") from None
        try:
            (tmp / LOGS).mkdir()
            job.updated_at = job.created_at
            data = json.dumps(job.to_dict(), indent=2, sort_keys=True).encode() + b"\n"
            write_atomic(tmp / MANIFEST, data)
            os.chmod(tmp, 0o700)  # private: what steps leave is out of other users' reach
            try:
                os.rename(tmp, job_dir)  # fails if the id exists (and is not an empty dir)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise UsageError(f"job {job.id!r} already exists in {self.root}") from None
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return job_dir

    def load(self, job_id: str) -> Job:
        """The job of ``job_id``'s directory. Refused (exit 2): a directory that is a link
        (its paths would be another's), a manifest naming another job (a copied or moved
        directory: its paths, lock and containers are that job's, which may be running)."""
        job_dir = self.job_dir(job_id)
        path = job_dir / MANIFEST
        try:
            if stat.S_ISLNK(os.lstat(job_dir).st_mode):
                raise UsageError(f"job directory {job_dir} is a symbolic link: refused")
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise JobNotFound(f"no job {job_id!r} in {self.root}") from None
        except ValueError as exc:
            raise UsageError(f"manifest {path} is not valid JSON: {exc}") from None
        job = Job.from_dict(data)
        if job.id != job_id:
            raise UsageError(
                f"manifest {path} names job {job.id!r}, not {job_id!r} (a copied or moved job "
                "directory): refused"
            )
        return job

    def save(self, job: Job) -> None:
        """Write the manifest atomically; the caller holds the job's lock."""
        from logist.model import now

        job.updated_at = now()
        data = json.dumps(job.to_dict(), indent=2, sort_keys=True).encode() + b"\n"
        job_dir = self.job_dir(job.id)
        write_atomic(job_dir / MANIFEST, data)
        # temp files of writers killed mid-write (we hold the lock: no other writer is live)
        for leftover in job_dir.glob(f".{MANIFEST}.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def ids(self) -> list[str]:
        """Ids of every job directory with a manifest, sorted (a directory whose name is no
        job id is none of logist's: left out)."""
        out = []
        if not os.path.isdir(self.root):  # removed under a runtime: no job
            return out
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    validate_id(entry.name)
                except UsageError:
                    continue
                if os.path.exists(os.path.join(entry.path, MANIFEST)):
                    out.append(entry.name)
        return sorted(out)

    def lock(self, job_id: str, timeout: float | None = None) -> contextlib.AbstractContextManager:
        job_dir = self.job_dir(job_id)
        if not (job_dir / MANIFEST).is_file():
            raise JobNotFound(f"no job {job_id!r} in {self.root}")
        return job_lock(job_dir, timeout)

    def active(self, job_id: str) -> bool:
        return is_active(self.job_dir(job_id))

    def private_dir(self, name: str) -> Path:
        """A hidden directory of the jobs root (mirrors, source locks); ids never start with '.'."""
        path = self.root / f".{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path
