"""The job's network namespace, held for its steps (Docker): the holder.

Each container Docker starts gets a network namespace of its own, and on a network it gets a
veth, the engine's rules and (on a network of the job's own) the embedded DNS: measured here,
``docker run`` of ``true`` takes 0.31 s on a user-defined network, 0.21 s with ``none`` and
0.11 s joined to a running container's namespace. When one run has two steps or more, the job
gets one small container on its network, the holder (the helper's image, ``sleep``, nobody, no
capability, read-only), and each step runs in its namespace (``network_mode:
container:<holder>``): the same network, DNS and sysctls as before, made once a run instead of
once a step. The holder goes once the steps are done, before the network; cancel, cleanup and
the sweep find it by its labels (``logist.step=netns``) like any container of the job. A holder
that cannot start leaves the steps on the network itself: it only makes them faster.

Steps of one job share one trust domain (their workspace): what one leaves in the namespace (a
route, with a capability the operator granted) the next meets, as it meets its files. No
process outlives its step's container; the holder runs nothing of the step's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from logist import containers, output, podman
from logist.container_spec import NETNS, ContainerSpec, helper_image
from logist.store import owner_id

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from logist.jobrun import JobRun
    from logist.model import Job


@dataclass
class Attachment:
    """What a container of the job gets: its network, environment and DNS servers."""

    network: str
    env: dict[str, str] = field(default_factory=dict)
    dns: list[str] | None = None
    sysctls: dict[str, str] | None = None

    @property
    def dns_opt(self) -> list[str] | None:
        """A name that cannot resolve fails in a second, not twenty."""
        return ["timeout:1", "attempts:1"] if self.dns else None


HOLDER_LIMITS = {"memory": "32m", "pids": 16}
NOBODY = "65534:65534"


def can_hold(cli: DockerClient, job: Job) -> bool:
    """Whether the job's steps may share a held namespace: on ``bridge`` (the job's own
    network) or ``none``, with the engine's default runtime (gVisor's ``runsc`` takes the
    addresses out of the namespace it starts in, for itself; Kata joins none), on Docker
    (Podman keeps its own way: docs/podman.md)."""
    return job.network in ("bridge", "none") and not job.runtime and not podman.is_podman(cli)


def hold(run: JobRun, cli: DockerClient, attachment: Attachment) -> tuple[Container, Attachment]:
    """Start the holder on ``attachment``'s network (with its DNS and sysctls); the holder and
    what the job's steps get now (its namespace, the same environment).

    Raises:
        what ``containers.create`` raises, and EnvironmentProblem/EngineUnavailable for a start
        the engine failed (the holder is then removed).
    """
    spec = ContainerSpec(  # the helper's image: the job's helper makes sure it is there
        image=helper_image(),
        command=["sleep", "infinity"],
        job_id=run.job.id,
        step=NETNS,
        jobs_root=run.store.root,
        owner=owner_id(),
        user=NOBODY,
        network=attachment.network,
        dns=attachment.dns,
        dns_opt=attachment.dns_opt,
        sysctls=attachment.sysctls,
        memory=HOLDER_LIMITS["memory"],
        pids=HOLDER_LIMITS["pids"],
        cap_add=[],
        read_only=True,
        log_config=output.log_config(cli, False),
    )
    box = containers.create(cli, spec)
    try:
        with containers.engine_errors("starting the job's network holder", cli):
            box.start()
    except BaseException:
        release(cli, box)
        raise
    return box, Attachment(f"container:{box.id}", dict(attachment.env))


def lost(cli: DockerClient, box: Container) -> str | None:
    """Why the holder's namespace is unusable (it stopped, or went, outside logist: nothing of
    a step's can reach it), else None."""
    try:
        running = (cli.api.inspect_container(box.id).get("State") or {}).get("Running")
    except Exception:  # gone, or an engine that does not answer: its steps cannot start
        running = False
    if running:
        return None
    return (
        f"the job's network holder (container {box.short_id}) stopped outside logist: the "
        "job is interrupted (`logist job run` resumes it)"
    )


def release(cli: DockerClient, box: Container) -> None:
    """Remove the holder (killed at once: it keeps nothing). Whatever stops that (gone
    already, an engine that fails) is left to the sweep (the network's removal then says so)."""
    with contextlib.suppress(Exception):
        cli.api.remove_container(box.id, force=True, v=True)


__all__ = ["Attachment", "can_hold", "hold", "lost", "release"]
