"""Test "nodes": Docker engines in containers (``logist/node:latest``), for multi-engine tests
on one machine. Each node runs its own ``dockerd`` with its own storage (a fresh named volume at
``/var/lib/docker``), reached from the host over ``tcp://<node IP>:2375``; logist runs on the
host and talks to it as to a remote engine.

The nodes sit on a bridge network of the session's own with a fixed subnet, so a node keeps its
IP (its URL) across ``stop()``/``start()``: on the default bridge a restarted container may get
another container's old address. Node containers, volumes and the network carry
``logist.test-node=<session token>`` (never ``logist.managed``: logist's sweeps leave them
alone) and the owner of the session; they are removed at the session's end whatever happened,
and what a killed session left is reaped when the next one starts.

Use (conftest imports the fixtures)::

    def test_x(running_nodes, logist, jobs_root):
        a, b = running_nodes              # two nodes, logist/busybox and logist/step loaded
        logist("--engine", a.url, "--engine", b.url, "job", "run", "--all")
        assert not a.leftovers(jobs_root)
"""

from __future__ import annotations

import contextlib
import random
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from docker import DockerClient

NODE_IMAGE = "logist/node:latest"
NODE_LABEL = "logist.test-node"  # value: the session's token
OWNER_LABEL = "logist.test-node.owner"  # host:pid:start of the pytest process
PORT = 2375
IMAGES = ("logist/busybox:latest", "logist/step:latest")  # loaded into every node
START_TIMEOUT = 60.0  # seconds a node's dockerd may take to answer
# dockerd needs most capabilities; --privileged fails where root lacks CAP_SYS_RESOURCE
# (and systempaths=unconfined: no masked paths, see ``NodeFactory.new``)
NODE_OPTIONS = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
}


class NodeError(RuntimeError):
    """A node could not be made ready (the fixture turns it into a test failure)."""


def _client(url: str, timeout: float = 60) -> DockerClient:
    import docker

    return docker.DockerClient(base_url=url, timeout=timeout)


