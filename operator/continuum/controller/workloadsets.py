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
import base64
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from continuum.api.fleet import Child, Expansion, applied_spec, child_object, expand, three_way_patch
from continuum.api.loader import format_validation_error
from continuum.api.models import API_VERSION, EdgeNodePool, EdgeWorkload, ModelRef, Tier
from continuum.api.workloadset import (
    ANNOTATION_APPLIED,
    LABEL_SET_SITE,
    EdgeWorkloadSet,
    RolloutStatus,
)
from continuum.controller import metrics
from continuum.controller.cache import ClusterCache
from continuum.controller.fleet_status import (
    invalid_set_status,
    listed,
    rollout_condition,
    workload_set_status,
)
from continuum.controller.keys import WorkloadKey, WorkloadSetKey
from continuum.controller.kube import ApiError, KubeApi, path_for
from continuum.controller.rollouts import RolloutClient
from continuum.controller.settings import DEFAULT_WORKER_URL_TEMPLATE
from continuum.controller.status import dump, parse_conditions
from continuum.render.worker import secret_name_for
from continuum.rollout import machine

EventFn = Callable[[Mapping[str, Any], str, str, str], None]  # (body, type, reason, message)
Observe = Callable[[str, "str | None", Mapping[str, Any]], None]
WRITES_IN_FLIGHT = 16  # child creates/patches/deletes of one set sent at once
TIER_ORDER = {tier.value: i for i, tier in enumerate(Tier)}
log = logging.getLogger("continuum.operator")


