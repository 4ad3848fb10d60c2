"""Node sync: member nodes get their pool's labels and taints; only what the operator set is removed."""

from __future__ import annotations

import json

from continuum.api.models import LABEL_POOL, LABEL_SITE, LABEL_TIER
from continuum.controller.nodes import MANAGED_ANNOTATION, Membership, memberships, node_patch
from continuum.controller.status import status_patch

WANT = Membership(
    "line",
    {LABEL_POOL: "line", LABEL_TIER: "near-edge", LABEL_SITE: "plant"},
    [{"key": "continuum.dev/tier", "value": "near-edge", "effect": "NoSchedule"}],
)
FOREIGN_TAINT = {"key": "maintenance", "effect": "NoExecute"}


def merge(obj, patch):
    """RFC 7386 merge (as the apiserver applies our patches)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(obj) if isinstance(obj, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


def node(**meta):
    return {"metadata": {"name": "n1", "labels": {"team": "x"}, **meta}, "spec": {"taints": [FOREIGN_TAINT]}}


def test_joining_adds_labels_taints_and_the_record_keeping_foreign_ones():
    patch = node_patch(node(), WANT)
    assert patch is not None
    joined = merge(node(), patch)
    assert joined["metadata"]["labels"] == {"team": "x", **WANT.labels}
    assert joined["spec"]["taints"] == [FOREIGN_TAINT, *WANT.taints]
    record = json.loads(joined["metadata"]["annotations"][MANAGED_ANNOTATION])
    assert record == {
        "pool": "line",
        "labels": sorted(WANT.labels),
        "taints": [{"key": "continuum.dev/tier", "effect": "NoSchedule"}],
    }
    assert node_patch(joined, WANT) is None  # in sync: no write


def test_leaving_removes_only_what_the_operator_set():
    joined = merge(node(), node_patch(node(), WANT))
    left = merge(joined, node_patch(joined, None))
    assert left["metadata"]["labels"] == {"team": "x"}
    assert left["spec"]["taints"] == [FOREIGN_TAINT]
    assert MANAGED_ANNOTATION not in left["metadata"].get("annotations", {})
    assert node_patch(node(), None) is None  # never managed: nothing to clean


def test_switching_pools_drops_stale_labels_and_replaces_our_taint():
    joined = merge(node(), node_patch(node(), WANT))
    other = Membership("cloud", {LABEL_POOL: "cloud"}, [])
    moved = merge(joined, node_patch(joined, other))
    assert moved["metadata"]["labels"] == {"team": "x", LABEL_POOL: "cloud"}
    assert moved["spec"]["taints"] == [FOREIGN_TAINT]


def test_a_garbled_record_is_treated_as_nothing_managed():
    garbled = node(annotations={MANAGED_ANNOTATION: "{not json"})
    assert node_patch(garbled, None) is None
    assert node_patch(garbled, WANT) is not None


def test_memberships_follow_the_snapshot(example_snapshot):
    members = memberships(example_snapshot)
    assert members["munich-ipc-1"].pool == "munich-line"
    assert members["munich-ipc-1"].labels[LABEL_TIER] == "near-edge"
    assert {t["key"] for t in members["munich-ipc-1"].taints} == {"continuum.dev/tier"}
    assert set(members) == {n.name for p in example_snapshot.pools for n in p.nodes}


def test_status_patch_replaces_the_whole_status():
    assert status_patch({"a": 1, "b": 2}, {"b": 3}) == {"status": {"a": None, "b": 3}}
