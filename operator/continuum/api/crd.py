"""Generate the CustomResourceDefinitions from the pydantic models.

Pydantic emits JSON Schema (2020-12); Kubernetes wants a *structural* OpenAPI v3.0 schema: no ``$ref``,
every node typed, no ``anyOf`` with null, boolean ``exclusiveMinimum``, no ``propertyNames``,
``additionalProperties`` only for maps. :func:`structural_schema` does that conversion, and
:func:`render_crds` wraps it into CRDs with the status subresource, printer columns, short names and
categories. ``crds/`` and the chart's copy are its output; a test fails when they drift.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from continuum import __version__
from continuum.api.models import GROUP, VERSION, EdgeNodePool, EdgeWorkload
from continuum.api.workloadset import EdgeWorkloadSet

ResourceModel = type[EdgeNodePool] | type[EdgeWorkload] | type[EdgeWorkloadSet]

# JSON Schema keywords that Kubernetes' JSONSchemaProps accepts (in OpenAPI v3.0 form).
_ALLOWED = {
    "type",
    "format",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "anyOf",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _convert(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    # Optional[X] is anyOf [X, null]: the field may be omitted, so the schema is X's.
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            node = {**options[0], **{k: v for k, v in outer.items() if k in ("description",)}}
        else:
            node = {**outer, "anyOf": options}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    # A map keyed by an enum (e.g. inferenceMs by tier) becomes an object with those properties.
    names = node.pop("propertyNames", None)
    if names and "enum" in names and isinstance(node.get("additionalProperties"), dict):
        value_schema = node.pop("additionalProperties")
        node["properties"] = {key: copy.deepcopy(value_schema) for key in names["enum"]}
    if node.get("additionalProperties") is False or node.get("additionalProperties") is True:
        node.pop("additionalProperties")
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "properties" in node or "additionalProperties" in node:
        node["type"] = "object"
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _ALLOWED:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value)
        elif key == "anyOf":
            out[key] = [
                {k: v for k, v in _convert(o).items() if k in ("type", "pattern", "format")} for o in value
            ]
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def structural_schema(model: ResourceModel) -> dict[str, Any]:
    """The CRD's openAPIV3Schema for a resource model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    resolved = _resolve(raw, defs)
    schema = _convert(resolved)
    props = schema["properties"]
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"type": "object"}
    schema["required"] = ["spec"]
    schema["description"] = (model.__doc__ or model.__name__).strip().splitlines()[0]
    return schema


_PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "EdgeNodePool": [
        {"name": "Tier", "type": "string", "jsonPath": ".spec.tier"},
        {"name": "Site", "type": "string", "jsonPath": ".spec.site"},
        {"name": "Region", "type": "string", "jsonPath": ".spec.region"},
        {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodeCount"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyNodes"},
        {"name": "Workloads", "type": "integer", "jsonPath": ".status.workloads", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "EdgeWorkload": [
        {"name": "Tier", "type": "string", "jsonPath": ".status.placement.tier"},
        {"name": "Pool", "type": "string", "jsonPath": ".status.placement.pool"},
        {
            "name": "Latency",
            "type": "number",
            "description": "Estimated latency in ms (RTT from the source + inference)",
            "jsonPath": ".status.placement.estimatedLatencyMs",
        },
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Drift", "type": "number", "jsonPath": ".status.drift.score"},
        {"name": "Cost/h", "type": "number", "jsonPath": ".status.placement.hourlyCost", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "EdgeWorkloadSet": [
        {"name": "Sites", "type": "integer", "jsonPath": ".status.sites"},
        {"name": "Placed", "type": "integer", "jsonPath": ".status.placed"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.ready"},
        {"name": "Version", "type": "string", "jsonPath": ".spec.template.model.version"},
        {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase"},
        {"name": "Stable", "type": "string", "jsonPath": ".status.rollout.stable.version"},
        {"name": "Wave", "type": "string", "jsonPath": ".status.rollout.waveName", "priority": 1},
        {"name": "Step", "type": "string", "jsonPath": ".status.rollout.stepKind", "priority": 1},
        {"name": "Unschedulable", "type": "integer", "jsonPath": ".status.unschedulable", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}
_SHORT_NAMES = {"EdgeNodePool": ["enp"], "EdgeWorkload": ["ew"], "EdgeWorkloadSet": ["ews"]}
_SCOPE = {"EdgeNodePool": "Cluster", "EdgeWorkload": "Namespaced", "EdgeWorkloadSet": "Namespaced"}
MODELS: tuple[ResourceModel, ...] = (EdgeNodePool, EdgeWorkload, EdgeWorkloadSet)


def render_crd(model: ResourceModel) -> dict[str, Any]:
    kind = model.KIND
    plural = model.PLURAL
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "continuum", "app.kubernetes.io/version": __version__},
        },
        "spec": {
            "group": GROUP,
            "scope": _SCOPE[kind],
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": _SHORT_NAMES[kind],
                "categories": ["continuum"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _PRINTER_COLUMNS[kind],
                    "schema": {"openAPIV3Schema": structural_schema(model)},
                }
            ],
        },
    }


def render_crds() -> dict[str, str]:
    """File name → YAML text of every CRD, exactly as written to ``crds/``."""
    header = "# Generated from continuum.api.models by `continuum crds` (make crds). Do not edit.\n"
    return {
        f"{model.PLURAL}.{GROUP}.yaml": header + yaml.safe_dump(render_crd(model), sort_keys=False, width=110)
        for model in MODELS
    }


CHART_CRD_DIR = Path("files") / "crds"


def write_crds(out_dir: Path, chart_dir: Path | None = None) -> list[Path]:
    """Write the CRDs to ``out_dir`` (and the chart's copy); return the paths written."""
    written = []
    targets = [out_dir] + ([chart_dir / CHART_CRD_DIR] if chart_dir is not None else [])
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in render_crds().items():
            path = target / name
            path.write_text(text)
            written.append(path)
    return written
