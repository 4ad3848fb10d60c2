"""The claims ledger: what every workload holds of each pool, summed per pool. Pure (no I/O, no clock).

A workload claims the pool of its ``status.placement`` and, while a move drains, the pool of its
``status.previousPlacement`` (:data:`~continuum.controller.keys.CLAIM_PLACEMENT`,
:data:`~continuum.controller.keys.CLAIM_PREVIOUS`). A decision made but not yet written to status is
*reserved* so that two workloads decided back to back never take the same room. Usage of a claim
depends on the pool (site, hence WAN), so the ledger is recomputed when the snapshot changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from continuum.api.models import EdgeWorkloadSpec, Phase
from continuum.controller.keys import CLAIM_PLACEMENT, CLAIM_PREVIOUS, WorkloadKey
from continuum.placement import fast, filters
from continuum.placement.snapshot import ClusterSnapshot, PoolUsage

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Claims = Mapping[str, str]  # claim entry (CLAIM_PLACEMENT, CLAIM_PREVIOUS) -> pool name


@dataclass(frozen=True)
class Claim:
    pool: str
    usage: PoolUsage


@dataclass(frozen=True)
class ClaimChange:
    """What :meth:`ClaimsLedger.set` did: ``changed`` (per-pool sums moved), ``freed`` (some pool
    has more room than before, so unschedulable workloads deserve another look)."""

    changed: bool = False
    freed: bool = False


UNCHANGED = ClaimChange()


def claims_in_status(status: Mapping[str, Any] | None) -> dict[str, str]:
    """The claims a workload's written status holds (only placed or unschedulable workloads hold any)."""
    status = status or {}
    if status.get("phase") not in (Phase.PLACED.value, Phase.UNSCHEDULABLE.value):
        return {}
    out = {}
    for fieldname, entry in (("placement", CLAIM_PLACEMENT), ("previousPlacement", CLAIM_PREVIOUS)):
        pool = (status.get(fieldname) or {}).get("pool")
        if pool:
            out[entry] = pool
    return out


