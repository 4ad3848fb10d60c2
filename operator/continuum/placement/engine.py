"""Placement decisions with explanations: filter (hard rules) → order (preference, cost) → choose.

* :func:`decide` places one workload given what the others already use (the operator's path).
* :func:`decide_batch` places many at once with a batch solver (``continuum plan``, rebalancing),
  then explains each decision against the final usage of every pool.

Every candidate pool carries its verdict and the reasons it was rejected; an unschedulable workload
gets a hint of the smallest change that would make it fit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from continuum.api.models import Candidate, EdgeWorkloadSpec, Phase, Placement, Reason, ReasonCode
from continuum.placement import filters
from continuum.placement.problem import AssignmentProblem, WorkloadRequest, build_problem
from continuum.placement.snapshot import ClusterSnapshot, PoolUsage, PoolView, Resources

Solver = Callable[[AssignmentProblem], npt.NDArray[np.int64]]


@dataclass(frozen=True)
class PlacementDecision:
    key: str
    phase: Phase
    placement: Placement | None
    candidates: tuple[Candidate, ...]  # the pools shown (every pool unless the explanation is compact)
    hint: str | None = None
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)  # pools per reason code (all pools)
    candidates_omitted: int = 0  # pools evaluated but not in candidates
    feasible_pools: int | None = None  # pools that could host it (all pools, shown or not)

    @property
    def pool(self) -> str | None:
        return self.placement.pool if self.placement else None

    @property
    def message(self) -> str:
        if self.placement is not None:
            return placed_message(self.placement)
        rejected = sum(1 for c in self.candidates if not c.feasible) + self.candidates_omitted
        text = f"no pool can host it ({rejected} rejected)"
        return f"{text}; {self.hint}" if self.hint else text


def placed_message(p: Placement) -> str:
    """What a workload's status says about the pool it is placed on (the same text while it stays there
    and the estimates hold: the status is not rewritten for a new wording)."""
    return (
        f"placed on pool {p.pool} ({p.tier.value} at {p.site}): "
        f"{p.estimated_latency_ms:g} ms estimated, {p.hourly_cost:.4g}/h"
    )


@dataclass
class UsageLedger:
    """Per-pool consumption by placed workloads, keyed by workload so one can be taken out again."""

    by_pool: dict[str, PoolUsage] = field(default_factory=dict)
    by_workload: dict[str, tuple[str, PoolUsage]] = field(default_factory=dict)

    def add(self, key: str, pool: str, usage: PoolUsage) -> None:
        self.remove(key)
        self.by_workload[key] = (pool, usage)
        self.by_pool[pool] = self.by_pool.get(pool, PoolUsage()) + usage

    def remove(self, key: str) -> None:
        if key in self.by_workload:
            pool, usage = self.by_workload.pop(key)
            self.by_pool[pool] = self.by_pool[pool] - usage

    def without(self, key: str) -> dict[str, PoolUsage]:
        """Usage per pool by every workload except ``key``."""
        out = dict(self.by_pool)
        if key in self.by_workload:
            pool, usage = self.by_workload[key]
            out[pool] = out[pool] - usage
        return out


def ledger_for(placed: Iterable[tuple[str, EdgeWorkloadSpec, str]], snapshot: ClusterSnapshot) -> UsageLedger:
    """Build the ledger from (key, spec, pool) of placed workloads; unknown pools are skipped."""
    ledger = UsageLedger()
    for key, spec, pool_name in placed:
        pool = snapshot.pool(pool_name)
        if pool is not None:
            ledger.add(key, pool_name, filters.usage_of(spec, pool))
    return ledger


def _sort_key(spec: EdgeWorkloadSpec, pool: PoolView) -> tuple[int, float, int, str]:
    return (spec.tiers.rank(pool.tier), round(filters.hourly_cost(spec, pool), 9), pool.tier.order, pool.name)


def explain(
    spec: EdgeWorkloadSpec, snapshot: ClusterSnapshot, usage: Mapping[str, PoolUsage]
) -> list[Candidate]:
    """Every pool with its verdict, feasible ones first in the order they would be chosen."""
    rows: list[tuple[tuple[int, float, int, str], Candidate]] = []
    for pool in snapshot.pools:
        reasons = filters.evaluate(spec, pool, usage.get(pool.name, PoolUsage()))
        est = filters.estimate_latency(spec, pool).total_ms
        cand = Candidate.model_construct(  # values computed here from validated specs
            pool=pool.name,
            tier=pool.tier,
            feasible=not reasons,
            estimated_latency_ms=None if est is None else round(est, 3),
            hourly_cost=round(filters.hourly_cost(spec, pool), 6),
            reasons=reasons,
        )
        order = _sort_key(spec, pool) if not reasons else (1 << 30, 0.0, 0, pool.name)
        rows.append((order, cand))
    rows.sort(key=lambda r: r[0])
    return [c for _, c in rows]


def placement_on(spec: EdgeWorkloadSpec, pool: PoolView) -> Placement:
    est = filters.estimate_latency(spec, pool).total_ms
    return Placement(
        pool=pool.name,
        tier=pool.tier,
        site=pool.pool.spec.site,
        estimated_latency_ms=round(est or 0.0, 3),
        wan_mbps=filters.wan_mbps(spec, pool),
        hourly_cost=round(filters.hourly_cost(spec, pool), 6),
    )


def _finish(
    key: str,
    spec: EdgeWorkloadSpec,
    snapshot: ClusterSnapshot,
    candidates: list[Candidate],
    chosen: str | None,
    usage: Mapping[str, PoolUsage],
) -> PlacementDecision:
    if chosen is not None:
        pool = snapshot.pool(chosen)
        assert pool is not None
        return PlacementDecision(key, Phase.PLACED, placement_on(spec, pool), tuple(candidates))
    return PlacementDecision(
        key, Phase.UNSCHEDULABLE, None, tuple(candidates), hint(spec, snapshot, candidates, usage)
    )


def decide(
    spec: EdgeWorkloadSpec,
    snapshot: ClusterSnapshot,
    usage: Mapping[str, PoolUsage] | None = None,
    key: str = "",
) -> PlacementDecision:
    """Place one workload: the best feasible pool by (preference rank, cost), given others' usage."""
    usage = usage or {}
    candidates = explain(spec, snapshot, usage)
    chosen = candidates[0].pool if candidates and candidates[0].feasible else None
    return _finish(key, spec, snapshot, candidates, chosen, usage)


