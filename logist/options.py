"""Each option of a job, declared once: its spec key (YAML and ``Runtime.create``), its flag
(Typer's ``job create`` and ``run``, and the fast path), its help. A new option is a line here
and its meaning in ``spec.build_job``; nothing else lists the options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobOption:
    key: str  # the spec key
    flag: str  # the command line's
    help: str
    many: bool = False  # repeatable on the command line (a list)

    @property
    def param(self) -> str:
        """The command functions' parameter: the flag's name (``--cap-add``: ``cap_add``)."""
        return self.flag[2:].replace("-", "_")


JOB_OPTIONS = (
    JobOption("repo", "--repo", "Local git repository or git URL."),
    JobOption("image", "--image", "Image of the steps."),
    JobOption("steps", "--step", "A step's command (repeat).", many=True),
    JobOption("ref", "--ref", "Start from this ref (default: HEAD)."),
    JobOption("prompt", "--prompt", "Given to steps as $LOGIST_PROMPT."),
    JobOption("env", "--env", "K=V for the steps (repeat).", many=True),
    JobOption("timeout", "--timeout", "Per-step timeout, seconds."),
    JobOption("memory", "--memory", "Memory limit, e.g. 512m (default 8g, no swap)."),
    JobOption("cpus", "--cpus", "CPU limit, e.g. 1.5."),
    JobOption("pids", "--pids", "Process limit (default 4096)."),
    JobOption("network", "--network", "bridge, none or host."),
    JobOption(
        "allow_hosts",
        "--allow-host",
        "Reach only this host through the job's proxy: HOST (ports 80, 443), HOST:PORT or "
        "'*.DOMAIN' (repeat).",
        many=True,
    ),
    JobOption(
        "allow_private",
        "--allow-private",
        "Let the proxy reach this loopback, private or link-local range, e.g. 10.20.0.0/16 "
        "(repeat; never from a --file spec).",
        many=True,
    ),
    JobOption(
        "cap_add",
        "--cap-add",
        "Give the steps this capability, e.g. NET_RAW (repeat; grants it to a --file spec).",
        many=True,
    ),
    JobOption("runtime", "--runtime", "OCI runtime the engine knows, e.g. runsc (gVisor)."),
    JobOption(
        "secrets",
        "--secret",
        "Pass this variable of logist's environment to the steps, read when each step "
        "starts, never stored, masked as *** in their output (repeat; grants a --file "
        "spec's secrets: name).",
        many=True,
    ),
    JobOption("user", "--user", "UID:GID or root (default: yours)."),
    JobOption("pull", "--pull", "missing, always or never."),
    JobOption("cleanup", "--cleanup", "always, on-success or never."),
)
SPEC_KEYS = frozenset({"id", "resources", *(o.key for o in JOB_OPTIONS)})
"""Every key a spec (a YAML file, the configuration's defaults, ``Runtime.create``) may have."""


def spec_of(values: dict[str, Any]) -> dict[str, Any]:
    """The spec keys of the command functions' option values (``--env`` items parsed)."""
    spec: dict[str, Any] = {}
    for o in JOB_OPTIONS:
        value = values.get(o.param)
        if o.many:
            value = list(value or []) or None
            if value is not None and o.key == "env":
                value = parse_env(value)
        spec[o.key] = value
    return spec


def parse_env(items: list[str]) -> dict[str, str]:
    """``--env K=V`` items as a map (the keys are checked with the spec).

    Raises:
        UsageError: an item without ``=``.
    """
    from logist.errors import UsageError

    env: dict[str, str] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            raise UsageError(f"invalid value for env: {item!r} (KEY=VALUE)")
        env[key] = val
    return env


def with_job_options(annotate: Callable[[JobOption], Any] | None = None):
    """A decorator: the function (``def f(..., **options)``) shows each job option as a
    keyword parameter defaulting to None, after its own, annotated by ``annotate`` (Typer's
    ``Annotated[..., Option]`` for the command line); ``options`` receives them."""

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func, eval_str=annotate is not None)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = [
            inspect.Parameter(
                o.param,
                inspect.Parameter.KEYWORD_ONLY
                if any(p.kind is p.KEYWORD_ONLY for p in own)
                else inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=annotate(o) if annotate else inspect.Parameter.empty,
            )
            for o in JOB_OPTIONS
        ]
        func.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        if annotate:
            func.__annotations__ = {
                **{p.name: p.annotation for p in own},
                **{p.name: p.annotation for p in added},
            }
        return func

    return decorate
