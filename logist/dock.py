"""Engines as logist talks to them: a ``Dock`` is one engine (its URL, a client per thread,
what it said of itself once, when it was last found gone); ``Docks`` are a jobs root's, made
by its ``Runtime`` and passed on explicitly (``Store.docks``). Nothing here is global.

The SDK's failures become the contract's errors in one place, ``containers.engine_errors``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from logist.errors import EngineUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from docker import DockerClient

DEFAULT = "default"  # an engine name: the one the SDK finds (DOCKER_HOST, else the socket)
DOCKER_TIMEOUT = 30.0  # seconds any engine call but a step's own wait may take
PULL_TIMEOUT = 600.0  # seconds an image pull may take (LOGIST_PULL_TIMEOUT)
LOST_FOR = 30.0  # seconds an engine found gone is not waited on again by best-effort calls
PROBE_FOR = 5.0  # seconds a reachability probe's answer is remembered


def default_engine() -> str:
    """The engine the docker SDK finds: ``DOCKER_HOST``, else the default socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def request_timeout() -> float:
    """``LOGIST_DOCKER_TIMEOUT`` (default 30 s): the deadline of every engine call that is not
    a step's own wait; an engine silent for longer counts as gone (exit 3)."""
    return float(os.environ.get("LOGIST_DOCKER_TIMEOUT") or DOCKER_TIMEOUT)


class Dock:
    """One engine: ``url`` (``default``: what ``DOCKER_HOST`` names, else the socket)."""

    def __init__(self, url: str | None = None, timeout: float | None = None) -> None:
        self.name = DEFAULT if url in (None, "", DEFAULT) else str(url).rstrip("/")
        self.url = default_engine() if self.name == DEFAULT else self.name
        self.timeout = request_timeout() if timeout is None else timeout
        self.pull_timeout = float(os.environ.get("LOGIST_PULL_TIMEOUT") or PULL_TIMEOUT)
        self.version = Asked()  # what it is, in /version's shape (``_said``)
        self.info = Asked()  # ``podman.EngineInfo`` (Podman's answer runs dpkg-query: costly)
        self.said: set[str] = set()  # what ``podman.say_once`` said of this engine
        self._local = threading.local()
        # every live thread's client, closed by ``close``; an ended thread's goes with it (a
        # thread per step or helper would otherwise keep a connection each: descriptors)
        self._clients: weakref.WeakSet[DockerClient] = weakref.WeakSet()
        self._lost_at: float | None = None
        self._probed: tuple[float, bool] | None = None

    def client(self) -> DockerClient:
        """This thread's client of the engine; each call has the ``timeout`` deadline.

        Raises:
            EngineUnavailable: the SDK cannot make a client for the URL.
        """
        made = getattr(self._local, "client", None)
        if made is None:
            made = self._local.client = self.new_client(self.timeout)
            self._clients.add(made)
        return made

    def close(self) -> None:
        """Close every thread's client (their connections); a later ``client`` makes anew."""
        clients, self._clients = list(self._clients), weakref.WeakSet()
        self._local = threading.local()
        for made in clients:
            with contextlib.suppress(Exception):
                made.close()

    def new_client(self, timeout: float) -> DockerClient:
        """A client of its own (the caller closes it), with ``timeout``, at the engine's API
        version: asked once (``version``), which the SDK's ``auto`` would ask again for each.

        Raises:
            EngineUnavailable: no engine answers at the URL.
        """
        import docker

        said = self.version.get(lambda: self._ask(timeout), min(timeout, PROBE_FOR))
        try:
            made = self._from_env(timeout, str(said["ApiVersion"]))
        except (docker.errors.DockerException, *_NOT_VERSION) as exc:
            raise EngineUnavailable(
                f"Docker engine unreachable at {self.url}: {reason(exc)}"
            ) from None
        made._logist_dock = self  # type: ignore[attr-defined]
        if self.url.startswith("unix://"):
            # no proxy reaches a socket: requests would read the environment for each call
            made.api.trust_env = False
        return made

    def _ask(self, timeout: float) -> dict:
        """What the engine is (``_said``), asked on a client of its own."""
        import docker
        import requests

        try:
            first = self._from_env(timeout, docker.constants.DEFAULT_DOCKER_API_VERSION)
            try:
                return _said(first, timeout)
            finally:
                first.close()
        except (docker.errors.DockerException, requests.RequestException, *_NOT_VERSION) as exc:
            raise EngineUnavailable(
                f"Docker engine unreachable at {self.url}: {reason(exc)}"
            ) from None

    def _from_env(self, timeout: float, version: str) -> DockerClient:
        import docker

        if self.name == DEFAULT:
            return docker.from_env(timeout=timeout, version=version)
        # DOCKER_TLS_VERIFY / DOCKER_CERT_PATH apply to every tcp:// engine
        return docker.from_env(
            timeout=timeout,
            version=version,
            environment={**os.environ, "DOCKER_HOST": self.url},
            use_ssh_client=self.url.startswith("ssh://"),
        )

    def lost(self) -> bool:
        """Whether a call found the engine unreachable in the last ``LOST_FOR`` seconds:
        best-effort calls (removing a helper) then skip it rather than wait for the deadline
        again; the sweep reaps what is left."""
        seen = self._lost_at
        return seen is not None and time.monotonic() - seen < LOST_FOR

    def mark_lost(self) -> None:
        self._lost_at = time.monotonic()

    def answers(self, timeout: float = 3.0) -> bool:
        """Whether the engine answers a ping within ``timeout`` (remembered ``PROBE_FOR`` s)."""
        seen = self._probed
        if seen is None or time.monotonic() - seen[0] > PROBE_FOR:
            seen = self._probed = (time.monotonic(), self.ping(timeout))
        return seen[1]

    def ping(self, timeout: float = 3.0) -> bool:
        """Whether the engine answers a ping within ``timeout`` (asked now, on a new client)."""
        try:
            cli = self.new_client(timeout)
        except EngineUnavailable:
            return False
        try:
            return bool(cli.ping())
        except Exception:
            return False
        finally:
            cli.close()

    def __repr__(self) -> str:
        return f"Dock({self.name!r})"


