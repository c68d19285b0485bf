"""Reading a spec file, which may come from the repository under test: bounded, no device, no
link to a file."""

from __future__ import annotations

import os
import re
from pathlib import Path

from logist.errors import UsageError

MAX_SPEC_BYTES = 1 << 20  # a spec file's size on disk
# a descriptor the operator names (``--file /dev/stdin < spec.yaml``): read whatever it is
FD_PATH = re.compile(r"/dev/stdin|/dev/fd/[0-9]+|/proc/self/fd/[0-9]+")


def read_spec(path: Path) -> str:
    """The text of a spec file: a regular file or a pipe (``<(...)``), at most
    ``MAX_SPEC_BYTES``; a device (``/dev/zero``), a directory, or a link to a file (a
    repository's spec.yaml -> a host file, its keys then shown in errors; or -> a host's named
    pipe) is refused (exit 2), but for a descriptor's path and an anonymous pipe's link."""
    import errno
    import fcntl
    import stat

    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO nobody writes to reads as empty
    link = False
    try:
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            fd, link = os.open(path, flags), True  # /dev/fd/N of a pipe is a link
    except OSError as exc:
        raise UsageError(f"cannot read spec {path}: {exc.strerror}") from None
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise UsageError(f"cannot read spec {path}: not a regular file")
        if link and not (FD_PATH.fullmatch(str(path)) or _anonymous_pipe(fd)):
            raise UsageError(f"cannot read spec {path}: a symbolic link (give its target)")
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read spec {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_SPEC_BYTES:
        raise UsageError(f"spec {path} is over {MAX_SPEC_BYTES >> 20} MiB")
    return data.decode("utf-8", errors="replace")


def _anonymous_pipe(fd: int) -> bool:
    """Whether ``fd`` is a pipe with no name (``<(...)``), not a FIFO of the file system."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:
        return False
