"""End to end on a real cluster (kind): the CRDs, labelled nodes, the operator, the examples.

Run with `make e2e-kind`; skipped where Docker or kind is missing. The operator runs on the host
against the kind API server (the same `continuum run` the image runs); worker pods need the worker
image, so the suite checks placements, node labels/taints and the rendered objects, not inference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.e2e
CLUSTER = os.environ.get("CONTINUUM_E2E_CLUSTER", "continuum-e2e")


def _docker_ok() -> bool:
    if shutil.which("kind") is None or shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


requires_kind = pytest.mark.skipif(not _docker_ok(), reason="needs a running Docker engine and kind")

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


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("kind")
    config, kubeconfig = work / "kind.yaml", work / "kubeconfig"
    config.write_text(KIND_CONFIG)
    subprocess.run(
        [
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
            "120s",
        ],
        check=True,
    )
    try:
        kubectl(kubeconfig, "apply", "-f", str(ROOT / "crds"))
        kubectl(
            kubeconfig,
            "wait",
            "--for=condition=Established",
            "crd/edgeworkloads.continuum.dev",
            "--timeout=60s",
        )
        yield kubeconfig
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False)


@pytest.fixture(scope="module")
def operator(kind_cluster: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "continuum",
            "run",
            "--kubeconfig",
            str(kind_cluster),
            "--metrics-port",
            "0",
            "--liveness-port",
            "0",
            "--resync-seconds",
            "2",
        ]
    )
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


def wait(predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(1)
    raise AssertionError("timed out")


@requires_kind
def test_pools_label_nodes_and_workloads_are_placed(
    kind_cluster: Path, operator: subprocess.Popen[bytes]
) -> None:
    pools = [
        doc
        for doc in (EXAMPLES / "cluster" / "pools.yaml").read_text().split("---")
        if "munich-line" in doc or "mec-frankfurt" in doc
    ]
    kubectl(kind_cluster, "apply", "-f", "-", input="---".join(pools))
    kubectl(kind_cluster, "create", "namespace", "logistics")
    kubectl(kind_cluster, "apply", "-f", str(EXAMPLES / "workloads" / "agv-navigation.yaml"))

    def labelled() -> bool:
        nodes = json.loads(kubectl(kind_cluster, "get", "nodes", "-o", "json"))["items"]
        return sum(1 for n in nodes if "continuum.dev/pool" in n["metadata"].get("labels", {})) == 2

    wait(labelled)

    def placed() -> dict | None:
        obj = json.loads(
            kubectl(kind_cluster, "get", "edgeworkload", "agv-planner-edge", "-n", "logistics", "-o", "json")
        )
        return obj if (obj.get("status") or {}).get("phase") == "Placed" else None

    status = wait(placed)["status"]
    assert status["placement"]["pool"] == "munich-line"
    dep = json.loads(
        kubectl(kind_cluster, "get", "deployment", "agv-planner-edge", "-n", "logistics", "-o", "json")
    )
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"continuum.dev/pool": "munich-line"}
    out = kubectl(kind_cluster, "get", "edgeworkloads", "-A")
    assert "TIER" in out and "munich-line" in out  # printer columns served by a real API server
