"""A job's proxy (``--allow-host``): its container (``logist/proxy:latest``, Squid configured by
``logist/egress.py``) on the egress network and the job's internal one, its start until it
listens, and its log of refused requests read per step. ``logist/networks.py`` decides when.

On Docker the steps name it by its alias on the job's network (``ALIAS``): their environment
is known before it starts, so the first step starts beside it (``logist/gate.py``). Podman's
internal networks have no DNS server: there the steps get its address, once it has started.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from logist import containers, output, podman
from logist.container_spec import PROXY, ContainerSpec
from logist.egress import PROXY_PORT, DeniedLog, parse_patterns, squid_config
from logist.errors import EnvironmentProblem
from logist.netns import Attachment
from logist.store import owner_id

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from logist.jobrun import JobRun

PROXY_IMAGE = "logist/proxy:latest"
ALIAS = "logist-proxy"  # the proxy's name on the job's network (Docker's embedded DNS)
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
READY_TIMEOUT = 30.0  # seconds for the proxy to listen
DRAIN_QUIET = 0.05  # after a step: the proxy's log is read until quiet this long...
DRAIN_MAX = 0.3  # ...or this long at most
PROXY_LIMITS = {"memory": "256m", "pids": 256, "cpus": 1.0}


def proxy_image() -> str:
    """The proxy's image: ``LOGIST_PROXY_IMAGE``, else ``PROXY_IMAGE``."""
    return os.environ.get("LOGIST_PROXY_IMAGE") or PROXY_IMAGE


def egress_network() -> str:
    """The network the proxy reaches the outside on: ``LOGIST_EGRESS_NETWORK``, else the
    engine's default bridge."""
    return os.environ.get("LOGIST_EGRESS_NETWORK") or "bridge"


def prepare(cli: DockerClient) -> tuple[str, Any]:
    """The proxy's image (there) and its log's settings on this engine.

    Raises:
        ImageMissing: no proxy image (exit 3).
    """
    image = proxy_image()
    containers.ensure_image(cli, image, "missing")
    with containers.engine_errors("asking the engine what it is", cli):
        return image, output.log_config(cli, podman.is_podman(cli))


