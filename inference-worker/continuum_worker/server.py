"""The worker's HTTP server: Open Inference Protocol v2, ``/metrics``, model control and ``/state``.

Paths follow KServe v2 / Triton: ``/v2/health/{live,ready}``, ``/v2``, ``/v2/models/{m}[/versions/{v}]``,
``.../ready``, ``.../infer``, and Triton's model-repository extension ``/v2/repository/index`` and
``/v2/repository/models/{m}/load`` (hot swap; needs the admin token). Errors are ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web, web_protocol
from prometheus_client import CONTENT_TYPE_LATEST

from continuum_worker import __version__
from continuum_worker.backends import auto_intra_op_threads, parse_backends
from continuum_worker.metrics import WorkerMetrics
from continuum_worker.models import LoadedModel, ModelError, load_model
from continuum_worker.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    RequestedOutput,
    encode_infer_response,
    parse_infer_request,
)
from continuum_worker.upstream import Upstream, UpstreamFailure

log = logging.getLogger("continuum.worker")
EXTENSIONS = ["binary_tensor_data", "model_repository"]
MAX_BODY = 256 * 1024 * 1024


@dataclass
class WorkerSettings:
    """Everything ``continuum-worker serve`` takes (docs/contracts.md lists the flags and variables)."""

    model_name: str
    model_uri: str
    model_version: str = "1"
    model_sha256: str | None = None
    backends: str | None = None
    fallback_model_uri: str | None = None
    host: str = "0.0.0.0"
    port: int = 8000
    upstream: str | None = None
    upstream_timeout_ms: float = 50.0
    max_batch_size: int = 0
    max_queue_delay_us: int = 500
    model_cache_dir: Path = Path("/tmp/continuum-models")
    state_dir: Path | None = None
    state_token: str | None = None
    sync_to: list[str] = field(default_factory=list)
    sync_peers: list[str] = field(default_factory=list)
    state_retention: int = 1000
    event_threshold: float = 0.9
    replica_id: str | None = None
    admin_token: str | None = None
    threads: int = 2  # executor threads for model loads and heavier models
    intra_op_threads: int = 0  # onnxruntime threads per run; 0: usable CPUs / executor threads
    drain_seconds: float = 25.0


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.choices = parse_backends(settings.backends)
        self.metrics = WorkerMetrics()
        self.executor = ThreadPoolExecutor(max(1, settings.threads), thread_name_prefix="infer")
        self.model: LoadedModel | None = None
        self.loading = asyncio.Lock()
        self.draining = False
        self.in_flight = 0
        self.upstream = (
            Upstream(settings.upstream, settings.upstream_timeout_ms) if settings.upstream else None
        )
        self.state: Any = None  # continuum_worker.state.worker_integration.StateHandle when state is on
        self.load_error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def load(self, uri: str, version: str, sha256: str | None) -> LoadedModel:
        """Load and warm ``version`` next to the serving one, then swap (no request fails)."""
        s = self.settings
        async with self.loading:
            try:
                model = await load_model(
                    s.model_name,
                    uri,
                    version,
                    self.choices,
                    s.model_cache_dir,
                    sha256,
                    s.max_batch_size,
                    s.max_queue_delay_us,
                    self.executor,
                    self.metrics.batch_hook(s.model_name, version),
                    s.intra_op_threads or auto_intra_op_threads(s.threads),
                )
            except ModelError:
                self.metrics.model_loads.labels(s.model_name, "failed").inc()
                raise
            old, self.model = self.model, model
            self.metrics.model_loads.labels(s.model_name, "loaded").inc()
            if old is not None:
                self.metrics.backend.remove(old.name, old.version, old.backend.kind, old.backend.device)
            self.metrics.backend.labels(
                model.name, model.version, model.backend.kind, model.backend.device
            ).set(1)
        if old is not None:
            asyncio.get_running_loop().create_task(old.retire())
        return model

    async def on_startup(self, app: web.Application) -> None:
        s = self.settings
        local_uri = s.fallback_model_uri if (s.upstream and s.fallback_model_uri) else s.model_uri
        try:
            await self.load(local_uri, s.model_version, None if local_uri != s.model_uri else s.model_sha256)
        except ModelError as exc:
            self.load_error = str(exc)
            log.error("model %s not loaded: %s", s.model_name, exc)
            raise
        if self.upstream is not None:
            self.metrics.upstream_up.labels(self.upstream.base_url).set(1)

    async def on_cleanup(self, app: web.Application) -> None:
        if self.upstream is not None:
            await self.upstream.close()
        if self.model is not None:
            await self.model.retire(timeout=self.settings.drain_seconds)
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.model is not None and self.model.ready and not self.draining

    # -- handlers ---------------------------------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def health_ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"name": "continuum-worker", "version": __version__, "extensions": EXTENSIONS}
        )

    def _model(self, request: web.Request) -> LoadedModel:
        name = request.match_info["model"]
        version = request.match_info.get("version")
        model = self.model
        if model is None or name != self.settings.model_name:
            raise _NotFound(
                f"unknown model '{name}'" if model is not None else f"model '{name}' is not loaded"
            )
        if version is not None and version != model.version:
            raise _NotFound(
                f"model '{name}' version '{version}' is not available (serving '{model.version}')"
            )
        return model

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            model = self._model(request)
        except _NotFound as exc:
            return _error(404, str(exc))
        return web.json_response(model.metadata())

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            model = self._model(request)
        except _NotFound as exc:
            return _error(404, str(exc))
        ok = model.ready and not self.draining
        return web.json_response({"name": model.name, "ready": ok}, status=200 if ok else 400)

    async def infer(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        self.in_flight += 1
        name = request.match_info["model"]
        model = self.model
        version = model.version if model is not None else request.match_info.get("version", "")
        stats = self.metrics.triton
        try:
            try:
                model = self._model(request)
            except _NotFound as exc:
                return _error(400, str(exc))
            try:
                body = await request.read()  # aiohttp has already undone Content-Encoding
            except web_protocol.RequestPayloadError as exc:
                raise ProtocolError(f"request body cannot be read: {exc}".replace("\n", " ")) from None
            if self.upstream is not None:
                forwarded = await self._offload(name, body, request)
                if forwarded is not None:
                    # the upstream's 4xx is the request's fault: pass it on, count it as Triton would
                    ok = forwarded.status < 400
                    stats.add("nv_inference_request_success" if ok else "nv_inference_request_failure", name, version)
                    stats.add(
                        "nv_inference_request_duration_us",
                        name,
                        version,
                        (time.perf_counter() - started) * 1e6,
                    )
                    return forwarded
            parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
            model.validate(parsed.inputs, parsed.datatypes)
            known = [o.name for o in model.outputs]
            wanted = parsed.outputs or [RequestedOutput(n, parsed.binary_default) for n in known]
            unknown = [o.name for o in wanted if o.name not in known]
            if unknown:
                raise ProtocolError(f"unknown output(s) {unknown} (outputs: {known})")
            compute_started = time.perf_counter()
            results, batched = await model.infer(parsed.inputs)
            if not batched:
                stats.add("nv_inference_exec_count", name, version)
                stats.add(
                    "nv_inference_compute_infer_duration_us",
                    name,
                    version,
                    (time.perf_counter() - compute_started) * 1e6,
                )
            payload, headers = encode_infer_response(name, model.version, parsed.id, results, wanted)
            rows = next(iter(parsed.inputs.values())).shape[0] if model.batchable else 1
            stats.add("nv_inference_request_success", name, version)
            stats.add("nv_inference_count", name, version, rows)
            stats.add(
                "nv_inference_request_duration_us", name, version, (time.perf_counter() - started) * 1e6
            )
            if self.state is not None:
                try:
                    self.state.record_inference(name, results)
                except Exception:  # the answer is computed: a state failure must not turn it into an error
                    log.exception("recording the inference of model %s in the state failed", name)
            return web.Response(body=payload, headers=headers)
        except ProtocolError as exc:
            stats.add("nv_inference_request_failure", name, version)
            return _error(400, str(exc))
        except Exception as exc:  # a backend failure must never take the server down
            log.exception("inference failed for model %s", name)
            stats.add("nv_inference_request_failure", name, version)
            return _error(500, f"inference failed: {exc}")
        finally:
            self.in_flight -= 1

    async def _offload(self, name: str, body: bytes, request: web.Request) -> web.Response | None:
        assert self.upstream is not None
        up = self.upstream
        try:
            answer = await up.forward(f"/v2/models/{name}/infer", body, request.headers)
        except UpstreamFailure as exc:
            self.metrics.fallbacks.labels(name, exc.reason).inc()
            self.metrics.upstream_up.labels(up.base_url).set(1 if up.up else 0)
            return None
        self.metrics.upstream_up.labels(up.base_url).set(1)
        self.metrics.offloaded.labels(name).inc()
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def repository_index(self, request: web.Request) -> web.Response:
        model = self.model
        entries = []
        if model is not None:
            entries.append(
                {"name": model.name, "version": model.version, "state": "READY" if model.ready else "LOADING"}
            )
        return web.json_response(entries)

    async def repository_load(self, request: web.Request) -> web.Response:
        token = self.settings.admin_token
        if not token:
            return _error(403, "model control is off: start the worker with --admin-token")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _error(401, "missing or wrong bearer token")
        name = request.match_info["model"]
        if name != self.settings.model_name:
            return _error(400, f"this worker serves model '{self.settings.model_name}', not '{name}'")
        try:
            raw = await request.read()
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            return _error(400, f"request is not valid JSON: {exc}")
        params = (body.get("parameters") or {}) if isinstance(body, dict) else {}
        uri = params.get("uri") or self.settings.model_uri
        version = str(params.get("version") or self.settings.model_version)
        try:
            await self.load(str(uri), version, params.get("sha256"))
        except ModelError as exc:
            return _error(400, f"loading {uri} failed, still serving the previous version: {exc}")
        return web.json_response({"name": name, "version": version, "ready": True})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        if self.upstream is not None:
            self.metrics.upstream_up.labels(self.upstream.base_url).set(1 if self.upstream.up else 0)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _NotFound(Exception):
    pass


class ConfigError(RuntimeError):
    """The configuration cannot work on this installation (the CLI exits 2 with the message)."""


def is_own_url(url: str, replica_id: str | None) -> bool:
    """Whether ``url`` is this replica's own pod address (``http://<pod>.<service>...`` or ``http://<pod>``):
    a replica never syncs with itself. ``pod-1`` is not ``pod-10``."""
    if not replica_id:
        return False
    host = urllib.parse.urlsplit(url if "//" in url else f"//{url}").hostname or ""
    return host == replica_id.lower() or host.startswith(replica_id.lower() + ".")


def create_app(settings: WorkerSettings) -> tuple[web.Application, Worker]:
    worker = Worker(settings)
    app = web.Application(client_max_size=MAX_BODY)
    app["worker"] = worker
    r = app.router
    r.add_get("/v2/health/live", worker.live)
    r.add_get("/v2/health/ready", worker.health_ready)
    r.add_get("/v2", worker.server_metadata)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, worker.model_metadata)
        r.add_get(prefix + "/ready", worker.model_ready)
        r.add_post(prefix + "/infer", worker.infer)
    r.add_post("/v2/repository/index", worker.repository_index)
    r.add_post("/v2/repository/models/{model}/load", worker.repository_load)
    r.add_get("/metrics", worker.metrics_endpoint)
    app.on_startup.append(worker.on_startup)
    if settings.state_dir is not None:
        try:
            from continuum_worker.state.worker_integration import StateSettings, attach
        except ImportError as exc:  # e.g. an image built without pycrdt
            raise ConfigError(f"--state-dir needs the state library (continuum_worker.state): {exc}") from exc

        peers = [p for p in settings.sync_peers if not is_own_url(p, settings.replica_id)]
        worker.state = attach(
            app,
            StateSettings(
                state_dir=settings.state_dir,
                token=settings.state_token,
                sync_to=settings.sync_to,
                peers=peers,
                retention=settings.state_retention,
                event_threshold=settings.event_threshold,
                metrics_registry=worker.metrics.registry,
            ),
        )
    app.on_cleanup.append(worker.on_cleanup)
    return app, worker


async def serve(settings: WorkerSettings, sock: socket.socket | None = None, ready: Any = None) -> None:
    """Run until SIGTERM/SIGINT; then readiness turns false, in-flight requests finish, and it stops."""
    app, worker = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = (
        web.SockSite(runner, sock)
        if sock is not None
        else web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    )
    await site.start()
    log.info("serving model %s on %s", settings.model_name, site.name)
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
    worker.draining = True  # readiness fails: the endpoints controller stops sending traffic
    deadline = time.monotonic() + settings.drain_seconds
    while worker.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    log.info("drained (%d requests left); stopping", worker.in_flight)
    await runner.cleanup()
