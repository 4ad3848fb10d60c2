"""EdgeWorkloadSet on the real control plane, with the operator running as the chart's ServiceAccount.

The chart's RBAC is what the operator has here (a TokenRequest token of its ServiceAccount), so creating,
patching and deleting the children, reading the sets and writing their status are checked for real; the
real garbage collector deletes the children with the set (owner references), the real scheduler binds
their worker pods onto the chosen pools' kwok nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import KWOK_FAKE, Cluster, Operators, install_chart, wait_until

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(900),
]  # the first module of the session builds its venv

SITES = 20
NS = "fleet-test"
CHAIN = "fleet.example.com/chain"


def site_objects(count: int) -> list[dict[str, Any]]:
    """One kwok node and one near-edge pool per store, every pool labelled with the chain."""
    out: list[dict[str, Any]] = []
    for i in range(count):
        site = f"store-{i:03d}"
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"fleet-{site}",
                    "annotations": dict(KWOK_FAKE),
                    "labels": {"kubernetes.io/hostname": f"fleet-{site}", "fleet.example.com/store": site},
                },
                "status": {
                    "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                    "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                },
            }
        )
        out.append(
            {
                "apiVersion": "continuum.dev/v1alpha1",
                "kind": "EdgeNodePool",
                "metadata": {"name": f"fleet-{site}", "labels": {CHAIN: "test"}},
                "spec": {
                    "tier": "near-edge",
                    "site": site,
                    "nodeSelector": {"matchLabels": {"fleet.example.com/store": site}},
                    "network": {"rttMs": {site: 1}},
                },
            }
        )
    return out


THE_SET = {
    "apiVersion": "continuum.dev/v1alpha1",
    "kind": "EdgeWorkloadSet",
    "metadata": {"name": "footfall", "namespace": NS},
    "spec": {
        "sites": {"poolSelector": {"matchLabels": {CHAIN: "test"}}},
        "template": {
            "requirements": {
                "latencyBudgetMs": 30,
                "resources": {"cpu": "100m", "memory": "128Mi"},
                "inferenceMs": {"near-edge": 5},
            },
            "tiers": {"allowed": ["near-edge"]},
            "model": {"name": "footfall", "uri": "http://models/footfall/4/model.onnx", "version": "4"},
        },
        "overrides": [{"sites": ["store-000"], "patch": {"replicas": 2}}],
    },
}


@pytest.fixture(scope="module")
def fleet_operator(cluster: Cluster, operator_venv) -> Iterator[Operators]:
    install_chart(cluster)
    ops = Operators(cluster, operator_venv)
    try:
        yield ops
    finally:
        ops.stop_all()
        cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)
        cluster.kubectl("delete", "edgenodepools", "-l", f"{CHAIN}=test", "--ignore-not-found", check=False)
        names = [f"fleet-store-{i:03d}" for i in range(SITES)]
        # by name too: the test takes one pool out of the selector by removing its label
        cluster.kubectl("delete", "edgenodepools", *names, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "nodes", *names, "--ignore-not-found", check=False)


def children(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in cluster.get("ew", "-n", NS)["items"]}


def test_a_set_fans_out_to_placed_workloads_with_the_charts_rbac(
    cluster: Cluster, fleet_operator: Operators
) -> None:
    op = fleet_operator.start("fleet-operator")
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
    cluster.apply(site_objects(SITES))
    cluster.apply([THE_SET])

    seen: dict[str, Any] = {}

    def all_placed() -> bool:
        got = children(cluster)
        seen.clear()
        seen.update(
            {
                n: ((o.get("status") or {}).get("phase"), (o.get("status") or {}).get("message"))
                for n, o in got.items()
            }
        )
        return len(got) == SITES and all(phase == "Placed" for phase, _ in seen.values())

    try:
        wait_until(all_placed, timeout=300, what=f"{SITES} children Placed")
    except AssertionError:
        not_placed = {n: v for n, v in seen.items() if v[0] != "Placed"}
        the_set = cluster.get("ews", "footfall", "-n", NS)
        log = [line for line in op.text().splitlines() if " DEBUG " not in line and "succeeded." not in line]
        raise AssertionError(
            f"{len(seen)} children, not Placed: {not_placed}\nset status: {the_set.get('status')}\n"
            + "\n".join(log[-60:])
        ) from None
    got = children(cluster)
    the_set = cluster.get("ews", "footfall", "-n", NS)
    for name, child in got.items():
        site = name.removeprefix("footfall-")
        assert child["spec"]["source"]["site"] == site
        assert child["status"]["placement"]["pool"] == f"fleet-{site}"
        ref = child["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["uid"], ref["controller"]) == (
            "EdgeWorkloadSet",
            the_set["metadata"]["uid"],
            True,
        )
    assert got["footfall-store-000"]["spec"]["replicas"] == 2

    # the real scheduler binds every worker pod onto its store's node; kwok runs them
    def running() -> bool:
        pods = [
            p
            for p in cluster.get("pods", "-n", NS)["items"]
            if (p.get("status") or {}).get("phase") == "Running"
        ]
        return len(pods) == SITES + 1 and all(
            p["spec"]["nodeName"]
            == f"fleet-{p['metadata']['labels']['continuum.dev/workload'].removeprefix('footfall-')}"
            for p in pods
        )

    wait_until(running, timeout=120, what="every worker pod Running on its store's node")
    status = wait_until(
        lambda: (
            (s := cluster.get("ews", "footfall", "-n", NS).get("status") or {}).get("placed") == SITES and s
        ),
        timeout=60,
        what="the set's rollup",
    )
    assert status["sites"] == SITES and status["versions"] == [
        {"version": "4", "sites": SITES, "placed": SITES, "ready": status["ready"]}
    ]
    table = cluster.kubectl("get", "ews", "-n", NS)
    assert table.split("\n")[0].split() == [
        "NAME",
        "SITES",
        "PLACED",
        "READY",
        "VERSION",
        "ROLLOUT",
        "STABLE",
        "AGE",
    ]
    assert table.split("\n")[1].split()[:3] == ["footfall", str(SITES), str(SITES)]

    # a store leaves the chain: its child goes; the others stay as they are
    uid_001 = got["footfall-store-001"]["metadata"]["uid"]
    cluster.kubectl("label", "edgenodepool", "fleet-store-000", f"{CHAIN}-")
    wait_until(
        lambda: "footfall-store-000" not in children(cluster), timeout=60, what="store-000's child deleted"
    )
    assert children(cluster)["footfall-store-001"]["metadata"]["uid"] == uid_001
    assert op.metric("continuum_api_errors_total", status="403") == 0, op.text()[-3000:]

    # the set deleted: the garbage collector removes every child (owner references), and their workers
    cluster.kubectl("delete", "ews", "footfall", "-n", NS)
    wait_until(lambda: not children(cluster), timeout=90, what="children garbage-collected")
    assert op.metric("continuum_api_errors_total", status="403") == 0, op.text()[-3000:]
