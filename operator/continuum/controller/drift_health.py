"""Model drift of the workers, shown in ``EdgeWorkload.status.drift`` and the ``Drifting`` condition.

Like :mod:`continuum.controller.state_health`, every ``interval`` seconds the acting replica asks each
placed workload's Service, here ``GET /v2/models/{model}/drift`` (docs/drift.md), keeps the answer,
and queues the workload only when something that matters changed (reachability, drifting, the
window's status, the score moved by at least 0.01), so the status is not rewritten on every poll.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from continuum.api.models import DriftStatus
from continuum.controller import metrics
from continuum.controller.keys import WorkloadKey
from continuum.controller.settings import DEFAULT_WORKER_URL_TEMPLATE
from continuum.render.worker import service_name_for

DriftTargets = Callable[[], list[tuple[WorkloadKey, int, str]]]  # placed workloads, port, model name
log = logging.getLogger("continuum.operator")


def parse_drift_report(payload: Any, observed_at: datetime) -> DriftStatus:
    """The worker's drift view as status; a malformed answer is reported, not raised."""
    if not isinstance(payload, Mapping):
        return DriftStatus(observed_at=observed_at, reachable=True, message="malformed drift answer")
    last = payload.get("last") if isinstance(payload.get("last"), Mapping) else {}
    try:
        score = payload.get("score")
        features = [str(f) for f in (last.get("drifting_features") or [])[:5]]
        outputs = [str(o) for o in (last.get("drifting_outputs") or [])[:5]]
        return DriftStatus(
            observed_at=observed_at,
            reachable=True,
            score=None if score is None else round(float(score), 4),
            drifting=bool(payload.get("drifting")),
            samples=int(last.get("samples") or 0),
            window_status=str(last["status"]) if last.get("status") else None,
            features=features + outputs,
            version=str(payload["version"]) if payload.get("version") is not None else None,
            message=str(payload["reference_error"])[:512] if payload.get("reference_error") else None,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        return DriftStatus(
            observed_at=observed_at, reachable=True, message=f"malformed drift answer: {exc}"[:512]
        )


def significant(status: DriftStatus | None) -> tuple[Any, ...] | None:
    if status is None:
        return None
    score = None if status.score is None else round(status.score, 2)
    return (status.reachable, status.drifting, status.window_status, score, status.message, status.version)


class DriftProbe:
    """Polls the workers' drift views; results land in ``health``, a change that matters requeues."""

    def __init__(
        self,
        targets: DriftTargets,
        health: MutableMapping[WorkloadKey, DriftStatus],
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
        for key, port, model in self._targets():
            base = self.url_template.format(
                service=service_name_for(key.name), namespace=key.namespace, port=port
            )
            out.append((key, f"{base.rstrip('/')}/v2/models/{urllib.parse.quote(model, safe='')}/drift"))
        return out

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        targets = self.targets()
        results = await asyncio.gather(*(self._ask(session, url) for _, url in targets))
        live = {key for key, _ in targets}
        for key in [k for k in self.health if k not in live]:
            del self.health[key]
        for (key, _), status in zip(targets, results, strict=True):
            changed = significant(self.health.get(key)) != significant(status)
            self.health[key] = status
            if changed:
                self.requeue(key)

    async def _ask(self, session: aiohttp.ClientSession, url: str) -> DriftStatus:
        now = datetime.now(UTC)
        async with self.limit:
            try:
                async with session.get(url, timeout=self.timeout) as response:
                    if response.status != 200:
                        text = (await response.text())[:200]
                        metrics.DRIFT_PROBES.labels("error").inc()
                        return DriftStatus(
                            observed_at=now, reachable=False, message=f"HTTP {response.status}: {text}"
                        )
                    payload = await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                metrics.DRIFT_PROBES.labels("unreachable").inc()
                return DriftStatus(
                    observed_at=now, reachable=False, message=f"{type(exc).__name__}: {exc}"[:512]
                )
        metrics.DRIFT_PROBES.labels("ok").inc()
        return parse_drift_report(payload, now)

    async def run(self, active: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await active.wait()
                try:
                    await self.poll_once(session)
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let one bad poll end the probe
                    log.exception("polling the workers' drift failed")
                await asyncio.sleep(self.interval)