class ClaimsLedger:
    def __init__(self) -> None:
        self._claims: dict[WorkloadKey, dict[str, Claim]] = {}
        self.by_pool: dict[str, PoolUsage] = {}
        self._reserved: dict[WorkloadKey, dict[str, str]] = {}  # decided, not yet in status
        self.epoch = 0  # bumped whenever capacity is freed (cached decisions become stale)
        # by_pool as a (P, 4) array in a PoolTable's pool order, refreshed row by row (the pools whose
        # sum moved since), so a decision does not rebuild it from the dict
        self._array: tuple[fast.PoolTable, npt.NDArray[np.float64]] | None = None
        self._moved: set[str] = set()
        # per workload: what its claims were last computed from (the wanted pools, the spec object, the
        # snapshot object); the same inputs again give the same claims, so set() returns at once (a
        # workload's claims are refreshed on each of its watch events and twice per reconcile)
        self._inputs: dict[WorkloadKey, tuple[tuple[tuple[str, str], ...], object, object]] = {}

    def reserve(self, key: WorkloadKey, claims: Claims) -> None:
        self._reserved[key] = dict(claims)

    def release(self, key: WorkloadKey) -> None:
        self._reserved.pop(key, None)

    def wanted(self, key: WorkloadKey, status: Mapping[str, Any] | None) -> dict[str, str]:
        """The reservation if there is one, else what the workload's status holds."""
        if key in self._reserved:
            return dict(self._reserved[key])
        return claims_in_status(status)

    def claims(self, key: WorkloadKey) -> dict[str, Claim]:
        return dict(self._claims.get(key, {}))

    def set(
        self,
        key: WorkloadKey,
        wanted: Claims,
        spec: EdgeWorkloadSpec | None,
        snapshot: ClusterSnapshot | None,
    ) -> ClaimChange:
        """Make ``key``'s claims ``wanted`` (pools unknown to the snapshot, or no valid spec: none)."""
        inputs = (tuple(wanted.items()), spec, snapshot)
        last = self._inputs.get(key)
        if last is not None and last[0] == inputs[0] and last[1] is spec and last[2] is snapshot:
            return UNCHANGED
        self._inputs[key] = inputs
        old = self._claims.get(key, {})
        new: dict[str, Claim] = {}
        for entry, pool in wanted.items():
            view = snapshot.pool(pool) if snapshot is not None else None
            if spec is None or view is None:
                continue
            previous = old.get(entry)
            usage = filters.usage_of(spec, view)
            new[entry] = (
                Claim(pool, usage)
                if previous is None or previous.usage != usage or previous.pool != pool
                else previous
            )
        if {e: (c.pool, c.usage) for e, c in old.items()} == {e: (c.pool, c.usage) for e, c in new.items()}:
            return UNCHANGED
        freed = False
        for entry, claim in old.items():
            self._moved.add(claim.pool)
            self.by_pool[claim.pool] = self.by_pool.get(claim.pool, PoolUsage()) - claim.usage
            now = new.get(entry)
            if (
                now is None
                or now.pool != claim.pool
                or not claim.usage.resources.fits_in(now.usage.resources)
            ):
                freed = True
        for claim in new.values():
            self._moved.add(claim.pool)
            self.by_pool[claim.pool] = self.by_pool.get(claim.pool, PoolUsage()) + claim.usage
        if new:
            self._claims[key] = new
        else:
            self._claims.pop(key, None)
        if freed:
            self.epoch += 1
        return ClaimChange(changed=True, freed=freed)

    def drop(self, key: WorkloadKey) -> ClaimChange:
        self._reserved.pop(key, None)
        change = self.set(key, {}, None, None)
        self._inputs.pop(key, None)
        return change

    def rebuild(
        self,
        keys: list[WorkloadKey],
        claim_inputs: Callable[[WorkloadKey], tuple[Claims, EdgeWorkloadSpec | None]],
        snapshot: ClusterSnapshot,
    ) -> bool:
        """Recompute every claim against a new snapshot (a pool's site, hence usage, may have changed);
        returns whether any workload holds a claim."""
        self._claims.clear()
        self.by_pool.clear()
        self._inputs.clear()
        self._array = None
        held = False
        for key in keys:
            wanted, spec = claim_inputs(key)
            held |= self.set(key, wanted, spec, snapshot).changed
        self.epoch += 1
        return held

    def usage_excluding(self, key: WorkloadKey) -> dict[str, PoolUsage]:
        """Per-pool usage of every other placed workload."""
        out = dict(self.by_pool)
        for claim in self._claims.get(key, {}).values():
            out[claim.pool] = out[claim.pool] - claim.usage
        return out

    def used_array(self, table: fast.PoolTable) -> npt.NDArray[np.float64]:
        """:attr:`by_pool` as :func:`fast.usage_array` gives it for ``table`` (kept, updated by row;
        read it, do not modify it)."""
        if self._array is None or self._array[0] is not table:
            self._array = (table, fast.usage_array(table.names, self.by_pool))
            self._moved.clear()
        rows = self._array[1]
        if self._moved:
            for name in self._moved:
                i = table.index.get(name)
                if i is not None:
                    rows[i] = _row(self.by_pool.get(name))
            self._moved.clear()
        return rows

    def used_excluding(self, key: WorkloadKey, table: fast.PoolTable) -> npt.NDArray[np.float64]:
        """:meth:`usage_excluding` as a (P, 4) array for ``table``: the same numbers, without the dict."""
        rows = self.used_array(table)
        claims = self._claims.get(key)
        if not claims:
            return rows
        mine: dict[str, PoolUsage] = {}
        for claim in claims.values():  # as usage_excluding subtracts them, claim by claim
            mine[claim.pool] = mine.get(claim.pool, self.by_pool[claim.pool]) - claim.usage
        out = rows.copy()
        for name, usage in mine.items():
            i = table.index.get(name)
            if i is not None:
                out[i] = _row(usage)
        return out


def _row(usage: PoolUsage | None) -> tuple[float, float, float, float]:
    if usage is None:
        return (0.0, 0.0, 0.0, 0.0)
    r = usage.resources
    return (r.cpu_millis, r.memory_bytes, r.gpu, usage.wan_mbps)
