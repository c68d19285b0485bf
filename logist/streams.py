"""A step's output on its way out: secrets masked, into its log, and on to whoever listens
(the terminal, line-prefixed when several jobs run; an API caller's ``on_output``)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import BinaryIO, Protocol

from logist.errors import LogistError

MASK = b"***"


class Listener(Protocol):
    """Receives one step's output, masked, as it comes; ``close`` at the step's end."""

    def __call__(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...


ListenerFactory = Callable[[str, int], Listener]
"""Given a job id and a step's index, the listener of that step's output."""


class SecretMask:
    """Replaces every occurrence of the secrets' values in a stream of chunks by ``***``, also
    when one is split across chunks: ``feed`` holds back only a tail that could be the start of
    a secret (never more than the longest secret minus one byte); ``flush`` releases it."""

    def __init__(self, values: list[str]) -> None:
        secrets = sorted({v.encode() for v in values if v}, key=len, reverse=True)
        self.pattern = re.compile(b"|".join(re.escape(s) for s in secrets)) if secrets else None
        self.starts = {s[:i] for s in secrets for i in range(1, len(s))}
        self.longest = len(secrets[0]) if secrets else 0
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.pattern is None:
            return chunk
        data, out, pos = self.held + chunk, [], 0
        while True:
            hold = self._hold_from(data, pos)
            m = self.pattern.search(data, pos)
            if m is None or m.start() >= hold:
                out.append(data[pos:hold])
                self.held = data[hold:]
                return b"".join(out)
            out += [data[pos : m.start()], MASK]
            pos = m.end()

    def flush(self) -> bytes:
        if self.pattern is None:
            return b""
        data, self.held = self.held, b""
        return self.pattern.sub(MASK, data)

    def _hold_from(self, data: bytes, pos: int) -> int:
        """The first index from which the rest of ``data`` may be a secret's beginning."""
        for k in range(max(pos, len(data) - self.longest + 1), len(data)):
            if data[k:] in self.starts:
                return k
        return len(data)


class StepOutput:
    """Writes a step's output, secrets masked, to its log file and passes it on to a
    listener (None: the log only)."""

    def __init__(
        self, log: BinaryIO, listener: Listener | None = None, mask: SecretMask | None = None
    ) -> None:
        self.log, self.listener = log, listener
        self.mask = mask or SecretMask([])

    def __call__(self, chunk: bytes) -> None:
        self._write(self.mask.feed(chunk))

    def _write(self, chunk: bytes) -> None:
        if not chunk:
            return
        view = memoryview(chunk)
        while view:  # the log is unbuffered: each chunk is in the file at once
            view = view[self.log.write(view) :]
        if self.listener is not None:
            self.listener(chunk)

    def close(self) -> None:
        self._write(self.mask.flush())
        self.log.flush()
        if self.listener is not None:
            self.listener.close()


class TerminalLines:
    """One step's output on a shared stream: as it comes, or line by line behind ``prefix``
    (several jobs at once); ``lock`` keeps the jobs' lines whole."""

    def __init__(self, sink: BinaryIO, prefix: bytes, lock: threading.Lock) -> None:
        self.sink, self.prefix, self.lock = sink, prefix, lock
        self.partial = b""

    def __call__(self, chunk: bytes) -> None:
        if not self.prefix:
            with self.lock:
                self.sink.write(chunk)
                self.sink.flush()
            return
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > 65536:
            lines.append(self.partial)
            self.partial = b""
        if lines:
            with self.lock:  # one join in C: a flood of short lines costs no Python loop
                self.sink.write(self.prefix + (b"\n" + self.prefix).join(lines) + b"\n")
                self.sink.flush()

    def close(self) -> None:
        if self.partial:
            with self.lock:
                self.sink.write(self.prefix + self.partial + b"\n")
                self.sink.flush()
            self.partial = b""


def terminal(sink: BinaryIO, prefixed: bool) -> ListenerFactory:
    """Listeners that print each step's output on ``sink`` (behind ``[job-id] `` when
    ``prefixed``)."""
    lock = threading.Lock()

    def listener(job_id: str, step: int) -> Listener:
        return TerminalLines(sink, f"[{job_id}] ".encode() if prefixed else b"", lock)

    return listener


class CallbackError(Exception):
    """A ``LogistError`` an API caller's callback raised, carried as its cause: it is the
    caller's, so its job is interrupted (resumable), never failed as by logist's own."""


class Callback:
    """An API caller's ``on_output(step_index, chunk)`` as a listener."""

    def __init__(self, func: Callable[[int, bytes], object], step: int) -> None:
        self.func, self.step = func, step

    def __call__(self, chunk: bytes) -> None:
        try:
            self.func(self.step, chunk)
        except LogistError as exc:
            raise CallbackError(str(exc)) from exc

    def close(self) -> None:
        pass
