"""Whether applying a rendered manifest would change anything (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from continuum.api.models import LABEL_POOL


def digest(obj: Mapping[str, Any]) -> str:
    """Identity of a manifest as applied (kept in memory only); a Secret's data is generated once and never
    compared."""
    shown = {k: v for k, v in obj.items() if not (obj.get("kind") == "Secret" and k == "data")}
    return hashlib.sha256(
        orjson.dumps(shown, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    ).hexdigest()


def unchanged(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether applying ``desired`` (a merge patch of labels, annotations, owners and spec) would change
    nothing: every field we set already has our value."""
    return contains(existing.get("spec"), desired.get("spec")) and contains(
        {k: (existing.get("metadata") or {}).get(k) for k in ("labels", "annotations", "ownerReferences")},
        {k: desired["metadata"].get(k) for k in ("labels", "annotations", "ownerReferences")},
    )


def contains(have: Any, want: Any) -> bool:
    if have is None and want in ([], {}):
        return (
            True  # the apiserver omits empty lists and maps (omitempty): `tolerations: []` reads back absent
        )
    if isinstance(want, dict):
        return isinstance(have, dict) and all(contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(contains, have, want))
    return bool(have == want) or (want is None and have is None)


def rendered_pool(obj: Mapping[str, Any]) -> str | None:
    """The pool a rendered Deployment/StatefulSet's pods are pinned to (its nodeSelector)."""
    template = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return (template.get("nodeSelector") or {}).get(LABEL_POOL)
