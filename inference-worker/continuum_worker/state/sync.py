"""Sync over HTTP: a state-vector handshake, then diffs; the receiver acknowledges what it stored.

Endpoints (both need ``Authorization: Bearer <token>`` when a token is configured):

* ``POST /sync/{doc}/handshake`` body ``[state-vector]`` → ``[update, state-vector]``: what the caller
  lacks, and the server's state vector.
* ``POST /sync/{doc}/update`` body ``[update]`` → ``[ack]``: the server validates the update, applies it,
  waits until it is durable and answers with its state vector; the caller counts its updates as
  acknowledged once that vector covers its own.

Every message is framed (``framing.encode_message``: doc id, length, CRC32) and the body is capped in
size before it is parsed. A round with a target: handshake, apply the server's diff, send our diff.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from .doc import RejectedUpdate, StateDoc
from .framing import (
    EMPTY_UPDATE,
    KIND_ACK,
    KIND_STATE_VECTOR,
    KIND_UPDATE,
    FrameError,
    covers,
    decode_messages,
    decode_state_vector,
    encode_message,
    expect,
)
from .metrics import StateMetrics

log = logging.getLogger(__name__)

ACKED_KEY = "upstream_acked_seq"


class SyncError(RuntimeError):
    pass


def check_token(request: web.Request, token: str | None) -> bool:
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


async def read_capped(request: web.Request, cap: int) -> bytes:
    """The request body, or HTTPRequestEntityTooLarge as soon as it exceeds ``cap`` bytes."""
    if request.content_length is not None and request.content_length > cap:
        raise _too_large(cap, request.content_length)
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            raise _too_large(cap, size)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(cap: int, size: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_size=cap, actual_size=size, text=_error(f"body of {size} bytes exceeds {cap}"), content_type="application/json"
    )


@dataclass
class Target:
    url: str
    upstream: bool
    failures: int = 0
    error: str | None = None
    last_success: float | None = None
    acked_seq: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SyncService:
    """Server handlers and the background client loop for one document."""

    def __init__(
        self,
        state: StateDoc,
        *,
        doc_id: str,
        token: str | None,
        upstreams: list[str],
        peers: list[str],
        durable: Callable[[], Awaitable[int]],
        last_seq: Callable[[], int],
        save_acked: Callable[[int], None],
        acked_seq: int = 0,
        metrics: StateMetrics,
        max_message_bytes: int = 32 * 1024 * 1024,
        interval: float = 5.0,
        min_backoff: float = 0.2,
        max_backoff: float = 30.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.state = state
        self.doc_id = doc_id
        self.token = token
        self.targets = [Target(u.rstrip("/"), True, acked_seq=acked_seq) for u in upstreams]
        self.targets += [Target(u.rstrip("/"), False) for u in peers]
        self.durable = durable  # waits until everything applied so far is on disk; returns its seq
        self.last_seq = last_seq
        self.save_acked = save_acked
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.interval = interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self.sync_failures = 0
        self.last_sync_time: float | None = None
        self.sent_upstream_bytes = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        metrics.peers.set(len(self.targets))

    # -- status ------------------------------------------------------------------------------------
    @property
    def upstreams(self) -> list[Target]:
        return [t for t in self.targets if t.upstream]

    def acked_seq(self) -> int:
        ups = self.upstreams
        return min(t.acked_seq for t in ups) if ups else self.last_seq()

    def pending(self) -> int:
        return max(0, self.last_seq() - self.acked_seq()) if self.upstreams else 0

    def status(self) -> dict[str, object]:
        errors = [t.error for t in self.targets if t.error]
        return {
            "pending_updates": self.pending(),
            "last_sync_time": self.last_sync_time,
            "sync_failures": self.sync_failures,
            "peers": len(self.targets),
            "error": errors[0] if errors else None,
        }

    # -- server ------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/sync/{doc}/handshake", self.handle_handshake),
            web.post("/sync/{doc}/update", self.handle_update),
        ]

    async def _messages(self, request: web.Request, reason: str) -> list[tuple[int, bytes]]:
        if not check_token(request, self.token):
            self.metrics.rejected.labels("token").inc()
            raise web.HTTPUnauthorized(
                text=_error("missing or wrong bearer token"), content_type="application/json"
            )
        if request.match_info["doc"] != self.doc_id:
            self.metrics.rejected.labels("doc").inc()
            raise web.HTTPNotFound(text=_error("unknown document"), content_type="application/json")
        try:
            body = await read_capped(request, self.max_message_bytes)
        except web.HTTPRequestEntityTooLarge:
            self.metrics.rejected.labels("size").inc()
            raise
        self.metrics.sync_bytes.labels("received").inc(len(body))
        try:
            return decode_messages(body, self.doc_id, self.max_message_bytes)
        except FrameError as exc:
            self.metrics.rejected.labels("frame").inc()
            raise _bad(f"{reason}: {exc}") from None

    async def handle_handshake(self, request: web.Request) -> web.Response:
        messages = await self._messages(request, "handshake")
        try:
            (sv,) = expect(messages, KIND_STATE_VECTOR)
            decode_state_vector(sv)
            diff = self.state.diff(sv)
        except (FrameError, RejectedUpdate) as exc:
            self.metrics.rejected.labels("frame").inc()
            raise _bad(f"handshake: {exc}") from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pycrdt refused the vector (pyo3 panics are BaseException)
            self.metrics.rejected.labels("invalid").inc()
            raise _bad(f"handshake: invalid state vector: {type(exc).__name__}") from None
        body = encode_message(KIND_UPDATE, self.doc_id, diff) + encode_message(
            KIND_STATE_VECTOR, self.doc_id, self.state.state_vector()
        )
        self.metrics.sync_bytes.labels("sent").inc(len(body))
        return web.Response(body=body, content_type="application/octet-stream")

    async def handle_update(self, request: web.Request) -> web.Response:
        messages = await self._messages(request, "update")
        try:
            (update,) = expect(messages, KIND_UPDATE)
            self.state.apply_remote(update)
        except FrameError as exc:
            self.metrics.rejected.labels("frame").inc()
            raise _bad(f"update: {exc}") from None
        except RejectedUpdate as exc:
            self.metrics.rejected.labels("invalid").inc()
            raise web.HTTPUnprocessableEntity(
                text=_error(f"update refused: {exc}"), content_type="application/json"
            ) from None
        await self.durable()  # acknowledge only what is on disk
        body = encode_message(KIND_ACK, self.doc_id, self.state.state_vector())
        self.metrics.sync_bytes.labels("sent").inc(len(body))
        return web.Response(body=body, content_type="application/octet-stream")

    # -- client ------------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.targets:
            return
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout))
        self._tasks = [asyncio.create_task(self._run(t), name=f"state-sync {t.url}") for t in self.targets]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def changed(self) -> None:
        """A local update happened: push it to every healthy target soon."""
        for target in self.targets:
            if target.failures == 0:
                target.wake.set()

    async def _run(self, target: Target) -> None:
        while True:
            target.wake.clear()
            try:
                await self.sync_once(target)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                target.failures += 1
                target.error = f"{target.url}: {type(exc).__name__}: {exc}"[:500]
                self.sync_failures += 1
                self.metrics.sync_failures.inc()
                delay = min(self.max_backoff, self.min_backoff * 2 ** (target.failures - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            target.failures, target.error = 0, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(target.wake.wait(), self.interval)
            await asyncio.sleep(0.02)  # let a burst of local writes gather into one round

    async def _post(self, target: Target, path: str, body: bytes) -> list[tuple[int, bytes]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout))
        headers = {"Content-Type": "application/octet-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{target.url}/sync/{self.doc_id}/{path}"
        self.metrics.sync_bytes.labels("sent").inc(len(body))
        if target.upstream:
            self.sent_upstream_bytes += len(body)
        async with self._session.post(url, data=body, headers=headers) as resp:
            data = await resp.content.read(self.max_message_bytes + 1)
            if resp.status != 200:
                raise SyncError(f"{path}: HTTP {resp.status}: {data[:200]!r}")
        self.metrics.sync_bytes.labels("received").inc(len(data))
        return decode_messages(data, self.doc_id, self.max_message_bytes)

    async def sync_once(self, target: Target) -> None:
        """One round: handshake, take what we lack, send what they lack, record the acknowledgement."""
        hello = encode_message(KIND_STATE_VECTOR, self.doc_id, self.state.state_vector())
        diff, their_sv = expect(await self._post(target, "handshake", hello), KIND_UPDATE, KIND_STATE_VECTOR)
        theirs = decode_state_vector(their_sv)
        if diff != EMPTY_UPDATE:
            self.state.apply_remote(diff)  # RejectedUpdate: the round fails, nothing applied
        self.state.observe_clock()
        mark = self.last_seq()
        mine_sv = self.state.state_vector()
        mine = decode_state_vector(mine_sv)
        if not covers(theirs, mine):
            update = self.state.diff(their_sv)
            (ack,) = expect(
                await self._post(target, "update", encode_message(KIND_UPDATE, self.doc_id, update)), KIND_ACK
            )
            theirs = decode_state_vector(ack)
        if covers(theirs, mine):
            if target.upstream:
                target.acked_seq = max(target.acked_seq, mark)
                self.last_sync_time = time.time()
                self.metrics.last_sync.set(self.last_sync_time)
                self.save_acked(self.acked_seq())
            self.metrics.syncs.labels("upstream" if target.upstream else "peer").inc()
        else:
            raise SyncError("target did not acknowledge everything it was sent")


def _error(message: str) -> str:
    return json.dumps({"error": message})


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=_error(message), content_type="application/json")
