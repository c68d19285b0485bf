"""Bounds on untrusted inputs (contract v3, "Bounds"): sizes, counts, memory and deadlines.

The operator's configuration (``logist/config.py``) may change each; a job records the bounds
it was created under (``Job.bounds``), so every process that runs or cleans it applies the same.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from logist.errors import UsageError

MIB = 1 << 20
GIB = 1 << 30
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}


@dataclass(frozen=True)
class Bounds:
    """Every bound, with the contract's defaults."""

    max_object_size: int = 100 * MIB  # one git object from a step, expanded
    max_tree_paths: int = 1_000_000  # paths in one commit's tree, repeated trees counted each time
    max_result_size: int = GIB  # one harvest's bundle
    log_limit: int = 64 * MIB  # bytes of one step's stored log
    git_memory: int = 2 * GIB  # address space of a host git process over untrusted data
    git_deadline: float = 600.0  # seconds such a process may take
    helper_memory: int = 2 * GIB  # the harvest helper's memory limit

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Bounds:
        """Bounds from a manifest or a configuration: sizes as numbers or ``512m``-like text;
        unknown keys refused (exit 2) naming the key."""
        if not data:
            return cls()
        names = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                raise UsageError(f"unknown bound {key!r} (known: {', '.join(sorted(names))})")
            if key == "git_deadline":
                values[key] = _positive_float(key, value)
            else:
                values[key] = parse_size(value, key)
        return cls(**values)


def parse_size(value: Any, key: str = "size") -> int:
    """``1048576``, ``512k``, ``100m``, ``1g``, ``1GiB`` -> bytes (> 0); exit 2 otherwise."""
    if isinstance(value, bool):
        raise UsageError(f"invalid value for {key}: {value!r} (a size such as 100m or 1g)")
    if isinstance(value, int) and value > 0:
        return value
    m = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m:
        raise UsageError(f"invalid value for {key}: {value!r} (a size such as 100m or 1g)")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size <= 0:
        raise UsageError(f"invalid value for {key}: {value!r} (must be greater than 0)")
    return size


def _positive_float(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"invalid value for {key}: {value!r} (a number of seconds)") from None
    if isinstance(value, bool) or not number > 0 or number == float("inf"):
        raise UsageError(f"invalid value for {key}: {value!r} (a positive number of seconds)")
    return number


def size_text(n: int) -> str:
    """``n`` bytes for a person: ``1.5 GiB``, ``100.0 MiB``, ``12 bytes``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
