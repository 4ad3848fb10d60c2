"""The EdgeWorkloadSet reconciler: parse → :func:`continuum.api.fleet.expand` over the cached pools →
create, merge-patch or delete the children → status (:mod:`continuum.controller.fleet_status`) and Events.

* Exactly one child EdgeWorkload per selected site, named ``<set>-<site>``, with an owner reference
  (``controller: true``) to the set; Kubernetes' garbage collector deletes the children with the set.
* A child is created when its site is selected, deleted when its site is no longer selected.
* Only the fields the set renders are written (a three-way merge against the spec it last applied,
  kept in the child's ``continuum.dev/set-applied`` annotation); a child's other fields and its status
  are never touched. A name held by an EdgeWorkload the set does not control is reported, not taken.
* An invalid set (or an invalid site: template + overrides) changes nothing it cannot render correctly;
  the status condition and an Event name the field.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from continuum.api.fleet import Child, applied_spec, child_object, expand, three_way_patch
from continuum.api.loader import format_validation_error
from continuum.api.models import API_VERSION, EdgeWorkload
from continuum.api.workloadset import ANNOTATION_APPLIED, LABEL_SET_SITE, EdgeWorkloadSet
from continuum.controller import metrics
from continuum.controller.cache import ClusterCache
from continuum.controller.fleet_status import invalid_set_status, listed, workload_set_status
from continuum.controller.keys import WorkloadKey, WorkloadSetKey
from continuum.controller.kube import ApiError, KubeApi, path_for
from continuum.controller.status import dump, parse_conditions, status_patch

EventFn = Callable[[Mapping[str, Any], str, str, str], None]  # (body, type, reason, message)
Observe = Callable[[str, "str | None", Mapping[str, Any]], None]
WRITES_IN_FLIGHT = 16  # child creates/patches/deletes of one set sent at once


def controlled_by(child: Mapping[str, Any], uid: str | None) -> bool:
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    return any(
        r.get("controller") and r.get("kind") == EdgeWorkloadSet.KIND and r.get("uid") == uid for r in refs
    )


def child_patch(
    child: Child, current: Mapping[str, Any], desired_meta: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The merge patch that brings an owned child to what the set renders, or None when it is there."""
    spec = three_way_patch(applied_spec(current), child.spec, current.get("spec") or {})
    meta = current.get("metadata") or {}
    labels = {k: v for k, v in desired_meta["labels"].items() if (meta.get("labels") or {}).get(k) != v}
    annotation = desired_meta["annotations"][ANNOTATION_APPLIED]
    patch: dict[str, Any] = {}
    if spec:
        patch["spec"] = spec
    if labels:
        patch.setdefault("metadata", {})["labels"] = labels
    if (meta.get("annotations") or {}).get(ANNOTATION_APPLIED) != annotation:
        patch.setdefault("metadata", {})["annotations"] = {ANNOTATION_APPLIED: annotation}
    return patch or None


