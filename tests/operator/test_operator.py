"""Integration: the real operator against the API emulator. Each test pins one behaviour of the issue."""

from __future__ import annotations

import json
import re

import kmock
from continuum.api.models import LABEL_POOL, LABEL_SITE, LABEL_TIER, LABEL_WORKLOAD
from prometheus_client import REGISTRY

from tests.conftest import EXAMPLES
from tests.operator.conftest import POOLS, WORKLOADS, Harness, docs, wait_for

DEPLOYMENTS = "apps/v1/deployments"
STATEFULSETS = "apps/v1/statefulsets"


def by_name(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs}


def placed(h: Harness, ns: str, name: str, pool: str | None = None) -> bool:
    st = h.status(ns, name)
    return st.get("phase") == "Placed" and (pool is None or (st.get("placement") or {}).get("pool") == pool)


def test_pools_label_and_taint_nodes_and_clean_up(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    # A label and a taint the operator did not set must survive everything it does.
    h.cluster.patch(
        "v1/nodes",
        "munich-cam-1",
        {
            "metadata": {"labels": {"owner": "ops"}},
            "spec": {"taints": [{"key": "ops/maintenance", "effect": "PreferNoSchedule"}]},
        },
    )
    h.start_operator()

    def labelled() -> bool:
        node = h.cluster.get("v1/nodes", "munich-cam-1") or {}
        labels = node["metadata"].get("labels", {})
        return labels.get(LABEL_POOL) == "munich-cameras" and len(node.get("spec", {}).get("taints", [])) == 2

    wait_for(labelled, what="munich-cam-1 labelled and tainted")
    node = h.cluster.get("v1/nodes", "munich-cam-1")
    assert node["metadata"]["labels"][LABEL_TIER] == "device"
    assert node["metadata"]["labels"][LABEL_SITE] == "plant-munich"
    assert {"key": LABEL_TIER, "value": "device", "effect": "NoSchedule"} in node["spec"]["taints"]
    mec = h.cluster.get("v1/nodes", "mec-fra-1")
    wait_for(
        lambda: (
            (h.cluster.get("v1/nodes", "mec-fra-1") or {})["metadata"]["labels"].get(LABEL_POOL)
            == "mec-frankfurt"
        )
    )
    assert (
        not (h.cluster.get("v1/nodes", "mec-fra-1") or mec).get("spec", {}).get("taints")
    )  # taints: [] in the pool

    wait_for(
        lambda: ((h.cluster.get(POOLS, "munich-cameras") or {}).get("status") or {}).get("readyNodes") == 2
    )
    status = h.cluster.get(POOLS, "munich-cameras")["status"]
    assert status["memberNodes"] == ["munich-cam-1", "munich-cam-2"]
    assert status["allocatable"] == {"cpu": "8", "memory": "7600Mi", "gpu": 0}

    # The pool is deleted: our labels and taints go, the operator's own record too; the others stay.
    h.cluster.delete(POOLS, "munich-cameras")

    def cleaned() -> bool:
        node = h.cluster.get("v1/nodes", "munich-cam-1") or {}
        labels = node["metadata"].get("labels", {})
        return LABEL_POOL not in labels and LABEL_TIER not in labels

    wait_for(cleaned, what="labels removed after the pool was deleted")
    node = h.cluster.get("v1/nodes", "munich-cam-1")
    assert node["metadata"]["labels"]["owner"] == "ops"
    assert node["spec"]["taints"] == [{"key": "ops/maintenance", "effect": "PreferNoSchedule"}]
    assert "continuum.dev/managed" not in node["metadata"].get("annotations", {})


def test_node_in_two_pools_is_a_conflict_in_both(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.apply(
        {
            "apiVersion": "continuum.dev/v1alpha1",
            "kind": "EdgeNodePool",
            "metadata": {"name": "all-munich"},
            "spec": {
                "tier": "near-edge",
                "site": "plant-munich",
                "nodeSelector": {"matchLabels": {"edge.example.com/site": "plant-munich"}},
            },
        }
    )
    h.start_operator()
    for pool in ("all-munich", "munich-line"):
        wait_for(
            lambda pool=pool: (
                "munich-ipc-1"
                in (((h.cluster.get(POOLS, pool) or {}).get("status") or {}).get("conflicts") or [])
            ),
            what=f"conflict reported in {pool}",
        )
    status = h.cluster.get(POOLS, "munich-line")["status"]
    conflict = next(c for c in status["conditions"] if c["type"] == "Conflict")
    assert conflict["status"] == "True" and "munich-ipc-1" in conflict["message"]
    assert "munich-ipc-1" not in status["memberNodes"]
    node = h.cluster.get("v1/nodes", "munich-ipc-1")
    assert LABEL_POOL not in node["metadata"].get("labels", {})  # no silent overwrite


def test_workloads_get_worker_objects_status_and_events(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.start_operator()
    for obj in docs(EXAMPLES / "workloads"):
        h.apply(obj)
    wait_for(lambda: placed(h, "manufacturing", "line-defect-inspection", "munich-line"))
    wait_for(lambda: placed(h, "logistics", "agv-planner-mec", "mec-frankfurt"))
    wait_for(lambda: h.status("manufacturing", "quality-assistant").get("phase") == "Unschedulable")

    # Stateless: a Deployment pinned to the pool, tolerating exactly its taints. The offload target (the
    # same model placed one tier up) is filled in once that copy is placed.
    def upstream_known() -> dict | None:
        dep = h.cluster.get(DEPLOYMENTS, "agv-planner-edge", "logistics") or {}
        env = [
            e["name"]
            for c in dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            for e in c["env"]
        ]
        return dep if "CONTINUUM_UPSTREAM" in env else None

    dep = wait_for(upstream_known, what="offload upstream rendered")
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {LABEL_POOL: "munich-line"}
    assert pod["tolerations"] == [
        {"key": LABEL_TIER, "operator": "Equal", "value": "near-edge", "effect": "NoSchedule"}
    ]
    container = pod["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "2Gi"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CONTINUUM_MODEL_NAME"] == "agv-planner"
    assert env["CONTINUUM_UPSTREAM"] == "http://agv-planner-mec.logistics.svc:8000"  # offload one tier up
    assert env["CONTINUUM_UPSTREAM_TIMEOUT_MS"] == "15"
    assert dep["metadata"]["labels"][LABEL_WORKLOAD] == "agv-planner-edge"
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "continuum-operator"
    owner = dep["metadata"]["ownerReferences"][0]
    assert (
        owner["kind"] == "EdgeWorkload"
        and owner["uid"] == h.workload("logistics", "agv-planner-edge")["metadata"]["uid"]
    )
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": "100%"}

    # State enabled: a StatefulSet per pool (its volumes live there) with a volume claim, a token Secret;
    # GPU requested as a resource.
    sts = wait_for(
        lambda: h.cluster.get(STATEFULSETS, "line-defect-inspection-munich-line", "manufacturing")
    )
    assert sts["spec"]["selector"]["matchLabels"][LABEL_POOL] == "munich-line"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "local-path"
    assert sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert h.cluster.get("v1/secrets", "line-defect-inspection-state-token", "manufacturing") is not None
    assert h.cluster.get("v1/services", "line-defect-inspection", "manufacturing") is not None
    peers = h.cluster.get("v1/services", "line-defect-inspection-peers", "manufacturing")
    assert peers is not None and peers["spec"]["clusterIP"] == "None"  # pod DNS for replica sync
    assert sts["spec"]["serviceName"] == "line-defect-inspection-peers"
    assert h.cluster.get(DEPLOYMENTS, "quality-assistant", "manufacturing") is None

    # Status: placement, every pool as a candidate, conditions following readiness.
    wait_for(lambda: h.condition("manufacturing", "line-defect-inspection", "Ready") == "True")
    status = h.status("manufacturing", "line-defect-inspection")
    assert status["placement"]["estimatedLatencyMs"] == 10.0
    assert len(status["candidates"]) == 8
    assert status["observedGeneration"] == 1
    stuck = h.status("manufacturing", "quality-assistant")
    assert "raise requirements.latencyBudgetMs to 21 ms" in stuck["hint"]
    assert h.condition("manufacturing", "quality-assistant", "Placed") == "False"
    wait_for(lambda: h.events("Placed", "line-defect-inspection"), what="Placed event")
    wait_for(lambda: h.events("Unschedulable", "quality-assistant"), what="Unschedulable event")
    # The operator never writes spec: generation stays 1 (Argo CD / Flux see no drift).
    meta = h.workload("manufacturing", "line-defect-inspection")["metadata"]
    assert meta["generation"] == 1
    # No finalizers and no kopf bookkeeping annotations: deleting a workload never waits for the operator.
    assert not meta.get("finalizers")
    assert not [k for k in meta.get("annotations", {}) if k.startswith(("continuum.dev/", "kopf.zalando.org/"))]


def test_invalid_spec_names_the_field_and_others_go_on(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.start_operator()
    good = docs(EXAMPLES / "workloads" / "bedside-vitals.yaml")[0]
    bad = json.loads(json.dumps(good))
    bad["metadata"]["name"] = "broken"
    bad["spec"]["requirements"]["latencyBudgetMs"] = -1
    bad["spec"]["replicaz"] = 2
    h.apply(bad)
    h.apply(good)
    wait_for(lambda: h.status("healthcare", "broken").get("phase") == "Invalid")
    status = h.status("healthcare", "broken")
    assert "spec.requirements.latencyBudgetMs" in status["message"] and "spec.replicaz" in status["message"]
    placed_cond = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert placed_cond["status"] == "False" and placed_cond["reason"] == "InvalidSpec"
    wait_for(lambda: h.events("InvalidSpec", "broken"), what="InvalidSpec event")
    wait_for(lambda: placed(h, "healthcare", "bedside-vitals", "vienna-ward"))
    invalid = {"kind": "EdgeWorkload"}  # the operator runs in this process: its metrics are ours
    wait_for(lambda: REGISTRY.get_sample_value("continuum_invalid_objects", invalid) == 1, what="gauge 1")
    # Fixing the spec places it.
    bad["spec"]["requirements"]["latencyBudgetMs"] = 50
    del bad["spec"]["replicaz"]
    h.cluster.patch(
        WORKLOADS,
        "broken",
        {"spec": {"requirements": {"latencyBudgetMs": 50}, "replicaz": None}},
        "healthcare",
    )
    wait_for(lambda: placed(h, "healthcare", "broken"), what="fixed workload placed")
    wait_for(lambda: REGISTRY.get_sample_value("continuum_invalid_objects", invalid) == 0, what="gauge 0")


def test_replaced_after_grace_and_fails_back_after_stabilization(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.start_operator(grace_seconds=2.0, stabilization_seconds=2.0)
    wl = docs(EXAMPLES / "workloads" / "line-defect-inspection.yaml")[0]
    wl["spec"]["state"] = {"enabled": False}
    h.apply(wl)
    wait_for(lambda: placed(h, "manufacturing", "line-defect-inspection", "munich-line"))
    wait_for(lambda: h.condition("manufacturing", "line-defect-inspection", "Ready") == "True")

    # A blip shorter than the grace period moves nothing.
    h.node_ready("munich-ipc-1", False)
    wait_for(
        lambda: h.status("manufacturing", "line-defect-inspection").get("disruption"),
        what="disruption recorded",
    )
    h.node_ready("munich-ipc-1", True)
    wait_for(
        lambda: not h.status("manufacturing", "line-defect-inspection").get("disruption"),
        what="disruption cleared",
    )
    assert placed(h, "manufacturing", "line-defect-inspection", "munich-line")
    assert not h.events("Replaced", "line-defect-inspection")

    # A real failure: moved to the MEC after the grace period, make-before-break.
    h.node_ready("munich-ipc-1", False)
    wait_for(
        lambda: placed(h, "manufacturing", "line-defect-inspection", "mec-frankfurt"),
        timeout=20,
        what="moved to the MEC",
    )
    # Events are posted asynchronously (after the status): wait for them.
    wait_for(lambda: h.events("PoolDegraded", "line-defect-inspection"), what="PoolDegraded event")
    dep = h.cluster.get(DEPLOYMENTS, "line-defect-inspection", "manufacturing")
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {LABEL_POOL: "mec-frankfurt"}
    wait_for(lambda: h.events("Replaced", "line-defect-inspection"), what="Replaced event")
    wait_for(
        lambda: h.condition("manufacturing", "line-defect-inspection", "Ready") == "True",
        what="ready on the MEC",
    )
    assert not h.status("manufacturing", "line-defect-inspection").get("previousPlacement")

    # The preferred pool recovers: fail back only after the stabilization window.
    h.node_ready("munich-ipc-1", True)
    wait_for(
        lambda: h.status("manufacturing", "line-defect-inspection").get("betterSince"),
        what="stabilization started",
    )
    assert placed(h, "manufacturing", "line-defect-inspection", "mec-frankfurt")
    wait_for(
        lambda: placed(h, "manufacturing", "line-defect-inspection", "munich-line"),
        timeout=20,
        what="failed back",
    )


def test_unschedulable_is_retried_when_capacity_appears(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.start_operator()
    wl = docs(EXAMPLES / "workloads" / "bedside-vitals.yaml")[0]
    wl["spec"]["replicas"] = 4
    wl["spec"]["requirements"]["resources"] = {"cpu": "3", "memory": "1Gi"}
    h.apply(wl)
    wait_for(lambda: h.status("healthcare", "bedside-vitals").get("phase") == "Unschedulable")
    node = docs(EXAMPLES / "cluster" / "nodes.yaml")[5]
    assert node["metadata"]["name"] == "vienna-ward-1"
    node["metadata"]["name"] = "vienna-ward-2"
    node["metadata"]["labels"]["kubernetes.io/hostname"] = "vienna-ward-2"
    h.apply(node)
    wait_for(
        lambda: placed(h, "healthcare", "bedside-vitals", "vienna-ward"), what="placed once a node was added"
    )


def test_restart_is_idempotent(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.start_operator()
    for obj in docs(EXAMPLES / "workloads"):
        h.apply(obj)
    wait_for(
        lambda: all((w.get("status") or {}).get("phase") for w in h.cluster.list(WORKLOADS)),
        what="all decided",
    )
    wait_for(lambda: h.condition("retail", "store-footfall", "Ready") == "True")
    before = {
        w["metadata"]["name"]: (w["status"].get("placement") or {}).get("pool")
        for w in h.cluster.list(WORKLOADS)
    }
    objects_before = len(h.cluster.list(DEPLOYMENTS)) + len(h.cluster.list(STATEFULSETS))
    uids = {o["metadata"]["uid"] for o in h.cluster.list(DEPLOYMENTS) + h.cluster.list(STATEFULSETS)}
    h.stop_operator()
    h.start_operator()
    wait_for(
        lambda: h.cluster.get("v1/nodes", "munich-ipc-1")["metadata"]["labels"].get(LABEL_POOL),
        what="new operator active",
    )
    import time

    time.sleep(2.0)  # several resync periods of the new operator
    after = {
        w["metadata"]["name"]: (w["status"].get("placement") or {}).get("pool")
        for w in h.cluster.list(WORKLOADS)
    }
    assert after == before
    assert len(h.cluster.list(DEPLOYMENTS)) + len(h.cluster.list(STATEFULSETS)) == objects_before
    assert {o["metadata"]["uid"] for o in h.cluster.list(DEPLOYMENTS) + h.cluster.list(STATEFULSETS)} == uids


def _api_errors(status: str) -> float:
    return REGISTRY.get_sample_value("continuum_api_errors_total", {"status": status}) or 0.0


def test_injected_api_errors_are_retried(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    before = {code: _api_errors(code) for code in ("500", "409")}
    emulator = h.cluster.emulator
    # As in kmock, the write is stored before the injected error: the retry must not duplicate it.
    emulator["create apps/v1/deployments"][:1] << kmock.KubernetesError(
        500, "InternalError", "etcd leader changed"
    )
    status_writes = emulator[kmock.method.PATCH, re.compile(r".*/edgeworkloads/[^/]+/status$")]
    status_writes[:1] << kmock.KubernetesError(409, "Conflict", "try again")
    h.start_operator()
    h.apply(docs(EXAMPLES / "workloads" / "fleet-analytics.yaml")[0])
    wait_for(
        lambda: placed(h, "analytics", "fleet-analytics", "cloud-virginia"), what="placed despite API errors"
    )
    wait_for(lambda: h.condition("analytics", "fleet-analytics", "Ready") == "True")
    assert len(h.cluster.list(DEPLOYMENTS, "analytics")) == 1
    assert h.status("analytics", "fleet-analytics")["phase"] == "Placed"  # never a wrong status
    assert _api_errors("500") >= before["500"] + 1  # the injected errors were served and retried
    assert _api_errors("409") >= before["409"] + 1


def test_deleting_the_workload_garbage_collects_its_objects(harness: Harness) -> None:
    h = harness
    h.load_cluster()
    h.start_operator()
    h.apply(docs(EXAMPLES / "workloads" / "fleet-analytics.yaml")[0])
    wait_for(lambda: h.cluster.get(DEPLOYMENTS, "fleet-analytics", "analytics"))
    h.cluster.delete(WORKLOADS, "fleet-analytics", "analytics")
    wait_for(
        lambda: h.cluster.get(DEPLOYMENTS, "fleet-analytics", "analytics") is None,
        what="Deployment collected",
    )
    assert h.cluster.get("v1/services", "fleet-analytics", "analytics") is None
    assert by_name(h.cluster.list(WORKLOADS)).get("fleet-analytics") is None
