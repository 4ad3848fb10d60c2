"""``continuum run``: configure kopf and run the operator until it is stopped."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import threading
from typing import Any

import kopf

from continuum.controller.events import EventPoster
from continuum.controller.handlers import register
from continuum.controller.leader import Leadership, own_identity
from continuum.controller.manager import Controller
from continuum.controller.settings import OperatorSettings


class WatchOnlyDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection, turned off: the operator registers only event handlers (no
    on.create/update), keeps its decisions in status and needs no last-handled copy of each object.
    kopf still computes a diff on every event; this makes that diff empty and free (no deep copies)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class NoProgress(kopf.ProgressStorage):
    """No handler progress to keep (no change handlers): nothing is written to the user's objects."""

    def fetch(self, *, key: Any, body: kopf.Body) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


def configure(settings: kopf.OperatorSettings, options: OperatorSettings) -> None:
    # Only Events the operator posts itself (Placed, Replaced, ...), not kopf's own log lines.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.execution.max_workers = 4  # the handlers are async; this is for kopf's own sync work
    settings.persistence.diffbase_storage = WatchOnlyDiffBase()
    settings.persistence.progress_storage = NoProgress()
    settings.peering.standalone = options.peering is None
    if options.peering is not None:
        settings.peering.name = options.peering
        settings.peering.clusterwide = options.namespaces is None


GC_THRESHOLDS = (50_000, 20, 20)  # young objects between collections (default 700), then gen1/gen2 ratios


async def settle_heap(primed: asyncio.Event) -> None:
    """Once the caches hold the cluster, move what is alive out of the collector's sight (:func:`gc.freeze`):
    the caches are large and almost free of cycles (plain dicts from JSON), and full collections kept
    walking them (bench/reconcile.py: ~15 % of the operator's CPU with the default thresholds)."""
    await primed.wait()
    gc.collect()
    gc.freeze()


async def operator(
    options: OperatorSettings,
    kubeconfig: str | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: Any = None,
    tune_gc: bool = False,
) -> None:
    """Run the operator in the current event loop (what ``continuum run`` and the demo call); ``tune_gc``:
    the process is the operator's alone (``continuum run``), so tune its garbage collector for it."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    poster = EventPoster()
    controller = Controller(options, post_event=poster)
    identity = own_identity()
    priority = random.randint(1, 1_000_000)  # distinct priorities: exactly one replica acts
    leadership = Leadership(options.peering, identity, priority, options.namespaces)
    registry = kopf.OperatorRegistry()
    register(registry, controller, leadership, poster)
    settings = kopf.OperatorSettings()
    configure(settings, options)
    if options.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(options.metrics_port)
    settling = None
    if tune_gc:
        gc.set_threshold(*GC_THRESHOLDS)
        settling = asyncio.create_task(settle_heap(controller.cache.primed))
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=options.peering is None,
            peering_name=options.peering,
            identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            priority=priority if options.peering is not None else None,
            clusterwide=options.namespaces is None,
            namespaces=options.namespaces or (),
            liveness_endpoint=f"http://0.0.0.0:{options.liveness_port}/healthz"
            if options.liveness_port
            else None,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if settling is not None:
            settling.cancel()
        if controller.api is not None:
            await controller.api.close()


def run_operator(options: OperatorSettings, kubeconfig: str | None = None, verbose: bool = False) -> int:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        asyncio.run(operator(options, kubeconfig, tune_gc=True))
    except KeyboardInterrupt:
        return 0
    return 0


def run_in_thread(options: OperatorSettings, kubeconfig: str | None = None) -> tuple[threading.Thread, Any]:
    """Start the operator in a background thread with its own loop; returns (thread, stop())."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def target() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(operator(options, kubeconfig, stop_flag=stop))

    thread = threading.Thread(target=target, name="continuum-operator", daemon=True)
    thread.start()
    return thread, lambda: loop.call_soon_threadsafe(stop.set)
