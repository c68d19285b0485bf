"""A session's commands and files (``logist session exec``, ``Session.exec``, ``read_file``,
``write_file``) and ``Session``, the handle ``Runtime.session`` returns; the session's life
(start, checkpoint, stop, the sweep) is ``logist/session.py``'s."""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Any

from logist import containers, output
from logist.errors import InvalidTransition, LogistError, UsageError
from logist.session import STOP_GRACE, Runtime, _live, _touch, checkpoint, stop
from logist.streams import Listener, SecretMask, StepOutput

# A command run in the session: its pid noted first (to stop it and what it started: its
# process group), then the command itself.
# The longest path read_file and write_file take: the engine's archive reaches it from the host,
# under its data root (/var/lib/docker/overlay2/<id>/merged/...), within PATH_MAX (4096)
MAX_PATH = 3072
WRAP = '{ echo $$ > "$1"; } 2>/dev/null; shift; exec "$@"'  # $0: the name its errors carry


@dataclass
class ExecResult:
    """One command's end: its exit code (None: stopped before it ended) and output (masked)."""

    exit_code: int | None
    output: str
    log: str
    timed_out: bool = False


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
    from logist.job_container import read_secrets
    from logist.spec import _ENV_KEY_RE, _positive

    if not isinstance(argv, list | tuple) or not argv:  # a str would run as its characters
        raise UsageError("name the command to run, as a list: session exec ID -- CMD [ARG ...]")
    argv = list(argv)
    if timeout is not None:  # a finite number of seconds > 0, at most spec.MAX_TIMEOUT
        timeout = float(_positive("--timeout", timeout))
    if env is not None and not isinstance(env, dict):
        raise UsageError("env: a mapping of variable names to values")
    for key in env or {}:
        if not isinstance(key, str) or not _ENV_KEY_RE.fullmatch(key):
            raise UsageError(f"--env {key!r:.100}: not a variable name")
    texts = [*argv, *(env or {}).values(), *([workdir] if workdir else [])]
    if not all(isinstance(t, str) and "\0" not in t for t in texts):
        raise UsageError("a command, --env value or --workdir must be text without a NUL")
    if workdir and not workdir.startswith("/"):
        raise UsageError(f"--workdir {workdir!r}: an absolute path in the container")
    with _live(rt, job_id) as (run, box):
        job = run.job
        mask = SecretMask(list(read_secrets(job.secrets).values()))  # first: no number used
        n = int(job.session.get("execs") or 0) + 1
        job.session["execs"] = n
        _touch(run)
        log_path = run.dir.logs / f"exec-{n}.log"
        pidfile = f"/tmp/.logist-exec-{n}.pid"
        api = box.client.api
        with containers.engine_errors(f"running a command in session {job_id}", box.client):
            made = api.exec_create(
                box.id,
                ["/bin/sh", "-c", WRAP, "logist-exec", pidfile, *argv],
                stdout=True,
                stderr=True,
                environment=env or None,
                workdir=workdir or "/workspace",
                user=job.user,
            )
        collected = _Collected(listener, limit=job.limits.log_limit if collect else 0)
        log_limit = job.limits.log_limit
        stop = _Stop(api, made["Id"], box, pidfile, job.user)
        timed_out = _run_exec(
            api, made["Id"], box, stop, (log_path, log_limit), mask, collected, timeout
        )
        with containers.engine_errors(f"running a command in session {job_id}", box.client):
            code = api.exec_inspect(made["Id"]).get("ExitCode")
        _touch(run)
        return ExecResult(None if timed_out else code, collected.text(), str(log_path), timed_out)


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


def _run_exec(api, exec_id, box, stop, log, mask, listener, timeout) -> bool:
    """Stream one command's output into its log and the listener; stop it (SIGTERM, then
    SIGKILL) at its timeout or when the caller is interrupted. True when it timed out."""
    done = threading.Event()
    timed_out = threading.Event()

    def watch() -> None:
        if timeout is not None and not done.wait(timeout):
            timed_out.set()
            stop.command()

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
            stop.command()
            raise
        finally:
            done.set()
            out.close()
    return timed_out.is_set()


