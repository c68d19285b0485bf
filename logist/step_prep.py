"""A step's container before it starts: its secrets read, its image there, the container created
(not started). ``Ahead`` makes the next step's while the previous step's harvest runs, so its
start does not wait for the engine's create; creating a container runs nothing of it and
touches no workspace file."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from logist import containers
from logist.job_container import job_container, read_secrets

if TYPE_CHECKING:
    from docker.models.containers import Container

    from logist.gate import Gate
    from logist.jobrun import JobRun
    from logist.model import Step
    from logist.networks import JobNetwork
    from logist.workspaces import Workspace


@dataclass
class Made:
    """A step's created container and the secrets it was given (masked in its output)."""

    container: Container
    secrets: dict[str, str]
    gate: Gate | None = None  # it waits there for the job's proxy: its clock starts at go


def make(run: JobRun, step: Step, workspace: Workspace, net: JobNetwork) -> Made:
    """Read the step's secrets, make sure of its image, create its container.

    Raises:
        Rejected: a secret missing, or a setting the engine refused (the step does not start).
        ImageMissing, EnvironmentProblem, EngineUnavailable: as ``containers`` raises them.
    """
    job = run.job
    secrets = read_secrets(job.secrets)  # now, and before any container exists
    cli = run.dock.client()
    image = step.image or job.image
    containers.ensure_image(cli, image, job.pull)
    command = ["/bin/sh", "-c", step.run]
    spec = job_container(run, workspace, cli, image, command, step.index, secrets, net.attachment)
    if (gate := net.take_gate()) is not None:  # it starts beside the job's proxy
        spec.mounts.append(gate.mount())
        spec.entrypoint = gate.entrypoint(containers.entrypoint_of(cli, image))
    return Made(containers.create(cli, spec), secrets, gate)


class Ahead:
    """``make`` of ``step`` in a thread of its own; ``take`` hands it over (or raises what making
    it raised), ``discard`` removes a container nobody took (the job stopped before the step)."""

    def __init__(self, run: JobRun, step: Step, workspace: Workspace, net: JobNetwork) -> None:
        self.run = run
        self.step = step
        self._made: Made | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._make, args=(workspace, net), name="logist-step-ahead", daemon=True
        )
        self._thread.start()

    def _make(self, workspace: Workspace, net: JobNetwork) -> None:
        try:
            self._made = make(self.run, self.step, workspace, net)
        except BaseException as exc:  # handed to ``take``, in the caller's thread
            self._error = exc

    def take(self, step: Step) -> Made | None:
        """What was made for ``step`` (its container bound to this thread's client); None when
        it was made for another step, or is gone."""
        import docker

        self._thread.join()
        if step is not self.step:
            self.discard()
            return None
        error, self._error = self._error, None
        if error is not None:
            raise error
        made, self._made = self._made, None
        assert made is not None
        cli = self.run.dock.client()
        made.container = cli.containers.prepare_model(made.container.attrs)
        try:  # removed meanwhile (a `docker container prune` of created ones): made anew
            made.container.reload()
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError:
            pass  # the start says what the engine thinks of it
        return made

    def discard(self) -> None:
        """Remove the container made and not taken (best effort: the sweep reaps the rest)."""
        self._thread.join()
        made, self._made = self._made, None
        if made is not None:
            with contextlib.suppress(Exception):
                made.container.remove(force=True, v=True)
