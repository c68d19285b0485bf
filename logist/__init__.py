"""logist: a container-backed isolation runtime for jobs that work on a git repository.

``logist.Runtime`` is the library (docs/api.md); the ``logist`` command is a thin layer over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from logist.errors import (
    CancelPending,
    CleanupIncomplete,
    EngineUnavailable,
    EnvironmentProblem,
    HarvestFailed,
    ImageMissing,
    JobActive,
    JobNotFound,
    LogistError,
    UsageError,
)

if TYPE_CHECKING:
    from logist.runtime import Runtime

__version__ = "0.1.0"
__all__ = [
    "CancelPending",
    "CleanupIncomplete",
    "EngineUnavailable",
    "EnvironmentProblem",
    "HarvestFailed",
    "ImageMissing",
    "JobActive",
    "JobNotFound",
    "LogistError",
    "Runtime",
    "UsageError",
]


def __getattr__(name: str) -> Any:
    if name == "Runtime":  # imported when first used: the command line's fast path skips it
        from logist.runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'logist' has no attribute {name!r}")
