"""The one place containers are created (always labelled and hardened), run, stopped, listed
and reaped. A wrapper that knows no jobs: the owner identity and what makes a container an
orphan come from the caller."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logist import dock, podman
from logist.container_spec import JOB, MANAGED, OWNER, ROOT, STEP, ContainerSpec, labels
from logist.dock import dock_of, one_line, reason
from logist.errors import (
    EngineRejected,
    EngineUnavailable,
    EnvironmentProblem,
    ImageMissing,
    LogistError,
)

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

__all__ = ["JOB", "MANAGED", "OWNER", "ROOT", "STEP", "ContainerSpec", "create", "labels"]
STOP_GRACE = 5.0

BUSYBOX = "logist/busybox:latest"
DEFAULT = dock.DEFAULT


@contextlib.contextmanager
def engine_errors(what: str, cli: Any) -> Iterator[None]:
    """Map the SDK's failures of calls to ``cli``'s engine to the contract, by type and status
    code: a 4xx is ``EngineRejected`` (exit 2, the engine's explanation in one line), another
    API error ``EnvironmentProblem``, and no answer (refused, lost, or none within the
    deadline) ``EngineUnavailable`` (both exit 3; the engine is then marked lost).

    Raises:
        EngineRejected, EnvironmentProblem, EngineUnavailable: as above.
    """
    import docker
    import requests

    try:
        yield
    except docker.errors.APIError as exc:
        if exc.response is not None and exc.is_client_error():
            raise EngineRejected(
                f"{what}: the engine refused it: {one_line(exc.explanation)}"
            ) from None
        raise EnvironmentProblem(
            f"{what}: Docker engine error: "
            f"{podman.explain(str(exc.explanation)) or one_line(exc.explanation)}"
        ) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as exc:
        where = dock_of(cli)
        where.mark_lost()
        raise EngineUnavailable(
            f"{what}: Docker engine unreachable at {where.url}: {reason(exc)}"
        ) from None


def ensure_image(cli: DockerClient, image: str, pull: str = "missing") -> None:
    """Apply the pull policy; an image absent and not pullable is ``ImageMissing`` (exit 3)."""
    import docker

    with engine_errors(f"checking image {image}", cli):
        present = True
        try:
            cli.images.get(image)
        except docker.errors.ImageNotFound:
            present = False
        if pull == "never" or (pull == "missing" and present):
            if not present:
                raise ImageMissing(image, "pull policy is never", dock_of(cli).url)
            return
        try:
            _pull(cli, image)
        except docker.errors.APIError as exc:
            if not present:
                raise ImageMissing(
                    image, one_line(exc.explanation or exc), dock_of(cli).url
                ) from None
        except _PullTimedOut as exc:
            if not present:
                raise ImageMissing(image, str(exc), dock_of(cli).url) from None


def entrypoint_of(cli: DockerClient, image: str) -> list[str] | None:
    """The entrypoint ``image`` gives its containers (None: none)."""
    with engine_errors(f"checking image {image}", cli):
        config = cli.api.inspect_image(image).get("Config") or {}
    entrypoint = config.get("Entrypoint")
    return list(entrypoint) if isinstance(entrypoint, list) else None


class _PullTimedOut(Exception):
    pass


def _pull(cli: DockerClient, image: str) -> None:
    """Pull ``image`` within the engine's ``pull_timeout`` on a client of its own: the SDK
    reads a pull's stream without a deadline, so it is read in a thread, and a registry that
    stops answering is given up (the engine's pull ends with its own request).

    Raises:
        docker.errors.APIError: the engine or the registry refused it.
        _PullTimedOut: it did not finish in time.
    """
    import docker

    dock = dock_of(cli)
    repo, tag = docker.utils.parse_repository_tag(image)
    puller = dock.new_client(dock.timeout)
    outcome: list[BaseException | None] = []

    def pull() -> None:
        try:
            for event in puller.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    raise docker.errors.APIError(str(event["error"]))
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    pulling = threading.Thread(target=pull, name="logist-pull", daemon=True)
    pulling.start()
    pulling.join(dock.pull_timeout)
    if pulling.is_alive():
        puller.close()
        raise _PullTimedOut(f"the pull did not finish within {dock.pull_timeout:g}s")
    puller.close()
    if outcome and outcome[0] is not None:
        raise outcome[0]


def create(cli: DockerClient, spec: ContainerSpec) -> Container:
    """Create (not start) the container ``spec`` describes: labelled, hardened (see
    ``ContainerSpec.create_kwargs``), adapted to the engine (``podman.adapt``).

    Raises:
        EngineRejected: the engine refused a setting (a 4xx answer; its explanation in one line).
        ImageMissing: the image is not there.
        UsageError: a mount would expose the engine's socket.
        EngineUnavailable, EnvironmentProblem: the engine is unreachable or failed.
    """
    import docker

    kwargs = podman.adapt(cli, spec.create_kwargs(dock_of(cli).url))
    image = spec.image
    with engine_errors(f"creating a container of {image}", cli), podman.create_guard(cli):
        for attempt in range(3):
            try:
                return cli.containers.create(image, spec.command, **kwargs)
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(image, one_line(exc.explanation), dock_of(cli).url) from None
            except docker.errors.APIError as exc:
                if attempt == 2 or not podman.retry_create(cli, exc.explanation):
                    raise
                time.sleep(0.3 * (attempt + 1))
    raise AssertionError("unreachable")


def answers(cli: DockerClient) -> bool:
    """Whether the engine answers a ping within the request deadline."""
    try:
        return bool(cli.ping())
    except Exception:
        return False


def stop_for_sure(
    container: Container,
    grace: float = STOP_GRACE,
    *,
    attempts: int | None = 5,
    give_up: Callable[[], bool] = lambda: False,
) -> None:
    """Stop ``container`` (SIGTERM, SIGKILL after ``grace``); when the engine fails that or the
    container still runs, kill it, retried with backoff, until it is stopped or gone, or
    ``give_up()`` says so. After ``attempts`` (None: no limit) the last error is raised.

    Raises:
        docker.errors.APIError, requests.exceptions.RequestException: the engine kept failing.
    """
    import time

    import docker

    last: BaseException | None = None
    n = 0
    while True:
        try:
            if n == 0:
                container.stop(timeout=int(max(grace, 0)))
            else:
                container.kill()
        except docker.errors.NotFound:
            return
        except Exception as exc:  # a 409 "not running" included: the state decides below
            last = exc
        try:
            container.reload()
            if container.status not in ("running", "restarting", "paused"):
                return
            last = last or RuntimeError(f"container {container.short_id} still running")
        except docker.errors.NotFound:
            return
        except Exception as exc:
            last = exc
        n += 1
        if (attempts is not None and n >= attempts) or give_up():
            raise last
        time.sleep(min(0.2 * 2**n, 2.0))


def stop_and_remove(containers: Iterable[Container], grace: float = STOP_GRACE) -> int:
    """Stop each container (SIGTERM, then SIGKILL after ``grace``, escalating), remove it; count
    removed. The stops run in parallel so N containers take one grace period, not N.

    Raises:
        EngineRejected, EnvironmentProblem, EngineUnavailable: a container could not be removed.
    """
    import docker

    items = list(containers)
    removed = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(c: Container) -> None:
        try:
            with engine_errors(f"removing container {c.short_id}", c.client):
                try:
                    stop_for_sure(c, grace, give_up=lambda: not answers(c.client))
                    c.remove(force=True, v=True)
                except docker.errors.NotFound:
                    return
                except docker.errors.APIError as exc:
                    if exc.status_code == 409:  # a removal already in progress elsewhere
                        return
                    raise
            with lock:
                removed[0] += 1
        except Exception as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in items[1:]]
    for t in threads:
        t.start()
    if items:
        one(items[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return removed[0]


def find(cli: DockerClient, jobs_root: Path, job_id: str | None = None) -> list[Container]:
    """Containers labelled for ``jobs_root`` (and ``job_id``), running or not."""
    filters = [f"{MANAGED}=true", f"{ROOT}={jobs_root}"]
    if job_id:
        filters.append(f"{JOB}={job_id}")
    with engine_errors("listing containers", cli):
        return cli.containers.list(all=True, sparse=True, filters={"label": filters})


def mounting(cli: DockerClient, path: Path) -> list[Container]:
    """Every container (labelled or not) with ``path`` or something inside it mounted."""
    target = os.path.realpath(path)
    out = []
    with engine_errors("listing containers", cli):
        for c in cli.containers.list(all=True, sparse=True):
            sources = [m.get("Source") or "" for m in c.attrs.get("Mounts") or []]
            if any(s == target or s.startswith(target + "/") for s in sources):
                out.append(c)
    return out


def reap_orphans(
    cli: DockerClient,
    jobs_root: Path,
    is_orphan: Callable[[dict[str, str]], bool],
    dry_run: bool = False,
) -> int:
    """Remove the containers of ``jobs_root`` whose labels ``is_orphan`` says are orphans."""
    orphans = [c for c in find(cli, jobs_root) if is_orphan(c.attrs.get("Labels") or {})]
    if dry_run:
        return len(orphans)
    with engine_errors("removing orphan containers", cli):
        return stop_and_remove(orphans, grace=1)


# --- volumes: a job's workspace on an engine that does not share logist's file system ------


def create_volume(
    cli: DockerClient, name: str, *, job_id: str, jobs_root: Path, owner: str
) -> None:
    """Create the named volume ``name``, labelled like the job's containers (idempotent)."""
    with engine_errors(f"creating volume {name}", cli):
        cli.volumes.create(name, labels=labels(job_id, "workspace", jobs_root, owner))


def volume_exists(cli: DockerClient, name: str) -> bool:
    import docker

    with engine_errors(f"inspecting volume {name}", cli):
        try:
            cli.volumes.get(name)
        except docker.errors.NotFound:
            return False
    return True


def remove_volume(cli: DockerClient, name: str, attempts: int = 8) -> bool:
    """Remove the volume ``name``; retried while the engine says it is in use (a container
    being removed still holds it). True when it is gone.

    Raises:
        EnvironmentProblem, EngineUnavailable: the engine failed or went away.
    """
    import time

    import docker

    for n in range(attempts):
        with engine_errors(f"removing volume {name}", cli):
            try:
                cli.api.remove_volume(name)
                return True
            except docker.errors.NotFound:
                return True
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: in use
                    raise
        time.sleep(min(0.1 * 2**n, 2.0))
    return False


def find_volumes(cli: DockerClient, jobs_root: Path, job_id: str | None = None) -> list:
    """Volumes labelled for ``jobs_root`` (and ``job_id``)."""
    filters = [f"{MANAGED}=true", f"{ROOT}={jobs_root}"]
    if job_id:
        filters.append(f"{JOB}={job_id}")
    with engine_errors("listing volumes", cli):
        return cli.volumes.list(filters={"label": filters})


def using_volume(cli: DockerClient, name: str) -> list[Container]:
    """Every container (labelled or not) that mounts the volume ``name``."""
    with engine_errors("listing containers", cli):
        return cli.containers.list(all=True, sparse=True, filters={"volume": name})


def run_helper(
    cli: DockerClient,
    *,
    image: str,
    command: list[str],
    job_id: str,
    jobs_root: Path,
    owner: str,
    binds: dict[str, tuple[str, bool]],
    timeout: float = 300,
    user: str = "0:0",
    entrypoint: list[str] | None = None,
) -> tuple[int, str]:
    """Run a short-lived helper container to its end: wait, read the logs, then remove it.
    ``binds`` maps a host path to (container path, read-only); bind mounts that the engine
    refuses when it lacks the host path (never an empty directory made over there)."""
    import docker

    mounts = [
        docker.types.Mount(target, source, type="bind", read_only=ro)
        for source, (target, ro) in binds.items()
    ]
    container = create(
        cli,
        ContainerSpec(
            image=image,
            command=command,
            job_id=job_id,
            step="helper",
            jobs_root=jobs_root,
            owner=owner,
            mounts=mounts,
            user=user,
            network_disabled=True,
            entrypoint=entrypoint,
        ),
    )
    try:
        with engine_errors(f"running helper {image}", cli):
            container.start()
            status = container.wait(timeout=timeout)
            logs = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return int(status.get("StatusCode", 1)), logs
    except LogistError:
        raise
    except Exception as exc:  # the SDK's read timeout
        raise EnvironmentProblem(f"helper container {image} did not finish: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)


def run_as_root(
    cli: DockerClient,
    *,
    images: Iterable[str],
    command: list[str],
    job_id: str,
    jobs_root: Path,
    owner: str,
    host_path: Path,
    mount_at: str,
) -> bool:
    """Run ``command`` as root in a short-lived helper mounting ``host_path`` at ``mount_at``,
    with the first of ``images`` that is present; True when it exited 0. The program is the
    entrypoint: an image's own (the job's, last) never runs."""
    import docker

    for image in images:
        try:
            with engine_errors(f"checking image {image}", cli):
                try:
                    cli.images.get(image)
                except docker.errors.ImageNotFound:
                    continue
        except EngineRejected:
            continue
        code, _logs = run_helper(
            cli,
            image=image,
            command=command[1:],
            job_id=job_id,
            jobs_root=jobs_root,
            owner=owner,
            binds={str(host_path): (mount_at, False)},
            entrypoint=command[:1],
        )
        if code == 0:
            return True
    return False
