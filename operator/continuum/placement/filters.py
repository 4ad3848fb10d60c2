"""The placement contract, one rule per function: can this pool host this workload, and why not.

Each check returns ``None`` when the rule holds and a :class:`Reason` (code + a message with the margin)
when it does not. :func:`evaluate` runs them all, so a rejected candidate lists *every* rule it breaks.
The static rules (tier, privacy, residency, latency, nodes, accelerator, single-node fit) depend only on
the workload and the pool; the dynamic ones (capacity, bandwidth) also on what else is placed there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from continuum.api.models import EdgeWorkloadSpec, Privacy, ReasonCode
from continuum.api.models import Reason as _Reason
from continuum.api.quantity import gib
from continuum.placement.snapshot import PoolUsage, PoolView, Resources

M = TypeVar("M", bound=BaseModel)


def construct(cls: type[M], **values: Any) -> M:
    """A pydantic model from values computed here from validated inputs, every field given: what
    ``model_construct`` does, without its per-field default handling (the hot path of explanations)."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def Reason(code: ReasonCode, message: str) -> _Reason:
    """Reasons are made here from validated values: skip pydantic validation on this hot path."""
    return construct(_Reason, code=code, message=message)


def _fmt(value: float) -> str:
    return f"{value:g}"


def replica_request(spec: EdgeWorkloadSpec) -> Resources:
    res = spec.requirements.resources
    return Resources(res.cpu_millis, res.memory_bytes, res.gpu)


def total_request(spec: EdgeWorkloadSpec) -> Resources:
    return replica_request(spec).scaled(spec.replicas)


def is_offsite(spec: EdgeWorkloadSpec, pool: PoolView) -> bool:
    return pool.pool.spec.site != spec.source.site


def wan_mbps(spec: EdgeWorkloadSpec, pool: PoolView) -> float:
    """Traffic the workload sends over the WAN into the pool: its ingest rate when the pool is off-site."""
    return spec.requirements.bandwidth.ingest_mbps if is_offsite(spec, pool) else 0.0


def hourly_cost(spec: EdgeWorkloadSpec, pool: PoolView) -> float:
    cost = pool.pool.spec.cost
    req = replica_request(spec)
    per_replica = (
        req.cpu_millis / 1000 * cost.cpu + gib(req.memory_bytes) * cost.memory_gi_b + req.gpu * cost.gpu
    )
    return spec.replicas * per_replica + wan_mbps(spec, pool) * cost.wan_mbps


def usage_of(spec: EdgeWorkloadSpec, pool: PoolView) -> PoolUsage:
    return PoolUsage(total_request(spec), wan_mbps(spec, pool), 1)


@dataclass(frozen=True, slots=True)
class LatencyEstimate:
    rtt_ms: float | None  # None: no route from the source site
    inference_ms: float

    @property
    def total_ms(self) -> float | None:
        return None if self.rtt_ms is None else self.rtt_ms + self.inference_ms


def estimate_latency(spec: EdgeWorkloadSpec, pool: PoolView) -> LatencyEstimate:
    rtt = pool.pool.spec.network.rtt_from(spec.source.site)
    inference = spec.requirements.inference_ms.get(pool.tier, 0.0)
    return LatencyEstimate(rtt, inference)


# --- static rules ---------------------------------------------------------------------------------


def check_tier(spec: EdgeWorkloadSpec, pool: PoolView) -> _Reason | None:
    allowed = spec.tiers.allowed
    if allowed is None or pool.tier in allowed:
        return None
    names = ", ".join(t.value for t in allowed)
    return Reason(
        code=ReasonCode.TIER_NOT_ALLOWED, message=f"tier {pool.tier.value} is not in tiers.allowed [{names}]"
    )


def check_privacy(spec: EdgeWorkloadSpec, pool: PoolView) -> _Reason | None:
    level = spec.requirements.privacy
    ceiling = pool.pool.spec.effective_max_privacy
    if level.rank > ceiling.rank:
        return Reason(
            code=ReasonCode.PRIVACY,
            message=f"privacy {level.value} is above the pool's maxPrivacy {ceiling.value}",
        )
    if level is Privacy.RESTRICTED and is_offsite(spec, pool):
        return Reason(
            code=ReasonCode.PRIVACY,
            message=f"restricted data never leaves its source site {spec.source.site}; "
            f"the pool is at site {pool.pool.spec.site}",
        )
    return None


def check_residency(spec: EdgeWorkloadSpec, pool: PoolView) -> _Reason | None:
    allowed = spec.requirements.residency
    if allowed is None:
        return None
    region = pool.pool.spec.region
    if region is not None and region in allowed:
        return None
    where = f"region {region}" if region else "the pool declares no region, so"
    return Reason(code=ReasonCode.RESIDENCY, message=f"{where} is not in residency [{', '.join(allowed)}]")


def check_latency(spec: EdgeWorkloadSpec, pool: PoolView) -> _Reason | None:
    est = estimate_latency(spec, pool)
    budget = spec.requirements.latency_budget_ms
    if est.rtt_ms is None:
        return Reason(
            code=ReasonCode.LATENCY,
            message=f'no route from site {spec.source.site} (network.rttMs has no entry for it and no "*")',
        )
    total = est.rtt_ms + est.inference_ms
    if total > budget:
        return Reason(
            code=ReasonCode.LATENCY,
            message=f"latency {total:.1f} ms > budget {_fmt(budget)} ms "
            f"(rtt {_fmt(est.rtt_ms)} + inference {_fmt(est.inference_ms)})",
        )
    return None


