"""The watch cache: the latest objects seen, the placement snapshot built from them, and the full list
that primes it. No decisions here.

* :meth:`ClusterCache.observe_object` / :meth:`observe_workload` / :meth:`observe_rendered` take a
  watch event (or the result of the operator's own write) and say what changed; events older than
  what is cached (by ``resourceVersion``) are ignored.
* :meth:`ClusterCache.snapshot` is the :class:`ClusterSnapshot` placement reads, rebuilt only when a
  fingerprint of what it reads (node labels, allocatable, readiness; pod requests; pool specs) changed.
* :meth:`ClusterCache.relist` takes a watcher's list of one kind (at its start, and after a 410 Gone)
  through the caller's ``observe``, deletions the watch missed included; :attr:`ClusterCache.primed`
  is set once every watch has read its first list, so the first decisions see the whole cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from continuum.api.loader import format_validation_error
from continuum.api.models import (
    LABEL_POOL,
    LABEL_SITE,
    LABEL_TIER,
    LABEL_WORKLOAD,
    EdgeNodePool,
    EdgeWorkloadSpec,
    Phase,
)
from continuum.api.workloadset import EdgeWorkloadSet
from continuum.controller.keys import RENDERED, WorkloadKey, WorkloadSetKey
from continuum.placement.snapshot import ClusterSnapshot, Resources, build_snapshot, node_taints, pod_holds
from continuum.render.worker import readiness

RENDERED_KINDS = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"))
OWN_NODE_LABELS = frozenset(
    {LABEL_POOL, LABEL_TIER, LABEL_SITE}
)  # set by the operator, not read by placement

Observe = Callable[[str, "str | None", Mapping[str, Any]], None]  # (kind, event type, object)


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, plain-dict copy of an object (kopf's Body views included)."""
    return json.loads(json.dumps(body, default=dict))


def resource_version(obj: Mapping[str, Any]) -> int:
    raw = (obj.get("metadata") or {}).get("resourceVersion") or "0"
    return int(raw) if str(raw).isdigit() else 0


def _workload_key(obj: Mapping[str, Any]) -> WorkloadKey:
    meta = obj.get("metadata") or {}
    return WorkloadKey(meta.get("namespace") or "default", meta.get("name") or "")


def _set_key(obj: Mapping[str, Any]) -> WorkloadSetKey:
    meta = obj.get("metadata") or {}
    return WorkloadSetKey(meta.get("namespace") or "default", meta.get("name") or "")


def node_fingerprint(node: Mapping[str, Any]) -> Hashable:
    """What placement reads of a node: labels (not ours), allocatable, readiness, cordon and blocking
    taints (heartbeats and our own annotation are not part of it)."""
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in OWN_NODE_LABELS}
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return (
        json.dumps(labels, sort_keys=True),
        json.dumps(status.get("allocatable") or status.get("capacity") or {}, sort_keys=True),
        ready,
        bool((node.get("spec") or {}).get("unschedulable")),
        node_taints(node),
    )


def pod_fingerprint(pod: Mapping[str, Any]) -> Hashable:
    """(node, requests) the pod holds against its node's capacity (:func:`pod_holds`), or None; a pod
    whose requests are not quantities holds nothing (kube-scheduler would not have bound it)."""
    try:
        return pod_holds(pod)
    except ValueError:
        return None


def rendered_fingerprint(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the workload reconciler reads of a Deployment/StatefulSet it rendered (compared with ==): what
    :func:`diff.unchanged` compares, the pool (:func:`diff.rendered_pool`), generation and what
    :func:`render.worker.readiness` makes of its status (ready replicas, rollout complete), not the status
    fields themselves: a rollout's intermediate steps (replicas counted, updated, conditions' heartbeats)
    change neither."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec")
    replicas = int(spec.get("replicas", 1)) if isinstance(spec, dict) else 1  # the workload's, as rendered
    return (
        meta.get("generation"),
        meta.get("labels"),
        meta.get("annotations"),
        meta.get("ownerReferences"),
        spec,
        readiness(obj, replicas),
    )


