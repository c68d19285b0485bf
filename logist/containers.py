"""The one place containers are created (always labelled and hardened), run, stopped, listed
and reaped. A wrapper that knows no jobs: the owner identity and what makes a container an
orphan come from the caller."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logist import output, podman
from logist.errors import (
    EngineRejected,
    EngineUnavailable,
    EnvironmentProblem,
    ImageMissing,
    LogistError,
    UsageError,
)

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

MANAGED, JOB, STEP, ROOT, OWNER = (
    "logist.managed",
    "logist.job",
    "logist.step",
    "logist.jobs-dir",
    "logist.owner",
)
STOP_GRACE = 5.0
WATCH_POLL = 0.025  # seconds between a running step's should_stop() polls (a cancel's latency)
DOCKER_TIMEOUT = 30.0  # seconds any engine call but a step's own wait may take (env overrides)
BUSYBOX = "logist/busybox:latest"

_local = threading.local()
_API_VERSIONS: dict[str, str] = {}  # engine URL -> the API version it said it speaks
DEFAULT = "default"  # an engine name: the one the SDK finds (DOCKER_HOST, else the socket)


def default_engine() -> str:
    """The engine the docker SDK finds: ``DOCKER_HOST``, else the default socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def engine_location() -> str:
    """The URL of the engine this thread talks to (``use``), else of the default one."""
    return getattr(_local, "engine", None) or default_engine()


def current() -> str | None:
    """The engine ``use`` set for this thread (None: the default)."""
    return getattr(_local, "engine", None)


@contextlib.contextmanager
def use(engine: str | None) -> Iterator[None]:
    """Inside: this thread's ``client()`` talks to ``engine`` (None: the default engine)."""
    before = getattr(_local, "engine", None)
    _local.engine = None if engine in (None, "", DEFAULT) else engine
    try:
        yield
    finally:
        _local.engine = before


def request_timeout() -> float:
    """``LOGIST_DOCKER_TIMEOUT`` (default 30 s): the deadline of every engine call that is not
    a step's own wait; an engine silent for longer counts as gone (exit 3)."""
    return float(os.environ.get("LOGIST_DOCKER_TIMEOUT") or DOCKER_TIMEOUT)


def client(engine: str | None = None, timeout: float | None = None) -> DockerClient:
    """A Docker client of this thread for ``engine`` (default: the one ``use`` set, else the one
    the SDK finds: ``DOCKER_HOST``, socket); each of its calls has the ``request_timeout()``
    deadline (or ``timeout``; such a client is not cached)."""
    url = engine if engine not in (None, "", DEFAULT) else None
    if engine is None:
        url = getattr(_local, "engine", None)
    if url is not None and url.rstrip("/") == default_engine().rstrip("/"):
        url = None
    cache: dict = _local.__dict__.setdefault("clients", {})
    key = url or ""
    if timeout is None and key in cache:
        return cache[key]
    import docker

    deadline = request_timeout() if timeout is None else timeout
    where = url or default_engine()
    # the API version is asked of each engine once a process, not once a thread (~8 ms each)
    version = _API_VERSIONS.get(where, "auto")
    try:
        if url is None:
            made = docker.from_env(timeout=deadline, version=version)
        else:  # DOCKER_TLS_VERIFY / DOCKER_CERT_PATH apply to every tcp:// engine
            made = docker.from_env(
                timeout=deadline,
                version=version,
                environment={**os.environ, "DOCKER_HOST": url},
                use_ssh_client=url.startswith("ssh://"),
            )
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(
            f"Docker engine unreachable at {url or default_engine()}: {_reason(exc)}"
        ) from None
    _API_VERSIONS.setdefault(where, made.api.api_version)
    made._logist_where = where  # type: ignore[attr-defined]
    if timeout is None:
        cache[key] = made
    return made


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


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker, reason in _REASONS:
        if marker in text:
            return reason
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _one_line(text: object) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:300] if lines else "no explanation"


@contextlib.contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Map the SDK's failures to the contract, by type and status code: a 4xx is
    ``EngineRejected`` (exit 2, the engine's explanation in one line), another API error
    ``EnvironmentProblem``, and no answer (refused, lost, or none within ``request_timeout()``)
    ``EngineUnavailable`` (both exit 3).

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
                f"{what}: the engine refused it: {_one_line(exc.explanation)}"
            ) from None
        raise EnvironmentProblem(
            f"{what}: Docker engine error: "
            f"{podman.explain(str(exc.explanation)) or _one_line(exc.explanation)}"
        ) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as exc:
        _LOST[engine_location()] = time.monotonic()
        raise EngineUnavailable(
            f"{what}: Docker engine unreachable at {engine_location()}: {_reason(exc)}"
        ) from None


