"""Job and Step records, their JSON form, and the legal state transitions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from logist.bounds import Bounds
from logist.errors import InvalidTransition

SCHEMA_VERSION = 1


class State(StrEnum):
    """The states of jobs and steps (a job is never ``timed_out``, a step never
    ``interrupted``). Members are strings: they compare equal to, and serialise as, their value."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    INTERRUPTED = "interrupted"
    TIMED_OUT = "timed_out"


class WorkspaceState(StrEnum):
    """A job's workspace, as the manifest records it."""

    ABSENT = "absent"
    READY = "ready"
    REMOVED = "removed"
    REMOVING = "removing"  # harvested and being deleted: never harvested or reused again


PENDING, RUNNING, SUCCEEDED, FAILED = State.PENDING, State.RUNNING, State.SUCCEEDED, State.FAILED
CANCELED, INTERRUPTED, TIMED_OUT = State.CANCELED, State.INTERRUPTED, State.TIMED_OUT

JOB_STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, INTERRUPTED)
STEP_STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})
RUNNABLE = frozenset({PENDING, INTERRUPTED})

JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, CANCELED}),
    RUNNING: frozenset({PENDING, SUCCEEDED, FAILED, CANCELED, INTERRUPTED}),
    INTERRUPTED: frozenset({RUNNING, CANCELED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELED: frozenset(),
}
STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, CANCELED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELED, PENDING}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    TIMED_OUT: frozenset(),
    CANCELED: frozenset(),
}

WS_ABSENT, WS_READY = WorkspaceState.ABSENT, WorkspaceState.READY
WS_REMOVED, WS_REMOVING = WorkspaceState.REMOVED, WorkspaceState.REMOVING


def now() -> str:
    """The current time as UTC ISO-8601 with a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Step:
    index: int
    run: str
    name: str | None = None
    image: str | None = None
    timeout: float | None = None
    state: str = PENDING
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    log: str | None = None
    error: str | None = None
    egress: dict[str, Any] | None = None  # what the job's proxy refused: {"denied": {...}}

    def move(self, new: str) -> None:
        if new != self.state and new not in STEP_TRANSITIONS[self.state]:
            raise InvalidTransition(f"step {self.index} is {self.state}; it cannot become {new}")
        self.state = new


@dataclass
class Job:
    id: str
    repo: str
    steps: list[Step]
    image: str = "logist/step:latest"
    ref: str | None = None
    prompt: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    memory: str | None = None
    cpus: float | None = None
    pids: int | None = None
    network: str = "bridge"
    allow_hosts: list[str] = field(default_factory=list)  # egress by name (logist/egress.py)
    allow_private: list[str] = field(default_factory=list)  # ranges granted past the proxy
    cap_add: list[str] = field(default_factory=list)  # on top of container_spec.DEFAULT_CAPS
    runtime: str | None = None
    secrets: list[str] = field(default_factory=list)  # names only: values are never stored
    user: str = "0:0"
    pull: str = "missing"
    cleanup: str = "always"
    state: str = PENDING
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    base_commit: str | None = None
    workspace_state: str = WS_ABSENT
    engine: str | None = None  # the engine the job is placed on (its URL), once it first ran
    volume: str | None = None  # the workspace's named volume on that engine (None: a bind mount)
    harvested_commit: str | None = None
    bundled_commit: str | None = None
    result_bundle: str | None = None
    result_branch: str | None = None
    leftovers: list[str] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # what the branch adds that a user should know
    unkept: int = 0  # the step's refs the last harvest left out: the workspace has them
    # the bounds this job was created under (logist.bounds.Bounds as a dict; {}: the defaults)
    bounds: dict[str, Any] = field(default_factory=dict)
    # a session's (docs/sessions.md): idle_timeout, container, execs, harvests, last_active
    session: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def branch(self) -> str:
        return f"logist/{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def move(self, new: str) -> None:
        if new != self.state and new not in JOB_TRANSITIONS[self.state]:
            raise InvalidTransition(f"job {self.id} is {self.state}; it cannot become {new}")
        self.state = new

    def stop_running(self, state: str, error: str | None) -> None:
        """Running steps go back to pending, a running job to ``state`` (interrupted, pending)."""
        for step in self.steps:
            if step.state == RUNNING:
                step.move(PENDING)
        if self.state == RUNNING:
            self.move(state)
        self.error = error

    def cancel(self) -> None:
        """Pending and running steps are canceled, and so is the job."""
        for step in self.steps:
            if step.state in (PENDING, RUNNING):
                step.move(CANCELED)
        self.move(CANCELED)

    @property
    def limits(self) -> Bounds:
        """The job's bounds on untrusted input (``logist/bounds.py``)."""
        return Bounds.from_dict(self.bounds)

    def next_step(self) -> Step | None:
        return next((s for s in self.steps if s.state in (PENDING, RUNNING)), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        data = migrate(dict(data))
        names = {f.name for f in dataclasses.fields(cls)}
        step_names = {f.name for f in dataclasses.fields(Step)}
        steps = [
            Step(**{k: _enum(k, v) for k, v in s.items() if k in step_names}) for s in data["steps"]
        ]
        kwargs = {k: _enum(k, v) for k, v in data.items() if k in names and k != "steps"}
        return cls(steps=steps, **kwargs)


def _enum(key: str, value: Any) -> Any:
    """A manifest's state names as ``State`` / ``WorkspaceState`` members."""
    kind = {"state": State, "workspace_state": WorkspaceState}.get(key)
    if kind is None:
        return value
    try:
        return kind(value)
    except ValueError:
        raise InvalidTransition(f"unknown {key} {value!r} in the manifest") from None


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older manifest up to ``SCHEMA_VERSION`` (v1 is the first: nothing to do)."""
    version = data.get("schema_version", 1)
    if version > SCHEMA_VERSION:
        raise InvalidTransition(
            f"manifest schema {version} is newer than this logist understands ({SCHEMA_VERSION})"
        )
    data["schema_version"] = SCHEMA_VERSION
    return data
