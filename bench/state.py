"""State library benchmark: pycrdt in memory vs the durable store, recovery, sync bytes, convergence, filtering.

    .venv/bin/python bench/state.py [--no-write]

In one run, on this machine's disk:
* in-memory pycrdt Map sets/s and typed counter increments/s (no disk);
* durable store: one commit (fsync) per acknowledged write, vs group commit (2 ms window), and the raw
  fdatasync rate of the disk as the ceiling for per-write acknowledgements;
* recovery of a log of 100k updates vs from one snapshot (same state);
* sync: diff bytes after the handshake vs sending the full state;
* convergence time of 3 replicas (real aiohttp servers on 127.0.0.1) after a partition heals;
* edge filtering: bytes sent upstream as state vs sending every inference result.
Goals (docs/state.md): durable per-write >= 5,000/s, group commit >= 100,000/s, 100k-update recovery < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "inference-worker"))

import aiohttp
import numpy as np
from aiohttp import web
from continuum_worker.state.compaction import compact
from continuum_worker.state.doc import StateDoc
from continuum_worker.state.store import Store
from continuum_worker.state.worker_integration import StateSettings, attach
from pycrdt import Doc, Map
from rich.console import Console
from rich.table import Table

from bench.report import machine, markdown_table, write_section


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def bench_memory(n: int = 100_000) -> tuple[float, float]:
    doc = Doc()
    m = doc.get("m", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    started = time.perf_counter()
    for i in range(n):
        m[f"k{i % 1000}"] = i
    raw = n / (time.perf_counter() - started)
    state = StateDoc()
    started = time.perf_counter()
    for i in range(n // 4):
        state.increment(f"c{i % 10}")
    typed = (n // 4) / (time.perf_counter() - started)
    return raw, typed


def sample_updates(n: int) -> list[bytes]:
    """``n`` real single-operation updates (Map sets of small values), ~20-30 bytes each."""
    doc = Doc()
    m = doc.get("m", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    for i in range(n):
        m[f"k{i % 5000}"] = f"v{i}"
    return updates


def fsync_rate(directory: Path, n: int = 1000) -> float:
    path = directory / "fsync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        started = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 32)
            os.fdatasync(fd)
        return n / (time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()


def bench_store(directory: Path, updates: list[bytes]) -> dict[str, float]:
    out: dict[str, float] = {}
    store = Store(directory / "per-write")
    store.open(lambda u: None)
    n = 2000
    started = time.perf_counter()
    for update in updates[:n]:
        store.append(update)
    out["per_write"] = n / (time.perf_counter() - started)
    store.close()

    store = Store(directory / "group", commit_window=0.002)
    store.open(lambda u: None)
    started = time.perf_counter()
    for update in updates:
        store.submit(update)
    store.wait()
    out["group"] = len(updates) / (time.perf_counter() - started)
    out["group_commits"] = store.commits
    store.close()

    # end to end: typed increments through pycrdt into the store with group commit
    doc = StateDoc()
    store = Store(directory / "typed", commit_window=0.002)
    store.open(doc.load)
    doc.on_update(store.submit)
    n = 50_000
    started = time.perf_counter()
    for i in range(n):
        doc.increment(f"c{i % 10}")
    store.wait()
    out["typed_group"] = n / (time.perf_counter() - started)
    store.close()
    return out


def bench_recovery(directory: Path, updates: list[bytes]) -> dict[str, float]:
    path = directory / "recovery"
    store = Store(path, commit_window=0.002)
    store.open(lambda u: None)
    for update in updates:
        store.submit(update)
    store.close()
    doc = StateDoc()
    store = Store(path)
    started = time.perf_counter()
    with doc.bulk_load():
        report = store.open(doc.load)
    from_log = time.perf_counter() - started
    assert report.records == len(updates), report
    expected = doc.doc.get("m", type=Map).to_py()
    compact(doc.doc, store)
    store.flush()
    size_log = store.log_bytes
    store.close()
    doc2 = StateDoc()
    store = Store(path)
    started = time.perf_counter()
    with doc2.bulk_load():
        report = store.open(doc2.load)
    from_snapshot = time.perf_counter() - started
    assert doc2.doc.get("m", type=Map).to_py() == expected
    snapshot_bytes = store.snapshot_bytes
    store.close()
    return {"log": from_log, "snapshot": from_snapshot, "log_bytes": size_log, "snapshot_bytes": snapshot_bytes}


def bench_sync_bytes() -> dict[str, int]:
    a = StateDoc(retention=20_000)
    for i in range(20_000):
        a.append_event("det", {"i": i, "score": 0.95})
        if i % 4 == 0:
            a.increment(f"class/{i % 10}")
    b = StateDoc(retention=20_000)
    b.apply_remote(a.diff())
    for i in range(100):
        a.increment(f"class/{i % 10}")
    a.append_events("det", [{"i": i} for i in range(20)])
    diff = a.diff(b.state_vector())
    b.apply_remote(diff)
    assert b.to_json() == a.to_json()
    return {"full": len(a.diff()), "diff": len(diff), "sv": len(b.state_vector())}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start(state_dir: Path, port: int, **kw) -> web.AppRunner:
    app = web.Application()
    handle = attach(app, StateSettings(state_dir=state_dir, sync_interval=0.5, min_backoff=0.05, max_backoff=0.5, **kw))
    app["handle"] = handle
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner


async def bench_convergence(directory: Path, writes: int = 300) -> dict[str, float]:
    ports = [_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]

    def peers(i: int) -> list[str]:
        return [u for j, u in enumerate(urls) if j != i]

    runners = [await _start(directory / f"r{i}", ports[i], peers=peers(i)) for i in range(3)]
    async with aiohttp.ClientSession() as http:
        await runners[2].cleanup()  # partition: replica 2 is cut off
        sem = asyncio.Semaphore(16)

        async def post(url: str, name: str) -> None:
            async with sem, http.post(f"{url}/state/counters/{name}", json={"by": 1}) as resp:
                assert resp.status == 200

        await asyncio.gather(*(post(urls[i % 2], f"n{i % 7}") for i in range(writes)))
        healed = time.perf_counter()  # the partition heals: replica 2 restarts on its volume
        runners[2] = await _start(directory / "r2", ports[2], peers=peers(2))
        await asyncio.gather(*(post(urls[2], f"n{i % 7}") for i in range(writes // 3)))

        async def states() -> list[dict]:
            out = []
            for url in urls:
                async with http.get(url + "/state") as resp:
                    body = await resp.json()
                body.pop("replica")
                out.append(body)
            return out

        while True:
            s = await states()
            total = sum(v["value"] for v in s[0]["counters"].values())
            if all(x == s[0] for x in s) and total == writes + writes // 3:
                break
            await asyncio.sleep(0.01)
        converge = time.perf_counter() - healed
    for runner in runners:
        await runner.cleanup()
    return {"seconds": converge, "writes": writes + writes // 3}


async def bench_filtering(directory: Path, inferences: int = 5000) -> dict[str, float]:
    up_port, edge_port = _port(), _port()
    upstream = await _start(directory / "up", up_port)
    edge = await _start(directory / "edge", edge_port, sync_to=[f"http://127.0.0.1:{up_port}"], event_threshold=0.95)
    handle = edge.app["handle"]
    rng = np.random.default_rng(0)
    json_bytes = 0
    for _ in range(inferences):
        logits = rng.normal(size=(8, 10)).astype(np.float32) * 2  # a batch of 8 rows
        handle.record_inference("mlp", {"logits": logits})
        json_bytes += len(json.dumps({"model_name": "mlp", "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [8, 10], "data": logits.ravel().tolist()}]}))
    await handle.durable()
    while handle.sync.pending() > 0:
        await asyncio.sleep(0.05)
    saved = handle.bytes_saved()
    events = len(handle.state.events("mlp"))
    await edge.cleanup()
    await upstream.cleanup()
    return {"inferences": inferences, "raw": saved["raw_result_bytes"], "json": json_bytes,
            "sent": saved["sync_bytes_sent_upstream"], "events": events}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    console = Console(width=140)
    tmp = Path(tempfile.mkdtemp(prefix="state-bench-"))
    try:
        raw_mem, typed_mem = bench_memory()
        updates = sample_updates(100_000)
        disk = fsync_rate(tmp)
        store = bench_store(tmp, updates)
        recovery = bench_recovery(tmp, updates)
        sync = bench_sync_bytes()
        conv = asyncio.run(bench_convergence(tmp))
        filt = asyncio.run(bench_filtering(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def goal(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = [
        ["pycrdt in memory, Map sets", rate(1, 1 / raw_mem), "-"],
        ["typed counter increments in memory (JSON slot per replica)", rate(1, 1 / typed_mem), "-"],
        ["disk: raw write+fdatasync (ceiling for per-write acks)", rate(1, 1 / disk), "-"],
        ["durable store, one commit per acknowledged write", rate(1, 1 / store["per_write"]),
         f"≥ 5,000/s: {goal(store['per_write'] >= 5000)}"],
        ["durable store, group commit (2 ms window), 100k updates", rate(1, 1 / store["group"]),
         f"≥ 100,000/s: {goal(store['group'] >= 100_000)} ({store['group_commits']:.0f} commits)"],
        ["typed increments + store, group commit", rate(1, 1 / store["typed_group"]), "-"],
        ["recovery from a log of 100k updates", f"{recovery['log'] * 1000:,.0f} ms "
         f"({recovery['log_bytes'] / 1e6:.1f} MB log)", f"< 1 s: {goal(recovery['log'] < 1)}"],
        ["recovery from one snapshot (same state)", f"{recovery['snapshot'] * 1000:,.1f} ms "
         f"({recovery['snapshot_bytes'] / 1e3:,.0f} kB)", "-"],
        ["sync: diff after handshake vs full state (20k events, +120 ops)",
         f"{sync['diff']:,} B vs {sync['full']:,} B", f"state vector {sync['sv']} B"],
        [f"convergence of 3 replicas after a partition ({conv['writes']:.0f} writes)",
         f"{conv['seconds'] * 1000:,.0f} ms", "from the cut-off replica's restart; pushes on write"],
        [f"edge filtering: {filt['inferences']:.0f} inferences (batch 8, 10 classes, events > 0.95)",
         f"{filt['sent'] / 1e3:,.1f} kB sent upstream",
         f"vs {filt['raw'] / 1e3:,.0f} kB binary / {filt['json'] / 1e3:,.0f} kB JSON results; "
         f"{filt['events']:.0f} events kept"],
    ]
    table = Table(title="CRDT state library")
    for header in ("measure", "value", "goal / note"):
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if not args.no_write:
        body = (
            "## State library (CRDT on pycrdt, SQLite WAL store)\n\n"
            f"Machine: {machine('pycrdt', 'aiohttp', 'numpy')}. Run: `.venv/bin/python bench/state.py`.\n\n"
            + markdown_table(["measure", "value", "goal / note"], rows)
            + "\n\nPer-write acknowledgements are bounded by the disk's fsync rate (row 3): one SQLite WAL commit "
            "with `synchronous=FULL` costs at least one fdatasync. Group commit amortises it."
        )
        write_section("state", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