_LOST: dict[str, float] = {}  # engine -> when a call to it last found it unreachable
LOST_FOR = 30.0


def lost(engine: str | None = None) -> bool:
    """Whether a call to ``engine`` (default: this thread's) found it unreachable in the last
    ``LOST_FOR`` seconds: best-effort calls (removing a helper) then skip it, rather than wait
    for the deadline again; the sweep reaps what is left."""
    seen = _LOST.get(engine or engine_location())
    return seen is not None and time.monotonic() - seen < LOST_FOR


def labels(job_id: str, step: int | str, jobs_root: Path, owner: str) -> dict[str, str]:
    """The contract's labels; every container logist creates carries them."""
    return {MANAGED: "true", JOB: job_id, STEP: str(step), ROOT: str(jobs_root), OWNER: owner}


def ensure_image(cli: DockerClient, image: str, pull: str = "missing") -> None:
    """Apply the pull policy; an image absent and not pullable is ``ImageMissing`` (exit 3)."""
    import docker

    with engine_errors(f"checking image {image}"):
        present = True
        try:
            cli.images.get(image)
        except docker.errors.ImageNotFound:
            present = False
        if pull == "never" or (pull == "missing" and present):
            if not present:
                raise ImageMissing(image, "pull policy is never", engine_location())
            return
        try:
            cli.images.pull(image)
        except docker.errors.APIError as exc:
            if not present:
                raise ImageMissing(
                    image, _one_line(exc.explanation or exc), engine_location()
                ) from None


# Capabilities a step (or helper) running as root keeps; every other one is dropped. Measured
# with apt-get update/install (through apt's ``_apt`` sandbox) and pip install in
# logist/step:latest; why each is needed is in docs/security.md ("Hardened steps").
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")
DEFAULT_PIDS = 4096
_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")


def _engine_sockets() -> set[str]:
    """Paths of the engine's socket (the one logist talks to, and the usual ones), resolved."""
    paths = list(_SOCKETS)
    host = engine_location()
    if host.startswith("unix://"):
        paths.append(host[len("unix://") :])
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        paths += [f"{runtime_dir}/docker.sock", f"{runtime_dir}/podman/podman.sock"]
    return {os.path.realpath(p) for p in paths}


def _mount_sources(kwargs: dict[str, Any]) -> list[str]:
    volumes = kwargs.get("volumes") or {}
    sources = (
        [str(v).split(":", 1)[0] for v in volumes]
        if isinstance(volumes, list | tuple)
        else [str(k) for k in volumes]
    )
    for mount in kwargs.get("mounts") or []:
        source = mount.get("Source") if isinstance(mount, dict) else None
        if source and (mount.get("Type") or "volume") == "bind":
            sources.append(str(source))
    return sources


def _refuse_engine_socket(kwargs: dict[str, Any]) -> None:
    """The engine's socket (or a directory holding it) is never mounted into a container."""
    sockets = _engine_sockets()
    for source in _mount_sources(kwargs):
        if not source.startswith("/"):
            continue  # a named volume
        real = os.path.realpath(source)
        if any(s == real or s.startswith(real.rstrip("/") + "/") for s in sockets):
            raise UsageError(f"refusing to mount {source} into a container: it exposes the engine")


def _hardened(kwargs: dict[str, Any], cap_add: list[str] | None) -> dict[str, Any]:
    """``kwargs`` with logist's hardened defaults: no new privileges, every capability dropped
    but ``cap_add`` (``DEFAULT_CAPS`` when None), a pids limit, never privileged."""
    _refuse_engine_socket(kwargs)
    security = [o for o in kwargs.get("security_opt") or [] if not o.startswith("no-new-priv")]
    kwargs["security_opt"] = [*security, "no-new-privileges"]
    kwargs["cap_drop"] = ["ALL"]
    caps = DEFAULT_CAPS if cap_add is None else cap_add
    kwargs["cap_add"] = list(dict.fromkeys(c.upper().removeprefix("CAP_") for c in caps))
    if kwargs.get("pids_limit") is None:
        kwargs["pids_limit"] = DEFAULT_PIDS
    kwargs["privileged"] = False
    return kwargs


