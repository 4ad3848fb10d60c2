"""The pure parts of ingestion (URIs, decoders, filter) and the outbox, without a broker."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from continuum_worker.ingest.decode import DecodeError, decode
from continuum_worker.ingest.filter import Summary, events_of
from continuum_worker.ingest.outbox import Outbox, OutboxError, Record
from continuum_worker.ingest.uri import EndpointError, parse_endpoint

ROOT = Path(__file__).resolve().parents[2]
INPUTS = [("INPUT0", "FP32")]


def test_endpoints_parse_and_errors_name_the_part() -> None:
    ep = parse_endpoint(
        "mqtt://broker:1884/line/+/features?decoder=raw&dtype=FP32&shape=-1,64&input=x", source=True
    )
    assert (ep.host, ep.port, ep.topic, ep.decoder, ep.dtype, ep.shape, ep.input, ep.qos, ep.protocol) == (
        "broker",
        1884,
        "line/+/features",
        "raw",
        "FP32",
        (-1, 64),
        "x",
        1,
        "5",
    )
    assert parse_endpoint("mqtt://b/r", source=False).port == 1883
    assert parse_endpoint("mqtt://b/line/#?qos=0", source=True).topic == "line/#"
    k = parse_endpoint("kafka://k/frames.cam-1?decoder=npy&group=line", source=True)
    assert (k.scheme, k.host, k.port, k.topic, k.decoder, k.group) == (
        "kafka",
        "k",
        9092,
        "frames.cam-1",
        "npy",
        "line",
    )
    assert parse_endpoint("kafka://k:9093/results", source=False).port == 9093
    cases = [
        ("kafka://k/line/#", True, "Kafka topic cannot hold the wildcards"),
        ("kafka://k/a b", True, "a Kafka topic is 1-249 of"),
        ("kafka://k/t?qos=1", True, "unknown option(s) ['qos']"),
        ("kafka://k/t?group=g", False, "unknown option(s) ['group']"),
        ("http://b:1/t", True, "scheme must be mqtt"),
        ("mqtt://b:1/", True, "no topic"),
        ("mqtt://b:1/t?colour=red", True, "unknown option(s) ['colour']"),
        ("mqtt://b:1/t?decoder=raw", True, "needs dtype="),
        ("mqtt://b:1/t?decoder=raw&dtype=FP32&shape=a", True, "shape=D0,D1"),
        ("mqtt://b:1/t?decoder=raw&dtype=FP32&shape=-1,-1", True, "at most one -1"),
        ("mqtt://b:1/t?dtype=FP32", True, "decoder=raw only"),
        ("mqtt://b:1/t?qos=2", True, "qos must be 0 or 1"),
        ("mqtt://b:1/t?protocol=4", True, "protocol must be 5 or 3.1.1"),
        ("mqtt://b:1/r/#", False, "wildcards"),
        ("mqtt://b:1/r?decoder=raw", False, "unknown option(s) ['decoder']"),
    ]
    for uri, source, text in cases:
        with pytest.raises(EndpointError) as info:
            parse_endpoint(uri, source=source)
        assert text in str(info.value) and uri in str(info.value), (uri, info.value)


def test_decoders() -> None:
    v2 = parse_endpoint("mqtt://b/t", source=True)
    body = json.dumps({"id": "a1", "ts": 1700000000.5, "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}).encode()  # fmt: skip
    d = decode(v2, body, {}, INPUTS)
    assert d.msg_id == "a1" and d.source_ts == 1700000000.5 and d.key is not None
    assert d.request.inputs["INPUT0"].tolist() == [[1.0, 2.0]]
    # the id may come from a user property; without any id there is no dedup key
    body2 = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1]}]}
    ).encode()
    assert decode(v2, body2, {"id": "p7", "ts": "12.5"}, INPUTS).request.id == "p7"
    assert decode(v2, body2, {}, INPUTS).key is None
    raw = parse_endpoint("mqtt://b/t?decoder=raw&dtype=INT16&shape=-1,3", source=True)
    arr = decode(raw, np.arange(6, dtype="<i2").tobytes(), {}, INPUTS).request.inputs["INPUT0"]
    assert arr.dtype == np.int16 and arr.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DecodeError, match="do not fit shape"):
        decode(raw, np.arange(5, dtype="<i2").tobytes(), {}, INPUTS)
    npy = parse_endpoint("mqtt://b/t?decoder=npy", source=True)
    buf = io.BytesIO()
    np.save(buf, np.ones((2, 4), dtype=np.float32))
    assert decode(npy, buf.getvalue(), {}, INPUTS).request.inputs["INPUT0"].shape == (2, 4)
    with pytest.raises(DecodeError, match=r"not a \.npy array"):
        decode(npy, b"\x93NUMPY garbage", {}, INPUTS)
    with pytest.raises(DecodeError, match="source needs input=NAME"):
        decode(npy, buf.getvalue(), {}, [("a", "FP32"), ("b", "FP32")])
    named = parse_endpoint("mqtt://b/t?decoder=npy&input=zz", source=True)
    with pytest.raises(DecodeError, match="'zz' is not an input"):
        decode(named, buf.getvalue(), {}, INPUTS)


def test_events_and_summary() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [0.1, 0.2, 0.15]], dtype=np.float32)
    events, counts = events_of("m", "id1", {"OUT": logits}, 0.9, batched=True)
    assert [(e["row"], e["class"], e["id"]) for e in events] == [(0, 0, "id1")]
    assert counts == {"m/OUT/class/0": 1, "m/OUT/class/1": 1, "m/rows": 2}
    s = Summary(since=5.0)
    s.add(counts, len(events))
    again = Summary.loads(s.dumps())
    assert again == s
    doc = json.loads(again.close(6.0))
    assert doc["messages"] == 1 and doc["events"] == 1 and doc["counts"]["m/rows"] == 2


async def test_outbox_is_durable_ordered_and_deduplicates(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    seqs = await box.put([Record("t", b"a", "result", "i1", "k1"), Record("t", b"bb", "result", "i2", "k2")],
                         {"summary": "x"})  # fmt: skip
    seqs += await box.put([Record("t", b"ccc", "result", "i3", None)])
    assert seqs == [1, 2, 3] and box.pending_count == 3 and box.pending_bytes == 6
    assert box.seen("k1") and not box.seen("k3")
    with pytest.raises(OutboxError, match="in use by another process"):
        Outbox(tmp_path).open()
    box.mark_published(1)
    await box.close()
    again = Outbox(tmp_path)
    again.open()
    assert again.watermark == 1 and again.pending_count == 2 and again.meta["summary"] == "x"
    assert [r.payload for r in again.read(again.watermark, 10)] == [b"bb", b"ccc"]
    assert again.seen("k1")  # published records stay for deduplication
    await again.close()


async def test_outbox_full_block_waits_and_drop_oldest_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b", max_messages=2)
    box.open()
    await box.put([Record("t", b"1", "result"), Record("t", b"2", "result")])
    blocked = asyncio.create_task(box.put([Record("t", b"3", "result")]))
    await asyncio.sleep(0.1)
    assert not blocked.done() and box.metrics.full_waits._value.get() == 1
    box.mark_published(1)
    assert await asyncio.wait_for(blocked, 2) == [3]
    await box.close()
    drop = Outbox(tmp_path / "d", max_messages=3, policy="drop-oldest")
    drop.open()
    for i in range(5):
        await drop.put([Record("t", str(i).encode(), "result")])
    await asyncio.sleep(0.05)
    left = [r.payload for r in drop.read(0, 10)]
    assert drop.dropped == 2 and left == [b"2", b"3", b"4"] and drop.pending_count == 3
    await drop.close()
    reopened = Outbox(tmp_path / "d", max_messages=3, policy="drop-oldest")
    reopened.open()
    assert [r.payload for r in reopened.read(reopened.watermark, 10)] == [b"2", b"3", b"4"]
    await reopened.close()


async def test_outbox_early_records_are_read_before_their_commit_in_order(tmp_path: Path) -> None:
    """``early`` records may be read before their commit, never past an older record that may not; the
    watermark never passes the commit; a failed commit is retried with the same sequence numbers."""
    box = Outbox(tmp_path)
    box.open()
    gate = threading.Event()
    failures = [sqlite3.OperationalError("disk I/O error")]
    commit = box._commit

    def held(db: Any, jobs: Any) -> Any:
        gate.wait(10)
        if failures:
            raise failures.pop()
        return commit(db, jobs)

    box._commit = held  # type: ignore[method-assign]
    s1, f1 = box.submit([Record("t", b"a", "result", "1", "k1")], early=True)
    s2, f2 = box.submit([Record("t", b"b", "result", "2", "k2")])  # not early: what follows waits behind it
    s3, f3 = box.submit([Record("t", b"c", "result", "3", "k3")], early=True)
    assert (s1, s2, s3) == ([1], [2], [3]) and box.last_seq == 3 and box.durable_seq == 0
    assert [r.seq for r in box.read(0, 10, early=True)] == [1]
    assert box.read(0, 10) == [] and box.read(1, 10, early=True) == []
    assert box.pending_count == 3 and not box.seen("k1")
    with pytest.raises(OutboxError, match="before its commit"):
        box.mark_published(1)
    gate.set()
    await asyncio.wait_for(asyncio.gather(f1, f2, f3), 10)  # after one failed attempt
    assert not failures and box.durable_seq == 3 and box.seen("k1")
    assert [r.payload for r in box.read(0, 10)] == [b"a", b"b", b"c"]
    box.mark_published(3)
    assert box.pending_count == 0
    await box.close()
    again = Outbox(tmp_path)
    again.open()
    assert again.watermark == 3 and again.last_seq == 3  # no gap, nothing lost to the failure
    await again.close()


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT / "inference-worker"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "continuum_worker.cli", "serve", "--model-name", "m",
                           "--model-uri", "/nonexistent.onnx", "--grpc-port", "0", *args],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip


def test_configuration_errors_exit_2_naming_the_flag(tmp_path: Path) -> None:
    bad = _serve("--ingest", "mqtt://b:1/t?decoder=raw")
    assert bad.returncode == 2 and "--ingest" in bad.stderr and "needs dtype=" in bad.stderr
    no_sink = _serve("--ingest", "mqtt://b:1/t", "--outbox-dir", str(tmp_path))
    assert no_sink.returncode == 2 and "--ingest needs --publish" in no_sink.stderr
    no_dir = _serve("--ingest", "mqtt://b:1/t", "--publish", "mqtt://b:1/r")
    assert no_dir.returncode == 2 and "--outbox-dir or --state-dir" in no_dir.stderr
    unused = _serve("--publish", "mqtt://b:1/r", "--outbox-full-policy", "drop-oldest")
    assert unused.returncode == 2 and "--publish, --outbox-full-policy need --ingest" in unused.stderr


async def test_reader_started_messages_keep_arrival_order_when_slots_run_out(tmp_path: Path) -> None:
    """A PUBLISH starts from the socket's reader only when nothing waits before it: while the consuming
    task waits for an in-flight slot with an older message, a newer one freed a slot for must queue."""
    from types import SimpleNamespace

    from continuum_worker.ingest.service import IngestConfig, IngestService, _Client, publish_frame
    from prometheus_client import CollectorRegistry

    config = IngestConfig(sources=[parse_endpoint("mqtt://127.0.0.1:1/in", source=True)],
                          sink=parse_endpoint("mqtt://127.0.0.1:1/out", source=False), directory=tmp_path,
                          default_model="m", max_in_flight=1)  # fmt: skip
    service = IngestService(SimpleNamespace(metrics=SimpleNamespace(registry=CollectorRegistry())), config)
    started: list[int] = []
    done = asyncio.Event()

    async def process(ep: Any, work: Any, session: Any) -> None:
        started.append(work.message.mid)

    async def ack(ep: Any, client: Any, session: Any) -> None:
        await done.wait()

    service._process = process  # type: ignore[method-assign]
    service._ack_in_order = ack  # type: ignore[method-assign]
    client = _Client("127.0.0.1", 1, identifier="t", protocol=_protocol_v5())

    def arrive(mid: int) -> None:  # as the reader does: parsed from the packet, then started or queued
        frame = publish_frame(b"in", b"{}", 1, mid, [])
        client._client._in_packet = {"command": frame[0], "packet": frame[2:]}
        client._handle_publish()

    consuming = asyncio.create_task(service._consume(config.sources[0], client))
    await asyncio.sleep(0)
    arrive(1)  # a free slot: started from the reader
    arrive(2)  # none: queued, and the consuming task waits for a slot with it
    for _ in range(3):
        await asyncio.sleep(0)
    assert started == [1]
    service._slots.release()  # a slot comes free; the consuming task has not run yet
    arrive(3)  # must not overtake 2
    for _ in range(5):
        await asyncio.sleep(0)
    service._slots.release()
    for _ in range(5):
        await asyncio.sleep(0)
    assert started == [1, 2, 3]
    done.set()
    await asyncio.sleep(0)
    consuming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consuming


def _protocol_v5() -> Any:
    import aiomqtt

    return aiomqtt.ProtocolVersion.V5
