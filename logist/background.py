"""A function in a thread of its own, whose failure its waiter gets."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """``fn()`` in a thread of its own; ``wait`` joins it and raises what it raised."""

    def __init__(self, fn: Callable[[], None], name: str) -> None:
        self._fn = fn
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # handed to wait()
            self._failed = exc

    def join(self) -> None:
        self._thread.join()

    def wait(self) -> None:
        self.join()
        if self._failed is not None:
            raise self._failed
