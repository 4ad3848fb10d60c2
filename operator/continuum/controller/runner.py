"""``continuum run``: configure kopf and run the operator until it is stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from dataclasses import dataclass
from typing import Any

import kopf

from continuum.controller.handlers import post_event, register
from continuum.controller.reconcile import Controller, OperatorConfig
from continuum.render.worker import DEFAULT_WORKER_IMAGE


@dataclass
class RunOptions:
    namespaces: list[str] | None = None  # None: every namespace
    metrics_port: int = 9090
    liveness_port: int = 8080
    peering: str | None = None  # None: standalone
    worker_image: str | None = None
    grace_seconds: float = 60.0
    stabilization_seconds: float = 300.0
    kubeconfig: str | None = None
    verbose: bool = False
    resync_seconds: float = 10.0


def configure(settings: kopf.OperatorSettings, options: RunOptions) -> None:
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.execution.max_workers = 8
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="continuum.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="continuum.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "continuum.dev/finalizer"
    settings.peering.standalone = options.peering is None
    if options.peering is not None:
        settings.peering.name = options.peering
        settings.peering.priority = random.randint(1, 1_000_000)  # distinct priorities: exactly one acts
        settings.peering.clusterwide = options.namespaces is None


async def operator(
    options: RunOptions, stop_flag: asyncio.Event | None = None, ready_flag: Any = None
) -> None:
    """Run the operator in the current event loop (what ``continuum run`` and the demo call)."""
    if options.kubeconfig:
        os.environ["KUBECONFIG"] = options.kubeconfig
    controller = Controller(
        OperatorConfig(
            worker_image=options.worker_image or DEFAULT_WORKER_IMAGE,
            grace_seconds=options.grace_seconds,
            stabilization_seconds=options.stabilization_seconds,
            resync_seconds=options.resync_seconds,
        ),
        post_event=post_event,
    )
    registry = kopf.OperatorRegistry()
    register(registry, controller)
    settings = kopf.OperatorSettings()
    configure(settings, options)
    if options.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(options.metrics_port)
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=options.peering is None,
            peering_name=options.peering,
            clusterwide=options.namespaces is None,
            namespaces=options.namespaces or (),
            liveness_endpoint=f"http://0.0.0.0:{options.liveness_port}/healthz"
            if options.liveness_port
            else None,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if controller.api is not None:
            await controller.api.close()


def run_operator(options: RunOptions) -> int:
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not options.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        asyncio.run(operator(options))
    except KeyboardInterrupt:
        return 0
    return 0


def run_in_thread(options: RunOptions) -> tuple[threading.Thread, Any]:
    """Start the operator in a background thread with its own loop; returns (thread, stop())."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def target() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(operator(options, stop_flag=stop))

    thread = threading.Thread(target=target, name="continuum-operator", daemon=True)
    thread.start()
    return thread, lambda: loop.call_soon_threadsafe(stop.set)
