"""The operator, installed and run as shipped, on kube-apiserver + kube-scheduler + controller-manager + kwok.

The tests of this module share one cluster and one operator and run in file order: install, place the
examples, fail a node, fail back, capacity appearing, SIGKILL mid-burst, HA, upgrade/uninstall.
Where the real scheduler and our capacity model disagree, our model is the bug.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    Cluster,
    Operators,
    example_nodes,
    fake_nodes,
    install_chart,
    load_docs,
    wait_until,
)
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.cluster

POOL_LABEL = "continuum.dev/pool"
SETTLED = ("Placed", "Unschedulable", "Invalid")


def workloads_docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((EXAMPLES / "workloads").glob("*.yaml")):
        out.extend(load_docs(path))
    return out


def persistent_volumes(count: int, size: str = "20Gi", storage_class: str = "local-path") -> list[dict[str, Any]]:
    """Pre-provisioned volumes for the state StatefulSets' claims: no provisioner runs here, so the class
    (k3s's `local-path`, which the examples name) has none and binds when the first pod is scheduled."""
    return [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": storage_class},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        }
    ] + [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"state-pv-{i}"},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": storage_class,
                "hostPath": {"path": f"/tmp/continuum-pv-{i}"},
            },
        }
        for i in range(count)
    ]


def ews(cluster: Cluster) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in cluster.get("ew", "-A")["items"]}


