"""HTTP endpoints (KServe v2 / Triton HTTP): thin handlers that decode, call the data plane, encode.

Every answer that is not a success is ``{"error": "..."}`` with Triton's status — unknown routes and
methods too (tritonclient parses every error body as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web, web_protocol
from prometheus_client import CONTENT_TYPE_LATEST

from continuum_worker.dataplane import DataPlane
from continuum_worker.errors import InvalidArgument, NotFound, ServerError
from continuum_worker.models import LoadedModel
from continuum_worker.protocol import HEADER_LENGTH, ProtocolError, encode_infer_response, parse_infer_request
from continuum_worker.repository import config_json
from continuum_worker.shm import CUDA_UNSUPPORTED

MAX_BODY = 256 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A response body shorter than this is sent as it is even when the client accepts gzip/deflate (as
# nginx's gzip_min_length): compressing a few hundred bytes of JSON costs CPU and saves next to nothing.
COMPRESS_MIN_BYTES = 1024


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as ``{"error": ...}``: the data plane's, and aiohttp's own 404/405/413 (text by default)."""
    try:
        return await handler(request)
    except ServerError as exc:
        return error(exc.http_status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return error(exc.status, exc.reason)


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"request is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request must be a JSON object")
    return body


def _version(request: web.Request) -> str | None:
    return request.match_info.get("version") or None


