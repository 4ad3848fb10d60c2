"""The operator on a real control plane, as shipped (marker `cluster`).

A session starts its own cluster with scripts/cluster.py (etcd, kube-apiserver with RBAC, controller-manager,
scheduler, kwok), installs charts/continuum with `helm install` (CRDs, RBAC, ServiceAccount; the operator
Deployment at zero replicas because kwok runs no containers), and runs `continuum run` as a local process
from a clean virtualenv that has only `.[operator]` installed, with the environment the chart renders into
the operator container and a token of the chart's ServiceAccount (TokenRequest): the operator has exactly
the chart's RBAC.

Without the binaries (no Go toolchain and no CONTINUUM_K8S_BIN) the suite skips and says why; with
CONTINUUM_REQUIRE_CLUSTER=1 (CI) that is a failure instead.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, find_helm
from tests.conftest import EXAMPLES, ROOT

_spec = importlib.util.spec_from_file_location("continuum_cluster_script", ROOT / "scripts" / "cluster.py")
assert _spec and _spec.loader
cluster_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_script)

NAMESPACE = "continuum-system"
RELEASE = "continuum"
SERVICE_ACCOUNT = "continuum"
KWOK_FAKE = {"kwok.x-k8s.io/node": "fake"}
HELM = find_helm()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
               interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _binaries_or_skip() -> Path:
    required = os.environ.get("CONTINUUM_REQUIRE_CLUSTER") == "1"
    bins = cluster_script.bin_dir()
    have = all((bins / n).exists() for n in cluster_script.ALL)
    if not have and not cluster_script._provided() and shutil.which("go") is None:
        reason = (
            "no control-plane binaries: install Go >= 1.26 (then `make cluster` builds them) or set "
            "CONTINUUM_K8S_BIN to a directory with " + ", ".join(cluster_script.ALL)
        )
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    if not have:
        # `make test` builds them before pytest starts (`make cluster-bin`); building here would take minutes.
        reason = f"control-plane binaries not built yet in {bins}: run `make cluster-bin` first"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    if HELM is None:
        pytest.skip("helm not found: `make helm` fetches it")
    return bins


class Cluster:
    """kubectl/helm against the test cluster, as the admin or as the operator's ServiceAccount."""

    def __init__(self, name: str, kubeconfig: Path, bins: Path, tmp: Path) -> None:
        self.name, self.kubeconfig, self.bins, self.tmp = name, kubeconfig, bins, tmp
        self.kubectl_bin = str(bins / "kubectl")

    def run(self, *cmd: str, input: str | None = None, timeout: float = 120, check: bool = True) -> str:
        proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120,
                kubeconfig: Path | None = None) -> str:
        return self.run(self.kubectl_bin, "--kubeconfig", str(kubeconfig or self.kubeconfig), *args,
                        input=input, check=check, timeout=timeout)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def get_or_none(self, *args: str) -> Any:
        out = self.kubectl("get", *args, "-o", "json", "--ignore-not-found", check=False)
        return json.loads(out) if out.strip() else None

    def apply(self, docs: list[dict[str, Any]] | str, *args: str) -> str:
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
        return self.kubectl("apply", *args, "-f", "-", input=text)

    def helm(self, *args: str, timeout: float = 300) -> str:
        assert HELM is not None
        return self.run(HELM, "--kubeconfig", str(self.kubeconfig), *args, timeout=timeout)

    def partition_node(self, node: str) -> None:
        """Cut a kwok node off: take over its Lease under another holder, so kwok (which renews only leases it
        holds) stops heartbeating it; after the node-monitor grace period (10 s here) the node lifecycle
        controller marks it Unknown and taints it node.kubernetes.io/unreachable — what a kubelet behind a failed
        uplink looks like to the control plane."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        patch = {"spec": {"holderIdentity": "continuum-test-partition", "leaseDurationSeconds": 3600,
                          "renewTime": now}}
        self.kubectl("-n", "kube-node-lease", "patch", "lease", node, "--type", "merge", "-p", json.dumps(patch))

    def heal_node(self, node: str) -> None:
        """End the partition: without the foreign Lease kwok takes the node back at once and it turns Ready."""
        self.kubectl("-n", "kube-node-lease", "delete", "lease", node)

    def token_kubeconfig(self, service_account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, "--duration=4h").strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        if "certificate-authority" in cluster:
            ca = Path(cluster.pop("certificate-authority"))
            if not ca.is_absolute():
                ca = self.kubeconfig.parent / ca
            cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": service_account}}],
            "current-context": "sa",
        }))
        return path


def fake_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes from examples/cluster/nodes.yaml as kwok nodes: the annotation makes kwok act as their kubelet."""
    out = []
    for node in nodes:
        node = json.loads(json.dumps(node))
        node["metadata"].setdefault("annotations", {}).update(KWOK_FAKE)
        status = node.setdefault("status", {})
        status.pop("conditions", None)  # kwok reports the kubelet's conditions itself
        out.append(node)
    return out


