"""A step's container from its start to its end: its output streamed to the caller (attached
before the start, or the engine's log followed), stopped on a timeout, a cancel or an
interruption (SIGTERM, then SIGKILL after a grace period, escalating), waited for and removed.
The engine is pinged meanwhile: one that stops answering ends the wait (exit 3)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logist import output, podman
from logist.containers import STOP_GRACE, answers, engine_errors, stop_for_sure
from logist.dock import dock_of
from logist.errors import EngineUnavailable

if TYPE_CHECKING:
    from docker.models.containers import Container

WATCH_POLL = 0.025  # seconds between a running step's should_stop() polls (a cancel's latency)


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
    began: Callable[[], float | None] | None = None,
) -> Outcome:
    """Start ``container``, stream its combined output to ``on_output`` (never buffering it
    whole), stop it on timeout or when ``should_stop`` names a reason (retried, escalating to
    kill), wait, then remove it. The output stream (the step's own wait) has no deadline, but
    the engine is pinged meanwhile: one that stops answering ends the wait. ``began``: when
    the step's command may run (monotonic; None while it waits at its gate, logist/gate.py),
    from which ``timeout`` counts; without it, from the start.

    Raises:
        EngineRejected: the engine refused the container (exit 2).
        EngineUnavailable, EnvironmentProblem: the engine failed or stopped answering (exit 3).
    """
    import time

    import docker

    outcome = Outcome(exit_code=None)
    done = threading.Event()
    start = time.monotonic()

    def deadline() -> float | None:
        at = start if began is None else began()
        return None if not timeout or at is None else max(at, start) + timeout

    patience = dock_of(container.client).timeout
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
            due = deadline()
            if reason is None and due is not None and time.monotonic() >= due:
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
        with engine_errors(f"running step container {container.short_id}", container.client):
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
                # 409: being removed by someone else (cancel). Podman's wait racing a
                # canceller's removal fails with a 500 ("no such exit code"): no engine fault
                # when the container is gone or the step is being stopped anyway
                stopping = outcome.stopped_for or should_stop()
                if exc.status_code != 409 and not stopping and not _removed(container):
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
                container.remove(force=True, v=True)
    return outcome


def _removed(container: Container) -> bool:
    """Whether the engine says ``container`` no longer exists (any other answer: no)."""
    import docker

    try:
        container.reload()
    except docker.errors.NotFound:
        return True
    except Exception:
        return False
    return False


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
