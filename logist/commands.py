"""The hot commands' bodies, without Typer (``job step``, ``job run``, ``run``, ``job cancel``,
``job cleanup``, ``job status``, ``job list``).

``logist/cli.py`` declares them for Typer (help, options, validation) and calls these; the
fast path (``logist/entry.py`` with ``logist/fastcli.py``) calls them directly, so a plain hot
command never imports Typer and click (~30 ms). Each returns the command's exit code; errors
are raised as ``LogistError`` and turned into one line at the edge.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logist.errors import UsageError
from logist.options import with_job_options

if TYPE_CHECKING:
    from logist.model import Job
    from logist.runtime import Runtime


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def runtime(jobs_dir: str | None = None, engines: list[str] | None = None) -> Runtime:
    """The runtime of one command: ``--jobs-dir`` and ``--engine`` (else the environment's);
    its messages on stderr."""
    from logist.runtime import Runtime

    return Runtime(jobs_dir, engines, notify=say)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def create(rt: Runtime, file: Path | None, id: str | None = None, **options: Any) -> Job:
    """Create a job from the command line's spec options and an optional YAML file."""
    from logist.options import spec_of

    return rt.create_job({"id": id, **spec_of(options)}, file)


@with_job_options()
def run(
    rt: Runtime,
    job_id: str | None = None,
    file: Path | None = None,
    quiet: bool = False,
    **options: Any,
) -> int:
    """``logist run``: create the job, say its id on stderr, run it."""
    job = create(rt, file, id=job_id, **options)
    print(f"logist: job {job.id}", file=sys.stderr, flush=True)
    return run_ids(rt, [job.id], 1, quiet)


@with_job_options()
def job_create(
    rt: Runtime, job_id: str | None = None, file: Path | None = None, **options: Any
) -> int:
    """``logist job create``: print the new job's id alone on stdout."""
    print(create(rt, file, id=job_id, **options).id, flush=True)
    return 0


def job_list(rt: Runtime, json_: bool = False) -> int:
    from logist.views import table

    rows = rt.list(containers=json_)
    if json_:
        print_json(rows)
    else:
        print(table(rows) if rows else "no jobs")
    return 0


def job_status(rt: Runtime, job_id: str, json_: bool = False) -> int:
    from logist.errors import printable
    from logist.progress import duration

    view = rt.status(job_id)
    if json_:
        print_json(view)
        return 0
    print(f"job {view['id']}: {view['state']}{' (active)' if view['active'] else ''}")
    print(f"  repo {view['repo']} ref {view['ref'] or 'HEAD'} -> branch {view['branch']}")
    for s in view["steps"]:
        code = "" if s["exit_code"] is None else f" exit {s['exit_code']}"
        took = "" if s["duration"] is None else f" in {duration(s['duration'])}"
        print(f"  step {s['index']}: {s['state']}{code}{took}  {printable(s['name'] or s['run'])}")
    where = view["workspace"]["path"]
    if view["workspace"]["volume"]:
        where = f"volume {view['workspace']['volume']}"
    print(f"  workspace {view['workspace']['state']}: {where}")
    if view["engine"]:
        print(f"  engine {view['engine']}")
    print(
        f"  result bundle {view['result']['bundle'] or '-'}, "
        f"source branch {view['result']['branch'] or '-'}"
    )
    if view["error"]:
        print(f"  error: {printable(view['error'])}")
    return 0


def finish_runs(results) -> int:
    """Say how each job that did not succeed ended; the contract's exit code."""
    from logist.errors import one_line
    from logist.model import State
    from logist.results import combine

    for r in results:
        for note in r.job.notes if r.job is not None and r.job.terminal else ():
            print(f"logist: {r.job.id}: note: {note}", file=sys.stderr)  # before a checkout
        if r.error is not None:
            print(
                f"logist: {r.job.id if r.job else '?'}: {one_line(str(r.error))}", file=sys.stderr
            )
        elif r.job is not None and r.job.state not in (State.SUCCEEDED, State.PENDING):
            step = next(
                (s for s in r.job.steps if s.state not in (State.SUCCEEDED, State.PENDING)), None
            )
            detail = f" at step {step.index} ({step.state}, exit {step.exit_code})" if step else ""
            if step is not None and step.error:  # "killed: out of memory", "timed out after 5s"
                detail += f": {one_line(step.error)}"
            print(f"logist: job {r.job.id} {r.job.state}{detail}", file=sys.stderr)
        elif r.job is not None and r.job.state == State.SUCCEEDED and r.job.error:
            # the branch could not be set in the source: its work is in result.bundle
            where = f" (the work is in {r.job.result_bundle})" if r.job.result_bundle else ""
            print(f"logist: {r.job.id}: warning: {one_line(r.job.error)}{where}", file=sys.stderr)
    return combine(results)


def job_step(rt: Runtime, job_id: str) -> int:
    from logist.streams import terminal

    with rt.signals():
        result = rt.run_step(job_id, listen=terminal(sys.stdout.buffer, prefixed=False))
    return finish_runs([result])


def job_run(
    rt: Runtime,
    job_ids: list[str] | None = None,
    all_: bool = False,
    parallel: int = 1,
    quiet: bool = False,
) -> int:
    ids = list(job_ids or [])
    for job_id in ids:
        rt.store.load(job_id)
    if all_:
        ids += [i for i in rt.runnable() if i not in ids]
    if not ids:
        if not all_:
            raise UsageError("name jobs to run, or use --all")
        print("no pending or interrupted jobs", file=sys.stderr)
        return 0
    return run_ids(rt, ids, parallel, quiet)


def run_ids(rt: Runtime, ids: list[str], parallel: int, quiet: bool) -> int:
    """Run jobs with the steps' output on stdout and, for a person at a terminal, progress
    lines on stderr; the contract's exit code."""
    from logist.progress import Progress
    from logist.streams import terminal

    several = len(ids) > 1
    progress = None if quiet or not sys.stderr.isatty() else Progress(sys.stderr, several)
    listen = terminal(sys.stdout.buffer, prefixed=several)
    with rt.signals():
        results = rt.run_jobs(ids, parallel, listen=listen, progress=progress)
    return finish_runs(results)


def job_cancel(rt: Runtime, job_id: str, grace: int = 5, wait: float = 60.0) -> int:
    result = rt.cancel_job(job_id, grace=grace, wait=wait)
    print(f"job {job_id}: {result.job.state}", file=sys.stderr)
    if result.error is not None:
        raise result.error
    return 4 if result.cleanup is not None and not result.cleanup.ok else 0


def job_cleanup(
    rt: Runtime,
    job_id: str | None = None,
    stale: bool = False,
    older_than: str = "24h",
    force: bool = False,
    dry_run: bool = False,
    json_: bool = False,
) -> int:
    from logist.errors import CleanupIncomplete, one_line

    if stale == (job_id is not None):
        raise UsageError("name one job, or use --stale (not both)")
    try:
        if stale:
            out = rt.sweep(older_than, dry_run=dry_run)
        else:
            out = rt.cleanup(job_id, force=force, dry_run=dry_run)  # type: ignore[arg-type]
    except CleanupIncomplete as exc:
        if exc.report is None:
            raise
        out = exc.report
    if json_:
        print_json(out)
    else:
        for c in out["cleaned"]:
            verb = "would remove" if dry_run else "removed"
            print(
                f"{c['job']}: {verb} workspace ({c['bytes_freed']} bytes), "
                f"{c['containers_removed']} containers, {c['seconds']:.2f}s"
            )
        for s in out["skipped"]:
            print(f"{s['job']}: skipped ({s['reason']})")
        for f in out["failed"]:
            print(one_line(f"{f['job']}: FAILED: {f['error']}"), file=sys.stderr)
        if out["orphans_removed"]:
            print(f"orphan containers removed: {out['orphans_removed']}")
        if not (out["cleaned"] or out["skipped"] or out["failed"] or out["orphans_removed"]):
            print("nothing to clean")
    return 4 if out["failed"] else 0


HOT = {
    "job create": job_create,
    "job step": job_step,
    "job run": job_run,
    "job cancel": job_cancel,
    "job cleanup": job_cleanup,
    "run": run,
    "job status": job_status,
    "job list": job_list,
}
