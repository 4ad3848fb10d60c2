"""The Helm chart: lint, render across value sets, Kubernetes schemas, security, RBAC, CRDs, schema."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    CRDS,
    NAMESPACE,
    RELEASE,
    ROOT,
    VALUE_SETS,
    of_kind,
    one,
    render,
    requires_helm,
    run_helm,
)

# The newest Kubernetes minor kubernetes-validate ships schemas for (1.37 with kubernetes-validate 1.37.0).
KUBE_VERSION = kubernetes_validate.latest_version()
SETS = sorted(VALUE_SETS)
WILDCARD = "*"
# Namespaced resources the operator only reads cluster-wide, even in namespaced mode: the pods on
# pool nodes count against the nodes' capacity whatever their namespace.
CLUSTER_READS = {("", "pods")}

pytestmark = requires_helm


def _rules(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [rule for role in of_kind(objs, kind) for rule in role.get("rules") or []]


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def _operator_grants(objs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """What the operator's ServiceAccount gets (not the aggregated view/edit roles)."""
    own = [
        r
        for r in of_kind(objs, "ClusterRole") + of_kind(objs, "Role")
        if not r["metadata"]["name"].endswith(("-view", "-edit"))
    ]
    return _grants([rule for role in own for rule in role.get("rules") or []])


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


# --- lint and render -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_helm_lint_strict(name: str, tmp_path: Path) -> None:
    proc = run_helm(
        "lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=VALUE_SETS[name], tmp=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("name", SETS)
def test_every_rendered_object_is_valid_kubernetes(name: str) -> None:
    objs = render(VALUE_SETS[name])
    assert objs
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # no schema in kubernetes-validate: check the fields Prometheus Operator needs
            assert obj["kind"] == "ServiceMonitor"
            assert obj["spec"]["endpoints"][0]["port"] == "metrics"
            assert obj["spec"]["selector"]["matchLabels"]
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}"
            ) from exc
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "continuum"


def test_defaults_render_the_expected_objects() -> None:
    kinds = sorted(o["kind"] for o in render({}))
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 3
        + ["ClusterRole"] * 4
        + ["ClusterRoleBinding"] * 2
        + ["Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    )


def test_helm_install_dry_run_prints_notes(tmp_path: Path) -> None:
    proc = run_helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}" in notes
    assert "kubectl apply -f examples/workloads/agv-navigation.yaml" in notes
    assert "continuum plan -f examples/cluster -f examples/workloads" in notes


