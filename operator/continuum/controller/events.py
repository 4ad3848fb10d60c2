"""Kubernetes Events (``Placed``, ``Unschedulable``, ``Replaced``, ...) posted in the background.

A reconcile only enqueues an Event; one task posts them, so an Event never delays a decision, and a
failed post is retried a few times and then dropped (Events are best-effort in Kubernetes too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from continuum.controller import metrics
from continuum.controller.kube import ApiError, KubeApi

COMPONENT = "continuum-operator"
log = logging.getLogger("continuum.operator")


def build_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"  # cluster-scoped objects: events go to default
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name', 'object')}.{time.time_ns():x}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventPoster:
    def __init__(self, retries: int = 3, max_pending: int = 10_000) -> None:
        self.api: KubeApi | None = None
        self.retries = retries
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_pending)

    def __call__(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self._queue.put_nowait(build_event(obj, type_, reason, message))
        except asyncio.QueueFull:
            metrics.EVENTS_DROPPED.inc()

    async def run(self, api_ready: asyncio.Event) -> None:
        await api_ready.wait()
        while True:
            event = await self._queue.get()
            await self._post(event)

    async def _post(self, event: dict[str, Any]) -> None:
        assert self.api is not None
        for attempt in range(self.retries):
            try:
                await self.api.apply(event, create_only=True, read=False)
                return
            except asyncio.CancelledError:
                raise
            except (ApiError, OSError, Exception) as exc:  # best-effort, as Events are
                if attempt == self.retries - 1:
                    metrics.EVENTS_DROPPED.inc()
                    log.warning("dropped Event %s: %s", event["reason"], exc)
                    return
                await asyncio.sleep(0.2 * 2**attempt)

    async def drain(self, timeout: float = 2.0) -> None:
        """Post what is pending (on shutdown), for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline and self.api is not None:
            await self._post(self._queue.get_nowait())
