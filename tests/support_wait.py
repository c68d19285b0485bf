"""Waiting for a condition with a deadline: a test never sleeps for a fixed time to let
something happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(cond: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Call ``cond`` until it returns something true or ``timeout`` seconds have passed; its
    last value (false when the time ran out: the caller says what that means)."""
    deadline = time.monotonic() + timeout
    while not (value := cond()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value
