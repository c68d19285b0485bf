"""Requests to a running helper through its standard input, instead of an ``exec`` each.

An ``exec`` makes runc start a process inside the container (~55 ms here, before the script
runs). A helper started with ``SERVE`` as its command reads requests from its standard input
instead: logist attaches to it once (Docker's hijacked ``attach`` connection) and writes one
request per harvest; the helper runs the script and answers on its standard output. The answer
is data like any helper output: every line is tagged by the helper's own ``sed`` (``o`` for the
script's stdout, ``e`` for its stderr), the last one is ``end NONCE CODE``, and the host parses
nothing else. Only Docker's ``unix://`` and ``tcp://`` engines are driven so; elsewhere
(Podman, ``ssh://``) ``open`` returns None and the caller falls back to ``exec``.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from logist import helper

if TYPE_CHECKING:
    from docker.models.containers import Container

# The helper's command. $1: a marker to report first (the visibility check), or empty; $2: the
# script a "run" request runs; $3: its time limit in seconds. Requests are lines: the nonce, the
# number of arguments, then one argument a line. When its input ends, it idles (as before:
# ``exec`` still works) until it is removed.
SERVE = helper.script("serve.sh")

MAX_ANSWER = 4 << 20  # bytes of an answer kept; the rest is read and dropped
POLL = 0.1  # seconds between looks at ``should_stop`` while waiting
ALIVE_EVERY = 2.0  # seconds of silence between looks at whether the helper still runs


def drivable(api) -> bool:
    """Whether the engine's transport gives a plain socket to attach to: ``unix://`` and
    ``tcp://`` (with or without TLS); not ``ssh://`` nor named pipes (those use ``exec``)."""
    return api.base_url.startswith(("http+docker://localhost", "http://", "https://"))


def attach_socket(container: Container, params: dict, timeout: float):
    """The docker SDK's ``attach_socket`` with a deadline on the engine's answer (the SDK's
    own has none: an engine that never answers would hang the caller)."""
    api = container.client.api
    url = api._url("/containers/{0}/attach", container.id)
    headers = {"Connection": "Upgrade", "Upgrade": "tcp"}
    res = api.post(url, None, params=params, stream=True, headers=headers, timeout=timeout)
    return api._get_raw_response_socket(res)


def frames(buf: bytearray, streams: tuple[int, ...] = (1, 2)) -> bytes:
    """The payload, of ``streams`` (1 stdout, 2 stderr), of the complete frames of Docker's
    multiplexed stream at the start of ``buf``; those frames are consumed from it."""
    parts, pos = [], 0
    while len(buf) - pos >= 8:
        stream, size = struct.unpack_from(">BxxxL", buf, pos)
        if len(buf) - pos - 8 < size:
            break
        if stream in streams:
            parts.append(bytes(buf[pos + 8 : pos + 8 + size]))
        pos += 8 + size
    del buf[:pos]
    return b"".join(parts)


class ChannelLost(Exception):
    """The connection ended before the answer (the helper or the engine went away)."""


class Stopped(Exception):
    """``should_stop`` asked for it and the grace ran out: the answer was not awaited."""


class Channel:
    """One attached connection to a helper running ``SERVE``."""

    def __init__(self, sock: socket.socket, keep: object) -> None:
        self._sock = sock
        self._keep = keep  # the response object: its collection would close the socket
        self._buf = bytearray()

    @classmethod
    def open(cls, container: Container, timeout: float) -> Channel | None:
        """Attach to ``container``'s standard streams; None where this engine or transport is
        not driven so (the caller uses ``exec``)."""
        api = container.client.api
        if not drivable(api):
            return None
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        raw = attach_socket(container, params, timeout)
        sock = getattr(raw, "_sock", raw)
        if not isinstance(sock, socket.socket):
            with contextlib.suppress(Exception):
                raw.close()
            return None
        return cls(sock, raw)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def request(
        self,
        args: list[str],
        *,
        deadline: float,
        should_stop: Callable[[], bool] | None = None,
        grace: float = 10.0,
        alive: Callable[[], bool] | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run the helper's script with ``args``; returns (exit code, stdout, stderr).
        ``alive`` is asked every ``ALIVE_EVERY`` seconds of silence (an attach to a helper
        that stopped meanwhile may stay open without a word).

        Raises:
            ChannelLost: the connection ended, the helper is not alive, or nothing came for
                ``deadline`` seconds.
            Stopped: ``should_stop`` said so for longer than ``grace`` seconds.
        """
        if any("\n" in a for a in args):
            raise ValueError("an argument of a helper request has a newline")
        nonce = secrets.token_hex(8)
        payload = "\n".join([nonce, str(len(args)), *args]) + "\n"
        try:
            self._sock.settimeout(POLL)
            self._sock.sendall(payload.encode())
        except OSError as exc:
            raise ChannelLost(str(exc)) from None
        end = f"end {nonce} ".encode()
        out = b""
        kept: bytes | None = None  # the first MAX_ANSWER bytes, once more came
        asked: float | None = None
        limit = time.monotonic() + deadline
        checked = time.monotonic()
        while True:
            line_end = out.rfind(b"\n")
            if line_end >= 0:
                start = out.rfind(b"\n", 0, line_end) + 1
                last = out[start:line_end]
                if last.startswith(end):
                    return _answer(out[:start] if kept is None else kept, last[len(end) :])
            if len(out) > MAX_ANSWER:  # the rest is read for the end line, not kept
                if kept is None:
                    kept = out[: out.rfind(b"\n", 0, MAX_ANSWER) + 1]
                out = out[-65536:]
            if time.monotonic() > limit:
                raise ChannelLost(f"no answer from the helper in {deadline:g} s")
            if should_stop is not None and should_stop():
                asked = asked or time.monotonic()
                if time.monotonic() - asked >= grace:
                    raise Stopped()
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                if alive is not None and time.monotonic() - checked > ALIVE_EVERY:
                    checked = time.monotonic()
                    if not alive():
                        raise ChannelLost("the helper stopped") from None
                continue
            except OSError as exc:
                raise ChannelLost(str(exc)) from None
            if not chunk:
                raise ChannelLost("the helper's connection ended")
            out += self._stdout(chunk)

    def _stdout(self, chunk: bytes) -> bytes:
        """The standard-output payload of the complete frames received so far."""
        self._buf += chunk
        return frames(self._buf, streams=(1,))


def _answer(body: bytes, code: bytes) -> tuple[int, bytes, bytes]:
    out: list[bytes] = []
    err: list[bytes] = []
    for line in body.split(b"\n"):
        if line.startswith(b"o "):
            out.append(line[2:])
        elif line.startswith(b"e "):
            err.append(line[2:])
    try:
        rc = int(code.strip() or b"-1")
    except ValueError:
        rc = -1
    return rc, b"\n".join(out) + b"\n" if out else b"", b"\n".join(err) + b"\n" if err else b""
