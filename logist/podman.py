"""Podman behind the Docker-compatible API: what kind of engine answers, and the few settings
a rootless Podman needs so a step runs as the contract says. See docs/podman.md.

Facts this module acts on (Podman 4.3 on Debian bookworm): a rootless Podman maps the
container's uids into the user's subordinate range, so a step running as the invoking user
cannot write its workspace unless the user namespace keeps the user's id (``keep-id``); it gets
a bridge network only through slirp4netns, which needs ``/dev/net/tun``; on cgroup v1 it
ignores ``--memory``/``--cpus``/``--pids``. Its logs endpoint answers (headers included) only
with a container's first output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logist.container_spec import DEFAULT_MEMORY, DEFAULT_PIDS, STEP
from logist.dock import PROBE_FOR, dock_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from docker import DockerClient
    from docker.models.containers import Container

TUN = "/dev/net/tun"
FALLBACK_NETWORK = "none"

_lock = threading.Lock()


@dataclass(frozen=True)
class EngineInfo:
    kind: str  # "Docker" | "Podman"
    version: str
    api_version: str
    rootless: bool
    cgroup_version: str  # "1", "2" or "" when unknown

    @property
    def label(self) -> str:
        mode = "rootless " if self.rootless else ""
        return f"{mode}{self.kind} {self.version} (API {self.api_version})"

    @property
    def limits_ignored(self) -> bool:
        """A rootless Podman on cgroup v1 runs containers without their resource limits."""
        return self.kind == "Podman" and self.rootless and self.cgroup_version == "1"


def engine_info(cli: DockerClient) -> EngineInfo:
    """What answers at ``cli`` (``/version``'s components name Podman; rootless and the cgroup
    version from Podman's own ``/libpod/info``, else Docker's ``/info``); asked once per engine
    (its ``Dock``).

    Raises:
        docker.errors.APIError, requests.exceptions.RequestException: the engine failed.
    """
    return dock_of(cli).info.get(lambda: _ask_info(cli), PROBE_FOR)


def _ask_info(cli: DockerClient) -> EngineInfo:
    v = _version(cli)
    component = _component(v)
    if component:
        kind, version = "Podman", str(component.get("Version") or v.get("Version"))
        rootless, cgroup = _podman_host(cli)
    else:
        kind, version = "Docker", str(v.get("Version"))
        info = _obj(cli.info())
        rootless = any("rootless" in str(o) for o in _list(info.get("SecurityOptions")))
        cgroup = str(info.get("CgroupVersion") or "")
    return EngineInfo(kind, version, str(v.get("ApiVersion") or ""), rootless, cgroup)


def _component(v: dict) -> dict:
    """Podman's entry among ``/version``'s components ({} for Docker)."""
    components = [_obj(c) for c in _list(v.get("Components"))]
    return next((c for c in components if "podman" in str(c.get("Name", "")).lower()), {})


def _obj(value: Any) -> dict:
    """``value`` if the engine answered an object there, else {} (an engine's answers are
    read defensively: a malformed one is no traceback)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _libpod(cli: DockerClient, path: str) -> str:
    """The URL of ``path`` in Podman's own API, versioned (unversioned: a 404)."""
    component = _component(_version(cli))
    api = _obj(component.get("Details")).get("APIVersion") or component.get("Version")
    return f"{cli.api.base_url}/v{api}/libpod/{path}"


def _version(cli: DockerClient) -> dict:
    """What the engine is, in ``/version``'s shape, asked once per engine (its ``Dock``; a
    client made elsewhere, e.g. a test's: its ``/version``)."""
    return dock_of(cli).version.get(lambda: _obj(cli.version()), PROBE_FOR)


def is_podman(cli: DockerClient) -> bool:
    """Whether Podman answers at ``cli`` (``/version`` asked once per engine)."""
    return bool(_component(_version(cli)))


def _podman_host(cli: DockerClient) -> tuple[bool, str]:
    resp = cli.api.get(_libpod(cli, "info"), timeout=dock_of(cli).timeout)
    resp.raise_for_status()
    host = _obj(_obj(resp.json()).get("host"))
    rootless = bool(_obj(host.get("security")).get("rootless"))
    return rootless, str(host.get("cgroupVersion") or "").removeprefix("v")


def create_internal_network(cli: DockerClient, name: str, labels: dict, bridge: str) -> None:
    """An internal network ``name`` through Podman's own API (the compatible one cannot turn
    its DNS server off): isolated, with no DNS server (a step could ask aardvark-dns on the
    gateway for any outside name), its bridge named ``bridge`` (for the host's firewall).

    Raises:
        docker.errors.APIError: the engine refused (409: the name is taken).
    """
    import docker
    import requests

    body = {
        "name": name,
        "driver": "bridge",
        "internal": True,
        "dns_enabled": False,
        "network_interface": bridge,
        "labels": labels,
        "options": {"isolate": "true"},
    }
    resp = cli.api.post(_libpod(cli, "networks/create"), json=body, timeout=dock_of(cli).timeout)
    try:
        resp.raise_for_status()
    except requests.exceptions.HTTPError as exc:
        raise docker.errors.create_api_error_from_http_exception(exc) from None


