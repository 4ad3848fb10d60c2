"""Hybrid logical clock: wall milliseconds plus a logical counter, monotonic even if the wall clock steps back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Stamp = tuple[int, int]  # (wall ms, logical)


class HLC:
    def __init__(self, wall_ms: Callable[[], int] | None = None) -> None:
        self._wall = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._last: Stamp = (0, 0)
        self._lock = threading.Lock()

    @property
    def last(self) -> Stamp:
        return self._last

    def now(self, after: Stamp | None = None) -> Stamp:
        """A stamp later than every stamp issued or observed so far, and later than ``after``."""
        with self._lock:
            floor = max(self._last, after) if after is not None else self._last
            wall = self._wall()
            stamp = (wall, 0) if wall > floor[0] else (floor[0], floor[1] + 1)
            self._last = stamp
            return stamp

    def observe(self, stamp: Stamp) -> None:
        """Merge a stamp seen from another replica, so later local stamps order after it."""
        with self._lock:
            if stamp > self._last:
                self._last = (int(stamp[0]), int(stamp[1]))
