"""Host processes in a job directory's trees (found through ``/proc``): who keeps a workspace
busy, and git processes a killed runner left writing in a half-made clone."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from pathlib import Path

from logist.safefs import Removal, delete_tree, is_real_dir


def processes_using(path: Path) -> list[tuple[int, str]]:
    """Host processes whose working directory or an open file is inside ``path``."""
    target = os.path.realpath(path)
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        if _uses(pid, target):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            except OSError:
                cmd = b"?"
            found.append((pid, cmd.decode(errors="replace")[:120]))
    return found


def _uses(pid: int, target: str) -> bool:
    """Whether ``pid``'s working directory, root or an open file is ``target`` or below it
    (as the process names them: in its own mount namespace, a path of its own)."""
    links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
    with contextlib.suppress(OSError):
        links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    for link in links:
        try:
            dest = os.readlink(link)
        except OSError:
            continue
        if dest == target or dest.startswith(target + "/"):
            return True
    return False


def terminate(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds to those still alive."""
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


def _our_git(pid: int) -> bool:
    """A git of this user, in this mount namespace (where its paths mean what ours do)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        ours = os.stat(f"/proc/{pid}").st_uid == os.geteuid()
        same = os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False
    return ours and same and (name == "git" or name.startswith("git-"))


def discard_leftover(tmp: Path, job_dir: Path) -> Removal:
    """Remove a killed setup's half-made clone (the caller holds the job's lock, so no live
    setup owns it). A git the killed runner started can outlive it (a fetch's ``index-pack``
    has no death signal of its own) and write on while the tree is removed: such gits (this
    user's, in this mount namespace) are killed first, each through a pidfd taken before it is
    checked again, so a reused pid is never signalled. Anything else is left to the report."""
    if not is_real_dir(tmp):  # a link is removed, never followed: nobody works "in" it
        return delete_tree(tmp, job_dir, allow_tmp=True)
    target = os.path.realpath(tmp)
    for pid, _cmd in processes_using(tmp):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone
        try:
            if _our_git(pid) and _uses(pid, target):  # still that process: the fd holds it
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                poll = select.poll()  # (select() fails on an fd over 1023)
                poll.register(fd, select.POLLIN)
                poll.poll(5000)  # readable once it has exited
        except OSError:
            pass
        finally:
            os.close(fd)
    return delete_tree(tmp, job_dir, allow_tmp=True)


__all__ = ["discard_leftover", "processes_using", "terminate"]
