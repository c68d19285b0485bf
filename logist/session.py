"""Sessions (contract v3): a job whose one container lives between commands that an agent loop
sends one at a time, harvested like a job's steps, and stopped like a job's end.

A session is a job (same directory, branch, hardening, secrets, states): ``running`` while its
container lives. No process owns it between commands, so it is alive while its container is:
the session's commands and the sweep ask the engine. Each command takes the job's lock for its
own time (``JobRun.open``), so commands of one session run one after the other.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logist import containers, output
from logist.container_spec import SESSION
from logist.errors import EnvironmentProblem, InvalidTransition, LogistError, UsageError
from logist.jobrun import JobRun
from logist.model import FAILED, INTERRUPTED, RUNNING, SUCCEEDED, now, parse_time
from logist.streams import Listener, SecretMask, StepOutput

if TYPE_CHECKING:
    from logist.results import JobResult

Runtime = Any  # a logist.Runtime (its store, engines, notify and create_job)

LABEL = SESSION  # its container's logist.step label
IDLE_TIMEOUT = 3600.0
LOCK_WAIT = 60.0  # seconds a command waits for the one before it
STOP_GRACE = 2.0
# The container's command: alive until removed, whatever the image (sh and sleep only).
KEEP_ALIVE = ["/bin/sh", "-c", "while :; do sleep 3600; done"]
# A command run in the session: its pid noted first (to stop it alone), then the command itself.
WRAP = 'echo $$ > "$0" 2>/dev/null; exec "$@"'


@dataclass
class ExecResult:
    """One command's end: its exit code (None: stopped before it ended) and output (masked)."""

    exit_code: int | None
    output: str
    log: str
    timed_out: bool = False


def is_session(job: Any) -> bool:
    return getattr(job, "session", None) is not None


def idle(job: Any, at: float | None = None) -> bool:
    """Whether a session was idle longer than its idle timeout."""
    if not is_session(job):
        return False
    last = parse_time(job.session.get("last_active") or job.updated_at).timestamp()
    return (at or time.time()) - last > float(job.session.get("idle_timeout") or IDLE_TIMEOUT)


# --- start -----------------------------------------------------------------------------------


def start(
    rt: Runtime, spec: dict[str, Any], file: Any = None, idle_timeout: float = IDLE_TIMEOUT
) -> str:
    """Create the session's job, set its workspace up and start its container; its id.

    Raises:
        UsageError: bad input (exit 2). EnvironmentProblem: the engine or image (exit 3).
    """
    from logist.engines import Placer, uses_volumes
    from logist.runner import job_container, read_secrets
    from logist.volumes import new_name
    from logist.workspaces import workspace_of

    record = {"idle_timeout": idle_timeout, "container": None, "execs": 0, "harvests": 0}
    job = rt.create_job(spec, file, session=record)
    with JobRun.open(rt.store, job.id, timeout=LOCK_WAIT) as run:
        engine = Placer(rt.engines, 1, lambda url: rt.store.docks.get(url).answers()).acquire(None)
        run.job.engine = engine
        run.job.volume = new_name(job.id) if uses_volumes(engine) else None
        run.job.move(RUNNING)
        _touch(run)
        try:
            secrets = read_secrets(run.job.secrets)
            workspace = workspace_of(run)
            workspace.prepare()
            cli = run.dock.client()
            containers.ensure_image(cli, run.job.image, run.job.pull)
            spec_ = job_container(run, workspace, cli, run.job.image, KEEP_ALIVE, LABEL, secrets)
            spec_.log_config = None  # nothing is read from its log: each command is attached
            box = containers.create(cli, spec_)
            run.job.session["container"] = box.id
            run.save()
            with containers.engine_errors("starting the session's container", cli):
                box.start()
        except BaseException as exc:
            _abandon(run, exc)
            raise
    return job.id


def _abandon(run: JobRun, exc: BaseException) -> None:
    """A start that failed: nothing of it stays (containers, workspace); the job failed."""
    from logist.cleanup import after_job

    with contextlib.suppress(LogistError):
        cli = run.dock.client()
        containers.stop_and_remove(containers.find(cli, run.store.root, run.job.id), grace=0)
    run.job.stop_running(FAILED, str(exc) or type(exc).__name__)
    run.save()
    with contextlib.suppress(LogistError):
        after_job(run, harvested=True)


# --- the session's own commands ---------------------------------------------------------------


