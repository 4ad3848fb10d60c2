"""EdgeWorkloadSet in the real operator (kopf, in a thread) against the API emulator over HTTP."""

from __future__ import annotations

import copy
from typing import Any

from tests.operator.conftest import WORKLOADS, Harness, wait_for

SETS = "continuum.dev/v1alpha1/edgeworkloadsets"
POOLS = "continuum.dev/v1alpha1/edgenodepools"
NS = "retail"

TEMPLATE: dict[str, Any] = {
    "requirements": {"latencyBudgetMs": 200, "resources": {"cpu": "100m", "memory": "128Mi"}},
    "model": {"name": "footfall", "uri": "http://models/footfall/4/model.onnx", "version": "4"},
}


def the_set(
    sites: dict[str, Any], overrides: list[dict[str, Any]] | None = None, template: dict | None = None
) -> dict:
    return {
        "apiVersion": "continuum.dev/v1alpha1",
        "kind": "EdgeWorkloadSet",
        "metadata": {"name": "footfall", "namespace": NS},
        "spec": {
            "sites": sites,
            "template": copy.deepcopy(template or TEMPLATE),
            "overrides": overrides or [],
        },
    }


def children(h: Harness) -> dict[str, dict[str, Any]]:
    return {
        w["metadata"]["name"]: w
        for w in h.cluster.list(WORKLOADS, NS)
        if any(
            r.get("kind") == "EdgeWorkloadSet" and r.get("controller")
            for r in w["metadata"].get("ownerReferences", [])
        )
    }


def set_status(h: Harness) -> dict[str, Any]:
    return (h.cluster.get(SETS, "footfall", NS) or {}).get("status") or {}


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), {})


