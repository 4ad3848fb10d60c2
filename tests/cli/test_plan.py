"""`continuum plan`: the GitOps pre-merge check. Runs the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from continuum.cli import main
from continuum.plan import plan_result

from tests.conftest import EXAMPLES

CLUSTER = str(EXAMPLES / "cluster")
WORKLOADS = str(EXAMPLES / "workloads")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_examples_json_contract():
    proc = run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS, "-o", "json")
    assert proc.returncode == 2, proc.stderr  # quality-assistant cannot fit
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"placements", "summary"}
    assert doc["schemaVersion"] == 2
    assert doc["summary"] == {
        "pools": 8,
        "workloads": 8,
        "placed": 7,
        "unschedulable": 1,
        "hourlyCost": pytest.approx(
            sum(p["hourlyCost"] for p in doc["placements"] if p["phase"] == "Placed")
        ),
    }
    by_name = {p["name"]: p for p in doc["placements"]}
    for row in doc["placements"]:
        assert set(row) >= {
            "namespace",
            "name",
            "phase",
            "pool",
            "tier",
            "site",
            "estimatedLatencyMs",
            "wanMbps",
            "hourlyCost",
            "candidates",
            "hint",
        }
        assert len(row["candidates"]) == 8  # every pool, with a verdict (at most 50 pools: all shown)
        assert row["candidatesOmitted"] == 0
        counts: dict[str, int] = {}
        for cand in row["candidates"]:
            for code in {r["code"] for r in cand["reasons"]}:
                counts[code] = counts.get(code, 0) + 1
        assert row["rejectedByReason"] == counts
        for cand in row["candidates"]:
            assert set(cand) >= {"pool", "feasible", "reasons"}
            assert cand["feasible"] == (not cand["reasons"])
            for reason in cand["reasons"]:
                assert set(reason) == {"code", "message"}
    expected = {
        "line-defect-inspection": ("munich-line", "near-edge"),
        "bedside-vitals": ("vienna-ward", "near-edge"),
        "agv-planner-mec": ("mec-frankfurt", "regional-mec"),
        "agv-planner-edge": ("munich-line", "near-edge"),
        "camera-anomaly": ("munich-cameras", "device"),
        "fleet-analytics": ("cloud-virginia", "cloud"),
        "store-footfall": ("mec-frankfurt", "regional-mec"),
    }
    for name, (pool, tier) in expected.items():
        assert (by_name[name]["pool"], by_name[name]["tier"]) == (pool, tier), name
    stuck = by_name["quality-assistant"]
    assert stuck["phase"] == "Unschedulable" and stuck["pool"] is None
    assert "raise requirements.latencyBudgetMs to 21 ms" in stuck["hint"]
    mec = next(c for c in stuck["candidates"] if c["pool"] == "mec-frankfurt")
    assert mec["reasons"] == [
        {"code": "Latency", "message": "latency 21.0 ms > budget 10 ms (rtt 9 + inference 12)"}
    ]
    footfall = {c["pool"]: {r["code"] for r in c["reasons"]} for c in by_name["store-footfall"]["candidates"]}
    assert {"Residency", "Privacy"} <= footfall["cloud-virginia"]
    vitals = {c["pool"]: {r["code"] for r in c["reasons"]} for c in by_name["bedside-vitals"]["candidates"]}
    assert "Privacy" in vitals["mec-frankfurt"]


def test_all_placed_exits_zero(tmp_path):
    for src in Path(WORKLOADS).glob("*.yaml"):
        if src.name != "quality-llm.yaml":
            (tmp_path / src.name).write_text(src.read_text())
    proc = run_cli("plan", "-f", CLUSTER, "-f", str(tmp_path), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["unschedulable"] == 0


def test_invalid_input_names_file_document_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            apiVersion: continuum.dev/v1alpha1
            kind: EdgeWorkload
            metadata: {name: ok, namespace: ns}
            spec:
              source: {site: plant-munich}
              requirements: {latencyBudgetMs: 5}
              model: {name: m, uri: file:///m.onnx}
            ---
            apiVersion: continuum.dev/v1alpha1
            kind: EdgeWorkload
            metadata: {name: broken, namespace: ns}
            spec:
              source: {site: plant-munich}
              requirements: {latencyBudgetMs: -3, privacy: top-secret}
              model: {name: m, uri: file:///m.onnx}
            """
        )
    )
    proc = run_cli("plan", "-f", CLUSTER, "-f", str(bad))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert f"{bad}: document 2 (EdgeWorkload ns/broken): spec.requirements.latencyBudgetMs" in proc.stderr
    assert "spec.requirements.privacy" in proc.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x}\n", "kind 'Deployment' is not one of"),
        ("a: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_other_invalid_documents(tmp_path, capsys, content, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    assert main(["plan", "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert needle in err and str(bad) in err


def test_missing_path_is_an_error(capsys):
    assert main(["plan", "-f", "/nonexistent/path.yaml"]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_duplicate_objects_are_rejected(tmp_path, capsys):
    text = (EXAMPLES / "workloads" / "bedside-vitals.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    assert main(["plan", "-f", CLUSTER, "-f", str(tmp_path)]) == 1
    assert "duplicate" in capsys.readouterr().err


def test_yaml_and_table_outputs(capsys):
    assert main(["plan", "-f", CLUSTER, "-f", WORKLOADS, "-o", "yaml"]) == 2
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["summary"]["placed"] == 7
    assert main(["plan", "-f", CLUSTER, "-f", WORKLOADS, "--explain"]) == 2
    out = capsys.readouterr().out
    assert "manufacturing/quality-assistant" in out and "hint:" in out and "7/8 placed" in out


def test_plan_is_deterministic_and_order_independent(tmp_path):
    first = plan_result([CLUSTER, WORKLOADS])
    docs = []
    for path in sorted(Path(WORKLOADS).glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    (tmp_path / "reversed.yaml").write_text(yaml.safe_dump_all(list(reversed(docs))))
    second = plan_result([CLUSTER, str(tmp_path)])
    key = lambda p: (p["namespace"], p["name"])  # noqa: E731
    assert sorted(first["placements"], key=key) == sorted(second["placements"], key=key)


def test_node_list_and_single_nodes_are_both_read(tmp_path):
    nodes = yaml.safe_load((EXAMPLES / "cluster" / "nodes.yaml").read_text())["items"]
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump_all(nodes))
    (tmp_path / "pools.yaml").write_text((EXAMPLES / "cluster" / "pools.yaml").read_text())
    assert plan_result([str(tmp_path), WORKLOADS])["summary"] == plan_result([CLUSTER, WORKLOADS])["summary"]


def test_node_in_two_pools_is_reported(tmp_path):
    (tmp_path / "nodes.yaml").write_text((EXAMPLES / "cluster" / "nodes.yaml").read_text())
    pools = (EXAMPLES / "cluster" / "pools.yaml").read_text()
    extra = textwrap.dedent(
        """\
        ---
        apiVersion: continuum.dev/v1alpha1
        kind: EdgeNodePool
        metadata: {name: all-munich}
        spec:
          tier: near-edge
          site: plant-munich
          nodeSelector: {matchLabels: {edge.example.com/site: plant-munich}}
        """
    )
    (tmp_path / "pools.yaml").write_text(pools + extra)
    result = plan_result([str(tmp_path), WORKLOADS])
    assert "munich-ipc-1" in result["conflicts"]
    assert set(result["conflicts"]["munich-ipc-1"]) == {"all-munich", "munich-line"}


def _pod(name: str, node: str | None, phase: str = "Running", labels=None, **requests: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "other", "labels": labels or {}},
        "spec": {
            **({"nodeName": node} if node else {}),
            "containers": [{"name": "c", "resources": {"requests": requests}}],
        },
        "status": {"phase": phase},
    }


def _line_defect(result):
    return next(p for p in result["placements"] if p["name"] == "line-defect-inspection")


def test_pods_take_capacity_like_the_operator_says(tmp_path):
    assert _line_defect(plan_result([CLUSTER, WORKLOADS]))["pool"] == "munich-line"
    gpu = {"nvidia.com/gpu": "1"}
    running = [_pod("cuda-a", "munich-ipc-1", **gpu), _pod("cuda-b", "munich-ipc-2", **gpu)]
    # as `kubectl get pods -A -o yaml` prints them: a List whose items carry kind Pod
    (tmp_path / "pods.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": running})
    )
    moved = _line_defect(plan_result([CLUSTER, WORKLOADS, str(tmp_path)]))
    assert moved["pool"] == "mec-frankfurt"
    line = next(c for c in moved["candidates"] if c["pool"] == "munich-line")
    assert [r["code"] for r in line["reasons"]] == ["Capacity"]
    # finished, unbound and Continuum's own worker pods hold nothing
    ignored = [
        _pod("done", "munich-ipc-1", "Succeeded", **gpu),
        _pod("crashed", "munich-ipc-2", "Failed", **gpu),
        _pod("pending", None, "Pending", **gpu),
        _pod("ours", "munich-ipc-1", labels={"continuum.dev/workload": "x"}, **gpu),
    ]
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump_all(ignored))
    assert _line_defect(plan_result([CLUSTER, WORKLOADS, str(tmp_path)]))["pool"] == "munich-line"


