"""MQTT 3.1.1: explicitly (``?protocol=3.1.1``) and by the automatic fallback from MQTT 5.

Mosquitto cannot be configured to refuse MQTT 5, so the fallback test puts a small TCP front in front of
the real Mosquitto that behaves as a 3.1.1-only broker does at the handshake (MQTT 3.1.1 §3.1.2.2: a
CONNECT with an unsupported protocol level gets CONNACK return code 0x01, then the connection closes)
and passes every 3.1.1 connection through to Mosquitto untouched. What is tested: the worker's first
MQTT 5 CONNECT is refused that way, it reconnects with 3.1.1 on its own, and every result arrives (with
no MQTT 5 user properties: the v2 response's ``id`` identifies it)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from tests.ingest.conftest import Broker, free_port
from tests.ingest.test_stream import (
    Collector,
    base_args,
    check_complete,
    http_port,
    metric,
    metrics,
    publish,
    request,
    subscribed,
    wait_ready,
)  # fmt: skip


class Mqtt311Front:
    """Refuses MQTT 5 CONNECTs as a 3.1.1-only broker does; pipes 3.1.1 connections to the real broker."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.refused = 0
        self.passed = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(1)
            length, mult, raw = 0, 1, b""
            while True:
                b = await reader.readexactly(1)
                raw += b
                length += (b[0] & 0x7F) * mult
                mult *= 128
                if not b[0] & 0x80:
                    break
            body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        name_len = int.from_bytes(body[0:2], "big")
        level = body[2 + name_len]
        if head[0] >> 4 != 1 or level != 4:  # not a 3.1.1 CONNECT: "unacceptable protocol version"
            self.refused += 1
            writer.write(b"\x20\x02\x00\x01")
            await writer.drain()
            writer.close()
            return
        self.passed += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}
        up_writer.write(head + raw + body)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def url(self, topic: str) -> str:
        return f"mqtt://127.0.0.1:{self.port}/{topic}"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in self.writers:
                w.transport.abort()
            await asyncio.sleep(0.05)  # the transports' connection_lost callbacks

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def test_explicit_mqtt_311_end_to_end(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    args = base_args(mlp_model, tmp_path, source_broker, upstream_broker)
    args[args.index("--ingest") + 1] = source_broker.url("line/+/features", protocol="3.1.1")
    args[args.index("--publish") + 1] = upstream_broker.url("results", protocol="3.1.1")
    w = worker_factory(*args)
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    async with Collector(upstream_broker, "results") as results:
        await publish(source_broker, "line/cam1/features", [request(i, "cam1") for i in range(200)])
        await results.wait_for(200, 20)
    check_complete(results, {"cam1": 200})
    assert all(not getattr(m.properties, "UserProperty", None) for m in results.messages)  # 3.1.1: none


async def test_fallback_to_311_when_the_broker_refuses_mqtt_5(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    src, up = Mqtt311Front(source_broker.port), Mqtt311Front(upstream_broker.port)
    try:
        args = base_args(mlp_model, tmp_path, source_broker, upstream_broker)
        args[args.index("--ingest") + 1] = src.url("line/+/features")  # default protocol: 5, then 3.1.1
        args[args.index("--publish") + 1] = up.url("results")
        w = worker_factory(*args)
        w.start()
        await wait_ready(w)
        await subscribed(w, "line/+/features")
        async with Collector(upstream_broker, "results") as results:
            await publish(source_broker, "line/cam1/features", [request(i, "cam1") for i in range(200)])
            await results.wait_for(200, 20)
        check_complete(results, {"cam1": 200})
        assert src.refused >= 1 and src.passed >= 1 and up.refused >= 1 and up.passed >= 1
        assert "falling back to 3.1.1" in Path(w.log).read_text()
        assert metric(metrics(http_port(w)), "continuum_ingest_messages_total", source="line/+/features",
                      outcome="ok") == 200  # fmt: skip
    finally:
        src.close()
        up.close()