def deep_status_patch(old: Any, new: Any) -> Any:
    """A merge patch taking ``old`` to ``new`` at every depth (keys gone are nulled; lists are atomic)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = deep_status_patch(old[key], value)
    return patch


def site_infos(
    expansion: Expansion, pools: list[EdgeNodePool], children: Mapping[str, Mapping[str, Any]]
) -> list[machine.SiteInfo]:
    """Each selected site's tier (where its child is placed, else its pools' lowest tier) and the labels
    of its pools (what a wave's tiers and selector look at)."""
    labels: dict[str, dict[str, str]] = {}
    tiers: dict[str, str] = {}
    for pool in pools:
        site = pool.spec.site
        labels.setdefault(site, {}).update(pool.metadata.labels)
        tier = pool.spec.tier.value
        if site not in tiers or TIER_ORDER[tier] < TIER_ORDER[tiers[site]]:
            tiers[site] = tier
    out = []
    for child in expansion.children:
        placed = (((children.get(child.name) or {}).get("status") or {}).get("placement") or {}).get("tier")
        out.append(machine.SiteInfo(child.site, placed or tiers.get(child.site), labels.get(child.site, {})))
    return out


def running_model(children: Mapping[str, Mapping[str, Any]], template: ModelRef) -> ModelRef:
    """The model most of the existing children run (the stable version when a rollout is first seen),
    else the template's."""
    models: Counter[str] = Counter()
    for raw in children.values():
        model = (raw.get("spec") or {}).get("model")
        if isinstance(model, Mapping):
            models[json.dumps(model, sort_keys=True)] += 1
    for text, _ in models.most_common():
        try:
            return ModelRef.model_validate(json.loads(text))
        except ValidationError:
            continue
    return template


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
        self,
        cache: ClusterCache,
        *,
        observe_child: Observe,
        observe_own: Observe,
        post_event: EventFn,
        url_template: str = DEFAULT_WORKER_URL_TEMPLATE,
    ) -> None:
        self.cache = cache
        self.observe_child = observe_child  # a child we wrote: into the cache, and queued for placement
        self.observe_own = observe_own  # our own status write: into the cache only
        self.post_event = post_event
        self.api: KubeApi | None = None
        self.workers = RolloutClient(url_template)
        self.worker_errors: dict[tuple[str, str], str] = {}  # (set uid, site) → last refusal, posted once

    async def reconcile(self, body: Mapping[str, Any]) -> float | None:
        """One pass over a set; returns seconds after which to look again (a rollout in progress)."""
        assert self.api is not None
        started = time.perf_counter()
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector deletes the children
        try:
            ews = EdgeWorkloadSet.model_validate(
                {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
            )
        except ValidationError as exc:
            await self.write_invalid(body, "; ".join(format_validation_error(exc)))
            return None
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
        outcome = None
        if ews.spec.rollout is not None:
            outcome = await self.roll(body, ews, expansion, pools, owned)
            expansion = self.with_models(expansion, outcome)
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
        if outcome is not None:
            built.rollout = outcome.status
            built.conditions.append(rollout_condition(outcome.status, ews.metadata.generation, previous))
        if expansion.errors and built.message != old.get("message"):
            self.post_event(body, "Warning", "InvalidSite", built.message or "")
        if conflicts and sorted(conflicts) != sorted(old.get("conflicts") or []):
            self.post_event(body, "Warning", "ChildConflict", built.conditions[0].message)
        await self.write_status(body, dump(built))
        metrics.RECONCILE_SECONDS.labels(EdgeWorkloadSet.KIND).observe(time.perf_counter() - started)
        return outcome.again if outcome is not None else None

    async def roll(
        self,
        body: Mapping[str, Any],
        ews: EdgeWorkloadSet,
        expansion: Expansion,
        pools: list[EdgeNodePool],
        owned: Mapping[str, Mapping[str, Any]],
    ) -> machine.Outcome:
        """Read the workers the rollout needs, decide (:func:`continuum.rollout.machine.advance`), send
        what it says to the workers, post its Events. The children's models are written by the caller."""
        rollout = ews.spec.rollout
        assert rollout is not None
        raw_prev = (body.get("status") or {}).get("rollout")
        prev = None
        if raw_prev:
            try:
                prev = RolloutStatus.model_validate(raw_prev)
            except ValidationError:
                log.warning("%s: status.rollout unreadable; starting from the children's model", ews.key)
        infos = site_infos(expansion, pools, owned)
        template = ews.spec.template.model
        targets = {
            c.site: (
                c.name,
                ews.namespace,
                int((c.spec.get("worker") or {}).get("port", 8000)),
                template.name,
            )
            for c in expansion.children
        }
        readings = await self.workers.read(targets, machine.sites_to_read(rollout, prev, infos))
        if machine.wants_drift(rollout, prev):  # the drift gate: each read worker's drift view too
            read = [s for s, r in readings.items() if isinstance(r, machine.Reading)]
            views = await self.workers.read_drift(targets, read)
            readings = {
                s: dataclasses.replace(r, drift=views[s])
                if s in views and isinstance(r, machine.Reading)
                else r
                for s, r in readings.items()
            }
        outcome = machine.advance(
            rollout,
            template,
            ews.metadata.uid or ews.key,
            infos,
            prev,
            readings,
            datetime.now(UTC),
            running_model(owned, template),
        )
        tokens = await self.state_tokens(ews, expansion, {p.site for p in outcome.puts})
        refused = await self.workers.send(targets, outcome.puts, tokens)
        for site, error in refused.items():
            key = (ews.metadata.uid or ews.key, site)
            if self.worker_errors.get(key) != error:
                self.worker_errors[key] = error
                self.post_event(body, "Warning", "WorkerRefused", f"site {site}: {error}"[:1024])
        for site in {p.site for p in outcome.puts} - set(refused):
            self.worker_errors.pop((ews.metadata.uid or ews.key, site), None)
        for event in outcome.events:
            self.post_event(body, event.type, event.reason, event.message)
        return outcome

    async def state_tokens(
        self, ews: EdgeWorkloadSet, expansion: Expansion, sites: set[str]
    ) -> dict[str, str]:
        """The state token of each stateful child among ``sites`` (its worker wants it on a PUT): from the
        Secret the workload reconciler created for it; a missing Secret is no token (the PUT is refused
        and retried on the next pass)."""
        assert self.api is not None
        tokens = {}
        for child in expansion.children:
            if child.site not in sites or not (child.spec.get("state") or {}).get("enabled"):
                continue
            secret = await self.api.get("v1", "Secret", secret_name_for(child.name), ews.namespace)
            raw = ((secret or {}).get("data") or {}).get("token")
            if raw:
                tokens[child.site] = base64.b64decode(raw).decode()
        return tokens

    @staticmethod
    def with_models(expansion: Expansion, outcome: machine.Outcome) -> Expansion:
        """Each child's spec.model: the candidate where the rollout has put it, the stable version elsewhere."""
        status = outcome.status
        children = []
        for child in expansion.children:
            model = status.candidate if child.site in outcome.candidate_sites else status.stable
            if model is None or child.error is not None:
                children.append(child)
                continue
            spec = {**child.spec, "model": model.model_dump(mode="json", by_alias=True, exclude_none=True)}
            children.append(dataclasses.replace(child, spec=spec))
        return dataclasses.replace(expansion, children=children)

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
                {"status": deep_status_patch(old, status)},
                meta.get("namespace"),
                subresource="status",
            )
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile
                return
            raise
        self.observe_own(EdgeWorkloadSet.KIND, "MODIFIED", result)