def test_bad_pod_request_names_the_field(tmp_path, capsys):
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump(_pod("bad", "munich-ipc-1", cpu="lots")))
    assert main(["plan", "-f", CLUSTER, "-f", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{tmp_path / 'pods.yaml'}: document 1 (Pod other/bad): spec.containers[0].resources.requests.cpu"
        in err
    )


def test_tainted_nodes_are_not_capacity(tmp_path):
    doc = yaml.safe_load((EXAMPLES / "cluster" / "nodes.yaml").read_text())
    for node in doc["items"]:
        if node["metadata"]["name"] in ("munich-ipc-1", "munich-ipc-2"):
            node["spec"] = {"taints": [{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]}
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "pools.yaml").write_text((EXAMPLES / "cluster" / "pools.yaml").read_text())
    moved = _line_defect(plan_result([str(tmp_path), WORKLOADS]))
    assert moved["pool"] == "mec-frankfurt"
    line = next(c for c in moved["candidates"] if c["pool"] == "munich-line")
    assert line["reasons"][0]["code"] == "NoNodes"
    assert "2 tainted (node.kubernetes.io/disk-pressure:NoSchedule)" in line["reasons"][0]["message"]
    # PreferNoSchedule is only a preference: the nodes still count
    for node in doc["items"]:
        if node["metadata"]["name"] in ("munich-ipc-1", "munich-ipc-2"):
            node["spec"]["taints"][0]["effect"] = "PreferNoSchedule"
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(doc))
    assert _line_defect(plan_result([str(tmp_path), WORKLOADS]))["pool"] == "munich-line"


