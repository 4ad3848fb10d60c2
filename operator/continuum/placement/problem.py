"""The batch placement problem as arrays: what every solver (and the ILP reference) works on.

Rows are workloads, columns pools. Only pairs that pass every *static* rule (tier, privacy, residency,
latency, nodes, accelerator, single-node fit) are candidates, stored sparsely (CSR). What couples the
workloads is the *dynamic* part: each pool's aggregate capacity (cpu, memory, gpu) and WAN ingress.

Workloads asking for an accelerator run only on the pool's nodes that offer it. The rule
(:func:`filters.check_capacity`) is scheduler-safe: it does not know on which nodes the pool's other
workloads' pods land, so it counts *everything* on the pool against the accelerator nodes' capacity. As
a pool-level constraint: while a pool hosts a workload of accelerator class ``c`` that needs resource
``r``, the pool's total use of ``r`` stays within the class's nodes' free ``r`` (``accel_capacity``).
The solvers model exactly that, so what they place passes the rule.

Objective, lexicographic: (1) place as many workloads as possible, (2) the sum of preference ranks
(``tiers.preferred``: 0 for the first preferred tier, ...), (3) total hourly cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from continuum.api.models import EdgeWorkloadSpec, Privacy, Tier
from continuum.api.quantity import gib
from continuum.placement import filters
from continuum.placement.snapshot import ClusterSnapshot, PoolUsage, PoolView

RESOURCES = ("cpu_millis", "memory_bytes", "gpu")


@dataclass(frozen=True)
class WorkloadRequest:
    """A workload to place: its key (``namespace/name``), spec, and the pool it runs on now, if any."""

    key: str
    spec: EdgeWorkloadSpec
    current_pool: str | None = None


@dataclass
class AssignmentProblem:
    """Arrays for W workloads × P pools; candidate lists in CSR form, sorted by pool index per row."""

    pool_names: list[str]
    workload_keys: list[str]
    demand: npt.NDArray[np.float64]  # (W, 3): total cpu millis, memory bytes, gpus (replicas × request)
    ingest: npt.NDArray[np.float64]  # (W,): Mbps over the WAN when placed off-site
    capacity: npt.NDArray[np.float64]  # (P, 3): free capacity left for these workloads
    wan_capacity: npt.NDArray[np.float64]  # (P,): free WAN ingress, inf when unlimited
    cand_ptr: npt.NDArray[np.int64]  # (W+1,)
    cand_pool: npt.NDArray[np.int64]  # (nnz,)
    cand_cost: npt.NDArray[np.float64]  # (nnz,) hourly cost of this workload on this pool
    cand_rank: npt.NDArray[np.int64]  # (nnz,) preference rank, 0 best
    cand_offsite: npt.NDArray[np.bool_]  # (nnz,) True: the pair consumes ingest Mbps of WAN capacity
    current: npt.NDArray[np.int64]  # (W,) pool index the workload runs on now, -1 if none
    # accelerator classes (one per distinct ``resources.accelerator``): workload -> class, -1 none, and
    # per class and pool the free capacity of its nodes (what the whole pool may use while it hosts one)
    accel: npt.NDArray[np.int64] | None = None  # (W,)
    accel_capacity: npt.NDArray[np.float64] | None = None  # (C, P, 3)

    def __post_init__(self) -> None:
        if self.accel is None:
            self.accel = np.full(len(self.workload_keys), -1, dtype=np.int64)
        if self.accel_capacity is None:
            self.accel_capacity = np.zeros((0, len(self.pool_names), 3))

    @property
    def accel_classes(self) -> npt.NDArray[np.int64]:
        assert self.accel is not None
        return self.accel

    @property
    def accel_caps(self) -> npt.NDArray[np.float64]:
        assert self.accel_capacity is not None
        return self.accel_capacity

    def accel_gap(self) -> npt.NDArray[np.float64]:
        """(C, P, 3): how much less than the whole pool a pool may use while it hosts the class (>= 0)."""
        return np.maximum(self.capacity[None, :, :] - self.accel_caps, 0.0)

    @property
    def n_workloads(self) -> int:
        return len(self.workload_keys)

    @property
    def n_pools(self) -> int:
        return len(self.pool_names)

    def candidates(self, w: int) -> slice:
        return slice(int(self.cand_ptr[w]), int(self.cand_ptr[w + 1]))


@dataclass(frozen=True)
class Objective:
    placed: int
    rank: int
    cost: float

    def better_than(self, other: Objective, rel_tol: float = 1e-9) -> bool:
        if self.placed != other.placed:
            return self.placed > other.placed
        if self.rank != other.rank:
            return self.rank < other.rank
        return self.cost < other.cost * (1 - rel_tol) - 1e-12


def objective(problem: AssignmentProblem, assignment: npt.NDArray[np.int64]) -> Objective:
    placed = rank = 0
    cost = 0.0
    for w, p in enumerate(assignment):
        if p < 0:
            continue
        sl = problem.candidates(w)
        idx = np.nonzero(problem.cand_pool[sl] == p)[0]
        if len(idx) == 0:
            raise ValueError(f"workload {problem.workload_keys[w]} assigned to a non-candidate pool")
        k = sl.start + int(idx[0])
        placed += 1
        rank += int(problem.cand_rank[k])
        cost += float(problem.cand_cost[k])
    return Objective(placed, rank, cost)


def violations(problem: AssignmentProblem, assignment: npt.NDArray[np.int64]) -> list[str]:
    """Every capacity or bandwidth constraint the assignment breaks (empty when feasible)."""
    used = np.zeros_like(problem.capacity)
    wan = np.zeros(problem.n_pools)
    out = []
    for w, p in enumerate(assignment):
        if p < 0:
            continue
        sl = problem.candidates(w)
        idx = np.nonzero(problem.cand_pool[sl] == p)[0]
        if len(idx) == 0:
            out.append(f"{problem.workload_keys[w]}: pool {problem.pool_names[p]} is not a candidate")
            continue
        used[p] += problem.demand[w]
        if problem.cand_offsite[sl.start + int(idx[0])]:
            wan[p] += problem.ingest[w]
    for p in range(problem.n_pools):
        for r, name in enumerate(RESOURCES):
            if used[p, r] > problem.capacity[p, r] + 1e-6:
                out.append(f"pool {problem.pool_names[p]}: {name} {used[p, r]} > {problem.capacity[p, r]}")
    for w, p in enumerate(assignment):
        c = int(problem.accel_classes[w])
        if p < 0 or c < 0:
            continue
        for r, name in enumerate(RESOURCES):
            limit = problem.accel_caps[c, p, r]
            if problem.demand[w, r] > 0 and used[p, r] > limit + 1e-6:
                out.append(
                    f"pool {problem.pool_names[p]}: {name} {used[p, r]} > {limit} of accelerator "
                    f"class {c}'s nodes ({problem.workload_keys[w]} runs there)"
                )
        if wan[p] > problem.wan_capacity[p] + 1e-6:
            out.append(f"pool {problem.pool_names[p]}: wan {wan[p]} > {problem.wan_capacity[p]}")
    return out


def pool_capacities(
    pools: Sequence[PoolView], fixed_usage: Mapping[str, PoolUsage]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Free (cpu, memory, gpu) and WAN ingress per pool, after what ``fixed_usage`` already takes."""
    capacity = np.zeros((len(pools), 3))
    wan_capacity = np.full(len(pools), np.inf)
    for i, pool in enumerate(pools):
        used = fixed_usage.get(pool.name, PoolUsage())
        free = pool.free - used.resources
        capacity[i] = (max(free.cpu_millis, 0), max(free.memory_bytes, 0), max(free.gpu, 0))
        limit = pool.pool.spec.network.wan_ingress_mbps
        if limit is not None:
            wan_capacity[i] = max(limit - used.wan_mbps, 0.0)
    return capacity, wan_capacity


