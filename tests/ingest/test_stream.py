"""Streaming through a real Mosquitto: end to end, decoders, dead letters, uplink cut, SIGKILL."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.ingest.conftest import Broker, Link

FEATURES = 64


def request(i: int, source: str = "s") -> bytes:
    rng = np.random.default_rng(i)
    data = rng.standard_normal(FEATURES).astype(np.float32).round(4).tolist()
    return json.dumps({"id": f"{source}-{i}", "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, FEATURES],
                                                             "data": data}]}).encode()  # fmt: skip


class Collector:
    """A persistent-session subscriber of the upstream broker; survives its restarts."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.broker, self.topic = broker, topic
        self.messages: list[aiomqtt.Message] = []
        self.task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"collector-{self.topic}",
                                          protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                                          properties=props) as client:  # fmt: skip
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for m in client.messages:
                        self.messages.append(m)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    async def __aenter__(self) -> Collector:
        self.task = asyncio.get_running_loop().create_task(self.run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.messages]

    async def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def wait_for_distinct(self, n: int, timeout: float) -> None:
        """``n`` different ids (duplicate copies, marked, do not count)."""
        deadline = time.monotonic() + timeout
        while len({props(m).get("id") for m in self.messages}) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def props(m: aiomqtt.Message) -> dict[str, str]:
    return dict(getattr(m.properties, "UserProperty", []) or [])


async def publish(broker: Broker, topic: str, payloads: list[bytes], rate: float = 0.0,
                  user: list[dict[str, str]] | None = None) -> None:  # fmt: skip
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5,
                              max_inflight_messages=500) as client:  # fmt: skip
        start = time.monotonic()
        for i, body in enumerate(payloads):
            p = None
            if user is not None:
                p = Properties(PacketTypes.PUBLISH)
                p.UserProperty = list(user[i].items())
            await client.publish(topic, body, qos=1, properties=p)
            if rate:
                delay = start + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")) and (not labels or all(
                f'{k}="{v}"' in line for k, v in labels.items())):  # fmt: skip
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


def http_port(worker: Any) -> int:
    return int(worker.args[worker.args.index("--port") + 1])


async def wait_ready(worker: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    port = http_port(worker)
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, Path(worker.log).read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError("worker not ready")


async def subscribed(worker: Any, topic: str, timeout: float = 15) -> None:
    """The worker's source session is connected and subscribed."""
    port = http_port(worker)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = metrics(port)
            if any(line.startswith("continuum_ingest_broker_connected{") and f"/{topic}\"" in line
                   and 'role="source"' in line and line.endswith(" 1.0") for line in text.splitlines()):  # fmt: skip
                return
        except (OSError, AssertionError):
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("the worker did not connect to the source broker")


def base_args(model: Path, tmp: Path, source: Broker, upstream: Broker, *extra: str) -> list[str]:
    return ["--model-name", "mlp", "--model-uri", str(model), "--max-batch-size", "32",
            "--ingest", source.url("line/+/features"), "--publish", upstream.url("results"),
            "--outbox-dir", str(tmp / "outbox"), "--mqtt-client-id", f"w{tmp.name[-6:]}", *extra]  # fmt: skip


def ordered_ids(payloads: list[dict[str, Any]], prefix: str) -> list[int]:
    """Per source, the ids in first-arrival order (duplicates are allowed, marked; order is not negotiable)."""
    seen: list[int] = []
    for p in payloads:
        pid = p.get("id", "")
        if pid.startswith(prefix + "-"):
            n = int(pid.rsplit("-", 1)[1])
            if n not in seen:
                seen.append(n)
    return seen


async def test_end_to_end_v2_json_results_match_http(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    w = worker_factory(*base_args(mlp_model, tmp_path, source_broker, upstream_broker))
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    async with Collector(upstream_broker, "results") as results:
        n = 200
        await publish(source_broker, "line/cam1/features", [request(i, "cam1") for i in range(n)],
                      user=[{"ts": f"{time.time():.6f}"} for _ in range(n)])  # fmt: skip
        await results.wait_for(n, 20)
    got = results.payloads()
    assert ordered_ids(got, "cam1") == list(range(n))
    # the published answer is the v2 response, equal to the HTTP answer for the same request
    body = request(7, "cam1")
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port(w)}/v2/models/mlp/infer", data=body, method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        direct = json.loads(r.read())
    streamed = next(p for p in got if p["id"] == "cam1-7")
    assert streamed["outputs"][0]["data"] == pytest.approx(direct["outputs"][0]["data"], rel=1e-5)
    first = results.messages[0]
    assert props(first)["source"] == "line/cam1/features" and props(first)["id"] == "cam1-0"
    # a result may be upstream before its commit (--ingest-publish-after written): the counters follow it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = metrics(http_port(w))
        if metric(text, "continuum_ingest_outbox_published_seq") == n and metric(
            text, "continuum_ingest_messages_total", source="line/+/features", outcome="ok"
        ) == n:
            break
        await asyncio.sleep(0.05)
    assert metric(text, "continuum_ingest_messages_total", source="line/+/features", outcome="ok") == n
    for stage in ("source_to_receive", "receive_to_infer", "batch_wait", "compute", "to_durable",
                  "to_published", "receive_to_published"):  # fmt: skip
        assert metric(text, "continuum_ingest_stage_seconds_count", stage=stage) >= n - 1, stage
    assert metric(text, "nv_inference_request_success", model="mlp", version="1") >= n
    # what the operator shows as status.ingest
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port(w)}/v2/ingest", timeout=5) as r:
        report = json.loads(r.read())
    assert report["connected"] is True and report["sources"][0]["connected"] and report["sink"]["connected"]
    assert report["pending_records"] == 0 and report["lag_seconds"] == 0 and report["published_seq"] == n
    assert 0 <= report["sources"][0]["source_lag_seconds"] < 60
    assert w.terminate() == 0


