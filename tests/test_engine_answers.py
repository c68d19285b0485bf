"""An engine that answers what no engine would (a broken daemon, a socket proxy in between):
each command gives up with exit 3 and one line naming the engine, never a traceback. The
engine here is the test's own HTTP server on a unix socket: no Docker needed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingUnixStreamServer

import pytest

from tests.helpers import make_repo, run_logist

PODMAN_PING = {"Api-Version": "1.41", "Libpod-Api-Version": "4.3.1", "Server": "Libpod/4.3.1"}
DOCKER_PING = {"Api-Version": "1.41", "Server": "Docker/20.10.24"}
# what each fake engine answers: (ping headers, {path: JSON body}); every other path: 500
ENGINES = {
    "version-a-list": ({}, {"/version": []}),
    "version-null": ({}, {"/version": None}),
    "components-not-a-list": ({}, {"/version": {"ApiVersion": "1.41", "Components": "podman"}}),
    "component-details-not-an-object": (
        {},
        {
            "/version": {
                "ApiVersion": "1.41",
                "Components": [{"Name": "Podman Engine", "Version": "4", "Details": "x"}],
            }
        },
    ),
    "podman-info-a-list": (PODMAN_PING, {"/v4.3.1/libpod/info": []}),
    "podman-info-host-a-string": (PODMAN_PING, {"/v4.3.1/libpod/info": {"host": "x"}}),
    "docker-info-a-string": (DOCKER_PING, {"/v1.41/info": "x"}),
    "version-nested-deeper-than-python-parses": ({}, {"/version": b"[" * 100_000 + b"]" * 100_000}),
}


class _Engine(BaseHTTPRequestHandler):
    ping: dict[str, str] = {}
    bodies: dict[str, object] = {}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_ping":
            self._send(200, b"OK", self.ping)
        elif path in self.bodies:
            body = self.bodies[path]
            self._send(200, body if isinstance(body, bytes) else json.dumps(body).encode(), {})
        else:
            self._send(500, b'{"message": "no"}', {})

    do_POST = do_HEAD = do_DELETE = do_GET

    def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def engine(request, tmp_path):
    """``unix://SOCKET`` of a fake engine answering as ``ENGINES[request.param]`` says."""
    ping, bodies = ENGINES[request.param]
    handler = type("Engine", (_Engine,), {"ping": ping, "bodies": bodies})
    sock = tmp_path / "engine.sock"
    server = ThreadingUnixStreamServer(str(sock), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"unix://{sock}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("engine", list(ENGINES), indirect=True)
def test_a_malformed_engine_answer_is_exit_3_in_one_line_not_a_traceback(engine, tmp_path: Path):
    repo = make_repo(tmp_path / "src")
    env = {"DOCKER_HOST": engine, "LOGIST_DOCKER_TIMEOUT": "5"}
    out = run_logist(tmp_path / "jobs", "run", "--repo", str(repo), "--step", "true", env=env)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 3, out.stderr
    said = [line for line in out.stderr.splitlines() if not line.startswith("logist: job ")]
    assert len(said) == 1 and "engine" in said[0], out.stderr
    doctor = run_logist(tmp_path / "jobs", "doctor", env=env)
    assert "Traceback" not in doctor.stderr + doctor.stdout, doctor.stderr
    assert doctor.returncode != 0