def _accel_classes(
    workloads: Sequence[WorkloadRequest],
) -> tuple[npt.NDArray[np.int64], list[EdgeWorkloadSpec]]:
    """Each workload's accelerator class (-1: none; classes in the order of their accelerator's name) and
    one spec per class."""
    keys = sorted({a for w in workloads if (a := w.spec.requirements.resources.accelerator) is not None})
    ids = {k: i for i, k in enumerate(keys)}
    accel = np.array(
        [ids.get(w.spec.requirements.resources.accelerator or "", -1) for w in workloads], dtype=np.int64
    )
    specs = [next(w.spec for w in workloads if w.spec.requirements.resources.accelerator == k) for k in keys]
    return accel.reshape(len(workloads)), specs


def _fixed_array(pools: Sequence[PoolView], fixed_usage: Mapping[str, PoolUsage]) -> npt.NDArray[np.float64]:
    out = np.zeros((len(pools), 3))
    for i, pool in enumerate(pools):
        used = fixed_usage.get(pool.name)
        if used is not None:
            out[i] = (used.resources.cpu_millis, used.resources.memory_bytes, used.resources.gpu)
    return out


def build_problem_reference(
    workloads: Sequence[WorkloadRequest],
    snapshot: ClusterSnapshot,
    fixed_usage: Mapping[str, PoolUsage] | None = None,
) -> AssignmentProblem:
    """Reference builder: runs the static rules of :mod:`filters` on every pair (the oracle for tests).

    ``fixed_usage`` is what workloads outside this batch already consume per pool. Capacity per
    workload is the aggregate free capacity of the pool's nodes that can run it: the pool's free
    capacity (``capacity``), or for a workload asking for an accelerator its class's nodes'
    (``accel_capacity``), which then bounds everything on the pool (see the module's docstring).
    """
    fixed_usage = fixed_usage or {}
    pools = list(snapshot.pools)
    index = {p.name: i for i, p in enumerate(pools)}
    capacity, wan_capacity = pool_capacities(pools, fixed_usage)
    demand = np.zeros((len(workloads), 3))
    ingest = np.zeros(len(workloads))
    ptr = [0]
    c_pool: list[int] = []
    c_cost: list[float] = []
    c_rank: list[int] = []
    c_off: list[bool] = []
    current = np.full(len(workloads), -1, dtype=np.int64)
    for w, req in enumerate(workloads):
        spec = req.spec
        total = filters.total_request(spec)
        demand[w] = (total.cpu_millis, total.memory_bytes, total.gpu)
        ingest[w] = spec.requirements.bandwidth.ingest_mbps
        if req.current_pool is not None and req.current_pool in index:
            current[w] = index[req.current_pool]
        for p, pool in enumerate(pools):
            if filters.static_reasons(spec, pool):
                continue
            c_pool.append(p)
            c_cost.append(filters.hourly_cost(spec, pool))
            c_rank.append(spec.tiers.rank(pool.tier))
            c_off.append(filters.is_offsite(spec, pool))
        ptr.append(len(c_pool))
    accel, class_specs = _accel_classes(workloads)
    fixed = _fixed_array(pools, fixed_usage)
    accel_capacity = np.zeros((len(class_specs), len(pools), 3))
    for c, class_spec in enumerate(class_specs):
        for p, pool in enumerate(pools):
            agg = filters.pool_capacity(class_spec, pool)
            accel_capacity[c, p] = (agg.cpu_millis, agg.memory_bytes, agg.gpu)
    accel_capacity = np.maximum(accel_capacity - fixed[None], 0.0)
    return AssignmentProblem(
        pool_names=[p.name for p in pools],
        workload_keys=[w.key for w in workloads],
        demand=demand,
        ingest=ingest,
        capacity=capacity,
        wan_capacity=wan_capacity,
        cand_ptr=np.asarray(ptr, dtype=np.int64),
        cand_pool=np.asarray(c_pool, dtype=np.int64),
        cand_cost=np.asarray(c_cost, dtype=np.float64),
        cand_rank=np.asarray(c_rank, dtype=np.int64),
        cand_offsite=np.asarray(c_off, dtype=np.bool_),
        current=current,
        accel=accel,
        accel_capacity=accel_capacity,
    )


