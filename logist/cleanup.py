"""Cleanup: ``remove_workspace`` (containers, processes, harvest, delete, report), the policy after
a job, and the stale sweep for cron."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from logist import containers
from logist.container_spec import NETNS, NETWORK, PROXY, SESSION
from logist.engines import normal
from logist.errors import EngineUnavailable, JobActive, LogistError
from logist.harvest import harvest_leftover
from logist.hostprocs import discard_leftover
from logist.jobrun import JobRun
from logist.layout import EXCHANGE, GATE, JOB_REPO, MANIFEST, SET_ASIDE, JobDir
from logist.model import (
    INTERRUPTED,
    RUNNING,
    SUCCEEDED,
    WS_ABSENT,
    WS_REMOVED,
    WS_REMOVING,
    parse_time,
)
from logist.networks import reap_orphan_networks, remove_networks
from logist.results import Report
from logist.safefs import delete_tree
from logist.sandbox import Sandbox
from logist.store import Store, held_here, is_active, owner_alive
from logist.workspace import has_workspace
from logist.workspaces import Workspace, workspace_of

SessionSweep = Callable[[JobRun, bool, dict], None]
"""What the sweep does with a running session (under its lock): (run, dry_run, report)."""


def remove_workspace(
    run: JobRun, *, force: bool = False, dry_run: bool = False, harvested: bool = False
) -> Report:
    """Remove the job's workspace in the contract's order (either kind: ``workspace_of``);
    the caller holds the job's lock. Never raises for what is left behind: the report names
    it (``ok`` is False). ``harvested``: the caller harvested after the last step."""
    start = time.monotonic()
    job = run.job
    report = Report(job=job.id)
    try:
        _remove(run, workspace_of(run), report, force=force, dry_run=dry_run, harvested=harvested)
    except LogistError as exc:
        if exc.exit_code == 3:
            raise
        report.error = str(exc)
    report.seconds = round(time.monotonic() - start, 3)
    if not dry_run:
        job.leftovers = report.left_behind + ([report.error] if report.error else [])
        if report.workspace_removed or report.nothing_to_clean:
            job.workspace_state = WS_REMOVED if job.workspace_state != WS_ABSENT else WS_ABSENT
        run.save()
    return report


def _remove(
    run: JobRun, ws: Workspace, report: Report, *, force: bool, dry_run: bool, harvested: bool
) -> None:
    job, root = run.job, run.store.root
    leftovers = _remove_setup_leftovers(run.dir, report, dry_run)
    # 1. containers: labelled with the job, or with the workspace mounted
    cli = run.dock.client()
    exists = ws.exists(cli)
    found = {c.id: c for c in containers.find(cli, root, job.id)}
    if exists:
        found.update({c.id: c for c in ws.users(cli)})
    if dry_run:
        report.containers_removed = len(found)
    else:
        report.containers_removed = containers.stop_and_remove(found.values(), grace=2)
        remove_networks(cli, root, job.id)  # the job's own, once nothing sits on them
    if not exists:
        report.nothing_to_clean = report.containers_removed == 0 and not leftovers
        report.workspace_removed = bool(leftovers) and not report.left_behind
        return
    # 2. what keeps it (host processes in a bind workspace), or a link in its place
    if not ws.check_removable(report, force=force, dry_run=dry_run):
        return
    if dry_run:
        report.bytes_freed = ws.size()
        report.workspace_removed = True
        return
    # 3. harvest what is not yet in the job branch (raises: the workspace is kept)
    if not harvested:
        with Sandbox(run) as sandbox:
            harvest_leftover(run, sandbox)
    if job.unkept and not force:  # past a bound, the workspace holds work the result lacks
        report.error = (
            f"kept: {job.unkept} refs the step made are not in the job's result (--force "
            "removes the workspace)"
        )
        return
    job.workspace_state = WS_REMOVING  # from here on, the manifest's record is the work
    run.save()
    # 4. delete (files of another uid through a root helper container)
    ws.delete(cli, report)
    # 5. what is still there is named. A request of a runner killed mid-call can still create
    #    a container after step 1 (the engine finishes what it was asked): those go too
    late = containers.find(cli, root, job.id)
    if late:
        report.containers_removed += containers.stop_and_remove(late, grace=2)
        late = containers.find(cli, root, job.id)
    report.left_behind += [f"container {c.short_id}" for c in late]
    if report.workspace_removed:
        _remove_job_repo(run.dir.path, report)


def _remove_setup_leftovers(paths: JobDir, report: Report, dry_run: bool) -> list[Path]:
    """Half-made clones (and archives) of a killed setup, on this host: nothing to harvest.
    Removed (unless ``dry_run``) into ``report``; returned either way."""
    leftovers = paths.setup_leftovers()
    if not dry_run:
        for tmp in leftovers:
            result = discard_leftover(tmp, paths.path)
            report.bytes_freed += result.bytes_freed
            report.left_behind += result.foreign + result.stuck
    return leftovers


def _remove_job_repo(job_dir: Path, report: Report) -> None:
    """logist's repository of the job and the helper's exchange directory go with the
    workspace: ``result.bundle`` holds the work (a resume rebuilds the repository from it)."""
    for path in (job_dir / JOB_REPO, job_dir / EXCHANGE):
        if os.path.lexists(path):
            result = delete_tree(path, job_dir)
            report.left_behind += result.foreign + result.stuck
    (job_dir / SET_ASIDE).unlink(missing_ok=True)  # names in a workspace that is gone
    (job_dir / GATE).unlink(missing_ok=True)  # a killed run's proxy gate (a FIFO)


def after_job(run: JobRun, *, harvested: bool = False) -> Report | None:
    """Apply the job's cleanup policy once it has stopped running; None when it keeps all.
    ``harvested``: the caller harvested after the last step, under the lock it still holds."""
    job = run.job
    if job.cleanup == "never" or (job.cleanup == "on-success" and job.state != SUCCEEDED):
        return None
    return remove_workspace(run, harvested=harvested)


def orphan_predicate(store: Store):
    """Labels of an orphan container (or network) of ``store``: its job directory is gone, or
    the logist process that started it (the owner label) is dead, and for a job's proxy and
    network also no session of the job runs (a session's outlive the command that made them)."""

    def is_orphan(labels: dict[str, str]) -> bool:
        job_dir = store.root / labels.get(containers.JOB, "")
        if not (job_dir / MANIFEST).is_file():
            return True
        step = labels.get(containers.STEP)
        if step == SESSION:  # owned by its container: while it runs
            return not _running_session(store, job_dir.name)
        if owner_alive(labels.get(containers.OWNER)):
            return False
        return step not in (PROXY, NETWORK) or not _running_session(store, job_dir.name)

    return is_orphan


def _running_session(store: Store, job_id: str) -> bool:
    try:
        job = store.load(job_id)
    except Exception:  # unreadable, or broken in a way the loader did not foresee: no session
        return False
    return job.session is not None and job.state == RUNNING


def reap_orphans(
    store: Store, engines: list[str], dry_run: bool = False, failed: list | None = None
) -> int:
    """Remove the orphaned containers (and networks, workspace volumes) of ``store``'s jobs
    root on each of ``engines``; how many (would) go. An engine that does not answer is skipped
    when there are several (its orphans wait for the next sweep); a network the engine keeps is
    added to ``failed``."""
    total = 0
    for engine in engines:
        dock = store.docks.get(engine)
        if len(engines) > 1 and not dock.answers():
            continue
        try:
            cli = dock.client()
            is_orphan = orphan_predicate(store)
            total += containers.reap_orphans(cli, store.root, is_orphan, dry_run)
            reap_orphan_networks(cli, store.root, is_orphan, dry_run, failed)  # after their boxes
            total += _reap_orphan_volumes(cli, store, engine, dry_run)
        except EngineUnavailable:
            if len(engines) == 1:
                raise
    return total


def _reap_orphan_volumes(cli, store: Store, engine: str, dry_run: bool) -> int:
    """Workspace volumes of this jobs root that no job names any more: the job directory is
    gone, or its manifest names another volume or engine (it moved after this engine was
    lost). A volume of an active job is never touched."""
    count = 0
    for volume in containers.find_volumes(cli, store.root):
        job_id = (volume.attrs.get("Labels") or {}).get(containers.JOB, "")
        job_dir = store.root / job_id
        if job_id and (job_dir / MANIFEST).is_file():
            if is_active(job_dir):
                continue
            try:
                job = store.load(job_id)
            except LogistError:
                continue
            if job.volume == volume.name and normal(job.engine) == normal(engine):
                continue
        count += 1
        if not dry_run:
            containers.stop_and_remove(containers.using_volume(cli, volume.name), grace=0)
            containers.remove_volume(cli, volume.name)
    return count


def sweep(
    store: Store,
    older_than: float,
    *,
    engines: list[str],
    dry_run: bool = False,
    sessions: SessionSweep | None = None,
) -> dict:
    """The stale sweep: workspaces of inactive jobs idle longer than ``older_than`` seconds and
    of jobs whose owner died, and orphaned containers of this jobs root on ``engines`` (and on
    those its jobs were placed on)."""
    out: dict = {"cleaned": [], "skipped": [], "failed": [], "orphans_removed": 0}
    now = time.time()
    engines = list(engines)
    for job_id in store.ids():
        job_dir = store.job_dir(job_id)
        if is_active(job_dir):
            out["skipped"].append({"job": job_id, "reason": "active"})
            continue
        try:
            _sweep_job(store, job_id, now, older_than, dry_run, out, engines, sessions)
        except JobActive:
            out["skipped"].append({"job": job_id, "reason": "active"})
        except LogistError as exc:
            if exc.exit_code == 3 and len(engines) == 1:
                raise
            out["failed"].append({"job": job_id, "error": str(exc)})
        except Exception as exc:  # one job's unexpected error never stops the sweep
            out["failed"].append({"job": job_id, "error": f"{type(exc).__name__}: {exc}"})
    out["orphans_removed"] = reap_orphans(store, engines, dry_run, out["failed"])
    return out


def _sweep_job(
    store: Store,
    job_id: str,
    now: float,
    older_than: float,
    dry_run: bool,
    out: dict,
    engines: list[str],
    sessions: SessionSweep | None,
) -> None:
    peek = store.load(job_id)
    if peek.engine is not None and normal(peek.engine) not in engines:
        engines.append(normal(peek.engine))  # its engine's orphans are swept too
    if not _has_workspace(JobRun(store, peek)) and peek.state != RUNNING:
        return
    if len(engines) > 1 and peek.volume is not None and not store.docks.get(peek.engine).answers():
        raise EngineUnavailable(f"the engine at {peek.engine} does not answer")
    if peek.session is not None and peek.state == RUNNING:
        if sessions is not None:  # the runtime's: stopped when idle, interrupted when gone
            with JobRun.open(store, job_id, timeout=0.2) as run:
                sessions(run, dry_run, out)
        return
    idle = now - parse_time(peek.updated_at).timestamp() >= older_than
    # a cleanup that left something behind is retried by the next sweep, whatever its age
    if not idle and peek.state != RUNNING and not peek.leftovers:
        out["skipped"].append({"job": job_id, "reason": "recent"})
        return
    with JobRun.open(store, job_id, timeout=0.2, recover=not dry_run) as run:
        # loaded again, under the lock: another sweep may have been first
        if _has_workspace(run):
            record(out, remove_workspace(run, dry_run=dry_run))


CLEANED_FIELDS = ("job", "workspace_removed", "containers_removed", "bytes_freed", "seconds")


def record(out: dict, report: Report, containers_count: bool = False) -> None:
    """Add one job's report to the contract's ``cleaned`` / ``failed`` lists. ``cleaned`` has
    only what this run removed (the workspace, or with ``containers_count`` containers too)."""
    if not report.ok:
        error = report.error or "left behind: " + ", ".join(report.left_behind)
        out["failed"].append({"job": report.job, "error": error})
    elif report.workspace_removed or (containers_count and report.containers_removed):
        out["cleaned"].append({k: getattr(report, k) for k in CLEANED_FIELDS})


def _has_workspace(run: JobRun) -> bool:
    """Whether the job may have a workspace: in its directory, or a volume it names that no
    cleanup has removed yet (only the engine can tell for sure)."""
    if has_workspace(run.dir):
        return True
    return run.job.volume is not None and run.job.workspace_state != WS_REMOVED


def step_containers(store: Store, job_id: str) -> list:
    """The job's containers but its harvest helper, proxy and network holder: what a canceller
    stops while the job's owner lives (the owner harvests with its helper next, then removes
    the others)."""
    cli = store.docks.get(store.load(job_id).engine).client()
    found = containers.find(cli, store.root, job_id)
    owners = ("helper", PROXY, NETNS)
    return [c for c in found if (c.attrs.get("Labels") or {}).get(containers.STEP) not in owners]


def cleanup_one(
    store: Store, job_id: str, *, force: bool = False, dry_run: bool = False, wait: float = 60.0
) -> dict:
    """``job cleanup JOB_ID``: refuse an active job unless ``force``, which cancels its run
    (stopping its containers) and waits for the lock. Same report shape as the sweep."""
    return _cleanup_one(store, job_id, force=force, dry_run=dry_run, wait=wait)


def _cleanup_one(store: Store, job_id: str, *, force: bool, dry_run: bool, wait: float) -> dict:
    from logist.store import request_cancel

    job_dir = store.job_dir(job_id)
    timeout = 1.0
    stopped, had = 0, False  # what a forced cleanup ended, for its owner to finish removing
    if held_here(job_dir):  # from the job's own run (its callback): the run owns its state
        raise JobActive(f"job {job_id} is running in this call (its own callback): cancel it")
    if is_active(job_dir):
        if not force:
            raise JobActive(
                f"job {job_id} is active (owned by a live logist process); "
                "use --force to stop it and clean up"
            )
        if not dry_run:
            had = has_workspace(store.dir(job_id))
            request_cancel(job_dir, "cleanup --force")
            stopped = containers.stop_and_remove(step_containers(store, job_id))
            timeout = wait
    out: dict = {"cleaned": [], "skipped": [], "failed": [], "orphans_removed": 0}
    if dry_run and is_active(job_dir):  # a look at a job another process owns: no writes
        report = remove_workspace(JobRun(store, store.load(job_id)), dry_run=True)
    else:
        with JobRun.open(store, job_id, timeout=timeout, recover=not dry_run) as run:
            session = run.job.session is not None and run.job.state == RUNNING
            if session and not force:  # alive while its container is: like an active job
                raise JobActive(
                    f"job {job_id} is a running session: `logist session stop {job_id}` ends "
                    "it with its work landed; --force removes it now (its work harvested)"
                )
            report = remove_workspace(run, force=force, dry_run=dry_run)
            if had and not report.workspace_removed and not has_workspace(run.dir):
                report.workspace_removed = True  # by its owner, once this cancel ended its run
                report.nothing_to_clean = False
            report.containers_removed += stopped
            if session and not dry_run:
                run.job.stop_running(INTERRUPTED, "removed by job cleanup --force")
                run.save()
    record(out, report, containers_count=True)
    return out
