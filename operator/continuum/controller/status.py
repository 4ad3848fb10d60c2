"""Status of EdgeWorkloads and EdgeNodePools, built as the API models. Pure: inputs in, models out.

The reconcilers write ``dump(model)`` (the models' own serialisation, camelCase, no nulls) and replace
the whole status (:func:`status_patch` nulls out keys that are gone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from continuum.api.models import (
    Candidate,
    Condition,
    Disruption,
    DriftStatus,
    EdgeNodePoolStatus,
    EdgeWorkload,
    EdgeWorkloadSpec,
    EdgeWorkloadStatus,
    IngestStatus,
    Phase,
    Placement,
    ResourceAmounts,
    StateSyncStatus,
)
from continuum.api.quantity import format_cpu, format_memory
from continuum.placement.engine import PlacementDecision
from continuum.placement.hysteresis import Action, Verdict
from continuum.placement.snapshot import ClusterSnapshot, PoolUsage, Resources

STATUS_CANDIDATES = 20  # pools listed in status.candidates

PLACED_REASON = {
    Action.PLACE: "Placed",
    Action.STAY: "Placed",
    Action.MOVE: "Replaced",
    Action.FAIL_BACK: "FailedBack",
    Action.REBALANCE: "Rebalanced",
    Action.WAIT_GRACE: "PoolDegraded",
    Action.WAIT_STABILIZATION: "Placed",
    Action.UNSCHEDULABLE: "Unschedulable",
}


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def dump(model: BaseModel) -> dict[str, Any]:
    """A status model as written to the API (camelCase, no nulls)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


_CANDIDATE_DUMPS: dict[int, tuple[Candidate, dict[str, Any]]] = {}  # by id, the row kept alive with it


