"""A work queue of object keys, as in client-go's workqueue: what the reconcile workers pull from.

* A key is queued at most once; adding it while it is queued is a no-op (events coalesce).
* A key is never processed by two workers at once: added while being processed, it is queued again
  when that worker is done (so the newest state is always reconciled) — unless what was seen meanwhile
  is only the echo of that pass's own writes: a watch event names its ``resourceVersion``
  (``add(..., version=)``), the pass names the ones its writes produced (:meth:`wrote`), and a pass whose
  events were all its own is not repeated. (Against a fast server the watch event of a write often
  arrives before the write's answer, while the pass still runs.)
* Two lanes: ``urgent`` keys (new objects, spec changes) are served before routine ones (readiness
  refreshes, resyncs), so a burst of status updates never delays the first Deployment of a new workload.
* Delayed adds (deadlines such as the end of a grace period) and per-key exponential backoff for
  failures; :meth:`forget` resets the backoff after a success.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Hashable


class WorkQueue:
    def __init__(self, base_delay: float = 0.25, max_delay: float = 60.0) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._lanes: tuple[collections.deque[Hashable], collections.deque[Hashable]] = (
            collections.deque(),
            collections.deque(),
        )
        self._queued: dict[Hashable, int] = {}  # key -> lane (0 urgent, 1 routine)
        self._processing: set[Hashable] = set()
        self._dirty: dict[Hashable, int] = {}  # added while processing -> lane to requeue into
        self._seen: dict[Hashable, dict[str, int]] = {}  # processing: watch events' versions -> lane
        self._written: dict[Hashable, set[str]] = {}  # processing: versions its own writes produced
        self._timers: dict[Hashable, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[Hashable, int] = {}
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def pending(self) -> int:
        """Queued plus delayed keys (for metrics and tests)."""
        return len(self._queued) + len(self._timers)

    def add(self, key: Hashable, urgent: bool = False, version: str | None = None) -> None:
        """Queue ``key``; ``version``: the resourceVersion of the watch event that asks for it."""
        lane = 0 if urgent else 1
        if self._closed:
            return
        if key in self._processing:
            if version:  # decided when the pass is done: was it the echo of its own write?
                seen = self._seen.setdefault(key, {})
                seen[version] = min(lane, seen.get(version, 1))
            else:
                self._dirty[key] = min(lane, self._dirty.get(key, 1))
            return
        queued = self._queued.get(key)
        if queued is not None and queued <= lane:
            return
        # New, or promoted to the urgent lane (the stale routine entry is skipped when popped).
        self._queued[key] = lane
        self._lanes[lane].append(key)
        self._wakeup.set()

    def add_after(self, key: Hashable, delay: float, urgent: bool = False) -> None:
        """Add ``key`` after ``delay`` seconds; an earlier pending add of the same key wins."""
        if delay <= 0:
            self.add(key, urgent)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.add(key, urgent)

        self._timers[key] = (when, loop.call_at(when, fire))

    def retry(self, key: Hashable) -> float:
        """Requeue a failed key with exponential backoff; returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self.base_delay * (2**failures), self.max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> Hashable:
        """The next key to process (urgent lane first); it counts as processing until :meth:`done`."""
        while True:
            for lane_no, lane in enumerate(self._lanes):
                while lane:
                    key = lane.popleft()
                    if self._queued.get(key) != lane_no:
                        continue  # promoted to the other lane meanwhile
                    del self._queued[key]
                    self._processing.add(key)
                    return key
            if self._closed:
                raise asyncio.CancelledError("work queue closed")
            self._wakeup.clear()
            await self._wakeup.wait()

    def wrote(self, key: Hashable, version: str | None) -> None:
        """The pass processing ``key`` wrote an object; the server gave it ``version``."""
        if version and key in self._processing:
            self._written.setdefault(key, set()).add(version)

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        written = self._written.pop(key, set())
        for version, seen_lane in self._seen.pop(key, {}).items():
            if version not in written:  # someone else's change: reconcile again
                self._dirty[key] = min(seen_lane, self._dirty.get(key, 1))
        lane = self._dirty.pop(key, None)
        if lane is not None:
            self.add(key, urgent=lane == 0)

    def close(self) -> None:
        self._closed = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._wakeup.set()