async def test_raw_and_npy_decoders_and_dead_letters(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    w = worker_factory(
        "--model-name", "mlp", "--model-uri", str(mlp_model), "--outbox-dir", str(tmp_path / "ob"),
        "--ingest", source_broker.url("raw", decoder="raw", dtype="FP32", shape="-1,64"),
        "--ingest", source_broker.url("npy", decoder="npy"),
        "--ingest", source_broker.url("v2"),
        "--publish", upstream_broker.url("out"), "--mqtt-client-id", "dec",
    )  # fmt: skip
    w.start()
    await wait_ready(w)
    for topic in ("raw", "npy", "v2"):
        await subscribed(w, topic)
    x = np.random.default_rng(1).standard_normal((3, FEATURES)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x[:1])
    async with (
        Collector(upstream_broker, "out") as results,
        Collector(upstream_broker, "out/dead-letter") as dead,
    ):
        await publish(source_broker, "raw", [x.astype("<f4").tobytes()], user=[{"id": "raw-1"}])
        await publish(source_broker, "npy", [buf.getvalue()], user=[{"id": "npy-1"}])
        bad = [b"not json", b'{"inputs": []}', json.dumps({"id": "w", "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}).encode()]  # fmt: skip
        await publish(source_broker, "v2", bad)
        await publish(source_broker, "raw", [b"\x00" * 10])  # not whole FP32 elements
        await publish(source_broker, "v2", [request(5, "after")])  # the worker keeps running
        await results.wait_for(3, 15)
        await dead.wait_for(4, 15)
    by_id = {p["id"]: p for p in results.payloads()}
    assert by_id["raw-1"]["outputs"][0]["shape"] == [3, 10]
    assert by_id["npy-1"]["outputs"][0]["shape"] == [1, 10]
    assert "after-5" in by_id
    errors = [p["error"] for p in dead.payloads()]
    assert len(errors) == 4
    assert any("not valid JSON" in e for e in errors) and any("non-empty 'inputs'" in e for e in errors)
    assert any("whole number of FP32" in e for e in errors) and any("INPUT0" in e for e in errors)
    deadline = time.monotonic() + 10  # counted once committed: a dead letter may be upstream before that
    while True:
        text = metrics(http_port(w))
        try:
            counts = [metric(text, "continuum_ingest_messages_total", source=t, outcome="malformed") for t in ("v2", "raw")]
        except AssertionError:  # not counted yet
            counts = []
        if counts == [3, 1] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert metric(text, "continuum_ingest_messages_total", source="v2", outcome="malformed") == 3
    assert metric(text, "continuum_ingest_messages_total", source="raw", outcome="malformed") == 1
    assert w.proc.poll() is None


def check_complete(results: Collector, sources: dict[str, int]) -> None:
    """Every result arrived, in order per source; any duplicate is marked redelivered."""
    got = results.payloads()
    for source, n in sources.items():
        assert ordered_ids(got, source) == list(range(n)), source
    seen: set[str] = set()
    for m, p in zip(results.messages, got, strict=True):
        if p["id"] in seen:
            assert props(m).get("redelivered") == "1", p["id"]
        seen.add(p["id"])


async def test_uplink_cut_every_result_arrives_in_order(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    link = Link(upstream_broker.port)  # the worker reaches the upstream broker only through it
    args = base_args(mlp_model, tmp_path, source_broker, upstream_broker)
    args[args.index("--publish") + 1] = link.url("results")
    w = worker_factory(*args)
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    n, rate = 1200, 200.0  # 6 s per source, the uplink is cut from 1 s to 4 s
    try:
        async with Collector(upstream_broker, "results") as results:
            feeds = [asyncio.create_task(publish(source_broker, f"line/{cam}/features",
                                                 [request(i, cam) for i in range(n)], rate=rate))
                     for cam in ("cam1", "cam2")]  # fmt: skip
            await asyncio.sleep(1.0)
            link.cut()
            await asyncio.sleep(3.0)
            text = metrics(http_port(w))
            assert metric(text, "continuum_ingest_outbox_pending") > 100  # results queue on the volume
            assert metric(text, "continuum_ingest_broker_connected", role="sink") == 0
            link.restore()
            await asyncio.gather(*feeds)
            await results.wait_for_distinct(2 * n, 25)
        check_complete(results, {"cam1": n, "cam2": n})
        # the last PUBACKs may reach the worker after the subscriber has the messages: wait for them while the
        # link is still up (closing it first would strand the last records; they would be resent only on a new
        # connection, which a closed link refuses)
        for _ in range(150):
            text = metrics(http_port(w))
            if metric(text, "continuum_ingest_outbox_pending") == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        link.close()
    assert metric(text, "continuum_ingest_outbox_pending") == 0, {
        k: metric(text, k)
        for k in (
            "continuum_ingest_outbox_last_seq",
            "continuum_ingest_outbox_published_seq",
            "continuum_ingest_republished_total",
            "continuum_ingest_in_flight",
        )
    }
    assert metric(text, "continuum_ingest_messages_total", source="line/+/features", outcome="ok") == 2 * n


async def test_upstream_broker_restart_is_survived(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    """The upstream broker itself restarts: the worker reconnects and publishes what queued meanwhile.
    (Messages are sent only after the restart: Mosquitto's own loss of what it held is not the worker's.)"""
    w = worker_factory(*base_args(mlp_model, tmp_path, source_broker, upstream_broker))
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    upstream_broker.stop()
    await publish(source_broker, "line/cam1/features", [request(i, "cam1") for i in range(300)])
    await asyncio.sleep(1.0)
    assert metric(metrics(http_port(w)), "continuum_ingest_outbox_pending") == 300
    upstream_broker.start()
    async with Collector(upstream_broker, "results") as results:
        await results.wait_for(300, 20)
    check_complete(results, {"cam1": 300})


async def test_sigkill_mid_stream_loses_nothing(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    args = base_args(mlp_model, tmp_path, source_broker, upstream_broker)
    w = worker_factory(*args)
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    n, rate = 1500, 300.0  # 5 s; SIGKILL at 1.5 s, back at 3 s (the broker holds the messages meanwhile)
    async with Collector(upstream_broker, "results") as results:
        feed = asyncio.create_task(publish(source_broker, "line/cam1/features",
                                           [request(i, "cam1") for i in range(n)], rate=rate))  # fmt: skip
        await asyncio.sleep(1.5)
        w.kill()
        killed_at = len(results.messages)
        assert 0 < killed_at < n
        await asyncio.sleep(1.5)
        w2 = worker_factory(*args)
        w2.start()
        await feed
        await wait_ready(w2)
        await results.wait_for_distinct(n, 25)
        deadline = time.monotonic() + 3  # let any late duplicates land before checking
        while time.monotonic() < deadline and metric(
            metrics(http_port(w2)), "continuum_ingest_outbox_pending"
        ):
            await asyncio.sleep(0.1)
    check_complete(results, {"cam1": n})
    text = metrics(http_port(w2))
    # what the second life did: results of the first life's last messages, published from the outbox,
    # and the broker's redeliveries of what was not yet acknowledged
    print(
        "ok",
        metric(text, "continuum_ingest_messages_total", source="line/+/features", outcome="ok"),
        "republished",
        metric(text, "continuum_ingest_republished_total"),
        "copies",
        len(results.messages),
    )
    assert w2.terminate() == 0


async def test_the_brokers_receive_maximum_bounds_the_publish_window(tmp_path: Path) -> None:
    """MQTT 5: a client keeps at most the broker's Receive Maximum QoS 1 publishes unacknowledged (Mosquitto
    advertises its max_inflight_messages); the publisher's window is the smaller of it and 256."""
    import subprocess

    from continuum_worker.ingest.service import _Client

    from tests.ingest.conftest import MOSQUITTO, free_port, wait_port

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    (tmp_path / "m.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 20\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "m.conf")], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        async with _Client("127.0.0.1", port, identifier="rm", protocol=aiomqtt.ProtocolVersion.V5) as client:
            assert client.receive_maximum == 20
    finally:
        proc.terminate()
        proc.wait(10)
