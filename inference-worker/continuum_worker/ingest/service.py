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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from continuum_worker.errors import NotFound, ServerError, Unavailable
from continuum_worker.ingest.decode import DecodeError, decode
from continuum_worker.ingest.filter import Summary, events_of
from continuum_worker.ingest.kafka import KafkaLinkError, KafkaSource, kafka_publish_loop
from continuum_worker.ingest.metrics import STAGES, IngestMetrics
from continuum_worker.ingest.outbox import Outbox, OutboxError, Record
from continuum_worker.ingest.uri import MqttEndpoint, parse_endpoint
from continuum_worker.protocol import HEADER_LENGTH, encode_infer_response

log = logging.getLogger("continuum.worker.ingest")

SESSION_EXPIRY_SECONDS = 7 * 24 * 3600
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024
MAX_LATENCY_TRACKED = 200_000
RETRIES_WHEN_UNAVAILABLE = 3
ACK_TIMEOUT_SECONDS = 10.0  # a publish unacknowledged this long on a live connection: reconnect and resend
# written mode: a commit waits this long after its first write for more to share its fsync
WRITTEN_GATHER_SECONDS = 0.010
PUBLISH_TICK_SECONDS = 0.2  # the publisher's beat when nothing else wakes it
# records sent and awaiting their PUBACK or their commit, at most (well below the 65,535 packet ids)
MAX_HELD = 16_384


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
    publish_after: str = "written"  # written: publish once handed to the outbox; durable: once committed

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
            publish_after=s.ingest_publish_after,
        )  # fmt: skip


@dataclass
class _Work:
    """One source message on its way: what it produced and when."""

    message: _Message
    received: float  # perf_counter
    records: list[Record] = field(default_factory=list)
    outcome: str = "ok"
    marks: dict[str, float] = field(default_factory=dict)
    summary: tuple[dict[str, int], int] | None = None  # (class counts, events) in filter mode
    # a redelivery (MQTT DUP) whose result is not durable: its first result may have been published before
    # its commit (--ingest-publish-after written) by a life that then died; this one is marked redelivered
    maybe_published: bool = False
    seqs: list[int] = field(default_factory=list)  # of its records in the outbox
    ready: bool = False  # processed: its records may be handed to the outbox
    task: asyncio.Task[None] | None = None


@dataclass
class _Session:
    """One source connection's messages between receipt and acknowledgement, in arrival order."""

    ep: MqttEndpoint
    order: collections.deque[_Work] = field(
        default_factory=collections.deque
    )  # received, not yet handed over
    commits: asyncio.Queue[_Handed] = field(
        default_factory=asyncio.Queue
    )  # handed over, not yet acknowledged
    waiting: asyncio.Task[None] | None = None  # handing over waits for outbox room (block policy)
    scheduled: bool = False  # a hand-over is due at the next loop iteration
    taken: int = 0
    acked: int = 0  # acknowledged, or given up when the session ended


@dataclass(slots=True)
class _Handed:
    """Messages whose records were handed to the outbox together; ``future``: their commit (None: nothing
    to write, e.g. duplicates only)."""

    batch: list[_Work]
    future: asyncio.Future[Any] | None


