"""What placement sees of the cluster: nodes, pools and what is already placed. No Kubernetes client.

:class:`ClusterSnapshot` is built from plain objects (the dicts ``kubectl get -o yaml`` prints or the
API returns) by :func:`build_snapshot`, so ``continuum plan`` and the operator decide on exactly the
same data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from continuum.api.models import GPU_RESOURCE, LABEL_WORKLOAD, EdgeNodePool, Tier
from continuum.api.quantity import QuantityError, cpu_millis, format_cpu, format_memory, memory_bytes

if TYPE_CHECKING:
    from continuum.placement.fast import PoolTable


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

    def describe(self, *, gpu: bool = False) -> str:
        """``gpu``: name the GPU count even when it is 0 (beside a request that asks for GPUs)."""
        text = f"{format_cpu(self.cpu_millis)} cpu, {format_memory(self.memory_bytes)} memory"
        return text + (f", {self.gpu} gpu" if self.gpu or gpu else "")

    def describe_nonzero(self) -> str:
        """Only the dimensions that are not zero (a shortfall: "1 gpu", not "0 cpu, 0 memory, 1 gpu")."""
        parts = [
            text
            for amount, text in (
                (self.cpu_millis, f"{format_cpu(self.cpu_millis)} cpu"),
                (self.memory_bytes, f"{format_memory(self.memory_bytes)} memory"),
                (self.gpu, f"{self.gpu} gpu"),
            )
            if amount > 0
        ]
        return ", ".join(parts) or "nothing"


ZERO = Resources()


BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})  # PreferNoSchedule only lowers a score


@dataclass(frozen=True, slots=True)
class NodeTaint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


def tolerates(toleration: Mapping[str, Any], taint: NodeTaint) -> bool:
    """Kubernetes' ``Toleration.ToleratesTaint``: effect (empty = all), key (empty + Exists = all),
    operator ``Exists`` (any value) or ``Equal`` (the default: same value)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.effect:
        return False
    key = toleration.get("key") or ""
    if key and key != taint.key:
        return False
    if (toleration.get("operator") or "Equal") == "Exists":
        return True
    return bool(key) and (toleration.get("value") or "") == taint.value


def node_taints(node: Mapping[str, Any]) -> tuple[NodeTaint, ...]:
    """The node's taints that keep pods off it (NoSchedule, NoExecute), in the order it lists them."""
    out = []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if isinstance(taint, Mapping) and taint.get("effect") in BLOCKING_EFFECTS and taint.get("key"):
            out.append(NodeTaint(str(taint["key"]), str(taint.get("value") or ""), str(taint["effect"])))
    return tuple(out)


def untolerated(taints: Iterable[NodeTaint], pool: EdgeNodePool) -> tuple[NodeTaint, ...]:
    """The taints a worker rendered for ``pool`` does not tolerate (it tolerates exactly the pool's taints,
    see :mod:`continuum.render.worker`). A taint with the key and effect of one the pool puts on its nodes
    is the operator's to replace (see ``Controller.reconcile_pools``), so it does not count against the node."""
    own = pool.spec.effective_taints
    owned = {(t.key, t.effect) for t in own}
    tolerations = [t.toleration() for t in own]
    return tuple(
        t
        for t in taints
        if (t.key, t.effect) not in owned and not any(tolerates(tol, t) for tol in tolerations)
    )


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    allocatable: Resources
    requested: Resources = ZERO  # by pods Continuum does not manage
    ready: bool = True
    schedulable: bool = True  # spec.unschedulable is not set (not cordoned)
    taints: tuple[NodeTaint, ...] = ()  # NoSchedule / NoExecute taints on the node
    blocking: tuple[NodeTaint, ...] = ()  # those the pool's worker does not tolerate (set per pool)

    @property
    def usable(self) -> bool:
        """Pods of the pool's workers can be scheduled here: ready, not cordoned, no untolerated taint."""
        return self.ready and self.schedulable and not self.blocking

    @property
    def unusable_because(self) -> str | None:
        if not self.ready:
            return "not ready"
        if not self.schedulable:
            return "cordoned"
        if self.blocking:
            return "tainted " + ", ".join(str(t) for t in self.blocking)
        return None

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

    @cached_property
    def unusable_summary(self) -> str:
        """Why member nodes cannot run the pool's workers, e.g. ``1 not ready, 2 tainted
        (node.kubernetes.io/disk-pressure:NoSchedule)``."""
        counts: dict[str, int] = {}
        taints: list[str] = []
        for node in self.nodes:
            why = node.unusable_because
            if why is None:
                continue
            kind = why if not node.blocking else "tainted"
            counts[kind] = counts.get(kind, 0) + 1
            for taint in node.blocking:
                if str(taint) not in taints:
                    taints.append(str(taint))
        parts = [f"{counts[k]} {k}" for k in ("not ready", "cordoned") if k in counts]
        if "tainted" in counts:
            shown = ", ".join(taints[:3]) + (f", +{len(taints) - 3} more" if len(taints) > 3 else "")
            parts.append(f"{counts['tainted']} tainted ({shown})")
        return ", ".join(parts)

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
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, PoolView]:
        return {view.name: view for view in self.pools}

    @cached_property
    def table(self) -> PoolTable:
        """The pools as arrays for the vectorized rules (:mod:`continuum.placement.fast`), built once."""
        from continuum.placement.fast import PoolTable

        return PoolTable(self)


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
    """Sum of a pod's container requests (init containers: the max, as the scheduler does).

    Raises ``ValueError`` naming the field, e.g. ``spec.containers[1].resources.requests.cpu: ...``."""
    spec = pod.get("spec") or {}

    def one(container: Mapping[str, Any], where: str) -> Resources:
        req = (container.get("resources") or {}).get("requests") or {}
        field_name = "cpu"
        try:
            cpu = cpu_millis(req.get("cpu", 0))
            field_name = "memory"
            mem = memory_bytes(req.get("memory", 0))
            field_name = GPU_RESOURCE
            gpu = int(cpu_millis(req.get(GPU_RESOURCE, 0)) // 1000)
        except QuantityError as exc:
            raise ValueError(f"{where}.resources.requests.{field_name}: {exc}") from None
        return Resources(cpu, mem, gpu)

    total = ZERO
    for i, container in enumerate(spec.get("containers") or []):
        total = total + one(container, f"spec.containers[{i}]")
    for i, container in enumerate(spec.get("initContainers") or []):
        init = one(container, f"spec.initContainers[{i}]")
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
        taints=node_taints(node),
    )


FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


def pod_holds(pod: Mapping[str, Any]) -> tuple[str, Resources] | None:
    """(node, requests) a pod holds against its node's capacity, or None when it holds nothing there.

    The one rule both ``continuum plan`` and the operator apply: a pod counts once it is bound to a node
    (``spec.nodeName``), until it finishes (phase Succeeded or Failed); Continuum's own worker pods
    (label ``continuum.dev/workload``) do not, because placement accounts for them per workload.
    Raises ``ValueError`` (naming the field) on a request that is not a Kubernetes quantity."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if LABEL_WORKLOAD in (meta.get("labels") or {}) or not spec.get("nodeName"):
        return None
    if (pod.get("status") or {}).get("phase") in FINISHED_PHASES:
        return None
    return str(spec["nodeName"]), pod_requests(pod)


def requested_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, Resources]:
    """What pods outside Continuum request per node (see :func:`pod_holds`)."""
    out: dict[str, Resources] = {}
    for pod in pods:
        try:
            held = pod_holds(pod)
        except ValueError as exc:
            meta = pod.get("metadata") or {}
            raise ValueError(
                f"pod {meta.get('namespace', 'default')}/{meta.get('name', '?')}: {exc}"
            ) from None
        if held is not None:
            node, requested = held
            out[node] = out.get(node, ZERO) + requested
    return out


def build_snapshot(
    pools: Iterable[EdgeNodePool],
    nodes: Iterable[Mapping[str, Any]],
    requested_by_node: Mapping[str, Resources] | None = None,
) -> ClusterSnapshot:
    """Match nodes to pools by selector. A node selected by two pools belongs to neither (a conflict).

    A member node counts as capacity only when ready, not cordoned and free of NoSchedule/NoExecute
    taints the pool's workers do not tolerate (:func:`untolerated`)."""
    requested_by_node = requested_by_node or {}
    pool_list = sorted(pools, key=lambda p: p.metadata.name)
    views = [node_view(n, requested_by_node.get(n["metadata"]["name"], ZERO)) for n in nodes]
    # index pools by one of their matchLabels pairs (a node must carry it to match): nodes x pools
    # selector checks become nodes x labels look-ups; pools with only matchExpressions are checked always
    indexed: dict[tuple[str, str], list[EdgeNodePool]] = {}
    always: list[EdgeNodePool] = []
    for pool in pool_list:
        match_labels = pool.spec.node_selector.match_labels
        if match_labels:
            indexed.setdefault(next(iter(match_labels.items())), []).append(pool)
        else:
            always.append(pool)
    claims: dict[str, list[str]] = {}
    for view in views:
        labels = dict(view.labels)
        maybe = [pool for item in labels.items() for pool in indexed.get(item, ())] + always
        names = sorted(pool.metadata.name for pool in maybe if pool.spec.node_selector.matches(labels))
        if names:
            claims[view.name] = names
    conflicts = {node: tuple(names) for node, names in claims.items() if len(names) > 1}
    members: dict[str, list[NodeView]] = {p.metadata.name: [] for p in pool_list}
    by_name = {p.metadata.name: p for p in pool_list}
    for view in sorted(views, key=lambda v: v.name):
        names = claims.get(view.name, [])
        if len(names) == 1:
            pool = by_name[names[0]]
            if view.taints:
                view = replace(view, blocking=untolerated(view.taints, pool))
            members[names[0]].append(view)
    return ClusterSnapshot(
        pools=tuple(PoolView(pool, tuple(members[pool.metadata.name])) for pool in pool_list),
        conflicts=conflicts,
    )