def decide_batch(
    workloads: Sequence[WorkloadRequest],
    snapshot: ClusterSnapshot,
    fixed_usage: Mapping[str, PoolUsage] | None = None,
    solver: Solver | None = None,
    compact: bool = False,
    alternatives: int = 3,
    misses_per_reason: int = 2,
    assignment: npt.NDArray[np.int64] | None = None,
    full_for: Collection[str] = (),
) -> list[PlacementDecision]:
    """Place many workloads at once (deterministic for the same input, whatever its order).

    The solver works on arrays (:mod:`problem`); each result is then checked against every rule with
    the final usage of every pool (vectorized, :mod:`fast`), and a workload that would break one is
    left unschedulable rather than over-committing a pool. Explanations list every pool, or with
    ``compact`` the chosen pool, ``alternatives`` feasible others and ``misses_per_reason`` nearest misses
    per reason code, with the count of pools per code. ``assignment`` (pool index per workload, in key
    order, as the solver returns it) skips the solver. Workloads whose key is in ``full_for`` list every
    pool even when ``compact``. Same result as :func:`decide_batch_reference`.
    """
    from continuum.placement import fast
    from continuum.placement.solver import solve  # the default batch solver

    order = sorted(range(len(workloads)), key=lambda i: workloads[i].key)
    batch = [workloads[i] for i in order]
    table = snapshot.table
    if assignment is None:
        problem = build_problem(batch, snapshot, fixed_usage)
        assignment = (solver or solve)(problem)
    used = fast.usage_array(table.names, fixed_usage or {})
    own: list[tuple[int, npt.NDArray[np.float64]] | None] = [None] * len(batch)
    for w, p in enumerate(assignment.tolist()):
        if p >= 0:
            u = filters.usage_of(batch[w].spec, snapshot.pools[p])
            row = np.array([u.resources.cpu_millis, u.resources.memory_bytes, u.resources.gpu, u.wan_mbps])
            used[p] += row
            own[w] = (p, row)

    decisions: dict[str, PlacementDecision] = {}
    for w, req in enumerate(batch):
        mine = own[w]
        others = used
        if mine is not None:
            others = used.copy()
            others[mine[0]] -= mine[1]  # what the others use (as UsageLedger.without computes it)
        v = table.evaluate(req.spec, others)
        usage_of = _usage_lookup(others)
        chosen = mine[0] if mine is not None else -1
        if chosen >= 0 and v.bad[chosen].any():
            chosen = -1  # would break a rule against the final usage: leave it out
            used = others
        if compact and req.key not in full_for:
            shown = fast.explain_compact(
                req.spec, table, v, usage_of, chosen, alternatives, misses_per_reason
            )
        else:
            shown = fast.explain_all(req.spec, table, v, usage_of)
        if chosen >= 0:
            decision = PlacementDecision(
                req.key,
                Phase.PLACED,
                placement_on(req.spec, snapshot.pools[chosen]),
                tuple(shown.candidates),
                None,
                shown.rejected_by_reason,
                shown.omitted,
                int(v.feasible.sum()),
            )
        else:
            decision = PlacementDecision(
                req.key,
                Phase.UNSCHEDULABLE,
                None,
                tuple(shown.candidates),
                table.hint(req.spec, v, usage_of),
                shown.rejected_by_reason,
                shown.omitted,
                int(v.feasible.sum()),
            )
        decisions[req.key] = decision
    return [decisions[w.key] for w in workloads]


