"""The operator's state and its two reconcilers. Each one reads, calls the pure core, applies, records.

* :meth:`Controller.reconcile_workload`: parse → snapshot → :func:`placement.decide` →
  :func:`hysteresis.judge` → :func:`render.render_worker_manifests` → apply → status + Events.
* :meth:`Controller.reconcile_pool`: membership from the snapshot → node labels/taints (only what we
  set, recorded in a node annotation) → pool status.

The caches are fed by watch events (see :mod:`continuum.controller.handlers`) and primed by a full
list at startup, so a restarted operator never decides on a half-loaded cluster. Decisions and the
timestamps hysteresis needs live in ``status``: a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from continuum.api.loader import format_validation_error
from continuum.api.models import (
    API_VERSION,
    LABEL_POOL,
    LABEL_SITE,
    LABEL_TIER,
    LABEL_WORKLOAD,
    Condition,
    Disruption,
    EdgeNodePool,
    EdgeWorkload,
    EdgeWorkloadSpec,
    EdgeWorkloadStatus,
    Phase,
    Placement,
)
from continuum.api.quantity import format_cpu, format_memory
from continuum.controller import metrics
from continuum.controller.kube import KubeApi
from continuum.placement import engine, filters
from continuum.placement.hysteresis import Action, HysteresisPolicy, judge
from continuum.placement.snapshot import ClusterSnapshot, PoolUsage, Resources, build_snapshot, pod_requests
from continuum.render.worker import DEFAULT_WORKER_IMAGE, RenderSettings, render_worker_manifests, service_url

MANAGED_ANNOTATION = "continuum.dev/managed"
WORKLOAD_KINDS = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"))

EventFn = Callable[[Mapping[str, Any], str, str, str], None]  # (body, type, reason, message)


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
    resync_seconds: float = 10.0

    @property
    def policy(self) -> HysteresisPolicy:
        return HysteresisPolicy(self.grace_seconds, self.stabilization_seconds)


@dataclass
class Cache:
    """Latest objects seen, keyed by name (cluster) or (namespace, name)."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    workloads: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rendered: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # Deployments/StatefulSets


def _condition(
    ctype: str, ok: bool, reason: str, message: str, generation: int | None, previous: list[Condition]
) -> Condition:
    status = "True" if ok else "False"
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


