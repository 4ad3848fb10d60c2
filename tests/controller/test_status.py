"""Status builders: models in, models out; conditions keep their transition time while unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from continuum.api.models import Condition, EdgeWorkloadStatus, Phase, StateSyncStatus
from continuum.controller.status import (
    STATUS_CANDIDATES,
    condition,
    dump,
    dump_workload_status,
    invalid_pool_status,
    invalid_workload_status,
    pool_status,
    workload_status,
)
from continuum.placement import engine
from continuum.placement.hysteresis import Action, HysteresisPolicy, judge
from continuum.placement.snapshot import PoolUsage
from continuum.render.worker import readiness

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_a_condition_keeps_its_transition_time_until_its_status_changes():
    first = condition("Ready", False, "NotYet", "0/1", 1, [], T0)
    same = condition("Ready", False, "StillNot", "0/1", 2, [first], T1)
    flipped = condition("Ready", True, "Ok", "1/1", 2, [same], T1)
    assert (first.last_transition_time, same.last_transition_time, flipped.last_transition_time) == (
        T0,
        T0,
        T1,
    )
    assert same.reason == "StillNot" and same.observed_generation == 2
    assert condition("X", None, "r", "m" * 2000, None, [], T0).status == "Unknown"
    assert len(condition("X", None, "r", "m" * 2000, None, [], T0).message) == 1024


def test_readiness_is_complete_only_when_every_replica_is_updated_and_ready():
    deployment = {
        "metadata": {"generation": 2},
        "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2},
    }
    assert readiness(deployment, 2) == (2, True)
    assert readiness({**deployment, "metadata": {"generation": 3}}, 2) == (2, False)  # not observed yet
    assert readiness({**deployment, "status": {**deployment["status"], "replicas": 3}}, 2) == (
        2,
        False,
    )  # old left
    assert readiness(None, 1) == (0, False)


def test_a_first_placement(example_snapshot, example_workloads):
    workload = example_workloads["line-defect-inspection"]
    workload = workload.model_copy(
        update={"metadata": workload.metadata.model_copy(update={"generation": 4})}
    )
    decision = engine.decide(workload.spec, example_snapshot, {}, workload.key)
    verdict = judge(workload.spec, None, decision, T0, HysteresisPolicy())
    assert verdict.action is Action.PLACE
    status = workload_status(
        workload,
        EdgeWorkloadStatus(),
        decision,
        verdict,
        target=verdict.target,
        previous=None,
        ready=0,
        state=None,
        now=T0,
    )
    assert status.phase is Phase.PLACED and status.placement is not None
    assert status.placement.pool == decision.pool and status.placement.since == T0
    placed, ready, synced, drifting = status.conditions  # state is enabled for this workload
    assert (drifting.type, drifting.status, drifting.reason) == ("Drifting", "Unknown", "NotObserved")
    assert (placed.type, placed.status, placed.reason) == ("Placed", "True", "Placed")
    assert (ready.status, ready.reason, ready.message) == ("False", "ReplicasNotReady", "0/1 replicas ready")
    assert (synced.type, synced.status, synced.reason) == ("StateSynced", "Unknown", "NotObserved")
    assert len(status.candidates) <= STATUS_CANDIDATES
    feasible = [c.feasible for c in status.candidates]
    assert feasible == sorted(feasible, reverse=True)  # feasible pools first, then the nearest misses
    assert status.candidates_omitted == max(len(decision.candidates) - STATUS_CANDIDATES, 0)
    written = dump(status)
    assert dump_workload_status(status) == written == dump_workload_status(status)  # rows' dumps reused
    assert written["phase"] == "Placed" and "previousPlacement" not in written and "hint" not in written
    assert written["observedGeneration"] == 4 and written["conditions"][0]["observedGeneration"] == 4
    # the next pass (e.g. on the Deployment's progress) with nothing changed gives the same status: no write
    stays = judge(workload.spec, status.placement, decision, T1, HysteresisPolicy())
    again = workload_status(
        workload, status, decision, stays, target=stays.target, previous=None, ready=0, state=None, now=T1
    )
    assert stays.action is Action.STAY and dump_workload_status(again) == written
    # a later pass with the same outcome keeps the times; the replicas became ready
    later = workload_status(
        workload,
        status,
        decision,
        judge(workload.spec, status.placement, decision, T1, HysteresisPolicy()),
        target=status.placement,
        previous=None,
        ready=1,
        state=StateSyncStatus(observed_at=T1, reachable=True, last_sync_time=T1),
        now=T1,
    )
    assert later.placement is not None and later.placement.since == T0
    assert later.conditions[0].last_transition_time == T0
    assert later.conditions[1].status == "True" and later.conditions[1].last_transition_time == T1


def test_unschedulable_keeps_the_hint(example_snapshot, example_workloads):
    workload = example_workloads["quality-assistant"]
    decision = engine.decide(workload.spec, example_snapshot, {}, workload.key)
    verdict = judge(workload.spec, None, decision, T0, HysteresisPolicy())
    status = workload_status(
        workload,
        EdgeWorkloadStatus(),
        decision,
        verdict,
        target=None,
        previous=None,
        ready=0,
        state=None,
        now=T0,
    )
    assert status.phase is Phase.UNSCHEDULABLE and status.placement is None
    assert status.hint == decision.hint and status.conditions[0].reason == "Unschedulable"
    assert dump_workload_status(status) == dump(status)


def test_invalid_statuses_name_the_problem():
    workload = invalid_workload_status("invalid spec: spec.replicas: must be >= 1", 3, [], T0)
    assert workload.phase is Phase.INVALID and [c.reason for c in workload.conditions] == ["InvalidSpec"] * 2
    pool = dump(invalid_pool_status("spec.tier: bad", 2, [], T0))
    assert pool["conditions"][0]["message"] == "invalid spec: spec.tier: bad"
    assert pool["observedGeneration"] == 2


def test_pool_status_counts_members_and_what_workloads_request(example_snapshot):
    view = example_snapshot.pool("munich-line")
    used = PoolUsage()
    status = pool_status(
        "munich-line",
        1,
        example_snapshot,
        used,
        [Condition(type="Ready", status="True", last_transition_time=T0)],
        T1,
    )
    assert status.member_nodes == [n.name for n in view.nodes] and status.node_count == len(view.nodes)
    assert status.ready_nodes == sum(1 for n in view.nodes if n.usable)
    assert status.allocatable is not None and status.allocatable.gpu == view.allocatable.gpu
    assert status.requested is not None and (status.requested.cpu, status.requested.gpu) == ("0", 0)
    assert status.conditions[0].last_transition_time == T0  # still ready: time kept
    assert (status.conditions[1].type, status.conditions[1].status) == ("Conflict", "False")
    written = dump(status)
    assert written["conflicts"] == [] and written["requested"] == {"cpu": "0", "memory": "0", "gpu": 0}


def test_a_refused_apply_is_not_ready_and_says_why(example_snapshot, example_workloads):
    """403 on the state token Secret (the chart's state.enabled=false): Ready=False, ApplyFailed, the fix."""
    from continuum.controller.status import apply_error_message

    workload = example_workloads["line-defect-inspection"]
    decision = engine.decide(workload.spec, example_snapshot, {}, workload.key)
    verdict = judge(workload.spec, None, decision, T0, HysteresisPolicy())
    text = apply_error_message(
        403,
        "Forbidden",
        'secrets is forbidden: User "system:serviceaccount:continuum-system:continuum" '
        'cannot create resource "secrets" in API group "" in the namespace "manufacturing"',
    )
    status = workload_status(
        workload,
        EdgeWorkloadStatus(),
        decision,
        verdict,
        target=verdict.target,
        previous=None,
        ready=1,
        state=None,
        now=T0,
        apply_error=text,
    )
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ApplyFailed")
    assert "state.enabled=true" in ready.message and "403 Forbidden" in ready.message
    assert status.phase is Phase.PLACED  # the decision stands; only the objects could not be written
    other = apply_error_message(422, "Invalid", "spec.template: bad")
    assert "RBAC" not in other and "422 Invalid" in other