def rendered_owner(body: Mapping[str, Any]) -> WorkloadKey | None:
    """The workload a rendered Deployment/StatefulSet belongs to (its ``continuum.dev/workload`` label)."""
    meta = body.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(LABEL_WORKLOAD)
    return WorkloadKey(meta.get("namespace") or "default", owner) if owner else None


def owning_set(body: Mapping[str, Any]) -> WorkloadSetKey | None:
    """The EdgeWorkloadSet that controls this EdgeWorkload (its controller owner reference), if any."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == EdgeWorkloadSet.KIND and ref.get("name"):
            return WorkloadSetKey(meta.get("namespace") or "default", ref["name"])
    return None


OWN_WRITES_KEPT = 4096  # per kind: our writes whose watch events are awaited (a few per busy worker)


class WorkloadChange(enum.Enum):
    STALE = "stale"  # older than (or the echo of) what is cached: nothing changed
    DELETED = "deleted"
    UPDATED = "updated"
    RECREATED = "recreated"  # deleted and created again under the same name (a new uid)


class ClusterCache:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.pools: dict[str, dict[str, Any]] = {}
        self.workloads: dict[WorkloadKey, dict[str, Any]] = {}
        self.workload_sets: dict[WorkloadSetKey, dict[str, Any]] = {}
        self.set_children: dict[WorkloadSetKey, set[str]] = {}  # by the controlling set: workload names
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        # Deployments/StatefulSets by owning workload, then (kind, name)
        self.rendered: dict[WorkloadKey, dict[tuple[str, str], dict[str, Any]]] = {}
        self.unschedulable: set[WorkloadKey] = set()  # workloads whose status says Unschedulable
        self.primed = asyncio.Event()  # set once every watch has read its first list
        # while a watcher lists, the deletions seen: (kind, key) -> resourceVersion of the delete
        self._lists = 0
        self._tombstones: dict[tuple[str, Any], int] = {}
        # the placement snapshot, rebuilt when a fingerprint of a node, pod or pool spec changes
        self._fingerprints: dict[tuple[str, Any], Hashable] = {}
        self.version = 0
        self._snapshot: ClusterSnapshot | None = None
        self.built = -1  # the version the snapshot was built from
        self._pool_models: dict[str, tuple[str, EdgeNodePool | None, str | None]] = {}
        self._specs: dict[tuple[Any, ...], EdgeWorkloadSpec | None] = {}
        # by observed kind: the resourceVersions of our own writes whose answers are cached and whose watch
        # events have not arrived yet (insertion-ordered; see note_own_write)
        self._own_writes: dict[str, dict[str, bytes]] = {}  # kind -> version -> the object's "uid":"..."
        self._by_model: dict[tuple[str, str], set[str]] = {}  # (namespace, model) -> workload names
        self._model_of: dict[WorkloadKey, tuple[str, str | None]] = {}  # -> (model, placed tier)

    # ------------------------------------------------------------------ watch events --
    def observe_object(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """A Node, EdgeNodePool or Pod; returns whether the placement snapshot is now stale."""
        meta = body.get("metadata") or {}
        stores: dict[str, dict[Any, dict[str, Any]]] = {
            "Node": self.nodes,
            "EdgeNodePool": self.pools,
            "Pod": self.pods,  # keyed by (namespace, name)
        }
        store = stores[kind]
        key: Any = meta.get("name") if kind != "Pod" else (meta.get("namespace"), meta.get("name"))
        deleted = event_type == "DELETED"
        current = store.get(key)
        if not deleted and current is not None and resource_version(current) >= resource_version(body) > 0:
            return False  # older than (or the echo of) what we already have
        if deleted:
            store.pop(key, None)
            self._tombstone(kind, key, body)
        else:
            store[key] = body if isinstance(body, dict) else plain(body)
        if deleted:
            print_ = None
        elif kind == "Node":
            print_ = node_fingerprint(body)
        elif kind == "Pod":
            print_ = pod_fingerprint(body)
        else:
            print_ = json.dumps(body.get("spec") or {}, sort_keys=True)
        if self._fingerprints.get((kind, key)) == print_:
            return False
        if print_ is None:
            self._fingerprints.pop((kind, key), None)
        else:
            self._fingerprints[(kind, key)] = print_
        self.version += 1
        return True

    def observe_workload(
        self, event_type: str | None, body: Mapping[str, Any]
    ) -> tuple[WorkloadKey, WorkloadChange]:
        meta = body.get("metadata") or {}
        key = WorkloadKey(meta.get("namespace") or "default", meta.get("name") or "")
        current = self.workloads.get(key)
        if event_type == "DELETED":
            self.workloads.pop(key, None)
            self._tombstone("EdgeWorkload", key, body)
            self.unschedulable.discard(key)
            self._index_child(key, current or body, None)
            return key, WorkloadChange.DELETED
        if current is not None and resource_version(current) >= resource_version(body) > 0:
            return key, WorkloadChange.STALE
        raw = body if isinstance(body, dict) else plain(body)
        self._index_child(key, current, raw)
        recreated = current is not None and (current.get("metadata") or {}).get("uid") != meta.get("uid")
        self.workloads[key] = raw
        if (raw.get("status") or {}).get("phase") == Phase.UNSCHEDULABLE.value:
            self.unschedulable.add(key)
        else:
            self.unschedulable.discard(key)
        return key, WorkloadChange.RECREATED if recreated else WorkloadChange.UPDATED

    def _index_child(
        self, key: WorkloadKey, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        before = owning_set(old) if old is not None else None
        after = owning_set(new) if new is not None else None
        if before is not None and before != after:
            names = self.set_children.get(before)
            if names is not None:
                names.discard(key.name)
                if not names:
                    del self.set_children[before]
        if after is not None:
            self.set_children.setdefault(after, set()).add(key.name)

    def observe_workload_set(
        self, event_type: str | None, body: Mapping[str, Any]
    ) -> tuple[WorkloadSetKey, bool]:
        """An EdgeWorkloadSet; returns its key and whether anything changed (False: stale or an echo)."""
        meta = body.get("metadata") or {}
        key = WorkloadSetKey(meta.get("namespace") or "default", meta.get("name") or "")
        if event_type == "DELETED":
            self._tombstone(EdgeWorkloadSet.KIND, key, body)
            return key, self.workload_sets.pop(key, None) is not None
        current = self.workload_sets.get(key)
        if current is not None and resource_version(current) >= resource_version(body) > 0:
            return key, False
        self.workload_sets[key] = body if isinstance(body, dict) else plain(body)
        return key, True

    def observe_rendered(self, event_type: str | None, body: Mapping[str, Any]) -> WorkloadKey | None:
        """A Deployment/StatefulSet the operator rendered; returns its workload when what the reconciler reads
        of it changed (:func:`rendered_fingerprint`; always on a delete), None when it is not ours, stale, or
        an update of nothing the reconciler reads (a rollout's condition heartbeats)."""
        key = rendered_owner(body)
        if key is None:
            return None
        meta = body.get("metadata") or {}
        objs = self.rendered.setdefault(key, {})
        obj_key = (str(body.get("kind") or ""), str(meta.get("name")))
        if event_type == "DELETED":
            objs.pop(obj_key, None)
            self._tombstone(obj_key[0], (key.namespace, obj_key[1]), body)
            if not objs:
                self.rendered.pop(key, None)
        else:
            current = objs.get(obj_key)
            if current is not None and resource_version(current) >= resource_version(body) > 0:
                return None
            objs[obj_key] = body if isinstance(body, dict) else plain(body)
            if current is not None and rendered_fingerprint(current) == rendered_fingerprint(body):
                return None
        return key

    def note_own_write(self, kind: str, body: Mapping[str, Any]) -> None:
        """The answer to our own write of a ``kind`` object (observed under that name) is in the cache: its
        watch event will repeat it, and :meth:`own_echo` lets the stream skip that event undecoded. Writes
        whose events never come (the event arrived first, or the watch restarted) age out."""
        meta = body.get("metadata") or {}
        version, uid = meta.get("resourceVersion"), meta.get("uid")
        if not version or not uid:
            return
        pending = self._own_writes.setdefault(kind, {})
        pending[version] = f'"uid":"{uid}"'.encode()
        if len(pending) > OWN_WRITES_KEPT:
            del pending[next(iter(pending))]

    def own_echo(self, kind: str, version: str, line: bytes) -> bool:
        """Whether the watch event ``line`` of ``kind`` at ``version`` repeats an answer already cached: the
        version of one of our writes and that object's uid (each answer matches once)."""
        pending = self._own_writes.get(kind)
        if not pending:
            return False
        uid = pending.get(version)
        if uid is None or uid not in line:
            return False
        del pending[version]
        return True

    def index_model(self, key: WorkloadKey, raw: Mapping[str, Any] | None) -> set[str]:
        """Index workloads by (namespace, model); returns the peers (same namespace and model) whose
        upstreams changed because this copy's model or tier changed."""
        old = self._model_of.pop(key, None)
        new: tuple[str, str | None] | None = None
        if raw is not None:
            model = ((raw.get("spec") or {}).get("model") or {}).get("name")
            tier = ((raw.get("status") or {}).get("placement") or {}).get("tier")
            if isinstance(model, str):
                new = (model, tier)
                self._model_of[key] = new
                self._by_model.setdefault((key.namespace, model), set()).add(key.name)
        if old is not None and (new is None or new[0] != old[0]):
            names = self._by_model.get((key.namespace, old[0]))
            if names is not None:
                names.discard(key.name)
                if not names:
                    del self._by_model[(key.namespace, old[0])]
        peers: set[str] = set()
        if old != new:
            for model_tier in (old, new):
                if model_tier is not None:
                    peers |= self._by_model.get((key.namespace, model_tier[0]), set()) - {key.name}
        return peers

    def same_model(self, namespace: str, model: str) -> list[str]:
        return sorted(self._by_model.get((namespace, model), ()))

    # ------------------------------------------------------------------ lists (a watcher's start, a 410) --
    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        """While a watcher lists a kind, deletions are remembered (tombstones), so that :meth:`relist`
        does not bring back an object the operator deleted (its own writes go into the cache at once)
        while the list was read."""
        self._lists += 1
        try:
            yield
        finally:
            self._lists -= 1
            if not self._lists:
                self._tombstones.clear()

    def _tombstone(self, kind: str, key: Any, body: Mapping[str, Any]) -> None:
        if self._lists:
            self._tombstones[(kind, key)] = resource_version(body)

    def _listed(
        self, kind: str, namespace: str | None
    ) -> tuple[Callable[[Mapping[str, Any]], Any], dict[Any, Mapping[str, Any]]]:
        """How a listed object of ``kind`` is keyed, and the cached objects a list of it (in
        ``namespace``, or everywhere) would hold."""

        def in_ns(ns: str | None) -> bool:
            return namespace is None or ns == namespace

        if kind in ("Node", "EdgeNodePool"):
            return (lambda o: o["metadata"]["name"]), dict(self.nodes if kind == "Node" else self.pools)
        if kind == "Pod":
            return (lambda o: (o["metadata"].get("namespace"), o["metadata"]["name"])), {
                k: v for k, v in self.pods.items() if in_ns(k[0])
            }
        if kind == "EdgeWorkload":
            return _workload_key, {k: v for k, v in self.workloads.items() if in_ns(k.namespace)}
        if kind == EdgeWorkloadSet.KIND:
            return _set_key, {k: v for k, v in self.workload_sets.items() if in_ns(k.namespace)}
        return (lambda o: (o["metadata"].get("namespace") or "default", o["metadata"]["name"])), {
            (owner.namespace, name): obj
            for owner, objs in self.rendered.items()
            if in_ns(owner.namespace)
            for (obj_kind, name), obj in objs.items()
            if obj_kind == kind
        }

    def relist(
        self, kind: str, namespace: str | None, items: list[dict[str, Any]], snapshot: int, observe: Observe
    ) -> None:
        """Make the cache of ``kind`` (in ``namespace``, or everywhere) what a list read at resourceVersion
        ``snapshot`` holds; every object, and every deletion missed, goes through ``observe``.

        The operator's own writes reach the cache before their watch events, so the list can be older
        than what is cached: an object cached with a newer resourceVersion than the list was added after
        that snapshot and is kept (the real control plane once showed an EdgeNodePool created during the
        operator's start-up dropped this way, and with it a set's site); a listed object deleted while
        the list was read (see :meth:`listing`) is not brought back. What changed after the snapshot
        arrives through the watch that resumes from it."""
        observed = RENDERED if kind in ("Deployment", "StatefulSet") else kind
        key_of, cached = self._listed(kind, namespace)
        listed = {key_of(o) for o in items}
        for key, obj in cached.items():
            if key not in listed and (snapshot == 0 or resource_version(obj) <= snapshot):
                observe(observed, "DELETED", obj)
        for obj in items:
            deleted_at = self._tombstones.get((kind, key_of(obj)))
            if deleted_at is None or resource_version(obj) > deleted_at:
                observe(observed, None, obj)

    # ------------------------------------------------------------------ parsed views --
    def pool_model(self, raw: Mapping[str, Any]) -> tuple[EdgeNodePool | None, str | None]:
        """The parsed pool (or None and the validation error), parsed once per spec."""
        name = raw["metadata"]["name"]
        meta = raw["metadata"]  # labels too: EdgeWorkloadSets select pools by them
        spec_key = json.dumps(
            [raw.get("spec"), meta.get("uid"), meta.get("labels")], sort_keys=True, default=str
        )
        cached = self._pool_models.get(name)
        if cached is not None and cached[0] == spec_key:
            return cached[1], cached[2]
        try:
            model: EdgeNodePool | None = EdgeNodePool.model_validate(
                {k: raw[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in raw}
            )
            error = None
        except ValidationError as exc:
            model, error = None, "; ".join(format_validation_error(exc))
        self._pool_models[name] = (spec_key, model, error)
        return model, error

    def spec(self, raw: Mapping[str, Any]) -> EdgeWorkloadSpec | None:
        """The parsed spec of a cached workload (None: invalid), validated once per (uid, generation)."""
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
            if len(self._specs) > 2 * len(self.workloads) + 100:  # drop entries of old generations
                live = {
                    (r["metadata"].get("uid"), r["metadata"].get("generation"))
                    for r in self.workloads.values()
                }
                self._specs = {k: v for k, v in self._specs.items() if k[:2] in live or k == key}
        return self._specs[key]

    def _requested_by_node(self) -> dict[str, Resources]:
        out: dict[str, Resources] = {}
        for (kind, _), print_ in self._fingerprints.items():
            if kind == "Pod" and isinstance(print_, tuple):
                node, requested = print_
                out[node] = out.get(node, Resources()) + requested
        return out

    @property
    def stale(self) -> bool:
        return self._snapshot is None or self.built != self.version

    def snapshot(self) -> ClusterSnapshot:
        """The placement view of the cluster, rebuilt only when something it reads changed."""
        if self._snapshot is None or self.built != self.version:
            version = self.version
            pools = [m for raw in self.pools.values() if (m := self.pool_model(raw)[0]) is not None]
            self._snapshot = build_snapshot(pools, list(self.nodes.values()), self._requested_by_node())
            self.built = version
        return self._snapshot

    @property
    def current_snapshot(self) -> ClusterSnapshot | None:
        """The last snapshot built (possibly stale), without rebuilding."""
        return self._snapshot
