"""``job cancel``: from any process, a job owned by a live ``job run`` or by nobody.

The request to a live owner is written first, before the engine's client and the rest of the
core are imported (~100 ms): the owner's watcher sees it within ``WATCH_POLL`` and stops the
step itself, so the time a cancel takes is not the canceller's start-up.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from logist.errors import CancelPending, InvalidTransition, JobActive, LogistError
from logist.jobrun import JobRun
from logist.store import Store, drop_cancel_request, held_here, read_owner, request_cancel

if TYPE_CHECKING:
    from logist.results import JobResult

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL (the contract's default)
LOCK_WAIT = 1.0  # seconds to wait for a job's lock before calling it active


def cancel(store: Store, job_id: str, wait: float = 60.0, grace: float = STOP_GRACE) -> JobResult:
    """Cancel a job from any process. Not owned: do everything here. Owned by a live process:
    ask it (a request file, written after its lock was taken, so it never looks stale), stop the
    job's containers (SIGTERM, SIGKILL after ``grace`` seconds) and wait up to ``wait`` seconds
    for it to finish.

    Raises:
        CancelPending: the owner still runs after ``wait`` (the request stays; exit 1).
    """
    job = store.load(job_id)
    if job.terminal:
        raise InvalidTransition(f"job {job_id} is {job.state}; there is nothing to cancel")
    if held_here(store.job_dir(job_id)):  # from the job's own run (its on_output): ask it
        from logist.results import JobResult

        request_cancel(store.job_dir(job_id))  # its watcher stops the step; it ends canceled
        return JobResult(job=job)
    try:
        with JobRun.open(store, job_id, timeout=0) as run:  # a probe: an owner holds it
            return _cancel_owned(run, grace)
    except JobActive:
        pass
    request_cancel(store.job_dir(job_id))  # first: the owner acts on it at once
    return _owned(store, job_id, wait, grace)


def _owned(store: Store, job_id: str, wait: float, grace: float) -> JobResult:
    """Stop the step's containers too (the owner may be between polls), wait for the owner,
    then finish whatever it left (e.g. `job step` ended before it saw the request)."""
    from logist import containers
    from logist.cleanup import step_containers
    from logist.networks import remove_job
    from logist.results import JobResult

    containers.stop_and_remove(step_containers(store, job_id), grace=grace)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and store.active(job_id):
        time.sleep(0.01)  # a flock probe: cheap; the owner's end is seen within 10 ms
    if store.active(job_id):
        raise CancelPending(
            f"job {job_id}: cancel requested, but its owner "
            f"({read_owner(store.job_dir(job_id)) or 'unknown'}) still runs after {wait:g}s; "
            "it stops at its next step"
        )
    with JobRun.open(store, job_id, timeout=LOCK_WAIT) as run:  # the owner is gone
        if not run.job.terminal:  # finish what it left
            return _cancel_owned(run, 0)
    job = store.load(job_id)
    remove_job(store.docks.get(job.engine).client(), store.root, job_id, grace=0)
    return JobResult(job=job)


def _cancel_owned(run: JobRun, grace: float) -> JobResult:
    """Cancel a job nobody else runs (we hold its lock): containers, state, leftover harvest,
    cleanup."""
    from logist.cleanup import after_job
    from logist.harvest import harvest_leftover
    from logist.networks import remove_job
    from logist.results import JobResult
    from logist.sandbox import Sandbox

    job = run.job
    if job.terminal:
        raise InvalidTransition(f"job {job.id} is {job.state}; there is nothing to cancel")
    remove_job(run.dock.client(), run.store.root, job.id, grace=grace)
    job.cancel()
    run.save()
    ws = run.dir.workspace
    harvested = False
    if job.volume is not None or (ws.is_dir() and not ws.is_symlink()):
        try:
            with Sandbox(run) as sandbox:
                harvest_leftover(run, sandbox)
            harvested = True
        except LogistError as exc:
            return JobResult(job=job, error=exc)
    drop_cancel_request(run.dir.path)
    report = after_job(run, harvested=harvested)  # nothing ran since that harvest
    return JobResult(job=job, cleanup=report)
