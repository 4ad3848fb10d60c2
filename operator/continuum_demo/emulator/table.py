"""Server-side printing (``meta.k8s.io/v1`` ``Table``) for the custom resources, as kube-apiserver does.

kubectl asks every ``get`` with ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...``; the
apiserver answers with a ``Table`` whose columns are ``Name`` plus the CRD's
``additionalPrinterColumns`` (each a simple JSONPath over the object; ``date`` columns rendered as an
age, missing values as ``null``, which kubectl prints blank). The columns are read from the
generated CRDs (:func:`continuum.api.crd.render_crd`), so ``kubectl get ew -A`` shows the same
TIER/POOL/LATENCY/PHASE columns on the emulator as on a real cluster. Resources without printer
columns are served as plain JSON (kubectl then prints NAME and AGE itself).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any

from continuum.api.crd import MODELS, render_crd

TABLE_API_VERSION = "meta.k8s.io/v1"
_FILTER = re.compile(r"^\[\?\(@\.([A-Za-z0-9_]+)\s*==\s*[\"']([^\"']*)[\"']\)\]$")
_TOKEN = re.compile(r"\.([A-Za-z0-9_-]+)|(\[\?\([^]]*\)\])|\[(\d+)\]")


def wants_table(accept: str | None) -> bool:
    """Whether the client asked for a ``meta.k8s.io/v1`` Table (kubectl's first choice)."""
    if not accept:
        return False
    for media in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[-1].strip() for p in media.split(";")[1:]}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") == "v1":
            return True
    return False


def printer_columns() -> dict[str, list[dict[str, Any]]]:
    """Resource id (``group/version/plural``) → the CRD's additionalPrinterColumns."""
    out = {}
    for model in MODELS:
        crd = render_crd(model)["spec"]
        version = crd["versions"][0]
        out[f"{crd['group']}/{version['name']}/{crd['names']['plural']}"] = version[
            "additionalPrinterColumns"
        ]
    return out


def evaluate(obj: Any, path: str) -> Any:
    """The first value a simple JSONPath (``.a.b``, ``.a[0]``, ``.a[?(@.k=="v")].b``) selects, or None."""
    current: list[Any] = [obj]
    pos = 0
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {pos}")
        pos = match.end()
        field, filt, index = match.groups()
        nxt: list[Any] = []
        for item in current:
            if field is not None and isinstance(item, Mapping) and field in item:
                nxt.append(item[field])
            elif index is not None and isinstance(item, list) and int(index) < len(item):
                nxt.append(item[int(index)])
            elif filt is not None and isinstance(item, list):
                fm = _FILTER.match(filt)
                if fm is None:
                    raise ValueError(f"unsupported JSONPath filter {filt!r}")
                nxt.extend(e for e in item if isinstance(e, Mapping) and str(e.get(fm[1])) == fm[2])
        current = nxt
    return current[0] if current else None


def human_duration(seconds: float) -> str:
    """kubectl's age format (``45s``, ``12m``, ``3h5m``, ``4d``), as apimachinery's HumanDuration."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years, days = hours // 24 // 365, hours // 24 % 365
    if hours < 24 * 365 * 8 and days:
        return f"{years}y{days}d"
    return f"{years}y"


def _cell(column: Mapping[str, Any], obj: Mapping[str, Any], now: datetime.datetime) -> Any:
    value = evaluate(obj, column["jsonPath"])
    if value is None:
        return None
    kind = column.get("type")
    if kind == "date" and isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return human_duration((now - when).total_seconds())
    if kind == "string":
        return value if isinstance(value, str) else str(value)
    return value


def table(
    columns: list[dict[str, Any]],
    objects: Iterable[Mapping[str, Any]],
    resource_version: str,
    include_object: str = "PartialObjectMetadata",
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of ``objects``: ``Name`` then the printer columns."""
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        }
    ] + [
        {
            "name": c["name"],
            "type": c["type"],
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    now = datetime.datetime.now(datetime.UTC)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"], *(_cell(c, obj, now) for c in columns)]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": TABLE_API_VERSION,
                "metadata": obj.get("metadata") or {},
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": TABLE_API_VERSION,
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