def create(
    cli: DockerClient,
    *,
    image: str,
    command: list[str],
    job_id: str,
    step: int | str,
    jobs_root: Path,
    owner: str,
    cap_add: list[str] | None = None,
    **kwargs: Any,
) -> Container:
    """Create (not start) a labelled, hardened container with an init process; ``owner``
    identifies the process responsible for it (the caller's ``host:pid:start``).

    Hardened: ``no-new-privileges``, all capabilities dropped and only ``cap_add`` added back
    (``DEFAULT_CAPS`` when None; pass ``[]`` for none), a pids limit (``DEFAULT_PIDS`` unless
    ``pids_limit`` is given), never privileged, the engine's socket never mounted.

    Raises:
        EngineRejected: the engine refused a setting (a 4xx answer; its explanation in one line).
        ImageMissing: the image is not there.
        UsageError: a mount would expose the engine's socket.
        EngineUnavailable, EnvironmentProblem: the engine is unreachable or failed.
    """
    import docker

    kwargs.setdefault("init", True)
    kwargs["labels"] = {**kwargs.get("labels", {}), **labels(job_id, step, jobs_root, owner)}
    kwargs = podman.adapt(cli, _hardened(kwargs, cap_add))
    with engine_errors(f"creating a container of {image}"), podman.create_guard(cli):
        for attempt in range(3):
            try:
                return cli.containers.create(image, command, **kwargs)
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(image, _one_line(exc.explanation), engine_location()) from None
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
            with engine_errors(f"removing container {c.short_id}"):
                try:
                    stop_for_sure(c, grace, give_up=lambda: not answers(c.client))
                    c.remove(force=True)
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
    with engine_errors("listing containers"):
        return cli.containers.list(all=True, sparse=True, filters={"label": filters})


def mounting(cli: DockerClient, path: Path) -> list[Container]:
    """Every container (labelled or not) with ``path`` or something inside it mounted."""
    target = os.path.realpath(path)
    out = []
    with engine_errors("listing containers"):
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
    with engine_errors("removing orphan containers"):
        return stop_and_remove(orphans, grace=1)


# --- volumes: a job's workspace on an engine that does not share logist's file system ------


def create_volume(
    cli: DockerClient, name: str, *, job_id: str, jobs_root: Path, owner: str
) -> None:
    """Create the named volume ``name``, labelled like the job's containers (idempotent)."""
    with engine_errors(f"creating volume {name}"):
        cli.volumes.create(name, labels=labels(job_id, "workspace", jobs_root, owner))


def volume_exists(cli: DockerClient, name: str) -> bool:
    import docker

    with engine_errors(f"inspecting volume {name}"):
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
        with engine_errors(f"removing volume {name}"):
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
    with engine_errors("listing volumes"):
        return cli.volumes.list(filters={"label": filters})


def using_volume(cli: DockerClient, name: str) -> list[Container]:
    """Every container (labelled or not) that mounts the volume ``name``."""
    with engine_errors("listing containers"):
        return cli.containers.list(all=True, sparse=True, filters={"volume": name})


@dataclass
class Outcome:
    exit_code: int | None
    oom_killed: bool = False
    stopped_for: str | None = None  # "timeout" | "cancel" | "interrupt" when logist stopped it