# --- values.schema.json ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCnt": 2}, "'replicaCnt' not allowed"),
        ({"operator": {"gracSeconds": 5}}, "'gracSeconds' not allowed"),
        ({"crds": {"enabled": "yes"}}, "/crds/enabled"),
        ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
        ({"operator": {"watchNamespaces": ["Bad_NS"]}}, "/operator/watchNamespaces/0"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"podDisruptionBudget": {"minAvailable": "2"}}, "/podDisruptionBudget/minAvailable"),
    ],
)
def test_bad_values_fail_the_install_naming_the_key(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    proc = run_helm("install", RELEASE, str(CHART), "--dry-run=client", values=values, tmp=tmp_path)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_schema_closes_every_object_of_values_yaml() -> None:
    """Every object in values.yaml with fixed keys is closed (additionalProperties: false)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) - {"global"} == set(values)
    free = {
        "commonLabels",
        "podAnnotations",
        "podLabels",
        "podSecurityContext",
        "securityContext",
        "nodeSelector",
        "affinity",
        "annotations",
        "labels",
        "requests",
        "limits",
        "valuesObject",
    }

    def walk(node: dict[str, Any], value: Any, path: str) -> None:
        if not isinstance(value, dict) or path.rsplit(".", 1)[-1] in free:
            return
        assert node.get("additionalProperties") is False, f"{path} is not closed"
        assert set(value) <= set(node["properties"]), f"{path}: {set(value) - set(node['properties'])}"
        for key, sub in value.items():
            walk(node["properties"][key], sub, f"{path}.{key}")

    for key, value in values.items():
        walk(schema["properties"][key], value, key)


def test_every_value_is_commented() -> None:
    """Every leaf value outside free-form objects has a comment line right above it."""
    free = {
        "commonLabels",
        "podAnnotations",
        "podLabels",
        "podSecurityContext",
        "securityContext",
        "resources",
        "nodeSelector",
        "tolerations",
        "affinity",
        "annotations",
        "labels",
    }
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).split("#")[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        if rest == "" or any(part in free for part in path[:-1]):
            continue  # a section header, or inside a free-form object
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        assert previous.startswith("#"), f"values.yaml:{i + 1}: {'.'.join(path)} has no comment"


# --- the operator Deployment -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_security_context_is_restricted(name: str) -> None:
    deployment = one(render(VALUE_SETS[name]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in _containers(deployment):
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["runAsNonRoot"] is True, container["name"]
        assert ctx.get("privileged", False) is False, container["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert container["resources"]["requests"], container["name"]
        mounts = {m["mountPath"] for m in container.get("volumeMounts") or []}
        assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


def _contract_envs() -> dict[str, str]:
    """env → default of the operator table in docs/contracts.md."""
    text = (ROOT / "docs" / "contracts.md").read_text()
    section = text.split("## Operator configuration", 1)[1].split("\n## ", 1)[0]
    out = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("`"):
            out[cells[1].strip("`").split("`")[0]] = cells[2].strip("`")
    return out


def test_operator_env_follows_the_contract() -> None:
    contract = _contract_envs()
    assert {"CONTINUUM_METRICS_PORT", "CONTINUUM_LIVENESS_PORT", "CONTINUUM_WORKER_IMAGE"} <= set(contract)
    env = _env(one(render({}), "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert env["CONTINUUM_METRICS_PORT"] == "9090" == contract["CONTINUUM_METRICS_PORT"]
    assert env["CONTINUUM_LIVENESS_PORT"] == "8080" == contract["CONTINUUM_LIVENESS_PORT"]
    assert env["CONTINUUM_GRACE_SECONDS"] == "60" == contract["CONTINUUM_GRACE_SECONDS"]
    assert env["CONTINUUM_STABILIZATION_SECONDS"] == "300" == contract["CONTINUUM_STABILIZATION_SECONDS"]
    assert env["CONTINUUM_WORKER_IMAGE"] == "ghcr.io/continuum-dev/continuum-worker:0.1.0"
    assert "CONTINUUM_NAMESPACES" not in env and "CONTINUUM_PEERING" not in env  # all namespaces, standalone
    chart_vars = {name for name in env if name.startswith("CONTINUUM_")}
    # every variable the chart sets is one `continuum run` reads
    run_help = subprocess.run(
        [sys.executable, "-m", "continuum", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    ).stdout
    for name in chart_vars:
        assert name in run_help, f"the chart sets {name}, which `continuum run` does not read"
    assert chart_vars - {"CONTINUUM_RESYNC_SECONDS"} <= set(contract)


def test_operator_env_for_ha_and_namespaces() -> None:
    objs = render(VALUE_SETS["namespaced-ha-state"])
    deployment = one(objs, "Deployment")
    env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
    assert env["CONTINUUM_NAMESPACES"] == f"logistics,{NAMESPACE}"
    assert env["CONTINUUM_PEERING"] == RELEASE
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf's peer identity
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert _env(init)["CONTINUUM_NAMESPACES"] == env["CONTINUUM_NAMESPACES"]
    single = _env(
        one(render(VALUE_SETS["peering-single"]), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    )
    assert single["CONTINUUM_PEERING"] == "edge-ops"


def test_standalone_operator_is_never_two_at_once() -> None:
    deployment = one(render({}), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "initContainers" not in deployment["spec"]["template"]["spec"]


def test_liveness_probe_uses_kopf_healthz_and_ports() -> None:
    container = one(render({}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "healthz": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    custom = one(render({"operator": {"metricsPort": 9300, "livenessPort": 8181}}), "Deployment")
    env = _env(custom["spec"]["template"]["spec"]["containers"][0])
    assert env["CONTINUUM_METRICS_PORT"] == "9300" and env["CONTINUUM_LIVENESS_PORT"] == "8181"


def test_runs_on_the_k3s_server_tier_by_default() -> None:
    pod = one(render({}), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/control-plane": "true"}
    keys = {t["key"] for t in pod["tolerations"]}
    assert {"node-role.kubernetes.io/control-plane", "CriticalAddonsOnly"} <= keys
    anywhere = one(render(VALUE_SETS["minimal"]), "Deployment")["spec"]["template"]["spec"]
    assert "nodeSelector" not in anywhere and "tolerations" not in anywhere


def test_image_references() -> None:
    pod = one(render(VALUE_SETS["monitoring"]), "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/continuum-dev/continuum-operator@sha256:" + "a" * 64
    assert pod["containers"][0]["args"] == ["--verbose"]
    assert _env(pod["containers"][0])["TZ"] == "UTC"
    tagged = one(
        render(
            {"image": {"tag": "0.2.0"}, "worker": {"image": {"repository": "registry.local/w", "tag": "1"}}}
        ),
        "Deployment",
    )
    container = tagged["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/continuum-dev/continuum-operator:0.2.0"
    assert _env(container)["CONTINUUM_WORKER_IMAGE"] == "registry.local/w:1"


def test_pdb_metrics_service_and_service_monitor() -> None:
    objs = render({})
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "selector": {"matchLabels": one(objs, "Deployment")["spec"]["selector"]["matchLabels"]},
        "maxUnavailable": 1,
    }
    service = one(objs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == pdb["spec"]["selector"]["matchLabels"]
    assert not of_kind(objs, "ServiceMonitor")
    monitored = render(VALUE_SETS["monitoring"])
    monitor = one(monitored, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert one(monitored, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"


# --- RBAC ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_rbac_has_no_wildcards(name: str) -> None:
    objs = render(VALUE_SETS[name])
    for rule in _rules(objs, "ClusterRole") + _rules(objs, "Role"):
        for field in ("apiGroups", "resources", "verbs"):
            assert WILDCARD not in rule[field], rule
        assert "resourceNames" not in rule or rule["resourceNames"]
        assert (
            "escalate" not in rule["verbs"]
            and "bind" not in rule["verbs"]
            and "impersonate" not in rule["verbs"]
        )


@pytest.mark.parametrize("name", SETS)
def test_secrets_only_with_state_support(name: str) -> None:
    objs = render(VALUE_SETS[name])
    grants = _operator_grants(objs)
    state = VALUE_SETS[name].get("state", {}).get("enabled", False)
    if state:
        assert grants[("", "secrets")] == {"get", "create"}
    else:
        assert ("", "secrets") not in grants
    for role in of_kind(objs, "ClusterRole"):  # the aggregated roles never touch secrets
        assert ("", "secrets") not in _grants(role["rules"]) or not role["metadata"]["name"].endswith(
            ("-view", "-edit")
        )


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses() -> None:
    objs = render(VALUE_SETS["ha"])
    assert not of_kind(objs, "Role")
    grants = _operator_grants(objs)
    assert grants == {
        # framework (kopf)
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch", "create"},
        ("", "events"): {"create"},
        # application
        ("", "nodes"): {"get", "list", "watch", "patch"},
        ("", "pods"): {"get", "list", "watch"},
        ("continuum.dev", "edgenodepools"): {"get", "list", "watch", "patch"},
        ("continuum.dev", "edgenodepools/status"): {"get", "patch"},
        ("continuum.dev", "edgeworkloads"): {"get", "list", "watch", "create", "patch", "delete"},
        ("continuum.dev", "edgeworkloads/status"): {"get", "patch"},
        ("continuum.dev", "edgeworkloads/finalizers"): {"update"},
        # EdgeWorkloadSets: read the sets, write their status; create/patch/delete their children (above)
        ("continuum.dev", "edgeworkloadsets"): {"get", "list", "watch"},
        ("continuum.dev", "edgeworkloadsets/status"): {"get", "patch"},
        ("continuum.dev", "edgeworkloadsets/finalizers"): {"update"},
        ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
        ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "services"): {"get", "create", "patch"},
    }
    names = {r["metadata"]["name"] for r in of_kind(objs, "ClusterRole")}
    assert {f"{RELEASE}-framework", f"{RELEASE}-application"} <= names
    standalone = _operator_grants(render({}))
    assert ("kopf.dev", "clusterkopfpeerings") not in standalone and (
        "kopf.dev",
        "kopfpeerings",
    ) not in standalone
    assert ("", "namespaces") not in standalone  # kopf only observes namespaces when not cluster-wide


def test_bindings_point_at_the_operator_service_account() -> None:
    for name in SETS:
        objs = render(VALUE_SETS[name])
        roles = {
            (r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
            for r in of_kind(objs, "ClusterRole") + of_kind(objs, "Role")
        }
        accounts = {a["metadata"]["name"] for a in of_kind(objs, "ServiceAccount")}
        for binding in of_kind(objs, "ClusterRoleBinding") + of_kind(objs, "RoleBinding"):
            ns = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
            assert (binding["roleRef"]["kind"], ns, binding["roleRef"]["name"]) in roles
            subject = binding["subjects"][0]
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
            assert subject["name"] in accounts
        deployment = one(objs, "Deployment")
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in accounts | {"ops"}


def test_namespaced_rbac_keeps_namespaced_access_in_roles() -> None:
    objs = render(VALUE_SETS["namespaced"])
    cluster = _grants(_rules(objs, "ClusterRole"))
    namespaced_resources = {
        ("continuum.dev", "edgeworkloads"),
        ("continuum.dev", "edgeworkloadsets"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("", "services"),
        ("", "secrets"),
        ("", "events"),
    }
    own_cluster = _operator_grants([o for o in objs if o["kind"] == "ClusterRole"])
    assert not (namespaced_resources & set(own_cluster)), set(own_cluster) & namespaced_resources
    assert ("", "namespaces") in own_cluster  # kopf checks the namespaces it serves exist
    assert ("", "pods") in own_cluster and own_cluster[("", "pods")] == {"get", "list", "watch"}
    assert cluster[("continuum.dev", "edgeworkloads")] >= {
        "get",
        "list",
        "watch",
    }  # only via aggregate-to-view
    roles = {
        (r["metadata"]["namespace"], r["metadata"]["name"]): _grants(r["rules"])
        for r in of_kind(objs, "Role")
    }
    for ns in ("logistics", "retail"):
        app = roles[(ns, f"{RELEASE}-application")]
        assert app[("continuum.dev", "edgeworkloads")] == {"get", "list", "watch", "create", "patch", "delete"}
        assert app[("continuum.dev", "edgeworkloadsets")] == {"get", "list", "watch"}
        assert app[("apps", "deployments")] == {"get", "list", "watch", "create", "patch", "delete"}
        assert roles[(ns, f"{RELEASE}-framework")] == {("", "events"): {"create"}}
    # events of cluster-scoped objects (pools): kopf's into the operator's namespace, the operator's into default
    for ns in (NAMESPACE, "default"):
        assert roles[(ns, f"{RELEASE}-framework")] == {("", "events"): {"create"}}
        assert (ns, f"{RELEASE}-application") not in roles
    assert (NAMESPACE, f"{RELEASE}-application") not in roles
    for resource in CLUSTER_READS:
        assert resource in own_cluster


def test_namespaced_ha_uses_namespaced_peerings() -> None:
    objs = render(VALUE_SETS["namespaced-ha-state"])
    own_cluster = _operator_grants([o for o in objs if o["kind"] == "ClusterRole"])
    assert ("kopf.dev", "clusterkopfpeerings") not in own_cluster
    roles = {
        (r["metadata"]["namespace"], r["metadata"]["name"]): _grants(r["rules"])
        for r in of_kind(objs, "Role")
    }
    for ns in ("logistics", NAMESPACE):
        assert roles[(ns, f"{RELEASE}-framework")][("kopf.dev", "kopfpeerings")] == {
            "get",
            "list",
            "watch",
            "patch",
            "create",
        }
        assert roles[(ns, f"{RELEASE}-application")][("", "secrets")] == {"get", "create"}


def test_aggregated_roles_let_tenants_manage_their_workloads() -> None:
    objs = render({})
    roles = {r["metadata"]["name"]: r for r in of_kind(objs, "ClusterRole")}
    view, edit = roles[f"{RELEASE}-view"], roles[f"{RELEASE}-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert _grants(view["rules"])[("continuum.dev", "edgeworkloads")] == {"get", "list", "watch"}
    edit_grants = _grants(edit["rules"])
    assert edit_grants[("continuum.dev", "edgeworkloads")] >= {"create", "update", "patch", "delete"}
    assert edit_grants[("continuum.dev", "edgeworkloadsets")] >= {"create", "update", "patch", "delete"}
    assert _grants(view["rules"])[("continuum.dev", "edgeworkloadsets")] == {"get", "list", "watch"}
    assert edit_grants[("continuum.dev", "edgeworkloadsets/status")] == {"get", "list", "watch"}
    assert ("continuum.dev", "edgenodepools") not in edit_grants  # pools are the platform team's
    assert edit_grants[("continuum.dev", "edgeworkloads/status")] == {
        "get",
        "list",
        "watch",
    }  # never write status
    assert not [o for o in render(VALUE_SETS["minimal"]) if o["kind"] in ("ClusterRole", "Role")]


# --- CRDs ------------------------------------------------------------------------------------------


def _strip_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    crd = copy.deepcopy(crd)
    meta = crd["metadata"]
    meta.pop("annotations", None)
    meta["labels"] = {
        k: v
        for k, v in meta["labels"].items()
        if k in ("app.kubernetes.io/name", "app.kubernetes.io/version")
    }
    return crd


def _generated() -> dict[str, dict[str, Any]]:
    files = sorted(CRDS.glob("*.yaml"))
    if not files:
        pytest.skip("crds/ has no generated CRDs yet (run `make crds`)")
    return {yaml.safe_load(f.read_text())["metadata"]["name"]: yaml.safe_load(f.read_text()) for f in files}


def test_chart_crd_files_do_not_drift_from_crds() -> None:
    generated = sorted(p.name for p in CRDS.glob("*.yaml"))
    if not generated:
        pytest.skip("crds/ has no generated CRDs yet (run `make crds`)")
    chart_dir = CHART / "files" / "crds"
    assert sorted(p.name for p in chart_dir.glob("*.yaml")) == generated, "run `make crds`"
    for name in generated:
        assert (chart_dir / name).read_text() == (CRDS / name).read_text(), f"{name} drifted: run `make crds`"


def test_rendered_crds_are_the_generated_ones() -> None:
    generated = _generated()
    rendered = {c["metadata"]["name"]: c for c in of_kind(render({}), "CustomResourceDefinition")}
    assert set(rendered) == set(generated)
    for name, crd in rendered.items():
        assert _strip_chart_metadata(crd) == generated[name], f"{name} differs from crds/"


def test_crd_keep_policy_and_gate() -> None:
    for crd in of_kind(render({}), "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for crd in of_kind(render(VALUE_SETS["crds-not-kept"]), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})
    assert not of_kind(render(VALUE_SETS["crds-disabled"]), "CustomResourceDefinition")


def test_kopf_peering_crds_only_with_ha() -> None:
    kopf = [d for d in yaml.safe_load_all((CHART / "files" / "kopf" / "peering-crds.yaml").read_text()) if d]
    assert {d["metadata"]["name"] for d in kopf} == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for name in ("ha", "namespaced-ha-state"):
        crds = {
            c["metadata"]["name"]: c for c in of_kind(render(VALUE_SETS[name]), "CustomResourceDefinition")
        }
        for doc in kopf:
            got = crds[doc["metadata"]["name"]]
            assert got["spec"] == doc["spec"]
            assert got["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    for name in ("defaults", "namespaced", "peering-single"):  # peering-single: installCRDs false
        names = {c["metadata"]["name"] for c in of_kind(render(VALUE_SETS[name]), "CustomResourceDefinition")}
        assert not any(n.endswith(".kopf.dev") for n in names)


def test_peering_init_script_is_shipped_in_a_configmap() -> None:
    objs = render(VALUE_SETS["ha"])
    config = one(objs, "ConfigMap")
    assert config["data"]["peering_init.py"] == (CHART / "files" / "peering_init.py").read_text()
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "peering-init")
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    assert pod["initContainers"][0]["command"] == ["python", "/opt/continuum/peering/peering_init.py"]
    assert not of_kind(render({}), "ConfigMap")