def test_one_placed_child_per_site_added_and_removed_with_the_sites(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.start_operator()
    ews = h.apply(the_set({"names": ["plant-munich", "plant-lyon"]}))
    wait_for(
        lambda: set(children(h)) == {"footfall-plant-munich", "footfall-plant-lyon"}, what="two children"
    )
    for child in children(h).values():
        ref = child["metadata"]["ownerReferences"][0]
        assert ref["uid"] == ews["metadata"]["uid"] and ref["controller"] is True
        assert child["spec"]["source"]["site"] == child["metadata"]["labels"]["continuum.dev/site"]
    status = wait_for(lambda: (s := set_status(h)).get("placed") == 2 and s, what="both placed")
    assert (
        status["sites"] == 2
        and status["versions"][0]["version"] == "4"
        and status["versions"][0]["sites"] == 2
    )
    assert condition(status, "Synced")["status"] == "True"
    assert h.condition(NS, "footfall-plant-munich", "Placed") == "True"  # the workload reconciler placed it

    # a site leaves and another comes: one child deleted, one created, the third untouched
    munich_uid = children(h)["footfall-plant-munich"]["metadata"]["uid"]
    h.apply(the_set({"names": ["plant-munich", "store-berlin"]}))
    wait_for(
        lambda: set(children(h)) == {"footfall-plant-munich", "footfall-store-berlin"},
        what="lyon out, berlin in",
    )
    assert children(h)["footfall-plant-munich"]["metadata"]["uid"] == munich_uid
    wait_for(
        lambda: h.events("SitesRemoved", "footfall") and h.events("SitesAdded", "footfall"), what="events"
    )

    # a pool labelled into the selector brings its site in; a child deleted by hand comes back
    h.apply(the_set({"names": ["plant-munich"], "poolSelector": {"matchLabels": {"fleet": "footfall"}}}))
    wait_for(lambda: set(children(h)) == {"footfall-plant-munich"}, what="berlin out")
    h.cluster.patch(POOLS, "vienna-ward", {"metadata": {"labels": {"fleet": "footfall"}}})
    wait_for(lambda: "footfall-hospital-vienna" in children(h), what="the labelled pool's site")
    h.cluster.delete(WORKLOADS, "footfall-plant-munich", NS)
    wait_for(
        lambda: (c := children(h).get("footfall-plant-munich")) and c["metadata"]["uid"] != munich_uid,
        what="re-created",
    )
    wait_for(lambda: set_status(h).get("sites") == 2 and set_status(h).get("placed") == 2, what="rollup")


def test_overrides_changes_and_no_clobbering(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    # an EdgeWorkload someone else owns already holds the name of one child: it is reported, never taken
    foreign = {
        "apiVersion": "continuum.dev/v1alpha1",
        "kind": "EdgeWorkload",
        "metadata": {"name": "footfall-store-berlin", "namespace": NS},
        "spec": {**copy.deepcopy(TEMPLATE), "source": {"site": "store-berlin"}, "replicas": 1},
    }
    h.apply(foreign)
    h.start_operator()
    overrides = [
        {"sites": ["plant-lyon"], "patch": {"replicas": 2, "requirements": {"latencyBudgetMs": 300}}}
    ]
    h.apply(the_set({"names": ["plant-munich", "plant-lyon", "store-berlin"]}, overrides))
    wait_for(lambda: len(children(h)) == 2, what="two children")
    lyon = children(h)["footfall-plant-lyon"]["spec"]
    assert lyon["replicas"] == 2 and lyon["requirements"]["latencyBudgetMs"] == 300
    assert "replicas" not in children(h)["footfall-plant-munich"]["spec"]
    status = wait_for(lambda: (s := set_status(h)).get("conflicts") and s, what="the conflict")
    assert status["conflicts"] == ["footfall-store-berlin"]
    assert condition(status, "Synced")["reason"] == "ChildConflict"
    wait_for(lambda: h.events("ChildConflict", "footfall"), what="ChildConflict event")
    assert h.workload(NS, "footfall-store-berlin")["metadata"].get("ownerReferences") is None

    # someone adds a field the set does not render; a template change keeps it
    env = [{"name": "EXTRA", "value": "1"}]
    h.cluster.patch(WORKLOADS, "footfall-plant-munich", {"spec": {"worker": {"env": env}}}, NS)
    template = copy.deepcopy(TEMPLATE)
    template["model"]["version"] = "5"
    template["model"]["uri"] = "http://models/footfall/5/model.onnx"
    h.apply(the_set({"names": ["plant-munich", "plant-lyon", "store-berlin"]}, overrides, template))
    wait_for(
        lambda: children(h)["footfall-plant-munich"]["spec"]["model"]["version"] == "5", what="new version"
    )
    munich = children(h)["footfall-plant-munich"]
    assert munich["spec"]["worker"]["env"] == env
    wait_for(
        lambda: [v["version"] for v in set_status(h).get("versions", [])] == ["5"], what="versions rollup"
    )

    # an override removed: the fields it rendered go, the template's stay
    h.apply(the_set({"names": ["plant-munich", "plant-lyon", "store-berlin"]}, [], template))
    wait_for(lambda: "replicas" not in children(h)["footfall-plant-lyon"]["spec"], what="override removed")
    assert children(h)["footfall-plant-lyon"]["spec"]["requirements"]["latencyBudgetMs"] == 200
    assert h.workload(NS, "footfall-store-berlin")["spec"]["model"]["version"] == "4"  # the foreign one


def test_invalid_specs_name_the_field_and_change_nothing(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.start_operator()
    bad_override = [{"sites": ["plant-lyon"], "patch": {"requirements": {"latencyBudgetMs": -5}}}]
    h.apply(the_set({"names": ["plant-munich", "plant-lyon"]}, bad_override))
    status = wait_for(lambda: (s := set_status(h)).get("invalid") == 1 and s, what="the invalid site")
    assert condition(status, "Synced")["reason"] == "InvalidSite"
    assert "spec.overrides[0].patch.requirements.latencyBudgetMs" in condition(status, "Synced")["message"]
    wait_for(lambda: h.events("InvalidSite", "footfall"), what="InvalidSite event")
    assert set(children(h)) == {"footfall-plant-munich"}

    # the whole set invalid (the emulator does not validate CRD schemas; the operator does): nothing removed
    broken = the_set({"names": ["plant-munich"]})
    broken["spec"]["template"]["source"] = {"site": "plant-munich"}
    h.apply(broken)
    status = wait_for(
        lambda: condition(s := set_status(h), "Synced").get("reason") == "InvalidSpec" and s, what="invalid"
    )
    assert "spec.template.source" in status["message"]
    event = wait_for(lambda: h.events("InvalidSpec", "footfall"), what="InvalidSpec event")
    assert "spec.template.source" in event[0]["message"]
    assert set(children(h)) == {"footfall-plant-munich"}
