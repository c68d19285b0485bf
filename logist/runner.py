"""Running jobs of one jobs root: one step, whole jobs (N at a time), and interruption (a
``Runtime``'s own event, set by its signals or by ``Runtime.interrupt``)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from logist import output, step_prep, step_run, volumes
from logist.cleanup import after_job, reap_orphans
from logist.egress import denied_lines
from logist.engines import Placer, uses_volumes
from logist.errors import (
    EnvironmentProblem,
    HarvestFailed,
    ImageMissing,
    InvalidTransition,
    LogistError,
    Rejected,
    WorkspaceUnseen,
    one_line,
)
from logist.harvest import finish, harvest, harvest_leftover, leftover_label, owes_harvest
from logist.job_container import read_secrets
from logist.jobrun import JobRun
from logist.model import (
    CANCELED,
    FAILED,
    INTERRUPTED,
    PENDING,
    RUNNABLE,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    WS_ABSENT,
    WS_READY,
    WS_REMOVING,
    Job,
    Step,
    now,
)
from logist.networks import JobNetwork
from logist.progress import Progress
from logist.results import JobResult, combine
from logist.sandbox import Sandbox
from logist.store import (
    Store,
    cancel_requested,
    drop_cancel_request,
)
from logist.streams import CallbackError, ListenerFactory, SecretMask, StepOutput
from logist.workspaces import Workspace, workspace_of

REAP_WAIT = 300.0  # seconds a job waits for the orphan reap (each engine call has a deadline)

LOCK_WAIT = 1.0  # seconds to wait for a job's lock before calling it active


class Runner:
    """Runs jobs of one jobs root on ``engines``. ``interrupt`` stops every step of this runner
    (jobs become ``interrupted``); ``listen`` gives each step's output a listener besides its
    log (None: logs only); ``notify`` receives one-line messages for a person."""

    def __init__(
        self,
        store: Store,
        engines: list[str],
        interrupt: threading.Event,
        listen: ListenerFactory | None = None,
        notify: Callable[[str], None] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.engines = engines
        self.interrupt = interrupt
        self.listen = listen
        sink = notify or (lambda msg: print(msg, file=sys.stderr, flush=True))
        # one printable line each: they carry names a step chose (a file left behind)
        self.notify: Callable[[str], None] = lambda msg: sink(one_line(msg))
        self.progress = progress
        self.placer = Placer(engines, 1, self._answers)
        self._reaping: _Reaping | None = None  # run_many's, or a lone job's own

    def _answers(self, url: str) -> bool:
        return self.store.docks.get(url).answers()

    # --- one job ---------------------------------------------------------------------------

    def run_job(self, job_id: str, max_steps: int | None = None) -> JobResult:
        """Run ``job_id`` (at most ``max_steps`` steps) under its lock, then harvest, finish and
        clean up as the contract says. Errors are returned in the result, not raised."""
        store = self.store
        asked_from = time.time()  # cancel requests older than this were for an earlier run
        if self._reaping is None:  # one job alone (`job step`): its own reap
            self._reaping = _Reaping(store, self.engines)
        try:
            with JobRun.open(store, job_id, timeout=LOCK_WAIT) as run:
                try:
                    return self._run_locked(run, max_steps, asked_from)
                except LogistError as exc:
                    return JobResult(job=run.job, error=exc)
        except LogistError as exc:
            job = store.load(job_id) if store.exists(job_id) else None
            return JobResult(job=job, error=exc)  # type: ignore[arg-type]

    def _run_locked(self, run: JobRun, max_steps: int | None, asked_from: float) -> JobResult:
        job = run.job
        if job.session is not None:
            raise InvalidTransition(
                f"job {job.id} is a session: its commands come with `logist session exec`"
            )
        if job.state not in RUNNABLE:
            raise InvalidTransition(
                f"job {job.id} is {job.state}; only pending or interrupted jobs can run"
            )
        engine = self.placer.acquire(job.engine)
        try:
            self._place(run, engine)
            return self._run_placed(run, max_steps, asked_from)
        finally:
            self.placer.release(engine)

    def _place(self, run: JobRun, engine: str) -> None:
        """Record the job's engine (and, where the engine does not share our file system, its
        workspace volume). A job whose engine stopped answering resumes elsewhere from its last
        harvest: its old workspace is left to the sweep."""
        job = run.job
        if job.engine == engine:
            return
        if job.engine is not None:
            self.notify(
                f"logist: {job.id}: the engine at {job.engine} does not answer; "
                f"resuming on {engine} from its last harvest"
            )
            if job.workspace_state in (WS_READY, WS_REMOVING):
                job.workspace_state = WS_ABSENT
        job.engine = engine
        job.volume = volumes.new_name(job.id) if uses_volumes(engine) else None
        run.save()

    def _run_placed(self, run: JobRun, max_steps: int | None, asked_from: float) -> JobResult:
        job = run.job
        job_dir = run.dir.path
        drop_cancel_request(job_dir, before=asked_from)  # a request for an earlier run
        job.move(RUNNING)
        job.error = None
        run.save()
        ws: Path | None = None
        ahead: step_prep.Ahead | None = None  # the next step's container, made during a harvest
        net: JobNetwork | None = None
        ran = 0
        rejected: Rejected | None = None
        finished = False  # result.bundle and the source's branch written (while the helper goes)
        try:
            rejected = self._check_secrets(run)  # before any container, the helper's included
            if rejected is not None:
                return self._concluded(run, None, rejected)
            reaping = self._reaping
            assert reaping is not None  # started by run_job or run_many
            # after the reap, while the workspace is made; a gate where the engine sees $JOB_DIR
            hold, gate = _steps_ahead(job, max_steps) > 1, job.volume is None
            net = JobNetwork.begin(run, reaping.wait, hold, gate)
            workspace = workspace_of(run)
            workspace.prepare()
            reaping.wait()  # a killed run's containers go before this run's start
            ws = run.dir.workspace
            with Sandbox(run, should_stop=self.interrupt.is_set) as sandbox:
                # proves the engine sees the job directory before any step, every run (the
                # engine, or logist's view of the jobs root, may differ from the last run's);
                # the helper's start then overlaps the first step's
                sandbox.start_in_background(check=True)
                net.ready()
                if owes_harvest(run.dir):  # a harvest never answered, or never wrote back: its
                    # work, and what it set aside, before a step meets them (or the last .git)
                    harvest(run, sandbox, leftover_label(job), self.notify)
                while (step := job.next_step()) is not None:
                    if max_steps is not None and ran >= max_steps:
                        break
                    if self.interrupt.is_set():
                        job.move(INTERRUPTED)
                        break
                    if cancel_requested(job_dir, since=asked_from):
                        job.cancel()
                        break
                    ran += 1
                    if self.progress:
                        self.progress.step_started(job, step)
                    made_ahead, ahead = ahead, None
                    try:
                        self._run_step(run, step, workspace, net, asked_from, made_ahead)
                    except Rejected as exc:  # the user's input, not the environment: job failed
                        job.move(FAILED)
                        job.error, rejected = str(exc), exc
                        break
                    finally:
                        if self.progress and step.finished_at:
                            self.progress.step_finished(job, step)
                    last = (
                        step.state != SUCCEEDED
                        or job.next_step() is None
                        or (max_steps is not None and ran >= max_steps)
                    )
                    if last:
                        net.close_soon()  # while the last harvest runs
                    elif (following := job.next_step()) is not None:  # made while it runs
                        ahead = step_prep.Ahead(run, following, workspace, net)
                    harvest(run, sandbox, f"step {step.index}", self.notify, last=last)
                    if step.state == SUCCEEDED:
                        continue
                    if step.state in (FAILED, TIMED_OUT):
                        job.move(FAILED)
                    elif step.state == CANCELED:
                        job.cancel()
                    elif step.state == PENDING:  # interrupted
                        job.move(INTERRUPTED)
                    break
                if job.state == RUNNING:
                    job.move(SUCCEEDED if job.next_step() is None else PENDING)
                run.save()
                if job.terminal:  # while the helper is being removed; else after, below
                    with contextlib.suppress(LogistError):
                        finish(run)
                        finished = True
        except HarvestFailed as exc:  # refused work: kept in its workspace, never cleaned up
            if job.state == RUNNING:
                job.move(FAILED)
            job.error = str(exc)
            run.save()
            finish(run)  # what was accepted before lands
            kept = HarvestFailed(f"{exc}; workspace kept: {ws}")  # said once, by the caller
            kept.__cause__ = exc
            return JobResult(job=job, error=kept)
        except (ImageMissing, WorkspaceUnseen) as exc:  # nothing ran: try again later
            self._back_to_pending(run, PENDING, str(exc))
            raise
        except LogistError as exc:
            if exc.exit_code == 3:  # the engine (or the disk) went away: resumable
                self._back_to_pending(run, INTERRUPTED, str(exc))
                if ws is not None:
                    if not run.dock.lost():  # an engine just found gone is not waited on
                        with contextlib.suppress(LogistError), Sandbox(run) as sandbox:
                            harvest_leftover(run, sandbox)  # needs the engine: may fail
                    with contextlib.suppress(LogistError):
                        finish(run)  # host only: what was harvested lands
                raise
            return self._failed(run, ws, exc)  # permanent: a refused setting, a bad ref, git
        except BaseException as exc:
            if job.state == RUNNING:
                self._back_to_pending(run, INTERRUPTED, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if ahead is not None:  # the job stopped before that step
                ahead.discard()
            if net is not None:
                net.close()
        return self._concluded(run, ws, rejected, finished)

    def _concluded(
        self, run: JobRun, ws: Path | None, rejected: Rejected | None, finished: bool = False
    ) -> JobResult:
        # the last harvest was made under this same lock, after the last step: nothing new
        result = self._conclude(run, ws, harvested=ws is not None, finished=finished)
        result.error = rejected
        return result

    def _check_secrets(self, run: JobRun) -> Rejected | None:
        """A secret missing from logist's environment fails the next step and the job before
        anything starts (read again, for real, when each step starts)."""
        job = run.job
        step = job.next_step()
        try:
            read_secrets(job.secrets)
        except Rejected as exc:
            if step is None:
                raise
            step.move(RUNNING)
            step.started_at = now()
            self._not_started(run, step, exc)
            job.move(FAILED)
            job.error = str(exc)
            run.save()
            return exc
        return None

    def _conclude(
        self, run: JobRun, ws: Path | None, harvested: bool = False, finished: bool = False
    ) -> JobResult:
        """After the steps: bundle and land the branch (unless ``finished`` did), then clean up
        per policy. ``harvested``: the last step's work was harvested (nothing new to harvest
        first)."""
        job = run.job
        if job.state == PENDING:  # `job step` with steps left: workspace stays ready
            return JobResult(job=job)
        if ws is not None and not finished:
            finish(run)
        drop_cancel_request(run.dir.path)
        report = after_job(run, harvested=harvested)
        if report is not None and not report.ok:
            self.notify(
                f"logist: cleanup of {job.id} incomplete: "
                + (report.error or ", ".join(report.left_behind))
            )
        if self.progress:
            self.progress.job_finished(job, report)
        return JobResult(job=job, cleanup=report)

    def _failed(self, run: JobRun, ws: Path | None, exc: LogistError) -> JobResult:
        """A permanent error (retrying cannot help): the running step and the job are failed,
        the work harvested so far lands, cleanup per policy; the error is the result's."""
        job = run.job
        for step in job.steps:
            if step.state == RUNNING:
                step.move(FAILED)
                step.finished_at, step.error = now(), str(exc)
        if job.state == RUNNING:
            job.move(FAILED)
        job.error = str(exc)
        run.save()
        try:
            result = self._conclude(run, ws)
        except LogistError:
            result = JobResult(job=job)
        result.error = exc
        return result

    def _back_to_pending(self, run: JobRun, state: str, error: str) -> None:
        run.job.stop_running(state, error)
        run.save()

    def _not_started(self, run: JobRun, step: Step, exc: Rejected) -> Rejected:
        """A step that could not start for the user's input is failed (so will be the job)."""
        step.move(FAILED)
        step.error, step.finished_at = str(exc), now()
        run.save()
        return exc

    def _run_step(
        self,
        run: JobRun,
        step: Step,
        workspace: Workspace,
        net: JobNetwork,
        asked_from: float | None = None,
        ahead: step_prep.Ahead | None = None,
    ) -> None:
        job = run.job
        job_dir = run.dir.path
        log_path = run.dir.step_log(step.index)
        step.move(RUNNING)
        step.started_at, step.finished_at, step.exit_code, step.error = now(), None, None, None
        step.log = str(log_path)
        run.save()
        try:  # a secret missing, a setting the engine refused (4xx): the step does not start
            made = ahead.take(step) if ahead is not None else None
            made = made or step_prep.make(run, step, workspace, net)
        except Rejected as exc:
            _check_holder(net)
            raise self._not_started(run, step, exc) from None
        container, secrets = made.container, made.secrets

        def canceled() -> bool:
            return cancel_requested(job_dir, since=asked_from)

        def should_stop() -> str | None:  # a gate that said no: its proxy failed (red team)
            if self.interrupt.is_set() or (made.gate is not None and made.gate.said is False):
                return "interrupt"
            if canceled():
                return "cancel"
            return None

        with open(log_path, "wb", buffering=0) as fh:
            mask = SecretMask(list(secrets.values()))
            log = output.CappedLog(fh, job.limits.log_limit, spill_dir=str(log_path.parent))
            listener = self.listen(job.id, step.index) if self.listen else None
            out = StepOutput(log, listener, mask)
            try:
                outcome = step_run.run_container(
                    container,
                    on_output=out,
                    should_stop=should_stop,
                    timeout=step.timeout or job.timeout,
                    began=None if made.gate is None else lambda: made.gate.opened_at,
                )
            except Rejected:  # a start the engine refused: the holder's end, or the user's
                _check_holder(net)
                raise
            finally:
                out.close()
        step.finished_at = now()
        net.listened()  # the proxy's start: a step it gated, when it failed, did not run
        if outcome.exit_code != 0 and outcome.stopped_for is None and not canceled():
            _check_holder(net)  # failed, or gone: with the namespace it joined?
        step.egress = net.denied()
        for line in denied_lines(job.id, step.index, step.egress or {}):
            self.notify(line)
        step.exit_code = outcome.exit_code
        step.oom_killed = outcome.oom_killed
        if outcome.stopped_for == "timeout":
            step.move(TIMED_OUT)
            step.error = f"timed out after {step.timeout or job.timeout:g}s"
        elif outcome.stopped_for == "cancel" or (outcome.exit_code != 0 and canceled()):
            step.move(CANCELED)  # stopped by us, or by the canceling process
        elif outcome.stopped_for == "interrupt":
            step.move(PENDING)
        elif outcome.exit_code == 0:
            step.move(SUCCEEDED)
        else:
            step.move(FAILED)
            if outcome.oom_killed:
                step.error = "killed: out of memory"
            elif outcome.exit_code is None:
                step.error = "the step's container disappeared"
        # saved with the harvest that follows at once (one manifest write per step's end)

    # --- many jobs -------------------------------------------------------------------------

    def run_many(
        self, job_ids: list[str], parallel: int = 1, max_steps: int | None = None
    ) -> list[JobResult]:
        """Run jobs to a terminal state (or ``max_steps`` steps each), ``parallel`` at a time;
        the calling (main) thread supervises, so SIGINT/SIGTERM are handled at once."""
        self._reaping = _Reaping(self.store, self.engines)  # beside the jobs' set-up
        results: list[JobResult] = []
        self.placer = Placer(self.engines, parallel, self._answers)
        with ThreadPoolExecutor(
            max_workers=self.placer.slots, thread_name_prefix="logist-job"
        ) as pool:
            futures = [pool.submit(self._guarded, job_id, max_steps) for job_id in job_ids]
            try:
                for fut in futures:
                    while True:
                        try:
                            results.append(fut.result(timeout=0.2))
                            break
                        except TimeoutError:
                            continue
            except BaseException:  # KeyboardInterrupt with Python's own handler: stop them all
                self.interrupt.set()
                raise
        return results

    def _guarded(self, job_id: str, max_steps: int | None = None) -> JobResult:
        if self.interrupt.is_set():
            return JobResult(job=self.store.load(job_id), error=_interrupted())
        try:
            return self.run_job(job_id, max_steps)
        except BaseException as exc:  # an API caller's on_output raised: the job was interrupted
            if isinstance(exc, CallbackError) and exc.__cause__ is not None:
                exc = exc.__cause__  # a LogistError of the caller's own
            error = LogistError(
                f"job {job_id}: interrupted, {type(exc).__name__} raised while it ran: {exc}"[:500]
            )
            error.__cause__ = exc
            return JobResult(job=self.store.load(job_id), error=error)