def decide_batch_reference(
    workloads: Sequence[WorkloadRequest],
    snapshot: ClusterSnapshot,
    fixed_usage: Mapping[str, PoolUsage] | None = None,
    solver: Solver | None = None,
) -> list[PlacementDecision]:
    """:func:`decide_batch` explained pool by pool with :mod:`filters` (the oracle for tests).

    The solver works on arrays (:mod:`problem`); each result is then checked against the exact
    rules with the final usage of every pool, and a workload that would break one is left
    unschedulable rather than over-committing a pool.
    """
    from continuum.placement.solver import solve  # the default batch solver

    order = sorted(range(len(workloads)), key=lambda i: workloads[i].key)
    batch = [workloads[i] for i in order]
    problem = build_problem(batch, snapshot, fixed_usage)
    assignment = (solver or solve)(problem)
    ledger = UsageLedger()
    ledger.by_pool.update(fixed_usage or {})
    for w, p in enumerate(assignment):
        if p >= 0:
            view = snapshot.pools[int(p)]
            ledger.add(batch[w].key, view.name, filters.usage_of(batch[w].spec, view))
    decisions: dict[str, PlacementDecision] = {}
    for w, req in enumerate(batch):
        others = ledger.without(req.key)
        candidates = explain(req.spec, snapshot, others)
        chosen: str | None = snapshot.pools[int(assignment[w])].name if assignment[w] >= 0 else None
        if chosen is not None and not next(c for c in candidates if c.pool == chosen).feasible:
            ledger.remove(req.key)
            chosen = None
        decisions[req.key] = _finish(req.key, req.spec, snapshot, candidates, chosen, others)
    return [decisions[w.key] for w in workloads]