def dump_workload_status(status: EdgeWorkloadStatus) -> dict[str, Any]:
    """``dump(status)``, each candidate row dumped once: the rows of feasible pools are shared by every
    decision of a workload shape (``fast.PoolTable.static``), so their dumps are too (read them, never
    modify them). Rows are not modified once made."""
    out = status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"candidates"})
    rows = []
    for cand in status.candidates:
        hit = _CANDIDATE_DUMPS.get(id(cand))
        if hit is None or hit[0] is not cand:
            if len(_CANDIDATE_DUMPS) >= 20_000:
                _CANDIDATE_DUMPS.clear()
            hit = _CANDIDATE_DUMPS[id(cand)] = (cand, dump(cand))
        rows.append(hit[1])
    out["candidates"] = rows
    return out


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that replaces the whole status: top-level keys that are gone are nulled."""
    return {"status": {**{k: None for k in old if k not in new}, **new}}


def parse_conditions(raw: Iterable[Any] | None) -> list[Condition]:
    """The readable conditions of a written status (others are dropped, then rebuilt)."""
    out = []
    for cond in raw or []:
        try:
            out.append(Condition.model_validate(cond))
        except ValidationError:
            continue
    return out


def condition(
    ctype: str,
    ok: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    previous: list[Condition],
    now: datetime | None = None,
) -> Condition:
    """A condition whose ``lastTransitionTime`` moves only when its status changes; ok None is Unknown."""
    status: Literal["True", "False", "Unknown"] = "Unknown" if ok is None else "True" if ok else "False"
    old = next((c for c in previous if c.type == ctype), None)
    since = (
        old.last_transition_time
        if old is not None and old.status == status and old.last_transition_time
        else now or now_utc()
    )
    return Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message[:1024],
        last_transition_time=since,
        observed_generation=generation,
    )


def status_candidates(
    candidates: Iterable[Candidate], spec: EdgeWorkloadSpec, limit: int = STATUS_CANDIDATES
) -> tuple[list[Candidate], int]:
    """What status lists of the evaluated pools: the feasible ones in the order they would be chosen,
    then the nearest misses (fewest broken rules, preferred tiers first); (listed, omitted count).

    Status stays small with many pools (every watcher decodes it on every change); `continuum plan`
    lists every pool."""
    feasible = [c for c in candidates if c.feasible]
    rejected = sorted(
        (c for c in candidates if not c.feasible),
        key=lambda c: (len(c.reasons), spec.tiers.rank(c.tier), c.pool),
    )
    everything = feasible + rejected
    return everything[:limit], max(len(everything) - limit, 0)


def synced_condition(status: StateSyncStatus | None, sync_to: str | None) -> tuple[bool | None, str, str]:
    """(ok, reason, message) of the ``StateSynced`` condition; ok None is Unknown."""
    if status is None:
        return None, "NotObserved", "the worker's state has not been asked yet"
    if not status.reachable:
        return False, "Unreachable", status.message or "the worker did not answer /state/sync"
    if status.message:
        return False, "SyncFailing", status.message
    if sync_to is None:
        return True, "LocalOnly", f"state is local (no syncTo); {status.peers} peer(s)"
    if status.last_sync_time is None:
        return False, "NeverSynced", f"no successful sync to {sync_to} yet; {status.pending_updates} pending"
    return (
        status.pending_updates == 0,
        "Synced" if status.pending_updates == 0 else "Pending",
        f"{status.pending_updates} update(s) not yet acknowledged by {sync_to}",
    )


def drifting_condition(status: DriftStatus | None) -> tuple[bool | None, str, str]:
    """(drifting, reason, message) of the ``Drifting`` condition; None is Unknown."""
    if status is None:
        return None, "NotObserved", "the worker's drift has not been asked yet"
    if not status.reachable:
        return None, "Unreachable", status.message or "the worker did not answer its drift view"
    if status.message and status.window_status is None:
        return None, "NoReference", status.message
    if status.window_status in (None, "no-reference", "insufficient", "no-common-features"):
        why = {None: "no window closed yet", "no-reference": "the model has no drift reference",
               "insufficient": f"the last window had too few rows ({status.samples})",
               "no-common-features": "the reference and the traffic share no feature"}[status.window_status]  # fmt: skip
        return None, "NotScored", why
    if status.drifting:
        return (
            True,
            "Drifting",
            f"KS score {status.score} over {status.samples} rows; drifted: {', '.join(status.features)}",
        )
    return False, "WithinReference", f"KS score {status.score} over {status.samples} rows"


def drift_event(old: EdgeWorkloadStatus, new: EdgeWorkloadStatus) -> tuple[str, str, str] | None:
    """The Event (type, reason, message) when the ``Drifting`` condition turns True (start) or from
    True to False (end); Unknown in between (e.g. an unreachable worker) is neither."""
    was = next((c.status for c in old.conditions if c.type == "Drifting"), None)
    now = next((c for c in new.conditions if c.type == "Drifting"), None)
    if now is None:
        return None
    if now.status == "True" and was != "True":
        return "Warning", "DriftStarted", now.message
    if now.status == "False" and was == "True":
        return "Normal", "DriftEnded", now.message
    return None


def invalid_workload_status(
    message: str, generation: int | None, previous: list[Condition], now: datetime | None = None
) -> EdgeWorkloadStatus:
    return EdgeWorkloadStatus(
        phase=Phase.INVALID,
        message=message,
        conditions=[
            condition("Placed", False, "InvalidSpec", message, generation, previous, now),
            condition("Ready", False, "InvalidSpec", message, generation, previous, now),
        ],
        observed_generation=generation,
    )


def apply_error_message(status: int, reason: str, message: str) -> str:
    """What the API server's refusal of a rendered object means for the user (Ready condition, Event)."""
    text = f"the API server refused a rendered object ({status} {reason}): {message}"
    if status == 403 and "secrets" in message:
        text += (
            "; a workload with spec.state.enabled needs the operator to create a Secret (its sync token): "
            "with the Helm chart, set state.enabled=true"
        )
    elif status == 403:
        text += "; the operator's RBAC does not allow it"
    return text


