"""The contract's JSON view of a job (``status --json``, ``list --json``) and the table."""

from __future__ import annotations

import copy
import os
from typing import Any

from logist.model import (
    INTERRUPTED,
    RUNNING,
    SUCCEEDED,
    WS_READY,
    WS_REMOVED,
    WS_REMOVING,
    Job,
)
from logist.progress import duration, seconds_between
from logist.store import Store, is_active


def job_view(
    store: Store,
    job: Job,
    containers: list[str] | None = None,
    active: bool | None = None,
    containers_error: str | None = None,
) -> dict[str, Any]:
    """One job as the contract's object. A job recorded running with no live owner is
    reported interrupted (and its running step pending), without writing anything. With
    ``containers_error`` (the engine did not answer) ``containers`` is null: unknown."""
    job_dir = store.job_dir(job.id)
    active = is_active(job_dir) if active is None else active
    lives = job.session is not None and containers_error is None and containers != []
    if job.state == RUNNING and not active and not lives:  # what the next lock taker records
        job = copy.deepcopy(job)
        job.stop_running(INTERRUPTED, job.error)
    steps = [
        {
            "index": s.index,
            "name": s.name,
            "run": s.run,
            "image": s.image or job.image,
            "state": s.state,
            "exit_code": s.exit_code,
            "oom_killed": s.oom_killed,
            "started_at": s.started_at,
            "finished_at": s.finished_at,
            "duration": seconds_between(s.started_at, s.finished_at),
            "log": s.log,
            "error": s.error,
            "egress": s.egress or {"denied": {}},
        }
        for s in job.steps
    ]
    ws = job_dir / "workspace"
    ws_state = WS_READY if job.workspace_state == WS_REMOVING else job.workspace_state
    if ws_state == WS_READY and job.volume is None and not os.path.lexists(ws):
        ws_state = WS_REMOVED
    return {
        "id": job.id,
        "state": job.state,
        "repo": job.repo,
        "ref": job.ref,
        "branch": job.branch,
        "image": job.image,
        "secrets": job.secrets,  # names only
        "cap_add": job.cap_add,
        "network": job.network,
        "allow_hosts": job.allow_hosts,
        "allow_private": job.allow_private,
        "runtime": job.runtime,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "active": active,
        "steps": steps,
        "engine": job.engine,
        "workspace": {"path": str(ws), "state": ws_state, "volume": job.volume},
        "result": {
            "bundle": job.result_bundle
            if job.result_bundle and os.path.exists(job.result_bundle)
            else None,
            "branch": job.result_branch,
        },
        "containers": None if containers_error else (containers or []),
        "containers_error": containers_error,
        "base_commit": job.base_commit,
        "harvested_commit": job.harvested_commit,
        "cleanup": job.cleanup,
        "left_behind": job.leftovers,
        "notes": job.notes,
        "session": _session_view(job),
        "error": job.error,
    }


def _session_view(job: Job) -> dict[str, Any] | None:
    """A session's record (``idle_timeout`` in seconds; ``last_active``), None for a job."""
    if job.session is None:
        return None
    keys = ("idle_timeout", "execs", "harvests", "last_active")
    return {k: job.session.get(k) for k in keys}


def containers_by_job(
    store: Store, engines: list[str | None]
) -> tuple[dict[str, list[str]], str | None]:
    """Ids of the containers labelled for this jobs root on ``engines`` (None: the default
    engine), by job, and None; or, when an engine does not answer, what the others gave and the
    reason (the lists are then incomplete: unknown, not empty)."""
    from logist import containers
    from logist.engines import DEFAULT, normal, reachable
    from logist.errors import LogistError

    out: dict[str, list[str]] = {}
    problems = []
    wanted = list(dict.fromkeys(normal(e) for e in engines))
    for engine in wanted:
        if engine != DEFAULT and not reachable(engine):  # not the request deadline per engine
            problems.append(f"the engine at {engine} does not answer")
            continue
        try:
            for c in containers.find(store.docks.get(engine).client(), store.root):
                job = (c.attrs.get("Labels") or {}).get(containers.JOB, "")
                out.setdefault(job, []).append(c.id)
        except LogistError as exc:
            problems.append(str(exc))
    return (out, "; ".join(problems)) if problems else (out, None)


def run_seconds(view: dict[str, Any]) -> float | None:
    """Seconds the job's steps took, in all (None before any step finished)."""
    took = [s["duration"] for s in view["steps"] if s["duration"] is not None]
    return sum(took) if took else None


def table(rows: list[dict[str, Any]]) -> str:
    """A readable table of jobs for people."""
    head = ("ID", "STATE", "ACTIVE", "STEPS", "DURATION", "WORKSPACE", "UPDATED")
    lines = [head]
    for r in rows:
        done = sum(1 for s in r["steps"] if s["state"] == SUCCEEDED)
        lines.append(
            (
                r["id"],
                r["state"],
                "yes" if r["active"] else "no",
                f"{done}/{len(r['steps'])}",
                duration(run_seconds(r)),
                r["workspace"]["state"],
                r["updated_at"],
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
