"""Kafka as a source and as the results sink (aiokafka), beside MQTT: ``kafka://HOST:PORT/TOPIC``.

Source: a consumer in group ``group`` (default: ``CLIENT_ID-TOPIC``, CLIENT_ID from
``--mqtt-client-id`` or ``continuum-REPLICA``) with auto-commit off. Records
feed the same path as MQTT messages (decoders, dynamic batcher, outbox in arrival order); a partition's
offset is committed only after the results of every record up to it are durable in the outbox
(at-least-once: a SIGKILL re-reads from the last commit, and records whose result is already durable
are recognised by their id and payload and not answered twice). Headers are the message's properties
(``id``, ``ts``); without an ``id`` header the record key is the id; without a ``ts`` header the
record's CreateTime is the source timestamp (the producer's clock).

Sink: an idempotent producer (``acks=all``) publishing the outbox in sequence order with a window of
sends; the watermark advances over the acknowledged prefix. MQTT topics' ``/`` become ``.`` (Kafka topic
names): ``TOPIC.summary``, ``TOPIC.dead-letter``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from continuum_worker.ingest.uri import MqttEndpoint

log = logging.getLogger("continuum.worker.ingest")


class KafkaLinkError(RuntimeError):
    """The Kafka broker cannot be reached or refused us: reconnect with backoff."""


def _aiokafka() -> Any:
    try:
        import aiokafka
    except ImportError as exc:  # pragma: no cover - a dependency of the worker
        raise KafkaLinkError("kafka:// needs aiokafka (pip install aiokafka)") from exc
    return aiokafka


def kafka_topic(topic: str) -> str:
    return topic.replace("/", ".")


class KafkaSource:
    """One consumer; what :meth:`IngestService._consume` needs of a source connection: ``inbox``,
    ``wake``, ``_disconnected``, :meth:`watch_disconnect` and :meth:`ack_many`."""

    def __init__(
        self, ep: MqttEndpoint, client_id: str, group: str, limit: int, message_type: Any,
        on_lag: Callable[[int], None],
    ) -> None:  # fmt: skip
        self.ep, self.client_id, self.group, self.limit = ep, client_id, group, limit
        self.message_type = message_type
        self.on_lag = on_lag
        self.inbox: collections.deque[Any] = collections.deque()
        self.wake = asyncio.Event()
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._positions: dict[int, tuple[Any, int]] = {}  # message id -> (TopicPartition, offset)
        self._next_mid = 0
        self._commit: dict[Any, int] = {}  # TopicPartition -> next offset, durable and to be committed
        self._commit_wake = asyncio.Event()
        self._consumed: dict[Any, int] = {}  # TopicPartition -> last offset taken
        self._tasks: list[asyncio.Task[None]] = []
        self.consumer: Any = None

    async def __aenter__(self) -> KafkaSource:
        aiokafka = _aiokafka()
        self.consumer = aiokafka.AIOKafkaConsumer(
            self.ep.topic, bootstrap_servers=f"{self.ep.host}:{self.ep.port}", client_id=self.client_id,
            group_id=self.group, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=self.limit, request_timeout_ms=10_000, retry_backoff_ms=200,
            fetch_max_wait_ms=10,  # the broker answers an empty fetch after this: a latency bound, not 500 ms
        )  # fmt: skip
        try:
            await self.consumer.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            raise KafkaLinkError(
                f"cannot start a consumer of {self.ep.uri}: {type(exc).__name__}: {exc}"
            ) from exc
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._fetch()), loop.create_task(self._committer())]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._flush_commits()  # what became durable meanwhile
        with contextlib.suppress(Exception):
            await self.consumer.stop()

    def watch_disconnect(self) -> None:
        self._disconnected.add_done_callback(lambda _: self.wake.set())

    def _fail(self, exc: BaseException) -> None:
        if not self._disconnected.done():
            self._disconnected.set_exception(KafkaLinkError(f"{type(exc).__name__}: {exc}"))
        self.wake.set()

    async def _fetch(self) -> None:
        try:
            while True:
                room = self.limit - len(self.inbox)
                if room <= 0:
                    await asyncio.sleep(0.002)
                    continue
                batches = await self.consumer.getmany(timeout_ms=200, max_records=room)
                for tp, records in batches.items():
                    for r in records:
                        self._take(tp, r)
                if batches:
                    self.wake.set()
                    lag = 0
                    for tp, last in self._consumed.items():
                        high = self.consumer.highwater(tp)
                        if high is not None:
                            lag += max(0, high - last - 1)
                    self.on_lag(lag)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("consuming %s failed: %s", self.ep.uri, exc)
            self._fail(exc)

    def _take(self, tp: Any, r: Any) -> None:
        props: dict[str, str] = {}
        for k, v in r.headers or ():
            props[str(k)] = v.decode(errors="replace") if isinstance(v, bytes | bytearray) else str(v)
        if "id" not in props and r.key:
            props["id"] = r.key.decode(errors="replace")
        if "ts" not in props and r.timestamp_type == 0 and r.timestamp:  # CreateTime: the producer's clock
            props["ts"] = repr(r.timestamp / 1000)
        self._next_mid += 1
        self._positions[self._next_mid] = (tp, r.offset)
        self._consumed[tp] = r.offset
        # dup: a re-read after a restart cannot be told from a first read: every record with an id is looked up
        self.inbox.append(self.message_type(r.topic, r.value or b"", 1, self._next_mid, True, props))

    def ack_many(self, mids: list[int]) -> None:
        """The results of these records are durable: commit their partitions' offsets past them."""
        for mid in mids:
            tp, offset = self._positions.pop(mid)
            if offset + 1 > self._commit.get(tp, -1):
                self._commit[tp] = offset + 1
        if mids:
            self._commit_wake.set()

    async def _committer(self) -> None:
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            try:
                await self._flush_commits()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a rebalance or an outage: the records come again and are recognised
                log.warning("committing offsets of %s failed: %s", self.ep.uri, exc)
                await asyncio.sleep(0.2)

    async def _flush_commits(self) -> None:
        if self._commit:
            offsets, self._commit = self._commit, {}
            try:
                await self.consumer.commit(offsets)
            except BaseException:
                for tp, off in offsets.items():  # keep them for the next try (unless newer ones arrived)
                    self._commit[tp] = max(off, self._commit.get(tp, -1))
                raise


