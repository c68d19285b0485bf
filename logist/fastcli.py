"""A fast path for the hot commands (``job create``, ``job step``, ``job run``, ``job cancel``,
``job cleanup``, ``run``, ``job status``, ``job list``) written in their plain forms.

Typer coerces every parameter through a pydantic ``TypeAdapter``: importing pydantic and
building the adapters costs ~65 ms a command (measured: ``job step`` reaches the engine at
~150 ms through Typer, ~85 ms without). A command line made only of the options below, each
in its ``--name VALUE`` form, is parsed here and calls the same command function with the
same values Typer would give it. Anything else (``--help``, ``--opt=value``, ``--``, a value
that starts with ``-``, a number Typer would refuse, an unknown option) returns None and goes
to Typer, so its usage errors and messages stay the only ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from logist.options import JOB_OPTIONS

_INT = re.compile(r"[0-9]{1,9}")
_FLOAT = re.compile(r"[0-9]{1,9}(\.[0-9]{0,9})?")


def _at_least(low: int):
    def conv(text: str) -> int | None:
        return int(text) if _INT.fullmatch(text) and int(text) >= low else None

    return conv


def _non_negative_float(text: str) -> float | None:
    return float(text) if _FLOAT.fullmatch(text) else None


_SPEC_VALUES = {o.flag: o.param for o in JOB_OPTIONS if not o.many}
_SPEC_LISTS = {o.flag: o.param for o in JOB_OPTIONS if o.many}
# the value options of the commands that take a spec (`job create`, `run`)
_SPEC_FILE_VALUES = {
    "--file": ("file", Path),
    "-f": ("file", Path),
    **{k: (v, None) for k, v in _SPEC_VALUES.items()},
}

# command -> (positional: "none" | "one" | "many" | "optional", value options, list options,
# flags)
# A value option maps to (parameter, converter or None for a string).
_COMMANDS: dict[tuple[str, ...], tuple[str, dict, dict, dict]] = {
    ("job", "step"): ("one", {}, {}, {}),
    ("job", "status"): ("one", {}, {}, {"--json": "json_"}),
    ("job", "list"): ("none", {}, {}, {"--json": "json_"}),
    ("job", "run"): (
        "many",
        {"--parallel": ("parallel", _at_least(1))},
        {},
        {"--all": "all_", "--quiet": "quiet", "-q": "quiet"},
    ),
    ("job", "cancel"): (
        "one",
        {"--grace": ("grace", _at_least(0)), "--wait": ("wait", _non_negative_float)},
        {},
        {},
    ),
    ("job", "cleanup"): (
        "optional",
        {"--older-than": ("older_than", None)},
        {},
        {"--stale": "stale", "--force": "force", "--dry-run": "dry_run", "--json": "json_"},
    ),
    ("job", "create"): ("optional", _SPEC_FILE_VALUES, _SPEC_LISTS, {}),
    ("run",): ("optional", _SPEC_FILE_VALUES, _SPEC_LISTS, {"--quiet": "quiet", "-q": "quiet"}),
}
_POSITIONAL = {("job", "step"): "job_id", ("job", "cancel"): "job_id", ("job", "status"): "job_id"}
_POSITIONAL[("job", "list")] = ""
_POSITIONAL.update({("job", "run"): "job_ids", ("job", "cleanup"): "job_id", ("run",): "job_id"})
_POSITIONAL[("job", "create")] = "job_id"


def parse(argv: list[str]) -> tuple[str, str | None, dict[str, Any]] | None:
    """``(command, jobs_dir, keyword arguments)`` for a plain hot command line, else None.
    The keyword arguments are only those given: the function's defaults are Typer's."""
    args = list(argv)
    jobs_dir: str | None = None
    if args[:1] == ["--jobs-dir"]:
        if len(args) < 2 or args[1].startswith("-"):
            return None
        jobs_dir, args = args[1], args[2:]
    for words in _COMMANDS:
        if tuple(args[: len(words)]) == words:
            break
    else:
        return None
    arity, values, lists, flags = _COMMANDS[words]
    rest = args[len(words) :]
    kwargs: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("-"):
            positional.append(token)
        elif token in flags:
            if flags[token] in kwargs:
                return None
            kwargs[flags[token]] = True
        elif token in values or token in lists:
            if i + 1 >= len(rest) or rest[i + 1].startswith("-"):
                return None
            value = rest[i + 1]
            i += 1
            if token in lists:
                kwargs.setdefault(lists[token], []).append(value)
            else:
                name, conv = values[token]
                converted = conv(value) if conv is not None else value
                if name in kwargs or converted is None:
                    return None  # given twice, or a value Typer refuses (it says why)
                kwargs[name] = converted
        else:
            return None
        i += 1
    name = _POSITIONAL[words]
    if (arity == "one" and len(positional) != 1) or (arity == "none" and positional):
        return None
    if arity == "optional" and len(positional) > 1:
        return None
    if arity == "many":
        if positional:
            kwargs[name] = positional
    elif positional:
        kwargs[name] = positional[0]
    return " ".join(words), jobs_dir, kwargs
