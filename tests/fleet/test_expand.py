"""The pure expansion of an EdgeWorkloadSet (set + pools → children) and the three-way child patch."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from continuum.api.crd import render_crd, structural_schema
from continuum.api.fleet import (
    child_name,
    child_object,
    child_workloads,
    expand,
    merge_patch,
    selected_sites,
    three_way_patch,
)
from continuum.api.models import EdgeNodePool, EdgeWorkloadSpec
from continuum.api.workloadset import ANNOTATION_APPLIED, LABEL_SET, EdgeWorkloadSet
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

TEMPLATE: dict[str, Any] = {
    "requirements": {"latencyBudgetMs": 50, "resources": {"cpu": "500m", "memory": "1Gi"}},
    "tiers": {"preferred": ["near-edge"]},
    "model": {"name": "footfall", "uri": "http://models/footfall/4/model.onnx", "version": "4"},
}


def pool(name: str, site: str, labels: dict[str, str] | None = None, tier: str = "near-edge") -> EdgeNodePool:
    return EdgeNodePool.model_validate(
        {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"tier": tier, "site": site, "nodeSelector": {"matchLabels": {"site": site}}},
        }
    )


def workload_set(
    sites: dict[str, Any], overrides: list[dict[str, Any]] | None = None, **meta: Any
) -> EdgeWorkloadSet:
    return EdgeWorkloadSet.model_validate(
        {
            "metadata": {"name": "footfall", "namespace": "retail", **meta},
            "spec": {"sites": sites, "template": copy.deepcopy(TEMPLATE), "overrides": overrides or []},
        }
    )


def test_names_and_selector_select_the_union_of_sites() -> None:
    pools = [
        pool("store-a", "store-a", {"chain": "eu"}),
        pool("store-b", "store-b", {"chain": "eu"}),
        pool("store-c", "store-c", {"chain": "us"}),
        pool("store-a-mec", "store-a", {"chain": "eu"}, tier="regional-mec"),  # same site twice: one child
    ]
    ews = workload_set({"names": ["store-z"], "poolSelector": {"matchLabels": {"chain": "eu"}}})
    assert selected_sites(ews.spec.sites, pools) == ["store-a", "store-b", "store-z"]
    expansion = expand(ews, pools)
    assert [c.name for c in expansion.children] == [
        "footfall-store-a",
        "footfall-store-b",
        "footfall-store-z",
    ]
    for child in expansion.children:
        assert child.spec["source"] == {"site": child.site}
        assert child.error is None
        assert EdgeWorkloadSpec.model_validate(child.spec).model.version == "4"


def test_the_child_spec_is_the_template_as_written_not_its_defaults() -> None:
    child = expand(workload_set({"names": ["s1"]}), []).children[0]
    assert child.spec == {**TEMPLATE, "source": {"site": "s1"}}  # no replicas: 1, worker: {...} filled in


def test_overrides_patch_only_their_sites_in_order_and_null_removes() -> None:
    overrides = [
        {"sites": ["s2", "s3"], "patch": {"replicas": 3, "requirements": {"latencyBudgetMs": 80}}},
        {"sites": ["s3"], "patch": {"replicas": 5, "tiers": None}},
        {"sites": ["gone"], "patch": {"replicas": 2}},
    ]
    expansion = expand(workload_set({"names": ["s1", "s2", "s3"]}, overrides), [])
    by_site = {c.site: c for c in expansion.children}
    assert "replicas" not in by_site["s1"].spec and by_site["s1"].overrides == ()
    assert by_site["s2"].spec["replicas"] == 3 and by_site["s2"].overrides == (0,)
    assert by_site["s2"].spec["requirements"] == {
        "latencyBudgetMs": 80,
        "resources": {"cpu": "500m", "memory": "1Gi"},
    }
    assert by_site["s3"].spec["replicas"] == 5 and "tiers" not in by_site["s3"].spec
    assert expansion.unmatched_overrides == ["gone"]


def test_an_invalid_site_names_the_override_field_that_broke_it() -> None:
    overrides = [{"sites": ["s2"], "patch": {"requirements": {"latencyBudgetMs": -1}}}]
    expansion = expand(workload_set({"names": ["s1", "s2"]}, overrides), [])
    assert expansion.children[0].error is None
    assert expansion.children[1].error == (
        "spec.overrides[0].patch.requirements.latencyBudgetMs: Input should be greater than 0"
    )
    assert expansion.errors == [f"site s2: {expansion.children[1].error}"]
    valid, errors = child_workloads(workload_set({"names": ["s1", "s2"]}, overrides), [])
    assert [w.name for w in valid] == ["footfall-s1"] and errors == expansion.errors


@pytest.mark.parametrize(
    ("spec_change", "field"),
    [
        ({"sites": {}}, "spec.sites"),
        ({"sites": {"names": ["a", "a"]}}, "spec.sites"),
        ({"sites": {"names": ["Not_A_Site"]}}, "spec.sites.names.0"),
        ({"template": {**TEMPLATE, "source": {"site": "x"}}}, "spec.template.source"),
        ({"overrides": [{"sites": ["a"], "patch": {"source": {"site": "b"}}}]}, "spec.overrides.0.patch"),
        ({"overrides": [{"sites": [], "patch": {}}]}, "spec.overrides.0.sites"),
    ],
)
def test_invalid_sets_name_the_field(spec_change: dict[str, Any], field: str) -> None:
    spec = {"sites": {"names": ["a"]}, "template": TEMPLATE, **spec_change}
    with pytest.raises(ValidationError) as info:
        EdgeWorkloadSet.model_validate({"metadata": {"name": "x", "namespace": "n"}, "spec": spec})
    locs = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert field in locs, locs


def test_child_names_are_stable_and_short() -> None:
    assert child_name("footfall", "store-0001") == "footfall-store-0001"
    long = child_name("a-rather-long-fleet-name-for-stores", "store-with-a-long-site-name-0001")
    assert len(long) <= 63 and long == child_name(
        "a-rather-long-fleet-name-for-stores", "store-with-a-long-site-name-0001"
    )
    assert long != child_name("a-rather-long-fleet-name-for-stores", "store-with-a-long-site-name-0002")


def test_child_object_carries_owner_labels_and_the_applied_spec() -> None:
    ews = workload_set({"names": ["s1"]}, uid="u-1")
    child = expand(ews, []).children[0]
    obj = child_object(ews, child)
    meta = obj["metadata"]
    assert meta["ownerReferences"] == [
        {"apiVersion": "continuum.dev/v1alpha1", "kind": "EdgeWorkloadSet", "name": "footfall", "uid": "u-1",
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    assert meta["labels"][LABEL_SET] == "footfall" and meta["namespace"] == "retail"
    assert json.loads(meta["annotations"][ANNOTATION_APPLIED]) == child.spec
    assert "ownerReferences" not in child_object(workload_set({"names": ["s1"]}), child)["metadata"]  # plan


def test_crd_of_the_set_is_structural_and_valid() -> None:
    import kubernetes_validate

    schema = structural_schema(EdgeWorkloadSet)
    patch = schema["properties"]["spec"]["properties"]["overrides"]["items"]["properties"]["patch"]
    assert patch == {**patch, "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    kubernetes_validate.validate(
        render_crd(EdgeWorkloadSet), kubernetes_validate.latest_version(), strict=True
    )


# --- properties ---------------------------------------------------------------------------------------

sites_st = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=0, max_size=8, unique=True)
labels_st = st.sampled_from(["eu", "us", "apac"])


@settings(max_examples=60, deadline=None)
@given(
    named=sites_st,
    pool_sites=st.lists(
        st.tuples(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), labels_st), max_size=8
    ),
    chain=labels_st,
    override_sites=sites_st,
    replicas=st.integers(1, 9),
)
def test_one_child_per_selected_site_and_overrides_only_where_named(
    named: list[str], pool_sites: list[tuple[str, str]], chain: str, override_sites: list[str], replicas: int
) -> None:
    pools = [pool(f"p{i}", site, {"chain": label}) for i, (site, label) in enumerate(pool_sites)]
    overrides = [{"sites": override_sites, "patch": {"replicas": replicas}}] if override_sites else []
    ews = workload_set({"names": named, "poolSelector": {"matchLabels": {"chain": chain}}}, overrides)
    expansion = expand(ews, pools)
    expected = set(named) | {site for site, label in pool_sites if label == chain}
    assert [c.site for c in expansion.children] == sorted(expected)
    assert len({c.name for c in expansion.children}) == len(expansion.children)
    for child in expansion.children:
        assert child.error is None and child.spec["source"] == {"site": child.site}
        assert child.spec.get("replicas") == (replicas if child.site in override_sites else None)
        rest = {k: v for k, v in child.spec.items() if k not in ("source", "replicas")}
        assert rest == TEMPLATE
    assert expansion.unmatched_overrides == sorted(set(override_sites) - expected)
    assert expand(ews, list(reversed(pools))) == expansion  # order of the pools does not matter


json_leaf = st.one_of(st.integers(-3, 3), st.text("ab", max_size=2), st.booleans())
json_doc = st.recursive(
    json_leaf, lambda inner: st.dictionaries(st.sampled_from("abcd"), inner, max_size=3), max_leaves=8
)
json_obj = st.dictionaries(st.sampled_from("abcd"), json_doc, max_size=4)


def owned_view(doc: Any, owned: Any) -> Any:
    """The part of ``doc`` at the paths ``owned`` has (dicts recursively; anything else whole)."""
    if not isinstance(owned, dict) or not isinstance(doc, dict):
        return doc
    return {k: owned_view(doc[k], v) for k, v in owned.items() if k in doc}


@settings(max_examples=200, deadline=None)
@given(last=json_obj, desired=json_obj, foreign=json_obj)
def test_three_way_patch_reaches_desired_and_keeps_foreign_fields(
    last: dict[str, Any], desired: dict[str, Any], foreign: dict[str, Any]
) -> None:
    # the child as the set last rendered it, then changed by someone else in fields the set never owned
    current = merge_patch(last, {k: v for k, v in foreign.items() if k not in last and k not in desired})
    patch = three_way_patch(last, desired, current)
    result = merge_patch(current, patch)
    assert owned_view(result, desired) == desired  # every rendered field as rendered
    for key in foreign:
        if key not in last and key not in desired:
            assert result[key] == current[key]  # someone else's field: untouched
    for key in last:
        if key not in desired:
            assert key not in result  # rendered before, not any more: removed
    assert three_way_patch(desired, desired, result) == {}  # and then nothing more to do
