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
from typing import Any

from logist.errors import UsageError

STATE: dict[str, Any] = {"jobs_dir": None}  # the global --jobs-dir


def store():
    from logist.store import Store, default_root

    return Store(default_root(STATE["jobs_dir"]))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def create(file: Path | None, **options: Any):
    """Create a job from the spec options (``env`` as K=V items) and an optional YAML file."""
    from logist.jobs import create_job
    from logist.spec import parse_env

    env = options.pop("env")
    steps, caps, secrets = options.pop("step"), options.pop("cap_add"), options.pop("secret")
    raw = {**options, "steps": steps or None, "cap_add": caps or None, "secrets": secrets or None}
    if env:
        raw["env"] = parse_env(env)
    job = create_job(store(), raw, file)
    warn_host_caps(job)
    return job


def warn_host_caps(job) -> None:
    """One line on stderr when the job gets capabilities that open the host."""
    from logist.config import host_caps

    opening = host_caps(job.cap_add)
    if opening:
        print(
            f"logist: warning: job {job.id} gets {', '.join(opening)}: a step can reach the "
            "host (its files, kernel or processes) with it",
            file=sys.stderr,
        )


def run(
    job_id: str | None = None,
    file: Path | None = None,
    repo: str | None = None,
    image: str | None = None,
    step: list[str] | None = None,
    ref: str | None = None,
    prompt: str | None = None,
    env: list[str] | None = None,
    timeout: str | None = None,
    memory: str | None = None,
    cpus: str | None = None,
    pids: str | None = None,
    network: str | None = None,
    cap_add: list[str] | None = None,
    runtime: str | None = None,
    secret: list[str] | None = None,
    user: str | None = None,
    pull: str | None = None,
    cleanup: str | None = None,
    quiet: bool = False,
) -> int:
    """``logist run``: create the job, say its id on stderr, run it."""
    options = {k: v for k, v in locals().items() if k not in ("job_id", "file", "quiet")}
    job = create(file, id=job_id, **options)
    print(f"logist: job {job.id}", file=sys.stderr, flush=True)
    return run_ids(store(), [job.id], 1, quiet)


def job_list(json_: bool = False) -> int:
    from logist.jobs import load_all
    from logist.views import containers_by_job, job_view, table

    st = store()
    jobs = list(load_all(st))
    engines = engines_of(jobs)
    by_job, unknown = containers_by_job(st, engines) if json_ and jobs else ({}, None)
    rows = [job_view(st, j, by_job.get(j.id), containers_error=unknown) for j in jobs]
    if json_:
        print_json(rows)
    else:
        print(table(rows) if rows else "no jobs")
    return 0


def engines_of(jobs) -> list[str | None]:
    """The configured engines, and those the jobs were placed on."""
    from logist.engines import configured, normal

    return list(dict.fromkeys([*configured(), *(normal(j.engine) for j in jobs if j.engine)]))


def job_status(job_id: str, json_: bool = False) -> int:
    from logist.progress import duration, printable
    from logist.views import containers_by_job, job_view

    st = store()
    job = st.load(job_id)
    by_job, unknown = containers_by_job(st, [job.engine])
    view = job_view(st, job, by_job.get(job_id), containers_error=unknown)
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
    from logist.engine import combine
    from logist.model import State

    for r in results:
        for note in r.job.notes if r.job is not None and r.job.terminal else ():
            print(f"logist: {r.job.id}: note: {note}", file=sys.stderr)  # before a checkout
        if r.error is not None:
            print(f"logist: {r.job.id if r.job else '?'}: {r.error}", file=sys.stderr)
        elif r.job is not None and r.job.state not in (State.SUCCEEDED, State.PENDING):
            step = next(
                (s for s in r.job.steps if s.state not in (State.SUCCEEDED, State.PENDING)), None
            )
            detail = f" at step {step.index} ({step.state}, exit {step.exit_code})" if step else ""
            print(f"logist: job {r.job.id} {r.job.state}{detail}", file=sys.stderr)
    return combine(results)


def job_step(job_id: str) -> int:
    from logist.engine import Engine, signals_interrupt

    st = store()
    st.load(job_id)
    with signals_interrupt():
        result = Engine(st, sys.stdout.buffer).run_job(job_id, max_steps=1)
    return finish_runs([result])


def job_run(
    job_ids: list[str] | None = None, all_: bool = False, parallel: int = 1, quiet: bool = False
) -> int:
    from logist.jobs import load_all
    from logist.model import RUNNABLE
    from logist.views import job_view

    st = store()
    ids = list(job_ids or [])
    for job_id in ids:
        st.load(job_id)
    if all_:
        for j in load_all(st):
            view = job_view(st, j)
            runnable = view["state"] in RUNNABLE and not view["active"]
            if runnable and j.id not in ids:
                ids.append(j.id)
    if not ids:
        if not all_:
            raise UsageError("name jobs to run, or use --all")
        print("no pending or interrupted jobs", file=sys.stderr)
        return 0
    return run_ids(st, ids, parallel, quiet)


def run_ids(st, ids: list[str], parallel: int, quiet: bool) -> int:
    """Run jobs with the steps' output on stdout and, for a person at a terminal, progress
    lines on stderr; the contract's exit code."""
    from logist.engine import Engine, signals_interrupt
    from logist.progress import Progress

    several = len(ids) > 1
    progress = None if quiet or not sys.stderr.isatty() else Progress(sys.stderr, several)
    with signals_interrupt():
        engine = Engine(st, sys.stdout.buffer, prefix=several, progress=progress)
        results = engine.run_many(ids, parallel)
    return finish_runs(results)


def job_cancel(job_id: str, grace: int = 5, wait: float = 60.0) -> int:
    from logist.cancel import cancel

    result = cancel(store(), job_id, wait=wait, grace=grace)
    print(f"job {job_id}: {result.job.state}", file=sys.stderr)
    if result.error is not None:
        raise result.error
    return 4 if result.cleanup is not None and not result.cleanup.ok else 0


def job_cleanup(
    job_id: str | None = None,
    stale: bool = False,
    older_than: str = "24h",
    force: bool = False,
    dry_run: bool = False,
    json_: bool = False,
) -> int:
    from logist import cleanup as service
    from logist.spec import parse_duration

    st = store()
    if stale == (job_id is not None):
        raise UsageError("name one job, or use --stale (not both)")
    out = (
        service.sweep(st, parse_duration(older_than), dry_run=dry_run)
        if stale
        else service.cleanup_one(st, job_id, force=force, dry_run=dry_run)
    )
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
            print(f"{f['job']}: FAILED: {f['error']}", file=sys.stderr)
        if out["orphans_removed"]:
            print(f"orphan containers removed: {out['orphans_removed']}")
        if not (out["cleaned"] or out["skipped"] or out["failed"] or out["orphans_removed"]):
            print("nothing to clean")
    return 4 if out["failed"] else 0


HOT = {
    "job step": job_step,
    "job run": job_run,
    "job cancel": job_cancel,
    "job cleanup": job_cleanup,
    "run": run,
    "job status": job_status,
    "job list": job_list,
}