@dataclass
class Node:
    """One node: a container running dockerd, its data in volume ``volume``."""

    name: str  # the node container's name (and of its volume)
    ip: str
    host: DockerClient  # the host engine's client
    token: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds: start, load <image>

    @property
    def url(self) -> str:
        """The node's engine, ``tcp://<ip>:2375`` (unchanged by ``stop``/``start``)."""
        return f"tcp://{self.ip}:{PORT}"

    @property
    def volume(self) -> str:
        return self.name

    def container(self):
        return self.host.containers.get(self.name)

    def client(self, timeout: float = 60) -> DockerClient:
        """A new docker SDK client of the node's engine (the caller closes it)."""
        return _client(self.url, timeout)

    def answers(self) -> bool:
        from logist.engines import reachable

        return reachable(self.url, timeout=2)

    def wait(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until the node's engine answers; returns the seconds waited.

        Raises:
            NodeError: the node container stopped, or no answer within ``timeout``.
        """
        started = time.monotonic()
        while not self.answers():
            container = self.container()
            if container.status not in ("created", "running"):
                raise NodeError(f"node {self.name} {container.status}: {self.log_tail()}")
            if time.monotonic() - started > timeout:
                raise NodeError(
                    f"node {self.name} ({self.url}) not answering after {timeout:.0f} s: "
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)
        return time.monotonic() - started

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(Exception):
            return self.container().logs(tail=lines).decode(errors="replace").strip()
        return "(no log)"

    def stop(self, timeout: int = 10) -> None:
        """``docker stop`` the node: its dockerd shuts down (stopping what runs in it) and its
        engine is unreachable, like a lost host, until ``start``."""
        self.container().stop(timeout=timeout)

    def kill(self) -> None:
        """``docker kill`` the node: everything in it dies at once (a host losing power)."""
        self.container().kill()
        with contextlib.suppress(Exception):
            self.container().wait(timeout=30)

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start the node again and wait until it answers (its images and what its jobs left
        are still there: the volume persists); returns the seconds it took."""
        started = time.monotonic()
        self.container().start()
        self.wait(timeout)
        return time.monotonic() - started

    def load(self, images: tuple[str, ...] | list[str] = IMAGES) -> None:
        """Copy images from the host engine (save | load, streamed): ``logist.images``."""
        from logist.images import push

        for image in images:
            started = time.monotonic()
            report = push(image, [self.url])
            if report.failed:
                raise NodeError(f"loading {image} into node {self.name}: {report.error()}")
            self.timings[f"load {image}"] = time.monotonic() - started

    def memory(self) -> int:
        """Bytes of memory the node container uses, page cache excluded."""
        stats = self.container().stats(stream=False)["memory_stats"]
        inner = stats.get("stats", {})
        cache = inner.get("total_inactive_file", inner.get("inactive_file", inner.get("cache", 0)))
        return int(stats.get("usage", 0)) - int(cache)

    def leftovers(self, jobs_root: Path | str) -> list[str]:
        """``container <name>`` / ``volume <name>`` / ``network <name>`` on this node labelled
        ``logist.jobs-dir=<jobs_root>`` (empty: the jobs left nothing here)."""
        label = {"label": f"logist.jobs-dir={jobs_root}"}
        cli = self.client(timeout=30)
        try:
            found = [f"container {c.name}" for c in cli.containers.list(all=True, filters=label)]
            found += [f"volume {v.name}" for v in cli.volumes.list(filters=label)]
            found += [f"network {n.name}" for n in cli.networks.list(filters=label)]
        finally:
            cli.close()
        return found

    def remove_leftovers(self, jobs_root: Path | str) -> None:
        """Remove what ``leftovers`` lists (containers first)."""
        label = {"label": f"logist.jobs-dir={jobs_root}"}
        cli = self.client(timeout=30)
        try:
            for c in cli.containers.list(all=True, filters=label):
                c.remove(force=True)
            for v in cli.volumes.list(filters=label):
                v.remove(force=True)
            for n in cli.networks.list(filters=label):
                n.remove()
        finally:
            cli.close()


class NodeFactory:
    """Makes nodes for one test session on a network of its own; ``close`` removes them all
    (containers, then volumes, then the network)."""

    def __init__(self, host: DockerClient) -> None:
        from logist.store import owner_id

        self.host = host
        self.token = secrets.token_hex(4)
        self.owner = owner_id()
        self.labels = {NODE_LABEL: self.token, OWNER_LABEL: self.owner}
        self.nodes: list[Node] = []
        self.network = None
        self.subnet = ""
        self._lock = threading.Lock()

    def _ensure_network(self) -> None:
        import docker
        from docker.types import IPAMConfig, IPAMPool

        if self.network is not None:
            return
        last: Exception | None = None
        for _ in range(30):  # a /24 no other network of the host engine uses
            third = random.randrange(0, 256)
            subnet = f"172.30.{third}.0/24"
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet, gateway=f"172.30.{third}.1")])
            try:
                self.network = self.host.networks.create(
                    f"logist-test-nodes-{self.token}",
                    driver="bridge",
                    ipam=ipam,
                    labels=self.labels,
                )
            except docker.errors.APIError as exc:
                last = exc
                continue
            self.subnet = f"172.30.{third}"
            return
        raise NodeError(f"no free subnet for the nodes' network: {last}")

    def new(self, images: tuple[str, ...] | list[str] = IMAGES) -> Node:
        """Start a node, wait until it answers, load ``images`` into it.

        Raises:
            NodeError: the node image is missing, or the node does not come up.
        """
        import docker

        try:
            self.host.images.get(NODE_IMAGE)
        except docker.errors.ImageNotFound:
            raise NodeError(f"{NODE_IMAGE} missing: run scripts/build-images.sh") from None
        with self._lock:
            self._ensure_network()
            index = len(self.nodes) + 1
            name = f"logist-test-node-{self.token}-{index}"
            ip = f"{self.subnet}.{index + 1}"
            node = Node(name=name, ip=ip, host=self.host, token=self.token)
            self.nodes.append(node)
        started = time.monotonic()
        self.host.volumes.create(name, labels=self.labels)
        api = self.host.api
        host_config = api.create_host_config(
            binds={name: {"bind": "/var/lib/docker", "mode": "rw"}},
            network_mode=self.network.name,
            **NODE_OPTIONS,
        )
        # systempaths=unconfined is a client-side option: no masked or read-only /proc paths
        host_config.update(MaskedPaths=[], ReadonlyPaths=[])
        endpoint = api.create_endpoint_config(ipv4_address=ip)  # a fixed address
        made = api.create_container(
            NODE_IMAGE,
            name=name,
            hostname=f"node{index}",
            labels=self.labels,
            host_config=host_config,
            networking_config=api.create_networking_config({self.network.name: endpoint}),
        )
        container = self.host.containers.get(made["Id"])
        container.start()
        node.wait()
        node.timings["start"] = time.monotonic() - started
        node.load(images)
        return node

    def close(self) -> list[str]:
        """Remove the nodes (containers, then volumes) and the network; returns what could
        not be removed."""
        problems: list[str] = []
        for node in self.nodes:
            try:
                self.host.containers.get(node.name).remove(force=True)
            except Exception as exc:
                if "No such container" not in str(exc):
                    problems.append(f"container {node.name}: {exc}")
        for node in self.nodes:
            try:
                self.host.volumes.get(node.volume).remove(force=True)
            except Exception as exc:
                if "no such volume" not in str(exc).lower():
                    problems.append(f"volume {node.volume}: {exc}")
        if self.network is not None:
            try:
                self.network.remove()
            except Exception as exc:
                problems.append(f"network {self.network.name}: {exc}")
        return problems