async def kafka_publish_loop(
    service: Any, ep: MqttEndpoint, client_id: str, cursor: int, maybe_sent: int
) -> None:
    """Publish the outbox from ``cursor`` to Kafka until an error (then the caller reconnects)."""
    aiokafka = _aiokafka()
    producer = aiokafka.AIOKafkaProducer(
        bootstrap_servers=f"{ep.host}:{ep.port}", client_id=client_id, acks="all", enable_idempotence=True,
        linger_ms=0, request_timeout_ms=10_000, retry_backoff_ms=200,
    )  # fmt: skip
    try:
        await producer.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise KafkaLinkError(f"cannot start a producer for {ep.uri}: {type(exc).__name__}: {exc}") from exc
    outbox, metrics = service.outbox, service.metrics
    wake = asyncio.Event()
    outbox.wakers.add(wake)
    service.mark_connected(ep.uri, True)
    window = service.config.publish_window
    inflight: collections.deque[tuple[Any, asyncio.Future[Any] | None]] = collections.deque()
    after = cursor
    try:
        while True:
            wake.clear()
            if len(inflight) < window:
                for row in outbox.read(after, window - len(inflight)):
                    after = row.seq
                    fut = None
                    if row.kind != "seen":
                        headers = [("kind", row.kind.encode()), ("seq", str(row.seq).encode())]
                        if row.msg_id is not None:
                            headers.append(("id", row.msg_id.encode()))
                        extra = json.loads(row.props) if row.props else {}
                        headers.extend((k, str(v).encode()) for k, v in extra.items())
                        if row.seq <= maybe_sent and "redelivered" not in extra:
                            headers.append(("redelivered", b"1"))
                            metrics.republished.inc()
                        key = row.msg_id.encode() if row.msg_id is not None else None
                        fut = await producer.send(
                            kafka_topic(row.topic), row.payload, key=key, headers=headers
                        )
                        fut.add_done_callback(lambda _: wake.set())
                    inflight.append((row, fut))
                    service._sent_hi = max(service._sent_hi, row.seq)
            last = None
            while inflight and (inflight[0][1] is None or inflight[0][1].done()):
                row, fut = inflight.popleft()
                if fut is not None:
                    fut.result()  # raises a send that failed: reconnect and resend from the watermark
                last = row.seq
                service.on_published(row, time.perf_counter())
            if last is not None:
                outbox.mark_published(last)
                continue
            if not inflight:
                outbox.flush_watermark()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2 if not inflight else 1.0):
                    await wake.wait()
    except Exception as exc:
        if isinstance(exc, KafkaLinkError):
            raise
        raise KafkaLinkError(f"publishing to {ep.uri}: {type(exc).__name__}: {exc}") from exc
    finally:
        outbox.wakers.discard(wake)
        service.mark_connected(ep.uri, False)
        with contextlib.suppress(Exception):
            await producer.stop()
