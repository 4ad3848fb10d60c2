"""Node sync, pure: which labels and taints each member node should carry, and the patch that gets it
there touching only what the operator set (recorded in the node annotation ``continuum.dev/managed``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from continuum.api.models import LABEL_POOL, LABEL_SITE, LABEL_TIER
from continuum.placement.snapshot import ClusterSnapshot

MANAGED_ANNOTATION = "continuum.dev/managed"


@dataclass(frozen=True)
class Membership:
    """What a member node of ``pool`` should carry."""

    pool: str
    labels: dict[str, str]
    taints: list[dict[str, str]]


def memberships(snapshot: ClusterSnapshot) -> dict[str, Membership]:
    """Node name → its pool's labels and taints, for every node that belongs to exactly one pool."""
    out: dict[str, Membership] = {}
    for view in snapshot.pools:
        spec = view.pool.spec
        labels = {LABEL_POOL: view.name, LABEL_TIER: spec.tier.value, LABEL_SITE: spec.site}
        taints = [t.model_dump(mode="json") for t in spec.effective_taints]
        for node in view.nodes:
            out[node.name] = Membership(view.name, labels, taints)
    return out


def _managed(meta: Mapping[str, Any]) -> dict[str, Any]:
    try:
        managed = json.loads((meta.get("annotations") or {}).get(MANAGED_ANNOTATION) or "{}")
    except ValueError:
        return {}
    return managed if isinstance(managed, dict) else {}


def node_patch(node: Mapping[str, Any], want: Membership | None) -> dict[str, Any] | None:
    """The merge patch that makes ``node`` carry ``want`` (None: no pool, so remove what we set), or
    None when nothing needs to change. Labels and taints set by others are never touched."""
    meta = node.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    taints = list((node.get("spec") or {}).get("taints") or [])
    managed = _managed(meta)
    owned_labels = set(managed.get("labels") or [])
    owned_taints = {
        (t.get("key"), t.get("effect")) for t in managed.get("taints") or [] if isinstance(t, dict)
    }
    foreign_taints = [t for t in taints if (t.get("key"), t.get("effect")) not in owned_taints]
    if want is None:
        if not managed:
            return None
        return {
            "metadata": {
                "labels": {k: None for k in owned_labels if k in labels},
                "annotations": {MANAGED_ANNOTATION: None},
            },
            "spec": {"taints": foreign_taints or None},
        }
    keys = {(t["key"], t["effect"]) for t in want.taints}
    new_taints = [t for t in foreign_taints if (t.get("key"), t.get("effect")) not in keys] + want.taints
    record = json.dumps(
        {
            "pool": want.pool,
            "labels": sorted(want.labels),
            "taints": [{"key": t["key"], "effect": t["effect"]} for t in want.taints],
        },
        sort_keys=True,
    )
    stale = {k: None for k in owned_labels - set(want.labels) if k in labels}
    if (
        all(labels.get(k) == v for k, v in want.labels.items())
        and not stale
        and new_taints == taints
        and (meta.get("annotations") or {}).get(MANAGED_ANNOTATION) == record
    ):
        return None
    return {
        "metadata": {"labels": {**stale, **want.labels}, "annotations": {MANAGED_ANNOTATION: record}},
        "spec": {"taints": new_taints or None},
    }
