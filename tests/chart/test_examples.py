"""The example manifests: CRs against the generated CRD schemas, GitOps, k3s and CI examples, the
Argo CD health check (Lua, run with lupa) against sample EdgeWorkload statuses."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.conftest import CHART, CRDS, EXAMPLES, ROOT, load_docs, of_kind, one, render, requires_helm

GITOPS = EXAMPLES / "gitops"
HEALTH = GITOPS / "argocd" / "health" / "continuum.dev" / "EdgeWorkload"
CONTINUUM_KINDS = ("EdgeNodePool", "EdgeWorkload", "EdgeWorkloadSet")


def _crd_validators() -> dict[str, jsonschema.Draft4Validator]:
    files = sorted(CRDS.glob("*.yaml"))
    if not files:
        pytest.skip("crds/ has no generated CRDs yet (run `make crds`)")
    out = {}
    for file in files:
        crd = yaml.safe_load(file.read_text())
        version = next(v for v in crd["spec"]["versions"] if v["storage"])
        # the structural schema uses OpenAPI v3.0 (boolean exclusiveMinimum): JSON Schema draft 4
        out[crd["spec"]["names"]["kind"]] = jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"])
    return out


def _continuum_objects() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for file in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in CONTINUUM_KINDS:
                found.append((file, doc))
    return found


def test_example_resources_validate_against_the_generated_crd_schemas() -> None:
    validators = _crd_validators()
    objects = _continuum_objects()
    kinds = {doc["kind"] for _, doc in objects}
    assert kinds == set(CONTINUUM_KINDS), "examples/ should hold pools and workloads"
    assert any(HEALTH in f.parents for f, _ in objects), "the health check samples are validated too"
    for file, doc in objects:
        assert doc["apiVersion"] == "continuum.dev/v1alpha1", file
        errors = sorted(validators[doc["kind"]].iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{file.relative_to(ROOT)} {doc['metadata']['name']}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
        )


def test_crd_schema_rejects_a_broken_workload() -> None:
    validator = _crd_validators()["EdgeWorkload"]
    doc = next(d for f, d in _continuum_objects() if d["kind"] == "EdgeWorkload" and "status" in d)
    broken = json.loads(json.dumps(doc))
    broken["status"]["phase"] = "Running"
    assert any(list(e.path) == ["status", "phase"] for e in validator.iter_errors(broken))


# --- Argo CD health check --------------------------------------------------------------------------


def _lua_health(lua_source: str, obj: dict[str, Any]) -> dict[str, str]:
    lupa = pytest.importorskip(
        "lupa.lua51", reason="lupa (the dev extra) runs Argo CD's Lua 5.1 health checks"
    )
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return runtime.table_from({k: convert(v) for k, v in value.items()})
        if isinstance(value, list):
            return runtime.table_from([convert(v) for v in value])
        return value

    runtime.globals().obj = convert(obj)
    # Argo CD runs the script as a chunk with `obj` in scope and reads the returned table.
    result = runtime.execute(lua_source)
    return {"status": result["status"], "message": result["message"]}


def test_argocd_health_check_against_sample_statuses() -> None:
    lua = (HEALTH / "health.lua").read_text()
    cases = yaml.safe_load((HEALTH / "health_test.yaml").read_text())["tests"]
    statuses = {case["healthStatus"]["status"] for case in cases}
    assert statuses == {"Healthy", "Progressing", "Degraded"}
    for case in cases:
        obj = yaml.safe_load((HEALTH / case["inputPath"]).read_text())
        assert _lua_health(lua, obj) == case["healthStatus"], case["inputPath"]


def test_argocd_health_check_unknown_phase() -> None:
    lua = (HEALTH / "health.lua").read_text()
    obj = {
        "metadata": {"name": "x", "generation": 1},
        "status": {"phase": "Exploded", "observedGeneration": 1},
    }
    assert _lua_health(lua, obj)["status"] == "Unknown"


def test_argocd_cm_carries_the_tested_lua() -> None:
    cm = yaml.safe_load((GITOPS / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    lua = cm["data"]["resource.customizations.health.continuum.dev_EdgeWorkload"]
    assert lua == (HEALTH / "health.lua").read_text()


# --- GitOps and k3s manifests: values against the chart's schema, sources pointing at real paths ---


def _values_schema() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text()))


def _merged(defaults: Any, override: Any) -> Any:
    """Helm's coalescing: maps merge key by key, anything else replaces; null deletes."""
    if isinstance(defaults, dict) and isinstance(override, dict):
        out = dict(defaults)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merged(defaults.get(key), value)
        return out
    return override


