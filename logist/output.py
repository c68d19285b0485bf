"""A step's output, bounded (contract v3, "Bounds"): no amplification by the engine, a capped
stored log, and a reader that keeps up with a step printing as fast as it can.

Over ``unix://`` or ``tcp://`` (Docker and Podman) a step's container has no log driver
(``none``): the engine keeps nothing of its output, and logist reads it by attaching to the
container before it starts (the multiplexed frames, read in large chunks; no per-line work).
Over ``ssh://`` the engine's log is read as before, bounded by the driver's rotation on Docker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from logist.channel import attach_socket, drivable, frames

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

READ = 1 << 18  # bytes asked of the socket at once
POLL = 0.5  # seconds a read waits before it looks whether it was closed
ROTATED = {"max-size": "4m", "max-file": "2"}  # json-file where no attach is possible


def log_config(cli: DockerClient, podman: bool):
    """The step container's log settings: none where logist attaches (a plain socket, Docker
    or Podman), else a rotated json-file (Docker over ``ssh://``); Podman over ``ssh://``
    keeps its own (None)."""
    from docker.types import LogConfig

    if drivable(cli.api):
        return LogConfig(type="none")
    if podman:
        return None
    return LogConfig(type="json-file", config=ROTATED)


def attaches(container: Container) -> bool:
    """Whether ``container`` was made to be read by attaching (its log driver is ``none``)."""
    log = (container.attrs.get("HostConfig") or {}).get("LogConfig") or {}
    return log.get("Type") == "none"


class Attached:
    """The combined stdout and stderr of a container, attached before it starts: an iterator
    of chunks that ends when the container's streams close; ``close`` ends it from another
    thread."""

    def __init__(self, container: Container, timeout: float) -> None:
        params = {"stdout": 1, "stderr": 1, "stream": 1}
        raw = attach_socket(container, params, timeout)
        self._keep = raw  # the response object: its collection would close the socket
        self._sock: socket.socket = getattr(raw, "_sock", raw)
        self._sock.settimeout(POLL)
        self._closed = False

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def __iter__(self) -> Iterator[bytes]:
        buf = bytearray()
        while not self._closed:
            try:
                chunk = self._sock.recv(READ)
            except TimeoutError:
                continue
            except OSError:
                if self._closed:
                    return
                raise
            if not chunk:
                return
            buf += chunk
            payload = frames(buf)
            if payload:
                yield payload


class CappedLog:
    """A step's stored log: the first half of ``limit`` bytes written at once (``job logs
    --follow`` sees them); past that, the latest bytes kept in two unlinked spill files beside
    it (memory stays flat), and ``close`` appends the last half of ``limit`` after one line that
    says how much was dropped."""

    def __init__(self, fh: BinaryIO, limit: int, spill_dir: str | None = None) -> None:
        self.fh = fh
        self.head_left = limit - limit // 2
        self.tail_cap = limit // 2
        self.spill_dir = spill_dir
        self.segments: list[BinaryIO] = []  # the older, then the current spill file
        self.current = 0  # bytes in the current one
        self.dropped = 0

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if self.head_left > 0:
            _write_all(self.fh, data[: self.head_left])
            taken = min(n, self.head_left)
            self.head_left -= taken
            data = data[taken:]
        if data:
            if not self.segments or self.current >= self.tail_cap:
                self._next_segment()
            _write_all(self.segments[-1], data)
            self.current += len(data)
        return n

    def _next_segment(self) -> None:
        if len(self.segments) == 2:  # the older holds nothing the tail can still need
            old = self.segments.pop(0)
            self.dropped += old.seek(0, os.SEEK_END)
            old.close()
        self.segments.append(tempfile.TemporaryFile(dir=self.spill_dir))  # noqa: SIM115 (closed by flush)
        self.current = 0

    def flush(self) -> None:
        """Write what the tail keeps (after the drop line), once; then the file's own flush."""
        if self.segments:
            sizes = [seg.seek(0, os.SEEK_END) for seg in self.segments]
            skip = max(0, sum(sizes) - self.tail_cap)
            self.dropped += skip
            if self.dropped:
                self.fh.write(f"\n[logist: {self.dropped} bytes of output dropped]\n".encode())
            for seg, size in zip(self.segments, sizes, strict=True):
                seg.seek(min(skip, size))
                skip -= min(skip, size)
                while chunk := seg.read(1 << 20):
                    _write_all(self.fh, chunk)
                seg.close()
            self.segments = []
        self.fh.flush()


def _write_all(fh: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:  # unbuffered files may take part of it
        view = view[fh.write(view) :]