class WorkloadSetReconciler:
    def __init__(
        self, cache: ClusterCache, *, observe_child: Observe, observe_own: Observe, post_event: EventFn
    ) -> None:
        self.cache = cache
        self.observe_child = observe_child  # a child we wrote: into the cache, and queued for placement
        self.observe_own = observe_own  # our own status write: into the cache only
        self.post_event = post_event
        self.api: KubeApi | None = None

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        assert self.api is not None
        started = time.perf_counter()
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return  # the garbage collector deletes the children
        try:
            ews = EdgeWorkloadSet.model_validate(
                {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
            )
        except ValidationError as exc:
            await self.write_invalid(body, "; ".join(format_validation_error(exc)))
            return
        key = WorkloadSetKey(ews.namespace, ews.name)
        pools = [
            model
            for raw in list(self.cache.pools.values())
            if not (raw.get("metadata") or {}).get("deletionTimestamp")
            and (model := self.cache.pool_model(raw)[0]) is not None
        ]
        expansion = expand(ews, pools)
        owned = {}
        for name in list(self.cache.set_children.get(key, ())):
            raw = self.cache.workloads.get(WorkloadKey(ews.namespace, name))
            if raw is not None and controlled_by(raw, ews.metadata.uid):
                owned[name] = raw
        wanted = {c.name for c in expansion.children}
        conflicts: list[str] = []
        created: list[str] = []
        writes = []
        for child in expansion.children:
            if child.error is not None:
                continue  # an existing child keeps running as it is
            current = self.cache.workloads.get(WorkloadKey(ews.namespace, child.name))
            obj = child_object(ews, child)
            if current is None:
                writes.append(self._create(obj))
                created.append(child.site)
            elif child.name not in owned:
                conflicts.append(child.name)
            elif (patch := child_patch(child, current, obj["metadata"])) is not None:
                writes.append(self._patch(ews.namespace, child.name, patch))
        removed = sorted(name for name in owned if name not in wanted)
        writes.extend(self._delete(owned[name]) for name in removed)
        await self._run(writes)
        if created:
            self.post_event(
                body,
                "Normal",
                "SitesAdded",
                f"created {len(created)} EdgeWorkloads for sites {listed(created)}",
            )
        if removed:
            sites = [
                str(((owned[n].get("metadata") or {}).get("labels") or {}).get(LABEL_SET_SITE, n))
                for n in removed
            ]
            self.post_event(
                body,
                "Normal",
                "SitesRemoved",
                f"deleted {len(removed)} EdgeWorkloads of sites {listed(sites)}",
            )
        children = {}
        for name in wanted:
            raw = self.cache.workloads.get(WorkloadKey(ews.namespace, name))
            if raw is not None and controlled_by(raw, ews.metadata.uid):
                children[name] = raw
        old = body.get("status") or {}
        previous = parse_conditions(old.get("conditions"))
        built = workload_set_status(expansion, children, conflicts, ews.metadata.generation, previous)
        if expansion.errors and built.message != old.get("message"):
            self.post_event(body, "Warning", "InvalidSite", built.message or "")
        if conflicts and sorted(conflicts) != sorted(old.get("conflicts") or []):
            self.post_event(body, "Warning", "ChildConflict", built.conditions[0].message)
        await self.write_status(body, dump(built))
        metrics.RECONCILE_SECONDS.labels(EdgeWorkloadSet.KIND).observe(time.perf_counter() - started)

    async def _run(self, writes: list[Any]) -> None:
        gate = asyncio.Semaphore(WRITES_IN_FLIGHT)

        async def one(write: Any) -> None:
            async with gate:
                await write

        results = await asyncio.gather(*(one(w) for w in writes), return_exceptions=True)
        for result in results:  # every write was tried; the first failure is retried with the key
            if isinstance(result, BaseException):
                raise result

    async def _create(self, obj: dict[str, Any]) -> None:
        assert self.api is not None
        try:
            result = await self.api.request(
                "POST", path_for(API_VERSION, EdgeWorkload.KIND, None, obj["metadata"]["namespace"]), obj
            )
        except ApiError as exc:
            if exc.status == 409:  # created meanwhile by someone: never taken over; seen by the watch
                return
            raise
        self.observe_child(EdgeWorkload.KIND, "ADDED", result)

    async def _patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        assert self.api is not None
        try:
            result = await self.api.patch(API_VERSION, EdgeWorkload.KIND, name, patch, namespace)
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile: re-created on the next pass
                return
            raise
        self.observe_child(EdgeWorkload.KIND, "MODIFIED", result)

    async def _delete(self, child: Mapping[str, Any]) -> None:
        assert self.api is not None
        meta = child.get("metadata") or {}
        await self.api.delete(API_VERSION, EdgeWorkload.KIND, meta["name"], meta.get("namespace"))
        self.observe_child(EdgeWorkload.KIND, "DELETED", child)

    async def write_invalid(self, body: Mapping[str, Any], error: str) -> None:
        old = body.get("status") or {}
        generation = (body.get("metadata") or {}).get("generation")
        status = dump(invalid_set_status(error, generation, parse_conditions(old.get("conditions"))))
        if old.get("message") != status.get("message"):
            self.post_event(body, "Warning", "InvalidSpec", f"invalid spec: {error}")
        await self.write_status(body, status)

    async def write_status(self, body: Mapping[str, Any], status: dict[str, Any]) -> None:
        assert self.api is not None
        old = body.get("status") or {}
        if json.dumps(status, sort_keys=True) == json.dumps(old, sort_keys=True):
            return
        meta = body["metadata"]
        try:
            result = await self.api.patch(
                API_VERSION,
                EdgeWorkloadSet.KIND,
                meta["name"],
                status_patch(old, status),
                meta.get("namespace"),
                subresource="status",
            )
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile
                return
            raise
        self.observe_own(EdgeWorkloadSet.KIND, "MODIFIED", result)