def decide_in_order(
    workloads: Sequence[WorkloadRequest],
    snapshot: ClusterSnapshot,
    fixed_usage: Mapping[str, PoolUsage] | None = None,
    compact: bool = False,
    alternatives: int = 3,
    misses_per_reason: int = 2,
    full_for: Collection[str] = (),
) -> list[PlacementDecision]:
    """The per-workload greedy baseline in arrival order (what kube-scheduler does), explained against
    the usage at the time of each decision; vectorized, same result as :func:`decide_in_order_reference`
    (``compact`` etc. as in :func:`decide_batch`)."""
    from continuum.placement import fast

    table = snapshot.table
    used = fast.usage_array(table.names, fixed_usage or {})
    own: dict[str, tuple[int, npt.NDArray[np.float64]]] = {}
    out = []
    for req in workloads:
        others = used
        if req.key in own:  # a key given twice: its first placement is taken out, as UsageLedger does
            p, row = own.pop(req.key)
            used = used.copy()
            used[p] -= row
            others = used
        v = table.evaluate(req.spec, others)
        usage_of = _usage_lookup(others)
        chosen = table.chosen(v)
        if compact and req.key not in full_for:
            shown = fast.explain_compact(
                req.spec, table, v, usage_of, chosen, alternatives, misses_per_reason
            )
        else:
            shown = fast.explain_all(req.spec, table, v, usage_of)
        feasible = int(v.feasible.sum())
        if chosen >= 0:
            pool = snapshot.pools[chosen]
            decision = PlacementDecision(
                req.key,
                Phase.PLACED,
                placement_on(req.spec, pool),
                tuple(shown.candidates),
                None,
                shown.rejected_by_reason,
                shown.omitted,
                feasible,
            )
            u = filters.usage_of(req.spec, pool)
            row = np.array([u.resources.cpu_millis, u.resources.memory_bytes, u.resources.gpu, u.wan_mbps])
            used = used.copy()
            used[chosen] += row
            own[req.key] = (chosen, row)
        else:
            decision = PlacementDecision(
                req.key,
                Phase.UNSCHEDULABLE,
                None,
                tuple(shown.candidates),
                table.hint(req.spec, v, usage_of),
                shown.rejected_by_reason,
                shown.omitted,
                feasible,
            )
        out.append(decision)
    return out


def _usage_lookup(current: npt.NDArray[np.float64]) -> Callable[[int], PoolUsage]:
    def usage_of(p: int) -> PoolUsage:
        r = current[p]
        return PoolUsage(Resources(int(r[0]), int(r[1]), int(r[2])), float(r[3]))

    return usage_of


def decide_in_order_reference(
    workloads: Sequence[WorkloadRequest],
    snapshot: ClusterSnapshot,
    fixed_usage: Mapping[str, PoolUsage] | None = None,
) -> list[PlacementDecision]:
    """:func:`decide_in_order` pool by pool with :mod:`filters` (the oracle for tests)."""
    ledger = UsageLedger(by_pool=dict(fixed_usage or {}))
    out = []
    for req in workloads:
        decision = decide(req.spec, snapshot, ledger.without(req.key), key=req.key)
        if decision.placement is not None:
            pool = snapshot.pool(decision.placement.pool)
            assert pool is not None
            ledger.add(req.key, pool.name, filters.usage_of(req.spec, pool))
        out.append(decision)
    return out


# --- hints ----------------------------------------------------------------------------------------

_FIXABLE = {
    ReasonCode.LATENCY,
    ReasonCode.CAPACITY,
    ReasonCode.BANDWIDTH,
    ReasonCode.NO_NODES,
    ReasonCode.ACCELERATOR,
}


