"""The EdgeWorkload reconciler: parse → snapshot → :func:`placement.decide` → :func:`hysteresis.judge`
→ :func:`render.render_worker_manifests` → apply → status (:mod:`continuum.controller.status`) and Events.

A workload's placement decision is reused while nothing it depends on changed (its spec, the cluster
snapshot, capacity freed by others); decisions that would place or move a workload are always made
fresh. Decisions are serialized by one lock (decide + reserve the capacity in the ledger); the API
calls run outside it.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from continuum.api.loader import format_validation_error
from continuum.api.models import (
    API_VERSION,
    DriftStatus,
    EdgeWorkload,
    EdgeWorkloadSpec,
    EdgeWorkloadStatus,
    IngestStatus,
    Phase,
    Placement,
    StateSyncStatus,
)
from continuum.controller import metrics
from continuum.controller.cache import ClusterCache
from continuum.controller.diff import digest, rendered_pool, unchanged
from continuum.controller.keys import CLAIM_PLACEMENT, CLAIM_PREVIOUS, RENDERED, WorkloadKey
from continuum.controller.kube import ApiError, KubeApi
from continuum.controller.ledger import ClaimsLedger
from continuum.controller.settings import OperatorSettings
from continuum.controller.status import (
    STATUS_CANDIDATES,
    apply_error_message,
    drift_event,
    dump_workload_status,
    invalid_workload_status,
    now_utc,
    status_patch,
    workload_status,
)
from continuum.placement import engine, fast
from continuum.placement.hysteresis import Action, Verdict, judge
from continuum.placement.snapshot import ClusterSnapshot
from continuum.render.worker import (
    RenderSettings,
    readiness,
    render_worker_manifests,
    rendered_name,
    service_url,
)

RECONCILE_SECONDS = metrics.RECONCILE_SECONDS.labels("EdgeWorkload")
FRESH_EVERY = 10  # every 10th resync makes every decision fresh (others reuse unchanged decisions)

EventFn = Callable[[Mapping[str, Any], str, str, str], None]  # (body, type, reason, message)
ObserveOwn = Callable[[str, "str | None", Mapping[str, Any]], None]  # our own write into the caches


class WorkloadReconciler:
    def __init__(
        self,
        settings: OperatorSettings,
        cache: ClusterCache,
        ledger: ClaimsLedger,
        lock: asyncio.Lock,
        *,
        snapshot: Callable[[], ClusterSnapshot],
        refresh_claims: Callable[[WorkloadKey], None],
        observe_own: ObserveOwn,
        post_event: EventFn,
        state_health: Mapping[WorkloadKey, StateSyncStatus],
        drift_health: Mapping[WorkloadKey, DriftStatus] | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.ledger = ledger
        self.lock = lock
        self.snapshot = snapshot
        self.refresh_claims = refresh_claims
        self.observe_own = observe_own
        self.post_event = post_event
        self.state_health = state_health
        self.drift_health: Mapping[WorkloadKey, DriftStatus] = (
            drift_health if drift_health is not None else {}
        )
        self.ingest_health: dict[WorkloadKey, IngestStatus] = {}  # filled by ingest_health.IngestProbe
        self.api: KubeApi | None = None
        self.resyncs = 0
        self.resync_epoch = 0
        # per workload: (what the decision depends on, the pool it was told the workload runs on, decision)
        self._decisions: dict[WorkloadKey, tuple[Hashable, str | None, engine.PlacementDecision]] = {}
        self._applied: dict[tuple[str, str, str], tuple[str, int]] = {}  # Services/Secrets: (digest, epoch)
        # per workload: the upstream URLs its last render read (by tier), so a peer changing tier re-queues
        # only the workloads whose rendered upstream actually changes (see upstreams_changed)
        self._rendered_upstreams: dict[WorkloadKey, dict[str, str | None]] = {}

    def on_resync(self) -> None:
        self.resyncs += 1
        if self.resyncs % FRESH_EVERY == 0:
            self.resync_epoch += 1  # candidates' reasons (others' usage) are refreshed now and then

    def forget(self, key: WorkloadKey, secret: str) -> None:
        """The workload is gone (or was re-created): drop its decision and applied-manifest memos."""
        self._decisions.pop(key, None)
        self._rendered_upstreams.pop(key, None)
        for memo in [m for m in self._applied if m[1] == key.namespace and m[2] in (key.name, secret)]:
            del self._applied[memo]

    def forget_decision(self, key: WorkloadKey) -> None:
        self._decisions.pop(key, None)
        self._rendered_upstreams.pop(key, None)

    def upstreams_changed(self, key: WorkloadKey) -> bool:
        """Whether re-rendering ``key`` would read other upstream URLs than its last render did (a copy of
        the same model changed tier); never for a spec whose render reads none (most copies of a model);
        otherwise True when it was not rendered yet or cannot be read."""
        raw = self.cache.workloads.get(key)
        spec = self.cache.spec(raw) if raw is not None else None
        if spec is None:
            return True
        if not _upstream_tiers(spec):
            return False
        read = self._rendered_upstreams.get(key)
        return read is None or _read_upstreams(spec, self._upstreams(key.namespace, key.name, spec)) != read

    # ------------------------------------------------------------------ reconcile --
    async def reconcile(self, body: Mapping[str, Any]) -> float | None:
        """Decide, apply and record one workload. Returns when to look again (seconds) or None."""
        assert self.api is not None
        started = time.perf_counter()
        fields = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        spec = self.cache.spec(body)  # validated once per generation (the watch event already did it)
        if spec is not None:
            fields["spec"] = (
                spec  # a model instance is not validated again; an invalid one is, for its errors
            )
        try:
            workload = EdgeWorkload.model_validate(fields)
        except ValidationError as exc:
            await self.write_invalid(body, exc)
            return None
        key = WorkloadKey(workload.namespace, workload.name)
        try:
            old = EdgeWorkloadStatus.model_validate(body.get("status") or {})
        except ValidationError:
            old = EdgeWorkloadStatus()  # a status we cannot read is rebuilt from scratch
        async with self.lock:
            current = old.placement if old.phase in (Phase.PLACED, Phase.UNSCHEDULABLE) else None
            now = now_utc()
            decision, fresh = self._decide(workload, key, current, fresh=False)
            args = (self.settings.policy, old.disruption.since if old.disruption else None, old.better_since)
            verdict = judge(workload.spec, current, decision, now, *args)
            if not fresh and verdict.action in (Action.PLACE, Action.MOVE, Action.FAIL_BACK):
                decision, _ = self._decide(workload, key, current, fresh=True)  # act only on a fresh decision
                verdict = judge(workload.spec, current, decision, now, *args)
            target = verdict.target
            previous = old.previous_placement
            if verdict.moves and current is not None:
                previous = current
            if previous is not None and target is not None and previous.pool == target.pool:
                previous = None  # moved back before the drain finished
            # Reserve the capacity now; the API calls below run outside the lock.
            self.ledger.reserve(
                key,
                {entry: p.pool for entry, p in ((CLAIM_PLACEMENT, target), (CLAIM_PREVIOUS, previous)) if p},
            )
            self.refresh_claims(key)
        status_of = functools.partial(
            workload_status,
            workload,
            old,
            decision,
            verdict,
            target=target,
            state=self.state_health.get(key),
            drift=self.drift_health.get(key),
            ingest=self.ingest_health.get(key),
            now=now,
        )
        # A first placement (nothing of the workload rendered yet, no refusal on record): what its status
        # says once the objects are created is known now (0 replicas ready), so it is written alongside the
        # creates, one round trip instead of two. Should the creates answer otherwise (refused, or an
        # object that already existed), the status below differs and is written again.
        early: EdgeWorkloadStatus | None = None
        early_write = None
        if target is not None and previous is None and not self.cache.rendered.get(key) and not _refused(old):
            early = status_of(previous=None, ready=0)
            early_write = asyncio.ensure_future(self._write_status(body, early))
        written: Mapping[str, Any] | None = None  # the status on the server, when not the body's
        try:
            try:
                ready, rolled_out, drained, refused = await self._apply_or_refusal(workload, target, previous)
            finally:
                if early_write is not None:
                    written = await early_write  # its error, if any, once the creates have answered
            refused_text = (
                apply_error_message(refused.status, refused.reason, refused.message) if refused else None
            )
            if previous is not None and rolled_out and drained:
                self.post_event(body, "Normal", "Drained", f"old replicas on pool {previous.pool} are gone")
                previous = None
            if early is not None and (ready, previous, refused_text) == (0, None, None):
                status = early  # as the creates answered: written already
            else:
                status = status_of(previous=previous, ready=ready, apply_error=refused_text)
                await self._write_status(body, status, written)
            if refused is not None and refused_text is not None:
                self.post_event(body, "Warning", "ApplyFailed", refused_text)
                raise refused
        finally:
            self.ledger.release(key)
            self.refresh_claims(key)
        self._record(body, old, status, verdict, decision)
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return self._look_again(verdict.action, status, now)

    def _decide(
        self, workload: EdgeWorkload, key: WorkloadKey, current: Placement | None, fresh: bool
    ) -> tuple[engine.PlacementDecision, bool]:
        """The placement decision, reused while nothing it depends on changed; (decision, was_fresh).

        Vectorized over pools (:func:`fast.decide_placement`, same decision as ``engine.decide``); its
        candidates are what status lists (``STATUS_CANDIDATES``), plus the row of the pool the workload
        runs on (``current``), which the hysteresis reads."""
        snapshot = self.snapshot()
        pool = current.pool if current is not None else None
        fingerprint = (
            workload.metadata.uid,
            workload.metadata.generation,
            self.cache.built,
            self.ledger.epoch,
            self.resync_epoch,
        )
        cached = self._decisions.get(key)
        if (
            not fresh
            and cached is not None
            and cached[0] == fingerprint
            and _lists(cached[2], cached[1], pool)
        ):
            return cached[2], False
        decision = fast.decide_placement(
            workload.spec,
            snapshot,
            None,
            workload.key,
            current=pool,
            limit=STATUS_CANDIDATES,
            used=self.ledger.used_excluding(key, snapshot.table),  # kept by the ledger, row by row
        )
        self._decisions[key] = (fingerprint, pool, decision)
        return decision, True

    def _look_again(self, action: Action, new: EdgeWorkloadStatus, now: datetime) -> float | None:
        """Deadlines: the end of a grace period or of a stabilization window; a drain in progress."""
        policy = self.settings.policy
        if action is Action.WAIT_GRACE and new.disruption is not None:
            elapsed = (now - new.disruption.since).total_seconds()
            return max(policy.grace_seconds - elapsed, 0.0) + 0.05
        if action is Action.WAIT_STABILIZATION and new.better_since is not None:
            elapsed = (now - new.better_since).total_seconds()
            return max(policy.stabilization_seconds - elapsed, 0.0) + 0.05
        if new.previous_placement is not None:
            return 5.0  # the Deployment's events drive the drain; this is a safety net
        return None

    # ------------------------------------------------------------------ apply --
    def _upstreams(self, namespace: str, own: str, spec: EdgeWorkloadSpec) -> dict[str, str]:
        """Service URL of the same model (same namespace) placed on each other tier; none looked up for a
        spec whose render reads none (most workloads: no offload, no state sync)."""
        out: dict[str, str] = {}
        if not _upstream_tiers(spec):
            return out
        for name in self.cache.same_model(namespace, spec.model.name):
            if name == own:
                continue
            raw = self.cache.workloads.get(WorkloadKey(namespace, name)) or {}
            placement = (raw.get("status") or {}).get("placement") or {}
            if placement.get("tier"):
                port = int(((raw.get("spec") or {}).get("worker") or {}).get("port", 8000))
                out.setdefault(placement["tier"], service_url(name, namespace, port))
        return out

    async def _apply_or_refusal(
        self, workload: EdgeWorkload, target: Placement | None, previous: Placement | None
    ) -> tuple[int, bool, bool, ApiError | None]:
        """:meth:`_apply`, or the API server's refusal of a rendered object (403, 422): not transient, RBAC
        forbids an object (e.g. the chart's state.enabled=false and a workload with state: no Secrets) or the
        apiserver rejects what we rendered. The reconcile says so where users look, then retries with
        backoff (an RBAC fix takes effect without a restart)."""
        try:
            return *await self._apply(workload, target, previous), None
        except ApiError as exc:
            if exc.status not in (403, 422):
                raise
            return 0, False, False, exc

    async def _apply(
        self, workload: EdgeWorkload, target: Placement | None, previous: Placement | None
    ) -> tuple[int, bool, bool]:
        """Render and apply the worker on ``target``; return (ready replicas, rolled out, old ones gone).

        Make-before-break: objects of this workload that are not the target's (a StatefulSet on the
        previous pool, a Deployment after state was switched on) are deleted only once the target's
        replicas are all Ready."""
        assert self.api is not None
        key = WorkloadKey(workload.namespace, workload.name)
        if target is None:
            self._rendered_upstreams.pop(key, None)  # nothing rendered: a peer's change re-queues it
            return 0, False, True
        view = self.snapshot().pool(target.pool)
        kind = "StatefulSet" if workload.spec.state.enabled else "Deployment"
        name = rendered_name(workload, target.pool)
        if view is not None:
            upstreams = self._upstreams(workload.namespace, workload.name, workload.spec)
            # noted before the API calls: a peer changing tier meanwhile compares against what this render read
            self._rendered_upstreams[key] = _read_upstreams(workload.spec, upstreams)
            settings = RenderSettings(
                worker_image=self.settings.worker_image,
                upstreams=upstreams,
                state_token=secrets.token_hex(32) if workload.spec.state.enabled else None,
            )
            first: list[Callable[[], Awaitable[None]]] = []  # Secrets: before the pods can mount them
            then: list[Callable[[], Awaitable[None]]] = []
            for obj in render_worker_manifests(workload, target, view.pool, settings):
                obj_kind, obj_name = obj["kind"], obj["metadata"]["name"]
                if obj_kind in ("Deployment", "StatefulSet"):
                    existing = self.cache.rendered.get(key, {}).get((obj_kind, obj_name))
                    if existing is None or not unchanged(existing, obj):
                        then.append(functools.partial(self._write_rendered, obj))
                    continue
                # Services and Secrets are not watched: re-assert them once per resync epoch (every
                # FRESH_EVERY resyncs), not on every pass: on a real cluster each re-assertion is a create
                # (409) and a patch, 200 calls/s at 1,000 workloads and the default 10 s resync
                memo_key = (obj_kind, workload.namespace, obj_name)
                identity = digest(obj)
                if self._applied.get(memo_key) != (identity, self.resync_epoch):
                    write = functools.partial(self._write_unwatched, obj, memo_key, identity)
                    (first if obj_kind == "Secret" else then).append(write)
            for write in first:
                await write()
            # the rest at once (one round trip's wait, not one per object); the first error is raised
            for outcome in await asyncio.gather(*(write() for write in then), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        # else: the pool was deleted during the grace period: leave what runs alone
        objs = self.cache.rendered.get(key, {})
        current = objs.get((kind, name))
        ready, rolled_out = readiness(current, workload.spec.replicas)
        if current is not None and rendered_pool(current) != target.pool:
            rolled_out = False  # the patch has not been seen yet
        stale = [k for k in objs if k != (kind, name)]
        if rolled_out:
            for stale_kind, stale_name in stale:
                await self.api.delete("apps/v1", stale_kind, stale_name, workload.namespace)
                self.observe_own(RENDERED, "DELETED", objs.get((stale_kind, stale_name)) or {})
            stale = []
        return ready, rolled_out, not stale

    async def _write_rendered(self, obj: dict[str, Any]) -> None:
        """Create or patch a Deployment/StatefulSet; its answer goes into the cache before its watch event."""
        assert self.api is not None
        result = await self.api.apply(obj)
        if result:
            self.observe_own(RENDERED, "MODIFIED", result)

    async def _write_unwatched(
        self, obj: dict[str, Any], memo_key: tuple[str, str, str], identity: str
    ) -> None:
        """Create or patch a Service or Secret (a Secret is only created: its token must not change)."""
        assert self.api is not None
        await self.api.apply(obj, create_only=obj["kind"] == "Secret", read=False)
        self._applied[memo_key] = (identity, self.resync_epoch)

    # ------------------------------------------------------------------ record --
    async def _write_status(
        self,
        body: Mapping[str, Any],
        status: EdgeWorkloadStatus,
        written: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write ``status`` unless the server has it already (``written``, else the body's); returns it
        as written."""
        assert self.api is not None
        meta = body["metadata"]
        new = dump_workload_status(status)
        old = (body.get("status") or {}) if written is None else written
        if old == new:
            return new
        result = await self.api.patch(
            API_VERSION,
            "EdgeWorkload",
            meta["name"],
            status_patch(old, new),
            meta.get("namespace"),
            subresource="status",
        )
        self.observe_own("EdgeWorkload", "MODIFIED", result)
        return new

    async def write_invalid(self, body: Mapping[str, Any], exc: ValidationError) -> None:
        message = "invalid spec: " + "; ".join(format_validation_error(exc))
        old = body.get("status") or {}
        try:
            previous = EdgeWorkloadStatus.model_validate(old).conditions
        except ValidationError:
            previous = []
        status = invalid_workload_status(message, (body.get("metadata") or {}).get("generation"), previous)
        if old.get("phase") != Phase.INVALID.value or old.get("message") != message:
            self.post_event(body, "Warning", "InvalidSpec", message)
            metrics.PLACEMENTS.labels("none", "invalid").inc()
        await self._write_status(body, status)

    def _record(
        self,
        body: Mapping[str, Any],
        old: EdgeWorkloadStatus,
        new: EdgeWorkloadStatus,
        verdict: Verdict,
        decision: engine.PlacementDecision,
    ) -> None:
        action, reason = verdict.action, verdict.reason
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
        metrics.UNSCHEDULABLE.set(len(self.cache.unschedulable))
        event = drift_event(old, new)
        if event is not None:
            self.post_event(body, *event)


