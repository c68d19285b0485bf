"""A job's networks (contract v3, "Networks and egress by name").

``network: bridge`` is a network of the job's own (``logist-<id>``), so no step of another job
reaches its steps. With ``allow_hosts`` that network is internal (no route out) and the job's
proxy (``logist/proxy:latest``: Squid, configured by ``logist/egress.py``) is its only way
out: the proxy sits on it and on the egress network (the engine's default bridge, or
``LOGIST_EGRESS_NETWORK``). Networks and proxies are labelled like every container; they live
while the process that runs the job runs (a session's, while the session runs), and whatever a
killed runner leaves is reaped as an orphan by the sweep (``reap_orphan_networks``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logist import containers, netns, output, podman
from logist.background import Background
from logist.container_spec import JOB, MANAGED, NETWORK, PROXY, ROOT, STEP, ContainerSpec, labels
from logist.egress import PROXY_PORT, DeniedLog, parse_patterns, squid_config
from logist.errors import EngineUnavailable, EnvironmentProblem, LogistError, Rejected
from logist.netns import Attachment
from logist.store import owner_id

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from logist.jobrun import JobRun

PROXY_IMAGE = "logist/proxy:latest"
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
# the prefixes of bridges' names, for the host's firewall (scripts/ensure-podman.sh, job-bridges.sh)
INTERNAL_BRIDGE = "lgi"  # Podman's internal networks
JOB_BRIDGE = "lgj"  # Docker's job networks (not internal)
READY_TIMEOUT = 30.0  # seconds for the proxy to listen
DRAIN_QUIET = 0.05  # after a step: the proxy's log is read until quiet this long...
DRAIN_MAX = 0.3  # ...or this long at most
PROXY_LIMITS = {"memory": "256m", "pids": 256, "cpus": 1.0}


def network_name(job_id: str, jobs_root: Path) -> str:
    """``logist-<id>-<8 hex of the jobs root>``: names are engine-wide, and two jobs roots may
    each have a job of the same id."""
    import hashlib

    return f"logist-{job_id}-{hashlib.sha256(str(jobs_root).encode()).hexdigest()[:8]}"


def proxy_image() -> str:
    """The proxy's image: ``LOGIST_PROXY_IMAGE``, else ``PROXY_IMAGE``."""
    return os.environ.get("LOGIST_PROXY_IMAGE") or PROXY_IMAGE


def egress_network() -> str:
    """The network the proxy reaches the outside on: ``LOGIST_EGRESS_NETWORK``, else the
    engine's default bridge."""
    return os.environ.get("LOGIST_EGRESS_NETWORK") or "bridge"