def bridge_possible(cli: DockerClient) -> bool:
    """Whether a rootless Podman at ``cli`` can give a container a bridge network:
    slirp4netns opens ``/dev/net/tun`` as the user who runs it (the user running logist, for
    a local socket). For an engine elsewhere we cannot tell, and assume it can."""
    if not dock_of(cli).url.startswith("unix://"):
        return True
    return os.access(TUN, os.R_OK | os.W_OK)


def say_once(cli: DockerClient, key: str, message: str) -> None:
    """Print ``message`` on stderr, once per engine (its ``Dock``)."""
    said = dock_of(cli).said
    with _lock:
        if key in said:
            return
        said.add(key)
    print(f"logist: {message}", file=sys.stderr, flush=True)


def adapt(cli: DockerClient, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``containers.create``'s settings for the engine at ``cli``: unchanged for Docker and a
    rootful Podman. For a rootless Podman, a bridge network that is impossible here becomes
    ``none`` (said once), and ignored resource limits are said once. (The user namespace that
    keeps the user's id, so a step as the invoking user can write its workspace, is Podman's
    ``userns = "keep-id"`` in containers.conf: the SDK refuses ``userns_mode`` but ``host``;
    ``doctor`` checks it.)"""
    try:
        info = engine_info(cli) if is_podman(cli) else None
    except Exception:  # the create that follows reports an engine that fails
        return kwargs
    if info is None or not info.rootless:
        return kwargs
    if kwargs.get("network_mode", "bridge") in ("bridge", "default") and not bridge_possible(cli):
        kwargs["network_mode"] = FALLBACK_NETWORK
        say_once(
            cli,
            "network",
            f"rootless Podman cannot give containers a bridge network here ({TUN} is not "
            f"usable by this user): steps run with --network {FALLBACK_NETWORK}; pass "
            "--network host for network access (the host's network, not isolated)",
        )
    step = (kwargs.get("labels") or {}).get(STEP)
    asked = [  # the helper's own limits, and the defaults, are logist's, not the user's: not said
        flag
        for flag, key in (("--memory", "mem_limit"), ("--cpus", "nano_cpus"))
        if kwargs.get(key) not in (None, 0, DEFAULT_MEMORY) and step != "helper"
    ]
    if kwargs.get("pids_limit") not in (None, DEFAULT_PIDS) and step != "helper":
        asked.append("--pids")
    if info.limits_ignored and asked:
        say_once(
            cli,
            "limits",
            f"rootless Podman on cgroup v1 ignores resource limits: {'/'.join(asked)} will "
            "not be enforced (nor the default pids and memory limits); use rootful Podman, "
            "Docker, or a cgroup v2 host",
        )
    return kwargs


def follow_logs(container: Container) -> Any:
    """``container.logs(stream=True, follow=True, stdout=True, stderr=True)``; from Podman,
    asked without a read deadline: Podman sends the response's headers only with the
    container's first output, so the client's request deadline would count a silent step as an
    engine gone (the caller watches the engine by pinging it meanwhile). The stream itself has
    no deadline either way (the SDK lifts it)."""
    if not is_podman(container.client):
        return container.logs(stream=True, follow=True, stdout=True, stderr=True)
    from docker.types.daemon import CancellableStream

    api = container.client.api
    # the SDK's own logs request (APIClient.logs), with (connect, read) deadlines of our own
    params = {"stdout": 1, "stderr": 1, "timestamps": 0, "follow": 1, "tail": "all"}
    url = api._url("/containers/{0}/logs", container.id)
    deadline = (dock_of(container.client).timeout, None)
    res = api._get(url, params=params, stream=True, timeout=deadline)
    return CancellableStream(api._get_result(container.id, True, res), res)


def explain(message: str) -> str | None:
    """A one-line fix for an engine error that Podman is known to give, or None."""
    text = message.lower()
    if "slirp4netns" in text or TUN in text:
        return (
            f"rootless Podman cannot make a bridge network here ({TUN} is not usable): "
            "use --network none or --network host"
        )
    if "rlimit" in text:
        return (
            "Podman's default ulimits exceed this host's: set default_ulimits in "
            "containers.conf (scripts/ensure-podman.sh does)"
        )
    if "catatonit" in text or "init binary" in text:
        return "Podman's --init needs catatonit: apt-get install catatonit"
    return None


_CREATES = threading.Lock()
_RACY = "keep-id requires additional"  # Podman 4.3, rootless: a create racing another one


@contextlib.contextmanager
def create_guard(cli: DockerClient) -> Iterator[None]:
    """Around a container create: on rootless Podman one create at a time in this process
    (4.3 fails a keep-id create that races another with "keep-id requires additional UIDs";
    where the engine does not say what it is, the create goes on: ``retry_create`` then)."""
    try:
        info = engine_info(cli) if is_podman(cli) else None
    except Exception:  # the create that follows reports an engine that fails
        info = None
    if info is None or not info.rootless:
        yield
        return
    with _CREATES:
        yield


def retry_create(cli: DockerClient, explanation: object) -> bool:
    """Whether a failed create is Podman's known race (another process's create): worth
    another try after a moment."""
    return _RACY in str(explanation or "") and is_podman(cli)
