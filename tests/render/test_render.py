"""The worker renderer: pure, validated against the Kubernetes schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest
from continuum.api.loader import load_manifests
from continuum.api.models import LABEL_POOL, EdgeWorkload, Placement, Tier
from continuum.render.worker import RenderSettings, render_worker_manifests

from tests.conftest import EXAMPLES

KUBE_VERSION = kubernetes_validate.latest_version()
MANIFESTS = load_manifests([EXAMPLES / "cluster", EXAMPLES / "workloads"])
POOLS = {p.name: p for p in MANIFESTS.pools}
WORKLOADS = {w.name: w for w in MANIFESTS.workloads}


def with_uid(workload: EdgeWorkload) -> EdgeWorkload:
    return workload.model_copy(update={"metadata": workload.metadata.model_copy(update={"uid": "1234"})})


def render(name: str, pool: str, **settings):
    workload = with_uid(WORKLOADS[name])
    placement = Placement(
        pool=pool, tier=POOLS[pool].spec.tier, site=POOLS[pool].spec.site, estimated_latency_ms=10
    )
    return {
        ("PeerService" if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None" else o["kind"]): o
        for o in render_worker_manifests(workload, placement, POOLS[pool], RenderSettings(**settings))
    }


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_example_renders_valid_kubernetes_objects(name):
    pool = "mec-frankfurt"
    objs = render(
        name,
        pool,
        state_token="t" * 64,
        upstreams={"regional-mec": "http://x.y.svc:8000", "cloud": "http://c.y.svc:8000"},
    )
    for obj in objs.values():
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_pinned_to_the_pool_tolerating_exactly_its_taints():
    dep = render("agv-planner-edge", "munich-line")["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {LABEL_POOL: "munich-line"}
    assert pod["tolerations"] == [
        {"key": "continuum.dev/tier", "operator": "Equal", "value": "near-edge", "effect": "NoSchedule"}
    ]
    assert (
        render("agv-planner-mec", "mec-frankfurt")["Deployment"]["spec"]["template"]["spec"]["tolerations"]
        == []
    )


def test_state_makes_a_statefulset_with_a_claim_and_a_token_secret():
    objs = render("line-defect-inspection", "munich-line", state_token="s3cret")
    sts = objs["StatefulSet"]
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert (
        claim["spec"]["storageClassName"] == "local-path"
        and claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    )
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CONTINUUM_STATE_DIR"]["value"] == "/var/lib/continuum/state"
    assert (
        env["CONTINUUM_STATE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
        == "line-defect-inspection-state-token"
    )
    assert "CONTINUUM_SYNC_TO" not in env  # no cloud copy of the model is placed
    assert "Secret" in objs and "Deployment" not in objs
    assert "CONTINUUM_SYNC_PEERS" not in env  # one replica: nobody to sync with in the pool


def test_replicas_with_state_sync_through_a_headless_service():
    workload = with_uid(WORKLOADS["line-defect-inspection"])
    workload = workload.model_copy(update={"spec": workload.spec.model_copy(update={"replicas": 3})})
    pool = POOLS["munich-line"]
    placement = Placement(pool=pool.name, tier=pool.spec.tier, site=pool.spec.site, estimated_latency_ms=10)
    objs = render_worker_manifests(workload, placement, pool, RenderSettings(state_token="t"))
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    peers = next(o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == peers["metadata"]["name"] == "line-defect-inspection-peers"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    # The headless Service selects the pods of every pool, so replicas of an old and a new pool resolve.
    assert LABEL_POOL not in peers["spec"]["selector"]
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    name = sts["metadata"]["name"]
    assert env["CONTINUUM_SYNC_PEERS"].split(",") == [
        f"http://{name}-{i}.line-defect-inspection-peers.manufacturing.svc:8000" for i in range(3)
    ]
    for obj in objs:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_worker_settings_and_security():
    objs = render(
        "agv-planner-edge",
        "munich-line",
        upstreams={"regional-mec": "http://agv-planner-mec.logistics.svc:8000"},
        worker_image="registry.local/worker:1",
    )
    container = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CONTINUUM_UPSTREAM"] == "http://agv-planner-mec.logistics.svc:8000"
    assert env["CONTINUUM_UPSTREAM_TIMEOUT_MS"] == "15"
    assert env["CONTINUUM_FALLBACK_MODEL_URI"].endswith("agv-planner-small/7/model.onnx")
    assert container["image"] == "registry.local/worker:1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    sec = container["securityContext"]
    assert sec["runAsNonRoot"] and sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert sec["capabilities"] == {"drop": ["ALL"]}
    gpu = render("line-defect-inspection", "munich-line")["StatefulSet"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert (
        gpu["resources"]["requests"]["nvidia.com/gpu"] == "1" == gpu["resources"]["limits"]["nvidia.com/gpu"]
    )


def test_owner_reference_and_labels():
    objs = render("fleet-analytics", "cloud-virginia")
    for obj in objs.values():
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref == {
            "apiVersion": "continuum.dev/v1alpha1",
            "kind": "EdgeWorkload",
            "name": "fleet-analytics",
            "uid": "1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["labels"]["continuum.dev/workload"] == "fleet-analytics"
    assert objs["Service"]["spec"]["selector"] == objs["Deployment"]["spec"]["selector"]["matchLabels"]


def test_rendering_is_deterministic():
    assert render("store-footfall", "mec-frankfurt") == render("store-footfall", "mec-frankfurt")
    assert Tier.CLOUD.order > Tier.DEVICE.order
