"""A fault-injection proxy in front of the Docker engine's unix socket (tests only).

Point logist at it with ``DOCKER_HOST=proxy.host``. Every client connection gets its own
connection to the real engine; the proxy parses only the request line and headers of each
request (bodies by ``Content-Length``) and pipes everything else as raw bytes, so keep-alive,
chunked and streamed responses (logs ``follow``, ``wait``) and hijacked connections (attach,
exec: ``Upgrade``) pass unchanged. Chosen requests (method + path regex) can instead:

- ``"500"`` (or any ``"status:NNN"``): get that HTTP error with a JSON ``message``;
- ``"reset"``: have the connection closed at once, unanswered (what a crashed engine does);
- ``"hang"``: never be answered (until the proxy stops).

``freeze()`` makes the whole engine look hung (a SIGSTOPped dockerd): connections are still
accepted, but no byte moves in either direction until ``thaw()``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_SOCKET = "/var/run/docker.sock"
_REASONS = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 500: "Internal Server Error"}


@dataclass
class Rule:
    """Requests ``method`` whose path (without the query) matches ``path`` get ``action``;
    the first ``skip`` matches pass, then ``times`` matches (None: all) are hit."""

    method: str
    path: re.Pattern[str]
    action: str
    skip: int = 0
    times: int | None = None
    matched: int = 0
    fired: int = 0
    hit: threading.Event = field(default_factory=threading.Event)

    def take(self, method: str, path: str) -> bool:
        if method != self.method or not self.path.search(path):
            return False
        self.matched += 1
        if self.matched <= self.skip:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class FaultProxy:
    """A threaded unix-socket HTTP proxy to ``upstream`` that injects faults by rule."""

    def __init__(self, upstream: str = ENGINE_SOCKET) -> None:
        self.upstream = upstream
        self.dir = Path(tempfile.mkdtemp(prefix="lfp-", dir="/tmp"))  # short: sun_path limit
        self.path = self.dir / "docker.sock"
        self.rules: list[Rule] = []
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._thawed = threading.Event()
        self._thawed.set()
        self._closing = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._server: socket.socket | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    # --- control ---------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path: str,
        action: str = "500",
        *,
        skip: int = 0,
        times: int | None = None,
    ) -> Rule:
        """Add a rule; ``path`` is a regex searched in the request path (e.g. ``/start$``)."""
        rule = Rule(method.upper(), re.compile(path), action, skip, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def freeze(self) -> None:
        """Stop answering: nothing is forwarded any more, new requests hang."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def start(self) -> FaultProxy:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, daemon=True, name="faultproxy").start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._thawed.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._server.close()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            self._shut(s)  # their threads close them: see ``_shut``
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- plumbing --------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._server is not None
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)

    @staticmethod
    def _shut(s: socket.socket) -> None:
        """End ``s`` both ways, waking a ``recv`` of another thread, but keep its descriptor:
        one closed under a thread still in ``recv`` was reused by the next connection
        accepted, and that thread read (and lost) the new connection's request, a client's
        "connection lost" with nothing seen (a short connection beside the next, in CI)."""
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)

    def _close(self, s: socket.socket) -> None:
        """Close ``s``: only once no other thread uses it."""
        self._shut(s)
        with contextlib.suppress(OSError):
            s.close()
        with self._lock:
            self._sockets.discard(s)

    def _wait_thawed(self) -> bool:
        """Block while frozen; False once the proxy is closing."""
        while not self._thawed.wait(0.2):
            if self._closing.is_set():
                return False
        return not self._closing.is_set()

    def _match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.seen.append(f"{method} {path}")
            for rule in self.rules:
                if rule.take(method, path):
                    return rule
        return None

    def _pipe(self, src: socket.socket, dst: socket.socket, send_lock: threading.Lock) -> None:
        """Copy raw bytes ``src`` -> ``dst`` until either side closes (waiting while frozen)."""
        try:
            while True:
                data = src.recv(65536)
                if not data or not self._wait_thawed():
                    break
                with send_lock:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(dst)
            self._shut(src)

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.upstream)
        except OSError:
            self._close(client)
            return
        self._track(upstream)
        to_client = threading.Lock()
        answers = threading.Thread(
            target=self._pipe, args=(upstream, client, to_client), daemon=True
        )
        answers.start()
        buf = b""
        try:
            while True:
                head, buf = _read_head(client, buf)
                if head is None:
                    return
                method, target = head.split(b" ", 2)[:2]
                method_s, path = method.decode("latin-1"), target.decode("latin-1").split("?")[0]
                headers = _headers(head)
                if "chunked" in headers.get("transfer-encoding", ""):  # rare: stream it as is
                    if not self._wait_thawed():
                        return
                    upstream.sendall(head + buf)
                    self._pipe(client, upstream, threading.Lock())
                    return
                body, buf = _read_exactly(client, buf, int(headers.get("content-length", "0")))
                if body is None:
                    return
                rule = self._match(method_s, path)
                if rule is not None:
                    rule.hit.set()
                    if rule.action == "reset":
                        return
                    if rule.action == "hang":
                        self._closing.wait()
                        return
                    code = 500 if rule.action == "500" else int(rule.action.split(":")[1])
                    with to_client:
                        client.sendall(_error_response(code))
                    continue
                if not self._wait_thawed():
                    return
                upstream.sendall(head + body)
                if "upgrade" in headers or "upgrade" in headers.get("connection", "").lower():
                    if buf:
                        upstream.sendall(buf)
                    self._pipe(client, upstream, threading.Lock())  # hijacked: raw both ways
                    return
        except OSError:
            return
        finally:
            self._shut(client)
            self._shut(upstream)
            answers.join(10)  # it stops reading both before they are closed
            self._close(client)
            self._close(upstream)


def _read_head(sock: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None, b""
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    return buf[:end], buf[end:]


def _read_exactly(sock: socket.socket, buf: bytes, n: int) -> tuple[bytes | None, bytes]:
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            return None, b""
        buf += data
    return buf[:n], buf[n:]


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _error_response(code: int) -> bytes:
    body = b'{"message": "fault injected by the test proxy"}'
    return (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