def workload_status(
    workload: EdgeWorkload,
    old: EdgeWorkloadStatus,
    decision: PlacementDecision,
    verdict: Verdict,
    *,
    target: Placement | None,
    previous: Placement | None,
    ready: int,
    state: StateSyncStatus | None,
    drift: DriftStatus | None = None,
    now: datetime | None = None,
    apply_error: str | None = None,
    ingest: IngestStatus | None = None,
) -> EdgeWorkloadStatus:
    """The status after a decision: ``target`` and ``previous`` are where the workload runs now and
    what still drains (after the apply), ``ready`` its ready replicas, ``state`` its sync health;
    ``apply_error`` the API's refusal of a rendered object (Ready=False, reason ApplyFailed)."""
    now = now or now_utc()
    generation = workload.metadata.generation
    action, reason = verdict.action, verdict.reason
    placed = target is not None
    if target is not None:
        since = (
            old.placement.since if old.placement is not None and old.placement.pool == target.pool else None
        )
        target = target.model_copy(update={"since": since or now})
    phase = Phase.PLACED if placed and action is not Action.UNSCHEDULABLE else Phase.UNSCHEDULABLE
    replicas = workload.spec.replicas
    placed_message = (
        decision.message if action in (Action.PLACE, Action.UNSCHEDULABLE) and target is None else reason
    )
    ready_ok = placed and ready >= replicas and previous is None and apply_error is None
    ready_message = f"{ready}/{replicas} replicas ready" + (
        f", draining pool {previous.pool}" if previous else ""
    )
    ready_reason = "ReplicasReady" if ready_ok else "ReplicasNotReady"
    if apply_error is not None:
        ready_reason, ready_message = "ApplyFailed", apply_error
    listed, omitted = status_candidates(decision.candidates, workload.spec)
    omitted += decision.candidates_omitted  # pools the decision evaluated but did not list (fast path)
    extra: list[Condition] = []
    if workload.spec.state.enabled:
        sync_to = workload.spec.state.sync_to.value if workload.spec.state.sync_to else None
        ok, why, text = synced_condition(state, sync_to)
        extra.append(condition("StateSynced", ok, why, text, generation, old.conditions, now))
    if placed:
        ok, why, text = drifting_condition(drift)
        extra.append(condition("Drifting", ok, why, text, generation, old.conditions, now))
    disruption_since = verdict.disruption_since
    return EdgeWorkloadStatus(
        phase=phase,
        placement=target,
        previous_placement=previous,
        candidates=listed,
        candidates_omitted=omitted,
        hint=decision.hint if decision.placement is None else None,
        message=reason,
        ready_replicas=ready,
        disruption=Disruption(since=disruption_since, reason=reason) if disruption_since else None,
        better_since=verdict.better_since,
        conditions=[
            condition(
                "Placed",
                phase is Phase.PLACED and action is not Action.WAIT_GRACE,
                PLACED_REASON[action],
                placed_message,
                generation,
                old.conditions,
                now,
            ),
            condition(
                "Ready",
                ready_ok,
                ready_reason,
                ready_message,
                generation,
                old.conditions,
                now,
            ),
            *extra,
        ],
        state=state if workload.spec.state.enabled else None,
        drift=drift if placed else None,
        ingest=ingest if placed and workload.spec.ingest is not None else None,
        observed_generation=generation,
    )


def invalid_pool_status(
    error: str, generation: int | None, previous: list[Condition], now: datetime | None = None
) -> EdgeNodePoolStatus:
    return EdgeNodePoolStatus(
        conditions=[
            condition("Ready", False, "InvalidSpec", f"invalid spec: {error}", generation, previous, now)
        ],
        observed_generation=generation,
    )


def _amounts(res: Resources) -> ResourceAmounts:
    return ResourceAmounts(
        cpu=format_cpu(max(res.cpu_millis, 0)),
        memory=format_memory(max(res.memory_bytes, 0)),
        gpu=max(res.gpu, 0),
    )


def pool_status(
    name: str,
    generation: int | None,
    snapshot: ClusterSnapshot,
    used: PoolUsage,
    previous: list[Condition],
    now: datetime | None = None,
) -> EdgeNodePoolStatus:
    """Members, readiness, allocatable and what Continuum workloads request of one (valid) pool."""
    view = snapshot.pool(name)
    nodes = view.nodes if view else ()
    conflicts = sorted(n for n, pools in snapshot.conflicts.items() if name in pools)
    alloc = view.allocatable if view else Resources()
    ready = sum(1 for n in nodes if n.usable)
    return EdgeNodePoolStatus(
        member_nodes=[n.name for n in nodes],
        node_count=len(nodes),
        ready_nodes=ready,
        allocatable=_amounts(alloc),
        requested=_amounts(used.resources),
        workloads=max(used.workloads, 0),
        conflicts=conflicts,
        conditions=[
            condition(
                "Ready",
                ready > 0,
                "NodesReady" if ready else "NoReadyNodes",
                f"{ready}/{len(nodes)} member nodes ready",
                generation,
                previous,
                now,
            ),
            condition(
                "Conflict",
                bool(conflicts),
                "NodesInSeveralPools" if conflicts else "NoConflict",
                (
                    f"nodes also selected by another pool (they join neither): {', '.join(conflicts)}"
                    if conflicts
                    else "no node is selected by another pool"
                ),
                generation,
                previous,
                now,
            ),
        ],
        observed_generation=generation,
    )
