"""What every container logist makes looks like: its options as one type (``ContainerSpec``),
the contract's labels, and the hardening no caller can leave out.

One table (``CREATE_KWARGS``, after docker-py's ``RUN_CREATE_KWARGS``) says which option goes
to which argument of the SDK's ``containers.create``; ``ContainerSpec.create_kwargs`` applies
it, adds the labels and hardens the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logist.errors import UsageError

MANAGED, JOB, STEP, ROOT, OWNER = (
    "logist.managed",
    "logist.job",
    "logist.step",
    "logist.jobs-dir",
    "logist.owner",
)
# Capabilities a step (or helper) running as root keeps; every other one is dropped. Measured
# with apt-get update/install (through apt's ``_apt`` sandbox) and pip install in
# logist/step:latest; why each is needed is in docs/security.md ("Hardened steps").
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")
DEFAULT_PIDS = 4096
# a step given no memory limit: one step cannot take the host's memory (swap: none)
DEFAULT_MEMORY = "8g"
SESSION = "session"  # the logist.step label of a session's container
PROXY, NETWORK = "proxy", "network"  # the logist.step labels of a job's proxy and network
NETNS = "netns"  # the logist.step label of the container holding the steps' namespace (netns.py)
HELPER_IMAGE = "logist/step:latest"  # the harvest helper's (never the step's own image)
_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")

# ContainerSpec field -> the SDK's ``containers.create`` keyword (None values are left out)
CREATE_KWARGS = {
    "user": "user",
    "env": "environment",
    "workdir": "working_dir",
    "mounts": "mounts",
    "network": "network_mode",
    "network_disabled": "network_disabled",
    "dns": "dns",
    "dns_opt": "dns_opt",
    "sysctls": "sysctls",
    "memory": "mem_limit",
    "memory_swap": "memswap_limit",
    "pids": "pids_limit",
    "runtime": "runtime",
    "log_config": "log_config",
    "stdin_open": "stdin_open",
    "init": "init",
    "read_only": "read_only",
    "tmpfs": "tmpfs",
    "entrypoint": "entrypoint",
    "healthcheck": "healthcheck",
}


def helper_image() -> str:
    """The harvest helper's image: ``LOGIST_HELPER_IMAGE``, else ``HELPER_IMAGE``."""
    return os.environ.get("LOGIST_HELPER_IMAGE") or HELPER_IMAGE


def labels(job_id: str, step: int | str, jobs_root: Path, owner: str) -> dict[str, str]:
    """The contract's labels; every container and volume logist creates carries them."""
    return {MANAGED: "true", JOB: job_id, STEP: str(step), ROOT: str(jobs_root), OWNER: owner}


@dataclass
class ContainerSpec:
    """One container of a job: a step, the harvest helper, a setup or cleanup box. ``step``
    is its ``logist.step`` label (an index, ``helper``, ``setup``); ``owner`` the process
    responsible for it (``host:pid:start``). ``cap_add`` None: ``DEFAULT_CAPS``; ``[]``: none."""

    image: str
    command: list[str]
    job_id: str
    step: int | str
    jobs_root: Path
    owner: str
    user: str | None = None
    env: dict[str, str] | None = None
    workdir: str | None = None
    mounts: list[Any] = field(default_factory=list)
    network: str = "none"
    # logist's own boxes (helper, setup, removal): no network sandbox at all, not even one of
    # ``none`` (Docker then runs no network hook at start: ~150 ms less a container). Loopback
    # is still up; /etc/hosts and /etc/resolv.conf are the image's.
    network_disabled: bool | None = None
    dns: list[str] | None = None
    dns_opt: list[str] | None = None
    sysctls: dict[str, str] | None = None
    memory: int | str | None = None
    memory_swap: int | str | None = None
    cpus: float | None = None
    pids: int | None = None
    runtime: str | None = None
    cap_add: list[str] | tuple[str, ...] | None = None
    log_config: Any = None
    stdin_open: bool | None = None
    init: bool = True
    read_only: bool | None = None
    tmpfs: dict[str, str] | None = None
    entrypoint: list[str] | None = None  # None: the image's
    healthcheck: dict[str, Any] | None = None  # None: the image's

    def create_kwargs(self, engine_url: str) -> dict[str, Any]:
        """The SDK's ``containers.create`` keywords (but image and command): labelled and
        hardened (no new privileges, every capability dropped but ``cap_add``, a pids limit and
        a memory limit by default, never privileged, the engine's socket at ``engine_url``
        never mounted).

        Raises:
            UsageError: a mount would expose the engine's socket.
        """
        out = {
            kw: getattr(self, name)
            for name, kw in CREATE_KWARGS.items()
            if getattr(self, name) is not None
        }
        if self.cpus:
            out["nano_cpus"] = int(self.cpus * 1e9)
        out["labels"] = labels(self.job_id, self.step, self.jobs_root, self.owner)
        _refuse_engine_socket(self.mounts, engine_url)
        out["security_opt"] = ["no-new-privileges"]
        out["cap_drop"] = ["ALL"]
        caps = DEFAULT_CAPS if self.cap_add is None else self.cap_add
        out["cap_add"] = list(dict.fromkeys(c.upper().removeprefix("CAP_") for c in caps))
        out.setdefault("pids_limit", DEFAULT_PIDS)
        out.setdefault("mem_limit", DEFAULT_MEMORY)
        # no swap: the engine's default gives as much again
        out.setdefault("memswap_limit", out["mem_limit"])
        out["privileged"] = False
        return out


def _engine_sockets(engine_url: str) -> set[str]:
    """Paths of the engine's socket (the one logist talks to, and the usual ones), resolved."""
    paths = list(_SOCKETS)
    if engine_url.startswith("unix://"):
        paths.append(engine_url[len("unix://") :])
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        paths += [f"{runtime_dir}/docker.sock", f"{runtime_dir}/podman/podman.sock"]
    return {os.path.realpath(p) for p in paths}


def _bind_sources(mounts: list[Any]) -> list[str]:
    sources = []
    for mount in mounts:
        source = mount.get("Source") if isinstance(mount, dict) else None
        if source and (mount.get("Type") or "volume") == "bind":
            sources.append(str(source))
    return sources


def _refuse_engine_socket(mounts: list[Any], engine_url: str) -> None:
    """The engine's socket (or a directory holding it) is never mounted into a container."""
    sockets = _engine_sockets(engine_url)
    for source in _bind_sources(mounts):
        if not source.startswith("/"):
            continue  # a named volume
        real = os.path.realpath(source)
        if any(s == real or s.startswith(real.rstrip("/") + "/") for s in sockets):
            raise UsageError(f"refusing to mount {source} into a container: it exposes the engine")
