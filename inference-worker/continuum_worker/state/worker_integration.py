"""The state library inside the worker: ``attach(app, settings) -> StateHandle`` (docs/contracts.md).

Routes (the token, when configured, guards every one except ``GET /state/sync``):

* ``GET /state``: the whole state as JSON; ``GET /state/sync``: sync health for the operator;
  ``GET /state/stats``: store and edge-filtering figures.
* ``POST /state/counters/{name}`` ``{"by": n}``, ``POST /state/events/{log}`` (a JSON event),
  ``PUT /state/registers/{name}`` ``{"value": ...}``: each answers 200 only once the update is durable.
* ``POST /sync/{doc}/handshake`` and ``POST /sync/{doc}/update`` (see ``sync.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry

from .compaction import build_snapshot
from .doc import StateDoc
from .metrics import StateMetrics
from .store import Store, StoreError, StoreWriteError
from .sync import ACKED_KEY, SyncService, check_token, read_capped

log = logging.getLogger(__name__)

MAX_WRITE_BYTES = 256 * 1024
MAX_EVENTS_PER_INFERENCE = 64


@dataclass
class StateSettings:
    state_dir: str | Path
    token: str | None = None
    sync_to: list[str] | str | None = None  # upstream URL(s)
    peers: list[str] = field(default_factory=list)
    retention: int = 1000  # events kept per log
    event_threshold: float = 0.9
    metrics_registry: CollectorRegistry | None = None
    doc_id: str = "state"
    commit_window: float = 0.002  # group commit: writes arriving within it share one fsync
    compact_bytes: int = 8 * 1024 * 1024  # compact when the uncovered log exceeds this
    sync_interval: float = 5.0
    min_backoff: float = 0.2
    max_backoff: float = 30.0
    max_message_bytes: int = 32 * 1024 * 1024
    request_timeout: float = 10.0

    def upstream_list(self) -> list[str]:
        if not self.sync_to:
            return []
        if isinstance(self.sync_to, str):
            return [u.strip() for u in self.sync_to.split(",") if u.strip()]
        return [u for u in self.sync_to if u]


class StateHandle:
    def __init__(self, settings: StateSettings) -> None:
        self.settings = settings
        self.metrics = StateMetrics(settings.metrics_registry)
        self.state = StateDoc(retention=settings.retention)
        self.store = Store(settings.state_dir, commit_window=settings.commit_window, on_commit=self._on_commit)
        self.sync = SyncService(
            self.state,
            doc_id=settings.doc_id,
            token=settings.token,
            upstreams=settings.upstream_list(),
            peers=list(settings.peers),
            durable=self.durable,
            last_seq=lambda: self.store.last_seq,
            save_acked=self._save_acked,
            metrics=self.metrics,
            max_message_bytes=settings.max_message_bytes,
            interval=settings.sync_interval,
            min_backoff=settings.min_backoff,
            max_backoff=settings.max_backoff,
            request_timeout=settings.request_timeout,
        )
        self.raw_result_bytes = 0
        self.opened = False
        self._compacting = False
        self.metrics.bind(
            log_bytes=lambda: self.store.log_bytes,
            snapshot_bytes=lambda: self.store.snapshot_bytes,
            pending=self.sync.pending,
            bytes_saved=lambda: self.bytes_saved()["bytes_saved"],
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        with self.state.bulk_load():
            report = self.store.open(self.state.load)
        if report.damage:
            log.warning("state recovery in %s: %s", self.settings.state_dir, "; ".join(report.damage))
        self.metrics.recovery_seconds.set(report.seconds)
        self.metrics.recovery_dropped.set(report.dropped)
        self.state.observe_clock()
        acked = self.store.meta.get(ACKED_KEY, 0)
        for target in self.sync.upstreams:
            target.acked_seq = acked
        self.state.on_update(self._persist)
        self.opened = True
        await self.sync.start()

    async def close(self) -> None:
        await self.sync.close()
        if self.opened:
            self.opened = False
            await asyncio.to_thread(self.store.close)

    async def _on_startup(self, app: web.Application) -> None:
        await self.start()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.close()

    # -- persistence -------------------------------------------------------------------------------
    def _persist(self, update: bytes) -> None:
        """Every document transaction (local or remote) goes to the store's queue; no disk I/O here."""
        self.store.submit(update)
        remote = self.state.applying_remote
        self.metrics.updates.labels("remote" if remote else "local").inc()
        if not remote:
            self.sync.changed()
        if not self._compacting and self.store.uncompacted_bytes >= self.settings.compact_bytes:
            self._compacting = True
            asyncio.get_running_loop().call_soon(self._compact)

    def _compact(self) -> None:
        try:
            if self.opened:
                self.store.submit_snapshot(build_snapshot(self.state.doc), self.store.last_seq)
                self.metrics.compactions.inc()
        except Exception:
            log.exception("compaction failed")
        finally:
            self._compacting = False

    def _on_commit(self, records: int, size: int, seconds: float) -> None:
        self.metrics.commits.inc()
        self.metrics.commit_seconds.observe(seconds)

    def _save_acked(self, seq: int) -> None:
        if self.opened and self.store.meta.get(ACKED_KEY) != seq:
            self.store.set_meta(ACKED_KEY, seq)

    async def durable(self) -> int:
        """Wait until everything written so far is on disk; returns that sequence number."""
        seq = self.store.last_seq
        await self.store.wait_async(seq)
        return seq

    def _check_open(self) -> None:
        if not self.opened:
            raise StoreWriteError("state store is not open")

    # -- typed writes (each returns once durable) --------------------------------------------------
    async def increment(self, name: str, by: int | float = 1) -> dict[str, Any]:
        self._check_open()
        self.state.increment(name, by)
        await self.durable()
        return {"name": name, **_public(self.state.counter(name))}

    async def append_event(self, log_name: str, event: Any) -> str:
        self._check_open()
        key = self.state.append_event(log_name, event)
        await self.durable()
        return key

    async def set_register(self, name: str, value: Any) -> list[int]:
        self._check_open()
        stamp = self.state.set_register(name, value)
        await self.durable()
        return list(stamp)

    # -- edge filtering ----------------------------------------------------------------------------
    def record_inference(self, model: str, outputs: dict[str, np.ndarray]) -> None:
        """Count the argmax class of every row and log rows whose top score exceeds the threshold.

        Runs on the event loop without disk I/O: one document transaction, queued for group commit.
        """
        if not self.opened:
            return
        counts: dict[str, int] = {}
        events: list[dict[str, Any]] = []
        threshold = self.settings.event_threshold
        rows_total = 0
        for output, value in outputs.items():
            array = np.asarray(value)
            self.raw_result_bytes += int(array.nbytes)
            self.metrics.raw_result_bytes.inc(int(array.nbytes))
            if array.dtype.kind != "f" or array.size == 0:
                continue
            rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
            rows_total = max(rows_total, rows.shape[0])
            scores = _probabilities(rows.astype(np.float64, copy=False))
            classes = scores.argmax(axis=1)
            top = scores[np.arange(len(classes)), classes]
            for cls, n in zip(*np.unique(classes, return_counts=True), strict=True):
                key = f"{model}/{output}/class/{int(cls)}"
                counts[key] = counts.get(key, 0) + int(n)
            for row in np.nonzero(top > threshold)[0][: MAX_EVENTS_PER_INFERENCE - len(events)]:
                score = float(top[row])
                if math.isfinite(score):
                    events.append({"model": model, "output": output, "row": int(row),
                                   "class": int(classes[row]), "score": round(score, 6)})
        if rows_total:
            counts[f"{model}/inferences"] = rows_total
        if not counts and not events:
            return
        try:
            with self.state.doc.transaction():
                for name, n in counts.items():
                    self.state.increment(name, n)
                for event in events:
                    self.state.append_event(model, event)
        except StoreError:
            log.exception("recording inference results failed")

    def bytes_saved(self) -> dict[str, int]:
        sent = self.sync.sent_upstream_bytes
        return {"raw_result_bytes": self.raw_result_bytes, "sync_bytes_sent_upstream": sent,
                "bytes_saved": self.raw_result_bytes - sent}

    # -- HTTP --------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        r = self.store.recovery
        return {
            "replica": self.state.replica,
            "last_seq": self.store.last_seq,
            "durable_seq": self.store.durable_seq,
            "log_bytes": self.store.log_bytes,
            "snapshot_bytes": self.store.snapshot_bytes,
            "compactions": self.store.compactions,
            "write_error": str(self.store.error) if self.store.error else None,
            "recovery": {"seconds": r.seconds, "records": r.records, "dropped": r.dropped,
                         "snapshot_fallback": r.snapshot_fallback, "salvaged": r.salvaged, "damage": r.damage},
            "edge": self.bytes_saved(),
        }

    def _auth(self, request: web.Request) -> None:
        if not check_token(request, self.settings.token):
            self.metrics.rejected.labels("token").inc()
            raise web.HTTPUnauthorized(text=json.dumps({"error": "missing or wrong bearer token"}),
                                       content_type="application/json")

    async def _body(self, request: web.Request) -> Any:
        self._auth(request)
        try:
            raw = await read_capped(request, MAX_WRITE_BYTES)
        except web.HTTPRequestEntityTooLarge:
            self.metrics.rejected.labels("size").inc()
            raise
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _http(400, f"body is not JSON: {exc}") from None

    async def _write(self, coro: Any) -> web.Response:
        try:
            return web.json_response(await coro)
        except StoreWriteError as exc:
            return web.json_response({"error": f"not durable: {exc}"}, status=503)

    async def http_get_state(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response({"doc": self.settings.doc_id, "replica": self.state.replica, **self.state.to_json()})

    async def http_sync_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.sync.status())

    async def http_stats(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response(self.stats())

    async def http_counter(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        by = body.get("by", 1) if isinstance(body, dict) else None
        try:
            _check_number(by)
        except ValueError as exc:
            raise _http(400, str(exc)) from None
        return await self._write(self._guarded(self.increment, request.match_info["name"], by))

    async def http_event(self, request: web.Request) -> web.Response:
        body = await self._body(request)

        async def write() -> dict[str, Any]:
            key = await self.append_event(request.match_info["log"], body)
            return {"log": request.match_info["log"], "id": key}

        return await self._write(self._guarded(write))

    async def http_register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict) or "value" not in body:
            raise _http(400, 'body must be {"value": ...}')
        name = request.match_info["name"]

        async def write() -> dict[str, Any]:
            stamp = await self.set_register(name, body["value"])
            return {"name": name, "value": body["value"], "hlc": stamp}

        return await self._write(self._guarded(write))

    async def _guarded(self, fn: Any, *args: Any) -> Any:
        try:
            return await fn(*args)
        except (ValueError, TypeError) as exc:
            raise _http(400, str(exc)) from None


def _check_number(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f'"by" must be a finite number, got {value!r}')


def _probabilities(rows: np.ndarray) -> np.ndarray:
    """Rows as they are when they already look like probabilities, else a softmax of them."""
    if rows.shape[1] == 1 or (rows.min() >= 0.0 and rows.max() <= 1.0):
        return rows
    shifted = rows - rows.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _public(counter: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in counter.items() if k != "replicas"}


def _http(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 422: web.HTTPUnprocessableEntity}[status]
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def attach(app: web.Application, settings: StateSettings) -> StateHandle:
    """Add the ``/state`` and ``/sync`` routes to ``app`` and open/close the store with it."""
    handle = StateHandle(settings)
    app.router.add_get("/state", handle.http_get_state)
    app.router.add_get("/state/sync", handle.http_sync_status)
    app.router.add_get("/state/stats", handle.http_stats)
    app.router.add_post("/state/counters/{name}", handle.http_counter)
    app.router.add_post("/state/events/{log}", handle.http_event)
    app.router.add_put("/state/registers/{name}", handle.http_register)
    app.router.add_routes(handle.sync.routes())
    app.on_startup.append(handle._on_startup)
    app.on_cleanup.append(handle._on_cleanup)
    return handle
