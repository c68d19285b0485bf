"""The only code that runs git over a workspace: inside a locked-down helper container.

The helper (``logist/step:latest`` unless ``LOGIST_HELPER_IMAGE`` says otherwise; never the
step's image) has no network, no capability but ``DAC_OVERRIDE`` and ``FOWNER`` (it must read
and replace what a root step left to others), ``no-new-privileges``, and mounts only the
workspace, logist's repository of the job (read-only) and an empty exchange directory. One
helper is kept for a job's run. On Docker each harvest is a request on its standard input
(``logist/channel.py``: no ``exec``, ~55 ms less a step); on Podman and over ``ssh://`` an
``exec`` (see docs/performance.md).

A harvest reads the workspace's refs and files as data, makes the step's commit on top of the
last harvest, and writes a bundle into the exchange directory; ``logist/harvest.py`` copies it
out without following links and fetches it (``fsck``) into the trusted repository. Nothing the
helper prints or writes is trusted: the host checks it all.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from logist import containers, helper, visibility
from logist.channel import SERVE, Channel, ChannelLost, Stopped, drivable
from logist.container_spec import ContainerSpec, helper_image
from logist.errors import (
    HarvestFailed,
    Interrupted,
    LogistError,
    Rejected,
    WorkspaceUnseen,
    printable,
)
from logist.helper import GIT_KEPT, HarvestOutput, parse_output, too_big
from logist.jobrun import JobRun
from logist.store import owner_id
from logist.workspaces import workspace_of

if TYPE_CHECKING:
    from docker.models.containers import Container


HELPER_TIMEOUT = 300  # seconds one harvest may take (LOGIST_HARVEST_TIMEOUT), then it is killed
STOP_GRACE = 10.0  # seconds a harvest may go on after SIGINT/SIGTERM before it is killed
TOO_BIG = 17  # the harvest's exit status for a file over max_object_size (harvest.sh)


# The helper's scripts (logist/helper/*.sh). HARVEST runs as root in the helper with
# DAC_OVERRIDE only (arguments: harvest.sh's first line); it prints "commit C", "bundle NAME",
# "ref OID NAME" lines, every one checked by the host. WRITE_BACK runs as the step's user
# (branch, harvest commit, namespace). TRUSTED_INIT makes a volume workspace's helper its own
# repository of what logist has (/trusted) from a bundle.
HARVEST = helper.script("prelude.sh", "harvest.sh")
WRITE_BACK = helper.script("prelude.sh", "write-back.sh")
TRUSTED_INIT = helper.script("trusted-init.sh")
_BUNDLE = re.compile(r"[0-9a-f]{16}\.bundle")
# The helper's command when it proves the engine sees the job directory: its first line is
# what it reads from the marker logist wrote there (the token, or nothing), then it waits.
VISIBLE = helper.script("visible.sh")


class Sandbox:
    """A job's helper container: started on first use, removed by ``close`` (a context
    manager). Labelled like the job's steps, so cleanup and the orphan sweep find it."""

    def __init__(self, run: JobRun, should_stop: Callable[[], bool] | None = None) -> None:
        self.store = run.store
        self.job = run.job
        self.should_stop = should_stop  # polled while a harvest runs (SIGINT/SIGTERM)
        self.paths = run.dir
        self.job_dir = run.dir.path
        self.exchange = run.dir.exchange
        self.volume = run.job.volume  # the workspace is this named volume (None: a bind mount)
        self.dock = run.dock  # the job's engine
        self.workspace = workspace_of(run)
        self._container: Container | None = None
        self._channel: Channel | None = None
        self._serving = False  # the helper runs SERVE: harvests are requests, not execs
        self._removing: threading.Thread | None = None  # ``release``'s removal of the helper
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- lifecycle ---------------------------------------------------------------------------

    def start_in_background(self, check: bool = False) -> None:
        """Start the helper while the caller goes on; the first use waits for it, and raises
        what it raised. ``check``: first prove, here, that the engine sees the job directory
        (the marker found through the created helper's mount), so no step runs before that;
        an engine that cannot say so without the helper's start starts it here."""
        if self._starting is not None or self._container is not None:
            return
        if check:
            token = self._create(check=True)
            if token is not None:  # the helper's first line decides: before any step
                self._boot(token)
                return

        def go() -> None:
            try:
                if self._container is None:
                    self._create(check=False)
                self._boot(None)
            except BaseException as exc:  # handed to the first use, in the caller's thread
                self._start_error = exc

        self._starting = threading.Thread(target=go, name="logist-helper-start", daemon=True)
        self._starting.start()

    def _started(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.join()
        error, self._start_error = self._start_error, None
        if error is not None:
            raise error

    def start(self, check: bool = True) -> None:
        """Start the helper and (``check``) prove the engine sees this job's directory (a
        marker written here must be read there); ``EnvironmentProblem`` (exit 3) otherwise."""
        if self._starting is not None and threading.current_thread() is not self._starting:
            self._started()
        if self._container is not None:
            return
        self._boot(self._create(check))

    def _create(self, check: bool) -> str | None:
        """Create the helper, not started, and (``check``, a bind workspace) look for the
        marker through it (``visibility.stat_says``). Returns the token the started helper's
        first line must name when the engine could not say so now, else None."""
        import docker

        self._prepare_exchange()
        cli = self.dock.client()
        image = helper_image()
        containers.ensure_image(cli, image, "missing")
        token = secrets.token_hex(8) if check and self.volume is None else None
        marker = visibility.marker_name(token) if token is not None else ""
        if token is not None:
            (self.exchange / marker).write_text(token)
        with containers.engine_errors("asking the engine what it is", cli):
            self._serving = _can_serve(cli)
        stdin_open = None
        if self._serving:  # harvests through its standard input (see logist/channel.py)
            command = ["sh", "-c", SERVE, "serve", marker, HARVEST, str(int(_harvest_timeout()))]
            stdin_open = True
        elif token is not None:
            command = ["sh", "-c", VISIBLE, "visible", marker]
        else:
            command = ["sleep", "infinity"]
        mounts = [self.workspace.mount()]
        if self.volume is None:  # on this host: logist's repository and the exchange too
            mounts += [
                docker.types.Mount("/trusted", str(self.paths.repo), type="bind", read_only=True),
                docker.types.Mount("/out", str(self.exchange), type="bind"),
            ]
        try:
            spec = ContainerSpec(
                image=image,
                command=command,
                job_id=self.job.id,
                step="helper",
                jobs_root=self.store.root,
                owner=owner_id(),
                mounts=mounts,
                user="0:0",
                # to read what a root step left unreadable, and replace a .git it gave another
                # uid in sticky directories; never DAC_READ_SEARCH, which would open
                # open_by_handle_at to it (a way out of the container); all else dropped
                cap_add=["DAC_OVERRIDE", "FOWNER"],
                pids=512,
                memory=self.job.limits.helper_memory,
                memory_swap=self.job.limits.helper_memory,
                workdir="/",
                stdin_open=stdin_open,
                network_disabled=True,
            )
            self._container = containers.create(cli, spec)
            if token is None:
                return None
            seen = visibility.stat_says(self._container, token)
        except Rejected as exc:  # our own settings: a 4xx here is a path the engine lacks
            self._drop_marker(token)
            if self.volume is not None:
                raise
            raise self._unseen(str(exc)) from None
        except BaseException:
            self._drop_marker(token)
            raise
        if seen is None:
            return token
        self._drop_marker(token)
        if not seen:
            raise self._unseen(visibility.NOT_VISIBLE)
        return None

    def _boot(self, token: str | None) -> None:
        """Start the created helper; ``token``: its first line must name it (the check)."""
        assert self._container is not None
        cli = self.dock.client()
        if self._container.client is not cli:  # created in another thread: never share a client
            self._container = cli.containers.prepare_model(self._container.attrs)
        if self.volume is not None:
            self._send_trusted()
        try:
            with containers.engine_errors("starting the harvest helper", cli):
                self._container.start()
            if token is not None and not visibility.first_line_says(
                self._container, token, helper_image()
            ):
                raise self._unseen(visibility.NOT_VISIBLE)
        finally:
            self._drop_marker(token)
        if self.volume is not None:
            code, _out, err = self._exec(["sh", "-c", TRUSTED_INIT], timeout=600)
            if code != 0:
                raise HarvestFailed(f"the harvest helper failed to start: {_last_line(err, code)}")

    def _send_trusted(self) -> None:
        """Volume workspaces: what logist has of the job (its branch and kept refs) goes into
        the helper, not yet started (``volumes.send_repository``)."""
        from logist import gitops, volumes

        repo = self.paths.repo
        names = [f"refs/heads/{self.job.branch}", *gitops.refs(repo, f"refs/logist/{self.job.id}/")]
        assert self._container is not None
        volumes.send_repository(self._container, repo, names, self.exchange)

    def close(self) -> None:
        """Remove the helper (killed at once: it holds no work), or wait for ``release`` to
        have removed it. An engine that went away leaves it to the orphan sweep (its owner
        label names this process)."""
        self.release()
        removing, self._removing = self._removing, None
        if removing is not None:
            removing.join()

    def release(self) -> None:
        """Start removing the helper while the caller goes on (its last harvest is in: the
        host's checks and the job's end need no helper); ``close`` waits for it. A later use
        would start a new helper."""
        import docker

        with contextlib.suppress(BaseException):
            self._started()
        self._drop_channel()
        container, self._container = self._container, None
        if container is None or self.dock.lost():
            return

        def remove() -> None:
            with contextlib.suppress(LogistError, docker.errors.APIError):
                cli = self.dock.client()  # this thread's: the caller goes on with its own
                with containers.engine_errors("removing the harvest helper", cli):
                    cli.api.remove_container(container.id, force=True, v=True)  # SIGKILL, remove

        previous = self._removing
        self._removing = threading.Thread(target=remove, name="logist-helper-rm")
        self._removing.start()
        if previous is not None:
            previous.join()

    def _prepare_exchange(self) -> None:
        """An empty exchange directory the helper (root without DAC_OVERRIDE) may write; the
        job directory around it is private, so nobody else reaches it."""
        ex = self.exchange
        try:
            st = os.lstat(ex)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(ex)
        except FileNotFoundError:
            pass
        ex.mkdir(exist_ok=True)
        for entry in os.scandir(ex):
            if entry.is_dir(follow_symlinks=False):
                continue  # the helper made it; never followed, removed with the job
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        os.chmod(ex, 0o700 if os.geteuid() == 0 else 0o777)

    def _drop_marker(self, token: str | None) -> None:
        if token is not None:
            (self.exchange / visibility.marker_name(token)).unlink(missing_ok=True)

    def _unseen(self, detail: str) -> WorkspaceUnseen:
        return visibility.unseen(self.dock, self.job_dir, detail)

    # --- work --------------------------------------------------------------------------------

    def workspace_present(self) -> bool:
        """Whether the workspace it mounts is there (a volume: asked of the engine)."""
        return self.workspace.present()

    def _exec(
        self, command: list[str], *, user: str = "0:0", timeout: float | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run ``command`` in the helper; a helper removed meanwhile (``job cancel`` removes
        every container of the job) is started again, once."""

        if timeout is None:
            timeout = _harvest_timeout()
        wrapped = ["timeout", "-s", "KILL", str(int(timeout)), *command]
        result = None
        for attempt in (1, 2):
            self.start()
            assert self._container is not None
            try:
                with containers.engine_errors("running the harvest helper", self.dock):
                    result = self._run_exec(wrapped, user)
            except LogistError:
                if attempt == 2 or self._alive():
                    raise
            else:
                # 126/137 with the helper gone: it was stopped under the exec, not by it
                if result.exit_code not in (126, 137) or attempt == 2 or self._alive():
                    break
            self._discard()  # stopped or removed from elsewhere (a canceller): a new one, once
            result = None
        assert result is not None
        stdout, stderr = result.output if isinstance(result.output, tuple) else (None, None)
        return int(result.exit_code or 0), stdout or b"", stderr or b""

    def _alive(self) -> bool:
        """Whether the helper still runs (asked of the engine)."""
        import docker

        if self._container is None:
            return False
        try:
            with containers.engine_errors("inspecting the harvest helper", self.dock):
                try:
                    self._container.reload()
                except docker.errors.NotFound:
                    return False
        except LogistError:
            return False
        return self._container.status == "running"

    def _run_exec(self, command: list[str], user: str):
        """``exec_run`` that a signal can stop: a harvest still running ``STOP_GRACE`` seconds
        after SIGINT/SIGTERM is killed with its helper, and ``Interrupted`` raised."""
        container = self._container
        assert container is not None
        if self.should_stop is None:
            return container.exec_run(command, user=user, demux=True, workdir="/")
        box: dict = {}

        def go() -> None:
            try:
                box["result"] = container.exec_run(command, user=user, demux=True, workdir="/")
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=go, name="logist-harvest", daemon=True)
        worker.start()
        asked: float | None = None
        while worker.is_alive():
            worker.join(0.1)
            if worker.is_alive() and self.should_stop():
                asked = asked or time.monotonic()
                if time.monotonic() - asked < STOP_GRACE:
                    continue  # a harvest takes a moment: let it land the step's work
                self._discard()
                worker.join(10)
                raise Interrupted("interrupted during the harvest; the workspace is kept")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _request(self, args: list[str]) -> tuple[int, bytes, bytes]:
        """Run the harvest script with ``args``: a request on the helper's standard input
        where it serves them, else an ``exec``; a helper removed meanwhile is started again,
        once, as ``_exec`` does."""
        for attempt in (1, 2):
            self.start()
            if not self._serving:
                return self._exec(["sh", "-c", HARVEST, "harvest", *args])
            assert self._container is not None
            try:
                if self._channel is None:
                    if not self._alive():  # an attach to a stopped one would wait in silence
                        raise ChannelLost("the helper is not running")
                    with containers.engine_errors("attaching to the harvest helper", self.dock):
                        self._channel = Channel.open(self._container, self.dock.timeout)
                    if self._channel is None:  # this transport is not driven so
                        self._serving = False
                        continue
                return self._channel.request(
                    args,
                    deadline=_harvest_timeout() + 30,
                    should_stop=self.should_stop,
                    grace=STOP_GRACE,
                    alive=self._alive,
                )
            except Stopped:
                self._discard()
                raise Interrupted("interrupted during the harvest; the workspace is kept") from None
            except (ChannelLost, LogistError) as exc:
                self._drop_channel()
                if attempt == 2 or self._alive():
                    if isinstance(exc, LogistError):
                        raise
                    raise HarvestFailed(f"the harvest helper did not answer: {exc}") from None
                self._discard()  # removed from elsewhere
        raise AssertionError("unreachable")

    def _discard(self) -> None:
        """Forget the helper and remove it at once (stopped or removed from elsewhere, or given
        up on after a signal); the next use starts a new one."""
        self._drop_channel()
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)

    def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def harvest(
        self,
        *,
        previous: str,
        message: str,
        nonce: str,
        unfinished: list[str],
        write_back: bool = True,
    ) -> HarvestOutput:
        """Run the harvest script; ``HarvestFailed`` when the helper could not make a commit.
        A step that runs as root has its workspace repository written back in the same run
        (``written_back``); otherwise ``write_back`` does it, as the step's user."""
        together = write_back and self.job.user == "0:0"
        most = self.job.limits.max_object_size
        wb = "yes" if together else ""
        args = [self.job.branch, previous, message, nonce, self.job.id, wb, str(most)]
        args.append(" ".join(unfinished))
        code, stdout, stderr = self._request(args)
        if code == 0 and not stdout.strip():  # it ended, its answer lost (Podman's exec attach
            code, stdout, stderr = self._request(args)  # under load): once more
        out = parse_output(stdout, stderr)
        if code == TOO_BIG:
            raise HarvestFailed(too_big(stderr, most))
        if code != 0 or out.commit is None:
            raise HarvestFailed(f"the harvest helper failed: {_last_line(stderr, code)}")
        if self.volume is not None and out.bundle is not None and _BUNDLE.fullmatch(out.bundle):
            from logist import volumes

            assert self._container is not None
            volumes.fetch_file(
                self._container,
                f"/out/{out.bundle}",
                self.exchange,
                out.bundle,
                limit=self.job.limits.max_result_size,
            )
        out.written_back = together or not write_back
        return out

    def write_back(self, commit: str) -> list[str]:
        """Make the workspace's repository show the harvest, as the step's user; returns
        warnings (a failure here loses nothing: the harvest is already in logist's repo)."""
        code, _out, err = self._exec(
            ["sh", "-c", WRITE_BACK, "write-back", self.job.branch, commit, self.job.id],
            user=self.job.user,
        )
        if code != 0:  # the step's own .git may still be there
            raise HarvestFailed(f"{GIT_KEPT} ({_last_line(err, code)})")
        return parse_output(b"", err).warnings  # e.g. made again from the harvest alone


def _harvest_timeout() -> float:
    return float(os.environ.get("LOGIST_HARVEST_TIMEOUT") or HELPER_TIMEOUT)


def _can_serve(cli) -> bool:
    """Whether the helper is driven through its standard input here: Docker over ``unix://``
    or ``tcp://`` (Podman and ``ssh://`` get an ``exec`` per harvest)."""
    from logist import podman

    if os.environ.get("LOGIST_HELPER_EXEC") or not drivable(cli.api):
        return False
    return not podman.is_podman(cli)


def _last_line(stderr: bytes, code: int) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return printable(lines[-1])[:300] if lines else f"exit {code}"