def reap_stale_nodes(host: DockerClient) -> list[str]:
    """Remove the nodes, volumes and networks of earlier test sessions whose process is gone
    (never a running session's); returns their names."""
    from logist.store import owner_alive

    def stale(labels: dict | None) -> bool:
        return not owner_alive((labels or {}).get(OWNER_LABEL))

    flt = {"label": NODE_LABEL}
    reaped: list[str] = []
    for c in host.containers.list(all=True, filters=flt):
        if stale(c.labels):
            with contextlib.suppress(Exception):
                c.remove(force=True)
                reaped.append(f"container {c.name}")
    for v in host.volumes.list(filters=flt):
        if stale(v.attrs.get("Labels")):
            with contextlib.suppress(Exception):
                v.remove(force=True)
                reaped.append(f"volume {v.name}")
    for n in host.networks.list(filters=flt):
        if stale(n.attrs.get("Labels")):
            with contextlib.suppress(Exception):
                n.remove()
                reaped.append(f"network {n.name}")
    return reaped


@pytest.fixture(scope="session")
def node_factory(docker_client) -> Iterator[NodeFactory]:
    """Makes nodes (``node_factory.new()``) for the session; all removed at its end."""
    reap_stale_nodes(docker_client)
    factory = NodeFactory(docker_client)
    try:
        yield factory
    finally:
        problems = factory.close()
        if problems:
            raise AssertionError(f"test nodes left behind: {problems}")


@pytest.fixture(scope="session")
def nodes(node_factory) -> tuple[Node, Node]:
    """Two nodes, each a separate engine with logist/busybox and logist/step, started once per
    session (in parallel). Tests that stop nodes should take ``running_nodes``."""
    made: list[Node | BaseException] = []

    def one() -> None:
        try:
            made.append(node_factory.new())
        except BaseException as exc:  # reported below, as a failure
            made.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [m for m in made if isinstance(m, BaseException)]
    if errors:
        pytest.fail(f"test nodes not ready: {errors[0]}", pytrace=False)
    a, b = sorted((m for m in made if isinstance(m, Node)), key=lambda n: n.name)
    return a, b


@pytest.fixture
def running_nodes(nodes) -> tuple[Node, Node]:
    """``nodes``, both answering (one a previous test stopped is started again)."""
    for node in nodes:
        if not node.answers():
            try:
                node.start()
            except NodeError as exc:
                pytest.fail(f"test node could not be restarted: {exc}", pytrace=False)
    return nodes
