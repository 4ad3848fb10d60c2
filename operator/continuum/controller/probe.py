"""Asking every placed workload's worker for one view, the way kubelet probes ask a container.

The shared part of the state-sync probe (:mod:`state_health`) and the drift probe (:mod:`drift_health`):
every ``interval`` seconds the acting replica asks each target URL (at most ``concurrency`` at once), keeps
the answer in ``health``, forgets workloads that are gone, and requeues a workload only when what matters
of its answer changed. Subclasses say which URL, how to read the answer and what matters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import aiohttp
from prometheus_client import Counter

from continuum.controller.keys import WorkloadKey
from continuum.controller.settings import DEFAULT_WORKER_URL_TEMPLATE
from continuum.render.worker import service_name_for

log = logging.getLogger("continuum.operator")
S = TypeVar("S")


def worker_base_url(template: str, workload: str, namespace: str, port: int) -> str:
    """Where a workload's worker answers (its Service, by the operator's worker URL template)."""
    return template.format(service=service_name_for(workload), namespace=namespace, port=port).rstrip("/")


class WorkerProbe(Generic[S]):
    what = "workers"  # for the log line when a poll fails
    counter: Counter  # probes by result (ok, error, unreachable)

    def __init__(
        self,
        targets: Callable[[], list[Any]],
        health: MutableMapping[WorkloadKey, S],
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

    # -- what a subclass says --
    def url(self, key: WorkloadKey, base: str, *extra: Any) -> str:
        raise NotImplementedError

    def parse(self, payload: Any, observed_at: datetime) -> S:
        raise NotImplementedError

    def unreachable(self, observed_at: datetime, message: str) -> S:
        raise NotImplementedError

    def significant(self, status: S | None) -> Any:
        raise NotImplementedError

    # -- the probe --
    def targets(self) -> list[tuple[WorkloadKey, str]]:
        out = []
        for key, port, *extra in self._targets():
            base = worker_base_url(self.url_template, key.name, key.namespace, port)
            out.append((key, self.url(key, base, *extra)))
        return out

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        targets = self.targets()
        results = await asyncio.gather(*(self._ask(session, url) for _, url in targets))
        live = {key for key, _ in targets}
        for key in [k for k in self.health if k not in live]:
            del self.health[key]
        for (key, _), status in zip(targets, results, strict=True):
            changed = self.significant(self.health.get(key)) != self.significant(status)
            self.health[key] = status
            if changed:
                self.requeue(key)

    async def _ask(self, session: aiohttp.ClientSession, url: str) -> S:
        now = datetime.now(UTC)
        async with self.limit:
            try:
                async with session.get(url, timeout=self.timeout) as response:
                    if response.status != 200:
                        text = (await response.text())[:200]
                        self.counter.labels("error").inc()
                        return self.unreachable(now, f"HTTP {response.status}: {text}")
                    payload = await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                self.counter.labels("unreachable").inc()
                return self.unreachable(now, f"{type(exc).__name__}: {exc}"[:512])
        self.counter.labels("ok").inc()
        return self.parse(payload, now)

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
                    log.exception("polling the %s failed", self.what)
                await asyncio.sleep(self.interval)
