"""The job's network asked early of a local Docker engine (logist/quicknet.py): the same
network the SDK path makes, and "not made" for anything else (the SDK path then makes it)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from logist import quicknet
from logist.networks import _docker_options

ENGINE = "unix:///var/run/docker.sock"
LABELS = {"logist.managed": "true", "logist.test": "quicknet"}


def _shape(docker_client, name: str) -> dict:
    net = docker_client.networks.get(name)
    shape = {k: net.attrs[k] for k in ("Driver", "Internal", "Labels", "Options", "EnableIPv6")}
    net.remove()
    return shape


@pytest.mark.docker
@pytest.mark.parametrize("internal", [False, True])
def test_the_early_network_is_the_one_the_sdk_path_makes(docker_client, internal):
    name = f"lgq-{os.getpid()}-{int(internal)}"
    options = _docker_options(name, internal)
    try:
        assert quicknet.create(ENGINE, name, options, internal, LABELS, 30)
        assert not quicknet.create(ENGINE, name, options, internal, LABELS, 30)  # taken: 409
        early = _shape(docker_client, name)
        docker_client.api.create_network(
            name, driver="bridge", internal=internal, labels=LABELS, options=options,
            check_duplicate=True,
        )  # fmt: skip
        assert early == _shape(docker_client, name)
        assert early["Internal"] is internal and early["Labels"] == LABELS
    finally:
        for net in docker_client.networks.list(names=[name]):
            net.remove()


def _server(tmp_path: Path, answer: bytes, asked: list[bytes]) -> str:
    """A unix socket of the test's own that answers every request with ``answer`` (none:
    never answers); what it was asked goes to ``asked``."""
    path = tmp_path / "engine.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                asked.append(data)
                if answer:
                    conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return f"unix://{path}"


def test_an_engine_that_is_not_docker_is_asked_nothing_but_its_ping(tmp_path):
    asked: list[bytes] = []
    libpod = b"HTTP/1.1 200 OK\r\nServer: Libpod/4.3.1 (linux)\r\nApi-Version: 1.41\r\n"
    url = _server(tmp_path, libpod + b"Content-Length: 2\r\n\r\nOK", asked)
    assert quicknet.create(url, "n", {}, False, LABELS, 5) is False
    assert all(not a.startswith(b"POST") for a in asked) and asked


def test_a_remote_engine_a_missing_socket_and_a_silent_one_are_not_made(tmp_path):
    assert quicknet.create("tcp://127.0.0.1:1", "n", {}, False, LABELS, 5) is False
    assert quicknet.create(f"unix://{tmp_path}/none.sock", "n", {}, False, LABELS, 5) is False
    started = time.monotonic()
    url = _server(tmp_path, b"", [])
    assert quicknet.create(url, "n", {}, False, LABELS, 0.5) is False
    assert time.monotonic() - started < 5