class Proxy:
    """The job's proxy container on ``network`` (the job's internal network) and the egress
    network: ``create``, ``start`` (until it listens), ``denied`` per step, ``remove``."""

    def __init__(self, run: JobRun, network: str) -> None:
        self.run = run
        self.network = network
        self.box: Container | None = None
        self.log = DeniedLog()
        self._stream: Any = None
        self._fed = 0.0  # when the proxy last said something (monotonic)
        self._heard = threading.Event()  # it said it listens, or its output ended

    @property
    def cli(self) -> DockerClient:
        return self.run.dock.client()

    @property
    def by_name(self) -> bool:
        """Whether the steps name the proxy by its alias (Docker), not its address."""
        return not podman.is_podman(self.cli)

    def create(self, image: str, log_config: Any) -> None:
        """The container, on the egress network and the job's (its alias there), not started,
        serving the job's network's subnets only."""
        job, cli = self.run.job, self.cli
        with containers.engine_errors(f"inspecting the network {self.network}", cli):
            ipam = (cli.api.inspect_network(self.network).get("IPAM") or {}).get("Config") or []
        subnets = [c["Subnet"] for c in ipam if c.get("Subnet")]
        if not subnets:
            raise EnvironmentProblem(f"the engine gave the network {self.network} no subnet")
        conf = squid_config(parse_patterns(job.allow_hosts), list(job.allow_private), subnets)
        spec = ContainerSpec(
            image=image,
            command=[],
            job_id=job.id,
            step=PROXY,
            jobs_root=self.run.store.root,
            owner=owner_id(),
            env={"LOGIST_PROXY_CONF": conf},
            network=egress_network(),
            memory=PROXY_LIMITS["memory"],
            pids=PROXY_LIMITS["pids"],
            cpus=PROXY_LIMITS["cpus"],
            cap_add=[],
            read_only=True,
            tmpfs={"/tmp": "size=16m,mode=1777"},
            log_config=log_config,
            # it relays, never routes: a step with NET_RAW could send it frames for elsewhere
            sysctls={"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"},
        )
        self.box = containers.create(cli, spec)
        aliases = [ALIAS] if self.by_name else None
        with containers.engine_errors("attaching the job's proxy to its network", cli):
            cli.api.connect_container_to_network(self.box.id, self.network, aliases=aliases)

    def attachment(self, address: str | None = None) -> Attachment:
        """What the steps get: the job's network, the proxy in their environment (its alias,
        else ``address``) and a DNS server that answers nothing (names resolve only in the
        proxy; the engine's embedded server still answers the alias)."""
        host = ALIAS if self.by_name else address
        assert host is not None
        url = f"http://{host}:{PROXY_PORT}"
        env = {k: url for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
        env.update(NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1")
        if self.by_name:  # the step's own loopback: nobody there (what a step puts there is its)
            return Attachment(self.network, env, dns=["127.0.0.1"])
        # On Podman the host keeps an IPv6 link-local address on the bridge (services on `::`
        # would answer there): the steps get no IPv6
        return Attachment(self.network, env, dns=[host], sysctls=NO_IPV6)

    def start(self) -> str:
        """Start it and wait until it listens; its address on the job's network.

        Raises:
            EnvironmentProblem: it did not start listening in time, or has no address.
        """
        cli, box, image = self.cli, self.box, proxy_image()
        assert box is not None
        with containers.engine_errors("starting the job's proxy", cli):
            if output.attaches(box):  # before the start: its first lines are not missed
                self._stream = output.Attached(box, self.run.dock.timeout)
            box.start()
            if self._stream is None:
                self._stream = box.logs(stream=True, follow=True, stdout=True, stderr=True)
        reader = threading.Thread(target=self._read, daemon=True, name="logist-proxy")
        reader.start()
        if not self._heard.wait(READY_TIMEOUT) or not self.log.ready:
            tail = " | ".join(x.decode("utf-8", "replace") for x in self.log.tail[-2:])
            raise EnvironmentProblem(
                f"the job's proxy ({image}) did not start listening: {tail or 'no output'}"
            )
        with containers.engine_errors("inspecting the job's proxy", cli):
            box.reload()
        nets = (box.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = (nets.get(self.network) or {}).get("IPAddress")
        if not address:
            raise EnvironmentProblem(f"the job's proxy has no address on {self.network}")
        return address

    def _read(self) -> None:
        try:
            with contextlib.suppress(Exception):
                for chunk in self._stream:
                    if isinstance(chunk, str):
                        chunk = chunk.encode()
                    self._fed = time.monotonic()
                    self.log.feed(chunk)
                    if self.log.ready:
                        self._heard.set()
        finally:
            self._heard.set()  # its output ended: listening or not, nothing more will say

    def denied(self) -> dict[str, Any]:
        """What it refused since the last call (``{"denied": {HOST:PORT: n}}``), once its log
        went quiet (briefly)."""
        start = time.monotonic()
        while time.monotonic() - self._fed < DRAIN_QUIET and time.monotonic() - start < DRAIN_MAX:
            time.sleep(0.01)
        return self.log.take()

    def stop_reading(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()

    def leave(self) -> None:
        """Off the job's network (then the network and the proxy go at once)."""
        if self.box is not None:
            with contextlib.suppress(Exception):
                self.cli.api.disconnect_container_from_network(self.box.id, self.network, True)

    def remove(self) -> None:
        """Remove it (it keeps nothing: killed at once)."""
        import docker

        box, self.box = self.box, None
        if box is None:
            return
        with (
            containers.engine_errors("removing the job's proxy", self.cli),
            contextlib.suppress(docker.errors.NotFound),
        ):
            box.remove(force=True, v=True)
