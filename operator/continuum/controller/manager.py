"""The operator as a composition, one reconciler per kind over a shared cache (as kubebuilder projects
are): :class:`ClusterCache` (watch cache, snapshot, priming), :class:`ClaimsLedger` (who holds what of
each pool), :class:`WorkloadReconciler`, :class:`PoolReconciler` and the :class:`WorkQueue` they are
fed from.

Watch events (the operator's own list+watch streams, :mod:`continuum.controller.watch`) go through
:meth:`Controller.observe` into the cache, the ledger and the queue; workers pull keys and reconcile them
level-triggered, as controller-runtime does. No decision is made before every watch has read its first
list, so a restarted operator never decides on a half-loaded cluster. Decisions and the timestamps hysteresis needs live in
``status``: a restart loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from continuum.api.models import DriftStatus, StateSyncStatus
from continuum.api.workloadset import EdgeWorkloadSet
from continuum.controller.cache import ClusterCache, WorkloadChange, owning_set, rendered_owner
from continuum.controller.keys import RENDERED, Pass, QueueKey, WorkloadKey, WorkloadSetKey
from continuum.controller.kube import KubeApi
from continuum.controller.ledger import ClaimChange, ClaimsLedger
from continuum.controller.pools import PoolReconciler
from continuum.controller.queue import WorkQueue
from continuum.controller.settings import OperatorSettings
from continuum.controller.workloads import EventFn, WorkloadReconciler
from continuum.controller.workloadsets import WorkloadSetReconciler
from continuum.placement.snapshot import ClusterSnapshot
from continuum.render.worker import secret_name_for

POOLS_AFTER_CLAIMS = 1.0  # seconds: pools' requested resources follow claim changes, coalesced
ALL_AFTER_NODES = 0.05  # seconds: a burst of node/pod changes becomes one pass
SET_AFTER_CHILDREN = 0.5  # seconds: a set's rollup follows its children's changes, coalesced
SETS_AFTER_POOLS = 0.1  # seconds: pool changes (labels, sites) re-select every set's sites


class Controller:
    def __init__(
        self, settings: OperatorSettings, api: KubeApi | None = None, post_event: EventFn | None = None
    ) -> None:
        self.settings = settings
        self.cache = ClusterCache()
        self.ledger = ClaimsLedger()
        self.queue: WorkQueue = WorkQueue()
        self.lock = asyncio.Lock()
        self.api_ready = asyncio.Event()
        self.post_event: EventFn = post_event or (lambda body, type_, reason, message: None)
        self.state_health: dict[WorkloadKey, StateSyncStatus] = {}  # filled by state_health.StateProbe
        self.drift_health: dict[WorkloadKey, DriftStatus] = {}  # filled by drift_health.DriftProbe
        self.workloads = WorkloadReconciler(
            settings,
            self.cache,
            self.ledger,
            self.lock,
            snapshot=self.snapshot,
            refresh_claims=self.refresh_claims,
            observe_own=self.observe_own,
            post_event=self.post_event,
            state_health=self.state_health,
            drift_health=self.drift_health,
        )
        self.pools = PoolReconciler(
            self.cache,
            self.ledger,
            self.lock,
            snapshot=self.snapshot,
            observe_own=self.observe_own,
            post_event=self.post_event,
        )
        self.sets = WorkloadSetReconciler(
            self.cache,
            observe_child=self.observe,
            observe_own=self.observe_own,
            post_event=self.post_event,
            url_template=settings.worker_url_template,
        )
        self._api: KubeApi | None = None
        if api is not None:
            self.api = api

    @property
    def api(self) -> KubeApi | None:
        return self._api

    @api.setter
    def api(self, api: KubeApi) -> None:
        self._api = self.workloads.api = self.pools.api = self.sets.api = api
        self.api_ready.set()

    # ------------------------------------------------------------------ watch events --
    def observe(
        self, kind: str, event_type: str | None, body: Mapping[str, Any], enqueue: bool = True
    ) -> None:
        """Take a watch event (or, with ``enqueue=False``, the result of our own write) into the cache
        and the ledger, and queue what it affects."""
        if kind == RENDERED:
            owner = self.cache.observe_rendered(event_type, body)
            if enqueue and owner is not None and owner in self.cache.workloads:
                self.queue.add(owner, version=_version(body) if event_type != "DELETED" else None)
            elif not enqueue and event_type != "DELETED":
                self._wrote(rendered_owner(body), body)
            return
        if kind == "EdgeWorkload":
            self._observe_workload(event_type, body, enqueue)
            parent = owning_set(body)  # the set's rollup (and a deleted child is re-created)
            if parent is not None and parent in self.cache.workload_sets:
                self.queue.add_after(parent, SET_AFTER_CHILDREN)
            return
        if kind == EdgeWorkloadSet.KIND:
            key, changed = self.cache.observe_workload_set(event_type, body)
            if changed and enqueue and event_type != "DELETED":
                self.queue.add(key)
            return
        if self.cache.observe_object(kind, event_type, body):
            self.queue.add_after(Pass.ALL, ALL_AFTER_NODES)
        if kind in ("Node", "EdgeNodePool") and enqueue:
            self.queue.add(Pass.POOLS)
        if kind == "EdgeNodePool":  # a pool's labels or site may select or drop sites
            for set_key in list(self.cache.workload_sets):
                self.queue.add_after(set_key, SETS_AFTER_POOLS)

    def observe_own(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        self.observe(kind, event_type, body, enqueue=False)
        if event_type != "DELETED":
            self.cache.note_own_write(kind, body)

    def _wrote(self, key: WorkloadKey | None, body: Mapping[str, Any]) -> None:
        """Our write of ``key``'s objects answered: its watch event, if seen while ``key``'s pass still
        ran, is an echo (:meth:`WorkQueue.wrote`)."""
        if key is not None:
            self.queue.wrote(key, _version(body))

    def _observe_workload(self, event_type: str | None, body: Mapping[str, Any], enqueue: bool) -> None:
        key, change = self.cache.observe_workload(event_type, body)
        if not enqueue and event_type != "DELETED":
            self._wrote(key, body)  # also when its watch event came first (then this answer is stale)
        if change is WorkloadChange.STALE:
            return
        if change is WorkloadChange.DELETED:
            self.workloads.forget(key, secret_name_for(key.name))
            self._claims_changed(key, self.ledger.drop(key))
            self._requeue_peers(key, self.cache.index_model(key, None))
            return
        if change is WorkloadChange.RECREATED:
            self.workloads.forget_decision(key)
        raw = self.cache.workloads[key]
        self.refresh_claims(key)
        self._requeue_peers(key, self.cache.index_model(key, raw))
        if enqueue:
            urgent = (raw.get("status") or {}).get("observedGeneration") != (raw.get("metadata") or {}).get(
                "generation"
            )
            self.queue.add(key, urgent=urgent, version=_version(body))

    def _requeue_peers(self, key: WorkloadKey, peers: set[str]) -> None:
        """A copy of the same model changed tier: its peers' upstreams (offload, state sync) may change;
        re-queued are those whose render would read another upstream than their last one did."""
        for peer in peers:
            peer_key = WorkloadKey(key.namespace, peer)
            if self.workloads.upstreams_changed(peer_key):
                self.queue.add(peer_key)

    # ------------------------------------------------------------------ snapshot and claims --
    def snapshot(self) -> ClusterSnapshot:
        """The placement snapshot; when it is rebuilt, every claim is recomputed against it (a
        workload's usage depends on its pool's site, hence WAN)."""
        if self.cache.stale:
            snapshot = self.cache.snapshot()
            if self.ledger.rebuild(list(self.cache.workloads), self._claim_inputs, snapshot):
                self.queue.add_after(Pass.POOLS, POOLS_AFTER_CLAIMS)
            return snapshot
        return self.cache.snapshot()

    def _claim_inputs(self, key: WorkloadKey) -> tuple[dict[str, str], Any]:
        raw = self.cache.workloads.get(key)
        spec = self.cache.spec(raw) if raw is not None else None
        wanted = self.ledger.wanted(key, (raw or {}).get("status")) if spec is not None else {}
        return wanted, spec

    def refresh_claims(self, key: WorkloadKey) -> None:
        """Make ``key``'s claims what its reservation or its written status says."""
        wanted, spec = self._claim_inputs(key)
        self._claims_changed(key, self.ledger.set(key, wanted, spec, self.cache.current_snapshot))

    def _claims_changed(self, key: WorkloadKey, change: ClaimChange) -> None:
        if not change.changed:
            return
        self.queue.add_after(Pass.POOLS, POOLS_AFTER_CLAIMS)  # pools' requested resources
        if change.freed:  # capacity appeared: retry what could not be placed
            for stuck in self.cache.unschedulable:
                if stuck != key:
                    self.queue.add(stuck)

    # ------------------------------------------------------------------ the work loop --
    async def process(self, key: QueueKey) -> float | None:
        """Reconcile one queued key; returns seconds after which to look again (a deadline), or None."""
        await self.api_ready.wait()
        await self.cache.primed.wait()  # every watch has read its first list
        if key is Pass.ALL:
            self.enqueue_all()
            return None
        if key is Pass.POOLS:
            await self.pools.reconcile()
            return None
        if isinstance(key, WorkloadSetKey):
            raw_set = self.cache.workload_sets.get(key)
            if raw_set is not None:
                return await self.sets.reconcile(raw_set)  # a rollout in progress: its next window
            return None
        raw = self.cache.workloads.get(key)
        if raw is None:
            return None
        return await self.workloads.reconcile(raw)

    def enqueue_all(self, resync: bool = False) -> None:
        if resync:
            self.workloads.on_resync()
        for key in list(self.cache.workloads):
            self.queue.add(key)
        for set_key in list(self.cache.workload_sets):
            self.queue.add(set_key)
        self.queue.add(Pass.POOLS)

    # ------------------------------------------------------------------ narrow callbacks --
    def on_leadership(self) -> None:
        """This replica starts acting: its watches kept the caches current while it stood by, so
        everything is reconciled against them (once they have read their first lists)."""
        self.queue.add(Pass.ALL)

    def state_targets(self) -> list[tuple[WorkloadKey, int]]:
        """Placed, state-enabled workloads and their worker port (what :class:`StateProbe` asks)."""
        out = []
        for key, raw in list(self.cache.workloads.items()):
            spec = self.cache.spec(raw)
            if spec is not None and spec.state.enabled and (raw.get("status") or {}).get("placement"):
                out.append((key, spec.worker.port))
        return out

    def drift_targets(self) -> list[tuple[WorkloadKey, int, str]]:
        """Placed workloads, their worker port and model name (what :class:`DriftProbe` asks)."""
        out = []
        for key, raw in list(self.cache.workloads.items()):
            spec = self.cache.spec(raw)
            if spec is not None and (raw.get("status") or {}).get("placement"):
                out.append((key, spec.worker.port, spec.model.name))
        return out

    def requeue(self, key: WorkloadKey) -> None:
        self.queue.add(key)


def _version(body: Mapping[str, Any]) -> str | None:
    return (body.get("metadata") or {}).get("resourceVersion")