def phase(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def condition(obj: dict[str, Any], kind: str) -> str | None:
    return next(
        (c["status"] for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None
    )


def pods_by_node(cluster: Cluster) -> list[dict[str, Any]]:
    """Every pod in the examples' namespaces (other modules of the session use namespaces of their own)."""
    namespaces = {d["metadata"]["namespace"] for d in workloads_docs()}
    return [p for p in cluster.get("pods", "-A")["items"] if p["metadata"]["namespace"] in namespaces]


def node_pools(cluster: Cluster) -> dict[str, str | None]:
    return {n["metadata"]["name"]: n["metadata"].get("labels", {}).get(POOL_LABEL) for n in cluster.get("nodes")["items"]}


class PodTimeline:
    """Watches pods with `kubectl get -w` and keeps (time, type, namespace/name, node, phase, deleting)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.rows: list[tuple[float, str, str, str | None, str | None, bool]] = []
        self.proc = subprocess.Popen(
            [cluster.kubectl_bin, "--kubeconfig", str(cluster.kubeconfig), "get", "pods", "-n", namespace,
             "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:  # one JSON watch event per line
            try:
                event = json.loads(line)
            except ValueError:
                continue
            pod = event["object"]
            self.rows.append((
                time.monotonic(), event["type"], pod["metadata"]["name"], pod["spec"].get("nodeName"),
                (pod.get("status") or {}).get("phase"), bool(pod["metadata"].get("deletionTimestamp")),
            ))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def operators(cluster: Cluster, operator_venv) -> Iterator[Operators]:
    ops = Operators(cluster, operator_venv)
    yield ops
    ops.stop_all()


@pytest.fixture(scope="module")
def placed(cluster: Cluster, operators: Operators) -> Cluster:
    """Chart installed, example nodes (kwok) and pools applied, operator running, example workloads placed."""
    install_chart(cluster)
    cluster.apply(example_nodes())
    cluster.apply(load_docs(EXAMPLES / "cluster" / "pools.yaml"))
    cluster.apply(persistent_volumes(12))
    operators.start("operator-0")
    namespaces = sorted({d["metadata"]["namespace"] for d in workloads_docs()})
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in namespaces])
    cluster.apply(workloads_docs())
    total = len(workloads_docs())

    def settled() -> bool:
        items = ews(cluster)
        return len(items) == total and all(phase(o) in SETTLED for o in items.values())

    wait_until(settled, timeout=90, what="every example workload settled")
    return cluster


def test_crds_are_accepted_and_printer_columns_show(placed: Cluster) -> None:
    for crd in ("edgeworkloads.continuum.dev", "edgenodepools.continuum.dev"):
        placed.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
    header = placed.kubectl("get", "ew", "-A").splitlines()[0].split()
    for column in ("TIER", "POOL", "LATENCY", "PHASE"):
        assert column in header, header
    assert "TIER" in placed.kubectl("get", "enp").splitlines()[0]


def test_pools_label_and_taint_their_nodes(placed: Cluster) -> None:
    mine = {d["metadata"]["name"] for d in load_docs(EXAMPLES / "cluster" / "pools.yaml")}
    pools = {p["metadata"]["name"]: p for p in placed.get("enp")["items"] if p["metadata"]["name"] in mine}
    assert pools.keys() == mine
    nodes = {n["metadata"]["name"]: n for n in placed.get("nodes")["items"]}
    for name, pool in pools.items():
        members = [n for n in nodes.values() if n["metadata"]["labels"].get(POOL_LABEL) == name]
        assert members, f"pool {name} labelled no node"
        want = pool["spec"].get("taints")
        for node in members:
            taints = {(t["key"], t.get("value"), t["effect"]) for t in node["spec"].get("taints", [])}
            for taint in want or []:
                assert (taint["key"], taint.get("value"), taint["effect"]) in taints, (name, node["metadata"]["name"])


def test_real_scheduler_binds_every_worker_pod_to_its_pool(placed: Cluster) -> None:
    items = ews(placed)
    placed_ones = {k: o for k, o in items.items() if phase(o) == "Placed"}
    assert len(placed_ones) >= 6, {k: phase(o) for k, o in items.items()}
    pools = node_pools(placed)
    pool_taints = {
        n["metadata"]["labels"][POOL_LABEL]: n["spec"].get("taints", [])
        for n in placed.get("nodes")["items"] if POOL_LABEL in n["metadata"].get("labels", {})
    }

    def all_running() -> bool:
        pods = pods_by_node(placed)
        return all(p["status"].get("phase") == "Running" for p in pods) and len(pods) >= len(placed_ones)

    wait_until(all_running, timeout=90, what="every worker pod Running (kwok)")
    by_owner: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pod in pods_by_node(placed):
        app = pod["metadata"]["labels"].get("app.kubernetes.io/instance") or pod["metadata"]["labels"].get(
            "continuum.dev/workload"
        )
        by_owner.setdefault((pod["metadata"]["namespace"], app), []).append(pod)
    for key, obj in placed_ones.items():
        pool = obj["status"]["placement"]["pool"]
        pods = by_owner.get(key, [])
        assert len(pods) == obj["spec"].get("replicas", 1), (key, [p["metadata"]["name"] for p in pods])
        for pod in pods:
            assert pools[pod["spec"]["nodeName"]] == pool, (key, pod["spec"]["nodeName"], pool)
        # the rendered object pins the pool and tolerates exactly the pool's taints
        kind = "statefulsets" if (obj["spec"].get("state") or {}).get("enabled") else "deployments"
        rendered = placed.get(kind, "-n", key[0], "-l", f"continuum.dev/workload={key[1]}")["items"]
        assert len(rendered) == 1, (key, kind, [r["metadata"]["name"] for r in rendered])
        spec = rendered[0]["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {POOL_LABEL: pool}
        want = {(t["key"], t.get("value"), t["effect"]) for t in pool_taints[pool]}
        have = {(t["key"], t.get("value"), t["effect"]) for t in spec.get("tolerations", [])}
        assert want <= have, (key, want, have)
        placed.kubectl("wait", "--for=condition=Placed", f"ew/{key[1]}", "-n", key[0], "--timeout=30s")
        wait_until(lambda k=key: condition(ews(placed)[k], "Ready") == "True", timeout=60,
                   what=f"{key} Ready")
    # no pod of ours on a node outside its pool, and none anywhere unexpected
    assert sum(len(v) for v in by_owner.values()) == sum(o["spec"].get("replicas", 1) for o in placed_ones.values())


def test_events_are_recorded(placed: Cluster) -> None:
    events = placed.get("events", "-A", "--field-selector", "involvedObject.kind=EdgeWorkload")["items"]
    reasons = {(e["involvedObject"]["name"], e["reason"]) for e in events}
    for (_ns, name), obj in ews(placed).items():
        want = {"Placed": "Placed", "Unschedulable": "Unschedulable"}.get(phase(obj) or "")
        if want:
            assert (name, want) in reasons, (name, sorted(r for r in reasons if r[0] == name))


def test_node_failure_moves_make_before_break_then_fails_back(placed: Cluster) -> None:
    """munich-ipc-1 (the GPU of munich-line) stops heartbeating: line-defect-inspection moves to the MEC,
    its new pod Running before the old one is deleted; when the node returns it fails back."""
    ns, name, node = "manufacturing", "line-defect-inspection", "munich-ipc-1"
    before = ews(placed)[(ns, name)]["status"]["placement"]["pool"]
    assert before == "munich-line"
    timeline = PodTimeline(placed, ns)
    try:
        # kwok stops acting as the kubelet; the node lifecycle controller marks it Unknown and taints it.
        placed.partition_node(node)
        moved = wait_until(
            lambda: (o := ews(placed)[(ns, name)]).get("status", {}).get("placement", {}).get("pool") != before and o,
            timeout=90, what=f"{name} moved off {before}",
        )
        new_pool = moved["status"]["placement"]["pool"]
        assert new_pool == "mec-frankfurt"
        pools = node_pools(placed)

        def old_pods_deleted() -> bool:
            # The old pod sits on a node nobody can reach: its deletion is requested (deletionTimestamp) but
            # stays Terminating until the node returns (no kubelet confirms it) — real Kubernetes semantics.
            pods = [p for p in placed.get("pods", "-n", ns)["items"] if p["metadata"]["name"].startswith(name)]
            new_running = [p for p in pods if pools.get(p["spec"].get("nodeName") or "") == new_pool
                           and p["status"].get("phase") == "Running"]
            old = [p for p in pods if pools.get(p["spec"].get("nodeName") or "") == before]
            return bool(new_running) and all(p["metadata"].get("deletionTimestamp") for p in old)

        wait_until(old_pods_deleted, timeout=90, what="new replica Running on the MEC, old one being deleted")
        time.sleep(1)
    finally:
        timeline.close()
    rows = [r for r in timeline.rows if r[2].startswith(name)]
    new_running = min((t for t, _, _, n, ph, _ in rows if pools.get(n or "") == new_pool and ph == "Running"),
                      default=None)
    old_deleted = min((t for t, typ, _, n, _, deleting in rows
                       if pools.get(n or "") == before and (deleting or typ == "DELETED")), default=None)
    assert new_running is not None, rows
    if old_deleted is not None:
        assert new_running <= old_deleted, f"old pod deleted before the new one ran: {rows}"
    events = placed.get("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    assert "Replaced" in {e["reason"] for e in events}

    # the node comes back: the old pod is finally gone, and after the stabilization window the workload fails
    # back to the preferred pool
    placed.heal_node(node)
    wait_until(
        lambda: not [p for p in placed.get("pods", "-n", ns)["items"]
                     if p["metadata"]["name"].startswith(name) and p["spec"].get("nodeName") == node
                     and p["metadata"].get("deletionTimestamp")],
        timeout=60, what="the old pod removed once its node is back",
    )
    wait_until(
        lambda: ews(placed)[(ns, name)]["status"]["placement"]["pool"] == before,
        timeout=120, what=f"{name} failing back to {before}",
    )


def test_unschedulable_until_capacity_appears(placed: Cluster) -> None:
    """A workload no pool can host stays Unschedulable with a hint, and is placed when a node joins."""
    ns = "capacity"
    placed.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    big = {
        "apiVersion": "continuum.dev/v1alpha1", "kind": "EdgeWorkload",
        "metadata": {"name": "big-batch", "namespace": ns},
        "spec": {
            "source": {"site": "plant-munich"},
            "requirements": {"latencyBudgetMs": 500, "resources": {"cpu": "200", "memory": "64Gi"}},
            "tiers": {"allowed": ["cloud"]},
            "model": {"name": "big", "uri": "http://models/big.onnx", "version": "1"},
        },
    }
    placed.apply([big])
    obj = wait_until(lambda: phase(ews(placed)[(ns, "big-batch")]) == "Unschedulable" and ews(placed)[(ns, "big-batch")],
                     timeout=60, what="big-batch Unschedulable")
    assert obj["status"].get("hint")
    # a large node joins the Frankfurt cloud pool (its labels select it)
    pool = next(p for p in placed.get("enp")["items"] if p["metadata"]["name"] == "cloud-frankfurt")
    labels = pool["spec"]["nodeSelector"]["matchLabels"]
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "fra-cloud-big", "labels": {"kubernetes.io/hostname": "fra-cloud-big", **labels}},
        "spec": {},
        "status": {"allocatable": {"cpu": "256", "memory": "512Gi", "pods": "110"},
                   "capacity": {"cpu": "256", "memory": "512Gi", "pods": "110"}},
    }
    placed.apply(fake_nodes([node]))
    wait_until(lambda: phase(ews(placed)[(ns, "big-batch")]) == "Placed", timeout=60, what="big-batch placed")
    wait_until(
        lambda: any(p["spec"].get("nodeName") == "fra-cloud-big" and p["status"].get("phase") == "Running"
                    for p in placed.get("pods", "-n", ns)["items"]),
        timeout=60, what="big-batch's pod Running on the new node",
    )


def test_rbac_refusal_is_reported_then_heals(placed: Cluster) -> None:
    """With the chart's default state.enabled=false the operator may not create Secrets: a state-enabled workload
    says why (Ready=False, ApplyFailed, naming the chart value; an Event) instead of retrying silently, and a
    `helm upgrade --set state.enabled=true` fixes it without restarting the operator."""
    install_chart(placed, "--set", "state.enabled=false")  # the later --set wins over install_chart's own
    ns = "rbac"
    placed.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    doc = yaml.safe_load(yaml.safe_dump(next(d for d in workloads_docs() if d["metadata"]["name"] == "store-footfall")))
    doc["metadata"] = {"name": "rbac-footfall", "namespace": ns}
    placed.apply([doc])

    def refused() -> dict[str, Any] | None:
        obj = ews(placed).get((ns, "rbac-footfall")) or {}
        ready = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)
        return ready if ready and ready.get("reason") == "ApplyFailed" else None

    ready = wait_until(refused, timeout=60, what="Ready=False ApplyFailed")
    assert "403" in ready["message"] and "state.enabled=true" in ready["message"], ready
    events = placed.get("events", "-n", ns, "--field-selector", "involvedObject.name=rbac-footfall")["items"]
    assert "ApplyFailed" in {e["reason"] for e in events}
    install_chart(placed)  # state.enabled=true again: the ClusterRole grants Secrets
    wait_until(lambda: condition(ews(placed)[(ns, "rbac-footfall")], "Ready") == "True", timeout=120,
               what="rbac-footfall Ready once RBAC allows Secrets")


def _rendered_counts(cluster: Cluster, ns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in ("deployments", "services", "statefulsets"):
        out[kind] = len(cluster.get(kind, "-n", ns)["items"])
    return out


def test_sigkill_mid_burst_restart_converges_without_duplicates(placed: Cluster, operators: Operators) -> None:
    ns = "burst"
    placed.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    template = next(d for d in workloads_docs() if d["metadata"]["name"] == "camera-anomaly")
    burst = []
    for i in range(40):
        doc = yaml.safe_load(yaml.safe_dump(template))
        doc["metadata"] = {"name": f"cam-{i:02d}", "namespace": ns}
        doc["spec"]["replicas"] = 1
        burst.append(doc)
    placed.apply(burst)
    op = operators.running["operator-0"]
    wait_until(lambda: len(placed.get("deployments", "-n", ns)["items"]) >= 5, timeout=60,
               what="the burst under way")
    assert op.stop(signal.SIGKILL) == -signal.SIGKILL
    operators.running.pop("operator-0")
    operators.start("operator-0b")

    def done() -> bool:
        items = [o for (n, _), o in ews(placed).items() if n == ns]
        return len(items) == 40 and all(phase(o) in SETTLED for o in items)

    wait_until(done, timeout=120, what="the burst settled after the restart")
    first = {k: o["status"].get("placement", {}).get("pool") for k, o in ews(placed).items() if k[0] == ns}
    counts = _rendered_counts(placed, ns)
    placed_count = sum(1 for p in first.values() if p)
    assert counts["deployments"] == placed_count, counts
    assert counts["services"] == placed_count, counts
    # a second restart decides the same
    operators.running.pop("operator-0b").stop()
    operators.start("operator-0c")
    time.sleep(6)
    again = {k: o["status"].get("placement", {}).get("pool") for k, o in ews(placed).items() if k[0] == ns}
    assert again == first
    assert _rendered_counts(placed, ns) == counts


def test_ha_with_peering_exactly_one_acts_and_fails_over(placed: Cluster, operators: Operators) -> None:
    operators.stop_all()
    install_chart(placed, "--set", "peering.enabled=true")
    _, env = operators.chart_settings()
    assert env.get("CONTINUUM_PEERING")
    # the chart's init container creates the peering object; run it as shipped, as the ServiceAccount
    kubeconfig = placed.token_kubeconfig("continuum", NAMESPACE, placed.tmp / "init.kubeconfig")
    subprocess.run(
        [str(operators.venv / "bin" / "python"), str(CHART / "files" / "peering_init.py")],
        env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)}, check=True, timeout=120,
    )
    a = operators.start("op-a")
    b = operators.start("op-b")

    def both_registered() -> bool:
        # kopf peering: each replica keeps its priority and heartbeat in the peering object's status; the
        # lower-priority one stays (or turns) paused once it sees the other
        status = placed.get("clusterkopfpeering", env["CONTINUUM_PEERING"]).get("status") or {}
        return {"op-a", "op-b"} <= set(status)

    wait_until(both_registered, timeout=60, what="both replicas in the peering object")

    def one_acts() -> tuple[float, float]:
        return a.metric("continuum_operator_acting"), b.metric("continuum_operator_acting")

    def settled() -> bool:
        # exactly one replica acting, and still the same one a few leadership checks (1 s apart) later: a
        # replica that started first acts alone until it sees the other's higher priority, and under load
        # the handover can come seconds after both are registered
        first = one_acts()
        if sorted(first) != [0.0, 1.0]:
            return False
        time.sleep(2.5)
        return one_acts() == first

    wait_until(settled, timeout=60, what="exactly one replica acting (continuum_operator_acting)")
    count = "continuum_reconcile_duration_seconds_count"
    before = {"a": a.metric(count), "b": b.metric(count)}
    ns = "ha"
    placed.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    template = next(d for d in workloads_docs() if d["metadata"]["name"] == "camera-anomaly")
    doc = yaml.safe_load(yaml.safe_dump(template))
    doc["metadata"] = {"name": "ha-cam", "namespace": ns}
    placed.apply([doc])
    # (Placed or Unschedulable: the burst above filled the camera pool; either is a decision)
    wait_until(lambda: phase(ews(placed).get((ns, "ha-cam"), {})) in SETTLED, timeout=60, what="ha-cam decided")
    time.sleep(2)
    acted = {"a": a.metric(count) - before["a"], "b": b.metric(count) - before["b"]}
    # exactly one replica acts: the other one is paused by peering
    assert sum(1 for v in acted.values() if v > 0) == 1, acted
    leader, standby = (a, b) if acted["a"] > 0 else (b, a)
    assert leader.metric("continuum_operator_acting") == 1 and standby.metric("continuum_operator_acting") == 0
    standby_before = standby.metric(count)
    leader.stop(signal.SIGKILL)
    doc2 = yaml.safe_load(yaml.safe_dump(doc))
    doc2["metadata"]["name"] = "ha-cam-2"
    placed.apply([doc2])
    # kopf forgets a peer that stopped heart-beating after its lifetime (60 s): then the standby acts
    wait_until(lambda: phase(ews(placed).get((ns, "ha-cam-2"), {})) in SETTLED, timeout=120,
               what="the standby taking over")
    assert standby.metric(count) > standby_before
    assert standby.metric("continuum_operator_acting") == 1


def test_helm_upgrade_and_uninstall_leave_nothing_hanging(placed: Cluster, operators: Operators) -> None:
    operators.stop_all()
    install_chart(placed, "--set", "operator.graceSeconds=30")
    _, env = operators.chart_settings()
    assert env["CONTINUUM_GRACE_SECONDS"] == "30"
    placed.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "60s")
    # crds.keep (the default): the CRDs and the user's objects stay, nothing waits on a finalizer
    placed.kubectl("get", "crd", "edgeworkloads.continuum.dev", "edgenodepools.continuum.dev")
    remaining = ews(placed)
    assert remaining and all(not o["metadata"].get("finalizers") for o in remaining.values())
    placed.kubectl("delete", "ew", "-n", "burst", "--all", "--timeout=60s")
    assert not [k for k in ews(placed) if k[0] == "burst"]
    # owner references: the rendered Deployments go with their workloads (garbage collector)
    wait_until(lambda: not placed.get("deployments", "-n", "burst")["items"], timeout=60,
               what="garbage collection of the burst's Deployments")
    assert not placed.get("clusterroles", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
