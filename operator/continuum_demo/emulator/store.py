"""An apiserver-like object store: the state behind :class:`~continuum_demo.emulator.server.ApiEmulator`.

Each behaviour reproduces what kube-apiserver does and kmock 0.8's emulator does not
(see docs/emulator.md, measured in ../shared/notes/kmock-emulator.md):

* server-set metadata: ``uid``, ``resourceVersion`` (one cluster-wide counter), ``generation``
  (1 on create, +1 on every change outside ``metadata`` and ``status``), ``creationTimestamp``;
* the status subresource: a write to ``/status`` changes only ``status``, a write to the object
  never changes ``status`` (for resources that declare the subresource);
* JSON merge patch (RFC 7386: ``null`` deletes) and JSON patch (RFC 6902) with ``test`` failures
  answered 422 Invalid, as kopf expects; 409 Conflict on a stale ``metadata.resourceVersion``;
* deletion with finalizers (``deletionTimestamp`` first, removal when the list empties) and
  background garbage collection of objects whose ``ownerReferences`` point at a deleted uid;
* watches that resume from a ``resourceVersion`` (no replay), with no event lost between the
  initial snapshot and the subscription, and label/field selectors on lists and watches.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import re
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

Key = tuple[str, str | None, str]  # (resource "group/version/plural", namespace or None, name)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_SCALARS = frozenset({str, int, float, bool, type(None)})


def clone(obj: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars), 2–3× faster than ``copy.deepcopy``
    (it keeps no memo: JSON has no shared references); anything else goes through ``copy.deepcopy``."""
    kind = type(obj)
    if kind is dict:
        return {k: clone(v) for k, v in obj.items()}
    if kind is list:
        return [clone(v) for v in obj]
    if kind in _SCALARS:
        return obj
    return copy.deepcopy(obj)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- selectors ------------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """The labelSelector query syntax: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``."""
    for term in _split_selector(selector):
        term = term.strip()
        if "!=" in term:
            key, _, value = term.partition("!=")
            if labels.get(key.strip()) == value.strip():
                return False
            continue
        if "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
            continue
        match = _SET_RE.match(term)
        if match is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        negate, key, op, values = match.groups()
        if op is None:
            if (key in labels) == bool(negate):
                return False
            continue
        options = {v.strip() for v in values.split(",") if v.strip()}
        if op == "in" and labels.get(key) not in options:
            return False
        if op == "notin" and key in labels and labels[key] in options:
            return False
    return True


def _field(obj: dict[str, Any], path: str) -> Any:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def field_selector_matches(selector: str, obj: dict[str, Any]) -> bool:
    for term in _split_selector(selector):
        if "!=" in term:
            key, _, value = term.partition("!=")
            if str(_field(obj, key.strip()) or "") == value.strip():
                return False
        else:
            key, _, value = term.replace("==", "=").partition("=")
            if str(_field(obj, key.strip()) or "") != value.strip():
                return False
    return True