@contextlib.contextmanager
def _live(rt: Runtime, job_id: str) -> Iterator[tuple[JobRun, Any]]:
    """The session under its lock, and its container, which must be running.

    Raises:
        UsageError: not a session, or stopped (exit 2).
        EnvironmentProblem: its container is gone (exit 3; the session is interrupted).
    """

    with JobRun.open(rt.store, job_id, timeout=LOCK_WAIT) as run:
        job = run.job
        if not is_session(job):
            raise UsageError(f"job {job_id} is not a session (see `logist session start`)")
        if job.state != RUNNING:
            raise InvalidTransition(f"session {job_id} is {job.state}, not running")
        cid = job.session.get("container") or ""
        box = container_of(run)
        if box is None:
            job.stop_running(INTERRUPTED, f"the session's container {cid[:12]} is gone")
            run.save()
            raise EnvironmentProblem(
                f"session {job_id}: its container {cid[:12]} is gone (the session is "
                "interrupted; its last harvest is kept)"
            )
        yield run, box


def container_of(run: JobRun) -> Any:
    """The session's container while it runs (or is paused), else None."""
    import docker

    cli = run.dock.client()
    what = f"looking up session {run.job.id}'s container"
    with containers.engine_errors(what, cli), contextlib.suppress(docker.errors.NotFound):
        box = cli.containers.get(run.job.session.get("container") or "")
        return box if box.status in ("running", "paused") else None
    return None


def execute(
    rt: Runtime,
    job_id: str,
    argv: list[str],
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    workdir: str | None = None,
    listener: Listener | None = None,
    collect: bool = False,
) -> ExecResult:
    """Run ``argv`` in the session's container (as its user, in /workspace unless ``workdir``);
    its output streamed to ``listener`` (masked), stored as ``logs/exec-<n>.log``. A timeout,
    or an interruption of the caller (Ctrl-C), stops this command only.

    Raises:
        UsageError: bad input, a stopped or unknown session (exit 2).
        EnvironmentProblem: the session's container or its engine is gone (exit 3).
    """
    from logist.runner import read_secrets
    from logist.spec import _ENV_KEY_RE

    if not argv:
        raise UsageError("name the command to run: session exec ID -- CMD [ARG ...]")
    for key in env or {}:
        if not _ENV_KEY_RE.fullmatch(key):
            raise UsageError(f"--env {key!r}: not a variable name")
    with _live(rt, job_id) as (run, box):
        job = run.job
        n = int(job.session.get("execs") or 0) + 1
        job.session["execs"] = n
        _touch(run)
        log_path = run.dir.logs / f"exec-{n}.log"
        mask = SecretMask(list(read_secrets(job.secrets).values()))
        pidfile = f"/tmp/.logist-exec-{n}.pid"
        api = box.client.api
        with containers.engine_errors(f"running a command in session {job_id}", box.client):
            made = api.exec_create(
                box.id,
                ["/bin/sh", "-c", WRAP, pidfile, *argv],
                stdout=True,
                stderr=True,
                environment=env or None,
                workdir=workdir or "/workspace",
                user=job.user,
            )
        collected = _Collected(listener, limit=job.limits.log_limit if collect else 0)
        log_limit = job.limits.log_limit
        timed_out = _run_exec(
            api, made["Id"], box, pidfile, (log_path, log_limit), mask, collected, timeout
        )
        with containers.engine_errors(f"running a command in session {job_id}", box.client):
            code = api.exec_inspect(made["Id"]).get("ExitCode")
        _touch(run)
        return ExecResult(code, collected.text(), str(log_path), timed_out)


class _Collected:
    """A listener that keeps what it is given (up to ``limit`` bytes) and passes it on."""

    def __init__(self, inner: Listener | None, limit: int) -> None:
        self.inner, self.limit, self.parts, self.size = inner, limit, [], 0

    def __call__(self, chunk: bytes) -> None:
        if self.size < self.limit:
            self.parts.append(chunk[: self.limit - self.size])
            self.size += len(self.parts[-1])
        if self.inner is not None:
            self.inner(chunk)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def text(self) -> str:
        return b"".join(self.parts).decode(errors="replace")


def _run_exec(api, exec_id, box, pidfile, log, mask, listener, timeout) -> bool:
    """Stream one command's output into its log and the listener; stop it (SIGTERM, then
    SIGKILL) at its timeout or when the caller is interrupted. True when it timed out."""
    done = threading.Event()
    timed_out = threading.Event()

    def watch() -> None:
        if timeout and not done.wait(timeout):
            timed_out.set()
            _stop_command(box, pidfile)

    watcher = threading.Thread(target=watch, name="logist-exec-timeout", daemon=True)
    watcher.start()
    log_path, limit = log
    with open(log_path, "wb", buffering=0) as fh:
        capped = output.CappedLog(fh, limit, spill_dir=str(log_path.parent))
        out = StepOutput(capped, listener, mask)
        try:
            with containers.engine_errors("streaming a session command's output", box.client):
                for chunk in api.exec_start(exec_id, stream=True):
                    out(chunk)
        except BaseException:  # the caller interrupted (Ctrl-C): this command stops, alone
            _stop_command(box, pidfile)
            raise
        finally:
            done.set()
            out.close()
    return timed_out.is_set()


