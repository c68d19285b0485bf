"""What running, canceling or cleaning up a job ended with, and the contract's exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from logist.errors import LogistError
from logist.model import CANCELED, FAILED, INTERRUPTED, Job

if TYPE_CHECKING:
    from logist.cleanup import Report


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
