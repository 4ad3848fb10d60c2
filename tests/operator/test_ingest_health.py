"""status.ingest: the operator asks each placed streaming worker for GET /v2/ingest and reports it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from continuum.api.models import IngestStatus
from continuum.controller.ingest_health import parse_ingest_report, significant

from tests.conftest import EXAMPLES
from tests.operator.conftest import FakeWorkers, Harness, docs, wait_for

NOW = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)
REPORT = {  # the shape GET /v2/ingest answers (continuum_worker.ingest.service.IngestService.report)
    "connected": True,
    "sources": [{"uri": "mqtt://b:1883/line/+/features", "connected": True, "source_lag_seconds": 0.004,
                 "lag_records": None}],
    "sink": {"uri": "mqtt://b:1883/plant/results", "connected": True},
    "in_flight": 3, "pending_records": 0, "pending_bytes": 0, "lag_seconds": 0.0, "last_seq": 100,
    "published_seq": 100, "dropped": 0, "outbox_policy": "block",
}  # fmt: skip


@pytest.fixture
def workers() -> Iterator[FakeWorkers]:
    fake = FakeWorkers("/v2/ingest", 404)
    yield fake
    fake.server.shutdown()


def test_parse_ingest_report() -> None:
    ok = parse_ingest_report(REPORT, NOW)
    assert ok.reachable and ok.broker_connected and ok.message is None
    assert (ok.pending_records, ok.lag_seconds, ok.source_lag_seconds, ok.source_lag_records) == (
        0,
        0.0,
        0.004,
        None,
    )
    down = copy.deepcopy(REPORT)
    down.update(connected=False, pending_records=25155, pending_bytes=14_000_000, lag_seconds=61.5)
    down["sink"]["connected"] = False
    down["sources"].append({"uri": "kafka://k:9092/frames", "connected": True, "lag_records": 40})
    st = parse_ingest_report(down, NOW)
    assert not st.broker_connected and st.message == "not connected: mqtt://b:1883/plant/results"
    assert (st.pending_records, st.pending_bytes, st.lag_seconds, st.source_lag_records) == (25155, 14_000_000,
                                                                                             61.5, 40)  # fmt: skip
    assert "malformed" in (parse_ingest_report([1], NOW).message or "")
    assert "malformed" in (parse_ingest_report({**REPORT, "pending_records": "many"}, NOW).message or "")
    assert "malformed" in (parse_ingest_report({**REPORT, "lag_seconds": "nan"}, NOW).message or "")


def test_only_changes_that_matter_are_significant() -> None:
    base = parse_ingest_report(REPORT, NOW)
    later = parse_ingest_report({**REPORT, "pending_records": 0, "in_flight": 200, "last_seq": 9000}, NOW)
    assert significant(base) == significant(later)  # a steady stream: no status write
    backlog = parse_ingest_report({**REPORT, "pending_records": 500, "lag_seconds": 12.0}, NOW)
    assert significant(backlog) != significant(base)
    assert significant(parse_ingest_report({**REPORT, "pending_records": 700, "lag_seconds": 19.0}, NOW)) == \
        significant(backlog)  # fmt: skip  # same decade
    gone = IngestStatus(observed_at=NOW, reachable=False, message="timeout")
    assert significant(gone) != significant(base) and significant(None) is None


def streaming(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["spec"]["ingest"] = {"broker": "mqtt://mosquitto.plant:1883", "topics": ["line/+/features"],
                             "publishTopic": "plant/results", "messagesPerSecond": 100, "messageBytes": 600}  # fmt: skip
    return obj


def test_status_shows_the_consumer_lag(harness: Harness, workers: FakeWorkers) -> None:
    h = harness
    h.load_cluster()
    h.start_operator(worker_url_template=workers.template, state_poll_seconds=0.2)
    ns, name = "manufacturing", "line-defect-inspection"  # state on: ingest needs the volume
    for obj in docs(EXAMPLES / "workloads"):
        meta = obj.get("metadata", {})
        h.apply(streaming(obj) if (meta.get("namespace"), meta.get("name")) == (ns, name) else obj)

    # not answering yet (404): unreachable, with the HTTP error
    wait_for(lambda: (h.status(ns, name).get("ingest") or {}).get("reachable") is False, what="unreachable")
    assert "404" in h.status(ns, name)["ingest"]["message"]

    # the uplink is down: results pile up in the outbox
    down = copy.deepcopy(REPORT)
    down.update(connected=False, pending_records=25155, pending_bytes=14_000_000, lag_seconds=61.5)
    down["sink"]["connected"] = False
    workers.answers[f"{ns}/{name}"] = down
    wait_for(lambda: (h.status(ns, name).get("ingest") or {}).get("pendingRecords") == 25155, what="backlog")
    ingest = h.status(ns, name)["ingest"]
    assert ingest["brokerConnected"] is False and ingest["lagSeconds"] == 61.5
    assert ingest["pendingBytes"] == 14_000_000 and "plant/results" in ingest["message"]

    # it drains
    workers.answers[f"{ns}/{name}"] = REPORT
    wait_for(lambda: (h.status(ns, name).get("ingest") or {}).get("brokerConnected") is True, what="drained")
    ingest = h.status(ns, name)["ingest"]
    assert ingest["pendingRecords"] == 0 and ingest["lagSeconds"] == 0 and ingest["sourceLagSeconds"] == 0.004

    # workloads without spec.ingest are never asked and carry no status.ingest
    asked = {path.removesuffix("/v2/ingest") for path in workers.asked if path.endswith("/v2/ingest")}
    assert asked == {f"/{ns}/{name}"}, asked
    assert "ingest" not in h.status("logistics", "agv-planner-edge")
