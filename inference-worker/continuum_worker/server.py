"""The worker process: the data plane, its HTTP endpoints (and ``/state``), its gRPC service, and the
lifecycle (start, SIGTERM drain, stop). The logic lives in ``dataplane.py``; ``rest.py`` and
``grpc_server.py`` are thin transports over it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
import urllib.parse
from typing import Any

from aiohttp import web

from continuum_worker.dataplane import DataPlane
from continuum_worker.models import ModelError
from continuum_worker.rest import create_rest_app
from continuum_worker.settings import WorkerSettings

log = logging.getLogger("continuum.worker")

__all__ = ["ConfigError", "WorkerSettings", "create_app", "is_own_url", "serve"]


INGEST_ONLY = ("publish", "ingest_filter", "ingest_summary_secs", "ingest_max_in_flight", "ingest_publish_after",
               "outbox_dir", "outbox_max_messages", "outbox_max_bytes", "outbox_full_policy", "mqtt_client_id")


class ConfigError(RuntimeError):
    """The configuration cannot work on this installation (the CLI exits 2 with the message)."""


def is_own_url(url: str, replica_id: str | None) -> bool:
    """Whether ``url`` is this replica's own pod address (``http://<pod>.<service>...`` or ``http://<pod>``):
    a replica never syncs with itself. ``pod-1`` is not ``pod-10``."""
    if not replica_id:
        return False
    host = urllib.parse.urlsplit(url if "//" in url else f"//{url}").hostname or ""
    return host == replica_id.lower() or host.startswith(replica_id.lower() + ".")


def create_app(settings: WorkerSettings) -> tuple[web.Application, DataPlane]:
    plane = DataPlane(settings)
    app = create_rest_app(plane)
    app["plane"] = plane

    async def start(app: web.Application) -> None:
        try:
            await plane.start()
        except ModelError as exc:
            log.error("not started: %s", exc)
            raise

    async def stop(app: web.Application) -> None:
        await plane.stop()

    app.on_startup.append(start)
    if settings.state_dir is not None:
        try:
            from continuum_worker.state.worker_integration import StateSettings, attach
        except ImportError as exc:  # e.g. an image built without pycrdt
            raise ConfigError(f"--state-dir needs the state library (continuum_worker.state): {exc}") from exc

        peers = [p for p in settings.sync_peers if not is_own_url(p, settings.replica_id)]
        plane.recorder = attach(
            app,
            StateSettings(
                state_dir=settings.state_dir,
                token=settings.state_token,
                sync_to=settings.sync_to,
                peers=peers,
                retention=settings.state_retention,
                event_threshold=settings.event_threshold,
                metrics_registry=plane.metrics.registry,
            ),
        )
        if plane.drift is not None:  # closed windows' summaries go upstream with the state's sync
            from continuum_worker.drift.upstream import StateSink

            plane.drift.sink = StateSink(plane.recorder, horizon_seconds=96 * settings.drift_upload_seconds)
    unused = [f"--{f.replace('_', '-')}" for f in INGEST_ONLY if f in settings.model_fields_set]
    if unused and not settings.ingest:
        raise ConfigError(f"{', '.join(unused)} need --ingest (nothing would read them)")
    if settings.ingest:
        from continuum_worker.ingest.service import IngestConfigError, attach_ingest

        try:
            app["ingest"] = attach_ingest(app, plane, settings)
        except (IngestConfigError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
    app.on_cleanup.append(stop)
    return app, plane


async def serve(
    settings: WorkerSettings, sock: socket.socket | None = None, ready: Any = None, freeze_heap: bool = False
) -> None:
    """Run until SIGTERM/SIGINT; then readiness turns false, in-flight requests finish, and it stops.
    ``freeze_heap``: the process is the worker's alone (``continuum-worker serve``), so what start-up built
    (modules, models, metrics), which lives as long as the process, is kept out of the cyclic GC's full
    passes (:func:`gc.freeze`); they otherwise stopped the loop for 20-50 ms now and then (at 1,000 msg/s)."""
    app, plane = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()  # runs the start-up hooks: the models are loaded and warmed
    if freeze_heap:
        gc.collect()
        gc.freeze()
    site = (
        web.SockSite(runner, sock)
        if sock is not None
        else web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    )
    await site.start()
    grpc_server = None
    if settings.grpc_port:
        from continuum_worker.grpc_server import start_grpc

        try:
            grpc_server = await start_grpc(plane, settings.host, settings.grpc_port)
        except RuntimeError as exc:
            await runner.cleanup()
            raise ConfigError(f"--grpc-port {settings.grpc_port}: {exc}") from exc
    log.info("serving on %s (gRPC port %s)", site.name, settings.grpc_port or "off")
    if ready is not None:
        ready(site)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    await stop.wait()
    plane.draining = True  # readiness fails: the endpoints controller stops sending traffic
    deadline = time.monotonic() + settings.drain_seconds
    while plane.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    log.info("drained (%d requests left); stopping", plane.in_flight)
    if grpc_server is not None:
        await grpc_server.stop(grace=1.0)
    await runner.cleanup()