def greedy_in_order(problem: AssignmentProblem) -> npt.NDArray[np.int64]:
    """The baseline: each workload in arrival order takes its best candidate with room left.

    This is what a per-pod scheduler does (kube-scheduler scores one pod at a time). On tight capacity
    it strands workloads that a batch solver places.
    """
    used = np.zeros_like(problem.capacity)
    wan = np.zeros(problem.n_pools)
    out = np.full(problem.n_workloads, -1, dtype=np.int64)
    limit = problem.capacity.copy()  # what each pool may use given the accelerator classes it hosts
    for w in range(problem.n_workloads):
        sl = problem.candidates(w)
        order = np.lexsort((problem.cand_pool[sl], problem.cand_cost[sl], problem.cand_rank[sl]))
        c = int(problem.accel_classes[w])
        needs = problem.demand[w] > 0
        for j in order:
            k = sl.start + int(j)
            p = int(problem.cand_pool[k])
            cap = (
                limit[p]
                if c < 0
                else np.where(needs, np.minimum(limit[p], problem.accel_caps[c, p]), limit[p])
            )
            if np.any(used[p] + problem.demand[w] > cap + 1e-9):
                continue
            extra = problem.ingest[w] if problem.cand_offsite[k] else 0.0
            if wan[p] + extra > problem.wan_capacity[p] + 1e-9:
                continue
            used[p] += problem.demand[w]
            wan[p] += extra
            limit[p] = cap
            out[w] = p
            break
    return out