@dataclass(slots=True)
class _Message:
    """One PUBLISH from a source broker, parsed straight from the packet (paho's own parsing builds
    several objects per message; this is the per-message hot path)."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool  # MQTT's DUP flag: only a message the broker sends again can have a durable result already
    properties: dict[str, str]  # MQTT 5 user properties (last wins), correlation data as "id"


_FIXED = {0x01: 1, 0x02: 4, 0x13: 2, 0x21: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1, 0x17: 1,
          0x19: 1, 0x11: 4, 0x18: 4}  # fmt: skip  # property id -> size (byte, two- and four-byte integers)
_LENGTH_PREFIXED = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}  # UTF-8 strings and binary data
_PUBACK = 0x40
_PUBLISH_QOS1 = 0x32


def _varint(buf: bytes | bytearray, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise ValueError("malformed variable byte integer")


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _str16(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def parse_publish(command: int, packet: bytes | bytearray, v5: bool) -> _Message:
    """The variable header and payload of a PUBLISH (``packet``: everything after the fixed header)."""
    qos = (command >> 1) & 3
    n = int.from_bytes(packet[0:2], "big")
    topic = bytes(packet[2 : 2 + n]).decode()
    i = 2 + n
    mid = 0
    if qos:
        mid = int.from_bytes(packet[i : i + 2], "big")
        i += 2
    props: dict[str, str] = {}
    if v5:
        length, i = _varint(packet, i)
        end = i + length
        correlation = None
        while i < end:
            pid = packet[i]
            i += 1
            if pid == 0x26:  # user property: a string pair
                kl = int.from_bytes(packet[i : i + 2], "big")
                key = bytes(packet[i + 2 : i + 2 + kl]).decode(errors="replace")
                i += 2 + kl
                vl = int.from_bytes(packet[i : i + 2], "big")
                props[key] = bytes(packet[i + 2 : i + 2 + vl]).decode(errors="replace")
                i += 2 + vl
            elif pid in _FIXED:
                i += _FIXED[pid]
            elif pid in _LENGTH_PREFIXED:
                ln = int.from_bytes(packet[i : i + 2], "big")
                if pid == 0x09:
                    correlation = bytes(packet[i + 2 : i + 2 + ln])
                i += 2 + ln
            elif pid == 0x0B:  # subscription identifier
                _, i = _varint(packet, i)
            else:
                raise ValueError(f"unknown MQTT 5 property 0x{pid:02x}")
        if i != end:
            raise ValueError("MQTT 5 properties overrun their length")
        if correlation and "id" not in props:
            props["id"] = correlation.decode(errors="replace")
    return _Message(topic, bytes(packet[i:]), qos, mid, bool(command & 0x08), props)


def publish_frame(
    topic: bytes, payload: bytes, qos: int, mid: int, user: list[tuple[str, str]] | None
) -> bytes:
    """A whole PUBLISH packet; ``user`` (MQTT 5 only, else None): its user properties."""
    var = _str16(topic) + (mid.to_bytes(2, "big") if qos else b"")
    if user is not None:
        props = b"".join(b"\x26" + _str16(k) + _str16(v) for k, v in user)
        var += _varint_bytes(len(props)) + props
    return bytes((0x30 | (qos << 1),)) + _varint_bytes(len(var) + len(payload)) + var + payload


class _Client(aiomqtt.Client):
    """aiomqtt's connection handling (connect, subscribe, keepalive, reconnect errors) with the
    per-message paths taken over: received PUBLISHes are parsed here into :attr:`inbox`, PUBACKs to the
    source go out many in one write (:meth:`ack_many`, once per group commit), results go out as PUBLISH
    packets built here, many in one write (:meth:`send_many`), their PUBACKs collected in :attr:`pubacks`.
    Nothing is resent by paho: after a reconnect the outbox sends again from its watermark."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.v5 = kwargs.get("protocol") == aiomqtt.ProtocolVersion.V5
        self.wake = asyncio.Event()  # set on every PUBLISH in, PUBACK in, and on disconnection
        self.inbox: collections.deque[_Message] = collections.deque()
        # takes a PUBLISH straight from the reader (True) or leaves it to the inbox (False): no task to wake
        self.dispatch: Callable[[_Message], bool] | None = None
        self.pubacks: collections.deque[tuple[int, int]] = collections.deque()  # (packet id, reason code)
        pc = self._client
        for attr in ("_handle_publish", "_handle_pubackcomp", "_packet_queue", "_in_packet", "_sock_recv",
                     "_packet_read", "_loop_rc_handle", "_out_packet", "_last_msg_out"):  # fmt: skip
            if not hasattr(pc, attr):  # paho-mqtt's internals this relies on (2.x)
                raise RuntimeError(f"paho-mqtt {getattr(mqtt_client, '__version__', '?')} lacks {attr}")
        pc._handle_publish = self._handle_publish
        pc._handle_pubackcomp = self._handle_puback
        self._buffer, self._pos, self._buffered_sock = b"", 0, None
        pc._sock_recv = self._sock_recv
        pc.loop_read = self._loop_read

    def _sock_recv(self, size: int) -> bytes:
        """paho reads a packet as 1 byte, 1 byte per length byte, then the rest: a system call each.
        Read what the socket holds at once and hand it out from here (plain TCP only: no TLS here)."""
        sock = self._client._sock
        if sock is None:
            raise ConnectionError("the socket is closed")
        if sock is not self._buffered_sock:
            self._buffer, self._pos, self._buffered_sock = b"", 0, sock
        if self._pos >= len(self._buffer):
            data = sock.recv(65536)  # BlockingIOError: paho waits for the next readable event
            if not data:
                return b""  # closed by the broker
            self._buffer, self._pos = data, 0
        out = self._buffer[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def _loop_read(self, max_packets: int = 1) -> Any:
        """Every packet the socket and the buffer hold (the selector cannot see the buffer)."""
        pc = self._client
        while True:
            if pc._sock is None:
                return mqtt_client.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = pc._packet_read()
            if rc > 0:
                return pc._loop_rc_handle(rc)
            if rc == mqtt_client.MQTTErrorCode.MQTT_ERR_AGAIN:
                return mqtt_client.MQTTErrorCode.MQTT_ERR_SUCCESS

    receive_maximum = (
        65535  # the broker's MQTT 5 Receive Maximum (CONNACK): QoS 1 publishes in flight at most
    )

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        maximum = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        if maximum:
            self.receive_maximum = int(maximum)
        super()._on_connect(client, userdata, flags, reason_code, properties)

    async def __aenter__(self) -> _Client:
        await super().__aenter__()
        sock = self._client._sock
        if (
            sock is not None
        ):  # paho leaves Nagle on: a PUBACK or PUBLISH would wait for the previous one's ACK
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def watch_disconnect(self) -> None:
        self._disconnected.add_done_callback(lambda _: self.wake.set())

    def _handle_publish(self) -> Any:
        packet = self._client._in_packet
        try:
            message = parse_publish(packet["command"], packet["packet"], self.v5)
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            log.error("malformed PUBLISH from the broker (%s): disconnecting", exc)
            return mqtt_client.MQTTErrorCode.MQTT_ERR_PROTOCOL
        if message.qos > 1:  # subscribed with QoS <= 1: the broker never sends QoS 2
            return mqtt_client.MQTTErrorCode.MQTT_ERR_PROTOCOL
        if self.dispatch is None or not self.dispatch(message):
            self.inbox.append(message)
            self.wake.set()
        return mqtt_client.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_puback(self, cmd: str) -> Any:
        packet = self._client._in_packet["packet"]
        self.pubacks.append((int.from_bytes(packet[0:2], "big"), packet[2] if len(packet) > 2 else 0))
        self.wake.set()
        return mqtt_client.MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        if mids:
            self._write(_PUBACK, b"".join(b"\x40\x02" + m.to_bytes(2, "big") for m in mids), 0)

    def send_many(self, frames: list[bytes]) -> None:
        if frames:
            self._write(_PUBLISH_QOS1, b"".join(frames), 1)  # qos 1: no on_publish for it

    def _write(self, command: int, data: bytes, qos: int) -> None:
        """Send now when paho has nothing queued (its queue would wait for the next writable event: a loop
        iteration and two epoll changes later); what the socket does not take goes to paho's queue."""
        pc = self._client
        sock = pc._sock
        if sock is not None and not pc._out_packet:
            try:
                sent = sock.send(data)
            except OSError:  # BlockingIOError, or a broken connection that paho's own write reports
                sent = 0
            if sent:
                pc._last_msg_out = mqtt_client.time_func()  # for the keepalive
            if sent == len(data):
                return
            data = data[sent:]
        pc._packet_queue(command, data, 0, qos)


class _Uplink:
    """The publisher on one upstream connection: a sliding window of QoS 1 publishes in sequence order, each
    read of the outbox sent in one write; the watermark advances over the contiguous prefix of records both
    acknowledged upstream and committed (with ``--ingest-publish-after written`` a record may be sent
    before its commit, never before an older record). Synchronous: called by the publisher's loop and,
    to save a task switch, right where records are handed over or committed."""

    def __init__(self, service: IngestService, client: _Client, protocol: str, cursor: int, maybe_sent: int):
        self.service, self.client, self.outbox = service, client, service.outbox
        self.window = min(service.config.publish_window, client.receive_maximum)
        self.qos, self.v5 = service.config.sink.qos, protocol == "5"
        self.early = service.config.publish_after == "written"
        self.after, self.maybe_sent, self.next_mid = cursor, maybe_sent, 0
        self.inflight: collections.deque[tuple[Any, int]] = (
            collections.deque()
        )  # sent, not done: (row, packet id or 0)
        self.unacked: dict[
            int, float
        ] = {}  # packet id -> when sent (monotonic); insertion order is send order
        self.acked: dict[int, float] = {}  # packet id -> when its PUBACK came (perf_counter), commit awaited
        m = service.metrics
        self.published = {k: m.published.labels(k) for k in ("result", "event", "summary", "dead_letter")}
        self.upstream = {k: m.upstream_bytes.labels(k) for k in self.published}
        self.warned = False

    def pump(self) -> None:
        """Send what may be sent now, up to the window."""
        room = min(self.window - len(self.unacked), MAX_HELD - len(self.inflight))
        if room <= 0:
            return
        frames = []
        now = time.monotonic()
        service = self.service
        for row in self.outbox.read(self.after, room, early=self.early):
            self.after = row.seq
            mid = 0
            if row.kind != "seen":
                if self.qos:
                    self.next_mid = mid = self.next_mid % 65535 + 1
                    self.unacked[mid] = now
                frames.append(service._frame(row, self.qos, mid, self.v5, row.seq <= self.maybe_sent))
            self.inflight.append((row, mid))
            if row.seq > service._sent_hi:
                service._sent_hi = row.seq
        self.client.send_many(frames)

    def take_pubacks(self) -> None:
        pubacks = self.client.pubacks
        if not pubacks:
            return
        now = time.perf_counter()
        while pubacks:
            mid, reason_code = pubacks.popleft()
            if (
                reason_code >= 0x80 and not self.warned
            ):  # the broker refused it: not resent (MQTT 5 semantics)
                log.warning("upstream broker refused a publish (reason code 0x%02x)", reason_code)
                self.warned = True
            if self.unacked.pop(mid, None) is not None:
                self.acked[mid] = now

    def settle(self) -> bool:
        """Records acknowledged and committed are published: advance the watermark over them."""
        inflight, acked, durable = self.inflight, self.acked, self.outbox.durable_seq
        last = None
        now = time.perf_counter()
        while inflight:
            row, mid = inflight[0]
            if row.seq > durable or (mid and mid not in acked):
                break  # not yet committed, or not yet acknowledged upstream
            inflight.popleft()
            done = acked.pop(mid) if mid else now
            last = row.seq
            if row.kind != "seen":
                self.published[row.kind].inc()
                self.upstream[row.kind].inc(len(row.payload))
            marks = self.service._latency.pop(row.seq, None)
            if marks is not None:
                self.service._observe_published(marks, done)
        if last is None:
            return False
        self.outbox.mark_published(last)
        return True

    def oldest_unacked(self) -> float | None:
        return next(iter(self.unacked.values()), None)


class _Slots:
    """Messages in flight at most: a slot is taken without a coroutine when one is free (from the socket's
    reader callback), else awaited."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._room = asyncio.Event()

    def try_take(self) -> bool:
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        while not self.try_take():
            self._room.clear()
            await self._room.wait()

    def release(self) -> None:
        self.free += 1
        self._room.set()


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
            # written: nothing but the source's acknowledgements waits for a commit; gathering more writes
            # per fsync saves the writer thread's CPU (0.2 ms per message at 1,000 msg/s without it)
            gather_seconds=WRITTEN_GATHER_SECONDS if config.publish_after == "written" else 0.0,
        )  # fmt: skip
        self.summary = Summary()
        self.in_flight = 0
        self._slots = _Slots(config.max_in_flight)
        self._tasks: list[asyncio.Task[None]] = []
        self._latency: dict[int, list[float]] = {}  # seq -> [received, result ready, durable (0: not yet)]
        self._protocols = {i: e.protocol for i, e in enumerate(config.sources)}
        self._stopping = False
        self._stage = {s: self.metrics.stage.labels(s) for s in STAGES}
        # what GET /v2/ingest reports per endpoint: connected, and the source's own lag where it has one
        self._connected: dict[str, bool] = {e.uri: False for e in [*config.sources, config.sink]}
        self._uplink: _Uplink | None = None  # the MQTT publisher while connected
        self.outbox.on_durable = self._on_durable
        self._source_lag: dict[
            str, float
        ] = {}  # receive time - the publisher's timestamp of the last message
        self.lag_records: dict[str, int] = {}  # Kafka: records in the topic not yet consumed (end - position)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        # The outbox's writer thread needs the GIL back after each fsync to hand the commit to the event
        # loop; with CPython's default 5 ms switch interval a busy loop delays every commit by up to 5 ms
        # (the to_durable p99). 1 ms bounds that wait at a small cost in switches.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
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

    def report(self) -> dict[str, Any]:
        """The stream's health in one JSON document (``GET /v2/ingest``, docs/streaming.md)."""
        ob = self.outbox
        sources = [
            {"uri": e.uri, "connected": self._connected.get(e.uri, False),
             "source_lag_seconds": self._source_lag.get(e.uri), "lag_records": self.lag_records.get(e.uri)}
            for e in self.config.sources
        ]  # fmt: skip
        sink = {"uri": self.config.sink.uri, "connected": self._connected.get(self.config.sink.uri, False)}
        return {
            "connected": all(s["connected"] for s in sources) and sink["connected"],
            "sources": sources,
            "sink": sink,
            "in_flight": self.in_flight,
            "pending_records": ob.pending_count,
            "pending_bytes": ob.pending_bytes,
            "lag_seconds": round(ob.oldest_pending_age(), 3),  # the oldest result not yet published upstream
            "last_seq": ob.last_seq,
            "published_seq": ob.watermark,
            "dropped": ob.dropped,
            "outbox_policy": ob.policy,
        }

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

    def mark_connected(self, uri: str, up: bool) -> None:
        self._connected[uri] = up

    def on_published(self, row: Any, now: float) -> None:
        """Accounting of one record acknowledged upstream (Kafka sink; the MQTT loop inlines it)."""
        if row.kind != "seen":
            self.metrics.published.labels(row.kind).inc()
            self.metrics.upstream_bytes.labels(row.kind).inc(len(row.payload))
        marks = self._latency.pop(row.seq, None)
        if marks is not None:
            self._observe_published(marks, now)

    def _observe_published(self, marks: list[float], acked: float) -> None:
        received, ready, durable = marks
        self._stage["to_published"].observe(acked - ready)
        self._stage["receive_to_published"].observe(acked - received)
        if durable and acked >= durable:  # published after its commit (durable mode, or a resend)
            self._stage["durable_to_published"].observe(acked - durable)

    async def _run_kafka_source(self, ep: MqttEndpoint) -> None:
        backoff = 0.1
        broker = f"{ep.host}:{ep.port}/{ep.topic}"

        def lag(n: int) -> None:
            self.lag_records[ep.uri] = n

        while not self._stopping:
            try:
                group = ep.group or f"{self.config.client_id}-{ep.topic}"  # stable across restarts
                source = KafkaSource(
                    ep, self._client_id(ep, "in"), group, self.config.max_in_flight, _Message, lag
                )
                async with source:
                    self.metrics.connected.labels("source", broker).set(1)
                    self._connected[ep.uri] = True
                    backoff = 0.1
                    await self._consume(ep, source)  # type: ignore[arg-type]
            except KafkaLinkError as exc:
                log.warning("source %s: %s; reconnecting in %.1fs", ep.uri, exc, backoff)
            except Exception:  # never let the source stop: uncommitted records come again
                log.exception("source %s failed; reconnecting in %.1fs", ep.uri, backoff)
            finally:
                self.metrics.connected.labels("source", broker).set(0)
                self._connected[ep.uri] = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_seconds)

    async def _run_source(self, index: int, ep: MqttEndpoint) -> None:
        if ep.scheme == "kafka":
            return await self._run_kafka_source(ep)
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
                    self._connected[ep.uri] = True
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
                self._connected[ep.uri] = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_seconds)

    async def _consume(self, ep: MqttEndpoint, client: _Client) -> None:
        session = _Session(ep)
        loop = asyncio.get_running_loop()
        acker = loop.create_task(self._ack_in_order(ep, client, session))
        acker.add_done_callback(lambda _: client.wake.set())
        client.watch_disconnect()
        disconnected, inbox = client._disconnected, client.inbox

        def dispatch(message: _Message) -> bool:
            """From the socket's reader: started at once when nothing waits before it and a slot is free."""
            if inbox or not self._slots.try_take():
                return False
            self._start(ep, message, session, loop)
            return True

        if isinstance(client, _Client):
            client.dispatch = dispatch
        try:
            while True:
                if acker.done():
                    acker.result()  # raises what stopped it
                if disconnected.done():
                    reason = None if disconnected.cancelled() else disconnected.exception()
                    raise aiomqtt.MqttError(f"disconnected from the source broker ({reason})")
                if not inbox:
                    client.wake.clear()
                    await client.wake.wait()
                    continue
                if not self._slots.try_take():
                    # the message stays first in the inbox meanwhile: the reader may not start a later one
                    await self._slots.take()
                self._start(ep, inbox.popleft(), session, loop)
        finally:
            if isinstance(client, _Client):
                client.dispatch = None
            # messages in flight still reach the outbox (they are redelivered anyway: not acknowledged)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._drain(session, acker), timeout=5.0)
            for task in (acker, session.waiting):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            left = session.taken - session.acked  # never acknowledged: the broker sends them again
            for _ in range(left):
                self._slots.release()
            self.in_flight -= left
            self.metrics.in_flight.set(self.in_flight)

    def _start(
        self, ep: MqttEndpoint, message: _Message, session: _Session, loop: asyncio.AbstractEventLoop
    ) -> None:
        """One message in (its slot taken): on its way to the model, in arrival order."""
        self.in_flight += 1
        session.taken += 1
        work = _Work(message, time.perf_counter())
        work.marks["wall"] = time.time()
        session.order.append(work)
        work.task = loop.create_task(self._process(ep, work, session))  # referenced till done

    async def _drain(self, session: _Session, acker: asyncio.Task[None]) -> None:
        while (session.order or not session.commits.empty()) and not acker.done():
            await asyncio.sleep(0.005)

    def _hand_over(self, session: _Session) -> None:
        """Hand the processed prefix of the session's messages to the outbox, in arrival order and several
        per commit, without waiting for the previous commit; called right after the loop iteration in which
        messages were processed (no task to wake; those processed together go in one write upstream). With
        ``--ingest-publish-after written`` the publisher sends them at once; :meth:`_ack_in_order`
        acknowledges them once durable."""
        if session.waiting is not None:
            return  # waiting for room: that task goes on from where it stopped
        order = session.order
        handed = False
        while order and order[0].ready:
            batch = []
            while order and order[0].ready:
                batch.append(order.popleft())
            records: list[Record] = []
            for work in batch:
                records.extend(work.records)
                if work.summary is not None:
                    self.summary.add(*work.summary)
            meta = {"summary": self.summary.dumps()} if self.config.filter == "events" else {}
            if not (records or meta):
                session.commits.put_nowait(_Handed(batch, None))
                continue
            fits, drop_for = self.outbox.try_reserve(records)
            if not fits:
                session.waiting = asyncio.get_running_loop().create_task(
                    self._hand_over_when_room(session, batch, records, meta)
                )
                break
            self._submit(session, batch, records, meta, drop_for)
            handed = True
        if handed and self._uplink is not None and self._early(session.ep):
            self._uplink.pump()

    async def _hand_over_when_room(
        self, session: _Session, batch: list[_Work], records: list[Record], meta: dict[str, str]
    ) -> None:
        try:
            drop_for = await self.outbox.reserve(records)
        except OutboxError as exc:  # closed: the messages are not acknowledged and come again
            log.warning("outbox: %s", exc)
            return
        self._submit(session, batch, records, meta, drop_for)
        session.waiting = None
        self._hand_over(session)
        if self._uplink is not None and self._early(session.ep):
            self._uplink.pump()

    def _early(self, ep: MqttEndpoint) -> bool:
        return self.config.publish_after == "written" and ep.scheme == "mqtt"

    def _submit(
        self, session: _Session, batch: list[_Work], records: list[Record], meta: dict[str, str],
        drop_for: tuple[int, int] | None,
    ) -> None:  # fmt: skip
        seqs, future = self.outbox.submit(records, meta, early=self._early(session.ep), drop_for=drop_for)
        i = 0
        for work in batch:
            ready = work.marks.get("done", work.received)
            for _ in work.records:
                if len(self._latency) < MAX_LATENCY_TRACKED:
                    self._latency[seqs[i]] = [work.received, ready, 0.0]
                i += 1
            work.seqs = seqs[i - len(work.records) : i]
        session.commits.put_nowait(_Handed(batch, future))

    async def _ack_in_order(self, ep: MqttEndpoint, client: _Client, session: _Session) -> None:
        """Acknowledge source messages in arrival order, each only once its results are durable; the
        acknowledgements of one group commit go out in one write."""
        to_durable = self._stage["to_durable"]
        commits = session.commits
        while True:
            handed = [await commits.get()]
            if handed[0].future is not None:
                await handed[0].future  # OutboxError (closing): nothing more is acknowledged
            while not commits.empty():
                nxt = commits._queue[0]  # type: ignore[attr-defined]
                if nxt.future is not None and not nxt.future.done():
                    break
                commits.get_nowait()
                if nxt.future is not None:
                    nxt.future.result()
                handed.append(nxt)
            durable = time.perf_counter()
            mids: list[int] = []
            outcomes: collections.Counter[str] = collections.Counter()
            n = 0
            for h in handed:
                for work in h.batch:
                    for seq in work.seqs:
                        marks = self._latency.get(seq)
                        if marks is not None:
                            marks[2] = durable
                    if work.message.qos > 0:
                        mids.append(work.message.mid)
                    outcomes[work.outcome] += 1
                    if "done" in work.marks:
                        to_durable.observe(durable - work.marks["done"])
                    self._slots.release()
                    n += 1
            client.ack_many(mids)  # one write for the whole group commit, never before it
            session.acked += n
            for outcome, k in outcomes.items():
                self.metrics.messages.labels(ep.topic, outcome).inc(k)
            self.in_flight -= n
            self.metrics.in_flight.set(self.in_flight)

    async def _process(self, ep: MqttEndpoint, work: _Work, session: _Session) -> None:
        await self._infer(ep, work)  # never raises but CancelledError (then nothing after it is acknowledged)
        work.ready = True
        # the messages processed in this loop iteration: handed over (and sent) at once
        if not session.scheduled:
            session.scheduled = True
            asyncio.get_running_loop().call_soon(self._hand_over_scheduled, session)

    def _hand_over_scheduled(self, session: _Session) -> None:
        session.scheduled = False
        self._hand_over(session)

    async def _infer(self, ep: MqttEndpoint, work: _Work) -> None:
        message = work.message
        payload = message.payload
        props = message.properties
        msg_id = props.get("id")
        name = ep.model or self.config.default_model or ""
        try:
            model = self.plane.model(name, ep.version)
            decoded = decode(ep, payload, props, [(s.name, s.datatype) for s in model.inputs])
            msg_id = decoded.msg_id
            if decoded.source_ts is not None:
                work.marks["source_ts"] = decoded.source_ts
                lag = max(0.0, work.marks["wall"] - decoded.source_ts)
                self._stage["source_to_receive"].observe(lag)
                self._source_lag[ep.uri] = lag
            if decoded.key is not None and message.dup and self.outbox.seen(decoded.key):
                work.outcome = "duplicate"  # its result is durable already: only the acknowledgement was lost
                return
            work.maybe_published = message.dup and ep.scheme == "mqtt"
            timings: dict[str, float] = {}
            started = time.perf_counter()
            self._stage["receive_to_infer"].observe(started - work.received)

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
            self._stage["batch_wait"].observe(timings.get("queue", 0.0))
            self._stage["compute"].observe(timings.get("compute", 0.0))
            self.metrics.result_bytes.inc(len(body))
            work.records = self._results(
                ep, message, decoded.msg_id, decoded.key, m, results, body, headers, work
            )
        except (DecodeError, NotFound, ServerError) as exc:
            work.outcome = (
                "failed" if type(exc) is ServerError or isinstance(exc, Unavailable) else "malformed"
            )
            work.maybe_published = message.dup and ep.scheme == "mqtt"
            work.records = [self._dead_letter(message, msg_id, str(exc), payload, None, work.maybe_published)]
        except Exception as exc:  # never let one message stop the stream
            log.exception("ingest of a message from %s failed", message.topic)
            work.outcome = "failed"
            work.maybe_published = message.dup and ep.scheme == "mqtt"
            work.records = [self._dead_letter(message, msg_id, f"internal error: {exc}", payload, None,
                                              work.maybe_published)]  # fmt: skip

    def _results(
        self, ep: MqttEndpoint, message: _Message, msg_id: str | None, key: str | None, model: Any,
        results: Any, body: bytes, headers: dict[str, str], work: _Work,
    ) -> list[Record]:  # fmt: skip
        props: dict[str, str] = {
            "source": str(message.topic),
            "model": model.name,
            "model_version": model.version,
        }
        if "source_ts" in work.marks:  # the publisher's timestamp, for end-to-end latency downstream
            props["source_ts"] = repr(work.marks["source_ts"])
        if HEADER_LENGTH in headers:
            props["inference_header_content_length"] = headers[HEADER_LENGTH]
        if work.maybe_published:
            props["redelivered"] = "1"
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
        self, message: _Message, msg_id: str | None, error: str, payload: bytes, key: str | None,
        redelivered: bool,
    ) -> Record:  # fmt: skip
        doc = {"kind": "dead_letter", "source": str(message.topic), "id": msg_id, "error": error,
               "payload_bytes": len(payload),
               "payload_base64": base64.b64encode(payload[:DEAD_LETTER_PAYLOAD_BYTES]).decode()}  # fmt: skip
        return Record(f"{self.config.sink.topic}/dead-letter", json.dumps(doc).encode(), "dead_letter", msg_id,
                      key, '{"redelivered": "1"}' if redelivered else None)  # fmt: skip

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
            if ep.scheme == "kafka":
                try:
                    self.metrics.connected.labels("sink", broker).set(1)
                    await kafka_publish_loop(
                        self, ep, self._client_id(ep, "out"), self.outbox.watermark, maybe_sent
                    )
                except KafkaLinkError as exc:
                    log.warning("publish to %s: %s; reconnecting in %.1fs", ep.uri, exc, backoff)
                finally:
                    self.metrics.connected.labels("sink", broker).set(0)
                maybe_sent = max(maybe_sent, self._sent_hi)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_seconds)
                continue
            client = self._client(ep, self._client_id(ep, "out"), protocol, None)
            sent = cursor
            try:
                async with client:
                    self.metrics.connected.labels("sink", broker).set(1)
                    self._connected[ep.uri] = True
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
                self._connected[ep.uri] = False
            cursor = self.outbox.watermark
            maybe_sent = max(maybe_sent, self._sent_hi, sent)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_seconds)

    _sent_hi = 0

    async def _publish_loop(self, client: _Client, protocol: str, cursor: int, maybe_sent: int) -> None:
        """Publish the outbox on this connection until it fails (:class:`_Uplink`). One wake-up event (a
        PUBACK, a commit, the disconnection): no task per record or per wait; records handed over in
        written mode and commits are sent at once by :meth:`_Uplink.pump` from where they happen."""
        uplink = _Uplink(self, client, protocol, cursor, maybe_sent)
        client.watch_disconnect()
        disconnected = client._disconnected
        self.outbox.wakers.add(client.wake)
        self._uplink = uplink
        loop = asyncio.get_running_loop()

        ticker: list[asyncio.TimerHandle] = []  # one timer, not a timeout per wait

        def tick() -> None:  # the idle flush and the PUBACK timeout are checked on this beat too
            client.wake.set()
            ticker[:] = [loop.call_later(PUBLISH_TICK_SECONDS, tick)]

        ticker.append(loop.call_later(PUBLISH_TICK_SECONDS, tick))
        try:
            while True:
                client.wake.clear()  # everything that happened before this is handled below
                if disconnected.done():
                    reason = None if disconnected.cancelled() else disconnected.exception()
                    raise aiomqtt.MqttError(f"disconnected from the upstream broker ({reason})")
                uplink.take_pubacks()
                uplink.pump()
                if uplink.settle():
                    continue
                if not uplink.inflight:
                    self.outbox.flush_watermark()
                else:
                    oldest = uplink.oldest_unacked()
                    if oldest is not None and time.monotonic() - oldest > ACK_TIMEOUT_SECONDS:
                        # MQTT resends an unacknowledged PUBLISH only on a new connection: make one
                        raise aiomqtt.MqttError(f"no PUBACK for a record in {ACK_TIMEOUT_SECONDS:.0f}s")
                await client.wake.wait()
        finally:
            ticker[0].cancel()
            self._uplink = None
            self.outbox.wakers.discard(client.wake)

    def _on_durable(self) -> None:
        """A commit: in durable mode its records may go now (no wait for the publisher's wake-up)."""
        if self._uplink is not None:
            self._uplink.pump()

    def _frame(self, row: Any, qos: int, mid: int, v5: bool, redelivered: bool) -> bytes:
        user = None
        if v5:
            user = [("kind", row.kind), ("seq", str(row.seq))]
            if row.msg_id is not None:
                user.append(("id", row.msg_id))
            extra = json.loads(row.props) if row.props else {}
            user.extend(extra.items())
            if redelivered and "redelivered" not in extra:
                user.append(("redelivered", "1"))
        if redelivered:
            self.metrics.republished.inc()
        return publish_frame(row.topic.encode(), row.payload, qos, mid, user)


def attach_ingest(app: Any, plane: Any, settings: Any) -> IngestService:
    """Start ingestion with the app (after the models load) and stop it before the data plane stops;
    ``GET /v2/ingest`` reports it (what the operator shows as ``status.ingest``)."""
    from aiohttp import web

    service = IngestService(plane, IngestConfig.from_settings(settings))

    async def report(request: web.Request) -> web.Response:
        return web.json_response(service.report())

    app.router.add_get("/v2/ingest", report)

    async def start(app: Any) -> None:
        await service.start()

    async def stop(app: Any) -> None:
        await service.stop(min(5.0, settings.drain_seconds))

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return service