def example_nodes() -> list[dict[str, Any]]:
    return fake_nodes(yaml.safe_load((EXAMPLES / "cluster" / "nodes.yaml").read_text())["items"])


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bins = _binaries_or_skip()
    name = f"continuum-pytest-{os.getpid()}"
    try:
        kubeconfig = cluster_script.up(name)
    except (subprocess.CalledProcessError, SystemExit) as exc:
        cluster_script.down(name) if (cluster_script.workdir() / "clusters" / name).exists() else None
        pytest.fail(f"the control plane did not start: {exc}")
    try:
        yield Cluster(name, kubeconfig, bins, tmp_path_factory.mktemp("cluster"))
    finally:
        if os.environ.get("CONTINUUM_KEEP_CLUSTER") == "1":
            print(f"\nkeeping cluster {name}: {kubeconfig}", file=sys.stderr)
        else:
            cluster_script.down(name)


@pytest.fixture(scope="session")
def operator_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with only `.[operator]` installed (what the operator image installs)."""
    venv = tmp_path_factory.mktemp("venv-operator")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, f"{ROOT}[operator]"], capture_output=True, text=True, check=False,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def chart_operator_env(manifest: str) -> tuple[list[str], dict[str, str]]:
    """The operator container's args and literal env, as the chart rendered them."""
    for doc in yaml.safe_load_all(manifest):
        if doc and doc.get("kind") == "Deployment":
            containers = doc["spec"]["template"]["spec"]["containers"]
            container = next(c for c in containers if c["name"] == "operator")
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            return list(container.get("args", [])), env
    raise AssertionError("the chart rendered no operator Deployment")


class OperatorProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, metrics_port: int, liveness_port: int):
        self.proc, self.log, self.metrics_port, self.liveness_port = proc, log, metrics_port, liveness_port

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Operators:
    """`continuum run` processes from the operator-only venv, configured exactly as the chart renders them."""

    def __init__(self, cluster: Cluster, venv: Path) -> None:
        self.cluster, self.venv = cluster, venv
        self.running: dict[str, OperatorProcess] = {}

    def chart_settings(self) -> tuple[list[str], dict[str, str]]:
        return chart_operator_env(self.cluster.helm("get", "manifest", RELEASE, "-n", NAMESPACE))

    def start(self, name: str = "operator-0", extra_env: dict[str, str] | None = None) -> OperatorProcess:
        args, env = self.chart_settings()
        kubeconfig = self.cluster.token_kubeconfig(SERVICE_ACCOUNT, NAMESPACE, self.cluster.tmp / f"{name}.kubeconfig")
        metrics_port, liveness_port = free_port(), free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")},
            **env,
            # Two local processes cannot share the container's ports; everything else is the chart's.
            "CONTINUUM_METRICS_PORT": str(metrics_port),
            "CONTINUUM_LIVENESS_PORT": str(liveness_port),
            "POD_ID": name,
            "KUBECONFIG": str(kubeconfig),
            **(extra_env or {}),
        }
        log = self.cluster.tmp / f"{name}.log"
        _LOGS.append(log)
        proc = subprocess.Popen(
            [str(self.venv / "bin" / "continuum"), "run", *args],
            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=self.cluster.tmp,
        )
        op = OperatorProcess(proc, log, metrics_port, liveness_port)
        self.running[name] = op

        def live() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"operator {name} exited {proc.returncode}:\n{op.text()[-4000:]}")
            try:
                return bool(op.metrics())
            except OSError:
                return False

        wait_until(live, timeout=60, what=f"operator {name} serving /metrics")
        return op

    def stop_all(self) -> None:
        for op in self.running.values():
            op.stop()
        self.running.clear()


def install_chart(cluster: Cluster, *extra: str) -> None:
    cluster.helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "--set", "replicaCount=0",  # kwok runs no containers: the operator runs as a local process
        "--set", "operator.resyncSeconds=2",
        "--set", "operator.graceSeconds=4",
        "--set", "operator.stabilizationSeconds=6",
        "--set", "operator.verbose=true",
        "--set", "state.enabled=true",  # the examples include state-enabled workloads (Secrets for sync tokens)
        *extra,
    )


_LOGS: list[Path] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failure, attach the tail of every operator log of the session (they live in a temp dir)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for log in _LOGS:
            if log.exists():
                report.sections.append((f"operator log {log.name}", log.read_text(errors="replace")[-6000:]))
