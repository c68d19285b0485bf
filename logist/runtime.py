"""``logist.Runtime``: logist as a library (contract v3, "Python API"). The command line is a
thin layer over it (``logist/commands.py``).

A ``Runtime`` is one jobs root and the engines it runs jobs on. It keeps nothing global: several
runtimes (other roots, other engines) work side by side in one process and in threads. Failed
steps are results; usage errors (exit 2), environment problems (3) and incomplete cleanups (4)
raise ``LogistError`` subclasses carrying the CLI's ``exit_code``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logist.errors import CleanupIncomplete, UsageError

if TYPE_CHECKING:
    from logist.model import Job
    from logist.progress import Progress
    from logist.results import JobResult
    from logist.runner import Runner
    from logist.session_exec import Session
    from logist.streams import ListenerFactory

OnOutput = Callable[[int, bytes], object]
"""``on_output(step_index, chunk)``: a step's output as it comes, secrets masked."""

_log = logging.getLogger("logist")


class Runtime:
    """One jobs root (``jobs_dir``: else ``$LOGIST_JOBS_DIR``, else ``~/.logist/jobs``) and its
    engines (``engines``: URLs, else ``$LOGIST_ENGINES``, else the one the docker SDK finds).

    Example::

        rt = logist.Runtime(jobs_dir="/srv/jobs")
        job_id = rt.create(repo="/src", image="logist/step:latest", steps=["make test"])
        view = rt.run(job_id)           # the same dict as `logist job status --json`
    """

    def __init__(
        self,
        jobs_dir: str | os.PathLike | None = None,
        engines: list[str] | None = None,
        *,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        from logist.dock import Docks
        from logist.store import Store, default_root

        root = None if jobs_dir is None else _fspath("jobs_dir", jobs_dir)
        self.store = Store(default_root(root), Docks())
        self._engines_given = engines
        if engines:
            self.engines  # noqa: B018 -- checked now: the caller named them
        self.notify = notify or _log.warning
        self._runs: set[threading.Event] = set()  # one per run in progress: interrupt() sets all
        self._runs_lock = threading.RLock()  # re-entered by a signal handler in its thread

    @property
    def jobs_dir(self) -> Path:
        return self.store.root

    @functools.cached_property
    def engines(self) -> list[str]:
        """The engines' URLs (checked when first needed: a cancel's request goes out first)."""
        from logist.engines import DEFAULT, parse

        given = self._engines_given
        if not given:
            return parse(os.environ.get("LOGIST_ENGINES")) or [DEFAULT]
        urls = parse(given)
        if not urls:
            raise UsageError(f"engines: {given!r} names no engine"[:200])
        return urls

    # --- jobs ------------------------------------------------------------------------------

    def create(
        self, id: str | None = None, *, file: str | os.PathLike | None = None, **spec: Any
    ) -> str:
        """Create a job from the YAML spec's keys (``repo``, ``image``, ``steps``, ``env``, ...)
        and, optionally, a spec ``file`` (untrusted: it narrows, never widens); returns its id.
        The keys given here are trusted, like the command line's (grants: ``secrets``,
        ``cap_add``, ``network="host"``).

        Raises:
            UsageError: a bad key or value, an existing id, a source that is not a repository.
        """
        return self.create_job({"id": id, **spec}, file).id

    def create_job(
        self,
        spec: dict[str, Any],
        file: str | os.PathLike | None = None,
        *,
        session: dict[str, Any] | None = None,
    ) -> Job:
        """``create``, returning the stored job (``session``: a session's record)."""
        from logist.config import host_caps
        from logist.jobs import create_job

        job = create_job(self.store, spec, _path("file", file), session=session)
        opening = host_caps(job.cap_add)
        if opening:
            self.notify(
                f"logist: warning: job {job.id} gets {', '.join(opening)}: a step can reach "
                "the host (its files, kernel or processes) with it"
            )
        return job

    def run(self, job_id: str, on_output: OnOutput | None = None) -> dict[str, Any]:
        """Run a job to a terminal state; its status dict. A failed step is a result.

        Raises:
            LogistError: a usage error (2), an environment problem (3), a refused harvest or
                an incomplete cleanup (4).
        """
        listen = _callback(on_output)
        return self._outcome(self.run_jobs([job_id], listen=listen)[0])

    def step(self, job_id: str, on_output: OnOutput | None = None) -> dict[str, Any]:
        """Run a job's next pending step (``logist job step``); its status dict."""
        return self._outcome(self.run_step(job_id, listen=_callback(on_output)))

    def run_jobs(
        self,
        job_ids: list[str],
        parallel: int = 1,
        *,
        listen: ListenerFactory | None = None,
        progress: Progress | None = None,
    ) -> list[JobResult]:
        """Run jobs to a terminal state, ``parallel`` at a time (per engine); one result
        each (errors in it, not raised). ``job_ids``: any iterable of ids but a string."""
        if isinstance(job_ids, str | bytes) or not hasattr(job_ids, "__iter__"):
            raise UsageError(f"job_ids: a list of job ids, not {type(job_ids).__name__}")
        job_ids = list(job_ids)  # a generator is read once, here
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise UsageError(f"parallel: {parallel!r} is not a whole number of jobs (1 or more)")
        for job_id in job_ids:
            self.store.load(job_id)
        with self._run() as runner_for:
            return runner_for(listen, progress).run_many(job_ids, parallel)

    def run_step(self, job_id: str, *, listen: ListenerFactory | None = None) -> JobResult:
        """The next step of a job; its result (errors in it, not raised). Run like
        ``run_jobs``: a KeyboardInterrupt stops the step (its grace, its harvest) first."""
        self.store.load(job_id)
        with self._run() as runner_for:
            return runner_for(listen).run_many([job_id], max_steps=1)[0]

    def runnable(self) -> list[str]:
        """Ids of the pending or interrupted jobs no live process owns (``job run --all``)."""
        from logist.jobs import load_all
        from logist.model import RUNNABLE
        from logist.views import job_view

        return [
            j.id
            for j in load_all(self.store)
            if j.session is None
            and (v := job_view(self.store, j))["state"] in RUNNABLE
            and not v["active"]
        ]

    @contextlib.contextmanager
    def _run(self) -> Iterator[Callable[..., Runner]]:
        """A run of this runtime: its own interruption, set by ``interrupt`` while it lasts."""
        from logist.runner import Runner

        stop = threading.Event()
        with self._runs_lock:
            self._runs.add(stop)

        def runner(listen: ListenerFactory | None = None, progress: Progress | None = None):
            return Runner(
                self.store, list(self.engines), stop, listen, notify=self.notify, progress=progress
            )

        try:
            yield runner
        finally:
            with self._runs_lock:
                self._runs.discard(stop)

    def _outcome(self, result: JobResult) -> dict[str, Any]:
        if result.error is not None:
            raise result.error
        if result.cleanup is not None and not result.cleanup.ok:
            report = result.cleanup
            raise CleanupIncomplete(
                f"cleanup of {result.job.id} incomplete: "
                + (report.error or ", ".join(report.left_behind))
            )
        return self.status(result.job.id)

    # --- reading ---------------------------------------------------------------------------

    def status(self, job_id: str) -> dict[str, Any]:
        """The job as ``logist job status --json`` prints it."""
        from logist.views import containers_by_job, job_view

        job = self.store.load(job_id)
        by_job, unknown = containers_by_job(self.store, [job.engine])
        return job_view(self.store, job, by_job.get(job_id, []), containers_error=unknown)

    def list(self, containers: bool = True) -> list[dict[str, Any]]:
        """Every job of the root, as ``job list --json`` prints them (``containers``: ask the
        engines for each job's containers)."""
        from logist.engines import normal
        from logist.jobs import load_all
        from logist.views import containers_by_job, job_view

        jobs = list(load_all(self.store))
        by_job: dict[str, list[str]] = {}
        unknown = None
        if containers and jobs:
            engines = [*self.engines, *(normal(j.engine) for j in jobs if j.engine)]
            by_job, unknown = containers_by_job(self.store, list(dict.fromkeys(engines)))
        return [
            job_view(
                self.store,
                j,
                by_job.get(j.id, []) if containers else None,
                containers_error=unknown,
            )
            for j in jobs
        ]

    def logs(self, job_id: str, step: int | None = None) -> bytes:
        """A step's stored log (default: the latest step that ran; b"" before any)."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise UsageError(f"step: {step!r} is not a step's number"[:200])
        out = io.BytesIO()
        self.follow(job_id, step, out, poll=0)
        return out.getvalue()

    def follow(self, job_id: str, step: int | None, out, poll: float = 0.2) -> None:
        """Write a step's log to ``out``; with ``poll`` > 0 go on while the step runs."""
        from logist.jobs import follow_log

        follow_log(self.store, job_id, step, out, poll=poll)

    # --- ending ----------------------------------------------------------------------------

    def cancel(self, job_id: str, grace: float = 5, wait: float = 60.0) -> dict[str, Any]:
        """Cancel a job, also one another process runs; its status dict.

        Raises:
            CancelPending: its owner still runs after ``wait`` seconds (exit 1).
            CleanupIncomplete: something was left behind (exit 4).
        """
        return self._outcome(self.cancel_job(job_id, grace=grace, wait=wait))

    def cancel_job(self, job_id: str, grace: float = 5, wait: float = 60.0) -> JobResult:
        """``cancel``'s result, errors in it."""
        from logist.cancel import cancel

        grace, wait = _seconds(grace, "grace", 0), _seconds(wait, "wait", 0)
        return cancel(self.store, job_id, wait=wait, grace=grace)

    def cleanup(self, job_id: str, force: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """Remove a job's workspace and containers; the report of ``job cleanup --json``.

        Raises:
            JobActive: a live process owns the job and ``force`` is not given (exit 2).
            CleanupIncomplete: something was left behind (exit 4; ``.report`` is the report).
        """
        from logist import cleanup

        return _complete(cleanup.cleanup_one(self.store, job_id, force=force, dry_run=dry_run))

    def sweep(self, older_than: str | float = "24h", dry_run: bool = False) -> dict[str, Any]:
        """``job cleanup --stale``: workspaces of inactive jobs idle longer than ``older_than``
        (``90s``, ``30m``, ``24h``, ``7d`` or seconds), and orphaned containers.

        Raises:
            CleanupIncomplete: a job's cleanup failed (exit 4; ``.report`` is the report).
        """
        from logist import cleanup, session

        def sessions(run, dry: bool, out: dict) -> None:
            session.sweep_one(run, dry, out, self.notify)

        seconds = _seconds(older_than, "older_than", 0)
        report = cleanup.sweep(
            self.store, seconds, dry_run=dry_run, engines=self.engines, sessions=sessions
        )
        return _complete(report)

    def doctor(self) -> dict[str, Any]:
        """``logist doctor --json``: the checks of this root on each engine."""
        from logist.doctor import report

        return report(self.store, self.engines)

    # --- sessions --------------------------------------------------------------------------

    def session(
        self,
        id: str | None = None,
        *,
        file: str | os.PathLike | None = None,
        idle_timeout: str | float = "1h",
        on_output: OnOutput | None = None,
        **spec: Any,
    ) -> Session:
        """Start a session (docs/sessions.md): a job whose one container lives between the
        commands sent to it; a context manager that stops it on leaving.

        Raises:
            UsageError: bad input (exit 2). EnvironmentProblem: the engine or image (exit 3).
        """
        from logist import session, session_exec

        seconds = _seconds(idle_timeout, "idle_timeout")
        job_id = session.start(self, {"id": id, **spec}, file, idle_timeout=seconds)
        return session_exec.Session(self, job_id, on_output)

    def session_of(self, job_id: str, on_output: OnOutput | None = None) -> Session:
        """A handle on a running session (started by another process, say)."""
        from logist import session, session_exec

        if not session.is_session(self.store.load(job_id)):
            raise UsageError(f"job {job_id} is not a session")
        return session_exec.Session(self, job_id, on_output)

    # --- interruption ----------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop every step this runtime runs now (grace, then kill); their jobs end
        ``interrupted`` and can be run again (runs started later are not affected)."""
        with self._runs_lock:
            for stop in self._runs:
                stop.set()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """While inside (main thread only): SIGINT/SIGTERM interrupt this runtime."""
        with _signals_call(self.interrupt):
            yield

    def close(self) -> None:
        """Close the runtime's connections to its engines (a later call opens them again)."""
        self.store.docks.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runtime(jobs_dir={str(self.store.root)!r}, engines={self.engines!r})"


def _seconds(value: str | float, key: str, least: float | None = None) -> float:
    """A duration given to the API (seconds, or ``90s``, ``30m``, ``24h``, ``7d``): finite, and
    greater than 0 (or at least ``least``).

    Raises:
        UsageError: anything else (exit 2).
    """
    from logist.spec import parse_duration

    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UsageError(f"{key}: {value!r} is not a duration"[:200])
    seconds = float(value) if isinstance(value, int | float) else parse_duration(value)
    if not math.isfinite(seconds) or (seconds < least if least is not None else seconds <= 0):
        floor = f"at least {least:g}" if least is not None else "greater than 0"
        raise UsageError(f"{key}: {value!r} is not a duration {floor}, in seconds"[:200])
    return seconds


def _path(key: str, value: Any) -> Path | None:
    return None if value is None else Path(_fspath(key, value))


def _fspath(key: str, value: Any) -> str:
    """``value`` as a path's text; a ``UsageError`` for anything else (bytes, a NUL in it)."""
    text = os.fspath(value) if isinstance(value, str | os.PathLike) else None
    if not isinstance(text, str) or "\0" in text:
        raise UsageError(f"{key}: {value!r} is not a path (text without a NUL byte)"[:200])
    return text


def _callback(on_output: OnOutput | None) -> ListenerFactory | None:
    if on_output is None:
        return None
    if not callable(on_output):
        raise UsageError(f"on_output: {on_output!r} is not callable"[:200])
    from logist.streams import Callback

    return lambda job_id, step: Callback(on_output, step)


def _complete(report: dict[str, Any]) -> dict[str, Any]:
    """The cleanup report, or ``CleanupIncomplete`` carrying it when a job's cleanup failed."""
    if report["failed"]:
        failed = "; ".join(f"{f['job']}: {f['error']}" for f in report["failed"])
        raise CleanupIncomplete(failed, report=report)
    return report


@contextlib.contextmanager
def _signals_call(interrupt: Callable[[], None]):
    """While inside: SIGINT/SIGTERM call ``interrupt``; running steps then stop their
    containers (grace, then kill) and their jobs are marked interrupted. Only in the main
    thread (elsewhere Python delivers no signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        interrupt()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
