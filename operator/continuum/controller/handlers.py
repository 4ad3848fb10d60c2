"""kopf handlers: login, start-up and clean-up. kopf does what it is good at — credentials, peering,
the liveness probe. The watch streams are the operator's own (:mod:`continuum.controller.watch`: kopf's
per-event handler machinery cost more CPU than the reconciling itself) and feed the
:class:`Controller`'s cache and queue. The reconciling is done by a pool of workers pulling keys from a
work queue (:mod:`continuum.controller.queue`), so the operator writes nothing but what it decides: no
finalizers, no progress or last-handled annotations on the user's objects (decisions live in
``status``). API errors are retried per key with exponential backoff, never turned into a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import kopf

from continuum.controller import metrics
from continuum.controller.drift_health import DriftProbe
from continuum.controller.events import EventPoster
from continuum.controller.ingest_health import IngestProbe, ingest_targets
from continuum.controller.keys import QueueKey
from continuum.controller.kube import ApiError, KubeApi
from continuum.controller.leader import Leadership
from continuum.controller.manager import Controller
from continuum.controller.state_health import StateProbe
from continuum.controller.watch import Watches

RETRYABLE = (ApiError, aiohttp.ClientError, asyncio.TimeoutError, OSError)  # OSError: connections

log = logging.getLogger("continuum.operator")


def error_label(exc: BaseException) -> str:
    return str(exc.status) if isinstance(exc, ApiError) else "network"


def errors_seen(exc: BaseException) -> list[BaseException]:
    """``exc`` and the retryable errors it superseded: a pass whose concurrent writes failed together
    (a first placement's creates and its status) raises the last one, the others are its context."""
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while isinstance(seen, RETRYABLE) and seen not in out:
        out.append(seen)
        seen = seen.__context__
    return out


async def worker(controller: Controller, leadership: Leadership, number: int) -> None:
    """Pull keys and reconcile them; failures are retried per key with exponential backoff."""
    queue = controller.queue
    while True:
        await leadership.active.wait()
        key: QueueKey = await queue.get()  # type: ignore[assignment]  # the queue holds only QueueKeys
        if not leadership.active.is_set():  # lost the peering while waiting: leave the key queued
            queue.done(key)
            queue.add(key)
            continue
        try:
            again = await controller.process(key)
        except RETRYABLE as exc:
            for error in errors_seen(exc):
                metrics.API_ERRORS.labels(error_label(error)).inc()
            delay = queue.retry(key)
            log.info("API error on %s, retrying in %.2fs: %s", key, delay, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = queue.retry(key)
            log.exception("reconciling %s failed; retrying in %.2fs", key, delay)
        else:
            queue.forget(key)
            if again is not None:
                queue.add_after(key, again)
        finally:
            queue.done(key)
            metrics.QUEUE_DEPTH.set(queue.pending)


async def resync(controller: Controller, leadership: Leadership, interval: float) -> None:
    """Level-triggered safety net: every ``interval`` seconds, everything is reconciled with fresh decisions."""
    while True:
        await asyncio.sleep(interval)
        if leadership.active.is_set():
            controller.enqueue_all(resync=True)


def register(
    registry: kopf.OperatorRegistry,
    controller: Controller,
    leadership: Leadership,
    poster: EventPoster,
) -> None:
    """Register every handler of the operator on ``registry``."""
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """kopf's credentials (service account, then kubeconfig) also serve our own client."""
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None and controller.api is None:
            controller.api = KubeApi.from_connection_info(info)
            leadership.api = controller.api
            poster.api = controller.api
        return info

    @kopf.on.startup(registry=registry)
    async def start(**_: Any) -> None:
        tasks.append(asyncio.create_task(poster.run(controller.api_ready)))
        watches = Watches(controller.cache, controller.observe, controller.settings.namespaces)
        tasks.append(asyncio.create_task(watches.run(controller.api_ready, lambda: controller.api)))
        tasks.extend(
            asyncio.create_task(worker(controller, leadership, i)) for i in range(controller.settings.workers)
        )
        settings = controller.settings
        tasks.append(asyncio.create_task(resync(controller, leadership, settings.resync_seconds)))
        tasks.append(asyncio.create_task(leadership.run(controller.api_ready, controller.on_leadership)))
        probe = StateProbe(
            controller.state_targets,
            controller.state_health,
            controller.requeue,
            settings.worker_url_template,
            settings.state_poll_seconds,
        )
        tasks.append(asyncio.create_task(probe.run(leadership.active)))
        drift = DriftProbe(  # the workers' drift views, on the same period as their state sync health
            controller.drift_targets,
            controller.drift_health,
            controller.requeue,
            settings.worker_url_template,
            settings.state_poll_seconds,
        )
        tasks.append(asyncio.create_task(drift.run(leadership.active)))
        ingest = IngestProbe(  # streaming workloads' consumer lag (status.ingest), same period
            ingest_targets(controller.cache),
            controller.workloads.ingest_health,
            controller.requeue,
            settings.worker_url_template,
            settings.state_poll_seconds,
        )
        tasks.append(asyncio.create_task(ingest.run(leadership.active)))

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        controller.queue.close()
        with contextlib.suppress(Exception):
            await poster.drain()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if controller.api is not None:
            await controller.api.close()
