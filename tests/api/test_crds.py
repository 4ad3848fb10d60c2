"""The CRDs are generated from the models: no drift, structural, valid, and they accept what the models accept."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from continuum.api.crd import CHART_CRD_DIR, render_crd, render_crds, structural_schema
from continuum.api.loader import load_manifests
from continuum.api.models import EdgeNodePool, EdgeWorkload

from tests.conftest import EXAMPLES, ROOT

KUBE_VERSION = kubernetes_validate.latest_version()


@pytest.mark.parametrize("folder", [ROOT / "crds", ROOT / "charts" / "continuum" / CHART_CRD_DIR])
def test_crds_on_disk_match_the_models(folder):
    """Fails when crds/ or the chart's copy drift from the pydantic models: run `make crds`."""
    for name, text in render_crds().items():
        path = folder / name
        assert path.exists(), f"{path} missing: run `make crds`"
        assert path.read_text() == text, f"{path} drifted from continuum.api.models: run `make crds`"


def _walk(node: Any, path: str = "$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("properties",):
                for name, sub in value.items():
                    yield from _walk(sub, f"{path}.{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                yield from _walk(value, f"{path}[]")


@pytest.mark.parametrize("model", [EdgeNodePool, EdgeWorkload])
def test_schema_is_structural(model):
    schema = structural_schema(model)
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "$defs", "propertyNames", "const:", "title:"):
        assert forbidden not in text
    for path, node in _walk(schema):
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert isinstance(node[key], bool), path
        for sub in node.get("anyOf", []):
            assert set(sub) <= {"type", "pattern", "format"}, path


@pytest.mark.parametrize("model", [EdgeNodePool, EdgeWorkload])
def test_crd_validates_against_the_kubernetes_schema(model):
    kubernetes_validate.validate(render_crd(model), KUBE_VERSION, strict=True)


def test_crd_metadata():
    crd = render_crd(EdgeWorkload)
    spec = crd["spec"]
    assert spec["scope"] == "Namespaced" and spec["names"]["shortNames"] == ["ew"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:4] == ["Tier", "Pool", "Latency", "Phase"] and "Age" in columns
    pools = render_crd(EdgeNodePool)["spec"]
    assert pools["scope"] == "Cluster" and pools["names"]["shortNames"] == ["enp"]


def _validator(model) -> jsonschema.Draft4Validator:
    # OpenAPI v3.0 keeps exclusiveMinimum boolean, as JSON Schema draft 4 does.
    return jsonschema.Draft4Validator(structural_schema(model))


def test_examples_are_valid_under_the_crd_schema():
    manifests = load_manifests([EXAMPLES / "cluster", EXAMPLES / "workloads"])
    assert manifests.pools and manifests.workloads
    for path in sorted((EXAMPLES / "cluster").glob("*.yaml")) + sorted(
        (EXAMPLES / "workloads").glob("*.yaml")
    ):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("EdgeNodePool", "EdgeWorkload"):
                model = EdgeNodePool if doc["kind"] == "EdgeNodePool" else EdgeWorkload
                errors = list(_validator(model).iter_errors(doc))
                assert not errors, f"{path}: {[e.message for e in errors]}"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s["requirements"].update(latencyBudgetMs=0), "latencyBudgetMs"),
        (lambda s: s["requirements"].update(privacy="secret"), "privacy"),
        (lambda s: s.update(replicas=0), "replicas"),
        (lambda s: s["requirements"]["resources"].update(cpu="lots"), "cpu"),
        (lambda s: s["source"].pop("site"), "site"),
        (lambda s: s.update(tiers={"allowed": ["mars"]}), "allowed"),
    ],
)
def test_crd_schema_rejects_what_the_models_reject(mutate, field):
    doc = yaml.safe_load((EXAMPLES / "workloads" / "line-defect-inspection.yaml").read_text())
    bad = copy.deepcopy(doc)
    mutate(bad["spec"])
    errors = list(_validator(EdgeWorkload).iter_errors(bad))
    assert errors, f"the CRD schema accepted an invalid {field}"
    with pytest.raises(ValueError):
        EdgeWorkload.model_validate(bad)
