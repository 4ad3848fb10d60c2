"""The operator's state and its reconcilers. Each one reads, calls the pure core, applies, records.

* :meth:`Controller.reconcile_workload`: parse → snapshot → :func:`placement.decide` →
  :func:`hysteresis.judge` → :func:`render.render_worker_manifests` → apply → status + Events.
* :meth:`Controller.reconcile_pools`: membership from the snapshot → node labels/taints (only what we
  set, recorded in a node annotation) → every pool's status.

Watch events (fed by kopf, see :mod:`continuum.controller.handlers`) update plain-dict caches and put
keys on a :class:`~continuum.controller.queue.WorkQueue`; workers pull keys and reconcile them
level-triggered, as controller-runtime does. The caches are primed by a full list before the first
decision, so a restarted operator never decides on a half-loaded cluster. Decisions and the
timestamps hysteresis needs live in ``status``: a restart loses nothing.

What other workloads use of each pool is kept incrementally (a ledger of *claims*: the placement and,
while a move drains, the previous placement of every workload), and a workload's placement decision
is reused while nothing it depends on changed (its spec, the cluster snapshot, capacity freed by
others); decisions that would place or move a workload are always made fresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from continuum.api.loader import format_validation_error
from continuum.api.models import (
    API_VERSION,
    LABEL_POOL,
    LABEL_SITE,
    LABEL_TIER,
    LABEL_WORKLOAD,
    Candidate,
    Condition,
    Disruption,
    EdgeNodePool,
    EdgeWorkload,
    EdgeWorkloadSpec,
    EdgeWorkloadStatus,
    Phase,
    Placement,
    StateSyncStatus,
)
from continuum.api.quantity import format_cpu, format_memory
from continuum.controller import metrics
from continuum.controller.kube import ApiError, KubeApi
from continuum.controller.queue import WorkQueue
from continuum.controller.state_health import synced_condition
from continuum.placement import engine, filters
from continuum.placement.hysteresis import Action, HysteresisPolicy, judge
from continuum.placement.snapshot import ClusterSnapshot, PoolUsage, Resources, build_snapshot, pod_requests
from continuum.render.worker import (
    DEFAULT_WORKER_IMAGE,
    RenderSettings,
    render_worker_manifests,
    rendered_name,
    secret_name_for,
    service_url,
)

MANAGED_ANNOTATION = "continuum.dev/managed"
OWN_NODE_LABELS = frozenset(
    {LABEL_POOL, LABEL_TIER, LABEL_SITE}
)  # set by the operator, not read by placement
STATUS_CANDIDATES = 20  # pools listed in status.candidates
FRESH_EVERY = 10  # every 10th resync makes every decision fresh (others reuse unchanged decisions)
RENDERED_KINDS = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"))

EventFn = Callable[[Mapping[str, Any], str, str, str], None]  # (body, type, reason, message)
Key = tuple[str, ...]
ALL: Key = ("all",)
POOLS: Key = ("pools",)


def workload_key(namespace: str, name: str) -> Key:
    return ("workload", namespace, name)


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, plain-dict copy of an object (kopf's Body views included)."""
    return json.loads(json.dumps(body, default=dict))


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _rv(obj: Mapping[str, Any]) -> int:
    raw = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    return int(raw) if str(raw).isdigit() else 0


@dataclass
class OperatorConfig:
    worker_image: str = DEFAULT_WORKER_IMAGE
    grace_seconds: float = 60.0
    stabilization_seconds: float = 300.0
    resync_seconds: float = 60.0
    min_cost_gain: float = 0.5
    # where the operator asks workers for their state's sync health (state_health.StateProbe)
    worker_url_template: str = "http://{service}.{namespace}.svc:{port}"
    state_poll_seconds: float = 30.0

    @property
    def policy(self) -> HysteresisPolicy:
        return HysteresisPolicy(self.grace_seconds, self.stabilization_seconds, self.min_cost_gain)


@dataclass
class Cache:
    """Latest objects seen, keyed by name (cluster) or (namespace, name)."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    workloads: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # Deployments/StatefulSets by (namespace, workload) then (kind, name)
    rendered: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = field(default_factory=dict)


def _condition(
    ctype: str, ok: bool | None, reason: str, message: str, generation: int | None, previous: list[Condition]
) -> Condition:
    status: Literal["True", "False", "Unknown"] = "Unknown" if ok is None else "True" if ok else "False"
    old = next((c for c in previous if c.type == ctype), None)
    since = (
        old.last_transition_time
        if old is not None and old.status == status and old.last_transition_time
        else now_utc()
    )
    return Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message[:1024],
        last_transition_time=since,
        observed_generation=generation,
    )


def _status_dict(status: EdgeWorkloadStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def _node_fingerprint(node: Mapping[str, Any]) -> Hashable:
    """What placement reads of a node (heartbeats and our own annotation are not part of it)."""
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in OWN_NODE_LABELS}
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return (
        json.dumps(labels, sort_keys=True),
        json.dumps(status.get("allocatable") or status.get("capacity") or {}, sort_keys=True),
        ready,
        bool((node.get("spec") or {}).get("unschedulable")),
    )


def _pod_fingerprint(pod: Mapping[str, Any]) -> Hashable:
    """A pod counts against its node's capacity unless Continuum manages it or it has finished."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if LABEL_WORKLOAD in (meta.get("labels") or {}) or not spec.get("nodeName"):
        return None
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    try:
        return (spec["nodeName"], pod_requests(pod))
    except ValueError:
        return None