def _pool_arrays(snapshot: ClusterSnapshot, fixed_usage: Mapping[str, PoolUsage]) -> dict[str, Any]:
    pools = list(snapshot.pools)
    n = len(pools)
    capacity, wan_capacity = pool_capacities(pools, fixed_usage)
    # nodes that can run replicas, flattened, with their pool index
    node_pool, node_free, node_labels = [], [], []
    for i, pool in enumerate(pools):
        for node in pool.usable_nodes:
            node_pool.append(i)
            free = node.free
            node_free.append((free.cpu_millis, free.memory_bytes, free.gpu))
            node_labels.append(dict(node.labels))
    return {
        "pools": pools,
        "capacity": capacity,
        "wan_capacity": wan_capacity,
        "tier": np.array([p.tier.order for p in pools], dtype=np.int64),
        "privacy": np.array([p.pool.spec.effective_max_privacy.rank for p in pools], dtype=np.int64),
        "site": [p.pool.spec.site for p in pools],
        "region": [p.pool.spec.region for p in pools],
        "has_nodes": np.array([bool(p.usable_nodes) for p in pools]),
        "cost": np.array(
            [(c.cpu, c.memory_gi_b, c.gpu, c.wan_mbps) for c in (p.pool.spec.cost for p in pools)]
        ).reshape(n, 4),
        "node_pool": np.asarray(node_pool, dtype=np.int64),
        "node_free": np.asarray(node_free, dtype=np.float64).reshape(len(node_pool), 3),
        "node_labels": node_labels,
    }


