"""Sessions (contract v3): a job whose one container lives between commands that an agent loop
sends one at a time, harvested like a job's steps, and stopped like a job's end.

A session is a job (same directory, branch, hardening, secrets, states): ``running`` while its
container lives. No process owns it between commands, so it is alive while its container is:
the session's commands and the sweep ask the engine. Each command takes the job's lock for its
own time (``JobRun.open``), so commands of one session run one after the other.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from logist import containers
from logist.container_spec import SESSION
from logist.errors import (
    EnvironmentProblem,
    HarvestFailed,
    InvalidTransition,
    LogistError,
    UsageError,
)
from logist.jobrun import JobRun
from logist.model import FAILED, INTERRUPTED, RUNNING, SUCCEEDED, now, parse_time
from logist.networks import JobNetwork, remove_job

if TYPE_CHECKING:
    from logist.results import JobResult

Runtime = Any  # a logist.Runtime (its store, engines, notify and create_job)

LABEL = SESSION  # its container's logist.step label
IDLE_TIMEOUT = 3600.0
LOCK_WAIT = 60.0  # seconds a command waits for the one before it
STOP_GRACE = 2.0
# The container's command: alive until removed, whatever the image (sh and sleep only).
KEEP_ALIVE = ["/bin/sh", "-c", "while :; do sleep 3600; done"]


def is_session(job: Any) -> bool:
    return getattr(job, "session", None) is not None


def idle(job: Any, at: float | None = None) -> bool:
    """Whether a session was idle longer than its idle timeout."""
    if not is_session(job):
        return False
    last = parse_time(job.session.get("last_active") or job.updated_at).timestamp()
    return (at or time.time()) - last > float(job.session.get("idle_timeout") or IDLE_TIMEOUT)


# --- start -----------------------------------------------------------------------------------


def start(
    rt: Runtime, spec: dict[str, Any], file: Any = None, idle_timeout: float = IDLE_TIMEOUT
) -> str:
    """Create the session's job, set its workspace up and start its container; its id.

    Raises:
        UsageError: bad input (exit 2). EnvironmentProblem: the engine or image (exit 3).
    """
    from logist.engines import Placer, uses_volumes
    from logist.job_container import job_container, read_secrets
    from logist.volumes import new_name
    from logist.workspaces import workspace_of

    if not idle_timeout > 0:  # NaN too: a session stale from its start
        raise UsageError(f"--idle-timeout {idle_timeout!r}: a duration greater than 0")
    record = {"idle_timeout": idle_timeout, "container": None, "execs": 0, "harvests": 0}
    job = rt.create_job(spec, file, session=record)
    with JobRun.open(rt.store, job.id, timeout=LOCK_WAIT) as run:
        engine = Placer(rt.engines, 1, lambda url: rt.store.docks.get(url).answers()).acquire(None)
        run.job.engine = engine
        run.job.volume = new_name(job.id) if uses_volumes(engine) else None
        run.job.move(RUNNING)
        _touch(run)
        try:
            secrets = read_secrets(run.job.secrets)
            workspace = workspace_of(run)
            workspace.prepare()
            cli = run.dock.client()
            containers.ensure_image(cli, run.job.image, run.job.pull)
            net = JobNetwork.open(run)  # lives while the session does
            spec_ = job_container(
                run, workspace, cli, run.job.image, KEEP_ALIVE, LABEL, secrets, net.attachment
            )  # its log settings a step's: a command may write to PID 1's output (red team)
            box = containers.create(cli, spec_)
            run.job.session["container"] = box.id
            run.save()
            with containers.engine_errors("starting the session's container", cli):
                box.start()
        except BaseException as exc:
            _abandon(run, exc)
            raise
    return job.id


def _abandon(run: JobRun, exc: BaseException) -> None:
    """A start that failed: nothing of it stays (containers, workspace); the job failed."""
    from logist.cleanup import after_job

    with contextlib.suppress(LogistError):
        remove_job(run.dock.client(), run.store.root, run.job.id, grace=0)
    run.job.stop_running(FAILED, str(exc) or type(exc).__name__)
    run.save()
    with contextlib.suppress(LogistError):
        after_job(run, harvested=True)


# --- the session's own commands ---------------------------------------------------------------


@contextlib.contextmanager
def _live(rt: Runtime, job_id: str) -> Iterator[tuple[JobRun, Any]]:
    """The session under its lock, and its container, which must be running.

    Raises:
        UsageError: not a session, or stopped (exit 2).
        EnvironmentProblem: its container is gone (exit 3; the session is interrupted).
    """

    with JobRun.open(rt.store, job_id, timeout=LOCK_WAIT) as run:
        job = run.job
        if not is_session(job):
            raise UsageError(f"job {job_id} is not a session (see `logist session start`)")
        if job.state != RUNNING:
            raise InvalidTransition(f"session {job_id} is {job.state}, not running")
        cid = job.session.get("container") or ""
        box = container_of(run)
        if box is not None and box.status == "paused":  # a harvest killed while it held it
            with contextlib.suppress(Exception):  # we hold the lock: no harvest runs now
                box.unpause()
                box.reload()
        if box is None:
            job.stop_running(INTERRUPTED, f"the session's container {cid[:12]} is gone")
            run.save()
            raise EnvironmentProblem(
                f"session {job_id}: its container {cid[:12]} is gone (the session is "
                "interrupted; its last harvest is kept)"
            )
        yield run, box


def container_of(run: JobRun) -> Any:
    """The session's container while it runs (or is paused), else None."""
    import docker

    cid = run.job.session.get("container")
    if not cid:  # its start was killed before the container was recorded: none runs
        return None
    cli = run.dock.client()
    what = f"looking up session {run.job.id}'s container"
    with containers.engine_errors(what, cli), contextlib.suppress(docker.errors.NotFound):
        box = cli.containers.get(cid)
        return box if box.status in ("running", "paused") else None
    return None


