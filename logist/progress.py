"""Progress lines for people watching a run on a terminal: a header per step, a result line per
step, one summary line per job. Scripts (no terminal, or ``--quiet``) get only the steps' output.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, TextIO

from logist.errors import printable
from logist.model import parse_time

if TYPE_CHECKING:
    from logist.model import Job, Step
    from logist.results import Report


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one manifest time to another (None when either is missing)."""
    if not start or not end:
        return None
    return max((parse_time(end) - parse_time(start)).total_seconds(), 0.0)


def duration(seconds: float | None) -> str:
    """``0.4s``, ``12.3s``, ``4m05s``, ``1h02m``: short and readable."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Writes the progress lines to ``stream`` (the terminal's stderr); several jobs at once
    get their id in front."""

    def __init__(self, stream: TextIO, prefix_ids: bool = False) -> None:
        self.stream = stream
        self.prefix_ids = prefix_ids
        self.lock = threading.Lock()

    def _say(self, job: Job, text: str) -> None:
        lead = f"[{job.id}] " if self.prefix_ids else ""
        with self.lock:
            self.stream.write(f"{lead}{text}\n")
            self.stream.flush()

    def step_started(self, job: Job, step: Step) -> None:
        self._say(job, f"[{step.index}/{len(job.steps)}] {printable(step.name or step.run)}")

    def step_finished(self, job: Job, step: Step) -> None:
        took = duration(seconds_between(step.started_at, step.finished_at))
        code = "" if step.exit_code is None else f", exit {step.exit_code}"
        self._say(job, f"[{step.index}/{len(job.steps)}] {step.state}{code} in {took}")

    def job_finished(self, job: Job, cleanup: Report | None) -> None:
        took = duration(seconds_between(job.created_at, job.updated_at))
        branch = job.result_branch or (job.result_bundle and "result.bundle") or "-"
        if cleanup is None:
            clean = "workspace kept" if job.workspace_state == "ready" else "nothing to clean"
        elif cleanup.ok:
            clean = "cleaned up"
        else:
            clean = "cleanup incomplete"
        self._say(job, f"job {job.id} {job.state} in {took}: branch {branch}, {clean}")
