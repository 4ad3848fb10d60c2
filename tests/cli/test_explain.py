"""`continuum explain NS/NAME`: the pure explanation over a workload object and its Events, and the
command against the real operator running on the API emulator (status and Events written by it)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from continuum.explain import explain, render_text

from tests.conftest import EXAMPLES
from tests.operator.conftest import Harness, docs, wait_for


def _workload(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "continuum.dev/v1alpha1",
        "kind": "EdgeWorkload",
        "metadata": {"name": "w", "namespace": "ns", "uid": "u1", "generation": 2},
        "spec": {"requirements": {"latencyBudgetMs": 20}, "tiers": {"preferred": ["near-edge"]}},
        "status": {"observedGeneration": 2, **status},
    }


def _cand(pool: str, feasible: bool, *codes: str, latency: float | None = None) -> dict[str, Any]:
    return {
        "pool": pool,
        "tier": "regional-mec",
        "feasible": feasible,
        "estimatedLatencyMs": latency,
        "hourlyCost": 1.5 if feasible else None,
        "reasons": [{"code": c, "message": f"{c} of {pool}"} for c in codes],
    }


def test_alternatives_keep_the_status_order_and_rejections_group_by_code() -> None:
    obj = _workload(
        phase="Placed",
        placement={"pool": "a", "tier": "near-edge", "site": "s", "estimatedLatencyMs": 5, "hourlyCost": 1.0},
        candidates=[
            _cand("a", True, latency=5),
            _cand("c", True, latency=12),
            _cand("b", True, latency=9),
            _cand("x", False, "Latency", "Capacity"),
            _cand("y", False, "Latency"),
            _cand("z", False, "Privacy"),
        ],
        candidatesOmitted=7,
    )
    x = explain(obj)
    assert [(a.pool, a.latency_slack_ms) for a in x.alternatives] == [("c", 8), ("b", 11)]
    assert [(g.code, g.count, [p for p, _ in g.pools]) for g in x.rejected] == [
        ("Latency", 2, ["x", "y"]),
        ("Capacity", 1, ["x"]),
        ("Privacy", 1, ["z"]),
    ]
    text = render_text(x)
    assert "placed on pool a (near-edge at s): 5 ms of a 20 ms budget" in text
    assert "  1. c (regional-mec): 12 ms, 8 ms to spare, 1.5/h" in text
    assert "  Latency (2):\n    x: Latency of x\n    y: Latency of y" in text
    assert "(7 more pools evaluated but not listed in the status)" in text


def test_events_are_this_objects_newest_first() -> None:
    def ev(name: str, uid: str, t: str, reason: str) -> dict[str, Any]:
        return {
            "involvedObject": {"kind": "EdgeWorkload", "name": name, "uid": uid},
            "lastTimestamp": t,
            "type": "Normal",
            "reason": reason,
            "message": reason.lower(),
        }

    events = [
        ev("w", "u1", "2026-01-01T00:00:01Z", "Placed"),
        ev("w", "u1", "2026-01-01T00:00:09Z", "Moved"),
        ev("w", "old", "2026-01-01T00:00:05Z", "Stale"),  # an earlier object with the same name
        ev("other", "u2", "2026-01-01T00:00:07Z", "Other"),
    ]
    x = explain(_workload(phase="Placed"), events)
    assert [e.reason for e in x.events] == ["Moved", "Placed"]


def test_stale_status_is_said() -> None:
    obj = _workload(phase="Placed")
    obj["metadata"]["generation"] = 3
    assert "older generation" in render_text(explain(obj))


# --- against the operator on the emulator ----------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("explain"))
    try:
        h.load_cluster()
        h.start_operator()
        for name in ("line-defect-inspection.yaml", "quality-llm.yaml"):
            for obj in docs(EXAMPLES / "workloads" / name):
                h.apply(obj)
        wait_for(
            lambda: h.status("manufacturing", "line-defect-inspection").get("phase") == "Placed", 30, "placed"
        )
        wait_for(lambda: h.status("manufacturing", "quality-assistant").get("hint"), 30, "hint")
        wait_for(lambda: h.events(name="quality-assistant"), 30, "an Event")
        yield h
    finally:
        h.close()


def run_explain(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum", "explain", *args, "--kubeconfig", str(h.cluster.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_explain_a_placed_workload(live: Harness) -> None:
    proc = run_explain(live, "manufacturing/line-defect-inspection")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("manufacturing/line-defect-inspection: Placed\n")
    assert "placed on pool munich-line (near-edge at plant-munich): 10 ms of a 15 ms budget" in out
    assert (
        "Feasible alternatives, in the order the operator would choose them (1):\n  1. mec-frankfurt" in out
    )
    assert "Rejected pools by reason:" in out and "Events (newest first" in out


def test_explain_an_unschedulable_workload_as_json(live: Harness) -> None:
    proc = run_explain(live, "manufacturing/quality-assistant", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["phase"] == "Unschedulable" and doc["placement"] is None and doc["alternatives"] == []
    assert doc["hint"] == "to fit on pool mec-frankfurt: raise requirements.latencyBudgetMs to 21 ms"
    codes = {g["code"]: g["count"] for g in doc["rejected"]}
    assert codes["Latency"] >= 1
    assert doc["events"] and all(e["reason"] for e in doc["events"])


def test_explain_errors(live: Harness, tmp_path: Path) -> None:
    missing = run_explain(live, "manufacturing/nope")
    assert missing.returncode == 1 and "EdgeWorkload manufacturing/nope not found" in missing.stderr
    bad = run_explain(live, "no-slash")
    assert bad.returncode == 1 and "expected NAMESPACE/NAME" in bad.stderr
    (tmp_path / "kc").write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "continuum", "explain", "a/b", "--kubeconfig", str(tmp_path / "kc")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot read the cluster:")
