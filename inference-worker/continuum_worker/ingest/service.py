"""Streaming ingestion: MQTT sources in, results out through the durable outbox (a thin endpoint over the
:class:`~continuum_worker.dataplane.DataPlane`, like ``rest.py`` and ``grpc_server.py``).

Per source: one persistent MQTT session (``clean_start`` false, session expiry 7 days, client id stable
across restarts) so the broker keeps messages while the worker is down; QoS 1 with manual
acknowledgements. Every message is decoded and sent to ``DataPlane.infer`` at once (concurrent
requests meet in the model's dynamic batcher), at most ``--ingest-max-in-flight`` at a time (MQTT 5
Receive Maximum too: the broker holds the rest). Results are written to the outbox in arrival order
per source, and a message is acknowledged only once its result (or dead letter) is durable.

One publisher per worker sends the outbox in sequence order to ``--publish`` with QoS 1 and a
sliding window, advancing the outbox's watermark as PUBACKs arrive; when the upstream broker is
down it reconnects with backoff and the outbox holds everything meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from continuum_worker.errors import NotFound, ServerError, Unavailable
from continuum_worker.ingest.decode import DecodeError, decode
from continuum_worker.ingest.filter import Summary, events_of
from continuum_worker.ingest.metrics import IngestMetrics
from continuum_worker.ingest.outbox import Outbox, OutboxError, Record
from continuum_worker.ingest.uri import MqttEndpoint, parse_endpoint
from continuum_worker.protocol import HEADER_LENGTH, encode_infer_response

log = logging.getLogger("continuum.worker.ingest")

SESSION_EXPIRY_SECONDS = 7 * 24 * 3600
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024
MAX_LATENCY_TRACKED = 200_000
RETRIES_WHEN_UNAVAILABLE = 3
ACK_TIMEOUT_SECONDS = 10.0  # a publish unacknowledged this long on a live connection: reconnect and resend


class IngestConfigError(ValueError):
    """Settings that cannot work together (the CLI exits 2 with the message)."""


@dataclass
class IngestConfig:
    sources: list[MqttEndpoint]
    sink: MqttEndpoint
    directory: Path
    default_model: str | None
    filter: str = "all"
    event_threshold: float = 0.9
    summary_secs: float = 10.0
    max_in_flight: int = 256
    outbox_max_messages: int = 1_000_000
    outbox_max_bytes: int = 2**30
    outbox_policy: str = "block"
    client_id: str = "continuum-worker"
    publish_window: int = 256
    reconnect_max_seconds: float = 2.0

    @classmethod
    def from_settings(cls, s: Any) -> IngestConfig:
        if not s.publish:
            raise IngestConfigError("--ingest needs --publish mqtt://HOST:PORT/TOPIC (where results go)")
        directory = s.outbox_dir or (s.state_dir / "outbox" if s.state_dir else None)
        if directory is None:
            raise IngestConfigError(
                "--ingest needs a durable volume for its outbox: --outbox-dir or --state-dir "
                "(results are stored before a message is acknowledged)"
            )
        sources = [parse_endpoint(u, source=True) for u in s.ingest]
        if not s.shorthand and any(e.model is None for e in sources):
            raise IngestConfigError("with --model-repository every --ingest URI needs model=NAME")
        base = s.mqtt_client_id or f"continuum-{s.replica_id or socket.gethostname()}"
        return cls(
            sources=sources, sink=parse_endpoint(s.publish, source=False), directory=Path(directory),
            default_model=s.model_name if s.shorthand else None, filter=s.ingest_filter,
            event_threshold=s.event_threshold, summary_secs=s.ingest_summary_secs,
            max_in_flight=s.ingest_max_in_flight, outbox_max_messages=s.outbox_max_messages,
            outbox_max_bytes=s.outbox_max_bytes, outbox_policy=s.outbox_full_policy, client_id=base,
        )  # fmt: skip


@dataclass
class _Work:
    """One source message on its way: what it produced and when."""

    message: aiomqtt.Message
    received: float  # perf_counter
    records: list[Record] = field(default_factory=list)
    outcome: str = "ok"
    marks: dict[str, float] = field(default_factory=dict)
    summary: tuple[dict[str, int], int] | None = None  # (class counts, events) in filter mode


def _user_properties(message: aiomqtt.Message) -> dict[str, str]:
    props = message.properties
    if props is None:
        return {}
    out = {str(k): str(v) for k, v in getattr(props, "UserProperty", []) or []}
    corr = getattr(props, "CorrelationData", None)
    if corr and "id" not in out:
        out["id"] = corr.decode(errors="replace") if isinstance(corr, bytes) else str(corr)
    return out


class _Client(aiomqtt.Client):
    """aiomqtt's client keeping MQTT's DUP flag on each message (``dup``): only a message the broker
    sends again can be one whose result is already durable, so only those are looked up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acked = asyncio.Event()  # set on every PUBACK of a publish sent with paho directly

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        super()._on_publish(client, userdata, mid, reason_code, properties)
        self.acked.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        m = aiomqtt.Message._from_paho_message(message)
        m.dup = bool(message.dup)  # type: ignore[attr-defined]
        try:
            self._queue.put_nowait(m)
        except asyncio.QueueFull:  # unbounded queue: cannot happen (the broker's Receive Maximum bounds it)
            log.error("message queue full: message %s not taken (the broker sends it again)", message.mid)


