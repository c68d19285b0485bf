"""A container of a job's own (a step's, a session's): ``job_container`` makes its spec (its
user, environment, workspace, network, resources, runtime, capabilities); ``read_secrets``
reads the job's secrets, when each container starts."""

from __future__ import annotations

import os

from logist import output, podman
from logist.container_spec import DEFAULT_CAPS, ContainerSpec
from logist.errors import Rejected
from logist.jobrun import JobRun
from logist.netns import Attachment
from logist.store import owner_id
from logist.workspaces import Workspace


def job_container(
    run: JobRun,
    workspace: Workspace,
    cli,
    image: str,
    command: list[str],
    label: int | str,
    secrets: dict[str, str],
    net: Attachment | None = None,
) -> ContainerSpec:
    """A container of the job's own (a step's, a session's): its user, environment, the
    workspace at /workspace, its network (``net``: the job's, else ``job.network``), resources,
    runtime and capabilities; labelled ``label`` (the step's index, ``session``)."""
    job = run.job
    net = net or Attachment(job.network)
    env = {
        "LOGIST_JOB_ID": job.id,
        # git inside the step trusts the workspace whoever owns it
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
    }
    if isinstance(label, int):
        env["LOGIST_STEP"] = str(label)
    if job.prompt is not None:
        env["LOGIST_PROMPT"] = job.prompt
    env.update(net.env)  # the proxy's address: the job's own values may not replace it
    env.update({k: v for k, v in job.env.items() if k not in net.env})
    env.update(secrets)  # in the container's environment only: see docs/security.md
    return ContainerSpec(
        image=image,
        command=command,
        job_id=job.id,
        step=label,
        jobs_root=run.store.root,
        owner=owner_id(),
        user=job.user,
        env=env,
        workdir="/workspace",
        mounts=[workspace.mount()],
        network=net.network,
        dns=net.dns,
        dns_opt=net.dns_opt,
        sysctls=net.sysctls,
        memory=job.memory or None,
        cpus=job.cpus or None,
        pids=job.pids or None,
        runtime=job.runtime or None,
        cap_add=[*DEFAULT_CAPS, *job.cap_add],
        # the command only: an image's HEALTHCHECK would run beside it, from the start (before
        # the first step's gate opens: red team)
        healthcheck={"test": ["NONE"]},
        # no amplification of its output by the engine
        log_config=output.log_config(cli, podman.is_podman(cli)),
    )


def read_secrets(names: list[str]) -> dict[str, str]:
    """The values of the job's secrets, from logist's own environment, now.

    Raises:
        Rejected: one is not set (named in the message).
    """
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise Rejected(
            f"secret {', '.join(missing)} is not set in logist's environment "
            "(export it in the shell that runs the job)"
        )
    return {n: os.environ[n] for n in names}