class JobNetwork:
    """The networks (and proxy) of one job while this process runs it: ``open`` makes them
    (``begin`` in the background, while the workspace is made; ``ready`` waits for them),
    ``attachment`` is what each of its containers gets, ``denied`` hands over what the proxy
    refused since the last call, ``close`` removes them (idempotent; ``close_soon`` in the
    background, while the last harvest runs)."""

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.name: str | None = None
        self.proxy: Container | None = None
        self.attachment = Attachment(run.job.network)
        self.log = DeniedLog()
        self._stream: Any = None
        self._reader: threading.Thread | None = None
        self._fed = 0.0  # when the proxy last said something (monotonic)
        self._opening: Background | None = None
        self._closing: threading.Thread | None = None
        self.hold = False  # the steps share one held namespace (netns.py): set before ``_make``
        self.holder: Container | None = None

    @property
    def cli(self) -> DockerClient:
        """The calling thread's client of the job's engine (``begin`` makes the first one in
        its own thread: the SDK's import overlaps the workspace's set-up)."""
        return self.run.dock.client()

    @classmethod
    def begin(
        cls, run: JobRun, after: Callable[[], None] | None = None, hold: bool = False
    ) -> JobNetwork:
        """``open``, in a thread of its own (once ``after`` returned: the orphan reap, which may
        be removing a killed run's network of this job); ``ready`` waits for it. ``hold``: the
        run has several steps, which share a held namespace where the engine allows it."""
        net = cls(run)
        net.hold = hold

        def make() -> None:
            if after is not None:
                after()
            net._make()

        net._opening = Background(make, "logist-network")
        return net

    def ready(self) -> Attachment:
        """What the job's containers get, once the network (and proxy) are there.

        Raises:
            what ``open`` raises.
        """
        if self._opening is not None:
            self._opening.wait()
        return self.attachment

    @classmethod
    def open(cls, run: JobRun) -> JobNetwork:
        """Make the job's network (and proxy) on its engine; nothing for ``none`` and ``host``.

        Raises:
            Rejected: the engine cannot make them, or refused them (exit 2).
            ImageMissing: no proxy image (exit 3). EnvironmentProblem: the engine failed.
        """
        net = cls(run)
        net._make()
        return net

    def _make(self) -> None:
        try:
            self._make_network()
        except BaseException:
            self._remove()
            raise
        if self.hold and netns.can_hold(self.cli, self.run.job):
            with contextlib.suppress(LogistError):  # then each step gets the network itself
                self.holder, self.attachment = netns.hold(self.run, self.cli, self.attachment)

    def holder_lost(self) -> str | None:
        """Why the steps' held namespace is unusable (its holder stopped), else None."""
        return None if self.holder is None else netns.lost(self.cli, self.holder)

    def _make_network(self) -> None:
        job = self.run.job
        if job.network != "bridge":
            return
        if not _bridges(self.cli):
            if job.allow_hosts:
                raise Rejected(
                    f"--allow-host needs networks of the job's own, which rootless Podman cannot "
                    f"make here ({podman.TUN} is not usable by this user): use rootful Podman or "
                    "Docker"
                )
            return  # the default bridge, which podman.adapt makes `none` (said once)
        if not job.allow_hosts:
            self._create(internal=False)
            return
        making = Background(lambda: self._create(internal=True), "logist-network-create")
        try:
            prepared = self._prepare_proxy()  # meanwhile
        finally:
            making.join()
        making.wait()
        self._create_proxy(*prepared)
        self._start_proxy()

    # --- making ---------------------------------------------------------------------------

    def _create(self, internal: bool) -> None:
        import docker

        job, name = self.run.job, network_name(self.run.job.id, self.run.store.root)
        tags = labels(job.id, NETWORK, self.run.store.root, owner_id())
        what = f"creating the network {name}"
        with containers.engine_errors(what, self.cli):
            for attempt in range(3):
                try:
                    _create_network(self.cli, name, internal, tags)
                    break
                except docker.errors.APIError as exc:
                    if attempt == 2 or not (exc.status_code == 409 or exc.is_server_error()):
                        raise
                    if exc.status_code == 409:  # a killed run's (we hold its lock)
                        _remove_stale(self.cli, name, job.id, self.run.store.root)
                    else:  # e.g. Podman listing the host's interfaces while one goes
                        time.sleep(0.2)
        self.name = name
        self.attachment = Attachment(name)

    def _prepare_proxy(self) -> tuple[str, Any]:
        """The proxy's image (there) and its log's settings on this engine."""
        cli, image = self.cli, proxy_image()
        containers.ensure_image(cli, image, "missing")
        with containers.engine_errors("asking the engine what it is", cli):
            return image, output.log_config(cli, podman.is_podman(cli))

    def _create_proxy(self, image: str, log_config: Any) -> None:
        """The proxy's container, on the egress network (not yet on the job's), serving the
        job's network's subnets only."""
        job, cli, root = self.run.job, self.cli, self.run.store.root
        with containers.engine_errors(f"inspecting the network {self.name}", cli):
            ipam = (cli.api.inspect_network(self.name).get("IPAM") or {}).get("Config") or []
        subnets = [c["Subnet"] for c in ipam if c.get("Subnet")]
        if not subnets:
            raise EnvironmentProblem(f"the engine gave the network {self.name} no subnet")
        conf = squid_config(parse_patterns(job.allow_hosts), list(job.allow_private), subnets)
        spec = ContainerSpec(
            image=image,
            command=[],
            job_id=job.id,
            step=PROXY,
            jobs_root=root,
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
        self.proxy = containers.create(cli, spec)

    def _start_proxy(self) -> None:
        """On the job's network, started, listening: its address is the steps' proxy."""
        cli, box, image = self.cli, self.proxy, proxy_image()
        assert box is not None and self.name is not None
        with containers.engine_errors("starting the job's proxy", cli):
            cli.api.connect_container_to_network(box.id, self.name)
            if output.attaches(box):  # before the start: its first lines are not missed
                self._stream = output.Attached(box, self.run.dock.timeout)
            box.start()
            if self._stream is None:
                self._stream = box.logs(stream=True, follow=True, stdout=True, stderr=True)
        self._reader = threading.Thread(target=self._read, daemon=True, name="logist-proxy")
        self._reader.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.log.ready:
            if not self._reader.is_alive() or time.monotonic() > deadline:
                tail = " | ".join(x.decode("utf-8", "replace") for x in self.log.tail[-2:])
                raise EnvironmentProblem(
                    f"the job's proxy ({image}) did not start listening: {tail or 'no output'}"
                )
            time.sleep(0.01)
        with containers.engine_errors("inspecting the job's proxy", cli):
            box.reload()
        ip = ((box.attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(self.name, {})
        address = ip.get("IPAddress")
        if not address:
            raise EnvironmentProblem(f"the job's proxy has no address on {self.name}")
        url = f"http://{address}:{PROXY_PORT}"
        env = {k: url for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
        env.update(NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1")
        # names resolve nowhere: the proxy resolves them (it answers no DNS). On Podman the
        # host keeps an IPv6 link-local address on the bridge (services on `::` would answer
        # there): the steps get no IPv6
        sysctls = NO_IPV6 if podman.is_podman(cli) else None
        self.attachment = Attachment(self.name, env, dns=[address], sysctls=sysctls)

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for chunk in self._stream:
                if isinstance(chunk, str):
                    chunk = chunk.encode()
                self._fed = time.monotonic()
                self.log.feed(chunk)

    # --- while steps run ------------------------------------------------------------------

    def denied(self) -> dict[str, Any] | None:
        """What the proxy refused since the last call (``{"denied": {HOST:PORT: n}}``); None
        without a proxy. Waits (briefly) for the proxy's log to go quiet first."""
        if self.proxy is None:
            return None
        start = time.monotonic()
        while time.monotonic() - self._fed < DRAIN_QUIET and time.monotonic() - start < DRAIN_MAX:
            time.sleep(0.01)
        return self.log.take()

    # --- removal --------------------------------------------------------------------------

    def close_soon(self) -> None:
        """Start ``close`` in the background (the job's containers are done with them)."""
        if self._closing is None:
            self._closing = threading.Thread(target=self.close, daemon=True, name="logist-unnet")
            self._closing.start()

    def close(self) -> None:
        """Remove the proxy and the network (after an ``open`` under way, or a ``close_soon``).
        What the engine keeps is left to the sweep."""
        if self._opening is not None:
            self._opening.join()
        closing = self._closing
        if closing is not None and closing is not threading.current_thread():
            closing.join()
            return
        self._remove()

    def _remove(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        if self.run.dock.lost():  # an engine just found gone is not waited on: the sweep's
            return
        import docker

        def remove_proxy(box: Container) -> None:
            with (
                containers.engine_errors("removing the job's proxy", self.cli),
                contextlib.suppress(docker.errors.NotFound),
            ):
                box.remove(force=True)  # it keeps nothing: killed at once

        if self.holder is not None:  # before the network: it sits on it
            box, self.holder = self.holder, None
            netns.release(self.cli, box)
        with contextlib.suppress(LogistError):
            going = None
            if self.proxy is not None:
                box, self.proxy = self.proxy, None
                if self.name is not None:  # off the network first: the two go at once
                    with contextlib.suppress(Exception):
                        self.cli.api.disconnect_container_from_network(box.id, self.name, True)
                going = Background(lambda: remove_proxy(box), "logist-unproxy")
            try:
                if self.name is not None:
                    net = self.cli.networks.prepare_model({"Id": self.name, "Name": self.name})
                    remove_networks(self.cli, self.run.store.root, nets=[net])
                    self.name = None
            finally:
                if going is not None:
                    going.wait()


def _remove_stale(cli: DockerClient, name: str, job_id: str, jobs_root: Path) -> None:
    """The network ``name`` a killed run of this job left, and the job's containers still on
    it (another container on it keeps it: the create then fails, naming the network). One of a
    job of the same id in another jobs root is never touched: ``Rejected``."""
    import docker

    what = f"removing the stale network {name}"
    with containers.engine_errors(what, cli):
        try:
            net = cli.networks.get(name)
        except docker.errors.NotFound:
            return
    tags = net.attrs.get("Labels") or {}
    if tags.get(JOB) != job_id or tags.get(ROOT) != str(jobs_root):
        raise Rejected(
            f"the engine has a network {name} that is not this job's (another jobs root's job "
            f"{tags.get(JOB) or '?'} at {tags.get(ROOT) or '?'}): job ids must differ between "
            "the jobs roots of one engine"
        )
    with containers.engine_errors(what, cli):
        for box in net.containers:
            labels = box.labels or {}
            if labels.get(JOB) == job_id and labels.get(ROOT) == str(jobs_root):
                # gone, or a sweep removing it too ("removal already in progress"): its end
                with contextlib.suppress(docker.errors.APIError):
                    box.remove(force=True)
    remove_networks(cli, jobs_root, nets=[net])  # retried while the endpoints go


def _create_network(cli: DockerClient, name: str, internal: bool, tags: dict) -> None:
    """The job's network on its engine. Docker, internal: no address of the host's on its
    bridge (an internal network's gateway is otherwise the host itself, every service it
    listens on reachable from the steps); not internal: its bridge named for the host's
    firewall (Docker's isolation lapses while it makes a network: docs/security.md). Podman:
    ``isolate`` (netavark otherwise routes between its networks); an internal one without a
    DNS server and its bridge named for the host's firewall (docs/podman.md, "Networks").

    Raises:
        docker.errors.APIError: the engine refused (409: the name is taken).
    """
    if not podman.is_podman(cli):
        options = (
            {"com.docker.network.bridge.inhibit_ipv4": "true"}
            if internal
            else {"com.docker.network.bridge.name": bridge_name(name, JOB_BRIDGE)}
        )
    elif internal:
        podman.create_internal_network(cli, name, tags, bridge_name(name, INTERNAL_BRIDGE))
        return
    else:
        options = {"isolate": "true"}
    cli.networks.create(
        name, driver="bridge", internal=internal, labels=tags, options=options, check_duplicate=True
    )


def bridge_name(name: str, prefix: str) -> str:
    """The host's interface of the network ``name``, named for the host's firewall: ``prefix``
    (JOB_BRIDGE, INTERNAL_BRIDGE) and 12 hex (15 characters, the kernel's limit)."""
    import hashlib

    return prefix + hashlib.sha256(name.encode()).hexdigest()[:12]


def _bridges(cli: DockerClient) -> bool:
    """Whether the engine can give a container a network of the job's own (not: a rootless
    Podman without ``/dev/net/tun``)."""
    try:
        info = podman.engine_info(cli) if podman.is_podman(cli) else None
    except Exception:
        return True  # what follows reports an engine that fails
    return info is None or not info.rootless or podman.bridge_possible(cli)


# --- finding and removing, for cleanup, cancel and the sweep --------------------------------


def find_networks(cli: DockerClient, jobs_root: Path, job_id: str | None = None) -> list:
    """Networks labelled for ``jobs_root`` (and ``job_id``)."""
    filters = [f"{MANAGED}=true", f"{ROOT}={jobs_root}"]
    if job_id:
        filters.append(f"{JOB}={job_id}")
    with containers.engine_errors("listing networks", cli):
        return cli.networks.list(filters={"label": filters})


def remove_networks(
    cli: DockerClient, jobs_root: Path, job_id: str | None = None, nets: list | None = None
) -> int:
    """Remove the job's networks (or ``nets``), retried while a removed container's endpoint
    goes; how many went.

    Raises:
        EngineRejected, EnvironmentProblem, EngineUnavailable: one could not be removed.
    """
    import docker

    removed = 0
    for net in find_networks(cli, jobs_root, job_id) if nets is None else nets:
        for attempt in range(6):
            try:
                what = f"removing the network {net.name}"
                with (
                    containers.engine_errors(what, cli),
                    contextlib.suppress(docker.errors.NotFound),
                ):
                    net.remove()
                removed += 1
                break
            except EngineUnavailable:
                raise  # no answer in the deadline: once, not six times (the sweep reaps it)
            except LogistError:
                if attempt == 5:
                    raise
                time.sleep(0.1 * 2**attempt)
    return removed


def remove_job(cli: DockerClient, jobs_root: Path, job_id: str, grace: float) -> int:
    """Stop and remove every container of the job, then its networks; containers removed."""
    count = containers.stop_and_remove(containers.find(cli, jobs_root, job_id), grace=grace)
    remove_networks(cli, jobs_root, job_id)
    return count


def reap_orphan_networks(
    cli: DockerClient, jobs_root: Path, is_orphan, dry_run: bool, failed: list | None = None
) -> int:
    """Remove the networks of ``jobs_root`` whose labels ``is_orphan`` says are orphans (after
    the orphan containers, which may sit on them); how many (would) go. One the engine will not
    remove (another's container sits on it) is added to ``failed`` as ``{"job", "error"}`` and
    the others still go.

    Raises:
        EngineUnavailable: the engine stopped answering.
    """
    orphans = [n for n in find_networks(cli, jobs_root) if is_orphan(n.attrs.get("Labels") or {})]
    if dry_run or not orphans:
        return len(orphans)
    removed = 0
    for net in orphans:
        try:
            removed += remove_networks(cli, jobs_root, nets=[net])
        except EngineUnavailable:
            raise
        except LogistError as exc:
            job = (net.attrs.get("Labels") or {}).get(JOB, "")
            if failed is not None:
                failed.append({"job": job, "error": f"left behind: {exc}"})
    return removed


__all__ = ["STEP", "Attachment", "JobNetwork", "network_name", "remove_job"]
