"""`continuum plan --baseline`: the pure diff over plan documents, its text and markdown renderings,
and the CLI (exit codes unchanged, bad baselines named)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from continuum.api.loader import load_manifests
from continuum.plan import plan_result
from continuum.plandiff import (
    Demand,
    demands_of,
    diff_plans,
    render_markdown,
    render_text,
    rows_of,
)

from tests.conftest import EXAMPLES, ROOT

CLUSTER = str(EXAMPLES / "cluster")
WORKLOADS = str(EXAMPLES / "workloads")
CHANGE = EXAMPLES / "ci" / "example-change"
# the example pull request: the examples plus the files examples/ci/example-change adds
PR_ARGS = ["-f", CLUSTER, "-f", WORKLOADS, "-f", str(CHANGE)]
# What the example pull request (a MEC site in Munich, a weld-seam inspection workload) changes:
# the new workload takes the Munich line's only GPU, so line-defect-inspection moves to Frankfurt,
# and two MEC workloads move to the cheaper Munich MEC.
EXAMPLE_CHANGE = {
    # the plan after HiGHS (`continuum plan` proves the examples optimal): the weld-seam workload goes to the new
    # Munich MEC, and store-footfall follows it there because it is cheaper; line-defect-inspection keeps its GPU
    "summaryStart": "1 moved, 1 newly placed · placed 7 → 8 of 9 · cost 4.474/h → 5.606/h (+1.132/h)",
    "changes": {
        "retail/store-footfall": ("moved", "mec-frankfurt (regional-mec)", "mec-munich (regional-mec)"),
        "manufacturing/weld-seam-inspection": ("placed", "(absent)", "mec-munich (regional-mec)"),
    },
}


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


# --- a small fixture: one near-edge pool whose capacity moves ---------------------------------------


def _node(name: str, role: str, cpu: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"edge.example.com/role": role}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": str(cpu), "memory": "64Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _pool(name: str, tier: str, site: str, rtt: float, cost: float) -> dict[str, Any]:
    return {
        "apiVersion": "continuum.dev/v1alpha1",
        "kind": "EdgeNodePool",
        "metadata": {"name": name},
        "spec": {
            "tier": tier,
            "site": site,
            "region": "eu-central",
            "nodeSelector": {"matchLabels": {"edge.example.com/role": name}},
            "network": {"rttMs": {"plant": rtt, "*": rtt + 20}},
            "cost": {"cpu": cost, "memoryGiB": 0.001, "wanMbps": 0.01},
        },
    }


def _workload(name: str, budget: float, cpu: int) -> dict[str, Any]:
    return {
        "apiVersion": "continuum.dev/v1alpha1",
        "kind": "EdgeWorkload",
        "metadata": {"name": name, "namespace": "line"},
        "spec": {
            "source": {"site": "plant"},
            "requirements": {
                "latencyBudgetMs": budget,
                "bandwidth": {"ingestMbps": 10},
                "privacy": "internal",
                "resources": {"cpu": str(cpu), "memory": "1Gi"},
            },
            "tiers": {"preferred": ["near-edge"]},
            "model": {"name": name, "uri": f"http://models/{name}.onnx", "version": "1"},
        },
    }


# tight: only the plant's near-edge pool meets 5 ms; loose: the MEC (8 ms) meets 20 ms too
WORKLOADS_FIXTURE = [
    _workload("tight-a", 5, 2),
    _workload("tight-b", 5, 2),
    _workload("loose-c", 20, 2),
    _workload("loose-d", 20, 3),
]


def write_fixture(folder: Path, edge_cpu: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    docs = [
        _node("edge-1", "edge", edge_cpu),
        _node("mec-1", "mec", 32),
        _pool("edge", "near-edge", "plant", 1, 0.02),
        _pool("mec", "regional-mec", "mec-site", 8, 0.01),
        *WORKLOADS_FIXTURE,
    ]
    (folder / "all.yaml").write_text(yaml.safe_dump_all(docs))
    return [str(folder)]


def plan_and_demands(paths: list[str]) -> tuple[dict[str, Any], dict[str, Demand]]:
    return plan_result(paths), demands_of(load_manifests(paths).workloads)


def test_shrinking_a_pool_moves_exactly_the_workloads_that_can_go(tmp_path: Path) -> None:
    before, d_before = plan_and_demands(write_fixture(tmp_path / "before", edge_cpu=16))
    after, d_after = plan_and_demands(write_fixture(tmp_path / "after", edge_cpu=6))
    assert {p["name"]: p["pool"] for p in before["placements"]} == dict.fromkeys(
        ("tight-a", "tight-b", "loose-c", "loose-d"), "edge"
    )
    diff = diff_plans(before, after, d_before, d_after)
    moved = {c.key: (c.before.pool, c.after.pool) for c in diff.of_kind("moved")}
    # 6 cpu: the two tight ones (4 cpu) must stay; loose-c (2) could stay, loose-d (3) could not
    # with both tight ones; the solver keeps preference where it can: one loose one stays.
    assert moved == {"line/loose-d": ("edge", "mec")}
    assert [c.kind for c in diff.changes] == ["moved"]
    assert diff.unchanged == 3
    (change,) = diff.changes
    assert change.reason.startswith("edge no longer fits: Capacity")
    pools = {p.pool: p.delta for p in diff.pools}
    assert set(pools) == {"edge", "mec"}
    assert pools["edge"].cpu_millis == -3000 and pools["mec"].cpu_millis == 3000
    assert pools["edge"].workloads == -1 and pools["mec"].workloads == 1
    assert pools["mec"].wan_mbps == 10 and pools["edge"].wan_mbps == 0
    cost_edge = 3 * 0.02 + 1 * 0.001
    cost_mec = 3 * 0.01 + 1 * 0.001 + 10 * 0.01
    assert pools["edge"].hourly_cost == pytest.approx(-cost_edge)
    assert pools["mec"].hourly_cost == pytest.approx(cost_mec)
    assert diff.cost_delta == pytest.approx(cost_mec - cost_edge)


def test_shrinking_below_the_tight_ones_makes_exactly_one_unschedulable(tmp_path: Path) -> None:
    before, d_before = plan_and_demands(write_fixture(tmp_path / "before", edge_cpu=16))
    after, d_after = plan_and_demands(write_fixture(tmp_path / "after", edge_cpu=3))
    diff = diff_plans(before, after, d_before, d_after)
    kinds = {c.key: c.kind for c in diff.changes}
    assert kinds == {
        "line/tight-b": "unschedulable",  # only one tight workload fits in 3 cpu (ties go by name)
        "line/loose-c": "moved",
        "line/loose-d": "moved",
    }
    unsched = diff.of_kind("unschedulable")[0]
    assert unsched.reason.startswith("was on edge")
    assert diff.after["unschedulable"] == 1 and diff.before["unschedulable"] == 0


def test_growing_it_back_moves_them_back(tmp_path: Path) -> None:
    small, d_small = plan_and_demands(write_fixture(tmp_path / "small", edge_cpu=6))
    big, d_big = plan_and_demands(write_fixture(tmp_path / "big", edge_cpu=16))
    diff = diff_plans(small, big, d_small, d_big)
    assert {c.key: (c.before.pool, c.after.pool) for c in diff.changes} == {"line/loose-d": ("mec", "edge")}
    assert "mec still fits; the solver prefers edge: regional-mec → near-edge" in diff.changes[0].reason


def test_identical_plans_have_no_changes() -> None:
    doc, demands = plan_and_demands([CLUSTER, WORKLOADS])
    diff = diff_plans(doc, doc, demands, demands)
    assert diff.empty and diff.changes == [] and diff.pools == []
    assert diff.still_unschedulable == ["manufacturing/quality-assistant"]
    assert render_text(diff).startswith("Continuum plan diff: no placement changes · placed 7 → 7 of 8")


def test_added_and_removed_workloads_and_assumed_requests(tmp_path: Path) -> None:
    before, d_before = plan_and_demands(write_fixture(tmp_path / "b", edge_cpu=16))
    after = json.loads(json.dumps(before))
    gone = after["placements"].pop(0)  # tight-a removed
    diff = diff_plans(before, after, {}, {k: v for k, v in d_before.items() if not k.endswith(gone["name"])})
    assert [(c.key, c.kind) for c in diff.changes] == [("line/tight-a", "removed")]
    assert diff.assumed_demands == 3  # the baseline carried no requests: taken from the current specs
    assert diff.unknown_demands == ["line/tight-a"]
    edge = {p.pool: p for p in diff.pools}["edge"]
    assert edge.delta.workloads == -1 and edge.delta.cpu_millis == 0  # tight-a's requests are unknown
    assert "had no requests in the baseline document" in render_text(diff)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "baseline: placements: expected a list"),
        (
            {"placements": [{"namespace": "a", "phase": "Placed"}]},
            "baseline: placements[0].name: expected a string",
        ),
        (
            {"placements": [{"namespace": "a", "name": "b", "phase": "Placed"}]},
            "baseline: placements[0].pool: a Placed workload needs its pool",
        ),
        (
            {
                "placements": [
                    {"namespace": "a", "name": "b", "phase": "Placed", "pool": "p", "hourlyCost": "x"}
                ]
            },
            "baseline: placements[0].estimatedLatencyMs: expected a number",
        ),
    ],
)
def test_bad_plan_documents_name_the_field(doc: dict[str, Any], message: str) -> None:
    from continuum.plandiff import PlanFormatError

    with pytest.raises(PlanFormatError, match=re.escape(message)):
        rows_of(doc, "baseline")


# --- renderings ------------------------------------------------------------------------------------


def _fixture_diff(tmp_path: Path, edge_cpu: int = 3) -> Any:
    before, d_before = plan_and_demands(write_fixture(tmp_path / "before", edge_cpu=16))
    after, d_after = plan_and_demands(write_fixture(tmp_path / "after", edge_cpu=edge_cpu))
    return diff_plans(before, after, d_before, d_after)


def test_markdown_summary_first_then_collapsible_details(tmp_path: Path) -> None:
    diff = _fixture_diff(tmp_path)
    text = render_markdown(diff)
    first = text.splitlines()[0]
    assert first.startswith(
        "⚠️ **Continuum plan:** 1 newly unschedulable, 2 moved · placed 4 → 3 of 4 · cost "
    )
    assert "WAN +20 Mbps" in first
    assert text.count("<details") == text.count("</details>")
    blocks = re.findall(r"<summary><code>([^<]+)</code>", text)
    assert sorted(blocks) == sorted(c.key for c in diff.changes)
    assert "<summary><b>Per-pool changes (2 pools)</b></summary>" in text
    assert "| edge | near-edge | 4 → 1 | -7 |" in text
    # the unschedulable section comes first and is open
    assert text.index("newly unschedulable") < text.index(
        "</b></summary>\n\n<details>\n<summary><code>line/loose"
    )


def test_markdown_caps_the_per_workload_blocks(tmp_path: Path) -> None:
    diff = _fixture_diff(tmp_path)
    text = render_markdown(diff, max_details=1)
    assert len(re.findall(r"<summary><code>", text)) == 1
    assert "_2 more changed workload(s) not detailed here (limit 1)" in text


def test_markdown_escapes_table_cells(tmp_path: Path) -> None:
    diff = _fixture_diff(tmp_path)
    change = diff.changes[0]
    object.__setattr__(change, "reason", "a | b <script>")
    text = render_markdown(diff)
    assert "a \\| b &lt;script&gt;" in text and "<script>" not in text


def test_text_rendering(tmp_path: Path) -> None:
    text = render_text(_fixture_diff(tmp_path))
    lines = text.splitlines()
    assert lines[0].startswith("Continuum plan diff: 1 newly unschedulable, 2 moved")
    assert "Moved (2):" in lines and "Newly unschedulable (1):" in lines
    assert any(
        re.match(r"\s+line/loose-c: edge \(near-edge\) → mec \(regional-mec\)", line) for line in lines
    )
    header = next(line for line in lines if line.strip().startswith("POOL"))
    assert header.split() == ["POOL", "TIER", "WORKLOADS", "CPU", "MEMORY", "GPU", "WAN", "Mbps", "COST/h"]


# --- the CLI and the example change in examples/ci -------------------------------------------------


def test_example_change_as_text_and_markdown(tmp_path: Path) -> None:
    text = run_cli("plan", *PR_ARGS, "--baseline", CLUSTER, "--baseline", WORKLOADS)
    assert text.returncode == 2, text.stderr  # quality-assistant stays unschedulable: exit code unchanged
    md = run_cli(
        "plan",
        *PR_ARGS,
        "--baseline",
        CLUSTER,
        "--baseline",
        WORKLOADS,
        "-o",
        "markdown",
    )
    assert md.returncode == 2, md.stderr
    expected = EXAMPLE_CHANGE
    for key, (kind, before, after) in expected["changes"].items():
        assert re.search(
            rf"^  {re.escape(key)}: {re.escape(before)} → {re.escape(after)}", text.stdout, re.M
        ), (
            key,
            text.stdout,
        )
        assert f"<summary><code>{key}</code>: {before} → {after}" in md.stdout, (kind, md.stdout)
    assert md.stdout.splitlines()[0].startswith("⚠️ **Continuum plan:** " + expected["summaryStart"])
    assert (
        text.stdout.splitlines()[0] == "Continuum plan diff: " + md.stdout.splitlines()[0].split(":** ", 1)[1]
    )
    doc = json.loads(
        run_cli(
            "plan",
            *PR_ARGS,
            "--baseline",
            CLUSTER,
            "--baseline",
            WORKLOADS,
            "-o",
            "json",
        ).stdout
    )
    assert {c["workload"]: c["change"] for c in doc["changes"]} == {
        k: v[0] for k, v in expected["changes"].items()
    }


def test_json_baseline_gives_the_same_changes(tmp_path: Path) -> None:
    base = run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS, "-o", "json")
    (tmp_path / "base.json").write_text(base.stdout)
    args = [*PR_ARGS, "-o", "json"]
    from_json = json.loads(run_cli("plan", *args, "--baseline", str(tmp_path / "base.json")).stdout)
    from_dirs = json.loads(run_cli("plan", *args, "--baseline", CLUSTER, "--baseline", WORKLOADS).stdout)
    assert from_json["changes"] == from_dirs["changes"]
    assert from_json["notes"] and not from_dirs["notes"]


def test_exit_code_zero_when_all_placed(tmp_path: Path) -> None:
    paths = write_fixture(tmp_path / "a", edge_cpu=16)
    proc = run_cli("plan", "-f", paths[0], "--baseline", paths[0], "-o", "markdown")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("✅ **Continuum plan:** no placement changes")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "error: --baseline: "),
        ('{"placements": 3}', "placements: expected a list"),
    ],
)
def test_bad_baseline_exits_1_naming_it(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "old.json"
    bad.write_text(content)
    proc = run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS, "--baseline", str(bad))
    assert proc.returncode == 1
    assert message in proc.stderr and str(bad) in proc.stderr


def test_missing_baseline_exits_1(tmp_path: Path) -> None:
    proc = run_cli("plan", "-f", CLUSTER, "--baseline", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert "no such file or directory" in proc.stderr


def test_ci_example_pipeline_runs_and_writes_the_comment(tmp_path: Path) -> None:
    """Run the plan step of examples/ci/github-actions-plan-diff.yaml as GitHub would, on a repo
    whose PR adds examples/ci/example-change to the target branch's examples."""
    workflow = yaml.safe_load((EXAMPLES / "ci" / "github-actions-plan-diff.yaml").read_text())
    steps = {s.get("id") or s.get("name"): s for s in workflow["jobs"]["plan-diff"]["steps"]}
    assert workflow["permissions"]["pull-requests"] == "write"
    script = steps["plan"]["run"]
    runner_temp, pr = tmp_path / "runner", tmp_path / "pr"
    for root in (runner_temp / "base", pr):
        shutil.copytree(EXAMPLES / "cluster", root / "examples" / "cluster")
        shutil.copytree(EXAMPLES / "workloads", root / "examples" / "workloads")
    shutil.copy(CHANGE / "mec-munich.yaml", pr / "examples" / "cluster" / "mec-munich.yaml")
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "RUNNER_TEMP": str(runner_temp),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(output),
    }
    proc = subprocess.run(
        ["bash", "-e", "-c", script], cwd=pr, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert output.read_text().strip() == "rc=2"  # quality-assistant is unschedulable on both sides
    comment = (pr / "comment.md").read_text().splitlines()
    assert comment[0] == "<!-- continuum-plan-diff -->"
    assert comment[1].startswith("⚠️ **Continuum plan:** " + EXAMPLE_CHANGE["summaryStart"])
    assert "<summary><code>retail/store-footfall</code>" in summary.read_text()
    post = steps["Post or update the PR comment"]["run"]
    assert 'startswith("<!-- continuum-plan-diff -->")' in post and "-F body=@comment.md" in post


def test_compact_plans_beyond_50_pools(tmp_path: Path) -> None:
    """Beyond 50 pools the plan lists only some candidates per workload; a pool that loses its nodes
    still explains every workload that leaves it (by its verdict, or by the reason counts)."""
    from tests.cli.test_report import write_instance

    before_paths = write_instance(tmp_path / "before", 120, 60, seed=3)
    before, d_before = plan_and_demands(before_paths)
    assert before["summary"]["pools"] == 60
    used = Counter(p["pool"] for p in before["placements"] if p["phase"] == "Placed")
    victim = used.most_common(1)[0][0]
    docs = [
        d
        for d in yaml.safe_load_all((tmp_path / "before" / "instance.yaml").read_text())
        if not (d["kind"] == "Node" and d["metadata"]["labels"].get("pool") == victim)
    ]
    (tmp_path / "after").mkdir()
    (tmp_path / "after" / "instance.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    after, d_after = plan_and_demands([str(tmp_path / "after")])
    diff = diff_plans(before, after, d_before, d_after)
    left = {c.key for c in diff.changes if c.before and c.before.pool == victim}
    assert left == {k for k, r in rows_of(before).items() if r.pool == victim}  # every one of them changed
    for c in diff.changes:
        if c.kind == "moved" and c.before.pool == victim:
            assert c.reason.startswith(f"{victim} no longer fits: NoNodes") or "not among" in c.reason, (
                c.reason
            )
    victim_delta = next(p for p in diff.pools if p.pool == victim)
    assert victim_delta.after.workloads == 0 and victim_delta.delta.workloads == -used[victim]
    assert render_markdown(diff).count("<summary><code>") == min(len(diff.changes), 100)
