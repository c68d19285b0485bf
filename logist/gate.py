"""The gate of a step that starts beside its job's proxy (``--allow-host``, Docker).

The proxy's start (a container on two networks) and the first step's took turns: the step's
environment named the proxy's address, which the engine gives only once the proxy runs, and no
command of the step's may run before the proxy listens. Now the steps name the proxy by its
alias on the job's network (``logist-proxy``), so the first step's container starts beside
the proxy's, and its entrypoint is the gate (``helper/gate.sh``, run by the image's own
``/bin/sh``): it reads one line from a FIFO of the job directory, mounted read-only, then
execs the image's entrypoint and the step's command (``["/bin/sh", "-c", RUN]``, as before).
logist holds the FIFO open from before the step's start to after its end, and writes ``go``
once the proxy listens (``no`` if it did not start). The gate is no boundary: a step that ran
early would only find the proxy not yet there.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from logist import helper

# without its comments: the text is the argument of `sh -c` that `ps` shows in the step
GATE = "".join(x for x in helper.script("gate.sh").splitlines(True) if not x.startswith("#"))
MOUNTED_AT = "/run/logist/gate"


class Gate:
    """The FIFO at ``path`` (made anew), held open by this process until ``close``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a killed run's
        os.mkfifo(path, 0o600)
        # the step's user reads it; a step of logist's own uid, or root, could write (a read-only
        # mount does not stop a FIFO's writers): it would only open its own gate
        os.chmod(path, 0o644)
        # read and write: never blocks, and a reader's open never waits for a writer
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.said: bool | None = None
        self.opened_at: float | None = None  # when it said go (monotonic): the step's clock

    def mount(self) -> Any:
        import docker

        return docker.types.Mount(MOUNTED_AT, str(self.path), type="bind", read_only=True)

    @staticmethod
    def entrypoint(image_entrypoint: list[str] | None) -> list[str]:
        """The step's entrypoint: the gate, then the image's own (``docker inspect`` keeps
        the step's command as it was)."""
        return ["/bin/sh", "-c", GATE, "logist-gate", MOUNTED_AT, *(image_entrypoint or [])]

    def say(self, go: bool) -> None:
        """Let the step run (``go``), or end it unrun; once."""
        if self.said is not None or self._fd is None:
            return
        self.said = go
        if go:
            self.opened_at = time.monotonic()
        with contextlib.suppress(OSError):  # full of a step's bytes: its own gate stays shut
            os.write(self._fd, b"go\n" if go else b"no\n")

    def close(self) -> None:
        """Close and remove the FIFO (after the step's container is gone: a line not yet read
        would be lost, and a gate opening it then would wait for a writer forever)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
