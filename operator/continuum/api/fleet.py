"""The pure expansion of an :class:`EdgeWorkloadSet`: set + pools → one child EdgeWorkload per site.

The operator (:mod:`continuum.controller.workloadsets`) and ``continuum plan`` call the same
:func:`expand`, so what plan shows is what the operator creates. No Kubernetes here.

* :func:`selected_sites` — ``spec.sites.names`` ∪ the ``spec.site`` of every pool ``poolSelector`` matches.
* :func:`merge_patch` — RFC 7386 JSON merge patch (what ``spec.overrides[].patch`` is).
* :func:`expand` — per site: the template as written, ``source.site`` filled, the overrides naming the site
  merged in order, validated as an EdgeWorkload spec; an invalid result names the field it came from
  (``spec.overrides[1].patch.requirements.latencyBudgetMs`` or ``spec.template....``).
* :func:`child_object` — the child EdgeWorkload as the operator writes it (labels, owner reference with
  ``controller: true``, the applied-spec annotation).
* :func:`three_way_patch` — what to merge-patch into a child's spec: the fields the set renders that
  differ, and the fields it rendered last time and no longer does (nulled); fields others set are
  never touched.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from continuum.api.loader import format_validation_error
from continuum.api.models import EdgeNodePool, EdgeWorkload, EdgeWorkloadSpec
from continuum.api.workloadset import (
    ANNOTATION_APPLIED,
    LABEL_SET,
    LABEL_SET_SITE,
    EdgeWorkloadSet,
    SiteSelection,
)

MAX_NAME = 63  # a child's name is also a label value (continuum.dev/workload) and a Service name


def selected_sites(selection: SiteSelection, pools: Iterable[EdgeNodePool]) -> list[str]:
    """The selected sites, sorted: the names given and the sites of the pools the selector matches."""
    sites = set(selection.names)
    if selection.pool_selector is not None:
        sites |= {p.spec.site for p in pools if selection.pool_selector.matches(dict(p.metadata.labels))}
    return sorted(sites)


def child_name(set_name: str, site: str) -> str:
    """``<set>-<site>``; beyond 63 characters, a prefix of it and a hash of the whole (still stable)."""
    name = f"{set_name}-{site}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-.')}-{digest}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: a mapping patch merges key by key (null removes the key); anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _has_path(patch: Any, path: list[str]) -> bool:
    """Whether the patch sets ``path`` or one of its parents (it is where a value at ``path`` came from)."""
    node = patch
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, Mapping):
            return True
    return True


@dataclass(frozen=True)
class Child:
    site: str
    name: str
    spec: dict[str, Any]  # as written into the child (camelCase, only what the template and patches set)
    overrides: tuple[int, ...] = ()  # indexes of spec.overrides applied to this site
    error: str | None = None  # the rendered spec is invalid: the child is neither created nor changed


@dataclass(frozen=True)
class Expansion:
    sites: list[str]
    children: list[Child]
    unmatched_overrides: list[str] = field(default_factory=list)  # override sites not selected

    @property
    def errors(self) -> list[str]:
        return [f"site {c.site}: {c.error}" for c in self.children if c.error]


def template_dict(ews: EdgeWorkloadSet) -> dict[str, Any]:
    """The template as the user wrote it (no defaults filled in: the child's spec stays as small)."""
    return ews.spec.template.model_dump(mode="json", by_alias=True, exclude_unset=True)


def expand(ews: EdgeWorkloadSet, pools: Iterable[EdgeNodePool]) -> Expansion:
    """One child per selected site, sorted by site."""
    sites = selected_sites(ews.spec.sites, pools)
    template = template_dict(ews)
    children = []
    for site in sites:
        spec: Any = {**template, "source": {"site": site}}
        applied = []
        for index, override in enumerate(ews.spec.overrides):
            if site in override.sites:
                spec = merge_patch(spec, override.patch)
                applied.append(index)
        error = None
        try:
            EdgeWorkloadSpec.model_validate(spec)
        except ValidationError as exc:
            error = "; ".join(_locate(exc, ews, applied))
        children.append(Child(site, child_name(ews.name, site), spec, tuple(applied), error))
    named = {s for o in ews.spec.overrides for s in o.sites}
    return Expansion(sites, children, sorted(named - set(sites)))


def _locate(exc: ValidationError, ews: EdgeWorkloadSet, applied: list[int]) -> list[str]:
    """Each error named by the field it came from: the last override setting it, else the template."""
    lines = []
    for err, line in zip(exc.errors(include_url=False), format_validation_error(exc), strict=True):
        path = [str(p) for p in err["loc"]]
        where = "spec.template."
        for index in reversed(applied):
            if _has_path(ews.spec.overrides[index].patch, path):
                where = f"spec.overrides[{index}].patch."
                break
        lines.append(where + line)
    return lines


def owner_reference(ews: EdgeWorkloadSet) -> dict[str, Any]:
    return {
        "apiVersion": ews.api_version,
        "kind": ews.kind,
        "name": ews.name,
        "uid": ews.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_object(ews: EdgeWorkloadSet, child: Child) -> dict[str, Any]:
    """The child EdgeWorkload as created (without an owner reference when the set has no uid: plan)."""
    meta: dict[str, Any] = {
        "name": child.name,
        "namespace": ews.namespace,
        "labels": {LABEL_SET: ews.name, LABEL_SET_SITE: child.site},
        "annotations": {ANNOTATION_APPLIED: json.dumps(child.spec, sort_keys=True, separators=(",", ":"))},
    }
    if ews.metadata.uid:
        meta["ownerReferences"] = [owner_reference(ews)]
    return {"apiVersion": ews.api_version, "kind": EdgeWorkload.KIND, "metadata": meta, "spec": child.spec}


def child_workloads(
    ews: EdgeWorkloadSet, pools: Iterable[EdgeNodePool]
) -> tuple[list[EdgeWorkload], list[str]]:
    """The valid children as models (what ``continuum plan`` places) and the errors of the others."""
    expansion = expand(ews, pools)
    valid = [EdgeWorkload.model_validate(child_object(ews, c)) for c in expansion.children if c.error is None]
    return valid, expansion.errors


def three_way_patch(
    last: Mapping[str, Any], desired: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, Any]:
    """A merge patch taking ``current`` to ``desired`` on the fields the set owns: those in ``desired``
    (set where they differ) and those in ``last`` (what it rendered before) but not in ``desired``
    (removed). Fields only in ``current`` belong to someone else and are left alone. Lists are atomic."""
    patch: dict[str, Any] = {}
    for key in last:
        if key not in desired and key in current:
            patch[key] = None
    for key, value in desired.items():
        now = current.get(key)
        if isinstance(value, Mapping) and isinstance(now, Mapping):
            before = last.get(key)
            sub = three_way_patch(before if isinstance(before, Mapping) else {}, value, now)
            if sub:
                patch[key] = sub
        elif now != value:
            patch[key] = copy.deepcopy(value)
    return patch


def applied_spec(child: Mapping[str, Any]) -> dict[str, Any]:
    """What the set last rendered into this child (its annotation), or {} if unreadable."""
    raw = ((child.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_APPLIED)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
