"""``--ingest-publish-after``: in ``written`` mode (the default) a result is published as soon as it is handed
to the outbox, its commit running meanwhile; the source is still acknowledged only after the commit, a
record counts as published only once both its commit and its PUBACK happened, and order per source holds
through link flaps and a SIGKILL between the publish and the commit (the redelivered message's result
comes again, marked). ``durable`` publishes only committed records. Against a real Mosquitto; the commit
is held by ``tests/ingest/gated_worker.py`` (the real worker with its outbox commits waiting on a file)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.ingest.conftest import ROOT, Broker, Link
from tests.ingest.test_stream import (
    Collector,
    base_args,
    check_complete,
    http_port,
    metric,
    metrics,
    ordered_ids,
    props,
    publish,
    request,
    subscribed,
    wait_ready,
)

GATED = str(ROOT / "tests" / "ingest" / "gated_worker.py")


def ingest_report(worker: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port(worker)}/v2/ingest", timeout=5) as r:
        return json.loads(r.read())


def committed_rows(outbox: Path) -> int:
    """Records committed to the outbox, read by another connection (what a crash would leave)."""
    db = sqlite3.connect(f"file:{outbox / 'outbox.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM out WHERE kind = 'result'").fetchone()[0])
    finally:
        db.close()


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_written_publishes_before_the_commit_and_acknowledges_after_it(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    w = worker_factory(
        *base_args(mlp_model, tmp_path, source_broker, upstream_broker),
        launcher=[GATED, "--commit-gate", str(gate)],
    )
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    n = 20
    async with Collector(upstream_broker, "results") as results:
        gate.touch()  # commits wait from now on
        await publish(source_broker, "line/cam1/features", [request(i, "cam1") for i in range(n)])
        await results.wait_for(n, 20)
        # every result is upstream while none is durable: nothing acknowledged, nothing marked published
        assert ordered_ids(results.payloads(), "cam1") == list(range(n))
        assert not any(props(m).get("redelivered") for m in results.messages)
        report = ingest_report(w)
        assert report["in_flight"] == n and report["published_seq"] == 0 and report["last_seq"] == n, report
        assert committed_rows(tmp_path / "outbox") == 0
        text = metrics(http_port(w))
        assert metric(text, "continuum_ingest_stage_seconds_count", stage="to_durable") == 0
        assert (
            metric(text, "continuum_ingest_stage_seconds_count", stage="to_published") == 0
        )  # commit awaited
        gate.unlink()
        await until(lambda: ingest_report(w)["published_seq"] == n, 10, "the watermark to pass the commit")
    report = ingest_report(w)
    assert report["in_flight"] == 0 and report["pending_records"] == 0, report
    assert committed_rows(tmp_path / "outbox") == n
    text = metrics(http_port(w))
    assert metric(text, "continuum_ingest_messages_total", source="line/+/features", outcome="ok") == n
    assert metric(text, "continuum_ingest_stage_seconds_count", stage="to_published") == n
    assert len(results.messages) == n  # published once each
    assert w.terminate() == 0


async def test_durable_publishes_only_committed_results(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    args = base_args(mlp_model, tmp_path, source_broker, upstream_broker, "--ingest-publish-after", "durable")
    w = worker_factory(*args, launcher=[GATED, "--commit-gate", str(gate)])
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    n = 20
    async with Collector(upstream_broker, "results") as results:
        gate.touch()
        await publish(source_broker, "line/cam1/features", [request(i, "cam1") for i in range(n)])
        await until(lambda: ingest_report(w)["last_seq"] == n, 10, "the results to be handed over")
        await asyncio.sleep(0.5)
        assert results.messages == [] and ingest_report(w)["in_flight"] == n
        gate.unlink()
        await results.wait_for(n, 20)
    assert ordered_ids(results.payloads(), "cam1") == list(range(n))
    assert w.terminate() == 0


async def test_sigkill_between_publish_and_commit_gives_marked_duplicates_and_loses_nothing(
    source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    args = base_args(mlp_model, tmp_path, source_broker, upstream_broker)
    w = worker_factory(*args, launcher=[GATED, "--commit-gate", str(gate)])
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    first, held = 30, 30
    async with Collector(upstream_broker, "results") as results:
        await publish(source_broker, "line/cam1/features", [request(i, "cam1") for i in range(first)])
        await until(lambda: ingest_report(w)["published_seq"] == first, 15, "the first results to be durable")
        gate.touch()
        await publish(
            source_broker, "line/cam1/features", [request(i, "cam1") for i in range(first, first + held)]
        )
        await results.wait_for(first + held, 20)  # published, not committed, not acknowledged
        assert ingest_report(w)["in_flight"] == held
        w.kill()
        assert committed_rows(tmp_path / "outbox") == first  # the held results died with the process
        gate.unlink()
        w2 = worker_factory(*args)
        w2.start()
        await wait_ready(w2)
        # the source broker redelivers the unacknowledged messages: computed again, published again, marked
        await results.wait_for(first + 2 * held, 25)
        await until(lambda: ingest_report(w2)["pending_records"] == 0, 10, "the second life to publish all")
    check_complete(results, {"cam1": first + held})  # in order, no loss, every duplicate marked
    copies: dict[str, int] = {}
    for m in results.messages:
        copies[props(m)["id"]] = copies.get(props(m)["id"], 0) + 1
    assert {i for i, c in copies.items() if c > 1} == {f"cam1-{i}" for i in range(first, first + held)}
    again = [m for m in results.messages[first + held :]]
    assert again and all(props(m).get("redelivered") == "1" for m in again)
    text = metrics(http_port(w2))
    # nothing of the first life's durable part was computed again
    assert metric(text, "continuum_ingest_messages_total", source="line/+/features", outcome="ok") == held
    assert w2.terminate() == 0


@pytest.mark.parametrize("mode", ["written", "durable"])
async def test_order_holds_when_the_uplink_flaps_mid_stream(
    mode: str, source_broker: Broker, upstream_broker: Broker, mlp_model: Path, worker_factory: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    link = Link(upstream_broker.port)
    args = base_args(mlp_model, tmp_path, source_broker, upstream_broker, "--ingest-publish-after", mode)
    args[args.index("--publish") + 1] = link.url("results")
    w = worker_factory(*args)
    w.start()
    await wait_ready(w)
    await subscribed(w, "line/+/features")
    n, rate = 1000, 250.0  # 4 s per camera; the link drops 6 times meanwhile
    try:
        async with Collector(upstream_broker, "results") as results:
            feeds = [asyncio.create_task(publish(source_broker, f"line/{cam}/features",
                                                 [request(i, cam) for i in range(n)], rate=rate))
                     for cam in ("cam1", "cam2")]  # fmt: skip
            for _ in range(6):
                await asyncio.sleep(0.35)
                link.cut()  # published and not yet acknowledged: resent in order from the store
                await asyncio.sleep(0.15)
                link.restore()
            await asyncio.gather(*feeds)
            await results.wait_for_distinct(2 * n, 30)
            await until(lambda: metric(metrics(http_port(w)), "continuum_ingest_outbox_pending") == 0, 20,
                        "every record to be acknowledged upstream")  # fmt: skip
        check_complete(results, {"cam1": n, "cam2": n})
        text = metrics(http_port(w))
        print("republished after the cuts", metric(text, "continuum_ingest_republished_total"))
    finally:
        link.close()
    assert metric(text, "continuum_ingest_messages_total", source="line/+/features", outcome="ok") == 2 * n