def build_problem(
    workloads: Sequence[WorkloadRequest],
    snapshot: ClusterSnapshot,
    fixed_usage: Mapping[str, PoolUsage] | None = None,
) -> AssignmentProblem:
    """Build the arrays with the static rules vectorized over pools (same result as the reference).

    ``fixed_usage`` is what workloads outside this batch already consume per pool.
    """
    fixed_usage = fixed_usage or {}
    arr = _pool_arrays(snapshot, fixed_usage)
    pools = arr["pools"]
    n_pools = len(pools)
    index = {p.name: i for i, p in enumerate(pools)}
    sites = sorted({*arr["site"], *(w.spec.source.site for w in workloads)})
    site_id = {s: i for i, s in enumerate(sites)}
    pool_site = np.array([site_id[s] for s in arr["site"]], dtype=np.int64)
    # rtt[site, pool]: NaN where there is no route
    rtt = np.full((len(sites), n_pools), np.nan)
    for j, pool in enumerate(pools):
        table = pool.pool.spec.network.rtt_ms
        if "*" in table:
            rtt[:, j] = table["*"]
        for site, value in table.items():
            if site in site_id:
                rtt[site_id[site], j] = value
    regions = sorted({r for r in arr["region"] if r is not None})
    region_id = np.array([regions.index(r) if r is not None else -1 for r in arr["region"]], dtype=np.int64)
    tiers = list(Tier)
    accel_cache: dict[str | None, tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]] = {}
    n_nodes = len(arr["node_pool"])

    def accelerator_masks(spec: EdgeWorkloadSpec) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        key = spec.requirements.resources.accelerator
        if key not in accel_cache:
            res = spec.requirements.resources
            node_ok = np.array([res.accelerator_matches(lbl) for lbl in arr["node_labels"]], dtype=np.bool_)
            pool_ok = np.zeros(n_pools, dtype=np.bool_)
            pool_ok[arr["node_pool"][node_ok]] = True
            accel_cache[key] = (node_ok, pool_ok)
        return accel_cache[key]

    demand = np.zeros((len(workloads), 3))
    ingest = np.zeros(len(workloads))
    current = np.full(len(workloads), -1, dtype=np.int64)
    ptr = [0]
    c_pool: list[npt.NDArray[np.int64]] = []
    c_cost: list[npt.NDArray[np.float64]] = []
    c_rank: list[npt.NDArray[np.int64]] = []
    c_off: list[npt.NDArray[np.bool_]] = []
    tier_of_pool = arr["tier"]
    for w, req in enumerate(workloads):
        spec = req.spec
        reqs = spec.requirements
        one = filters.replica_request(spec)
        total = one.scaled(spec.replicas)
        demand[w] = (total.cpu_millis, total.memory_bytes, total.gpu)
        ingest[w] = reqs.bandwidth.ingest_mbps
        if req.current_pool is not None and req.current_pool in index:
            current[w] = index[req.current_pool]
        ok = arr["has_nodes"].copy()
        if spec.tiers.allowed is not None:
            allowed_tier = np.zeros(len(tiers), dtype=np.bool_)
            allowed_tier[[t.order for t in spec.tiers.allowed]] = True
            ok &= allowed_tier[tier_of_pool]
        offsite = pool_site != site_id[spec.source.site]
        ok &= arr["privacy"] >= reqs.privacy.rank
        if reqs.privacy is Privacy.RESTRICTED:
            ok &= ~offsite
        if reqs.residency is not None:
            allowed_region = np.zeros(len(regions) + 1, dtype=np.bool_)  # last slot: pools without a region
            allowed_region[[regions.index(r) for r in reqs.residency if r in regions]] = True
            ok &= allowed_region[region_id]
        inference = np.array([reqs.inference_ms.get(t, 0.0) for t in tiers])[tier_of_pool]
        latency = rtt[site_id[spec.source.site]] + inference
        with np.errstate(invalid="ignore"):
            ok &= ~np.isnan(latency) & (latency <= reqs.latency_budget_ms)
        node_ok, pool_ok = accelerator_masks(spec)
        ok &= pool_ok
        if n_nodes:
            fits = node_ok & np.all(
                arr["node_free"] >= np.array([one.cpu_millis, one.memory_bytes, one.gpu]), axis=1
            )
            fit_pool = np.zeros(n_pools, dtype=np.bool_)
            fit_pool[arr["node_pool"][fits]] = True
            ok &= fit_pool
        else:
            ok &= False
        cand = np.nonzero(ok)[0]
        costs = arr["cost"][cand]
        wan = np.where(offsite[cand], reqs.bandwidth.ingest_mbps, 0.0)
        per_replica = (
            one.cpu_millis / 1000 * costs[:, 0] + gib(one.memory_bytes) * costs[:, 1] + one.gpu * costs[:, 2]
        )
        c_pool.append(cand.astype(np.int64))
        c_cost.append(spec.replicas * per_replica + wan * costs[:, 3])
        c_rank.append(np.array([spec.tiers.rank(t) for t in tiers], dtype=np.int64)[tier_of_pool[cand]])
        c_off.append(offsite[cand])
        ptr.append(ptr[-1] + len(cand))

    def cat(parts: list[Any], dtype: Any) -> Any:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    accel, class_specs = _accel_classes(workloads)
    accel_capacity = np.zeros((len(class_specs), n_pools, 3))
    for c, class_spec in enumerate(class_specs):
        node_ok, _ = accelerator_masks(class_spec)
        np.add.at(accel_capacity[c], arr["node_pool"][node_ok], arr["node_free"][node_ok])
    if len(class_specs):
        accel_capacity = np.maximum(accel_capacity - _fixed_array(pools, fixed_usage)[None], 0.0)
    return AssignmentProblem(
        pool_names=[p.name for p in pools],
        workload_keys=[w.key for w in workloads],
        demand=demand,
        ingest=ingest,
        capacity=arr["capacity"],
        wan_capacity=arr["wan_capacity"],
        cand_ptr=np.asarray(ptr, dtype=np.int64),
        cand_pool=cat(c_pool, np.int64),
        cand_cost=cat(c_cost, np.float64),
        cand_rank=cat(c_rank, np.int64),
        cand_offsite=cat(c_off, np.bool_),
        current=current,
        accel=accel,
        accel_capacity=accel_capacity,
    )