class _Stop:
    """Stopping one command of a session: SIGTERM to it and every process it started (its
    process group: an ``exec``'d process leads one), SIGKILL after a grace. Which process:
    the engine's own record of the command (its pid seen from the container, read from the
    host's ``/proc`` where the engine is local), else the file the command's wrapper wrote,
    which the command could rewrite: so the stop runs as the session's user (it can stop no
    more than the command itself could) and never signals pid 1 or below."""

    def __init__(self, api: Any, exec_id: str, box: Any, pidfile: str, user: str) -> None:
        self.api, self.exec_id, self.box = api, exec_id, box
        self.pidfile, self.user = pidfile, user

    def command(self) -> None:
        pid = self._engines_pid()
        read = f"p={pid}" if pid else f"p=$(cat {shlex.quote(self.pidfile)} 2>/dev/null)"
        kill = (
            f'{read}; case "$p" in ""|*[!0-9]*) exit 0;; esac; [ "$p" -gt 1 ] || exit 0; '
            'kill -TERM "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; i=0; '
            f'while kill -0 "-$p" 2>/dev/null && [ $i -lt {int(STOP_GRACE * 10)} ]; do '
            "sleep 0.1; i=$((i+1)); done; "
            'kill -KILL "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null'
        )
        with contextlib.suppress(Exception):
            self.box.exec_run(["/bin/sh", "-c", kill], user=self.user)

    def _engines_pid(self) -> int | None:
        """The command's pid in its container, from the engine's host pid, when that process
        is here and in this container's cgroup (a remote engine's pid names nothing here)."""
        try:
            host_pid = int(self.api.exec_inspect(self.exec_id).get("Pid") or 0)
            if host_pid <= 0:
                return None
            with open(f"/proc/{host_pid}/cgroup") as fh:
                if self.box.id not in fh.read():
                    return None
            with open(f"/proc/{host_pid}/status") as fh:
                nspids = next((ln.split()[1:] for ln in fh if ln.startswith("NSpid:")), [])
            return int(nspids[-1]) if len(nspids) > 1 else None
        except Exception:  # gone, not here, or the engine's answer: the pid file then
            return None


# --- files -----------------------------------------------------------------------------------


def _path(path: str) -> str:
    """A path under /workspace, from one relative to it (no way out of it), that Linux names:
    each name at most 255 bytes, the whole at most ``MAX_PATH``."""
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
    parts = [p for p in text.split("/") if p not in ("", ".")] if isinstance(text, str) else []
    if not parts or ".." in parts or "\0" in text:
        raise UsageError(f"{path!r:.200}: a path relative to /workspace, without '..'")
    full = "/workspace/" + "/".join(parts)
    if any(0xD800 <= ord(c) < 0xE000 for c in full):  # no UTF-8 for the engine
        raise UsageError(f"{path!r:.200}: not UTF-8 text (a lone surrogate)")
    if max(len(p.encode()) for p in parts) > 255 or len(full.encode()) > MAX_PATH:
        raise UsageError(
            f"{path!r:.200}: too long (names of at most 255 bytes, at most {MAX_PATH} in all)"
        )
    return full


def _no_link_on_the_way(box: Any, user: str, full: str, job_id: str) -> None:
    """Refuse ``full`` when a link of the step's leads elsewhere on its way: its directory's
    physical path (``cd -P``, as the session's user) must be its own, and it no link. The
    engine's archive, which reads and writes as root, then meets no link of the step's."""
    import posixpath

    parent = posixpath.dirname(full)
    check = 'cd -P -- "$1" 2>/dev/null || exit 0; [ "$(pwd -P)" = "$1" ] && [ ! -L "$2" ]'
    found = box.exec_run(["/bin/sh", "-c", check, "logist-path", parent, full], user=user)
    if found.exit_code != 0:
        raise UsageError(f"session {job_id}: {full} is reached through a link: refused")


def read_file(rt: Runtime, job_id: str, path: str) -> bytes:
    """The bytes of the regular file ``path`` (relative to /workspace) in the session, read
    through the engine's archive as one bounded regular file (at most the job's
    ``max_result_size``; never more in memory or on disk).

    Raises:
        UsageError: no such regular file there, or too large (exit 2).
    """
    import secrets

    from logist.volumes import fetch_file

    with _live(rt, job_id) as (run, box):
        limit = run.job.limits.max_result_size
        _no_link_on_the_way(box, run.job.user, _path(path), job_id)
        name = f".read-{secrets.token_hex(8)}"
        try:
            copy = fetch_file(box, _path(path), run.dir.path, name, limit=limit)
        except LogistError as exc:
            raise UsageError(f"session {job_id}: cannot read {path!r:.200}: {exc}"[:1000]) from None
        try:
            content = copy.read_bytes()
        finally:
            copy.unlink(missing_ok=True)
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
        _no_link_on_the_way(box, run.job.user, full, job_id)
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
            argv,
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
