"""The EdgeNodePool reconciler: level-triggered over all pools and nodes. Member nodes get their pool's
labels and taints (:mod:`continuum.controller.nodes`), nodes that left are cleaned, and every pool's
status is written from :func:`continuum.controller.status.pool_status`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from continuum.api.models import API_VERSION
from continuum.controller import metrics
from continuum.controller.cache import ClusterCache
from continuum.controller.kube import ApiError, KubeApi
from continuum.controller.ledger import ClaimsLedger
from continuum.controller.nodes import Membership, memberships, node_patch
from continuum.controller.status import dump, invalid_pool_status, parse_conditions, pool_status, status_patch
from continuum.placement.snapshot import ClusterSnapshot, PoolUsage

EventFn = Callable[[Mapping[str, Any], str, str, str], None]  # (body, type, reason, message)
ObserveOwn = Callable[[str, "str | None", Mapping[str, Any]], None]


class PoolReconciler:
    def __init__(
        self,
        cache: ClusterCache,
        ledger: ClaimsLedger,
        lock: asyncio.Lock,
        *,
        snapshot: Callable[[], ClusterSnapshot],
        observe_own: ObserveOwn,
        post_event: EventFn,
    ) -> None:
        self.cache = cache
        self.ledger = ledger
        self.lock = lock
        self.snapshot = snapshot
        self.observe_own = observe_own
        self.post_event = post_event
        self.api: KubeApi | None = None
        # what each pass found already in place, to skip it while nothing it was built from changed (cache
        # objects are replaced, never modified, on every change, so identity says "unchanged")
        self._members: tuple[ClusterSnapshot, dict[str, Membership]] | None = None
        self._nodes_done: dict[str, tuple[Mapping[str, Any], Membership | None]] = {}
        self._status_done: dict[str, tuple[Mapping[str, Any], ClusterSnapshot, PoolUsage | None]] = {}

    def _memberships(self, snapshot: ClusterSnapshot) -> dict[str, Membership]:
        if self._members is None or self._members[0] is not snapshot:
            self._members = (snapshot, memberships(snapshot))
        return self._members[1]

    async def reconcile(self) -> None:
        """Label and taint every pool's member nodes; clean nodes that left; write every pool's status."""
        started = time.perf_counter()
        async with self.lock:
            snapshot = self.snapshot()
            usage = dict(self.ledger.by_pool)
        desired = self._memberships(snapshot)
        nodes_done, status_done = self._nodes_done, self._status_done
        for name, node in list(self.cache.nodes.items()):
            want = desired.get(name)
            done = nodes_done.get(name)
            if done is None or done[0] is not node or done[1] is not want:
                await self.sync_node(name, node, want)
        for gone in nodes_done.keys() - self.cache.nodes.keys():
            del nodes_done[gone]
        for name, raw in list(self.cache.pools.items()):
            if not (raw.get("metadata") or {}).get("deletionTimestamp"):
                done_status = status_done.get(name)
                if (
                    done_status is None
                    or done_status[0] is not raw
                    or done_status[1] is not snapshot
                    or done_status[2] != usage.get(name)
                ):
                    await self.write_status(raw, snapshot, usage)
        for gone in status_done.keys() - self.cache.pools.keys():
            del status_done[gone]
        invalid_pools = sum(1 for raw in self.cache.pools.values() if self.cache.pool_model(raw)[0] is None)
        invalid_workloads = sum(1 for raw in self.cache.workloads.values() if self.cache.spec(raw) is None)
        metrics.INVALID.labels("EdgeNodePool").set(invalid_pools)
        metrics.INVALID.labels("EdgeWorkload").set(invalid_workloads)
        metrics.RECONCILE_SECONDS.labels("EdgeNodePool").observe(time.perf_counter() - started)

    async def sync_node(self, name: str, node: Mapping[str, Any], want: Membership | None) -> None:
        assert self.api is not None
        patch = node_patch(node, want)
        if patch is None:
            self._nodes_done[name] = (node, want)
            return
        try:
            result = await self.api.patch("v1", "Node", name, patch)
        except ApiError as exc:
            if exc.status == 404:  # the node went away meanwhile
                return
            raise
        self.observe_own("Node", "MODIFIED", result)

    async def write_status(
        self, raw: Mapping[str, Any], snapshot: ClusterSnapshot, usage: Mapping[str, PoolUsage]
    ) -> None:
        assert self.api is not None
        meta = raw["metadata"]
        name = meta["name"]
        model, error = self.cache.pool_model(raw)
        generation = meta.get("generation")
        old = raw.get("status") or {}
        previous = parse_conditions(old.get("conditions"))
        if model is None:
            status = dump(invalid_pool_status(str(error), generation, previous))
            if old.get("conditions") != status["conditions"]:
                self.post_event(raw, "Warning", "InvalidSpec", f"invalid spec: {error}")
        else:
            used = usage.get(name, PoolUsage())
            built = pool_status(name, generation, snapshot, used, previous)
            status = dump(built)
            if built.conflicts and set(old.get("conflicts") or []) != set(built.conflicts):
                self.post_event(raw, "Warning", "NodeConflict", built.conditions[1].message)
            view = snapshot.pool(name)
            tier = model.spec.tier.value
            metrics.POOL_NODES.labels(name, "ready").set(built.ready_nodes)
            metrics.POOL_NODES.labels(name, "total").set(built.node_count)
            alloc = view.allocatable if view is not None else None
            for resource, num, den in (
                ("cpu", used.resources.cpu_millis, alloc.cpu_millis if alloc else 0),
                ("memory", used.resources.memory_bytes, alloc.memory_bytes if alloc else 0),
                ("gpu", used.resources.gpu, alloc.gpu if alloc else 0),
            ):
                metrics.POOL_UTILIZATION.labels(name, tier, resource).set(num / den if den else 0.0)
        if status == old:
            self._status_done[name] = (raw, snapshot, usage.get(name))
            return
        try:
            result = await self.api.patch(
                API_VERSION, "EdgeNodePool", name, status_patch(old, status), subresource="status"
            )
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile
                return
            raise
        self.observe_own("EdgeNodePool", "MODIFIED", result)
