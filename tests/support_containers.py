"""Containers a test makes itself, labelled as logist labels its own."""

from __future__ import annotations

import io
from pathlib import Path


def labelled_container(docker_client, jobs_root: Path, job: str, owner: str = "nohost:1:1", **run):
    """A running container labelled for step 1 of ``job`` in ``jobs_root``, made by ``owner``
    (by default no process alive anywhere), for logist to find, stop and remove. Its PID 1 is
    ``sleep``, which ignores SIGTERM: a stop waits the whole grace unless ``init=True``
    (``run``: more options of ``containers.run``)."""
    return docker_client.containers.run(
        "logist/busybox:latest",
        ["sleep", "3600"],
        detach=True,
        network_mode="none",
        labels={
            "logist.managed": "true",
            "logist.jobs-dir": str(jobs_root),
            "logist.job": job,
            "logist.step": "1",
            "logist.owner": owner,
        },
        **run,
    )


def built_image(docker_client, tag: str, dockerfile: str) -> str:
    """``tag``, built from ``dockerfile`` (the caller removes it)."""
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag
