"""The worker's /state and /sync endpoints on real aiohttp servers (127.0.0.1): API, auth, hostile input,
offline → online and peers converging after a partition."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp
import numpy as np
from continuum_worker.state.framing import (
    KIND_ACK,
    KIND_STATE_VECTOR,
    KIND_UPDATE,
    covers,
    decode_messages,
    decode_state_vector,
    encode_message,
    expect,
)

from .conftest import free_port, start_node

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _state(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/state", headers=AUTH) as resp:
        assert resp.status == 200
        body = await resp.json()
    body.pop("replica")
    return body


async def test_local_api_round_trip_and_durable_across_restart(tmp_path: Path, nodes, http) -> None:
    node = await nodes(tmp_path, token=TOKEN)
    async with http.post(node.url + "/state/counters/visits", json={"by": 3}, headers=AUTH) as resp:
        assert resp.status == 200
        assert (await resp.json())["value"] == 3
    async with http.post(node.url + "/state/counters/visits", json={"by": -1}, headers=AUTH) as resp:
        assert (await resp.json()) == {"name": "visits", "value": 2, "count": 2, "min": -1, "max": 3}
    async with http.post(node.url + "/state/events/alarms", json={"level": "high", "n": 2**40}, headers=AUTH) as resp:
        assert resp.status == 200
    async with http.put(node.url + "/state/registers/mode", json={"value": {"fast": True}}, headers=AUTH) as resp:
        assert resp.status == 200
    before = await _state(http, node.url)
    assert before["counters"]["visits"]["value"] == 2
    assert before["events"]["alarms"][0]["event"] == {"level": "high", "n": 2**40}  # ints stay ints
    assert before["registers"] == {"mode": {"fast": True}}
    # every 200 was durable: a restart on the same volume shows the same state
    await node.stop()
    again = await nodes(tmp_path, token=TOKEN)
    assert await _state(http, again.url) == before
    async with http.get(again.url + "/state/sync") as resp:  # no token needed
        assert (await resp.json()) == {
            "pending_updates": 0, "last_sync_time": None, "sync_failures": 0, "peers": 0, "error": None,
        }


async def test_bad_requests_and_wrong_token_are_refused_and_change_nothing(tmp_path: Path, nodes, http) -> None:
    node = await nodes(tmp_path, token=TOKEN)
    before = await _state(http, node.url)
    cases = [
        ("post", "/state/counters/x", {"by": 1}, {}, 401),
        ("post", "/state/counters/x", {"by": 1}, {"Authorization": "Bearer wrong"}, 401),
        ("post", "/state/counters/x", {"by": 1}, {"Authorization": TOKEN}, 401),
        ("post", "/state/counters/x", {"by": "1"}, AUTH, 400),
        ("post", "/state/counters/x", {"by": True}, AUTH, 400),
        ("post", "/state/counters/x", [1], AUTH, 400),
        ("put", "/state/registers/x", {"nope": 1}, AUTH, 400),
        ("post", "/state/events/x", "x" * 300_000, AUTH, 413),
        ("post", "/state/counters/" + "n" * 300, {"by": 1}, AUTH, 400),
    ]
    for method, path, body, headers, status in cases:
        async with http.request(method, node.url + path, json=body, headers=headers) as resp:
            assert resp.status == status, (path, body, headers, await resp.text())
    async with http.get(node.url + "/state") as resp:
        assert resp.status == 401
    async with http.post(node.url + "/state/events/x", data=b"{not json", headers=AUTH) as resp:
        assert resp.status == 400
    assert await _state(http, node.url) == before


async def test_hostile_sync_messages_are_rejected_and_the_server_stays_up(tmp_path: Path, nodes, http) -> None:
    node = await nodes(tmp_path, token=TOKEN, max_message_bytes=64 * 1024)
    async with http.post(node.url + "/state/counters/c", json={"by": 5}, headers=AUTH) as resp:
        assert resp.status == 200
    before = await _state(http, node.url)
    from continuum_worker.state.doc import StateDoc

    other = StateDoc()
    other.increment("c", 100)
    good = encode_message(KIND_UPDATE, "state", other.diff())
    url = node.url + "/sync/state/update"
    rng = random.Random(5)
    bodies: list[tuple[bytes, dict]] = [
        (good, {}),  # no token
        (good, {"Authorization": "Bearer nope"}),
        (b"", AUTH),
        (b"\x00" * 10, AUTH),
        (good[:-1], AUTH),  # truncated
        (good + b"\x01", AUTH),  # trailing garbage
        (encode_message(KIND_UPDATE, "other-doc", other.diff()), AUTH),
        (encode_message(KIND_ACK, "state", b"\x00"), AUTH),  # wrong kind
        (encode_message(KIND_UPDATE, "state", b"\xff\xff\xff\xff\x0f garbage"), AUTH),  # framed but not an update
        (encode_message(KIND_UPDATE, "state", b"x" * 70_000), AUTH),  # over the cap
    ]
    for _ in range(150):  # fuzz: flipped bits and random bytes inside a valid frame
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        bodies.append((bytes(data), AUTH))
        bodies.append((encode_message(KIND_UPDATE, "state", rng.randbytes(rng.randint(0, 200))), AUTH))
    rejected = 0
    for body, headers in bodies:
        async with http.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                rejected += 1
                assert resp.status in (400, 401, 404, 413, 422), resp.status
                assert "error" in await resp.json()
    async with http.post(node.url + "/sync/state/handshake", data=b"junk", headers=AUTH) as resp:
        assert resp.status == 400
    hs = encode_message(KIND_STATE_VECTOR, "state", b"\xff\xff\xff")
    async with http.post(node.url + "/sync/state/handshake", data=hs, headers=AUTH) as resp:
        assert resp.status == 400
    assert rejected >= 10 + 150
    after = await _state(http, node.url)
    # random bytes that still parse as an update could only add empty structure, never change values
    assert after["counters"] == before["counters"] and after["registers"] == before["registers"]
    # and the server still works: a genuine update is accepted and acknowledged
    async with http.post(url, data=good, headers=AUTH) as resp:
        assert resp.status == 200
        (ack,) = expect(decode_messages(await resp.read(), "state", 1 << 20), KIND_ACK)
    assert covers(decode_state_vector(ack), decode_state_vector(other.state_vector()))  # it stored all of it
    assert (await _state(http, node.url))["counters"]["c"]["value"] == 105


async def test_offline_edge_keeps_recording_then_upstream_converges(tmp_path: Path, nodes, http) -> None:
    up_port = free_port()
    edge = await nodes(tmp_path / "edge", token=TOKEN, sync_to=[f"http://127.0.0.1:{up_port}"])
    for _i in range(20):
        async with http.post(edge.url + "/state/counters/frames", json={"by": 1}, headers=AUTH) as resp:
            assert resp.status == 200
        edge.handle.record_inference("det", {"scores": np.array([[0.05, 0.95], [0.7, 0.3]], dtype=np.float32)})
    await edge.handle.durable()

    async def failing() -> bool:
        async with http.get(edge.url + "/state/sync") as resp:
            s = await resp.json()
        return s["sync_failures"] >= 2 and s["error"] is not None and s["pending_updates"] > 0

    await _wait_for(failing, what="sync failures while upstream is down")
    upstream = await nodes(tmp_path / "up", token=TOKEN, port=up_port)
    edge_state = await _state(http, edge.url)

    async def converged() -> bool:
        async with http.get(edge.url + "/state/sync") as resp:
            s = await resp.json()
        return s["pending_updates"] == 0 and s["error"] is None and await _state(http, upstream.url) == edge_state

    await _wait_for(converged, what="upstream to converge")
    status = edge.handle.sync.status()
    assert status["last_sync_time"] is not None and status["peers"] == 1
    counters = edge_state["counters"]
    assert counters["frames"]["value"] == 20
    assert counters["det/scores/class/1"]["value"] == 20 and counters["det/scores/class/0"]["value"] == 20
    assert len(edge_state["events"]["det"]) == 20  # only the 0.95 rows pass the 0.9 threshold
    saved = edge.handle.bytes_saved()
    assert saved["raw_result_bytes"] == 20 * 16 and saved["sync_bytes_sent_upstream"] > 0
    # the acknowledgement is durable on the edge: after a restart nothing is pending
    await edge.stop()
    await upstream.stop()
    edge2 = await nodes(tmp_path / "edge", token=TOKEN, sync_to=[f"http://127.0.0.1:{up_port}"])
    assert edge2.handle.sync.pending() == 0


async def test_three_peers_partitioned_then_healed_converge(tmp_path: Path, http) -> None:
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    started = []
    try:
        for i, port in enumerate(ports):
            peers = [u for j, u in enumerate(urls) if j != i]
            started.append(await start_node(tmp_path / f"r{i}", port=port, token=TOKEN, peers=peers))
        # partition: replica 2 goes away (its server stops) while all keep writing
        await started[2].stop()
        rng = random.Random(9)
        total = 0
        for step in range(60):
            i = rng.randrange(2)
            by = rng.randint(1, 5)
            total += by
            async with http.post(urls[i] + "/state/counters/n", json={"by": by}, headers=AUTH) as resp:
                assert resp.status == 200
            if step % 10 == 0:
                async with http.put(urls[i] + "/state/registers/cfg", json={"value": step}, headers=AUTH) as resp:
                    assert resp.status == 200
        offline = started[2]
        started[2] = await start_node(tmp_path / "r2", port=ports[2], token=TOKEN, peers=urls[:2])
        for _ in range(15):
            async with http.post(urls[2] + "/state/counters/n", json={"by": 2}, headers=AUTH) as resp:
                total += 2
        del offline

        async def converged() -> bool:
            states = [await _state(http, u) for u in urls]
            return all(s == states[0] for s in states) and states[0]["counters"]["n"]["value"] == total

        started_at = time.monotonic()
        await _wait_for(converged, what="peers to converge")
        assert time.monotonic() - started_at < 15
        assert (await _state(http, urls[0]))["registers"]["cfg"] == 50
    finally:
        for node in started:
            await node.stop()


async def test_record_inference_never_waits_for_the_disk(tmp_path: Path, nodes) -> None:
    node = await nodes(tmp_path, commit_window=0.05, event_threshold=0.5)
    handle = node.handle
    logits = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32)
    started = time.perf_counter()
    for _ in range(200):
        handle.record_inference("mlp", {"logits": logits, "ids": np.arange(32)})
    elapsed = time.perf_counter() - started
    assert handle.store.durable_seq < handle.store.last_seq  # nothing waited for a commit
    assert elapsed < 2.0
    await handle.durable()
    counts = handle.state.to_json()["counters"]
    per_class = sum(v["value"] for k, v in counts.items() if k.startswith("mlp/logits/class/"))
    assert per_class == 200 * 32 and counts["mlp/inferences"]["value"] == 200 * 32
    expected = np.bincount(logits.argmax(axis=1), minlength=10) * 200
    for cls, n in enumerate(expected):
        assert counts.get(f"mlp/logits/class/{cls}", {"value": 0})["value"] == n
    assert len(handle.state.events("mlp")) == handle.settings.retention or len(handle.state.events("mlp")) > 0
    assert handle.raw_result_bytes == 200 * (logits.nbytes + 32 * 8)


async def test_metrics_are_exposed(tmp_path: Path, nodes, http) -> None:
    from prometheus_client import generate_latest

    node = await nodes(tmp_path, compact_bytes=2000)
    for _ in range(40):
        async with http.post(node.url + "/state/events/e", json={"pad": "p" * 100}) as resp:
            assert resp.status == 200
    await asyncio.to_thread(node.handle.store.flush, 5)
    text = generate_latest(node.handle.metrics.registry).decode()
    for name in ("continuum_state_updates_total", "continuum_state_log_bytes", "continuum_state_snapshot_bytes",
                 "continuum_state_compactions_total", "continuum_state_pending_updates",
                 "continuum_state_last_sync_timestamp_seconds", "continuum_state_sync_failures_total",
                 "continuum_state_peers", "continuum_state_bytes_saved"):
        assert name in text
    assert node.handle.store.compactions >= 1
    assert 'continuum_state_updates_total{origin="local"} 40.0' in text
