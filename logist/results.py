"""What running, canceling or cleaning up a job ended with, and the contract's exit code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from logist.errors import LogistError
from logist.model import CANCELED, FAILED, INTERRUPTED, Job


@dataclass
class Report:
    """What one cleanup of one job did (or, with ``dry_run``, would do)."""

    job: str
    workspace_removed: bool = False
    containers_removed: int = 0
    bytes_freed: int = 0
    seconds: float = 0.0
    nothing_to_clean: bool = False
    processes: list[str] = field(default_factory=list)
    left_behind: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.left_behind

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class JobResult:
    job: Job
    cleanup: Report | None = None
    error: LogistError | None = None

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if self.job.state == INTERRUPTED:
            return 130
        if self.job.state in (FAILED, CANCELED):
            return 1
        if self.cleanup is not None and not self.cleanup.ok:
            return 4
        return 0


def combine(results: list[JobResult]) -> int:
    """One exit code for many jobs: 130, then 3, then 1, then 4, then 0."""
    codes = {r.exit_code for r in results}
    for code in (130, 3, 2, 1, 4):
        if code in codes:
            return code
    return 0