def run_container(
    container: Container,
    *,
    on_output: Callable[[bytes], None],
    should_stop: Callable[[], str | None],
    timeout: float | None,
    grace: float = STOP_GRACE,
) -> Outcome:
    """Start ``container``, stream its combined output to ``on_output`` (never buffering it
    whole), stop it on timeout or when ``should_stop`` names a reason (retried, escalating to
    kill), wait, then remove it. The output stream (the step's own wait) has no deadline, but
    the engine is pinged meanwhile: one that stops answering ends the wait.

    Raises:
        EngineRejected: the engine refused the container (exit 2).
        EngineUnavailable, EnvironmentProblem: the engine failed or stopped answering (exit 3).
    """
    import time

    import docker

    outcome = Outcome(exit_code=None)
    done = threading.Event()
    deadline = time.monotonic() + timeout if timeout else None
    patience = request_timeout()
    stream: list[Any] = []
    lost: list[BaseException] = []

    def engine_lost(exc: BaseException) -> None:
        lost.append(exc)
        if stream:  # ends the main thread's wait on the output
            with contextlib.suppress(Exception):
                stream[0].close()

    def watch() -> None:
        next_ping = time.monotonic() + min(5.0, patience)
        while not done.wait(WATCH_POLL):
            reason = should_stop()
            if reason is None and deadline is not None and time.monotonic() >= deadline:
                reason = "timeout"
            if reason:
                outcome.stopped_for = reason
                try:  # retried until stopped, or the run ended, or the engine stopped answering
                    stop_for_sure(
                        container,
                        grace,
                        attempts=None,
                        give_up=lambda: done.is_set() or not answers(container.client),
                    )
                except Exception as exc:
                    if not done.is_set():
                        engine_lost(exc)
                return
            if time.monotonic() >= next_ping:
                try:
                    container.client.ping()
                except Exception as exc:  # no answer within the deadline: the engine is gone
                    engine_lost(exc)
                    return
                next_ping = time.monotonic() + min(5.0, patience)

    watcher = threading.Thread(target=watch, daemon=True)
    attached: output.Attached | None = None
    try:
        with engine_errors(f"running step container {container.short_id}"):
            try:
                if output.attaches(container):  # before the start: nothing is missed
                    attached = output.Attached(container, patience)
                container.start()
                watcher.start()  # first: Podman answers the logs request at the first output
                opened = attached or _open_logs(container, lost)
                if lost:  # the engine went before the stream was there to close
                    raise lost[0]
                if opened is None:  # never answered, the container ended: its logs, at once
                    with contextlib.suppress(docker.errors.APIError):  # gone meanwhile (cancel)
                        on_output(container.logs(stdout=True, stderr=True))
                else:
                    stream.append(opened)
                    for chunk in stream[0]:
                        on_output(chunk)
                if lost:
                    raise lost[0]
                # the output ended: the container has stopped, so its exit status is due at once
                status = container.wait(timeout=patience)
                outcome.exit_code = status.get("StatusCode")
                container.reload()
                outcome.oom_killed = bool(container.attrs["State"].get("OOMKilled"))
                if outcome.exit_code and not outcome.stopped_for:
                    container.client.ping()  # a step killed by an engine shutdown is no failure
            except docker.errors.NotFound:  # removed by someone else (cancel)
                outcome.exit_code = None
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: being removed by someone else (cancel)
                    raise
                outcome.exit_code = None
    except EngineUnavailable:
        lost.append(RuntimeError("engine gone"))
        raise
    finally:
        done.set()
        if attached is not None:
            attached.close()
        if watcher.is_alive():
            watcher.join(timeout=grace + 5)
        if not lost:  # a gone engine is not asked again: the sweep reaps the container
            with contextlib.suppress(Exception):
                container.remove(force=True)
    return outcome


def _open_logs(container: Container, lost: list) -> Any:
    """The following logs stream of a started container. Podman may never answer that request
    for a container that ended without output (4.3: the headers come with the first output):
    it is asked in a thread, and once the container has ended and 2 s more went by without an
    answer, None (the caller reads the logs once; the abandoned request ends with the
    container)."""
    import docker

    if not podman.is_podman(container.client):
        return podman.follow_logs(container)
    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            box["stream"] = podman.follow_logs(container)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    asking = threading.Thread(target=ask, name="logist-logs", daemon=True)
    asking.start()
    ended_at: float | None = None
    while asking.is_alive() and not lost:
        asking.join(0.5)
        if not asking.is_alive() or ended_at is not None:
            if ended_at is not None and time.monotonic() - ended_at > 2.0:
                return None
            continue
        try:
            container.reload()
            if container.status in ("exited", "dead", "stopped"):
                ended_at = time.monotonic()
        except docker.errors.NotFound:  # removed (a canceller): ended too
            ended_at = time.monotonic()
        except Exception:
            pass
    if lost:
        return None
    if "error" in box:
        if ended_at is not None:  # the request failed as its container went: nothing lost
            return None
        raise box["error"]
    return box["stream"]


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
        image=image,
        command=command,
        job_id=job_id,
        step="helper",
        jobs_root=jobs_root,
        owner=owner,
        mounts=mounts,
        user=user,
        network_mode="none",
    )
    try:
        with engine_errors(f"running helper {image}"):
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
            container.remove(force=True)


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
    with the first of ``images`` that is present (``logist/busybox`` first, then the job's own
    image); True when it exited 0."""
    import docker

    for image in images:
        try:
            with engine_errors(f"checking image {image}"):
                try:
                    cli.images.get(image)
                except docker.errors.ImageNotFound:
                    continue
        except EngineRejected:
            continue
        code, _logs = run_helper(
            cli,
            image=image,
            command=command,
            job_id=job_id,
            jobs_root=jobs_root,
            owner=owner,
            binds={str(host_path): (mount_at, False)},
        )
        if code == 0:
            return True
    return False