def _protocol(version: str) -> aiomqtt.ProtocolVersion:
    return aiomqtt.ProtocolVersion.V5 if version == "5" else aiomqtt.ProtocolVersion.V311


class IngestService:
    def __init__(self, plane: Any, config: IngestConfig) -> None:
        self.plane = plane
        self.config = config
        self.metrics = IngestMetrics(plane.metrics.registry)
        self.outbox = Outbox(
            config.directory, max_messages=config.outbox_max_messages, max_bytes=config.outbox_max_bytes,
            policy=config.outbox_policy, metrics=self.metrics,
        )  # fmt: skip
        self.summary = Summary()
        self.in_flight = 0
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._tasks: list[asyncio.Task[None]] = []
        self._latency: dict[int, tuple[float, float]] = {}  # seq -> (received, durable)
        self._protocols = {i: e.protocol for i, e in enumerate(config.sources)}
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.outbox.open()
        self.summary = Summary.loads(self.outbox.meta.get("summary"))
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run_sink(), name="ingest-publish"))
        for i, ep in enumerate(self.config.sources):
            self._tasks.append(loop.create_task(self._run_source(i, ep), name=f"ingest-{ep.topic}"))
        if self.config.filter == "events":
            self._tasks.append(loop.create_task(self._run_summaries(), name="ingest-summaries"))
        log.info("ingesting %s -> %s (outbox %s)", [e.uri for e in self.config.sources], self.config.sink.uri,
                 self.config.directory)  # fmt: skip

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop reading; let messages in flight reach the outbox; give the publisher a moment to drain."""
        self._stopping = True
        sources, sink = self._tasks[1:], self._tasks[:1]
        deadline = time.monotonic() + drain_seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        while self.outbox.pending_count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in [*sources, *sink]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.outbox.close()

    # -- sources -----------------------------------------------------------------------------------
    def _client_id(self, ep: MqttEndpoint, role: str) -> str:
        where = hashlib.blake2b(f"{ep.host}:{ep.port}/{ep.topic}".encode(), digest_size=4).hexdigest()
        return f"{self.config.client_id}-{role}-{where}"

    def _client(self, ep: MqttEndpoint, identifier: str, protocol: str, receive_max: int | None) -> _Client:
        kwargs: dict[str, Any] = {"identifier": identifier, "protocol": _protocol(protocol), "keepalive": 10,
                                  "timeout": 10, "max_inflight_messages": self.config.publish_window}  # fmt: skip
        if protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            if receive_max:
                props.ReceiveMaximum = min(65535, receive_max)
            kwargs.update(clean_start=False, properties=props)
        else:
            kwargs["clean_session"] = False
        client = _Client(ep.host, ep.port, **kwargs)
        client.pending_calls_threshold = 2 * self.config.publish_window  # it warns per call above this
        return client

    async def _run_source(self, index: int, ep: MqttEndpoint) -> None:
        backoff = 0.1
        broker = f"{ep.host}:{ep.port}/{ep.topic}"
        while not self._stopping:
            protocol = self._protocols[index]
            client = self._client(ep, self._client_id(ep, "in"), protocol, self.config.max_in_flight)
            client._client.manual_ack_set(True)  # acknowledged once the result is durable
            try:
                async with client:
                    await client.subscribe(ep.topic, qos=ep.qos)
                    self.metrics.connected.labels("source", broker).set(1)  # connected and subscribed
                    backoff = 0.1
                    await self._consume(ep, client)
            except aiomqtt.MqttError as exc:
                if protocol == "5" and "protocol" in str(exc).lower():
                    log.warning("%s does not speak MQTT 5 (%s): falling back to 3.1.1", broker, exc)
                    self._protocols[index] = "3.1.1"
                    continue
                log.warning("source %s: %s; reconnecting in %.1fs", ep.uri, exc, backoff)
            except Exception:  # never let the source stop: unacknowledged messages come back on reconnect
                log.exception("source %s failed; reconnecting in %.1fs", ep.uri, backoff)
            finally:
                self.metrics.connected.labels("source", broker).set(0)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_seconds)

    async def _consume(self, ep: MqttEndpoint, client: aiomqtt.Client) -> None:
        order: asyncio.Queue[tuple[_Work, asyncio.Task[None]]] = asyncio.Queue()
        writer = asyncio.get_running_loop().create_task(self._write_in_order(ep, client, order))
        try:
            async for message in client.messages:
                await self._slots.acquire()
                self.in_flight += 1
                self.metrics.in_flight.set(self.in_flight)
                work = _Work(message, time.perf_counter())
                work.marks["wall"] = time.time()
                order.put_nowait((work, asyncio.get_running_loop().create_task(self._process(ep, work))))
                if writer.done():
                    writer.result()  # raises what stopped it
        finally:
            # messages in flight still reach the outbox (they are redelivered anyway: not acknowledged)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._drain_order(order), timeout=5.0)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    async def _drain_order(self, order: asyncio.Queue[Any]) -> None:
        while not order.empty():
            await asyncio.sleep(0.005)

    async def _write_in_order(
        self, ep: MqttEndpoint, client: aiomqtt.Client, order: asyncio.Queue[tuple[_Work, asyncio.Task[None]]]
    ) -> None:
        """Results become durable in arrival order (per source, several per commit); then acknowledged."""
        while True:
            first = await order.get()
            batch = [first]
            await first[1]
            while not order.empty() and order._queue[0][1].done():  # type: ignore[attr-defined]
                batch.append(order.get_nowait())
            records: list[Record] = []
            meta: dict[str, str] = {}
            for work, _ in batch:
                records.extend(work.records)
                if work.summary is not None:
                    self.summary.add(*work.summary)
            if self.config.filter == "events":
                meta["summary"] = self.summary.dumps()
            backoff = 0.05
            while True:
                try:
                    seqs = await self.outbox.put(records, meta) if (records or meta) else []
                    break
                except OutboxError as exc:  # disk full, I/O: nothing is acknowledged; retry
                    log.error("outbox write failed (%s); retrying in %.2fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
            durable = time.perf_counter()
            i = 0
            for work, _ in batch:
                for _ in work.records:
                    if len(self._latency) < MAX_LATENCY_TRACKED:
                        self._latency[seqs[i]] = (work.received, durable)
                    i += 1
                m = work.message
                if m.qos > 0:
                    client._client.ack(m.mid, m.qos)
                self.metrics.messages.labels(ep.topic, work.outcome).inc()
                if "done" in work.marks:
                    self.metrics.stage.labels("to_durable").observe(durable - work.marks["done"])
                self._slots.release()
                self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    async def _process(self, ep: MqttEndpoint, work: _Work) -> None:
        message = work.message
        payload = bytes(message.payload) if not isinstance(message.payload, bytes) else message.payload
        props = _user_properties(message)
        msg_id = props.get("id")
        name = ep.model or self.config.default_model or ""
        try:
            model = self.plane.model(name, ep.version)
            decoded = decode(ep, payload, props, [(s.name, s.datatype) for s in model.inputs])
            msg_id = decoded.msg_id
            if decoded.source_ts is not None:
                work.marks["source_ts"] = decoded.source_ts
                self.metrics.stage.labels("source_to_receive").observe(max(0.0, work.marks["wall"] - decoded.source_ts))
            if decoded.key is not None and getattr(message, "dup", True) and self.outbox.seen(decoded.key):
                work.outcome = "duplicate"  # its result is durable already: only the acknowledgement was lost
                return
            timings: dict[str, float] = {}
            started = time.perf_counter()
            self.metrics.stage.labels("receive_to_infer").observe(started - work.received)

            def encode(m: Any, results: Any, wanted: Any) -> tuple[Any, Any, bytes, dict[str, str]]:
                body, headers = encode_infer_response(m.name, m.version, decoded.msg_id, results, wanted)
                return m, results, body, headers

            for attempt in range(RETRIES_WHEN_UNAVAILABLE + 1):
                try:
                    m, results, body, headers = await self.plane.infer(
                        name, ep.version, decoded.request, encode, timings
                    )
                    break
                except Unavailable:
                    if attempt == RETRIES_WHEN_UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            work.marks["done"] = time.perf_counter()
            self.metrics.stage.labels("batch_wait").observe(timings.get("queue", 0.0))
            self.metrics.stage.labels("compute").observe(timings.get("compute", 0.0))
            self.metrics.result_bytes.inc(len(body))
            work.records = self._results(ep, message, decoded.msg_id, decoded.key, m, results, body, headers, work)
        except (DecodeError, NotFound, ServerError) as exc:
            work.outcome = "failed" if type(exc) is ServerError or isinstance(exc, Unavailable) else "malformed"
            work.records = [self._dead_letter(message, msg_id, str(exc), payload, None)]
        except Exception as exc:  # never let one message stop the stream
            log.exception("ingest of a message from %s failed", message.topic)
            work.outcome = "failed"
            work.records = [self._dead_letter(message, msg_id, f"internal error: {exc}", payload, None)]

    def _results(
        self, ep: MqttEndpoint, message: aiomqtt.Message, msg_id: str | None, key: str | None, model: Any,
        results: Any, body: bytes, headers: dict[str, str], work: _Work,
    ) -> list[Record]:  # fmt: skip
        props: dict[str, str] = {"source": str(message.topic), "model": model.name, "model_version": model.version}
        if "source_ts" in work.marks:  # the publisher's timestamp, for end-to-end latency downstream
            props["source_ts"] = repr(work.marks["source_ts"])
        if HEADER_LENGTH in headers:
            props["inference_header_content_length"] = headers[HEADER_LENGTH]
        sink = self.config.sink.topic
        if self.config.filter == "all":
            return [Record(sink, body, "result", msg_id, key, json.dumps(props))]
        events, counts = events_of(model.name, msg_id, results, self.config.event_threshold, model.batchable)
        work.summary = (counts, len(events))
        out = [
            Record(sink, json.dumps({"kind": "event", "source": str(message.topic), **e}).encode(), "event", msg_id,
                   key, json.dumps(props))
            for e in events
        ]  # fmt: skip
        if not out and key is not None:
            # nothing goes upstream for it, but its redelivery must still be recognised: a marker record
            out.append(Record("", b"", "seen", msg_id, key, None))
        return out

    def _dead_letter(
        self, message: aiomqtt.Message, msg_id: str | None, error: str, payload: bytes, key: str | None
    ) -> Record:
        doc = {"kind": "dead_letter", "source": str(message.topic), "id": msg_id, "error": error,
               "payload_bytes": len(payload),
               "payload_base64": base64.b64encode(payload[:DEAD_LETTER_PAYLOAD_BYTES]).decode()}  # fmt: skip
        return Record(f"{self.config.sink.topic}/dead-letter", json.dumps(doc).encode(), "dead_letter", msg_id, key)

    async def _run_summaries(self) -> None:
        while True:
            await asyncio.sleep(self.config.summary_secs)
            now = time.time()
            closing, self.summary = self.summary, Summary(since=now)
            if not closing.messages:
                self.summary = Summary(since=closing.since)
                continue
            record = Record(f"{self.config.sink.topic}/summary", closing.close(now), "summary")
            while True:
                try:
                    await self.outbox.put([record], {"summary": self.summary.dumps()})
                    break
                except OutboxError as exc:
                    log.error("outbox write of a summary failed (%s); retrying", exc)
                    await asyncio.sleep(0.5)

    # -- sink --------------------------------------------------------------------------------------
    async def _run_sink(self) -> None:
        ep = self.config.sink
        broker = f"{ep.host}:{ep.port}/{ep.topic}"
        protocol = ep.protocol
        cursor = self.outbox.watermark
        # records pending from a previous run may have been published before it stopped
        maybe_sent = self.outbox.last_seq
        backoff = 0.1
        while True:
            client = self._client(ep, self._client_id(ep, "out"), protocol, None)
            sent = cursor
            try:
                async with client:
                    self.metrics.connected.labels("sink", broker).set(1)
                    backoff = 0.1
                    cursor = max(cursor, self.outbox.watermark)
                    sent = cursor
                    await self._publish_loop(client, protocol, cursor, maybe_sent)
            except aiomqtt.MqttError as exc:
                if protocol == "5" and "protocol" in str(exc).lower():
                    log.warning("%s does not speak MQTT 5 (%s): falling back to 3.1.1", broker, exc)
                    protocol = "3.1.1"
                    continue
                log.warning("publish to %s: %s; reconnecting in %.1fs", ep.uri, exc, backoff)
            except Exception:  # never let publishing stop: the outbox resends from its watermark
                log.exception("publishing to %s failed; reconnecting in %.1fs", ep.uri, backoff)
            finally:
                self.metrics.connected.labels("sink", broker).set(0)
            cursor = self.outbox.watermark
            maybe_sent = max(maybe_sent, self._sent_hi, sent)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_seconds)

    _sent_hi = 0

    async def _publish_loop(self, client: _Client, protocol: str, cursor: int, maybe_sent: int) -> None:
        """A sliding window of QoS 1 publishes sent with paho directly (no task per record); the watermark
        advances over the contiguous acknowledged prefix."""
        window = self.config.publish_window
        inflight: collections.deque[tuple[Any, Any, float]] = collections.deque()  # (row, MQTTMessageInfo | None, sent)
        after = cursor
        loop = asyncio.get_running_loop()
        disconnected = client._disconnected
        while True:
            if disconnected.done():
                reason = None if disconnected.cancelled() else disconnected.exception()  # retrieved: no asyncio warning
                raise aiomqtt.MqttError(f"disconnected from the upstream broker ({reason})")
            if len(inflight) < window:
                for row in self.outbox.read(after, window - len(inflight)):
                    after = row.seq
                    info = None if row.kind == "seen" else self._send(client, protocol, row, row.seq <= maybe_sent)
                    inflight.append((row, info, time.monotonic()))
                    self._sent_hi = max(self._sent_hi, row.seq)
            if not inflight:
                self.outbox.flush_watermark()
                await self.outbox.wait_new(after, 0.2)
                continue
            now = time.perf_counter()
            last = None
            while inflight and (inflight[0][1] is None or inflight[0][1].is_published()):
                row, _, _ = inflight.popleft()
                last = row.seq
                if row.kind != "seen":
                    self.metrics.published.labels(row.kind).inc()
                    self.metrics.upstream_bytes.labels(row.kind).inc(len(row.payload))
                marks = self._latency.pop(row.seq, None)
                if marks is not None:
                    self.metrics.stage.labels("durable_to_published").observe(now - marks[1])
                    self.metrics.stage.labels("receive_to_published").observe(now - marks[0])
            if last is not None:
                self.outbox.mark_published(last)
                continue
            client.acked.clear()
            if inflight[0][1].is_published():
                continue
            if time.monotonic() - inflight[0][2] > ACK_TIMEOUT_SECONDS:
                # MQTT resends an unacknowledged PUBLISH only on a new connection: make one
                raise aiomqtt.MqttError(f"no PUBACK for record {inflight[0][0].seq} in {ACK_TIMEOUT_SECONDS:.0f}s")
            waits: list[asyncio.Future[Any]] = [loop.create_task(client.acked.wait())]
            if len(inflight) < window:
                waits.append(loop.create_task(self.outbox.wait_new(after, 1.0)))
            await asyncio.wait([*waits, disconnected], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()

    def _send(self, client: aiomqtt.Client, protocol: str, row: Any, redelivered: bool) -> Any:
        props = None
        if protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            user = [("kind", row.kind), ("seq", str(row.seq))]
            if row.msg_id is not None:
                user.append(("id", row.msg_id))
            if row.props:
                user.extend((k, v) for k, v in json.loads(row.props).items())
            if redelivered:
                user.append(("redelivered", "1"))
            props.UserProperty = user
        if redelivered:
            self.metrics.republished.inc()
        info = client._client.publish(row.topic, row.payload, qos=self.config.sink.qos, properties=props)
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")
        return info


def attach_ingest(app: Any, plane: Any, settings: Any) -> IngestService:
    """Start ingestion with the app (after the models load) and stop it before the data plane stops."""
    service = IngestService(plane, IngestConfig.from_settings(settings))

    async def start(app: Any) -> None:
        await service.start()

    async def stop(app: Any) -> None:
        await service.stop(min(5.0, settings.drain_seconds))

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return service
