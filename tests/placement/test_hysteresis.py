"""Hysteresis: move only when needed, after the grace period; fail back after stabilization."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from continuum.api.loader import load_manifests
from continuum.placement import build_snapshot, decide
from continuum.placement.hysteresis import Action, HysteresisPolicy, judge

from tests.conftest import EXAMPLES

MANIFESTS = load_manifests([EXAMPLES / "cluster", EXAMPLES / "workloads"])
WORKLOAD = next(w for w in MANIFESTS.workloads if w.name == "line-defect-inspection").spec
POLICY = HysteresisPolicy(grace_seconds=60, stabilization_seconds=300)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def nodes(gpu_node_ready: bool = True):
    out = []
    for node in MANIFESTS.nodes:
        if node["metadata"]["name"] == "munich-ipc-1" and not gpu_node_ready:
            node = {
                **node,
                "status": {**node["status"], "conditions": [{"type": "Ready", "status": "False"}]},
            }
        out.append(node)
    return out


def decision(gpu_node_ready: bool = True):
    return decide(WORKLOAD, build_snapshot(MANIFESTS.pools, nodes(gpu_node_ready)))


def test_first_placement_takes_the_decision():
    d = decision()
    verdict = judge(WORKLOAD, None, d, T0, POLICY)
    assert verdict.action is Action.PLACE and verdict.target.pool == "munich-line"


def test_stays_while_the_pool_can_host_it_even_if_another_is_cheaper():
    cheaper = decision().placement.model_copy(update={"pool": "mec-frankfurt"})
    d = decision()
    assert judge(WORKLOAD, d.placement, d, T0, POLICY).action is Action.STAY
    # running on the (feasible, less preferred) MEC while munich-line is also fine: wait, do not jump
    on_mec = judge(WORKLOAD, cheaper.model_copy(update={"tier": "regional-mec"}), d, T0, POLICY)
    assert on_mec.action is Action.WAIT_STABILIZATION and on_mec.target.pool == "mec-frankfurt"


def test_staying_says_what_placing_said():
    """The next pass over a workload that was just placed (e.g. on its Deployment's progress) gives the same
    status text, so it writes no status for a rewording (on a real cluster that was ~0.4 extra status
    writes per workload in a burst)."""
    d = decision()
    placed = judge(WORKLOAD, None, d, T0, POLICY)
    stays = judge(WORKLOAD, placed.target, decision(), T0 + timedelta(seconds=5), POLICY)
    assert stays.action is Action.STAY
    assert stays.reason == placed.reason == d.message
    assert stays.reason.startswith("placed on pool munich-line (")


def test_grace_period_then_move():
    current = decision().placement
    broken = decision(gpu_node_ready=False)
    first = judge(WORKLOAD, current, broken, T0, POLICY)
    assert (
        first.action is Action.WAIT_GRACE
        and first.target.pool == "munich-line"
        and first.disruption_since == T0
    )
    later = judge(
        WORKLOAD, current, broken, T0 + timedelta(seconds=59), POLICY, disruption_since=first.disruption_since
    )
    assert later.action is Action.WAIT_GRACE
    moved = judge(
        WORKLOAD, current, broken, T0 + timedelta(seconds=60), POLICY, disruption_since=first.disruption_since
    )
    assert moved.action is Action.MOVE and moved.target.pool == "mec-frankfurt" and moved.moves


def test_recovery_within_grace_clears_the_disruption():
    current = decision().placement
    verdict = judge(WORKLOAD, current, decision(), T0 + timedelta(seconds=30), POLICY, disruption_since=T0)
    assert verdict.action is Action.STAY and verdict.disruption_since is None


def test_fail_back_only_after_the_stabilization_window():
    on_mec = decision(gpu_node_ready=False).candidates
    mec = next(c for c in on_mec if c.pool == "mec-frankfurt")
    assert mec.feasible
    current = decision().placement.model_copy(
        update={"pool": "mec-frankfurt", "tier": "regional-mec", "site": "mec-frankfurt"}
    )
    healthy = decision()
    start = judge(WORKLOAD, current, healthy, T0, POLICY)
    assert start.action is Action.WAIT_STABILIZATION and start.better_since == T0
    mid = judge(WORKLOAD, current, healthy, T0 + timedelta(seconds=299), POLICY, better_since=T0)
    assert mid.action is Action.WAIT_STABILIZATION
    back = judge(WORKLOAD, current, healthy, T0 + timedelta(seconds=300), POLICY, better_since=T0)
    assert back.action is Action.FAIL_BACK and back.target.pool == "munich-line"


def test_nowhere_to_go_keeps_it_running():
    current = decision().placement
    lonely = MANIFESTS.pools
    only_line = [p for p in lonely if p.name == "munich-line"]
    d = decide(WORKLOAD, build_snapshot(only_line, nodes(gpu_node_ready=False)))
    verdict = judge(WORKLOAD, current, d, T0 + timedelta(seconds=120), POLICY, disruption_since=T0)
    assert verdict.action is Action.UNSCHEDULABLE and verdict.target.pool == "munich-line"