def checkpoint(rt: Runtime, job_id: str) -> str:
    """Harvest now: the container paused while its workspace is read (one consistent tree),
    the work committed on the job branch; its commit.

    Raises:
        HarvestFailed: the harvest was refused (exit 4); EnvironmentProblem: exit 3.
    """
    with _live(rt, job_id) as (run, box):
        commit = _harvest(run, box, rt.notify)
        _touch(run)
        return commit


def _harvest(run: JobRun, box: Any, notify=None) -> str:
    from logist.harvest import harvest, session_label
    from logist.sandbox import Sandbox

    label = session_label(run.job)
    with _paused(box), Sandbox(run) as sandbox:
        return harvest(run, sandbox, label, notify) if notify else harvest(run, sandbox, label)


@contextlib.contextmanager
def _paused(box: Any) -> Iterator[None]:
    """The container paused while inside (an engine that cannot pause it: not paused)."""
    paused = False
    with contextlib.suppress(Exception):
        box.pause()
        paused = True
    try:
        yield
    finally:
        if paused:
            with contextlib.suppress(Exception):
                box.unpause()


def stop(rt: Runtime, job_id: str) -> JobResult:
    """Harvest, finish (the branch in a local source, ``result.bundle``) and clean up: the
    session ends ``succeeded`` and nothing of it is left.

    Raises:
        UsageError: not a session, or not running (exit 2).
    """
    from logist.cleanup import after_job
    from logist.harvest import finish
    from logist.results import JobResult

    with _live(rt, job_id) as (run, box):
        _harvest(run, box, rt.notify)
        containers.stop_and_remove([box], grace=STOP_GRACE)
        remove_job(run.dock.client(), run.store.root, job_id, grace=0)  # its proxy, network
        run.job.move(SUCCEEDED)
        run.job.session["container"] = None
        run.save()
        finish(run)
        report = after_job(run, harvested=True)
        return JobResult(job=run.job, cleanup=report)


def sweep_one(run: JobRun, dry_run: bool, out: dict, notify=None) -> None:
    """The sweep's look at a running session (its lock held): stopped (harvested, finished,
    cleaned) when idle longer than its idle timeout, interrupted when its container is gone
    (its last harvest kept), else skipped (``session``)."""
    from logist.cleanup import record

    if run.job.state != RUNNING:
        return
    gone = container_of(run) is None
    if not gone and not idle(run.job):
        out["skipped"].append({"job": run.job.id, "reason": "session"})
        return
    if dry_run:
        out["cleaned"].append(
            {"job": run.job.id, "workspace_removed": True, "containers_removed": int(not gone),
             "bytes_freed": 0, "seconds": 0.0}
        )  # fmt: skip
        return
    result = stop_idle(run, notify)
    if result.error is not None:
        out["failed"].append({"job": run.job.id, "error": str(result.error)})
    if result.cleanup is not None:
        record(out, result.cleanup, containers_count=True)


def stop_idle(run: JobRun, notify=None) -> JobResult:
    """The sweep's end of a session (the caller holds its lock): idle too long, it is stopped
    as ``stop`` does; its container gone, it is interrupted (its last harvest kept) and cleaned
    up like any interrupted job."""

    from logist.cleanup import after_job
    from logist.harvest import finish
    from logist.results import JobResult

    job = run.job
    box = container_of(run)
    refused: HarvestFailed | None = None
    if box is not None:
        try:
            _harvest(run, box, notify)
        except HarvestFailed as exc:  # unattended: the container goes, the work stays
            refused = exc
        containers.stop_and_remove([box], grace=STOP_GRACE)
        if refused is None:
            job.move(SUCCEEDED)
        else:
            job.stop_running(FAILED, f"stopped idle; its last harvest was refused: {refused}")
    else:
        job.stop_running(INTERRUPTED, "the session's container is gone")
    with contextlib.suppress(LogistError):  # its proxy and network; else the sweep's next time
        remove_job(run.dock.client(), run.store.root, job.id, grace=0)
    job.session["container"] = None
    run.save()
    if refused is not None:  # the workspace kept, as after any refused harvest
        return JobResult(job=job, error=refused)
    finish(run)
    return JobResult(job=job, cleanup=after_job(run, harvested=job.state == SUCCEEDED))


def _touch(run: JobRun) -> None:
    run.job.session["last_active"] = now()
    run.save()


__all__ = ["checkpoint", "container_of", "idle", "is_session", "start", "stop", "sweep_one"]