class _Reaping:
    """``reap_orphans`` of ``store`` in a thread of its own, started at once: it overlaps the
    import of the docker SDK and the clones of the jobs it runs for, which ``wait`` for it
    before their network and first container. Whatever fails it (an engine, another job's
    broken manifest) is left to the next sweep, which reports it."""

    def __init__(self, store: Store, engines: list[str]) -> None:
        self._thread = threading.Thread(
            target=self._reap, args=(store, engines), name="logist-reap", daemon=True
        )
        self._thread.start()

    def _reap(self, store: Store, engines: list[str]) -> None:
        with contextlib.suppress(Exception):  # housekeeping: the sweep reports what it finds
            reap_orphans(store, engines)

    def wait(self) -> None:
        self._thread.join(REAP_WAIT)


def _check_holder(net: JobNetwork) -> None:
    """Raise ``EnvironmentProblem`` (exit 3, the job interrupted) when the step's held network
    namespace went from under it: nothing of the step's did that."""
    if (why := net.holder_lost()) is not None:
        raise EnvironmentProblem(why)


def _steps_ahead(job: Job, max_steps: int | None) -> int:
    """How many steps this run may start."""
    ahead = sum(1 for s in job.steps if s.state in (PENDING, RUNNING))
    return ahead if max_steps is None else min(ahead, max_steps)


def _interrupted() -> LogistError:
    return LogistError("interrupted before it started", exit_code=130)


__all__ = ["JobResult", "Runner", "combine"]