def _check_values(values: dict[str, Any], where: str) -> None:
    """The values as Helm validates them: on top of the chart's values.yaml."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    errors = list(_values_schema().iter_errors(_merged(defaults, values)))
    assert not errors, f"{where}: " + "; ".join(e.message for e in errors)


def test_argocd_applications() -> None:
    apps = {d["metadata"]["name"]: d for d in load_docs(GITOPS / "argocd") if d.get("kind") == "Application"}
    assert set(apps) == {"continuum", "continuum-workloads"}
    chart = apps["continuum"]["spec"]
    assert (ROOT / chart["source"]["path"] / "Chart.yaml").is_file()
    _check_values(chart["source"]["helm"]["valuesObject"], "Application continuum valuesObject")
    assert chart["destination"]["namespace"] == "continuum-system"
    assert "ServerSideApply=true" in chart["syncPolicy"]["syncOptions"]
    workloads = apps["continuum-workloads"]
    assert (ROOT / workloads["spec"]["source"]["path"]).is_dir()
    waves = {n: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for n, a in apps.items()}
    assert waves["continuum"] < waves["continuum-workloads"]
    kustomization = yaml.safe_load((GITOPS / "argocd" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (GITOPS / "argocd" / resource).is_file()


def test_flux_manifests() -> None:
    docs = load_docs(GITOPS / "flux")
    kinds = {(d["apiVersion"], d["kind"]) for d in docs if "apiVersion" in d}
    assert {
        ("source.toolkit.fluxcd.io/v1", "HelmRepository"),
        ("source.toolkit.fluxcd.io/v1", "GitRepository"),
        ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
        ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
    } <= kinds
    release = next(d for d in docs if d.get("kind") == "HelmRelease")
    _check_values(release["spec"]["values"], "HelmRelease values")
    assert (
        release["spec"]["chart"]["spec"]["chart"]
        == yaml.safe_load((CHART / "Chart.yaml").read_text())["name"]
    )
    workloads = next(
        d
        for d in docs
        if d.get("apiVersion") == "kustomize.toolkit.fluxcd.io/v1"
        and d["metadata"]["name"] == "continuum-workloads"
    )
    assert workloads["spec"]["dependsOn"] == [{"name": "continuum-operator"}]
    assert workloads["spec"]["wait"] is True
    exprs = {e["kind"]: e for e in workloads["spec"]["healthCheckExprs"]}
    assert {"current", "failed", "inProgress"} <= set(exprs["EdgeWorkload"])
    assert "Unschedulable" in exprs["EdgeWorkload"]["failed"] and "Invalid" in exprs["EdgeWorkload"]["failed"]
    operator = next(
        d
        for d in docs
        if d.get("apiVersion") == "kustomize.toolkit.fluxcd.io/v1"
        and d["metadata"]["name"] == "continuum-operator"
    )
    checked = {(c["kind"], c["name"]) for c in operator["spec"]["healthChecks"]}
    assert ("HelmRelease", release["metadata"]["name"]) in checked


@requires_helm
def test_flux_health_check_names_the_deployment_the_chart_renders() -> None:
    docs = load_docs(GITOPS / "flux")
    release = next(d for d in docs if d.get("kind") == "HelmRelease")
    assert release["spec"]["releaseName"] == "continuum"  # as rendered by tests/chart/conftest.RELEASE
    deployment = one(render(release["spec"]["values"]), "Deployment")
    operator = next(
        d
        for d in docs
        if d.get("apiVersion") == "kustomize.toolkit.fluxcd.io/v1"
        and d["metadata"]["name"] == "continuum-operator"
    )
    checked = next(c for c in operator["spec"]["healthChecks"] if c["kind"] == "Deployment")
    assert checked["name"] == deployment["metadata"]["name"]
    assert checked["namespace"] == release["spec"]["targetNamespace"]


def test_k3s_helmchart_and_agent_configs() -> None:
    chart = one(load_docs(EXAMPLES / "k3s" / "continuum-helmchart.yaml"), "HelmChart")
    assert chart["apiVersion"] == "helm.cattle.io/v1" and chart["metadata"]["namespace"] == "kube-system"
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    assert chart["spec"]["chart"].endswith(f"/static/charts/continuum-{version}.tgz")
    _check_values(yaml.safe_load(chart["spec"]["valuesContent"]), "HelmChart valuesContent")
    pools = [d for d in load_docs(EXAMPLES / "cluster" / "pools.yaml") if d.get("kind") == "EdgeNodePool"]
    for config_file, pool_name in (
        ("agent-near-edge.config.yaml", "munich-line"),
        ("agent-device.config.yaml", "munich-cameras"),
    ):
        config = yaml.safe_load((EXAMPLES / "k3s" / config_file).read_text())
        labels = dict(label.split("=", 1) for label in config["node-label"])
        pool = next(p for p in pools if p["metadata"]["name"] == pool_name)
        assert pool["spec"]["nodeSelector"]["matchLabels"].items() <= labels.items(), config_file
        assert not any(k.startswith("continuum.dev/") for k in labels), (
            "the operator owns continuum.dev/* labels"
        )
        assert config["node-taint"] == [f"continuum.dev/tier={pool['spec']['tier']}:NoSchedule"]


def test_label_existing_node_script_rejects_a_bad_tier(tmp_path: Path) -> None:
    script = EXAMPLES / "k3s" / "label-existing-node.sh"
    proc = subprocess.run(
        ["bash", str(script), "n1", "site", "role", "edge"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1 and "TIER must be" in proc.stderr
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "usage:" in proc.stderr


# --- the pre-merge pipeline examples ---------------------------------------------------------------


def _plan_commands() -> list[list[str]]:
    gitlab = yaml.safe_load((EXAMPLES / "ci" / "gitlab-ci.yaml").read_text())["continuum-plan"]
    github = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yaml").read_text())
    steps = github["jobs"]["plan"]["steps"]
    lines = [line for s in steps for line in (s.get("run") or "").splitlines()] + gitlab["script"]
    commands = []
    for line in lines:
        line = line.strip()
        if line.startswith("continuum plan"):
            command = line.split("||")[0].split(">")[0]
            commands.append(shlex.split(command))
    return commands


def test_ci_examples_run_plan_and_propagate_its_exit_code() -> None:
    github = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yaml").read_text())
    trigger = github.get("on", github.get(True))  # YAML 1.1 reads the key `on` as true
    assert "pull_request" in trigger
    job = github["jobs"]["plan"]
    assert "continue-on-error" not in job
    script = next(s["run"] for s in job["steps"] if "continuum plan" in (s.get("run") or ""))
    assert 'exit "$rc"' in script
    gitlab = yaml.safe_load((EXAMPLES / "ci" / "gitlab-ci.yaml").read_text())["continuum-plan"]
    assert gitlab["allow_failure"] is False and gitlab["script"][-1] == "exit $rc"
    assert gitlab["rules"][0]["if"] == '$CI_PIPELINE_SOURCE == "merge_request_event"'
    assert len(_plan_commands()) == 4


def _plan(args: list[str], cwd: Path) -> int:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "continuum", *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (0, 2), proc.stderr
    return proc.returncode


def test_ci_plan_command_blocks_an_unschedulable_change(tmp_path: Path) -> None:
    """The pipeline's own command: exit 2 with a workload no pool can host, 0 once it is fixed."""
    command = _plan_commands()[0]
    assert command[:2] == ["continuum", "plan"]
    repo = tmp_path / "repo"
    (repo / "examples" / "workloads").mkdir(parents=True)
    (repo / "examples" / "cluster").mkdir()
    for name in ("nodes.yaml", "pools.yaml"):
        (repo / "examples" / "cluster" / name).write_text((EXAMPLES / "cluster" / name).read_text())
    workload = yaml.safe_load((EXAMPLES / "workloads" / "agv-navigation.yaml").read_text().split("\n---")[-1])
    path = repo / "examples" / "workloads" / "w.yaml"
    path.write_text(yaml.safe_dump(workload))
    assert _plan(command, repo) == 0
    workload["spec"]["requirements"]["latencyBudgetMs"] = 0.1  # faster than any pool can answer
    path.write_text(yaml.safe_dump(workload))
    assert _plan(command, repo) == 2


@requires_helm
def test_kopf_peering_example_objects_match_rbac() -> None:
    """HA through GitOps: the Argo CD Application's values turn peering on; RBAC allows it."""
    app = next(
        d
        for d in load_docs(GITOPS / "argocd")
        if d.get("kind") == "Application" and d["metadata"]["name"] == "continuum"
    )
    objs = render(app["spec"]["source"]["helm"]["valuesObject"])
    assert one(objs, "Deployment")["spec"]["replicas"] == 2
    rules = [r for role in of_kind(objs, "ClusterRole") for r in role["rules"]]
    assert any("clusterkopfpeerings" in r["resources"] and "create" in r["verbs"] for r in rules)
