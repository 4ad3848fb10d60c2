"""End to end on a real cluster (kind), installed the way users install: `helm install` of the chart.

`make e2e-kind` (tests/e2e/run.sh) builds the images with `make images` first. The suite creates a
kind cluster whose workers carry the labels the example pools select, loads the operator image (and
the worker image when built), installs charts/continuum with helm, applies the example pools and a
workload, and checks node labels, the placement, the rendered Deployment, HA with peering after a
`helm upgrade`, and that the CRDs survive `helm uninstall`. Skipped where Docker, kind or helm is
missing. Images: $CONTINUUM_E2E_OPERATOR_IMAGE / $CONTINUUM_E2E_WORKER_IMAGE (default: the tags
`make images` builds, ghcr.io/continuum-dev/continuum-{operator,worker}:<version>).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, find_helm
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.e2e
CLUSTER = os.environ.get("CONTINUUM_E2E_CLUSTER", "continuum-e2e")
NAMESPACE = "continuum-system"
RELEASE = "continuum"
VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
OPERATOR_IMAGE = os.environ.get(
    "CONTINUUM_E2E_OPERATOR_IMAGE", f"ghcr.io/continuum-dev/continuum-operator:{VERSION}"
)
WORKER_IMAGE = os.environ.get(
    "CONTINUUM_E2E_WORKER_IMAGE", f"ghcr.io/continuum-dev/continuum-worker:{VERSION}"
)


def _docker_ok() -> bool:
    if shutil.which("kind") is None or shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _image_present(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode
        == 0
    )


HELM = find_helm()
requires_kind = pytest.mark.skipif(
    not _docker_ok() or HELM is None, reason="needs kind, a running Docker engine and helm (make helm)"
)

# kind labels its control-plane node `node-role.kubernetes.io/control-plane: ""` (k3s: "true").
KIND_CONFIG = """
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
- role: worker
  labels: {edge.example.com/site: plant-munich, edge.example.com/role: line}
- role: worker
  labels: {edge.example.com/role: mec}
"""


def run(*cmd: str, input: str | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(
        list(cmd), input=input, capture_output=True, text=True, check=False, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout


def wait(predicate: Callable[[], Any], timeout: float = 120.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


class Kind:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return run("kubectl", "--kubeconfig", str(self.kubeconfig), *args, input=input)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def helm(self, *args: str) -> str:
        assert HELM is not None
        return run(HELM, "--kubeconfig", str(self.kubeconfig), *args, timeout=600)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kind]:
    if not _image_present(OPERATOR_IMAGE):
        pytest.fail(
            f"operator image {OPERATOR_IMAGE} is not built: run `make images` (tests/e2e/run.sh does)"
        )
    work = tmp_path_factory.mktemp("kind")
    config, kubeconfig = work / "kind.yaml", work / "kubeconfig"
    config.write_text(KIND_CONFIG)
    run(
        "kind",
        "create",
        "cluster",
        "--name",
        CLUSTER,
        "--config",
        str(config),
        "--kubeconfig",
        str(kubeconfig),
        "--wait",
        "180s",
        timeout=600,
    )
    try:
        for image in (OPERATOR_IMAGE, WORKER_IMAGE):
            if _image_present(image):
                run("kind", "load", "docker-image", image, "--name", CLUSTER, timeout=600)
        yield Kind(kubeconfig)
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False, timeout=300)


def _install_args(*extra: str) -> list[str]:
    repository, _, tag = OPERATOR_IMAGE.rpartition(":")
    worker_repository, _, worker_tag = WORKER_IMAGE.rpartition(":")
    return [
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        f"worker.image.repository={worker_repository}",
        "--set",
        f"worker.image.tag={worker_tag}",
        "--set-json",
        'nodeSelector={"node-role.kubernetes.io/control-plane": ""}',
        "--set",
        "operator.resyncSeconds=2",
        *extra,
    ]


@pytest.fixture(scope="module")
def installed(cluster: Kind) -> Kind:
    cluster.helm("install", *_install_args())
    return cluster


@requires_kind
def test_chart_installs_the_operator_on_the_control_plane(installed: Kind) -> None:
    deployment = installed.get("deployment", RELEASE, "-n", NAMESPACE)
    assert deployment["status"]["readyReplicas"] == 1
    pods = installed.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
    node = installed.get("node", pods[0]["spec"]["nodeName"])
    assert "node-role.kubernetes.io/control-plane" in node["metadata"]["labels"]
    installed.kubectl(
        "wait", "--for=condition=Established", "crd/edgeworkloads.continuum.dev", "--timeout=60s"
    )


@requires_kind
def test_pools_label_nodes_and_workloads_are_placed(installed: Kind) -> None:
    pools = [
        doc
        for doc in yaml.safe_load_all((EXAMPLES / "cluster" / "pools.yaml").read_text())
        if doc and doc["metadata"]["name"] in ("munich-line", "mec-frankfurt")
    ]
    installed.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(pools))
    installed.kubectl("create", "namespace", "logistics")
    installed.kubectl("apply", "-f", str(EXAMPLES / "workloads" / "agv-navigation.yaml"))

    def labelled() -> bool:
        nodes = installed.get("nodes")["items"]
        return sum(1 for n in nodes if "continuum.dev/pool" in n["metadata"].get("labels", {})) == 2

    wait(labelled, what="pool labels on the two workers")

    def placed() -> dict[str, Any] | None:
        obj = installed.get("edgeworkload", "agv-planner-edge", "-n", "logistics")
        return obj if (obj.get("status") or {}).get("phase") == "Placed" else None

    status = wait(placed, what="agv-planner-edge placed")["status"]
    assert status["placement"]["pool"] == "munich-line"
    deployment = wait(
        lambda: installed.get("deployment", "agv-planner-edge", "-n", "logistics"),
        what="the worker Deployment",
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"continuum.dev/pool": "munich-line"}
    assert pod["containers"][0]["image"] == WORKER_IMAGE
    out = installed.kubectl("get", "edgeworkloads", "-A")
    assert "TIER" in out and "munich-line" in out
    metrics = installed.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/services/{RELEASE}-metrics:9090/proxy/metrics"
    )
    assert "continuum_" in metrics


@requires_kind
def test_upgrade_to_ha_with_peering(installed: Kind) -> None:
    installed.helm("upgrade", *_install_args("--set", "replicaCount=2"))
    peering = wait(lambda: installed.get("clusterkopfpeering", RELEASE), what="the ClusterKopfPeering")

    def both_peers() -> bool:
        status = installed.get("clusterkopfpeering", RELEASE).get("status") or {}
        return len(status) >= 2

    wait(both_peers, what="two peers in the peering object")
    assert peering["metadata"]["name"] == RELEASE


@requires_kind
def test_uninstall_keeps_the_crds_and_the_workloads(installed: Kind) -> None:
    installed.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    installed.kubectl("get", "crd", "edgeworkloads.continuum.dev", "edgenodepools.continuum.dev")
    assert (
        installed.get("edgeworkload", "agv-planner-edge", "-n", "logistics")["metadata"]["name"]
        == "agv-planner-edge"
    )
