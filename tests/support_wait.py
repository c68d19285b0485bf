"""Waiting for a condition with a deadline: a test never sleeps for a fixed time to let
something happen."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def wait_until(cond: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Call ``cond`` until it returns something true or ``timeout`` seconds have passed; its
    last value (false when the time ran out: the caller says what that means)."""
    deadline = time.monotonic() + timeout
    while not (value := cond()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value


@contextlib.contextmanager
def ended(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """``proc``, killed and reaped on the way out when it still runs (a failed assertion
    inside never leaves a runner behind)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
