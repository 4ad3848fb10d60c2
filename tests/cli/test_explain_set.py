"""`continuum explain ews/NS/NAME`: the pure explanation of an EdgeWorkloadSet (its children, versions,
rollout and Events), and the command against the real operator running the store chain on the API
emulator (children placed by it, the set's status and Events written by it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from continuum.explain import explain_set, render_set_text

from tests.cli.test_explain import run_explain
from tests.conftest import EXAMPLES
from tests.operator.conftest import Harness, docs, wait_for

SETS = "continuum.dev/v1alpha1/edgeworkloadsets"
CHAIN = EXAMPLES / "fleets" / "store-chain"


def _child(site: str, phase: str, version: str, ready: bool, pool: str | None = None, **status: Any) -> dict:
    st: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": "x"}],
        **status,
    }
    if pool:
        st["placement"] = {"pool": pool, "tier": "device", "site": site}
    return {
        "metadata": {
            "name": f"footfall-{site}",
            "namespace": "retail",
            "labels": {"continuum.dev/set": "footfall", "continuum.dev/site": site},
            "ownerReferences": [{"kind": "EdgeWorkloadSet", "uid": "u1", "controller": True}],
        },
        "spec": {"model": {"name": "m", "version": version, "uri": f"/m/{version}.onnx"}},
        "status": st,
    }


ROLLOUT = {
    "phase": "Progressing",
    "stable": {"name": "m", "version": "4", "uri": "/m/4.onnx"},
    "candidate": {"name": "m", "version": "5", "uri": "/m/5.onnx"},
    "wave": 1,
    "waveName": "ring-1",
    "step": 0,
    "stepKind": "shadow",
    "stepStartedAt": "2026-12-03T03:00:00Z",
    "waves": [
        {"name": "ring-0", "sites": 1, "done": 1, "deferred": []},
        {"name": "ring-1", "sites": 2, "done": 0, "deferred": ["b"]},
        {"name": "rest", "sites": 1, "done": 0, "deferred": []},
    ],
    "gate": {
        "errorLlr": 0.0,
        "agreementLlr": -1.25,
        "candidateRequests": 0,
        "shadowCompared": 120,
        "driftLlr": 3.91,
        "driftWindows": 1,
        "driftDrifted": 1,
        "driftLast": "c: candidate output KS 0.400 (stable output KS 0.030)",
        "verdict": "Continue: collecting evidence",
    },
}


def _set(**status: Any) -> dict:
    return {
        "metadata": {"name": "footfall", "namespace": "retail", "uid": "u1", "generation": 3},
        "spec": {},
        "status": {
            "observedGeneration": 3,
            "sites": 4,
            "placed": 3,
            "unschedulable": 1,
            "ready": 2,
            "versions": [
                {"version": "4", "sites": 3, "placed": 2, "ready": 1},
                {"version": "5", "sites": 1, "placed": 1, "ready": 1},
            ],
            "rollout": ROLLOUT,
            "conditions": [{"type": "Rollout", "status": "True", "reason": "Progressing", "message": "m"}],
            **status,
        },
    }


def test_a_set_is_explained_site_by_site_with_its_rollout() -> None:
    children = [
        _child("c", "Placed", "4", False, "pool-c", drift={"score": 0.41, "drifting": True}),
        _child("a", "Placed", "5", True, "pool-a"),
        _child("b", "Placed", "4", True, "pool-b"),
        _child("d", "Unschedulable", "4", False),
    ]
    stranger = _child("e", "Placed", "4", True, "pool-e")
    stranger["metadata"]["ownerReferences"] = [
        {"kind": "EdgeWorkloadSet", "uid": "other", "controller": True}
    ]
    events = [
        {
            "involvedObject": {"kind": "EdgeWorkloadSet", "name": "footfall", "uid": "u1"},
            "lastTimestamp": t,
            "type": "Normal",
            "reason": r,
            "message": r.lower(),
        }
        for t, r in (("2026-12-03T03:00:00Z", "WaveDone"), ("2026-12-03T02:50:00Z", "RolloutStarted"))
    ] + [{"involvedObject": {"kind": "EdgeWorkload", "name": "footfall"}, "reason": "Placed"}]
    x = explain_set(_set(), [*children, stranger], events)
    assert [c.site for c in x.children] == ["a", "b", "c", "d"]  # by site; another set's child left out
    assert [(c.tier, c.pool, c.version, c.ready) for c in x.children][:2] == [
        ("device", "pool-a", "5", True),
        ("device", "pool-b", "4", True),
    ]
    assert x.deferred == ["b"] and [c.site for c in x.children if c.deferred] == ["b"]
    assert [e.reason for e in x.events] == ["WaveDone", "RolloutStarted"]  # the set's own, newest first
    text = render_set_text(x)
    assert text.startswith("retail/footfall: 4 sites selected, 3 placed, 1 unschedulable, 2 ready\n")
    assert "  versions: 4: 3 sites, 2 placed, 1 ready; 5: 1 sites, 1 placed, 1 ready" in text
    assert "  a  Placed        device on pool pool-a, version 5, ready" in text
    assert "  b  Placed        device on pool pool-b, version 4, ready, rollout deferred" in text
    assert "  c  Placed        device on pool pool-c, version 4, not ready, drift 0.41 (drifting)" in text
    assert "  d  Unschedulable -, version 4, not ready" in text
    assert "deferred by the rollout (worker has not confirmed its step): b" in text
    assert "Rollout: Progressing\n  stable: 4 (/m/4.onnx)\n  candidate: 5 (/m/5.onnx)" in text
    assert "  at wave 2 (ring-1), step 1 (shadow), since 2026-12-03T03:00:00Z" in text
    assert "   → ring-1: 0/2, deferred: b" in text and "     ring-0: 1/1" in text
    assert "    verdict: Continue: collecting evidence" in text
    assert "    agreement: log likelihood ratio -1.25 over 120 compared answers" in text
    assert (
        "    drift: 1 of 1 scored candidate windows drifted on the outputs, log likelihood ratio 3.91" in text
    )
    assert "    last drifted window: c: candidate output KS 0.400 (stable output KS 0.030)" in text
    assert "  Rollout=True Progressing: m" in text


def test_a_rolled_back_set_says_why_and_what_is_not_back_yet() -> None:
    rollout = {
        **ROLLOUT,
        "phase": "RolledBack",
        "waveName": None,
        "cause": "rolled back: wave ring-0 step 1 (shadow): drift gate: 2 of 2 ...",
        "reverting": ["a"],
    }
    text = render_set_text(explain_set(_set(rollout=rollout, observedGeneration=2)))
    assert "(the status is for an older generation of the spec" in text
    assert (
        "Rollout: RolledBack" in text
        and "  cause: rolled back: wave ring-0 step 1 (shadow): drift gate" in text
    )
    assert "gate evidence" not in text  # no step running: no evidence shown
    assert "  not yet confirmed back to the stable version: a" in text
    assert "Sites: no child found" in text and "Events: none" in text


# --- against the operator on the emulator ----------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("explain-set"))
    try:
        for obj in docs(CHAIN / "nodes.yaml") + docs(CHAIN / "pools.yaml"):
            h.apply(obj)
        h.start_operator()
        for obj in docs(CHAIN / "set.yaml"):
            h.apply(obj)

        def settled() -> bool:
            st = (h.cluster.get(SETS, "footfall", "retail") or {}).get("status") or {}
            return st.get("sites") == 6 and st.get("placed", 0) + st.get("unschedulable", 0) == 6

        wait_for(settled, 60, "the set's children placed")
        wait_for(lambda: h.events(name="footfall"), 30, "an Event about the set")
        yield h
    finally:
        h.close()


def test_explain_the_store_chain(chain: Harness) -> None:
    proc = run_explain(chain, "ews/retail/footfall")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    st = (chain.cluster.get(SETS, "footfall", "retail") or {})["status"]
    assert out.startswith(
        f"retail/footfall: 6 sites selected, {st['placed']} placed, {st['unschedulable']} unschedulable, "
    )
    assert "Sites (6):\n  store-berlin-mitte  " in out
    placed = [line for line in out.splitlines() if " on pool " in line]
    assert len(placed) == st["placed"] and all(", version 4, " in line for line in placed)
    assert (
        "Rollout: Stable\n  stable: 4 (http://model-store.continuum-system.svc/footfall-counter/4/model.onnx)"
        in out
    )
    assert "SitesAdded" in out and "created 6 EdgeWorkloads" in out
    as_json = run_explain(chain, "edgeworkloadset/retail/footfall", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["sites"] == 6 and len(doc["children"]) == 6
    by_site = {c["site"]: c for c in doc["children"]}
    berlin = chain.cluster.get(
        "continuum.dev/v1alpha1/edgeworkloads", "footfall-store-berlin-mitte", "retail"
    )
    assert berlin is not None
    placement = berlin["status"].get("placement") or {}
    assert (by_site["store-berlin-mitte"]["pool"], by_site["store-berlin-mitte"]["tier"]) == (
        placement.get("pool"),
        placement.get("tier"),
    )
    assert doc["rollout"]["phase"] == "Stable" and doc["versions"][0]["version"] == "4"


def test_explain_set_errors(chain: Harness) -> None:
    missing = run_explain(chain, "ews/retail/nope")
    assert missing.returncode == 1 and "EdgeWorkloadSet retail/nope not found" in missing.stderr
    bad = run_explain(chain, "pods/retail/footfall")
    assert bad.returncode == 1 and "unknown kind 'pods'" in bad.stderr
    # ew/ is the workload explanation, as without a kind
    child = run_explain(chain, "ew/retail/footfall-store-paris")
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("retail/footfall-store-paris: ")