# --- the store ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Watch:
    resource: str
    namespace: str | None
    name: str | None
    label_selector: str | None
    field_selector: str | None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def wants(self, resource: str, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if resource != self.resource:
            return False
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        if self.label_selector and not label_selector_matches(self.label_selector, meta.get("labels") or {}):
            return False
        return not (self.field_selector and not field_selector_matches(self.field_selector, obj))


class Store:
    """All objects, a bounded event log for resumable watches, and the live watches."""

    def __init__(self, status_resources: set[str], history: int = 100_000) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.status_resources = status_resources
        self.events: deque[tuple[int, str, str, dict[str, Any]]] = deque(maxlen=history)
        self.watches: set[Watch] = set()
        self._rv = itertools.count(1)
        self.last_rv = 0

    # -- reading --
    def get(self, key: Key) -> dict[str, Any] | None:
        obj = self.objects.get(key)
        return clone(obj) if obj is not None else None

    def select(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        probe = Watch(resource, namespace, None, label_selector, field_selector)
        return [
            clone(obj)
            for (res, _, _), obj in sorted(self.objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
            if res == resource and probe.wants(res, obj)
        ]

    def events_since(self, rv: int, watch: Watch) -> Iterator[dict[str, Any]]:
        if self.events and rv < self.events[0][0] - 1:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.events[0][0]})")
        for event_rv, resource, kind, obj in self.events:
            if event_rv > rv and watch.wants(resource, obj):
                yield {"type": kind, "object": clone(obj)}

    # -- writing --
    def _emit(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        snapshot = clone(obj)  # the history and the watches only read it (they serialize it)
        self.events.append((rv, resource, kind, snapshot))
        for watch in list(self.watches):
            if watch.wants(resource, obj):
                watch.queue.put_nowait({"type": kind, "object": snapshot})

    def _stamp(self, obj: dict[str, Any]) -> None:
        self.last_rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(self.last_rv)

    def create(
        self, resource: str, namespace: str | None, obj: dict[str, Any], kind: str | None = None
    ) -> dict[str, Any]:
        obj = clone(obj)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["name"] = name
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if namespace is not None:
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the object does not match the namespace of the request",
                )
            meta["namespace"] = namespace
        key = (resource, namespace, name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f"{resource} {name!r} already exists")
        if kind and "kind" not in obj:
            obj["kind"] = kind
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["creationTimestamp"] = _now()
        meta.pop("deletionTimestamp", None)
        meta.pop("resourceVersion", None)
        self._stamp(obj)
        self.objects[key] = obj
        self._emit(resource, "ADDED", obj)
        return clone(obj)

    def patch(
        self, key: Key, patch: Any, content_type: str, subresource: str | None = None
    ) -> dict[str, Any]:
        current = self.objects.get(key)
        if current is None:
            raise ApiError(404, "NotFound", f"{key[0]} {key[2]!r} not found")
        if "json-patch" in content_type:
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                updated = jsonpatch.apply_patch(clone(current), patch)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise ApiError(
                    422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
                ) from None
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid", str(exc)) from None
        else:
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be an object")
            wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and str(wanted_rv) != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                )
            updated = merge_patch(current, patch)
        return self._store_update(key, current, updated, subresource)

    def _store_update(
        self, key: Key, current: dict[str, Any], updated: dict[str, Any], subresource: str | None
    ) -> dict[str, Any]:
        resource = key[0]
        if resource in self.status_resources:
            if subresource == "status":
                updated = {**clone(current), "status": updated.get("status")}
                if updated["status"] is None:
                    updated.pop("status")
            else:
                updated.pop("status", None)
                if "status" in current:
                    updated["status"] = clone(current["status"])
        # Immutable and server-owned metadata.
        meta = updated.setdefault("metadata", {})
        for owned in ("uid", "creationTimestamp", "name", "namespace", "generation"):
            if owned in current["metadata"]:
                meta[owned] = current["metadata"][owned]
            else:
                meta.pop(owned, None)
        if "deletionTimestamp" in current["metadata"]:
            meta["deletionTimestamp"] = current["metadata"]["deletionTimestamp"]

        def body(obj: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}

        if body(updated) != body(current):
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        if updated == current:
            return clone(current)  # a no-op write does not bump resourceVersion
        self._stamp(updated)
        self.objects[key] = updated
        self._emit(resource, "MODIFIED", updated)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key)
        return clone(updated)

    def delete(self, key: Key) -> dict[str, Any]:
        current = self.objects.get(key)
        if current is None:
            raise ApiError(404, "NotFound", f"{key[0]} {key[2]!r} not found")
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                updated = clone(current)
                updated["metadata"]["deletionTimestamp"] = _now()
                self._stamp(updated)
                self.objects[key] = updated
                self._emit(key[0], "MODIFIED", updated)
            return clone(self.objects[key])
        return self._remove(key)

    def _remove(self, key: Key) -> dict[str, Any]:
        obj = self.objects.pop(key)
        self._stamp(obj)
        self._emit(key[0], "DELETED", obj)
        self._collect_garbage(obj["metadata"]["uid"])
        return clone(obj)

    def _collect_garbage(self, owner_uid: str) -> None:
        """Background cascading deletion: dependents whose every owner is gone are deleted."""
        live_uids = {o["metadata"]["uid"] for o in self.objects.values()}
        for key, obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            orphaned = refs and not any(r.get("uid") in live_uids for r in refs)
            if orphaned and any(r.get("uid") == owner_uid for r in refs) and key in self.objects:
                self.delete(key)