class Controller:
    def __init__(
        self, config: OperatorConfig, api: KubeApi | None = None, post_event: EventFn | None = None
    ) -> None:
        self.config = config
        self.api: KubeApi | None = api
        self.cache = Cache()
        self.lock = asyncio.Lock()
        self.post_event: EventFn = post_event or (lambda body, type_, reason, message: None)
        self.primed = asyncio.Event()
        self._prime_lock = asyncio.Lock()
        self._snapshot: ClusterSnapshot | None = None
        self._snapshot_key: str | None = None
        self._pool_models: dict[str, tuple[int, EdgeNodePool | None, str | None]] = {}
        self._specs: dict[tuple[Any, ...], EdgeWorkloadSpec | None] = {}
        self._usage: dict[tuple[int, str], PoolUsage] = {}  # (id of a cached spec, pool) -> its usage
        self._reserved: dict[
            str, list[tuple[str, str]]
        ] = {}  # key -> [(suffix, pool)] decided, not yet in status
        self.log = logging.getLogger("continuum.operator")

    # ------------------------------------------------------------------ caches (watch events) --
    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        store: dict[Any, dict[str, Any]] = {
            "Node": self.cache.nodes,
            "EdgeNodePool": self.cache.pools,
            "EdgeWorkload": self.cache.workloads,
            "Pod": self.cache.pods,
            "Rendered": self.cache.rendered,
        }[kind]
        key: Any = (
            meta.get("name")
            if kind in ("Node", "EdgeNodePool")
            else (meta.get("namespace"), meta.get("name"))
        )
        if event_type == "DELETED":
            store.pop(key, None)
            return
        current = store.get(key)
        if current is not None and _rv(current) > _rv(body) > 0:
            return  # an older event than what we already wrote ourselves
        store[key] = plain(body)

    async def ensure_primed(self) -> None:
        """List everything once (after kopf's login) so the first decisions see the whole cluster."""
        if self.primed.is_set():
            return
        async with self._prime_lock:
            if not self.primed.is_set():
                await self.prime()

    async def prime(self) -> None:
        assert self.api is not None
        for obj in await self.api.list("v1", "Node"):
            self.observe("Node", None, obj)
        for obj in await self.api.list(API_VERSION, "EdgeNodePool"):
            self.observe("EdgeNodePool", None, obj)
        for obj in await self.api.list(API_VERSION, "EdgeWorkload"):
            self.observe("EdgeWorkload", None, obj)
        for obj in await self.api.list("v1", "Pod"):
            self.observe("Pod", None, obj)
        for api_version, kind in WORKLOAD_KINDS:
            for obj in await self.api.list(api_version, kind, label_selector=LABEL_WORKLOAD):
                self.observe("Rendered", None, obj)
        self.primed.set()

    # ------------------------------------------------------------------ the cluster snapshot --
    def pool_model(self, raw: Mapping[str, Any]) -> tuple[EdgeNodePool | None, str | None]:
        name = raw["metadata"]["name"]
        cached = self._pool_models.get(name)
        if cached is not None and cached[0] == _rv(raw) and _rv(raw) > 0:
            return cached[1], cached[2]
        try:
            model, error = EdgeNodePool.model_validate(raw), None
        except ValidationError as exc:
            model, error = None, "; ".join(format_validation_error(exc))
        self._pool_models[name] = (_rv(raw), model, error)
        return model, error

    def _requested_by_node(self) -> dict[str, Resources]:
        out: dict[str, Resources] = {}
        for pod in self.cache.pods.values():
            meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
            node = spec.get("nodeName")
            if not node or LABEL_WORKLOAD in (meta.get("labels") or {}):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            try:
                out[node] = out.get(node, Resources()) + pod_requests(pod)
            except ValueError:
                continue
        return out

    def snapshot(self) -> ClusterSnapshot:
        """The placement view of the cluster, rebuilt only when something it reads changed."""
        requested = self._requested_by_node()
        node_view = sorted(
            (
                n["metadata"]["name"],
                json.dumps(n["metadata"].get("labels") or {}, sort_keys=True),
                json.dumps((n.get("status") or {}).get("allocatable") or {}, sort_keys=True),
                next(
                    (
                        c.get("status")
                        for c in (n.get("status") or {}).get("conditions") or []
                        if c.get("type") == "Ready"
                    ),
                    None,
                ),
                bool((n.get("spec") or {}).get("unschedulable")),
            )
            for n in self.cache.nodes.values()
        )
        key = json.dumps(
            [
                node_view,
                sorted((k, _rv(v)) for k, v in self.cache.pools.items()),
                sorted((k, repr(v)) for k, v in requested.items()),
            ]
        )
        if self._snapshot is None or key != self._snapshot_key:
            pools = [m for raw in self.cache.pools.values() if (m := self.pool_model(raw)[0]) is not None]
            self._snapshot = build_snapshot(pools, list(self.cache.nodes.values()), requested)
            self._snapshot_key = key
            self._usage.clear()  # a workload's usage depends on its pool (site, hence WAN)
        return self._snapshot

    def _spec(self, raw: Mapping[str, Any]) -> EdgeWorkloadSpec | None:
        """The parsed spec of a cached workload, validated once per (uid, generation)."""
        meta = raw.get("metadata") or {}
        key = (meta.get("uid"), meta.get("generation"), meta.get("namespace"), meta.get("name"))
        if key not in self._specs:
            try:
                self._specs[key] = EdgeWorkloadSpec.model_validate(raw.get("spec") or {})
            except ValidationError:
                self._specs[key] = None
            if len(self._specs) > 4 * len(self.cache.workloads) + 100:  # drop entries of old generations
                live = {
                    (r["metadata"].get("uid"), r["metadata"].get("generation"))
                    for r in self.cache.workloads.values()
                }
                self._specs = {k: v for k, v in self._specs.items() if k[:2] in live}
                self._usage.clear()  # keyed by id() of specs that may be gone now
        return self._specs[key]

    def _placed(self) -> list[tuple[str, EdgeWorkloadSpec, str]]:
        """(key, spec, pool) of every placement in effect, both ends of a move while it drains.

        A decision made but not yet written to status (the API call runs outside the lock) counts too."""
        out = []
        for (ns, name), raw in self.cache.workloads.items():
            key = f"{ns}/{name}"
            spec = self._spec(raw)
            if spec is None:
                continue
            if key in self._reserved:
                out.extend((f"{key}{suffix}", spec, pool) for suffix, pool in self._reserved[key])
                continue
            status = raw.get("status") or {}
            for fieldname, suffix in (("placement", ""), ("previousPlacement", "#previous")):
                pool = (status.get(fieldname) or {}).get("pool")
                if pool and status.get("phase") in (Phase.PLACED.value, Phase.UNSCHEDULABLE.value):
                    out.append((f"{key}{suffix}", spec, pool))
        return out

    def usage_excluding(self, key: str, snapshot: ClusterSnapshot) -> dict[str, PoolUsage]:
        """Per-pool usage of every other placed workload (each workload's share cached by spec and pool)."""
        by_pool: dict[str, PoolUsage] = {}
        for entry, spec, pool_name in self._placed():
            if entry in (key, f"{key}#previous"):
                continue
            cache_key = (id(spec), pool_name)
            usage = self._usage.get(cache_key)
            if usage is None:
                view = snapshot.pool(pool_name)
                if view is None:
                    continue
                usage = self._usage[cache_key] = filters.usage_of(spec, view)
            by_pool[pool_name] = by_pool.get(pool_name, PoolUsage()) + usage
        return by_pool

    # ------------------------------------------------------------------ workloads --
    def _upstreams(self, workload: EdgeWorkload) -> dict[str, str]:
        """Service URL of the same model (same namespace) placed on each other tier."""
        out: dict[str, str] = {}
        for (ns, name), raw in sorted(self.cache.workloads.items()):
            if ns != workload.namespace or name == workload.name:
                continue
            spec = raw.get("spec") or {}
            placement = (raw.get("status") or {}).get("placement") or {}
            if (spec.get("model") or {}).get("name") == workload.spec.model.name and placement.get("tier"):
                port = int((spec.get("worker") or {}).get("port", 8000))
                out.setdefault(placement["tier"], service_url(name, ns, port))
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
        self.observe("EdgeWorkload", "MODIFIED", result)

    async def write_invalid(self, body: Mapping[str, Any], exc: ValidationError) -> None:
        lines = format_validation_error(exc)
        message = "invalid spec: " + "; ".join(lines)
        previous = EdgeWorkloadStatus.model_validate(body.get("status") or {}).conditions
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
        if (body.get("status") or {}).get("phase") != Phase.INVALID.value or (body.get("status") or {}).get(
            "message"
        ) != message:
            self.post_event(body, "Warning", "InvalidSpec", message)
        await self._write_status(body, status)

    async def reconcile_workload(self, body: Mapping[str, Any]) -> str:
        """Decide, apply and record one workload. Returns a short summary (for logs)."""
        assert self.api is not None
        started = time.perf_counter()
        await self.ensure_primed()
        try:
            workload = EdgeWorkload.model_validate(
                {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
            )
        except ValidationError as exc:
            await self.write_invalid(body, exc)
            return "invalid"
        old = EdgeWorkloadStatus.model_validate(body.get("status") or {})
        async with self.lock:
            snapshot = self.snapshot()
            decision = engine.decide(
                workload.spec, snapshot, self.usage_excluding(workload.key, snapshot), workload.key
            )
            current = old.placement if old.phase in (Phase.PLACED, Phase.UNSCHEDULABLE) else None
            verdict = judge(
                workload.spec,
                current,
                decision,
                now_utc(),
                self.config.policy,
                old.disruption.since if old.disruption else None,
                old.better_since,
            )
            target = verdict.target
            previous = old.previous_placement
            if verdict.moves and current is not None:
                previous = current
            # Reserve the capacity now; the API calls below run outside the lock.
            self._reserved[workload.key] = [
                (suffix, p.pool) for suffix, p in (("", target), ("#previous", previous)) if p
            ]
        try:
            ready, rolled_out = await self._apply(workload, target, snapshot)
            if rolled_out and previous is not None and target is not None and previous.pool != target.pool:
                self.post_event(body, "Normal", "Drained", f"old replicas on pool {previous.pool} are gone")
                previous = None
            elif previous is not None and target is not None and previous.pool == target.pool:
                previous = None
            status = self._status(
                workload,
                old,
                decision,
                verdict.action,
                verdict.reason,
                target,
                previous,
                verdict.disruption_since,
                verdict.better_since,
                ready,
            )
            await self._write_status(body, status)
        finally:
            self._reserved.pop(workload.key, None)
        self._record(body, workload, old, status, verdict.action, verdict.reason, decision)
        metrics.RECONCILE_SECONDS.labels("EdgeWorkload").observe(time.perf_counter() - started)
        return f"{verdict.action.value}: {verdict.reason}"

    async def _apply(
        self, workload: EdgeWorkload, target: Placement | None, snapshot: ClusterSnapshot
    ) -> tuple[int, bool]:
        """Render and apply the worker on ``target``; return (ready replicas, rollout complete)."""
        assert self.api is not None
        key = (workload.namespace, workload.name)
        if target is None:
            return 0, False
        view = snapshot.pool(target.pool)
        if view is None:  # pool deleted during the grace period: leave what runs alone
            return self._readiness(self.cache.rendered.get(key), workload.spec.replicas)
        token = None
        if workload.spec.state.enabled:
            token = secrets.token_hex(32)
        settings = RenderSettings(
            worker_image=self.config.worker_image, upstreams=self._upstreams(workload), state_token=token
        )
        current = self.cache.rendered.get(key)
        for obj in render_worker_manifests(workload, target, view.pool, settings):
            if (
                current is not None
                and obj["kind"] not in (current.get("kind"),)
                and obj["kind"] in ("Deployment", "StatefulSet")
            ):
                # state was switched on/off: the kind changes; remove the old object first
                await self.api.delete(
                    current["apiVersion"], current["kind"], workload.name, workload.namespace
                )
                current = None
            result = await self.api.apply(obj, create_only=obj["kind"] == "Secret")
            if obj["kind"] in ("Deployment", "StatefulSet") and result:
                self.observe("Rendered", "MODIFIED", result)
                current = self.cache.rendered.get(key)
        return self._readiness(current, workload.spec.replicas)

    @staticmethod
    def _readiness(obj: Mapping[str, Any] | None, replicas: int) -> tuple[int, bool]:
        if not obj:
            return 0, False
        status = obj.get("status") or {}
        ready = int(status.get("readyReplicas") or 0)
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        done = (
            int(status.get("observedGeneration") or 0) >= generation
            and int(status.get("updatedReplicas") or 0) >= replicas
            and ready >= replicas
        )
        return ready, done

    def _status(
        self,
        workload: EdgeWorkload,
        old: EdgeWorkloadStatus,
        decision: engine.PlacementDecision,
        action: Action,
        reason: str,
        target: Placement | None,
        previous: Placement | None,
        disruption_since: datetime | None,
        better_since: datetime | None,
        ready: int,
    ) -> EdgeWorkloadStatus:
        generation = workload.metadata.generation
        placed = target is not None
        if (
            placed
            and old.placement is not None
            and target is not None
            and old.placement.pool == target.pool
            and old.placement.since
        ):
            target = target.model_copy(update={"since": old.placement.since})
        elif target is not None:
            target = target.model_copy(update={"since": now_utc()})
        phase = Phase.PLACED if placed and action is not Action.UNSCHEDULABLE else Phase.UNSCHEDULABLE
        replicas = workload.spec.replicas
        placed_reason = {
            Action.PLACE: "Placed",
            Action.STAY: "Placed",
            Action.MOVE: "Replaced",
            Action.FAIL_BACK: "FailedBack",
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
        return EdgeWorkloadStatus(
            phase=phase,
            placement=target,
            previous_placement=previous,
            candidates=list(decision.candidates),
            hint=decision.hint if decision.placement is None else None,
            message=reason,
            ready_replicas=ready,
            disruption=Disruption(since=disruption_since, reason=reason) if disruption_since else None,
            better_since=better_since,
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
            ],
            observed_generation=generation,
        )

    def _record(
        self,
        body: Mapping[str, Any],
        workload: EdgeWorkload,
        old: EdgeWorkloadStatus,
        new: EdgeWorkloadStatus,
        action: Action,
        reason: str,
        decision: engine.PlacementDecision,
    ) -> None:
        tier = new.placement.tier.value if new.placement else "none"
        if action is Action.PLACE:
            metrics.PLACEMENTS.labels(tier, "placed").inc()
            if old.phase is not Phase.PLACED or old.placement is None:
                self.post_event(body, "Normal", "Placed", decision.message)
        elif action in (Action.MOVE, Action.FAIL_BACK):
            metrics.PLACEMENTS.labels(tier, "replaced").inc()
            metrics.REPLACEMENTS.labels("failback" if action is Action.FAIL_BACK else "pool-lost").inc()
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
        metrics.UNSCHEDULABLE.set(
            sum(
                1
                for raw in self.cache.workloads.values()
                if (raw.get("status") or {}).get("phase") == Phase.UNSCHEDULABLE.value
            )
        )

    # ------------------------------------------------------------------ pools and nodes --
    async def reconcile_pools(self) -> None:
        """Label and taint every pool's member nodes; clean nodes that left; write every pool's status."""
        assert self.api is not None
        await self.ensure_primed()
        async with self.lock:
            snapshot = self.snapshot()
            desired: dict[str, tuple[str, dict[str, str], list[dict[str, str]]]] = {}
            for view in snapshot.pools:
                spec = view.pool.spec
                labels = {LABEL_POOL: view.name, LABEL_TIER: spec.tier.value, LABEL_SITE: spec.site}
                taints = [t.model_dump(mode="json") for t in spec.effective_taints]
                for node in view.nodes:
                    desired[node.name] = (view.name, labels, taints)
            for name, node in list(self.cache.nodes.items()):
                await self._sync_node(name, node, desired.get(name))
            usage = engine.ledger_for(self._placed(), snapshot).by_pool
            for raw in list(self.cache.pools.values()):
                await self._write_pool_status(raw, snapshot, usage)

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
        result = await self.api.patch("v1", "Node", name, patch)
        self.observe("Node", "MODIFIED", result)

    async def _write_pool_status(
        self, raw: Mapping[str, Any], snapshot: ClusterSnapshot, usage: Mapping[str, PoolUsage]
    ) -> None:
        assert self.api is not None
        meta = raw["metadata"]
        name = meta["name"]
        model, error = self.pool_model(raw)
        generation = meta.get("generation")
        old = raw.get("status") or {}
        old_conditions = [Condition.model_validate(c) for c in old.get("conditions") or []]
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
                "workloads": used.workloads,
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
        result = await self.api.patch(API_VERSION, "EdgeNodePool", name, patch, subresource="status")
        self.observe("EdgeNodePool", "MODIFIED", result)
