"""The HTTP side of EdgeWorkloadSet rollouts: read and drive each site's worker over its rollout endpoint
(``GET``/``PUT /v2/models/{m}/rollout``, docs/rollout-protocol.md).

Workers are reached the way the state and drift probes reach them (:mod:`continuum.controller.probe`):
the worker URL template (``CONTINUUM_WORKER_URL_TEMPLATE``) filled with the child's Service name, its
namespace and the worker port. The decisions are :mod:`continuum.rollout.machine`'s; this module only
talks and parses.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from prometheus_client import Counter

from continuum.api.workloadset import Histogram, VersionCounters
from continuum.controller.probe import worker_base_url
from continuum.controller.settings import DEFAULT_WORKER_URL_TEMPLATE
from continuum.rollout.machine import Observation, Put, Reading, VersionDrift

log = logging.getLogger("continuum.operator")

ROLLOUT_CALLS = Counter(
    "continuum_rollout_worker_calls_total",
    "Rollout reads (GET) and changes (PUT) sent to workers, by result",
    ["method", "result"],
)


def parse_histogram(raw: Any) -> Histogram:
    """``[[le, cumulative_count], ..., ["+Inf", count]]`` → finite bounds, their counts, the total."""
    le: list[float] = []
    counts: list[int] = []
    total = 0
    for bound, count in raw or []:
        value = float(bound)
        if math.isinf(value):
            total = int(count)
        else:
            le.append(value)
            counts.append(int(count))
    if not total and counts:
        total = counts[-1]
    return Histogram(le=le, counts=counts, count=total)


def parse_reading(payload: Any) -> Observation:
    """A GET answer as a :class:`Reading`; a malformed answer is a reason (the site is deferred)."""
    if not isinstance(payload, Mapping):
        return "malformed rollout answer: not an object"
    try:
        versions = {
            str(v): VersionCounters(
                requests=int(c.get("requests", 0)),
                errors=int(c.get("errors", 0)),
                shadow_compared=int(c.get("shadow_compared", 0)),
                shadow_disagreed=int(c.get("shadow_disagreed", 0)),
                latency=parse_histogram(c.get("latency_seconds_buckets")),
            )
            for v, c in (payload.get("versions") or {}).items()
        }
        stable = payload.get("stable") or {}
        candidate = payload.get("candidate") or {}
        return Reading(
            mode=str(payload["mode"]),
            generation=str(payload.get("generation") or ""),
            instance=str(payload.get("instance") or ""),
            stable_version=str(stable["version"]) if stable.get("version") is not None else None,
            candidate_version=str(candidate["version"]) if candidate.get("version") is not None else None,
            versions=versions,
            weight=float(payload.get("weight") or 0.0),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"malformed rollout answer: {type(exc).__name__}: {exc}"[:300]


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def parse_drift_view(payload: Any) -> dict[str, VersionDrift] | str:
    """``versions`` of a worker's ``GET /v2/models/{m}/drift`` answer (docs/drift.md) per version; a
    malformed answer, or drift off on the worker (``{"error": ...}``), is a reason (no drift evidence)."""
    if not isinstance(payload, Mapping):
        return "malformed drift answer: not an object"
    if payload.get("error"):
        return f"drift: {payload['error']}"[:300]
    try:
        return {
            str(v): VersionDrift(
                status=str(e.get("status") or "open"),
                windows_closed=int(e.get("windows_closed") or 0),
                drifting=bool(e.get("drifting")),
                output_drifting=None if "output_drifting" not in e else bool(e["output_drifting"]),
                output_score=_number(e.get("output_score")),
                output_psi=_number(e.get("output_psi")),
            )
            for v, e in (payload.get("versions") or {}).items()
        }
    except (TypeError, ValueError, AttributeError) as exc:
        return f"malformed drift answer: {type(exc).__name__}: {exc}"[:300]


Target = tuple[str, str, int, str]  # child name, namespace, worker port, model name


class RolloutClient:
    """Reads and drives the workers of one set's sites (``targets``: site → :data:`Target`). A worker
    with state has a state token (the Secret the operator created for it): its PUTs carry it
    (``tokens``: site → token), as the protocol requires."""

    def __init__(
        self,
        url_template: str = DEFAULT_WORKER_URL_TEMPLATE,
        timeout: float = 3.0,
        put_timeout: float = 60.0,  # a PUT answers after the candidate is fetched, loaded and warmed
        concurrency: int = 16,
    ) -> None:
        self.url_template = url_template
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.put_timeout = aiohttp.ClientTimeout(total=put_timeout)
        self.concurrency = concurrency

    def url(self, child: str, namespace: str, port: int, model: str) -> str:
        return f"{worker_base_url(self.url_template, child, namespace, port)}/v2/models/{model}/rollout"

    async def read(self, targets: Mapping[str, Target], sites: list[str]) -> dict[str, Observation]:
        """Each site's rollout reading (``GET /v2/models/{m}/rollout``)."""
        return await self._get_all(targets, sites, "/rollout", parse_reading)

    async def read_drift(
        self, targets: Mapping[str, Target], sites: list[str]
    ) -> dict[str, dict[str, VersionDrift] | str]:
        """Each site's drift view per version (``GET /v2/models/{m}/drift``), for the drift gate."""
        return await self._get_all(targets, sites, "/drift", parse_drift_view)

    async def _get_all(
        self, targets: Mapping[str, Target], sites: list[str], suffix: str, parse: Callable[[Any], Any]
    ) -> dict[str, Any]:
        if not sites:
            return {}
        limit = asyncio.Semaphore(self.concurrency)
        async with aiohttp.ClientSession(timeout=self.timeout) as session:

            async def one(site: str) -> Any:
                if site not in targets:
                    return "no child"
                url = self.url(*targets[site]).removesuffix("/rollout") + suffix
                async with limit:
                    return await self._call(session, "GET", url, None, parse=parse)

            results = await asyncio.gather(*(one(s) for s in sites))
        return dict(zip(sites, results, strict=True))

    async def send(
        self, targets: Mapping[str, Target], puts: list[Put], tokens: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Send the PUTs; returns the error of each site whose worker refused or could not be reached."""
        if not puts:
            return {}
        limit = asyncio.Semaphore(self.concurrency)
        errors: dict[str, str] = {}
        async with aiohttp.ClientSession(timeout=self.put_timeout) as session:

            async def one(put: Put) -> None:
                if put.site not in targets:
                    errors[put.site] = "no child"
                    return
                async with limit:
                    token = (tokens or {}).get(put.site)
                    result = await self._call(session, "PUT", self.url(*targets[put.site]), put.body, token)
                if isinstance(result, str):
                    errors[put.site] = result

            await asyncio.gather(*(one(p) for p in puts))
        return errors

    async def _call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        token: str | None = None,
        parse: Callable[[Any], Any] = parse_reading,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            async with session.request(method, url, json=body, headers=headers) as response:
                if response.status != 200:
                    text = (await response.text())[:200]
                    ROLLOUT_CALLS.labels(method, "error").inc()
                    return f"HTTP {response.status}: {text}"
                payload = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            ROLLOUT_CALLS.labels(method, "unreachable").inc()
            return f"{type(exc).__name__}: {exc}"[:300]
        ROLLOUT_CALLS.labels(method, "ok").inc()
        return parse(payload)