def test_plan_and_the_operator_see_the_same_capacity(tmp_path):
    """The same nodes, pods and pools through `continuum plan` and through the operator's watch cache."""
    pytest.importorskip("kopf")
    from continuum.api.loader import load_manifests
    from continuum.controller.cache import ClusterCache
    from continuum.plan import snapshot_of

    nodes = yaml.safe_load((EXAMPLES / "cluster" / "nodes.yaml").read_text())["items"]
    nodes[2]["spec"] = {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}  # munich-ipc-1
    nodes[3]["spec"] = {"unschedulable": True}
    pods = [
        _pod("a", "mec-fra-1", cpu="3", memory="5Gi"),
        _pod("b", "mec-fra-1", cpu="500m"),
        _pod("c", "munich-ipc-2", cpu="2", memory="1Gi", **{"nvidia.com/gpu": "1"}),
        _pod("d", "mec-fra-2", "Succeeded", cpu="8"),
        _pod("e", "mec-fra-2", labels={"continuum.dev/workload": "w"}, cpu="8"),
        _pod("f", None, "Pending", cpu="8"),
        _pod("g", "cloud-va-1", cpu="1", memory="2Gi"),
    ]
    pods[1]["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump_all(nodes))
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump_all(pods))
    (tmp_path / "pools.yaml").write_text((EXAMPLES / "cluster" / "pools.yaml").read_text())
    manifests = load_manifests([str(tmp_path)])
    planned = snapshot_of(manifests)

    cache = ClusterCache()  # the operator's watch cache, fed the same objects as watch events
    pools = [d for d in yaml.safe_load_all((tmp_path / "pools.yaml").read_text()) if d]
    for kind, objs in (("Node", nodes), ("Pod", pods), ("EdgeNodePool", pools)):
        for obj in objs:
            cache.observe_object(kind, "ADDED", obj)
    operated = cache.snapshot()

    def picture(snapshot):
        return {p.name: (p.free, [(n.name, n.usable, n.free) for n in p.nodes]) for p in snapshot.pools}

    assert picture(planned) == picture(operated)
    mec = planned.pool("mec-frankfurt")
    assert mec is not None
    assert next(n for n in mec.nodes if n.name == "mec-fra-1").requested.cpu_millis == 5000  # 3 + max(0.5, 2)
    line = planned.pool("munich-line")
    assert line is not None and line.usable_nodes == ()
    assert [n.unusable_because for n in line.nodes] == ["tainted maintenance:NoExecute", "cordoned"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """60 pools (more than SHOW_ALL_POOLS), 40 workloads, with nodes down, tainted, pods running."""
    from bench.instances import manifests

    folder = tmp_path_factory.mktemp("fleet")
    (folder / "fleet.yaml").write_text(yaml.safe_dump_all(manifests(40, 60, seed=4, variety=True, load=1.3)))
    return str(folder)


def test_many_pools_compact_explanations(fleet):
    doc = plan_result([fleet])
    assert doc["schemaVersion"] == 2 and doc["summary"]["pools"] == 60
    full = {(p["namespace"], p["name"]): p for p in plan_result([fleet], all_candidates=True)["placements"]}
    unschedulable = 0
    for row in doc["placements"]:
        ref = full[(row["namespace"], row["name"])]
        assert len(ref["candidates"]) == 60 and ref["candidatesOmitted"] == 0
        assert (row["phase"], row["pool"], row["hint"]) == (ref["phase"], ref["pool"], ref["hint"])
        assert row["rejectedByReason"] == ref["rejectedByReason"]
        assert row["feasiblePools"] == ref["feasiblePools"] == sum(c["feasible"] for c in ref["candidates"])
        assert row["candidatesOmitted"] == 60 - len(row["candidates"]) > 0
        every = {c["pool"]: c for c in ref["candidates"]}
        for cand in row["candidates"]:
            assert cand == every[cand["pool"]]  # a shown pool carries its full verdict and reasons
        if row["pool"]:
            assert row["candidates"][0]["pool"] == row["pool"]
        else:
            unschedulable += 1
        for code in row["rejectedByReason"]:  # every reason code has its nearest misses listed
            assert any(code in {r["code"] for r in c["reasons"]} for c in row["candidates"])
    assert unschedulable > 0


def test_explain_one_workload_lists_every_pool(fleet, capsys):
    doc = plan_result([fleet], explain="ns/w00007")
    rows = {p["name"]: p for p in doc["placements"]}
    assert len(rows["w00007"]["candidates"]) == 60 and rows["w00007"]["candidatesOmitted"] == 0
    assert rows["w00008"]["candidatesOmitted"] > 0
    main(["plan", "-f", fleet, "--explain", "ns/w00007"])
    out = capsys.readouterr().out
    assert "ns/w00007" in out and "more pools not listed" not in out.split("ns/w00007 (")[1]
    main(["plan", "-f", fleet, "--explain"])
    assert "more pools not listed; rejected per reason:" in capsys.readouterr().out
    assert main(["plan", "-f", fleet, "--explain", "ns/nope"]) == 1
    assert "--explain ns/nope: no EdgeWorkload" in capsys.readouterr().err


def test_json_comes_from_the_models(fleet, capsys):
    code = main(["plan", "-f", fleet, "-o", "json", "--optimize-seconds", "0"])  # plan_result's default
    printed = json.loads(capsys.readouterr().out)
    assert code == 2
    assert printed == plan_result([fleet])


def test_plan_says_whether_the_batch_plan_is_proven_optimal():
    proc = run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS, "-o", "json")
    doc = json.loads(proc.stdout)  # HiGHS's banner must not reach stdout
    opt = doc["optimality"]
    assert opt["method"] == "highs" and opt["proven"] is True
    assert opt["placedBound"] == doc["summary"]["placed"] and opt["costGap"] == 0.0
    table = run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS)
    assert "optimality: proven optimal (HiGHS" in table.stdout
    off = json.loads(
        run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS, "-o", "json", "--optimize-seconds", "0").stdout
    )
    assert off["optimality"]["method"] == "heuristic" and off["optimality"]["proven"] is False
    assert off["summary"] == doc["summary"]
