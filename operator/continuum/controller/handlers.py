"""kopf handlers. Each is a few lines: hand the object to the :class:`Controller`, retry API errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from continuum.api.models import GROUP, LABEL_WORKLOAD, VERSION
from continuum.controller import metrics
from continuum.controller.kube import ApiError, KubeApi
from continuum.controller.reconcile import Controller, plain

POOLS = (GROUP, VERSION, "edgenodepools")
WORKLOADS = (GROUP, VERSION, "edgeworkloads")


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    (kopf.warn if type_ == "Warning" else kopf.info)(plain(body), reason=reason, message=message)


RETRYABLE = (ApiError, aiohttp.ClientError, asyncio.TimeoutError)


def _retry(exc: Exception) -> kopf.TemporaryError:
    """API and network errors are retried with backoff, never turned into a status."""
    status = exc.status if isinstance(exc, ApiError) else 0
    metrics.API_ERRORS.labels(str(status) if status else "network").inc()
    delay = 5.0 if 400 <= status < 500 and status not in (409, 429) else 1.0
    return kopf.TemporaryError(f"API error, retrying: {exc}", delay=delay)


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Register every handler of the operator on ``registry``."""
    resync = controller.config.resync_seconds

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """kopf's credentials (service account, then kubeconfig) also serve our own client."""
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None and controller.api is None:
            controller.api = KubeApi.from_connection_info(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        if controller.api is not None:
            await controller.api.close()

    # -- caches, fed by watches --
    @kopf.on.event("", "v1", "nodes", registry=registry)
    def node_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller.observe("Node", type, body)

    @kopf.on.event("", "v1", "pods", registry=registry)
    def pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller.observe("Pod", type, body)

    for kind in ("deployments", "statefulsets"):

        @kopf.on.event("apps", "v1", kind, labels={LABEL_WORKLOAD: kopf.PRESENT}, registry=registry)
        def rendered_event(type: str | None, body: kopf.Body, **_: Any) -> None:
            controller.observe("Rendered", type, body)

    @kopf.on.event(*POOLS, registry=registry)
    def pool_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller.observe("EdgeNodePool", type, body)

    @kopf.on.event(*WORKLOADS, registry=registry)
    def workload_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller.observe("EdgeWorkload", type, body)

    # -- pools: level-triggered over all pools and nodes --
    @kopf.on.resume(*POOLS, registry=registry)
    @kopf.on.create(*POOLS, registry=registry)
    @kopf.on.update(*POOLS, registry=registry)
    @kopf.on.delete(*POOLS, optional=True, registry=registry)
    @kopf.timer(*POOLS, interval=resync, initial_delay=resync / 2, registry=registry)
    async def pools(**_: Any) -> None:
        try:
            await controller.reconcile_pools()
        except RETRYABLE as exc:
            raise _retry(exc) from exc

    # -- workloads: on every change of the spec, and periodically (grace, fail-back, readiness) --
    @kopf.on.resume(*WORKLOADS, registry=registry)
    @kopf.on.create(*WORKLOADS, registry=registry)
    @kopf.on.update(*WORKLOADS, field="spec", registry=registry)
    @kopf.timer(*WORKLOADS, interval=resync, initial_delay=resync, registry=registry)
    async def workload(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        raw = controller.cache.workloads.get((body.metadata.namespace, body.metadata.name))
        # the cache holds our own latest status write; the kopf body may predate it
        current = (
            raw
            if raw is not None and raw.get("metadata", {}).get("uid") == body.metadata.uid
            else plain(body)
        )
        try:
            summary = await controller.reconcile_workload(current)
        except RETRYABLE as exc:
            raise _retry(exc) from exc
        logger.debug("reconciled: %s", summary)