def _stop_command(box: Any, pidfile: str) -> None:
    """SIGTERM to the session's command and every process it started (its process group: an
    ``exec``'d process leads one), SIGKILL after a grace."""
    kill = (
        f'p=$(cat {shlex.quote(pidfile)} 2>/dev/null) && [ -n "$p" ] || exit 0; '
        'kill -TERM "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; i=0; '
        f'while kill -0 "-$p" 2>/dev/null && [ $i -lt {int(STOP_GRACE * 10)} ]; do '
        'sleep 0.1; i=$((i+1)); done; kill -KILL "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null'
    )
    with contextlib.suppress(Exception):
        box.exec_run(["/bin/sh", "-c", kill], user="0:0")


def checkpoint(rt: Runtime, job_id: str) -> str:
    """Harvest now: the container paused while its workspace is read (one consistent tree),
    the work committed on the job branch; its commit.

    Raises:
        HarvestFailed: the harvest was refused (exit 4); EnvironmentProblem: exit 3.
    """
    with _live(rt, job_id) as (run, box):
        commit = _harvest(run, box, rt.notify)
        _touch(run)
        return commit


def _harvest(run: JobRun, box: Any, notify=None) -> str:
    from logist.harvest import harvest
    from logist.sandbox import Sandbox

    k = int(run.job.session.get("harvests") or 0) + 1
    run.job.session["harvests"] = k
    with _paused(box), Sandbox(run) as sandbox:
        label = f"session harvest {k}"
        return harvest(run, sandbox, label, notify) if notify else harvest(run, sandbox, label)


@contextlib.contextmanager
def _paused(box: Any) -> Iterator[None]:
    """The container paused while inside (an engine that cannot pause it: not paused)."""
    paused = False
    with contextlib.suppress(Exception):
        box.pause()
        paused = True
    try:
        yield
    finally:
        if paused:
            with contextlib.suppress(Exception):
                box.unpause()


def stop(rt: Runtime, job_id: str) -> JobResult:
    """Harvest, finish (the branch in a local source, ``result.bundle``) and clean up: the
    session ends ``succeeded`` and nothing of it is left.

    Raises:
        UsageError: not a session, or not running (exit 2).
    """
    from logist.cleanup import after_job
    from logist.harvest import finish
    from logist.results import JobResult

    with _live(rt, job_id) as (run, box):
        _harvest(run, box, rt.notify)
        containers.stop_and_remove([box], grace=STOP_GRACE)
        run.job.move(SUCCEEDED)
        run.job.session["container"] = None
        run.save()
        finish(run)
        report = after_job(run, harvested=True)
        return JobResult(job=run.job, cleanup=report)


def sweep_one(run: JobRun, dry_run: bool, out: dict, notify=None) -> None:
    """The sweep's look at a running session (its lock held): stopped (harvested, finished,
    cleaned) when idle longer than its idle timeout, interrupted when its container is gone
    (its last harvest kept), else skipped (``session``)."""
    from logist.cleanup import record

    if run.job.state != RUNNING:
        return
    gone = container_of(run) is None
    if not gone and not idle(run.job):
        out["skipped"].append({"job": run.job.id, "reason": "session"})
        return
    if dry_run:
        out["cleaned"].append(
            {"job": run.job.id, "workspace_removed": True, "containers_removed": int(not gone),
             "bytes_freed": 0, "seconds": 0.0}
        )  # fmt: skip
        return
    result = stop_idle(run, notify)
    if result.cleanup is not None:
        record(out, result.cleanup, containers_count=True)


def stop_idle(run: JobRun, notify=None) -> JobResult:
    """The sweep's end of a session (the caller holds its lock): idle too long, it is stopped
    as ``stop`` does; its container gone, it is interrupted (its last harvest kept) and cleaned
    up like any interrupted job."""

    from logist.cleanup import after_job
    from logist.harvest import finish
    from logist.results import JobResult

    job = run.job
    box = container_of(run)
    if box is not None:
        _harvest(run, box, notify)
        containers.stop_and_remove([box], grace=STOP_GRACE)
        job.move(SUCCEEDED)
    else:
        job.stop_running(INTERRUPTED, "the session's container is gone")
    job.session["container"] = None
    run.save()
    finish(run)
    return JobResult(job=job, cleanup=after_job(run, harvested=job.state == SUCCEEDED))


