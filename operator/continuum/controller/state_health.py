"""Sync health of the workers' CRDT state, shown in ``EdgeWorkload.status.state``.

Every ``interval`` seconds the acting replica asks each placed, state-enabled workload's Service for
``GET /state/sync`` (docs/contracts.md) and keeps the answer. Only a change that matters (reachability,
pending updates, failures, peers, a newer sync time) queues the workload, so the status is not
rewritten on every poll. The URL comes from a template, so an operator running outside the cluster can
go through ``kubectl proxy``:
``http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from continuum.api.models import StateSyncStatus
from continuum.controller import metrics
from continuum.controller.keys import WorkloadKey
from continuum.controller.settings import DEFAULT_WORKER_URL_TEMPLATE
from continuum.render.worker import service_name_for

Targets = Callable[[], list[tuple[WorkloadKey, int]]]  # placed state-enabled workloads and their port
log = logging.getLogger("continuum.operator")


def parse_sync_report(payload: Any, observed_at: datetime) -> StateSyncStatus:
    """The worker's ``/state/sync`` answer as status; a malformed answer is reported, not raised."""
    if not isinstance(payload, Mapping):
        return StateSyncStatus(
            observed_at=observed_at, reachable=True, message="malformed /state/sync answer"
        )
    last = payload.get("last_sync_time")
    try:
        last_sync = datetime.fromtimestamp(float(last), UTC) if last is not None else None
        return StateSyncStatus(
            observed_at=observed_at,
            reachable=True,
            pending_updates=int(payload.get("pending_updates", 0)),
            last_sync_time=last_sync,
            sync_failures=int(payload.get("sync_failures", 0)),
            peers=int(payload.get("peers", 0)),
            message=str(payload["error"])[:512] if payload.get("error") else None,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        return StateSyncStatus(
            observed_at=observed_at, reachable=True, message=f"malformed /state/sync answer: {exc}"
        )


def significant(status: StateSyncStatus | None) -> tuple[Any, ...] | None:
    """What a status change must touch to be written (not the poll time)."""
    if status is None:
        return None
    return (
        status.reachable,
        status.pending_updates,
        status.last_sync_time,
        status.sync_failures,
        status.peers,
        status.message,
    )


class StateProbe:
    """Polls the workers; results land in ``health`` and a change that matters requeues the workload."""

    def __init__(
        self,
        targets: Targets,
        health: MutableMapping[WorkloadKey, StateSyncStatus],
        requeue: Callable[[WorkloadKey], None],
        url_template: str = DEFAULT_WORKER_URL_TEMPLATE,
        interval: float = 30.0,
        timeout: float = 3.0,
        concurrency: int = 8,
    ) -> None:
        self._targets = targets
        self.health = health
        self.requeue = requeue
        self.url_template = url_template
        self.interval = interval
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.limit = asyncio.Semaphore(concurrency)

    def targets(self) -> list[tuple[WorkloadKey, str]]:
        out = []
        for key, port in self._targets():
            url = self.url_template.format(
                service=service_name_for(key.name), namespace=key.namespace, port=port
            )
            out.append((key, url.rstrip("/") + "/state/sync"))
        return out

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        targets = self.targets()
        results = await asyncio.gather(*(self._ask(session, url) for _, url in targets))
        health = self.health
        live = {key for key, _ in targets}
        for key in [k for k in health if k not in live]:
            del health[key]
        for (key, _), status in zip(targets, results, strict=True):
            changed = significant(health.get(key)) != significant(status)
            health[key] = status
            if changed:
                self.requeue(key)

    async def _ask(self, session: aiohttp.ClientSession, url: str) -> StateSyncStatus:
        now = datetime.now(UTC)
        async with self.limit:
            try:
                async with session.get(url, timeout=self.timeout) as response:
                    if response.status != 200:
                        text = (await response.text())[:200]
                        metrics.STATE_PROBES.labels("error").inc()
                        return StateSyncStatus(
                            observed_at=now, reachable=False, message=f"HTTP {response.status}: {text}"
                        )
                    payload = await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                metrics.STATE_PROBES.labels("unreachable").inc()
                return StateSyncStatus(
                    observed_at=now, reachable=False, message=f"{type(exc).__name__}: {exc}"[:512]
                )
        metrics.STATE_PROBES.labels("ok").inc()
        return parse_sync_report(payload, now)

    async def run(self, active: asyncio.Event) -> None:
        """Poll every ``interval`` seconds while ``active`` (this replica acts)."""
        async with aiohttp.ClientSession() as session:
            while True:
                await active.wait()
                try:
                    await self.poll_once(session)
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let one bad poll end the probe
                    log.exception("polling the workers' state failed")
                await asyncio.sleep(self.interval)
