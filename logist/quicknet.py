"""The job's network asked of a local Docker engine before the docker SDK is imported.

A job's first container waits for its network, and the network for the SDK's import (~110 ms
of Python, beside the workspace's clone). On a local socket the one request that makes the
network needs none of it: ``create`` sends it with the standard library at once, and the SDK
path (``networks._create_network``, which this mirrors) takes over for anything else. It
never raises, and never says more than "made" or "not made": an engine that is not Docker
(Podman's socket), a remote one, a name taken (a killed run's network: the SDK path replaces
it after the orphan reap), an error or a deadline all leave the network to the SDK path,
whose errors are the ones a user sees. Measured in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import json
import socket
from http.client import HTTPConnection


class _Socket(HTTPConnection):
    """HTTP over the engine's unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def create(
    url: str, name: str, options: dict[str, str], internal: bool, labels: dict, timeout: float
) -> bool:
    """Make the bridge network ``name`` on the Docker engine at ``url`` (``unix://`` only);
    whether the engine said it made it (201)."""
    if not url.startswith("unix://"):
        return False
    conn = _Socket(url[len("unix://") :], timeout)
    with contextlib.suppress(Exception), contextlib.closing(conn):
        conn.request("GET", "/_ping")
        ping = conn.getresponse()
        ping.read(64)
        server, version = ping.getheader("Server") or "", ping.getheader("Api-Version") or ""
        if (
            ping.status != 200
            or not server.startswith("Docker/")
            or ping.getheader("Libpod-Api-Version")
        ):
            return False
        if not version.replace(".", "").isdigit():
            return False
        body = {
            "Name": name,
            "CheckDuplicate": True,
            "Driver": "bridge",
            "Internal": internal,
            "Labels": labels,
            "Options": options,
        }
        conn.request(
            "POST",
            f"/v{version}/networks/create",
            json.dumps(body),
            {"Content-Type": "application/json"},
        )
        made = conn.getresponse()
        made.read(4096)
        return made.status == 201
    return False


__all__ = ["create"]
