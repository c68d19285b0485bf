"""Host processes in a job directory's trees (found through ``/proc``): who keeps a workspace
busy, and git processes a killed runner left writing in a half-made clone."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from logist.safefs import Removal, delete_tree, is_real_dir


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


def _is_git(pid: int) -> bool:
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return name == "git" or name.startswith("git-")


def discard_leftover(tmp: Path, job_dir: Path) -> Removal:
    """Remove a killed setup's half-made clone (the caller holds the job's lock, so no live
    setup owns it). A git the killed runner started can outlive it (a fetch's ``index-pack``
    has no death signal of its own) and write on while the tree is removed: such gits are
    ended first. Anything else in there is left to the removal's report."""
    if not is_real_dir(tmp):  # a link is removed, never followed: nobody works "in" it
        return delete_tree(tmp, job_dir, allow_tmp=True)
    gits = [pid for pid, _cmd in processes_using(tmp) if _is_git(pid)]
    if gits:
        terminate(gits, grace=0.5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in gits):
            time.sleep(0.02)
    return delete_tree(tmp, job_dir, allow_tmp=True)


__all__ = ["discard_leftover", "processes_using", "terminate"]
