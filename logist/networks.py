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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logist import containers, netns, podman, quicknet
from logist.background import Background
from logist.container_spec import JOB, MANAGED, NETWORK, ROOT, STEP, labels
from logist.errors import EngineUnavailable, LogistError, Rejected
from logist.gate import Gate
from logist.netns import Attachment
from logist.proxy import Proxy, prepare
from logist.store import owner_id

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from logist.jobrun import JobRun

# the prefixes of bridges' names, for the host's firewall (scripts/ensure-podman.sh, job-bridges.sh)
INTERNAL_BRIDGE = "lgi"  # Podman's internal networks
JOB_BRIDGE = "lgj"  # Docker's job networks (not internal)


def network_name(job_id: str, jobs_root: Path) -> str:
    """``logist-<id>-<8 hex of the jobs root>``: names are engine-wide, and two jobs roots may
    each have a job of the same id."""
    import hashlib

    return f"logist-{job_id}-{hashlib.sha256(str(jobs_root).encode()).hexdigest()[:8]}"


class JobNetwork:
    """The networks (and proxy) of one job while this process runs it: ``open`` makes them
    (``begin`` in the background, while the workspace is made; ``ready`` waits for them),
    ``attachment`` is what each of its containers gets, ``denied`` hands over what the proxy
    refused since the last call, ``close`` removes them (idempotent; ``close_soon`` in the
    background, while the last harvest runs). Begun with ``gate``, the proxy's start goes on
    beside the first step's (``take_gate``, ``listened``: ``logist/gate.py``)."""

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.name: str | None = None
        self.proxy: Proxy | None = None
        self.attachment = Attachment(run.job.network)
        self._opening: Background | None = None
        self._listening: Background | None = None  # the proxy's start, beside the first step
        self._gate: Gate | None = None
        self._gate_taken = False
        self._closing: threading.Thread | None = None
        self.hold = False  # the steps share one held namespace (netns.py): set before ``_make``
        self.gated = False  # the first step may start beside the proxy: set before ``_make``
        self.holder: Container | None = None

    @property
    def cli(self) -> DockerClient:
        """The calling thread's client of the job's engine (``begin`` makes the first one in
        its own thread: the SDK's import overlaps the workspace's set-up)."""
        return self.run.dock.client()

    @classmethod
    def begin(
        cls, run: JobRun, after: Callable[[], None], hold: bool = False, gate: bool = False
    ) -> JobNetwork:
        """``open``, in a thread of its own, once ``after`` returned (the orphan reap, which may
        be removing a killed run's network of this job); ``ready`` waits for it. ``hold``: the
        run has several steps, which share a held namespace where the engine allows it;
        ``gate``: the engine sees the job directory, so a step may wait at a gate in it."""
        net = cls(run)
        net.hold, net.gated = hold, gate

        def make() -> None:
            net.name = _made_early(run)  # before the reap and the SDK's import (local Docker)
            after()
            net._make()

        net._opening = Background(make, "logist-network")
        return net

    def ready(self) -> Attachment:
        """What the job's containers get, once the network (and proxy) are there; with a gate,
        the proxy may still be starting (``take_gate``).

        Raises:
            what ``open`` raises.
        """
        if self._opening is not None:
            self._opening.wait()
        return self.attachment

    @classmethod
    def open(cls, run: JobRun) -> JobNetwork:
        """Make the job's network (and proxy, listening) on its engine; nothing for ``none``
        and ``host``.

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
            prepared = prepare(self.cli)  # meanwhile
        finally:
            making.join()
        making.wait()
        assert self.name is not None
        self.proxy = proxy = Proxy(self.run, self.name)
        gate = self._new_gate() if self.gated and proxy.by_name else None
        if gate is not None:  # made and started beside the first step's
            self._gate = gate
            self.attachment = proxy.attachment()

            def listen() -> None:
                try:
                    proxy.create(*prepared)
                    proxy.start()
                except BaseException:
                    gate.say(False)
                    raise
                gate.say(True)

            self._listening = Background(listen, "logist-proxy-start")
        else:
            proxy.create(*prepared)
            self.attachment = proxy.attachment(proxy.start())

    def _new_gate(self) -> Gate | None:
        """The first step's gate; None where the job directory takes no FIFO (the proxy then
        starts before the first step, as on other engines)."""
        try:
            return Gate(self.run.dir.gate)
        except OSError:
            return None

    # --- making ---------------------------------------------------------------------------

    def _create(self, internal: bool) -> None:
        import docker

        job, name = self.run.job, network_name(self.run.job.id, self.run.store.root)
        if self.name == name:  # made early (``quicknet``)
            self.attachment = Attachment(name)
            return
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

    # --- while steps run ------------------------------------------------------------------

    def take_gate(self) -> Gate | None:
        """The gate of the step made now: the first step's (once; None after, and without a
        gate), which may start while the proxy does.

        Raises:
            what the proxy's start raised, when it failed already.
        """
        gate = self._gate
        if gate is None or self._gate_taken:
            return None
        if gate.said is False:
            self.listened()
        self._gate_taken = True
        return gate

    def listened(self) -> None:
        """After a step's end (its container gone): the proxy's start waited for, the gate
        closed.

        Raises:
            what the proxy's start raised (a gated step then did not run: the gate said no).
        """
        listening, self._listening = self._listening, None
        try:
            if listening is not None:
                listening.wait()
        finally:
            gate, self._gate = self._gate, None
            if gate is not None:
                gate.close()

    def denied(self) -> dict[str, Any] | None:
        """What the proxy refused since the last call (``{"denied": {HOST:PORT: n}}``); None
        without a proxy. Waits (briefly) for the proxy's log to go quiet first."""
        return None if self.proxy is None else self.proxy.denied()

    # --- removal --------------------------------------------------------------------------

    def close_soon(self) -> None:
        """Start ``close`` in the background (the job's containers are done with them)."""
        if self._closing is None:
            self._closing = threading.Thread(target=self.close, daemon=True, name="logist-unnet")
            self._closing.start()

    def close(self) -> None:
        """Remove the proxy and the network (after an ``open`` under way, or a ``close_soon``).
        What the engine keeps is left to the sweep."""
        for making in (self._opening, self._listening):
            if making is not None:
                making.join()
        closing = self._closing
        if closing is not None and closing is not threading.current_thread():
            closing.join()
            return
        self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(Exception):
            self.listened()  # the proxy's start is over: its failure was the step's to say
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            proxy.stop_reading()
        if self.run.dock.lost():  # an engine just found gone is not waited on: the sweep's
            return
        if self.holder is not None:  # before the network: it sits on it
            box, self.holder = self.holder, None
            netns.release(self.cli, box)
        with contextlib.suppress(LogistError):
            going = None
            if proxy is not None:
                proxy.leave()  # off the network first: the two go at once
                going = Background(proxy.remove, "logist-unproxy")
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
    # the orphan reap may be removing them too (gone, or "removal already in progress")
    for box_id in net.attrs.get("Containers") or {}:
        with containers.engine_errors(what, cli), contextlib.suppress(docker.errors.APIError):
            labels = (cli.api.inspect_container(box_id).get("Config") or {}).get("Labels") or {}
            if labels.get(JOB) == job_id and labels.get(ROOT) == str(jobs_root):
                cli.api.remove_container(box_id, force=True, v=True)
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
        options = _docker_options(name, internal)
    elif internal:
        podman.create_internal_network(cli, name, tags, bridge_name(name, INTERNAL_BRIDGE))
        return
    else:
        options = {"isolate": "true"}
    cli.api.create_network(  # not ``networks.create``: its inspect of the result is not needed
        name, driver="bridge", internal=internal, labels=tags, options=options, check_duplicate=True
    )


def _docker_options(name: str, internal: bool) -> dict[str, str]:
    """A job's network's driver options on Docker (``_create_network`` says why)."""
    if internal:
        return {"com.docker.network.bridge.inhibit_ipv4": "true"}
    return {"com.docker.network.bridge.name": bridge_name(name, JOB_BRIDGE)}


def _made_early(run: JobRun) -> str | None:
    """The job's network's name, when ``quicknet`` made it (a local Docker engine); else None,
    and the SDK path makes it after the orphan reap (or on any failure here)."""
    job = run.job
    if job.network != "bridge":
        return None
    name, internal = network_name(job.id, run.store.root), bool(job.allow_hosts)
    tags = labels(job.id, NETWORK, run.store.root, owner_id())
    options = _docker_options(name, internal)
    made = quicknet.create(run.dock.url, name, options, internal, tags, run.dock.timeout)
    return name if made else None


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
