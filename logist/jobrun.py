"""One owner of a job's state: a ``JobRun`` is a job in the hands of the process that holds its
lock. It holds the one copy of the job's record that is changed and saved, the job directory's
paths and the job's engine. The runner, ``job cancel``, ``job cleanup`` and the sweep all open a
job this way (``JobRun.open``), and pass the run on; nothing below loads its own copy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from logist.model import INTERRUPTED, RUNNING, Job

if TYPE_CHECKING:
    from logist.dock import Dock
    from logist.layout import JobDir
    from logist.store import Store


class JobRun:
    """``job`` of ``store``, owned by this process (the caller holds, or just took, its lock)."""

    def __init__(self, store: Store, job: Job) -> None:
        self.store = store
        self.job = job

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, store: Store, job_id: str, timeout: float | None = None, *, recover: bool = True
    ) -> Iterator[JobRun]:
        """Take the job's lock (``timeout``: else ``JobActive``), load the job, and (unless
        ``recover`` is False: a dry run writes nothing) record a dead owner's run as
        interrupted; the run is the caller's while inside.

        Raises:
            JobNotFound: no such job. JobActive: another process owns it.
        """
        with store.lock(job_id, timeout=timeout):
            run = cls(store, store.load(job_id))
            if recover:
                run.recover_dead_owner()
            yield run

    @property
    def dir(self) -> JobDir:
        return self.store.dir(self.job.id)

    @property
    def dock(self) -> Dock:
        """The job's engine (where it is placed; the default one before)."""
        return self.store.docks.get(self.job.engine)

    def save(self) -> None:
        """Write the job's record (atomically)."""
        self.store.save(self.job)

    def recover_dead_owner(self) -> bool:
        """A job recorded running while we hold its lock has lost its owner: it is
        interrupted and its running step pending again. A session is owned by its container,
        not by a process: its own commands and the sweep look at that."""
        if self.job.state != RUNNING or self.job.session is not None:
            return False
        self.job.stop_running(INTERRUPTED, "the logist process that ran this job died")
        self.save()
        return True

    def __repr__(self) -> str:
        return f"JobRun({self.job.id!r}, {self.job.state})"