class Asked:
    """One thing asked of an engine once: threads asking together wait for the first answer;
    a failure is raised again for ``forget_after`` seconds (a hung engine costs one deadline,
    not one per thread in turn), then asked anew."""

    def __init__(self) -> None:
        self.value: Any = None
        self._lock = threading.Lock()
        self._failed: tuple[float, Exception] | None = None  # when, and why

    def get(self, ask: Callable[[], Any], forget_after: float) -> Any:
        """The answer, asked with ``ask()`` unless known.

        Raises:
            what ``ask`` raised (again, within ``forget_after`` seconds).
        """
        if self.value is not None:
            return self.value
        with self._lock:
            if self.value is None:
                failed = self._failed
                if failed is not None and time.monotonic() - failed[0] < forget_after:
                    raise failed[1]
                try:
                    self.value = ask()
                except Exception as exc:
                    self._failed = (time.monotonic(), exc)
                    raise
        return self.value


class Docks:
    """The engines of one runtime, each made once (thread-safe)."""

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._made: dict[str, Dock] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            made = list(self._made.values())
        for dock in made:
            dock.close()

    def get(self, url: str | None) -> Dock:
        name = DEFAULT if url in (None, "", DEFAULT) else str(url).rstrip("/")
        with self._lock:
            dock = self._made.get(name)
            if dock is None:
                dock = self._made[name] = Dock(name, self.timeout)
        return dock


def dock_of(cli: Any) -> Dock:
    """The ``Dock`` a client was made by (a client made elsewhere, e.g. a test's: a ``Dock``
    of its own, made once)."""
    if isinstance(cli, Dock):
        return cli
    dock = getattr(cli, "_logist_dock", None)
    if dock is None:
        base = str(getattr(getattr(cli, "api", None), "base_url", "") or "")
        dock = Dock(base if base.startswith(("tcp://", "ssh://")) else None)
        with contextlib.suppress(AttributeError):
            cli._logist_dock = dock
    return dock


_REASONS = (
    ("FileNotFoundError", "no socket there (is the engine running?)"),
    ("No such file", "no socket there (is the engine running?)"),
    ("ConnectionRefusedError", "connection refused"),
    ("Connection refused", "connection refused"),
    ("Connection aborted", "the connection was lost (engine stopped?)"),
    ("RemoteDisconnected", "the connection was lost (engine stopped?)"),
    ("No route to host", "no route to its host (is it down?)"),
    ("Read timed out", "the engine did not answer in time"),
    ("timed out", "the engine did not answer in time"),
)


_NOT_VERSION = (LookupError, ValueError, TypeError, RecursionError)  # not an answer to /version


def _said(cli: DockerClient, timeout: float) -> dict:
    """What the engine at ``cli`` is, in ``/version``'s shape (``ApiVersion``, ``Version``,
    Podman's entry in ``Components``), from the headers of its ``/_ping``: ``/version`` costs
    the engine more (Docker runs ``runc --version`` and ``docker-init --version`` for it,
    Podman ``dpkg-query`` several times). An engine whose ping does not say: its ``/version``.
    """
    resp = cli.api.get(f"{cli.api.base_url}/_ping", timeout=timeout)
    resp.raise_for_status()
    api = resp.headers.get("Api-Version")
    if not api:
        said = cli.version(api_version=False)
        if not isinstance(said, dict) or not isinstance(said.get("ApiVersion"), str):
            raise ValueError("its /version says no API version")
        return said
    server = resp.headers.get("Server") or ""
    version = server.split("/", 1)[1].split(" ", 1)[0] if "/" in server else server
    said: dict = {"ApiVersion": api, "Version": version, "Components": []}
    libpod = resp.headers.get("Libpod-Api-Version")
    if libpod:
        said["Components"] = [
            {"Name": "Podman Engine", "Version": libpod, "Details": {"APIVersion": libpod}}
        ]
    return said


def reason(exc: BaseException) -> str:
    """Why a call found no engine, in a few words."""
    text = str(exc)
    for marker, why in _REASONS:
        if marker in text:
            return why
    return text.splitlines()[0][:200] if text else type(exc).__name__


def one_line(text: object) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:300] if lines else "no explanation"