def check_nodes(spec: EdgeWorkloadSpec, pool: PoolView) -> _Reason | None:
    if not pool.nodes:
        return Reason(
            code=ReasonCode.NO_NODES, message="the pool has no member nodes (check its nodeSelector)"
        )
    if not pool.usable_nodes:
        return Reason(
            code=ReasonCode.NO_NODES,
            message=f"none of the pool's {len(pool.nodes)} member nodes can run its workers "
            f"({pool.unusable_summary}; a worker tolerates only the pool's own taints)",
        )
    return None


def check_accelerator(spec: EdgeWorkloadSpec, pool: PoolView) -> _Reason | None:
    res = spec.requirements.resources
    if res.accelerator is None or not pool.usable_nodes:
        return None
    if any(res.accelerator_matches(dict(n.labels)) for n in pool.usable_nodes):
        return None
    return Reason(
        code=ReasonCode.ACCELERATOR, message=f"no ready member node offers accelerator {res.accelerator}"
    )


def eligible_nodes(spec: EdgeWorkloadSpec, pool: PoolView) -> list[Resources]:
    """Free capacity of the usable nodes that offer the requested accelerator."""
    res = spec.requirements.resources
    return [n.free for n in pool.usable_nodes if res.accelerator_matches(dict(n.labels))]


def check_node_fit(spec: EdgeWorkloadSpec, pool: PoolView) -> _Reason | None:
    """One replica must fit on at least one node (before other Continuum workloads)."""
    nodes = eligible_nodes(spec, pool)
    if not nodes:
        return None  # reported by check_nodes / check_accelerator
    one = replica_request(spec)
    if any(one.fits_in(free) for free in nodes):
        return None
    biggest = max(nodes, key=lambda r: (r.cpu_millis, r.memory_bytes, r.gpu))
    return Reason(
        code=ReasonCode.CAPACITY,
        message=f"one replica ({one.describe()}) fits on no single node (largest free: {biggest.describe(gpu=one.gpu > 0)})",
    )


STATIC_CHECKS = (
    check_tier,
    check_privacy,
    check_residency,
    check_latency,
    check_nodes,
    check_accelerator,
    check_node_fit,
)


# --- dynamic rules (depend on what else is placed on the pool) ------------------------------------


def pool_capacity(spec: EdgeWorkloadSpec, pool: PoolView) -> Resources:
    """Aggregate free capacity of the nodes that can run this workload's replicas."""
    total = Resources()
    for free in eligible_nodes(spec, pool):
        total = total + free
    return total


def check_capacity(spec: EdgeWorkloadSpec, pool: PoolView, used: PoolUsage) -> _Reason | None:
    need = total_request(spec)
    free = (pool_capacity(spec, pool) - used.resources).clamp()
    if need.fits_in(free):
        return None
    short = (need - free).clamp()
    return Reason(
        code=ReasonCode.CAPACITY,
        message=f"needs {need.describe()} for {spec.replicas} replica(s), {free.describe(gpu=need.gpu > 0)} free; "
        f"short by {short.describe_nonzero()}",
    )


def check_bandwidth(spec: EdgeWorkloadSpec, pool: PoolView, used: PoolUsage) -> _Reason | None:
    need = wan_mbps(spec, pool)
    limit = pool.pool.spec.network.wan_ingress_mbps
    if need == 0 or limit is None:
        return None
    free = max(limit - used.wan_mbps, 0.0)
    if need <= free + 1e-9:
        return None
    return Reason(
        code=ReasonCode.BANDWIDTH,
        message=f"ingest {_fmt(need)} Mbps over the WAN > {_fmt(free)} Mbps free of "
        f"wanIngressMbps {_fmt(limit)}",
    )


def static_reasons(spec: EdgeWorkloadSpec, pool: PoolView) -> list[_Reason]:
    return [r for check in STATIC_CHECKS if (r := check(spec, pool)) is not None]


_NODE_LEVEL = frozenset({ReasonCode.NO_NODES, ReasonCode.ACCELERATOR, ReasonCode.CAPACITY})


def dynamic_reasons(
    spec: EdgeWorkloadSpec, pool: PoolView, used: PoolUsage, static: list[_Reason] | None = None
) -> list[_Reason]:
    """Bandwidth and aggregate capacity. Capacity is skipped when a node-level static reason (no nodes,
    no accelerator, no single node fits) already explains why the replicas cannot run there."""
    reasons = []
    if (r := check_bandwidth(spec, pool, used)) is not None:
        reasons.append(r)
    node_level = any(
        r.code in _NODE_LEVEL for r in (static if static is not None else static_reasons(spec, pool))
    )
    if not node_level and (r := check_capacity(spec, pool, used)) is not None:
        reasons.append(r)
    return reasons


def evaluate(spec: EdgeWorkloadSpec, pool: PoolView, used: PoolUsage) -> list[_Reason]:
    """Every rule the pool breaks for this workload, given what others already use there."""
    static = static_reasons(spec, pool)
    return static + dynamic_reasons(spec, pool, used, static)