def _fix(spec: EdgeWorkloadSpec, pool: PoolView, reason: Reason) -> str:
    if reason.code is ReasonCode.LATENCY:
        est = filters.estimate_latency(spec, pool)
        if est.rtt_ms is None:
            return f'add network.rttMs["{spec.source.site}"] to pool {pool.name}'
        total = est.rtt_ms + est.inference_ms
        return f"raise requirements.latencyBudgetMs to {total:g} ms"
    if reason.code is ReasonCode.CAPACITY:
        return f"add capacity in pool {pool.name} ({reason.message})"
    if reason.code is ReasonCode.BANDWIDTH:
        return f"raise network.wanIngressMbps of pool {pool.name} or lower bandwidth.ingestMbps ({reason.message})"
    if reason.code is ReasonCode.NO_NODES:
        return f"bring nodes of pool {pool.name} back ({reason.message})"
    return f"label a node of pool {pool.name} with the accelerator ({reason.message})"


def _fix_size(spec: EdgeWorkloadSpec, pool: PoolView, reason: Reason, used: PoolUsage) -> float:
    """How big a change the reason asks for, relative to what the workload asks (0.5 = 50 % more)."""
    if reason.code is ReasonCode.LATENCY:
        total = filters.estimate_latency(spec, pool).total_ms
        return 1.0 if total is None else total / spec.requirements.latency_budget_ms - 1
    if reason.code is ReasonCode.BANDWIDTH:
        limit = pool.pool.spec.network.wan_ingress_mbps or 0.0
        wan_free = max(limit - used.wan_mbps, 0.0)
        wan_need = filters.wan_mbps(spec, pool)
        return wan_need / wan_free - 1 if wan_free > 0 else 1.0 + wan_need / max(wan_need, 1.0)
    if reason.code is ReasonCode.CAPACITY:
        one = filters.replica_request(spec)
        nodes = filters.eligible_nodes(spec, pool)
        if nodes and not any(one.fits_in(n) for n in nodes):  # needs a bigger node than any there
            return float("inf")
        need = filters.total_request(spec)
        free = (filters.pool_capacity(spec, pool) - used.resources).clamp()
        short = (need - free).clamp()
        pairs = (
            (short.cpu_millis, need.cpu_millis),
            (short.memory_bytes, need.memory_bytes),
            (short.gpu, need.gpu),
        )
        return max(s / n for s, n in pairs if n > 0)
    return 1.0


def hint(
    spec: EdgeWorkloadSpec,
    snapshot: ClusterSnapshot,
    candidates: Sequence[Candidate],
    usage: Mapping[str, PoolUsage] | None = None,
) -> str | None:
    """The smallest change that would make the workload fit: among pools that break only fixable rules
    (latency, capacity, bandwidth, nodes, accelerator), the one asking for the smallest relative change."""
    usage = usage or {}
    best: tuple[tuple[float, int, float, str], PoolView, list[Reason]] | None = None
    for cand in candidates:
        if cand.feasible or not cand.reasons or any(r.code not in _FIXABLE for r in cand.reasons):
            continue
        pool = snapshot.pool(cand.pool)
        if pool is None:
            continue
        used = usage.get(pool.name, PoolUsage())
        size = sum(_fix_size(spec, pool, r, used) for r in cand.reasons)
        if size == float("inf"):
            continue
        order = (round(size, 9), spec.tiers.rank(pool.tier), cand.hourly_cost or 0.0, pool.name)
        if best is None or order < best[0]:
            best = (order, pool, list(cand.reasons))
    if best is None:
        if not candidates:
            return "no EdgeNodePool exists yet"
        codes = sorted({r.code.value for c in candidates for r in c.reasons})
        return (
            "every pool breaks a rule no small change fixes ("
            + ", ".join(codes)
            + "): relax tiers, privacy or residency, or add a pool"
        )
    _, pool, reasons = best
    fixes: list[str] = []
    for reason in reasons:
        text = _fix(spec, pool, reason)
        if text not in fixes:
            fixes.append(text)
    return f"to fit on pool {pool.name}: " + "; ".join(fixes)
