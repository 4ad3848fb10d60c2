"""What placement sees of the cluster: nodes, pools and what is already placed. No Kubernetes client.

:class:`ClusterSnapshot` is built from plain objects (the dicts ``kubectl get -o yaml`` prints or the
API returns) by :func:`build_snapshot`, so ``continuum plan`` and the operator decide on exactly the
same data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from continuum.api.models import GPU_RESOURCE, EdgeNodePool, Tier
from continuum.api.quantity import QuantityError, cpu_millis, format_cpu, format_memory, memory_bytes


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of cpu (millicores), memory (bytes) and GPUs."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis + other.cpu_millis, self.memory_bytes + other.memory_bytes, self.gpu + other.gpu
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis - other.cpu_millis, self.memory_bytes - other.memory_bytes, self.gpu - other.gpu
        )

    def scaled(self, factor: int) -> Resources:
        return Resources(self.cpu_millis * factor, self.memory_bytes * factor, self.gpu * factor)

    def fits_in(self, other: Resources) -> bool:
        return (
            self.cpu_millis <= other.cpu_millis
            and self.memory_bytes <= other.memory_bytes
            and self.gpu <= other.gpu
        )

    def clamp(self) -> Resources:
        return Resources(max(self.cpu_millis, 0), max(self.memory_bytes, 0), max(self.gpu, 0))

    def describe(self) -> str:
        text = f"{format_cpu(self.cpu_millis)} cpu, {format_memory(self.memory_bytes)} memory"
        return text + (f", {self.gpu} gpu" if self.gpu else "")


ZERO = Resources()


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    allocatable: Resources
    requested: Resources = ZERO  # by pods Continuum does not manage
    ready: bool = True
    schedulable: bool = True  # spec.unschedulable is not set (not cordoned)

    @property
    def usable(self) -> bool:
        return self.ready and self.schedulable

    @cached_property
    def free(self) -> Resources:
        return (self.allocatable - self.requested).clamp()


@dataclass(frozen=True)
class PoolView:
    """A pool and the nodes it selects (only nodes not claimed by another pool)."""

    pool: EdgeNodePool
    nodes: tuple[NodeView, ...]

    @property
    def name(self) -> str:
        return self.pool.metadata.name

    @property
    def tier(self) -> Tier:
        return self.pool.spec.tier

    @cached_property
    def usable_nodes(self) -> tuple[NodeView, ...]:
        return tuple(n for n in self.nodes if n.usable)

    @property
    def allocatable(self) -> Resources:
        total = ZERO
        for node in self.usable_nodes:
            total = total + node.allocatable
        return total

    @cached_property
    def free(self) -> Resources:
        """Free capacity on ready, schedulable nodes before any Continuum workload."""
        total = ZERO
        for node in self.usable_nodes:
            total = total + node.free
        return total


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """What Continuum workloads placed on a pool consume of it."""

    resources: Resources = ZERO
    wan_mbps: float = 0.0
    workloads: int = 0

    def __add__(self, other: PoolUsage) -> PoolUsage:
        return PoolUsage(
            self.resources + other.resources, self.wan_mbps + other.wan_mbps, self.workloads + other.workloads
        )

    def __sub__(self, other: PoolUsage) -> PoolUsage:
        return PoolUsage(
            self.resources - other.resources, self.wan_mbps - other.wan_mbps, self.workloads - other.workloads
        )


@dataclass(frozen=True)
class ClusterSnapshot:
    pools: tuple[PoolView, ...]
    conflicts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # node → pools selecting it

    def pool(self, name: str) -> PoolView | None:
        for view in self.pools:
            if view.name == name:
                return view
        return None


# --- building a snapshot from Kubernetes objects ----------------------------------------------------


def node_ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def node_allocatable(node: Mapping[str, Any]) -> Resources:
    status = node.get("status") or {}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    try:
        return Resources(
            cpu_millis(alloc.get("cpu", 0)),
            memory_bytes(alloc.get("memory", 0)),
            int(cpu_millis(alloc.get(GPU_RESOURCE, 0)) // 1000),
        )
    except QuantityError as exc:
        name = (node.get("metadata") or {}).get("name", "?")
        raise ValueError(f"node {name}: status.allocatable: {exc}") from None


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """Sum of a pod's container requests (init containers: the max, as the scheduler does)."""
    spec = pod.get("spec") or {}

    def one(container: Mapping[str, Any]) -> Resources:
        req = (container.get("resources") or {}).get("requests") or {}
        return Resources(
            cpu_millis(req.get("cpu", 0)),
            memory_bytes(req.get("memory", 0)),
            int(cpu_millis(req.get(GPU_RESOURCE, 0)) // 1000),
        )

    total = ZERO
    for container in spec.get("containers") or []:
        total = total + one(container)
    for container in spec.get("initContainers") or []:
        init = one(container)
        total = Resources(
            max(total.cpu_millis, init.cpu_millis),
            max(total.memory_bytes, init.memory_bytes),
            max(total.gpu, init.gpu),
        )
    return total


def node_view(node: Mapping[str, Any], requested: Resources = ZERO) -> NodeView:
    meta = node.get("metadata") or {}
    return NodeView(
        name=meta["name"],
        labels=dict(meta.get("labels") or {}),
        allocatable=node_allocatable(node),
        requested=requested,
        ready=node_ready(node),
        schedulable=not (node.get("spec") or {}).get("unschedulable", False),
    )


def build_snapshot(
    pools: Iterable[EdgeNodePool],
    nodes: Iterable[Mapping[str, Any]],
    requested_by_node: Mapping[str, Resources] | None = None,
) -> ClusterSnapshot:
    """Match nodes to pools by selector. A node selected by two pools belongs to neither (a conflict)."""
    requested_by_node = requested_by_node or {}
    pool_list = sorted(pools, key=lambda p: p.metadata.name)
    views = [node_view(n, requested_by_node.get(n["metadata"]["name"], ZERO)) for n in nodes]
    claims: dict[str, list[str]] = {}
    for view in views:
        for pool in pool_list:
            if pool.spec.node_selector.matches(dict(view.labels)):
                claims.setdefault(view.name, []).append(pool.metadata.name)
    conflicts = {node: tuple(names) for node, names in claims.items() if len(names) > 1}
    members: dict[str, list[NodeView]] = {p.metadata.name: [] for p in pool_list}
    for view in sorted(views, key=lambda v: v.name):
        names = claims.get(view.name, [])
        if len(names) == 1:
            members[names[0]].append(view)
    return ClusterSnapshot(
        pools=tuple(PoolView(pool, tuple(members[pool.metadata.name])) for pool in pool_list),
        conflicts=conflicts,
    )