class RestEndpoints:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ok = self.plane.ready
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.model_metadata(request.match_info["model"], _version(request)))

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        self.plane.model(name, _version(request))  # unknown: 404 with Triton's message
        ok = self.plane.model_ready(name, _version(request))
        return web.json_response({"name": name, "ready": ok}, status=200 if ok else 400)

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response(config_json(self.plane.model_config(request.match_info["model"], _version(request))))

    async def model_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.statistics(request.match_info.get("model"), _version(request)))

    async def infer(self, request: web.Request) -> web.StreamResponse:
        plane = self.plane
        name, version = request.match_info["model"], _version(request)
        try:
            model = plane.model(name, version)
        except NotFound as exc:  # Triton: an unknown model on infer is a 400
            return error(400, exc.message)
        try:
            body = await request.read()  # aiohttp has already undone Content-Encoding
        except web_protocol.RequestPayloadError as exc:
            plane.stats.of(model.name, model.version).failure(0.0)
            return error(400, f"request body cannot be read: {exc}".replace("\n", " "))
        if plane.upstream is not None:
            forwarded = await plane.offload(name, body, request.headers)
            if forwarded is not None:
                return web.Response(status=forwarded.status, body=forwarded.body, headers=forwarded.headers)
        try:
            parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
        except ProtocolError as exc:
            plane.stats.of(model.name, model.version).failure(0.0)
            return error(400, str(exc))

        def encode(m: LoadedModel, results: Any, wanted: Any) -> tuple[bytes, dict[str, str]]:
            return encode_infer_response(name, m.version, parsed.id, results, wanted)

        try:
            payload, headers = await plane.infer(name, version, parsed, encode)
        except NotFound as exc:
            return error(400, exc.message)
        response = web.Response(body=payload, headers=headers)
        if len(payload) >= COMPRESS_MIN_BYTES and any(
            e in request.headers.get("Accept-Encoding", "") for e in ("gzip", "deflate")
        ):
            response.enable_compression()
        return response

    # -- repository --------------------------------------------------------------------------------
    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("'ready' must be true or false")
        return web.json_response(self.plane.repository_index(ready))

    async def repository_load(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be an object")
        name = request.match_info["model"]
        await self.plane.load(name, params, request.headers.get("Authorization"))
        model = self.plane.model(name)
        return web.json_response({"name": name, "version": model.version, "ready": True})

    async def repository_unload(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        params = body.get("parameters") or {}
        if not isinstance(params, dict) or sorted(set(params) - {"unload_dependents"}):
            raise InvalidArgument("unload takes only the parameter 'unload_dependents' (no model has dependents here)")
        await self.plane.unload(request.match_info["model"], request.headers.get("Authorization"))
        return web.json_response({})

    # -- shared memory -----------------------------------------------------------------------------
    async def shm_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.shm.status(request.match_info.get("region")))

    async def shm_register(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        key, offset, size = body.get("key"), body.get("offset", 0), body.get("byte_size")
        if not isinstance(key, str) or not isinstance(offset, int) or not isinstance(size, int):
            raise InvalidArgument("register needs 'key' (string), 'offset' and 'byte_size' (integers)")
        self.plane.shm.register(request.match_info["region"], key, offset, size)
        return web.json_response({})

    async def shm_unregister(self, request: web.Request) -> web.Response:
        self.plane.shm.unregister(request.match_info.get("region"))
        return web.json_response({})

    async def cuda_status(self, request: web.Request) -> web.Response:
        region = request.match_info.get("region")
        if region:
            raise NotFound(f"Unable to find cuda shared memory region: '{region}'")
        return web.json_response([])  # none can be registered

    async def cuda_register(self, request: web.Request) -> web.Response:
        raise InvalidArgument(CUDA_UNSUPPORTED)

    async def cuda_unregister(self, request: web.Request) -> web.Response:
        return web.json_response({})  # nothing is ever registered: unregistering succeeds

    async def drift(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.drift_view(request.match_info["model"], _version(request)))

    async def rollout(self, request: web.Request) -> web.Response:
        return web.json_response(self.plane.rollout_view(request.match_info["model"]))

    async def rollout_put(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            raise InvalidArgument(f"request is not valid JSON: {exc}") from None
        name = request.match_info["model"]
        return web.json_response(await self.plane.apply_rollout(name, body, request.headers.get("Authorization")))

    async def metrics(self, request: web.Request) -> web.Response:
        up = self.plane.upstream
        if up is not None:
            self.plane.metrics.upstream_up.labels(up.base_url).set(1 if up.up else 0)
        return web.Response(body=self.plane.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application, plane: DataPlane) -> RestEndpoints:
    ep = RestEndpoints(plane)
    r = app.router
    r.add_get("/v2/health/live", ep.live)
    r.add_get("/v2/health/ready", ep.ready)
    r.add_get("/v2", ep.server_metadata)
    r.add_get("/v2/models/stats", ep.model_stats)  # before /v2/models/{model}: not a model called "stats"
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, ep.model_metadata)
        r.add_get(prefix + "/ready", ep.model_ready)
        r.add_get(prefix + "/config", ep.model_config)
        r.add_get(prefix + "/stats", ep.model_stats)
        r.add_get(prefix + "/drift", ep.drift)
        r.add_post(prefix + "/infer", ep.infer)
    r.add_get("/v2/models/{model}/rollout", ep.rollout)  # docs/rollout-protocol.md
    r.add_put("/v2/models/{model}/rollout", ep.rollout_put)
    r.add_post("/v2/repository/index", ep.repository_index)
    r.add_post("/v2/repository/models/{model}/load", ep.repository_load)
    r.add_post("/v2/repository/models/{model}/unload", ep.repository_unload)
    shm = "/v2/systemsharedmemory"
    r.add_get(shm + "/status", ep.shm_status)
    r.add_get(shm + "/region/{region}/status", ep.shm_status)
    r.add_post(shm + "/region/{region}/register", ep.shm_register)
    r.add_post(shm + "/unregister", ep.shm_unregister)
    r.add_post(shm + "/region/{region}/unregister", ep.shm_unregister)
    cuda = "/v2/cudasharedmemory"
    r.add_get(cuda + "/status", ep.cuda_status)
    r.add_get(cuda + "/region/{region}/status", ep.cuda_status)
    r.add_post(cuda + "/region/{region}/register", ep.cuda_register)
    r.add_post(cuda + "/unregister", ep.cuda_unregister)
    r.add_post(cuda + "/region/{region}/unregister", ep.cuda_unregister)
    r.add_get("/metrics", ep.metrics)
    return ep


def create_rest_app(plane: DataPlane) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    add_routes(app, plane)
    return app