# --- files -----------------------------------------------------------------------------------


def _path(path: str) -> str:
    """A path under /workspace, from one relative to it (no way out of it)."""
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if not parts or ".." in parts or "\0" in str(path):
        raise UsageError(f"{path!r}: a path relative to /workspace, without '..'")
    return "/workspace/" + "/".join(parts)


def read_file(rt: Runtime, job_id: str, path: str) -> bytes:
    """The bytes of the regular file ``path`` (relative to /workspace) in the session (at most
    the job's ``max_result_size``).

    Raises:
        UsageError: no such regular file there, or too large (exit 2).
    """
    import io
    import tarfile

    import docker

    with _live(rt, job_id) as (run, box):
        limit = run.job.limits.max_result_size
        full = _path(path)
        try:
            with containers.engine_errors(f"reading {path} in session {job_id}", box.client):
                stream, _stat = box.get_archive(full)
                data = b"".join(stream)
        except LogistError as exc:
            raise UsageError(f"session {job_id}: cannot read {path!r}: {exc}") from None
        except docker.errors.NotFound:
            raise UsageError(f"session {job_id}: no file {path!r}") from None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            if member is None or not member.isreg():
                raise UsageError(f"session {job_id}: {path!r} is not a regular file")
            if member.size > limit:
                raise UsageError(f"session {job_id}: {path!r} is over {limit} bytes")
            extracted = tar.extractfile(member)
            assert extracted is not None
            content = extracted.read(limit)
        _touch(run)
        return content


def write_file(rt: Runtime, job_id: str, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (relative to /workspace) in the session, owned by its user
    (missing directories made as the user).

    Raises:
        UsageError: a bad path, or the engine refused the write (exit 2).
    """
    import io
    import posixpath
    import tarfile

    full = _path(path)
    parent, name = posixpath.split(full)
    with _live(rt, job_id) as (run, box):
        uid, gid = (int(x) for x in run.job.user.split(":"))
        made = box.exec_run(["mkdir", "-p", "--", parent], user=run.job.user)
        if made.exit_code != 0:
            raise UsageError(f"session {job_id}: cannot make {parent}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o644, uid, gid
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with containers.engine_errors(f"writing {path} in session {job_id}", box.client):
            if not box.put_archive(parent, buf.getvalue()):
                raise UsageError(f"session {job_id}: the engine did not take {path!r}")
        _touch(run)


def _touch(run: JobRun) -> None:
    run.job.session["last_active"] = now()
    run.save()


__all__ = [
    "ExecResult",
    "Session",
    "checkpoint",
    "execute",
    "read_file",
    "start",
    "stop",
    "write_file",
]


class Session:
    """A live session of a runtime (``Runtime.session``): ``exec``, ``read_file``,
    ``write_file``, ``harvest``; leaving the ``with`` block (also by an exception) stops it as
    ``logist session stop`` does."""

    def __init__(self, rt: Runtime, job_id: str, on_output=None) -> None:
        self.rt, self.id, self.on_output = rt, job_id, on_output

    def exec(
        self,
        argv: list[str],
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the session; its exit code and output (``r.exit_code``,
        ``r.output``). A failing command is a result; a timeout stops that command only."""
        from logist.streams import Callback

        listener = None
        if self.on_output is not None:
            listener = Callback(self.on_output, 0)
        return execute(
            self.rt,
            self.id,
            list(argv),
            timeout=timeout,
            env=env,
            workdir=workdir,
            listener=listener,
            collect=True,
        )

    def read_file(self, path: str) -> bytes:
        return read_file(self.rt, self.id, path)

    def write_file(self, path: str, data: bytes | str) -> None:
        write_file(self.rt, self.id, path, data.encode() if isinstance(data, str) else data)

    def harvest(self) -> str:
        """A checkpoint: the work committed on ``logist/<id>`` now; the commit."""
        return checkpoint(self.rt, self.id)

    def stop(self) -> dict[str, Any]:
        """Harvest, finish and clean up; the session's status dict."""
        return self.rt._outcome(stop(self.rt, self.id))

    def status(self) -> dict[str, Any]:
        return self.rt.status(self.id)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop()
        except InvalidTransition:  # canceled or stopped from elsewhere: nothing to stop
            if exc is None:
                raise

    def __repr__(self) -> str:
        return f"Session({self.id!r})"
