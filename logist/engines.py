"""Which engines logist uses, where a job's workspace lives on each, and placement.

Engines come from ``--engine URL`` (repeatable) / ``LOGIST_ENGINES`` (comma-separated), else
the one engine the docker SDK finds. A job is placed on one engine for its life (recorded in its
manifest as ``engine``); only a job whose engine stopped answering is placed again, and then it
resumes from its last harvest. On an engine that shares logist's file system (a ``unix://``
socket) the workspace is a bind mount of ``$JOB_DIR/workspace``; on any other it is a named
volume on that engine (``LOGIST_WORKSPACES=volume`` forces volumes everywhere, ``bind`` forces
bind mounts). Placement only, no scheduler: ``job run --parallel N`` runs up to N jobs on each
engine, each job on the reachable engine with the most free slots.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from logist.dock import DEFAULT, Dock
from logist.errors import EngineUnavailable, UsageError

SCHEMES = ("unix://", "tcp://", "ssh://", "npipe://", "http://", "https://")
PROBE_TIMEOUT = 3.0  # seconds a reachability probe may take


def parse(urls: list[str] | str | None) -> list[str]:
    """Engine URLs from a list or a comma-separated string, checked, without duplicates.

    Raises:
        UsageError: a URL with no scheme logist knows.
    """
    if urls is not None and not isinstance(urls, str | list | tuple):
        raise UsageError(f"engines: {urls!r} is not a list of engine URLs"[:200])
    items = urls.split(",") if isinstance(urls, str) else list(urls or [])
    out: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise UsageError(f"engine {raw!r}: not an engine URL (a string)"[:200])
        url = raw.strip().rstrip("/")
        if not url:
            continue
        if url != DEFAULT and not url.startswith(SCHEMES):
            raise UsageError(
                f"engine {url!r}: not an engine URL (unix://PATH, tcp://HOST:PORT or "
                "ssh://USER@HOST, or default: the one DOCKER_HOST names)"
            )
        if url not in out:
            out.append(url)
    return out


def normal(url: str | None) -> str:
    """``url`` as recorded in a manifest (None or ``default``: the default engine)."""
    return DEFAULT if url in (None, "", DEFAULT) else url.rstrip("/")


def uses_volumes(url: str | None) -> bool:
    """Whether a workspace on ``url`` is a named volume (the engine does not share logist's
    file system) rather than a bind mount of ``$JOB_DIR/workspace``."""
    mode = (os.environ.get("LOGIST_WORKSPACES") or "auto").strip().lower()
    if mode == "volume":
        return True
    if mode == "bind":
        return False
    url = normal(url)
    return not Dock(url).url.startswith("unix://")


def reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the engine at ``url`` answers a ping within ``timeout`` seconds (asked now)."""
    return Dock(url).ping(timeout)


class Placer:
    """Free slots per engine (``parallel`` each); ``acquire`` gives a job its engine: the one
    it is placed on, or (not placed yet, or its engine gone) the reachable engine with the most
    free slots. Blocks while the wanted engine is full. ``up(url)`` says whether an engine
    answers (the runtime's ``Dock.answers``: one probe cache per engine)."""

    def __init__(self, engines: list[str], parallel: int, up: Callable[[str], bool]) -> None:
        self.engines = engines
        self.parallel = max(1, parallel)
        self.used = dict.fromkeys(self.engines, 0)
        self._cond = threading.Condition()
        self._answers = up

    @property
    def slots(self) -> int:
        return self.parallel * len(self.engines)

    def _up(self, url: str) -> bool:
        if len(self.engines) == 1 and url == self.engines[0]:
            return True  # one engine: its errors are the run's own (exit 3), no probe
        return self._answers(url)

    def acquire(self, placed: str | None) -> str:
        """Take a slot for a job recorded on ``placed`` (None: not placed yet): that engine
        while it answers, else the reachable engine with the most free slots; released by
        ``release``.

        Raises:
            EngineUnavailable: no engine answers.
        """
        while True:
            if placed is not None and self._up(placed):
                candidates = [placed]
            else:
                candidates = [e for e in self.engines if e != placed and self._up(e)]
            if not candidates:
                names = ", ".join(dict.fromkeys([*([placed] if placed else []), *self.engines]))
                raise EngineUnavailable(f"no engine answers ({names})")
            with self._cond:
                free = [e for e in candidates if self.used.get(e, 0) < self.parallel]
                if free:
                    engine = max(free, key=lambda e: self.parallel - self.used.get(e, 0))
                    self.used[engine] = self.used.get(engine, 0) + 1
                    return engine
                self._cond.wait(0.5)

    def release(self, engine: str) -> None:
        with self._cond:
            self.used[engine] = max(0, self.used.get(engine, 1) - 1)
            self._cond.notify_all()