def _refused(status: EdgeWorkloadStatus) -> bool:
    """Whether ``status`` reports the API server's refusal of a rendered object (Ready: ApplyFailed)."""
    return any(c.type == "Ready" and c.reason == "ApplyFailed" for c in status.conditions)


def _upstream_tiers(spec: EdgeWorkloadSpec) -> list[str]:
    """The tiers whose upstream URL a render of ``spec`` reads (:func:`render_worker_manifests`: the
    offload tier's, and with state the ``syncTo`` tier's); ``tests/controller/test_upstreams.py`` checks
    the renderer reads no other."""
    tiers = []
    if spec.offload is not None:
        tiers.append(spec.offload.tier.value)
    if spec.state.enabled and spec.state.sync_to is not None:
        tiers.append(spec.state.sync_to.value)
    return tiers


def _read_upstreams(spec: EdgeWorkloadSpec, upstreams: Mapping[str, str]) -> dict[str, str | None]:
    """The upstream URLs a render of ``spec`` reads, by tier."""
    return {tier: upstreams.get(tier) for tier in _upstream_tiers(spec)}


def _lists(decision: engine.PlacementDecision, made_for: str | None, pool: str | None) -> bool:
    """Whether ``decision``, made for a workload running on ``made_for``, is also the one for a workload
    running on ``pool``: the same pool, or its rows are the first ``STATUS_CANDIDATES`` without an extra
    row appended for ``made_for`` and ``pool``'s row is among them (e.g. the pool it was just placed on)."""
    if pool == made_for:
        return True
    rows = [c.pool for c in decision.candidates]
    appended = made_for is not None and len(rows) > STATUS_CANDIDATES  # made_for's row after the first ones
    return not appended and (pool is None or pool in rows)
