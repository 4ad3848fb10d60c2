"""The placement rules vectorized over pools: verdicts, reason codes and margins for every pool at once.

:mod:`filters` is the readable reference, one rule per function; this module evaluates the same rules
for one workload against all pools as array operations, so explaining a decision costs about what
deciding it costs. ``tests/placement/test_fast.py`` checks, on random instances, that both give the same
verdict and the same reason codes in the same order for every pool, the same chosen pool and the same
hint. Messages are written by :mod:`filters` itself, only for the pools that are shown.

* :class:`PoolTable` compiles a :class:`~continuum.placement.snapshot.ClusterSnapshot` once;
  ``snapshot.table`` builds it on first use and keeps it with the snapshot (the operator rebuilds its
  snapshot only when a node, pod or pool changed, so the table follows).
* :meth:`PoolTable.evaluate` gives a :class:`Verdicts` for one workload and the usage of every pool.
* :func:`decide` is the operator's per-workload path: the decision and the candidates its status lists.
* :func:`explain_compact` picks what ``continuum plan`` shows when there are many pools: the chosen pool,
  up to ``alternatives`` feasible ones, and per reason code the nearest misses, with counts per code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from continuum.api.models import Candidate, EdgeWorkloadSpec, Privacy, Reason, ReasonCode, Tier
from continuum.api.quantity import gib
from continuum.placement import filters
from continuum.placement.filters import construct
from continuum.placement.snapshot import ClusterSnapshot, PoolUsage, Resources

# Rule slots, in the order filters.evaluate lists reasons; node-fit and aggregate capacity share a code.
SLOTS: tuple[ReasonCode, ...] = (
    ReasonCode.TIER_NOT_ALLOWED,
    ReasonCode.PRIVACY,
    ReasonCode.RESIDENCY,
    ReasonCode.LATENCY,
    ReasonCode.NO_NODES,
    ReasonCode.ACCELERATOR,
    ReasonCode.CAPACITY,  # one replica fits on no single node (static)
    ReasonCode.BANDWIDTH,
    ReasonCode.CAPACITY,  # aggregate capacity (dynamic)
)
TIER, PRIVACY, RESIDENCY, LATENCY, NO_NODES, ACCEL, NODE_FIT, BANDWIDTH, CAPACITY = range(len(SLOTS))
_FIXABLE_SLOTS = (LATENCY, NO_NODES, ACCEL, NODE_FIT, BANDWIDTH, CAPACITY)
_TIERS = list(Tier)
_CODE_SLOTS = {code.value: [s for s, c in enumerate(SLOTS) if c is code] for code in set(SLOTS)}
EPS = 1e-9


_CHECKS = (
    lambda spec, pool, used: filters.check_tier(spec, pool),
    lambda spec, pool, used: filters.check_privacy(spec, pool),
    lambda spec, pool, used: filters.check_residency(spec, pool),
    lambda spec, pool, used: filters.check_latency(spec, pool),
    lambda spec, pool, used: filters.check_nodes(spec, pool),
    lambda spec, pool, used: filters.check_accelerator(spec, pool),
    lambda spec, pool, used: filters.check_node_fit(spec, pool),
    filters.check_bandwidth,
    filters.check_capacity,
)  # by slot


def usage_array(pool_names: Sequence[str], usage: Mapping[str, PoolUsage]) -> npt.NDArray[np.float64]:
    """(P, 4): cpu millis, memory bytes, gpus and WAN Mbps used per pool by other workloads."""
    n = len(pool_names)
    if not usage:
        return np.zeros((n, 4))
    rows = [
        _NO_USE
        if (u := usage.get(name)) is None
        else (u.resources.cpu_millis, u.resources.memory_bytes, u.resources.gpu, u.wan_mbps)
        for name in pool_names
    ]
    return np.array(rows, dtype=np.float64).reshape(n, 4)


_NO_USE = (0, 0, 0, 0.0)


@dataclass
class Verdicts:
    """Every rule for one workload against every pool (arrays of length P)."""

    bad: npt.NDArray[np.bool_]  # (P, len(SLOTS)): rule slot broken
    latency: npt.NDArray[np.float64]  # rtt + inference, NaN without a route
    cost: npt.NDArray[np.float64]
    rank: npt.NDArray[np.int64]
    miss: npt.NDArray[np.float64]  # (P, len(SLOTS)): relative size of the change each broken rule asks
    static: _Static  # what did not depend on the usage, shared by workloads of one shape

    @cached_property
    def feasible(self) -> npt.NDArray[np.bool_]:
        return np.logical_not(self.bad.any(axis=1))

    @cached_property
    def n_broken(self) -> npt.NDArray[np.int64]:
        return self.bad.sum(axis=1)

    def codes(self, p: int) -> list[ReasonCode]:
        return [SLOTS[s] for s in np.nonzero(self.bad[p])[0]]

    def rejected_by_reason(self) -> dict[str, int]:
        """How many pools break each reason code (a pool breaking two rules counts under both)."""
        per_slot = self.bad.sum(axis=0).tolist()
        per_slot[NODE_FIT] = int((self.bad[:, NODE_FIT] | self.bad[:, CAPACITY]).sum())
        per_slot[CAPACITY] = 0
        out: dict[str, int] = {}
        for slot, count in enumerate(per_slot):
            if count:
                out[SLOTS[slot].value] = int(count)
        return out


def shape_of(spec: EdgeWorkloadSpec) -> tuple[Any, ...]:
    """Everything of ``spec`` that :meth:`PoolTable.evaluate` reads: workloads of one shape get the same
    verdicts from the same usage (many workloads share a shape: one model served at many sites)."""
    reqs = spec.requirements
    res = reqs.resources
    tiers = spec.tiers
    return (
        spec.source.site,
        spec.replicas,
        reqs.latency_budget_ms,
        reqs.privacy,
        None if reqs.residency is None else tuple(reqs.residency),
        tuple(sorted(reqs.inference_ms.items(), key=lambda kv: kv[0].order)) if reqs.inference_ms else (),
        reqs.bandwidth.ingest_mbps,
        res.cpu,
        res.memory,
        res.gpu,
        res.accelerator,
        None if tiers.allowed is None else tuple(tiers.allowed),
        tuple(tiers.preferred),
    )


@dataclass
class _Static:
    """The part of :meth:`PoolTable.evaluate` that does not depend on the usage, for one workload shape
    (arrays read-only: shared by every :class:`Verdicts` of the shape)."""

    bad: npt.NDArray[np.bool_]  # (len(SLOTS), P); the usage-dependent rows (BANDWIDTH, CAPACITY) False
    miss: npt.NDArray[np.float64]  # (len(SLOTS), P)
    latency: npt.NDArray[np.float64]
    cost: npt.NDArray[np.float64]
    rank: npt.NDArray[np.int64]
    wan_need: npt.NDArray[np.float64]
    offsite: npt.NDArray[np.bool_]
    node_level: npt.NDArray[np.bool_]
    needs: list[tuple[int, float]]  # (resource column, what the replicas need together), needs > 0
    agg: npt.NDArray[np.float64]  # (P, 3) aggregate free of the eligible nodes
    order: npt.NDArray[np.int64]  # every pool in choice order (rank, cost, tier, name)
    rows: dict[int, Candidate]  # candidate rows of feasible pools, made once (they do not read the usage)


class PoolTable:
    """A snapshot compiled to arrays (pools sorted by name, as in the snapshot)."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.snapshot = snapshot
        pools = list(snapshot.pools)
        self.pools = pools
        self.names = [p.name for p in pools]
        self.index = {n: i for i, n in enumerate(self.names)}
        n = len(pools)
        self.name_rank = np.empty(n, dtype=np.int64)  # position of each pool in name order (tie-breaks)
        self.name_rank[sorted(range(n), key=lambda i: self.names[i])] = np.arange(n)
        self.n = n
        self.tiers = [p.tier for p in pools]
        self.tier = np.array([p.tier.order for p in pools], dtype=np.int64)
        self.privacy = np.array([p.pool.spec.effective_max_privacy.rank for p in pools], dtype=np.int64)
        self.sites = [p.pool.spec.site for p in pools]
        self._site_ids: dict[str, int] = {}
        self.site = np.array(
            [self._site_ids.setdefault(s, len(self._site_ids)) for s in self.sites], dtype=np.int64
        )
        self._region_ids: dict[str, int] = {}
        self.region = np.array(
            [
                -1 if r is None else self._region_ids.setdefault(r, len(self._region_ids))
                for r in (p.pool.spec.region for p in pools)
            ],
            dtype=np.int64,
        )
        self.wan_limit = np.array(
            [np.inf if (w := p.pool.spec.network.wan_ingress_mbps) is None else w for p in pools],
            dtype=np.float64,
        )
        self.cost = np.array(
            [(c.cpu, c.memory_gi_b, c.gpu, c.wan_mbps) for c in (p.pool.spec.cost for p in pools)],
            dtype=np.float64,
        ).reshape(n, 4)
        self.has_usable = np.array([bool(p.usable_nodes) for p in pools], dtype=np.bool_)
        self.no_usable = ~self.has_usable
        self.wan_limited = np.isfinite(self.wan_limit)
        node_pool, node_free, node_labels = [], [], []
        for i, pool in enumerate(pools):
            for node in pool.usable_nodes:
                node_pool.append(i)
                f = node.free
                node_free.append((f.cpu_millis, f.memory_bytes, f.gpu))
                node_labels.append(dict(node.labels))
        self.node_pool = np.asarray(node_pool, dtype=np.int64)
        self.node_free = np.asarray(node_free, dtype=np.float64).reshape(len(node_pool), 3)
        self.node_labels = node_labels
        self.node_cpu, self.node_mem, self.node_gpu = (self.node_free[:, r].copy() for r in range(3))
        self._rtt: dict[str, npt.NDArray[np.float64]] = {}
        self._rtt_star: npt.NDArray[np.float64] | None = None
        self._rtt_sites: dict[str, list[tuple[int, float]]] = {}
        self._accel: dict[
            str | None, tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.float64]]
        ] = {}
        self._rank: dict[tuple[Tier, ...], npt.NDArray[np.int64]] = {}
        self._static: dict[tuple[Any, ...], _Static] = {}

    # --- per-key caches (sites, accelerators and preference lists repeat across workloads) ----------
    def rtt(self, site: str) -> npt.NDArray[np.float64]:
        """RTT from ``site`` to every pool (``network.rtt_from``: the site's entry, else "*", else NaN)."""
        out = self._rtt.get(site)
        if out is None:
            if self._rtt_star is None:  # one pass over every pool's table, then per site only its entries
                self._rtt_star = np.full(self.n, np.nan)
                self._rtt_sites = {}
                for i, pool in enumerate(self.pools):
                    for key, value in pool.pool.spec.network.rtt_ms.items():
                        if key == "*":
                            self._rtt_star[i] = value
                        else:
                            self._rtt_sites.setdefault(key, []).append((i, value))
            out = self._rtt_star.copy()
            for i, value in self._rtt_sites.get(site, ()):
                out[i] = value
            self._rtt[site] = out
        return out

    def accelerator(
        self, spec: EdgeWorkloadSpec
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """(eligible node mask, pool has an eligible node, aggregate free of eligible nodes (P, 3))."""
        res = spec.requirements.resources
        key = res.accelerator
        hit = self._accel.get(key)
        if hit is None:
            node_ok = np.fromiter(
                (res.accelerator_matches(lbl) for lbl in self.node_labels),
                dtype=np.bool_,
                count=len(self.node_labels),
            )
            pool_ok = np.zeros(self.n, dtype=np.bool_)
            pool_ok[self.node_pool[node_ok]] = True
            agg = np.zeros((self.n, 3))
            np.add.at(agg, self.node_pool[node_ok], self.node_free[node_ok])
            hit = (node_ok, pool_ok, agg)
            self._accel[key] = hit
        return hit

    def ranks(self, spec: EdgeWorkloadSpec) -> npt.NDArray[np.int64]:
        key = tuple(spec.tiers.preferred)
        out = self._rank.get(key)
        if out is None:
            out = np.array([spec.tiers.rank(t) for t in _TIERS], dtype=np.int64)[self.tier]
            self._rank[key] = out
        return out

    # --- the rules -----------------------------------------------------------------------------------
    def evaluate(self, spec: EdgeWorkloadSpec, used: npt.NDArray[np.float64]) -> Verdicts:
        """Every rule of :func:`filters.evaluate` for ``spec`` against every pool; ``used``: (P, 4)."""
        st = self.static(spec)
        bad = st.bad.copy()
        miss = st.miss.copy()
        ingest = spec.requirements.bandwidth.ingest_mbps
        if ingest:
            wan_need = st.wan_need
            wan_free = np.maximum(self.wan_limit - used[:, 3], 0.0)
            np.greater(wan_need, wan_free + 1e-9, out=bad[BANDWIDTH])
            bad[BANDWIDTH] &= st.offsite & self.wan_limited
            with np.errstate(divide="ignore", invalid="ignore"):
                miss[BANDWIDTH] = np.where(
                    wan_free > 0, wan_need / wan_free - 1, 1.0 + wan_need / max(ingest, 1.0)
                )
        if st.needs:
            n = self.n
            short_max = np.zeros(n)
            over = np.zeros(n, dtype=np.bool_)
            for r, need in st.needs:
                free = np.maximum(st.agg[:, r] - used[:, r], 0.0)
                over |= need > free
                np.maximum(short_max, np.maximum(need - free, 0.0) / need, out=short_max)
            np.greater(over, st.node_level, out=bad[CAPACITY])  # over & ~node_level
            miss[CAPACITY] = short_max
        return Verdicts(bad=bad.T, latency=st.latency, cost=st.cost, rank=st.rank, miss=miss.T, static=st)

    def static(self, spec: EdgeWorkloadSpec) -> _Static:
        """The usage-independent part of :meth:`evaluate` for ``spec``'s shape (made once per shape)."""
        shape = shape_of(spec)
        st = self._static.get(shape)
        if st is None:
            if len(self._static) >= 4096:  # many distinct shapes: start over rather than grow without bound
                self._static.clear()
            st = self._static[shape] = self._make_static(spec)
        return st

    def _make_static(self, spec: EdgeWorkloadSpec) -> _Static:
        n = self.n
        reqs = spec.requirements
        res = reqs.resources
        bad = np.zeros((len(SLOTS), n), dtype=np.bool_)  # one contiguous row per rule slot
        miss = np.zeros((len(SLOTS), n))
        if spec.tiers.allowed is not None:
            allowed = np.ones(len(_TIERS), dtype=np.bool_)
            allowed[[t.order for t in spec.tiers.allowed]] = False
            bad[TIER] = allowed[self.tier]
        offsite = self.site != self._site_ids.get(spec.source.site, -1)
        np.less(self.privacy, reqs.privacy.rank, out=bad[PRIVACY])
        if reqs.privacy is Privacy.RESTRICTED:
            bad[PRIVACY] |= offsite
        if reqs.residency is not None:
            region_ok = np.zeros(len(self._region_ids) + 1, dtype=np.bool_)  # last: no region
            region_ok[[self._region_ids[r] for r in reqs.residency if r in self._region_ids]] = True
            bad[RESIDENCY] = ~region_ok[self.region]
        inference = np.array([reqs.inference_ms.get(t, 0.0) for t in _TIERS])[self.tier]
        latency = self.rtt(spec.source.site) + inference
        budget = reqs.latency_budget_ms
        no_route = np.isnan(latency)
        with np.errstate(invalid="ignore"):
            np.greater(latency, budget, out=bad[LATENCY])
        bad[LATENCY] |= no_route
        miss[LATENCY] = latency / budget - 1
        miss[LATENCY][no_route] = 1.0
        bad[NO_NODES] = self.no_usable
        node_ok, pool_ok, agg = self.accelerator(spec)
        if res.accelerator is not None:
            bad[ACCEL] = self.has_usable & ~pool_ok
        one = (float(res.cpu_millis), float(res.memory_bytes), float(res.gpu))
        if len(node_ok):
            fits = self.node_cpu >= one[0]
            fits &= self.node_mem >= one[1]
            if one[2]:
                fits &= self.node_gpu >= one[2]
            if res.accelerator is not None:
                fits &= node_ok
            fit_pool = np.bincount(self.node_pool[fits], minlength=n) > 0
            np.greater(pool_ok, fit_pool, out=bad[NODE_FIT])  # pool_ok & ~fit_pool
        miss[NODE_FIT] = np.inf  # needs a bigger node than any there: no small change
        miss[NO_NODES] = miss[ACCEL] = 1.0
        ingest = reqs.bandwidth.ingest_mbps
        wan_need = offsite * ingest
        node_level = bad[NO_NODES] | bad[ACCEL] | bad[NODE_FIT]
        needs = [(r, one[r] * spec.replicas) for r in range(3) if one[r] * spec.replicas > 0]
        per_replica = (
            res.cpu_millis / 1000 * self.cost[:, 0]
            + gib(res.memory_bytes) * self.cost[:, 1]
            + res.gpu * self.cost[:, 2]
        )
        cost = spec.replicas * per_replica + wan_need * self.cost[:, 3]
        rank = self.ranks(spec)
        rounded = np.array([round(c, 9) for c in cost.tolist()])  # Python's rounding, as the reference
        order = np.lexsort((self.name_rank, self.tier, rounded, rank))
        for array in (bad, miss, latency, cost, wan_need, offsite, node_level, agg, order):
            array.flags.writeable = False
        return _Static(bad, miss, latency, cost, rank, wan_need, offsite, node_level, needs, agg, order, {})

    # --- ordering and choosing ---------------------------------------------------------------------------
    def choice_order(
        self, v: Verdicts, pools: npt.NDArray[np.int64], limit: int | None = None
    ) -> npt.NDArray[np.int64]:
        """``pools`` in the order :func:`engine.explain` ranks feasible pools: rank, cost, tier, name
        (only the first ``limit``: found by a partition, then sorted exactly)."""
        idx = np.asarray(pools, dtype=np.int64)
        if limit is not None and len(idx) > limit:
            # rank + cost/(1+cost) orders like (rank, cost); keep everything within a rounding step of
            # the limit-th value, so the exact sort below (rounded cost, tier, name) sees every tie
            cost = v.cost[idx]
            key = v.rank[idx] + cost / (1.0 + cost)
            kth = np.partition(key, limit - 1)[limit - 1]
            idx = idx[key <= kth + 1e-8]
        cost = np.array([round(c, 9) for c in v.cost[idx].tolist()])  # Python's rounding, as the reference
        keys = (self.name_rank[idx], self.tier[idx], cost, v.rank[idx])
        out = idx[np.lexsort(keys)]
        return out if limit is None else out[:limit]

    def chosen(self, v: Verdicts) -> int:
        """The pool :func:`engine.decide` chooses, or -1."""
        feasible = np.nonzero(v.feasible)[0]
        if not len(feasible):
            return -1
        return int(self.choice_order(v, feasible, 1)[0])

    def nearest_misses(
        self,
        v: Verdicts,
        pools: npt.NDArray[np.int64],
        slots: Sequence[int] | None = None,
        limit: int | None = None,
        n_broken: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.int64]:
        """Rejected ``pools`` nearest first: fewest broken rules, smallest change asked (by ``slots``), then
        preferred tiers, cost, name; only the first ``limit`` (a partition first, then an exact sort)."""
        idx = np.asarray(pools, dtype=np.int64)
        broken = (v.n_broken if n_broken is None else n_broken)[idx]
        if slots:
            if len(slots) == 1:
                size = v.miss[idx, slots[0]]
            else:
                size = np.max(np.where(v.bad[idx][:, slots], v.miss[idx][:, slots], -np.inf), axis=1)
        else:
            size = np.zeros(len(idx))
        if limit is not None and len(idx) > limit:
            # broken + a squashed size orders like (broken, size); keep all up to the limit-th value
            with np.errstate(invalid="ignore"):
                key = broken + np.where(np.isposinf(size), 1.0, (np.arctan(size) + np.pi / 2) / np.pi * 0.999)
            kth = np.partition(key, limit - 1)[limit - 1]
            keep = key <= kth
            idx, broken, size = idx[keep], broken[keep], size[keep]
        order = np.lexsort((self.name_rank[idx], v.cost[idx], v.rank[idx], size, broken))
        return idx[order] if limit is None else idx[order][:limit]

    # --- candidates with messages ------------------------------------------------------------------------
    def candidates(
        self, spec: EdgeWorkloadSpec, v: Verdicts, picked: Sequence[int], usage_of: Any
    ) -> list[Candidate]:
        """The rows of :meth:`candidate` for the pools ``picked``, in that order, from the arrays at once
        (``usage_of(p)``: what the others use of pool ``p``, read only for the rejected ones)."""
        if not len(picked):
            return []
        idx = np.asarray(picked, dtype=np.int64)
        bad = v.bad[idx]
        rejected: list[bool] = np.any(bad, axis=1).tolist()
        latency = v.latency[idx].tolist()
        cost = v.cost[idx].tolist()
        rows = v.static.rows  # the feasible pools' rows do not read the usage: made once per shape
        out = []
        for j, p in enumerate(picked):
            p = int(p)
            if rejected[j]:
                reasons = self.reasons(spec, v, p, usage_of(p), np.nonzero(bad[j])[0])
                out.append(self._row(p, False, latency[j], cost[j], reasons))
                continue
            row = rows.get(p)
            if row is None:
                row = rows[p] = self._row(p, True, latency[j], cost[j], [])
            out.append(row)
        return out

    def _row(self, p: int, feasible: bool, est: float, cost: float, reasons: list[Reason]) -> Candidate:
        return construct(
            Candidate,
            pool=self.names[p],
            tier=self.tiers[p],
            feasible=feasible,
            estimated_latency_ms=None if est != est else round(est, 3),  # NaN: no route
            hourly_cost=round(cost, 6),
            reasons=reasons,
        )

    def candidate(self, spec: EdgeWorkloadSpec, v: Verdicts, p: int, usage: PoolUsage) -> Candidate:
        """The candidate row for pool ``p``; reasons written by :func:`filters.evaluate` (the reference)."""
        broken = np.nonzero(v.bad[p])[0]
        feasible = not len(broken)
        reasons = [] if feasible else self.reasons(spec, v, p, usage, broken)
        return self._row(p, feasible, float(v.latency[p]), float(v.cost[p]), reasons)

    def reasons(
        self, spec: EdgeWorkloadSpec, v: Verdicts, p: int, usage: PoolUsage, broken: Any = None
    ) -> list[Reason]:
        """The reasons pool ``p`` is rejected, each written by its rule in :mod:`filters` (only the
        broken rules run: the same list :func:`filters.evaluate` gives)."""
        pool = self.pools[p]
        out = []
        for slot in np.nonzero(v.bad[p])[0] if broken is None else broken:
            reason = _CHECKS[int(slot)](spec, pool, usage)
            if (
                reason is None
            ):  # the arrays and the reference disagree (tests say they do not): trust the latter
                return filters.evaluate(spec, pool, usage)
            out.append(reason)
        return out

    def hint(self, spec: EdgeWorkloadSpec, v: Verdicts, usage_of: Any) -> str | None:
        """:func:`engine.hint` from the arrays: the pool asking for the smallest fixable change."""
        from continuum.placement.engine import _fix  # the wording lives with the reference

        if self.n == 0:
            return "no EdgeNodePool exists yet"
        rejected = ~v.feasible
        fixable_only = rejected & ~v.bad[:, [TIER, PRIVACY, RESIDENCY]].any(axis=1)
        size = np.where(v.bad, v.miss, 0.0)[:, list(_FIXABLE_SLOTS)].sum(axis=1)
        ok = fixable_only & np.isfinite(size)
        cands = np.nonzero(ok)[0]
        if not len(cands):
            codes = sorted({SLOTS[s].value for s in np.nonzero(v.bad.any(axis=0))[0]})
            return (
                "every pool breaks a rule no small change fixes ("
                + ", ".join(codes)
                + "): relax tiers, privacy or residency, or add a pool"
            )
        if len(cands) > 1:  # only those within a rounding step of the smallest change can win
            sizes = size[cands]
            cands = cands[sizes <= sizes.min() + 1e-8]
        keys = (
            self.name_rank[cands],
            np.array([round(c, 6) for c in v.cost[cands].tolist()]),
            v.rank[cands],
            np.array([round(s, 9) for s in size[cands].tolist()]),
        )
        best = int(cands[np.lexsort(keys)[0]])
        pool = self.pools[best]
        fixes: list[str] = []
        for reason in self.reasons(spec, v, best, usage_of(best)):
            text = _fix(spec, pool, reason)
            if text not in fixes:
                fixes.append(text)
        return f"to fit on pool {pool.name}: " + "; ".join(fixes)


def _usage_lookup(table: PoolTable, usage: Mapping[str, PoolUsage]) -> Any:
    return lambda p: usage.get(table.names[p], PoolUsage())


def _row_lookup(used: npt.NDArray[np.float64]) -> Any:
    def usage_of(p: int) -> PoolUsage:
        r = used[p].tolist()
        return PoolUsage(Resources(int(r[0]), int(r[1]), int(r[2])), r[3])

    return usage_of


@dataclass(frozen=True)
class Shown:
    """What is shown of one workload's evaluation: candidate rows and counts of the rest."""

    candidates: list[Candidate]
    rejected_by_reason: dict[str, int]
    omitted: int


def explain_all(spec: EdgeWorkloadSpec, table: PoolTable, v: Verdicts, usage_of: Any) -> Shown:
    """Every pool, feasible first in choice order, then the rejected by name (as :func:`engine.explain`)."""
    feasible = v.feasible
    rejected = np.nonzero(~feasible)[0]
    order = list(table.choice_order(v, np.nonzero(feasible)[0])) + list(
        rejected[np.argsort(table.name_rank[rejected])]
    )
    return Shown(table.candidates(spec, v, order, usage_of), v.rejected_by_reason(), 0)


def explain_compact(
    spec: EdgeWorkloadSpec,
    table: PoolTable,
    v: Verdicts,
    usage_of: Any,
    chosen: int,
    alternatives: int = 3,
    misses_per_reason: int = 2,
) -> Shown:
    """The chosen pool, up to ``alternatives`` feasible others in choice order, then for each reason code
    (most frequent first) its ``misses_per_reason`` nearest misses; the rest is counted, not listed."""
    feasible = np.nonzero(v.feasible)[0]
    order = table.choice_order(v, feasible, alternatives + 1)
    picked: list[int] = []
    if chosen >= 0:
        picked.append(chosen)
    for p in order:
        if len(picked) >= alternatives + (1 if chosen >= 0 else 0):
            break
        if int(p) != chosen:
            picked.append(int(p))
    counts = v.rejected_by_reason()
    seen = set(picked)
    m = misses_per_reason
    if m > 0 and counts:
        # each group's nearest misses: one key per (rule, pool) that orders like (broken rules, size of
        # the change), a partition per rule for the m-th key, then the exact order on the few kept
        bad_rows, miss_rows = v.bad.T, v.miss.T
        for code in sorted(counts, key=lambda c: (-counts[c], c)):
            slot = _CODE_SLOTS[code][0]
            if slot == NODE_FIT:  # one Capacity group: a replica fits on no node, or not all together
                member = bad_rows[NODE_FIT] | bad_rows[CAPACITY]
                sizes = np.where(bad_rows[CAPACITY], miss_rows[CAPACITY], miss_rows[NODE_FIT])
            else:
                member, sizes = bad_rows[slot], miss_rows[slot]
            if counts[code] > m:
                clipped = np.minimum(sizes, 1e300)  # sizes of broken rules are >= 0 (inf: no small change)
                with np.errstate(divide="ignore", invalid="ignore"):  # rules not broken: masked out
                    key = np.where(member, v.n_broken + 0.999 * clipped / (1.0 + clipped), np.inf)
                near = np.nonzero(key <= np.partition(key, m - 1)[m - 1])[0]
            else:
                near = np.nonzero(member)[0]
            size = sizes[near]
            order = np.lexsort((table.name_rank[near], v.cost[near], v.rank[near], size, v.n_broken[near]))
            for p in near[order][:m].tolist():
                if p not in seen:
                    seen.add(p)
                    picked.append(p)
    rows = table.candidates(spec, v, picked, usage_of)
    return Shown(rows, counts, table.n - len(rows))


@dataclass(frozen=True)
class FastDecision:
    """A decision for the operator: what ``engine.decide`` + ``status_candidates`` give, from arrays."""

    pool: str | None
    candidates: list[Candidate]  # what status lists (feasible in choice order, then nearest misses)
    candidates_omitted: int
    rejected_by_reason: dict[str, int]
    hint: str | None
    feasible_pools: int = 0


def decide(
    spec: EdgeWorkloadSpec,
    table: PoolTable,
    usage: Mapping[str, PoolUsage] | None = None,
    limit: int = 20,
    used: npt.NDArray[np.float64] | None = None,
    include: str | None = None,
) -> FastDecision:
    """One workload against every pool, given what the others use (``usage`` by pool name, or the
    same as a (P, 4) array ``used``): the chosen pool, the first ``limit`` candidates in the order the
    operator's status lists them (feasible ones as they would be chosen, then the rejected with the
    fewest broken rules, preferred tiers first), the count per reason code, and the hint. The pool
    named ``include`` (the one the workload runs on) is listed too, after the others if it is not
    among the first ``limit``, so the hysteresis can always read its verdict."""
    if used is None:
        usage = usage or {}
        used = usage_array(table.names, usage)
        usage_of = _usage_lookup(table, usage)
    else:  # the usage rows are the reference: read them back as PoolUsage for the messages
        usage_of = _row_lookup(used)
    v = table.evaluate(spec, used)
    feasible = v.feasible
    ranked = v.static.order  # every pool in choice order, made once per shape: keep the feasible ones
    order = ranked[feasible[ranked]][:limit].tolist()
    if len(order) < limit:
        idx = np.nonzero(~feasible)[0]
        near = idx[np.lexsort((table.name_rank[idx], v.rank[idx], v.n_broken[idx]))]
        order += near[: limit - len(order)].tolist()
    order = order[:limit]
    extra = table.index.get(include) if include is not None else None
    if extra is not None and extra not in order:
        order.append(extra)
    shown = table.candidates(spec, v, order, usage_of)
    chosen = order[0] if order and feasible[order[0]] else -1
    return FastDecision(
        pool=table.names[chosen] if chosen >= 0 else None,
        candidates=shown,
        candidates_omitted=table.n - len(shown),
        rejected_by_reason=v.rejected_by_reason(),
        hint=None if chosen >= 0 else table.hint(spec, v, usage_of),
        feasible_pools=int(feasible.sum()),
    )


def decide_placement(
    spec: EdgeWorkloadSpec,
    snapshot: ClusterSnapshot,
    usage: Mapping[str, PoolUsage] | None = None,
    key: str = "",
    current: str | None = None,
    limit: int = 20,
    used: npt.NDArray[np.float64] | None = None,
) -> Any:
    """The operator's per-workload call: :func:`engine.decide` as an ``engine.PlacementDecision`` whose
    ``candidates`` are already what status lists (see :func:`decide`; ``current``: the pool the
    workload runs on, always listed), with ``candidates_omitted``, ``rejected_by_reason`` and
    ``feasible_pools`` over every pool. Same decision, hint and rows as the reference. ``used``: the
    same usage as a (P, 4) array in ``snapshot.table``'s pool order (then ``usage`` is not read)."""
    from continuum.api.models import Phase
    from continuum.placement.engine import PlacementDecision, placement_on

    table = snapshot.table
    d = decide(spec, table, usage, limit, used=used, include=current)
    pool = snapshot.pool(d.pool) if d.pool is not None else None
    return PlacementDecision(
        key,
        Phase.PLACED if pool is not None else Phase.UNSCHEDULABLE,
        placement_on(spec, pool) if pool is not None else None,
        tuple(d.candidates),
        d.hint,
        d.rejected_by_reason,
        d.candidates_omitted,
        d.feasible_pools,
    )
