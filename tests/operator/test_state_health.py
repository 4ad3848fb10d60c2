"""status.state: the operator asks each state-enabled worker for GET /state/sync and reports it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from continuum.api.models import StateSyncStatus
from continuum.controller.state_health import parse_sync_report
from continuum.controller.status import synced_condition

from tests.conftest import EXAMPLES
from tests.operator.conftest import FakeWorkers, Harness, docs, wait_for

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def workers() -> Iterator[FakeWorkers]:
    fake = FakeWorkers("/state/sync", 503)
    yield fake
    fake.server.shutdown()


def test_parse_sync_report() -> None:
    status = parse_sync_report(
        {"pending_updates": 3, "last_sync_time": NOW.timestamp(), "sync_failures": 2, "peers": 1}, NOW
    )
    assert (status.pending_updates, status.sync_failures, status.peers) == (3, 2, 1)
    assert status.last_sync_time == NOW and status.reachable and status.message is None
    broken = parse_sync_report({"pending_updates": "many"}, NOW)
    assert broken.reachable and "malformed" in (broken.message or "")
    assert "malformed" in (parse_sync_report([1, 2], NOW).message or "")


def test_synced_condition() -> None:
    assert synced_condition(None, "cloud")[:2] == (None, "NotObserved")
    down = StateSyncStatus(observed_at=NOW, reachable=False, message="timeout")
    assert synced_condition(down, "cloud")[:2] == (False, "Unreachable")
    never = StateSyncStatus(observed_at=NOW, reachable=True, pending_updates=4)
    assert synced_condition(never, "cloud")[:2] == (False, "NeverSynced")
    pending = StateSyncStatus(observed_at=NOW, reachable=True, pending_updates=4, last_sync_time=NOW)
    assert synced_condition(pending, "cloud")[:2] == (False, "Pending")
    done = StateSyncStatus(observed_at=NOW, reachable=True, last_sync_time=NOW)
    assert synced_condition(done, "cloud")[:2] == (True, "Synced")
    assert synced_condition(never, None)[:2] == (True, "LocalOnly")


def condition(h: Harness, ns: str, name: str, ctype: str) -> dict[str, Any]:
    return next((c for c in h.status(ns, name).get("conditions", []) if c["type"] == ctype), {})


def test_status_follows_the_workers_sync_health(harness: Harness, workers: FakeWorkers) -> None:
    h = harness
    h.load_cluster()
    h.start_operator(worker_url_template=workers.template, state_poll_seconds=0.2)
    for obj in docs(EXAMPLES / "workloads"):
        h.apply(obj)
    ns, name = "manufacturing", "line-defect-inspection"  # state on, syncTo: cloud

    # The worker does not answer yet: unreachable, reported with the HTTP error.
    wait_for(lambda: condition(h, ns, name, "StateSynced").get("reason") == "Unreachable", what="unreachable")
    assert "503" in h.status(ns, name)["state"]["message"]

    # It answers with pending updates and no sync yet, then catches up.
    workers.answers[f"{ns}/{name}"] = {
        "pending_updates": 12,
        "last_sync_time": None,
        "sync_failures": 3,
        "peers": 1,
    }
    wait_for(
        lambda: condition(h, ns, name, "StateSynced").get("reason") == "NeverSynced", what="never synced"
    )
    state = h.status(ns, name)["state"]
    assert state["pendingUpdates"] == 12 and state["syncFailures"] == 3 and state["reachable"] is True

    synced_at = datetime.now(UTC).timestamp()
    workers.answers[f"{ns}/{name}"] = {
        "pending_updates": 0,
        "last_sync_time": synced_at,
        "sync_failures": 3,
        "peers": 1,
    }
    wait_for(lambda: condition(h, ns, name, "StateSynced").get("status") == "True", what="synced")
    assert h.status(ns, name)["state"]["lastSyncTime"].startswith(datetime.now(UTC).strftime("%Y-%m-%d"))

    # Stateless workloads are never asked and carry no state status or StateSynced condition.
    assert not any("agv-planner" in path and path.endswith("/state/sync") for path in workers.asked)
    assert "state" not in h.status("logistics", "agv-planner-edge")
    assert condition(h, "logistics", "agv-planner-edge", "StateSynced") == {}
    # The Ready/Placed conditions are unaffected by sync health.
    assert condition(h, ns, name, "Placed").get("status") == "True"