def _rendered_pool(obj: Mapping[str, Any]) -> str | None:
    template = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return (template.get("nodeSelector") or {}).get(LABEL_POOL)


def readiness(obj: Mapping[str, Any] | None, replicas: int) -> tuple[int, bool]:
    """(ready replicas, rollout complete): every replica updated and ready, no old replica left."""
    if not obj:
        return 0, False
    status = obj.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    done = (
        int(status.get("observedGeneration") or 0) >= generation
        and updated >= replicas
        and ready >= replicas
        and int(status.get("replicas") or 0) <= updated
    )
    return ready, done


@dataclass
class _Claim:
    pool: str
    usage: PoolUsage


class Controller:
    def __init__(
        self, config: OperatorConfig, api: KubeApi | None = None, post_event: EventFn | None = None
    ) -> None:
        self.config = config
        self.api: KubeApi | None = api
        self.api_ready = asyncio.Event()
        if api is not None:
            self.api_ready.set()
        self.cache = Cache()
        self.queue = WorkQueue()
        self.lock = asyncio.Lock()
        self.post_event: EventFn = post_event or (lambda body, type_, reason, message: None)
        self.primed = asyncio.Event()
        self._prime_lock = asyncio.Lock()
        self.log = logging.getLogger("continuum.operator")
        # the placement snapshot, rebuilt when a fingerprint of a node, pod or pool spec changes
        self._fingerprints: dict[tuple[str, Any], Hashable] = {}
        self.snapshot_version = 0
        self._snapshot: ClusterSnapshot | None = None
        self._snapshot_built = -1
        self._pool_models: dict[str, tuple[str, EdgeNodePool | None, str | None]] = {}
        self._specs: dict[tuple[Any, ...], EdgeWorkloadSpec | None] = {}
        # the claims ledger: key -> entry ("", "#previous") -> claim; by_pool sums every claim
        self._claims: dict[tuple[str, str], dict[str, _Claim]] = {}
        self.by_pool: dict[str, PoolUsage] = {}
        self._reserved: dict[tuple[str, str], dict[str, str]] = {}  # decided, not yet in status
        self.usage_epoch = 0  # bumped whenever capacity is freed
        self.resync_epoch = 0
        self._resyncs = 0
        self._applied: dict[tuple[str, str, str], tuple[str, int]] = {}  # Services/Secrets: (digest, epoch)
        self._decisions: dict[tuple[str, str], tuple[Hashable, engine.PlacementDecision]] = {}
        self._by_model: dict[tuple[str, str], set[str]] = {}  # (namespace, model) -> workload names
        self._model_of: dict[tuple[str, str], tuple[str, str | None]] = {}  # key -> (model, placed tier)
        self.unschedulable: set[tuple[str, str]] = set()
        self.state_health: dict[tuple[str, str], StateSyncStatus] = {}  # filled by state_health.StateProbe

    # ------------------------------------------------------------------ caches (watch events) --
    def observe(
        self, kind: str, event_type: str | None, body: Mapping[str, Any], enqueue: bool = True
    ) -> None:
        """Take a watch event (or, with ``enqueue=False``, the result of our own write) into the caches
        and queue what it affects."""
        meta = body.get("metadata") or {}
        name, ns = meta.get("name"), meta.get("namespace")
        if kind == "Rendered":
            self._observe_rendered(event_type, body, enqueue)
            return
        if kind == "EdgeWorkload":
            self._observe_workload(event_type, body, enqueue)
            return
        store: dict[Any, dict[str, Any]] = {
            "Node": self.cache.nodes,
            "EdgeNodePool": self.cache.pools,
            "Pod": self.cache.pods,
        }[kind]
        key: Any = name if kind != "Pod" else (ns, name)
        deleted = event_type == "DELETED"
        current = store.get(key)
        if not deleted and current is not None and _rv(current) >= _rv(body) > 0:
            return  # older than (or the echo of) what we already have
        if deleted:
            store.pop(key, None)
        else:
            store[key] = body if isinstance(body, dict) else plain(body)
        if kind == "Node":
            print_ = None if deleted else _node_fingerprint(body)
        elif kind == "Pod":
            print_ = None if deleted else _pod_fingerprint(body)
        else:
            print_ = None if deleted else json.dumps(body.get("spec") or {}, sort_keys=True)
        if self._fingerprints.get((kind, key)) != print_:
            if print_ is None:
                self._fingerprints.pop((kind, key), None)
            else:
                self._fingerprints[(kind, key)] = print_
            self.snapshot_version += 1
            self.queue.add_after(ALL, 0.05)  # coalesce a burst of node/pod changes into one pass
        if kind in ("Node", "EdgeNodePool") and enqueue:
            self.queue.add(POOLS)

    def _observe_workload(self, event_type: str | None, body: Mapping[str, Any], enqueue: bool) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        current = self.cache.workloads.get(key)
        if event_type == "DELETED":
            self.cache.workloads.pop(key, None)
            self._decisions.pop(key, None)
            self.unschedulable.discard(key)
            self._set_claims(key, {}, None)
            self._index_model(key, None)
            for memo_key in [
                k for k in self._applied if k[1] == key[0] and k[2] in (key[1], secret_name_for(key[1]))
            ]:
                del self._applied[memo_key]
            return
        if current is not None and _rv(current) >= _rv(body) > 0:
            return  # older than (or the echo of) our own write
        raw = body if isinstance(body, dict) else plain(body)
        if current is not None and (current.get("metadata") or {}).get("uid") != meta.get("uid"):
            self._decisions.pop(key, None)  # deleted and re-created under the same name
        self.cache.workloads[key] = raw
        status = raw.get("status") or {}
        if status.get("phase") == Phase.UNSCHEDULABLE.value:
            self.unschedulable.add(key)
        else:
            self.unschedulable.discard(key)
        self._refresh_claims(key)
        self._index_model(key, raw)
        if enqueue:
            urgent = status.get("observedGeneration") != meta.get("generation")
            self.queue.add(workload_key(*key), urgent=urgent)

    def _observe_rendered(self, event_type: str | None, body: Mapping[str, Any], enqueue: bool) -> None:
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(LABEL_WORKLOAD)
        if not owner:
            return
        key = (meta.get("namespace") or "default", owner)
        objs = self.cache.rendered.setdefault(key, {})
        obj_key = (str(body.get("kind") or ""), str(meta.get("name")))
        if event_type == "DELETED":
            objs.pop(obj_key, None)
            if not objs:
                self.cache.rendered.pop(key, None)
        else:
            current = objs.get(obj_key)
            if current is not None and _rv(current) >= _rv(body) > 0:
                return
            objs[obj_key] = body if isinstance(body, dict) else plain(body)
        if enqueue and key in self.cache.workloads:
            self.queue.add(workload_key(*key))

    def _index_model(self, key: tuple[str, str], raw: Mapping[str, Any] | None) -> None:
        """Index workloads by (namespace, model); a change of a copy's tier re-renders its peers."""
        old = self._model_of.pop(key, None)
        new: tuple[str, str | None] | None = None
        if raw is not None:
            model = ((raw.get("spec") or {}).get("model") or {}).get("name")
            tier = ((raw.get("status") or {}).get("placement") or {}).get("tier")
            if isinstance(model, str):
                new = (model, tier)
                self._model_of[key] = new
                self._by_model.setdefault((key[0], model), set()).add(key[1])
        if old is not None and (new is None or new[0] != old[0]):
            names = self._by_model.get((key[0], old[0]))
            if names is not None:
                names.discard(key[1])
                if not names:
                    del self._by_model[(key[0], old[0])]
        if old != new:
            for model_tier in (old, new):
                if model_tier is None:
                    continue
                for peer in self._by_model.get((key[0], model_tier[0]), ()):
                    if peer != key[1]:
                        self.queue.add(workload_key(key[0], peer))

    async def ensure_primed(self) -> None:
        """List everything once (after kopf's login) so the first decisions see the whole cluster."""
        if self.primed.is_set():
            return
        async with self._prime_lock:
            if not self.primed.is_set():
                await self.prime()

    async def prime(self) -> None:
        """Replace the caches with a full list (at start, and when this replica becomes the leader)."""
        assert self.api is not None
        nodes = await self.api.list("v1", "Node")
        pools = await self.api.list(API_VERSION, "EdgeNodePool")
        workloads = await self.api.list(API_VERSION, "EdgeWorkload")
        pods = await self.api.list("v1", "Pod")
        rendered = [
            obj
            for api_version, kind in RENDERED_KINDS
            for obj in await self.api.list(api_version, kind, label_selector=LABEL_WORKLOAD)
        ]
        listed = {
            "Node": {o["metadata"]["name"] for o in nodes},
            "EdgeNodePool": {o["metadata"]["name"] for o in pools},
            "Pod": {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in pods},
        }
        for kind, store in (("Node", self.cache.nodes), ("EdgeNodePool", self.cache.pools)):
            for gone in set(store) - listed[kind]:
                self.observe(kind, "DELETED", store[gone])
        for gone in set(self.cache.pods) - listed["Pod"]:
            self.observe("Pod", "DELETED", self.cache.pods[gone])
        live = {(o["metadata"].get("namespace") or "default", o["metadata"]["name"]) for o in workloads}
        for gone in set(self.cache.workloads) - live:
            self.observe("EdgeWorkload", "DELETED", self.cache.workloads[gone])
        self.cache.rendered.clear()
        for obj in nodes:
            self.observe("Node", None, obj)
        for obj in pools:
            self.observe("EdgeNodePool", None, obj)
        for obj in pods:
            self.observe("Pod", None, obj)
        for obj in rendered:
            self.observe("Rendered", None, obj)
        for obj in workloads:
            self.observe("EdgeWorkload", None, obj)
        self.primed.set()

    # ------------------------------------------------------------------ the cluster snapshot --
    def pool_model(self, raw: Mapping[str, Any]) -> tuple[EdgeNodePool | None, str | None]:
        name = raw["metadata"]["name"]
        spec_key = json.dumps([raw.get("spec"), raw["metadata"].get("uid")], sort_keys=True, default=str)
        cached = self._pool_models.get(name)
        if cached is not None and cached[0] == spec_key:
            return cached[1], cached[2]
        try:
            model, error = (
                EdgeNodePool.model_validate(
                    {k: raw[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in raw}
                ),
                None,
            )
        except ValidationError as exc:
            model, error = None, "; ".join(format_validation_error(exc))
        self._pool_models[name] = (spec_key, model, error)
        return model, error

    def _requested_by_node(self) -> dict[str, Resources]:
        out: dict[str, Resources] = {}
        for (kind, _), print_ in self._fingerprints.items():
            if kind == "Pod" and isinstance(print_, tuple):
                node, requested = print_
                out[node] = out.get(node, Resources()) + requested
        return out

    def snapshot(self) -> ClusterSnapshot:
        """The placement view of the cluster, rebuilt only when something it reads changed."""
        if self._snapshot is None or self._snapshot_built != self.snapshot_version:
            version = self.snapshot_version
            pools = [m for raw in self.cache.pools.values() if (m := self.pool_model(raw)[0]) is not None]
            self._snapshot = build_snapshot(pools, list(self.cache.nodes.values()), self._requested_by_node())
            self._snapshot_built = version
            self._recompute_claims()  # a workload's usage depends on its pool (site, hence WAN)
        return self._snapshot

    def _spec(self, raw: Mapping[str, Any]) -> EdgeWorkloadSpec | None:
        """The parsed spec of a cached workload, validated once per (uid, generation)."""
        meta = raw.get("metadata") or {}
        generation = meta.get("generation")
        key = (
            meta.get("uid"),
            generation if generation is not None else json.dumps(raw.get("spec"), sort_keys=True),
            meta.get("namespace"),
            meta.get("name"),
        )
        if key not in self._specs:
            try:
                self._specs[key] = EdgeWorkloadSpec.model_validate(raw.get("spec") or {})
            except ValidationError:
                self._specs[key] = None
            if len(self._specs) > 2 * len(self.cache.workloads) + 100:  # drop entries of old generations
                live = {
                    (r["metadata"].get("uid"), r["metadata"].get("generation"))
                    for r in self.cache.workloads.values()
                }
                self._specs = {k: v for k, v in self._specs.items() if k[:2] in live or k == key}
        return self._specs[key]

    # ------------------------------------------------------------------ the claims ledger --
    def _wanted_claims(self, key: tuple[str, str]) -> dict[str, str]:
        if key in self._reserved:
            return dict(self._reserved[key])
        raw = self.cache.workloads.get(key)
        status = (raw or {}).get("status") or {}
        if status.get("phase") not in (Phase.PLACED.value, Phase.UNSCHEDULABLE.value):
            return {}
        out = {}
        for fieldname, entry in (("placement", ""), ("previousPlacement", "#previous")):
            pool = (status.get(fieldname) or {}).get("pool")
            if pool:
                out[entry] = pool
        return out

    def _refresh_claims(self, key: tuple[str, str]) -> None:
        raw = self.cache.workloads.get(key)
        spec = self._spec(raw) if raw is not None else None
        self._set_claims(key, self._wanted_claims(key) if spec is not None else {}, spec)

    def _set_claims(
        self, key: tuple[str, str], wanted: Mapping[str, str], spec: EdgeWorkloadSpec | None
    ) -> None:
        old = self._claims.get(key, {})
        snapshot = self._snapshot
        new: dict[str, _Claim] = {}
        for entry, pool in wanted.items():
            view = snapshot.pool(pool) if snapshot is not None else None
            if spec is None or view is None:
                continue
            previous = old.get(entry)
            usage = filters.usage_of(spec, view)
            new[entry] = (
                _Claim(pool, usage)
                if previous is None or previous.usage != usage or previous.pool != pool
                else previous
            )
        if {e: (c.pool, c.usage) for e, c in old.items()} == {e: (c.pool, c.usage) for e, c in new.items()}:
            return
        freed = False
        for entry, claim in old.items():
            self.by_pool[claim.pool] = self.by_pool.get(claim.pool, PoolUsage()) - claim.usage
            now = new.get(entry)
            if (
                now is None
                or now.pool != claim.pool
                or not claim.usage.resources.fits_in(now.usage.resources)
            ):
                freed = True
        for claim in new.values():
            self.by_pool[claim.pool] = self.by_pool.get(claim.pool, PoolUsage()) + claim.usage
        if new:
            self._claims[key] = new
        else:
            self._claims.pop(key, None)
        self.queue.add_after(POOLS, 1.0)  # pools' requested resources
        if freed:
            self.usage_epoch += 1
            for stuck in self.unschedulable:  # capacity appeared: retry what could not be placed
                if stuck != key:
                    self.queue.add(workload_key(*stuck))

    def _recompute_claims(self) -> None:
        self._claims.clear()
        self.by_pool.clear()
        for key in list(self.cache.workloads):
            self._refresh_claims(key)
        self.usage_epoch += 1

    def usage_excluding(self, key: tuple[str, str]) -> dict[str, PoolUsage]:
        """Per-pool usage of every other placed workload."""
        out = dict(self.by_pool)
        for claim in self._claims.get(key, {}).values():
            out[claim.pool] = out[claim.pool] - claim.usage
        return out

    # ------------------------------------------------------------------ the work loop --
    async def process(self, key: Hashable) -> float | None:
        """Reconcile one queued key; returns seconds after which to look again (a deadline), or None."""
        await self.api_ready.wait()
        await self.ensure_primed()
        if key == ALL:
            self.enqueue_all()
            return None
        if key == POOLS:
            await self.reconcile_pools()
            return None
        assert isinstance(key, tuple) and key[0] == "workload"
        raw = self.cache.workloads.get((key[1], key[2]))
        if raw is None:
            return None
        return await self.reconcile_workload(raw)

    def enqueue_all(self, resync: bool = False) -> None:
        if resync:
            self._resyncs += 1
            if self._resyncs % FRESH_EVERY == 0:
                self.resync_epoch += 1  # candidates' reasons (others' usage) are refreshed now and then
        for ns, name in list(self.cache.workloads):
            self.queue.add(workload_key(ns, name))
        self.queue.add(POOLS)

    # ------------------------------------------------------------------ workloads --
    def _upstreams(self, workload: EdgeWorkload) -> dict[str, str]:
        """Service URL of the same model (same namespace) placed on each other tier."""
        out: dict[str, str] = {}
        for name in sorted(self._by_model.get((workload.namespace, workload.spec.model.name), ())):
            if name == workload.name:
                continue
            raw = self.cache.workloads.get((workload.namespace, name)) or {}
            placement = (raw.get("status") or {}).get("placement") or {}
            if placement.get("tier"):
                port = int(((raw.get("spec") or {}).get("worker") or {}).get("port", 8000))
                out.setdefault(placement["tier"], service_url(name, workload.namespace, port))
        return out

    async def _write_status(self, body: Mapping[str, Any], status: EdgeWorkloadStatus) -> None:
        assert self.api is not None
        meta = body["metadata"]
        new = _status_dict(status)
        if (body.get("status") or {}) == new:
            return
        # Replace the whole status: null out top-level keys that are gone.
        patch = {"status": {**{k: None for k in (body.get("status") or {}) if k not in new}, **new}}
        result = await self.api.patch(
            API_VERSION, "EdgeWorkload", meta["name"], patch, meta.get("namespace"), subresource="status"
        )
        self.observe("EdgeWorkload", "MODIFIED", result, enqueue=False)

    async def write_invalid(self, body: Mapping[str, Any], exc: ValidationError) -> None:
        lines = format_validation_error(exc)
        message = "invalid spec: " + "; ".join(lines)
        old = body.get("status") or {}
        try:
            previous = EdgeWorkloadStatus.model_validate(old).conditions
        except ValidationError:
            previous = []
        generation = (body.get("metadata") or {}).get("generation")
        status = EdgeWorkloadStatus(
            phase=Phase.INVALID,
            message=message,
            conditions=[
                _condition("Placed", False, "InvalidSpec", message, generation, previous),
                _condition("Ready", False, "InvalidSpec", message, generation, previous),
            ],
            observed_generation=generation,
        )
        if old.get("phase") != Phase.INVALID.value or old.get("message") != message:
            self.post_event(body, "Warning", "InvalidSpec", message)
            metrics.PLACEMENTS.labels("none", "invalid").inc()
        await self._write_status(body, status)

    def _decide(
        self, workload: EdgeWorkload, key: tuple[str, str], fresh: bool
    ) -> tuple[engine.PlacementDecision, bool]:
        """The placement decision, reused while nothing it depends on changed; (decision, was_fresh)."""
        snapshot = self.snapshot()
        fingerprint = (
            workload.metadata.uid,
            workload.metadata.generation,
            self._snapshot_built,
            self.usage_epoch,
            self.resync_epoch,
        )
        cached = self._decisions.get(key)
        if not fresh and cached is not None and cached[0] == fingerprint:
            return cached[1], False
        decision = engine.decide(workload.spec, snapshot, self.usage_excluding(key), workload.key)
        self._decisions[key] = (fingerprint, decision)
        return decision, True

    async def reconcile_workload(self, body: Mapping[str, Any]) -> float | None:
        """Decide, apply and record one workload. Returns when to look again (seconds) or None."""
        assert self.api is not None
        started = time.perf_counter()
        try:
            workload = EdgeWorkload.model_validate(
                {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
            )
        except ValidationError as exc:
            await self.write_invalid(body, exc)
            return None
        key = (workload.namespace, workload.name)
        try:
            old = EdgeWorkloadStatus.model_validate(body.get("status") or {})
        except ValidationError:
            old = EdgeWorkloadStatus()  # a status we cannot read is rebuilt from scratch
        async with self.lock:
            current = old.placement if old.phase in (Phase.PLACED, Phase.UNSCHEDULABLE) else None
            now = now_utc()
            decision, fresh = self._decide(workload, key, fresh=False)
            args = (self.config.policy, old.disruption.since if old.disruption else None, old.better_since)
            verdict = judge(workload.spec, current, decision, now, *args)
            if not fresh and verdict.action in (Action.PLACE, Action.MOVE, Action.FAIL_BACK):
                decision, _ = self._decide(workload, key, fresh=True)  # act only on a fresh decision
                verdict = judge(workload.spec, current, decision, now, *args)
            target = verdict.target
            previous = old.previous_placement
            if verdict.moves and current is not None:
                previous = current
            if previous is not None and target is not None and previous.pool == target.pool:
                previous = None  # moved back before the drain finished
            # Reserve the capacity now; the API calls below run outside the lock.
            self._reserved[key] = {entry: p.pool for entry, p in (("", target), ("#previous", previous)) if p}
            self._refresh_claims(key)
        try:
            ready, rolled_out, drained = await self._apply(workload, target, previous)
            if previous is not None and rolled_out and drained:
                self.post_event(body, "Normal", "Drained", f"old replicas on pool {previous.pool} are gone")
                previous = None
            status = self._status(
                workload, old, decision, verdict.action, verdict.reason, target, previous, verdict, ready
            )
            await self._write_status(body, status)
        finally:
            self._reserved.pop(key, None)
            self._refresh_claims(key)
        self._record(body, old, status, verdict.action, verdict.reason, decision)
        metrics.RECONCILE_SECONDS.labels("EdgeWorkload").observe(time.perf_counter() - started)
        return self._look_again(verdict.action, old, status, now)

    def _look_again(
        self, action: Action, old: EdgeWorkloadStatus, new: EdgeWorkloadStatus, now: datetime
    ) -> float | None:
        """Deadlines: the end of a grace period or of a stabilization window; a drain in progress."""
        policy = self.config.policy
        if action is Action.WAIT_GRACE and new.disruption is not None:
            elapsed = (now - new.disruption.since).total_seconds()
            return max(policy.grace_seconds - elapsed, 0.0) + 0.05
        if action is Action.WAIT_STABILIZATION and new.better_since is not None:
            elapsed = (now - new.better_since).total_seconds()
            return max(policy.stabilization_seconds - elapsed, 0.0) + 0.05
        if new.previous_placement is not None:
            return 5.0  # the Deployment's events drive the drain; this is a safety net
        return None

    async def _apply(
        self, workload: EdgeWorkload, target: Placement | None, previous: Placement | None
    ) -> tuple[int, bool, bool]:
        """Render and apply the worker on ``target``; return (ready replicas, rolled out, old ones gone).

        Make-before-break: objects of this workload that are not the target's (a StatefulSet on the
        previous pool, a Deployment after state was switched on) are deleted only once the target's
        replicas are all Ready."""
        assert self.api is not None
        key = (workload.namespace, workload.name)
        if target is None:
            return 0, False, True
        snapshot = self.snapshot()
        view = snapshot.pool(target.pool)
        kind = "StatefulSet" if workload.spec.state.enabled else "Deployment"
        name = rendered_name(workload, target.pool)
        if view is not None:
            settings = RenderSettings(
                worker_image=self.config.worker_image,
                upstreams=self._upstreams(workload),
                state_token=secrets.token_hex(32) if workload.spec.state.enabled else None,
            )
            for obj in render_worker_manifests(workload, target, view.pool, settings):
                obj_kind, obj_name = obj["kind"], obj["metadata"]["name"]
                watched = obj_kind in ("Deployment", "StatefulSet")
                if watched:
                    existing = self.cache.rendered.get(key, {}).get((obj_kind, obj_name))
                    if existing is not None and _unchanged(existing, obj):
                        continue
                else:  # Services and Secrets are not watched: skip what this run already applied
                    memo_key = (obj_kind, workload.namespace, obj_name)
                    digest = _digest(obj)
                    if self._applied.get(memo_key) == (digest, self._resyncs):
                        continue
                result = await self.api.apply(obj, create_only=obj_kind == "Secret")
                if watched and result:
                    self.observe("Rendered", "MODIFIED", result, enqueue=False)
                elif not watched:
                    self._applied[memo_key] = (digest, self._resyncs)
        # else: the pool was deleted during the grace period: leave what runs alone
        objs = self.cache.rendered.get(key, {})
        current = objs.get((kind, name))
        ready, rolled_out = readiness(current, workload.spec.replicas)
        if current is not None and _rendered_pool(current) != target.pool:
            rolled_out = False  # the patch has not been seen yet
        stale = [k for k in objs if k != (kind, name)]
        if rolled_out:
            for stale_kind, stale_name in stale:
                await self.api.delete("apps/v1", stale_kind, stale_name, workload.namespace)
                self.observe("Rendered", "DELETED", objs.get((stale_kind, stale_name)) or {}, enqueue=False)
            stale = []
        return ready, rolled_out, not stale

    def _status(
        self,
        workload: EdgeWorkload,
        old: EdgeWorkloadStatus,
        decision: engine.PlacementDecision,
        action: Action,
        reason: str,
        target: Placement | None,
        previous: Placement | None,
        verdict: Any,
        ready: int,
    ) -> EdgeWorkloadStatus:
        generation = workload.metadata.generation
        placed = target is not None
        if target is not None:
            since = (
                old.placement.since
                if old.placement is not None and old.placement.pool == target.pool
                else None
            )
            target = target.model_copy(update={"since": since or now_utc()})
        phase = Phase.PLACED if placed and action is not Action.UNSCHEDULABLE else Phase.UNSCHEDULABLE
        replicas = workload.spec.replicas
        placed_reason = {
            Action.PLACE: "Placed",
            Action.STAY: "Placed",
            Action.MOVE: "Replaced",
            Action.FAIL_BACK: "FailedBack",
            Action.REBALANCE: "Rebalanced",
            Action.WAIT_GRACE: "PoolDegraded",
            Action.WAIT_STABILIZATION: "Placed",
            Action.UNSCHEDULABLE: "Unschedulable",
        }[action]
        placed_message = (
            decision.message if action in (Action.PLACE, Action.UNSCHEDULABLE) and target is None else reason
        )
        ready_ok = placed and ready >= replicas and previous is None
        ready_message = f"{ready}/{replicas} replicas ready" + (
            f", draining pool {previous.pool}" if previous else ""
        )
        disruption_since = verdict.disruption_since
        listed, omitted = status_candidates(decision.candidates, workload.spec)
        state = self.state_health.get((workload.namespace, workload.name))
        extra: list[Condition] = []
        if workload.spec.state.enabled:
            sync_to = workload.spec.state.sync_to.value if workload.spec.state.sync_to else None
            ok, why, text = synced_condition(state, sync_to)
            extra.append(_condition("StateSynced", ok, why, text, generation, old.conditions))
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
                _condition(
                    "Placed",
                    phase is Phase.PLACED and action is not Action.WAIT_GRACE,
                    placed_reason,
                    placed_message,
                    generation,
                    old.conditions,
                ),
                _condition(
                    "Ready",
                    ready_ok,
                    "ReplicasReady" if ready_ok else "ReplicasNotReady",
                    ready_message,
                    generation,
                    old.conditions,
                ),
                *extra,
            ],
            state=state if workload.spec.state.enabled else None,
            observed_generation=generation,
        )

    def _record(
        self,
        body: Mapping[str, Any],
        old: EdgeWorkloadStatus,
        new: EdgeWorkloadStatus,
        action: Action,
        reason: str,
        decision: engine.PlacementDecision,
    ) -> None:
        tier = new.placement.tier.value if new.placement else "none"
        if action is Action.PLACE:
            if old.phase is not Phase.PLACED or old.placement is None:
                metrics.PLACEMENTS.labels(tier, "placed").inc()
                self.post_event(body, "Normal", "Placed", decision.message)
        elif action in (Action.MOVE, Action.FAIL_BACK, Action.REBALANCE):
            metrics.PLACEMENTS.labels(tier, "replaced").inc()
            why = {Action.MOVE: "pool-lost", Action.FAIL_BACK: "failback", Action.REBALANCE: "cost"}[action]
            metrics.REPLACEMENTS.labels(why).inc()
            src = old.placement.pool if old.placement else "?"
            dst = new.placement.pool if new.placement else "?"
            self.post_event(body, "Normal", "Replaced", f"moved from pool {src} to {dst}: {reason}")
        elif action is Action.WAIT_GRACE and old.disruption is None:
            self.post_event(body, "Warning", "PoolDegraded", reason)
        elif action is Action.UNSCHEDULABLE and (
            old.phase is not Phase.UNSCHEDULABLE or old.message != new.message
        ):
            metrics.PLACEMENTS.labels(tier, "unschedulable").inc()
            self.post_event(body, "Warning", "Unschedulable", new.message or decision.message)
        metrics.UNSCHEDULABLE.set(len(self.unschedulable))

    # ------------------------------------------------------------------ pools and nodes --
    async def reconcile_pools(self) -> None:
        """Label and taint every pool's member nodes; clean nodes that left; write every pool's status."""
        assert self.api is not None
        started = time.perf_counter()
        async with self.lock:
            snapshot = self.snapshot()
            usage = dict(self.by_pool)
        desired: dict[str, tuple[str, dict[str, str], list[dict[str, str]]]] = {}
        for view in snapshot.pools:
            spec = view.pool.spec
            labels = {LABEL_POOL: view.name, LABEL_TIER: spec.tier.value, LABEL_SITE: spec.site}
            taints = [t.model_dump(mode="json") for t in spec.effective_taints]
            for node in view.nodes:
                desired[node.name] = (view.name, labels, taints)
        for name, node in list(self.cache.nodes.items()):
            await self._sync_node(name, node, desired.get(name))
        for raw in list(self.cache.pools.values()):
            if not (raw.get("metadata") or {}).get("deletionTimestamp"):
                await self._write_pool_status(raw, snapshot, usage)
        metrics.RECONCILE_SECONDS.labels("EdgeNodePool").observe(time.perf_counter() - started)

    async def _sync_node(
        self,
        name: str,
        node: Mapping[str, Any],
        want: tuple[str, dict[str, str], list[dict[str, str]]] | None,
    ) -> None:
        assert self.api is not None
        meta = node.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        taints = list((node.get("spec") or {}).get("taints") or [])
        try:
            managed = json.loads((meta.get("annotations") or {}).get(MANAGED_ANNOTATION) or "{}")
        except ValueError:
            managed = {}
        owned_labels = set(managed.get("labels") or [])
        owned_taints = {(t.get("key"), t.get("effect")) for t in managed.get("taints") or []}
        foreign_taints = [t for t in taints if (t.get("key"), t.get("effect")) not in owned_taints]
        if want is None:
            if not managed:
                return
            patch: dict[str, Any] = {
                "metadata": {
                    "labels": {k: None for k in owned_labels if k in labels},
                    "annotations": {MANAGED_ANNOTATION: None},
                },
                "spec": {"taints": foreign_taints or None},
            }
        else:
            pool, want_labels, want_taints = want
            keys = {(t["key"], t["effect"]) for t in want_taints}
            new_taints = [
                t for t in foreign_taints if (t.get("key"), t.get("effect")) not in keys
            ] + want_taints
            record = json.dumps(
                {
                    "pool": pool,
                    "labels": sorted(want_labels),
                    "taints": [{"key": t["key"], "effect": t["effect"]} for t in want_taints],
                },
                sort_keys=True,
            )
            stale = {k: None for k in owned_labels - set(want_labels) if k in labels}
            if (
                all(labels.get(k) == v for k, v in want_labels.items())
                and not stale
                and new_taints == taints
                and (meta.get("annotations") or {}).get(MANAGED_ANNOTATION) == record
            ):
                return
            patch = {
                "metadata": {"labels": {**stale, **want_labels}, "annotations": {MANAGED_ANNOTATION: record}},
                "spec": {"taints": new_taints or None},
            }
        try:
            result = await self.api.patch("v1", "Node", name, patch)
        except ApiError as exc:
            if exc.status == 404:  # the node went away meanwhile
                return
            raise
        self.observe("Node", "MODIFIED", result, enqueue=False)

    async def _write_pool_status(
        self, raw: Mapping[str, Any], snapshot: ClusterSnapshot, usage: Mapping[str, PoolUsage]
    ) -> None:
        assert self.api is not None
        meta = raw["metadata"]
        name = meta["name"]
        model, error = self.pool_model(raw)
        generation = meta.get("generation")
        old = raw.get("status") or {}
        old_conditions = []
        for cond in old.get("conditions") or []:
            try:
                old_conditions.append(Condition.model_validate(cond))
            except ValidationError:
                continue
        if model is None:
            status: dict[str, Any] = {
                "conditions": [
                    _condition(
                        "Ready", False, "InvalidSpec", f"invalid spec: {error}", generation, old_conditions
                    ).model_dump(mode="json", by_alias=True, exclude_none=True)
                ],
                "observedGeneration": generation,
            }
            if old.get("conditions") != status["conditions"]:
                self.post_event(raw, "Warning", "InvalidSpec", f"invalid spec: {error}")
        else:
            view = snapshot.pool(name)
            nodes = view.nodes if view else ()
            conflicts = sorted(n for n, pools in snapshot.conflicts.items() if name in pools)
            alloc = view.allocatable if view else Resources()
            used = usage.get(name, PoolUsage())
            ready = sum(1 for n in nodes if n.usable)
            conditions = [
                _condition(
                    "Ready",
                    ready > 0,
                    "NodesReady" if ready else "NoReadyNodes",
                    f"{ready}/{len(nodes)} member nodes ready",
                    generation,
                    old_conditions,
                ),
                _condition(
                    "Conflict",
                    bool(conflicts),
                    "NodesInSeveralPools" if conflicts else "NoConflict",
                    (
                        f"nodes also selected by another pool (they join neither): {', '.join(conflicts)}"
                        if conflicts
                        else "no node is selected by another pool"
                    ),
                    generation,
                    old_conditions,
                ),
            ]
            status = {
                "memberNodes": [n.name for n in nodes],
                "nodeCount": len(nodes),
                "readyNodes": ready,
                "allocatable": {
                    "cpu": format_cpu(alloc.cpu_millis),
                    "memory": format_memory(alloc.memory_bytes),
                    "gpu": alloc.gpu,
                },
                "requested": {
                    "cpu": format_cpu(max(used.resources.cpu_millis, 0)),
                    "memory": format_memory(max(used.resources.memory_bytes, 0)),
                    "gpu": max(used.resources.gpu, 0),
                },
                "workloads": max(used.workloads, 0),
                "conflicts": conflicts,
                "conditions": [
                    c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions
                ],
                "observedGeneration": generation,
            }
            if conflicts and set(old.get("conflicts") or []) != set(conflicts):
                self.post_event(raw, "Warning", "NodeConflict", conditions[1].message)
            tier = model.spec.tier.value
            metrics.POOL_NODES.labels(name, "ready").set(ready)
            metrics.POOL_NODES.labels(name, "total").set(len(nodes))
            for resource, num, den in (
                ("cpu", used.resources.cpu_millis, alloc.cpu_millis),
                ("memory", used.resources.memory_bytes, alloc.memory_bytes),
                ("gpu", used.resources.gpu, alloc.gpu),
            ):
                metrics.POOL_UTILIZATION.labels(name, tier, resource).set(num / den if den else 0.0)
        if status == old:
            return
        patch = {"status": {**{k: None for k in old if k not in status}, **status}}
        try:
            result = await self.api.patch(API_VERSION, "EdgeNodePool", name, patch, subresource="status")
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile
                return
            raise
        self.observe("EdgeNodePool", "MODIFIED", result, enqueue=False)


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


def _digest(obj: Mapping[str, Any]) -> str:
    """Identity of a manifest as applied; a Secret's data is generated once and never compared."""
    shown = {k: v for k, v in obj.items() if not (obj.get("kind") == "Secret" and k == "data")}
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()


def _unchanged(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether applying ``desired`` (a merge patch of labels, annotations, owners and spec) would change
    nothing: every field we set already has our value."""
    return _contains(existing.get("spec"), desired.get("spec")) and _contains(
        {k: (existing.get("metadata") or {}).get(k) for k in ("labels", "annotations", "ownerReferences")},
        {k: desired["metadata"].get(k) for k in ("labels", "annotations", "ownerReferences")},
    )


def _contains(have: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(_contains, have, want))
    return bool(have == want) or (want is None and have is None)


def iter_keys(workloads: Iterable[tuple[str, str]]) -> list[Key]:
    return [workload_key(ns, name) for ns, name in workloads]
