"""The chart's Grafana dashboards: well-formed, rendered as sidecar ConfigMaps, and every PromQL
expression names only metrics the operator and the worker really export.

The exported names are collected from the code, never from a list kept here: the operator's metrics
module on the default prometheus_client registry; the worker's ``WorkerMetrics`` registry with the
state library's metrics bound to it (as the worker does with --state-dir); and every name declared by
the worker's ``render()`` (what its /metrics serves, Triton's hand-rendered counters included).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.conftest import CHART, NAMESPACE, RELEASE, of_kind, one, render, requires_helm, run_helm
from tests.conftest import EXAMPLES

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
ENABLED = {"dashboards": {"enabled": True}}
KUBE_VERSION = kubernetes_validate.latest_version()

# --- what the code exports -------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "untyped": ("",),
    "unknown": ("",),
}


def _registry_names(registry: Any) -> set[str]:
    """Every sample name a registry exposes, from each family's type (labelled families with no
    children yet still count: they appear as soon as a label set is used)."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def _text_format_names(text: str) -> set[str]:
    """Names declared by ``# TYPE`` lines of Prometheus text output rendered by hand."""
    return {m.group(1) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def operator_metric_names() -> set[str]:
    import continuum.controller.metrics  # noqa: F401  (registers on the default registry)
    import prometheus_client

    return _registry_names(prometheus_client.REGISTRY)


def worker_metric_names() -> set[str]:
    from continuum_worker.drift.monitor import DriftMetrics
    from continuum_worker.metrics import WorkerMetrics
    from continuum_worker.state.metrics import StateMetrics

    worker = WorkerMetrics()
    StateMetrics(worker.registry)  # what worker_integration does when --state-dir is set
    DriftMetrics(worker.registry)  # what the data plane registers when drift profiling is on
    # render() is what /metrics serves: Triton's counters rendered by hand, then the registry
    return _registry_names(worker.registry) | _text_format_names(worker.render().decode())


# --- PromQL metric-name extraction -----------------------------------------------------------------

_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}  # fmt: skip
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*+)(?!\s*\()")  # *+: no backtracking


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) selects."""
    expr = re.sub(r"\$\{?\w+\}?", "1", expr)  # Grafana variables ($__rate_interval, ${pool}, ...)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", "", expr)  # label matchers
    values = re.fullmatch(r"\s*label_values\((.*)\)\s*", expr, re.S)
    if values:  # label_values(metric{...}, label) or label_values(label)
        args = values.group(1)
        if "," not in args:
            return set()
        expr = args.rsplit(",", 1)[0]
    expr = re.sub(r"\[[^\[\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    return {name for name in _IDENT.findall(expr) if name.lower() not in _KEYWORDS}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'histogram_quantile(0.99, sum by (le, kind) (rate(a_seconds_bucket{job=~"$job"}[$__rate_interval])))',
            {"a_seconds_bucket"},
        ),
        (
            "sum by (m) (rate(x_total[5m])) / 1000 / sum without (pod) (rate(y[1h:5m] offset 1d))",
            {"x_total", "y"},
        ),
        ("max by (pod) (time() - (last_ts > 0))", {"last_ts"}),
        ('a{l="b{c}"} and on (x) group_left (y) b unless c or bool 1e6', {"a", "b", "c"}),
        ('label_values(nv_req{model=~"$model"}, version)', {"nv_req"}),
        ("label_values(model)", set()),
        ("vector(1) + scalar(sum(z:recorded:rate5m))", {"z:recorded:rate5m"}),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_collected_names_include_the_suffixed_forms() -> None:
    """The collector knows counters by ``_total`` and histograms by their three series."""
    operator = operator_metric_names()
    assert {"continuum_placements_total", "continuum_reconcile_duration_seconds_bucket"} <= operator
    assert "continuum_placements" not in operator and "continuum_reconcile_duration_seconds" not in operator
    worker = worker_metric_names()
    assert {
        "nv_inference_request_success",
        "continuum_state_syncs_total",
        "continuum_state_commit_seconds_count",
    } <= worker
    assert "nv_inference_request_success_total" not in worker


# --- the dashboards --------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def _queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) of every panel target and every query variable."""
    out = []
    for panel in _panels(board):
        for target in panel.get("targets") or []:
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", query))
    return out


def test_there_are_two_dashboards() -> None:
    assert [p.name for p in DASHBOARDS] == ["continuum-operator.json", "continuum-workers.json"]
    uids = [_load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_expression_uses_exported_metrics_only(path: Path) -> None:
    exported = operator_metric_names() if path.stem.endswith("operator") else worker_metric_names()
    board = _load(path)
    seen: set[str] = set()
    for where, expr in _queries(board):
        names = metric_names(expr)
        assert names or where.startswith("variable"), f"{path.name} {where}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{path.name} {where}: {sorted(unknown)} not exported by the code ({expr!r})"
        seen |= names
    assert len(seen) >= 10, f"{path.name} uses only {sorted(seen)}"


def test_a_misspelt_metric_is_caught() -> None:
    exported = operator_metric_names()
    assert metric_names("sum(rate(continuum_placement_total[5m]))") - exported == {
        "continuum_placement_total"
    }
    assert metric_names("continuum_reconcile_duration_seconds") - exported  # histogram needs a suffix


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    board = _load(path)
    assert board["title"].startswith("Continuum / ")
    assert "continuum" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    panels = _panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    for where, expr in _queries(board):
        for var in re.findall(r"\$\{?(\w+)\}?", expr):
            assert var.startswith("__") or var in variables, f"{where}: ${var} is not a dashboard variable"


def test_dashboards_cover_what_the_issue_asks_for() -> None:
    """Operator: placements by tier and result, unschedulable, re-placements, pool utilisation,
    reconcile latency, API errors. Workers: request rate, latency percentiles per model/version, batch sizes,
    offload and breaker state, state sync lag."""
    wanted = {
        "continuum-operator": {
            "continuum_placements_total", "continuum_unschedulable_workloads", "continuum_replacements_total",
            "continuum_pool_utilization_ratio", "continuum_reconcile_duration_seconds_bucket",
            "continuum_api_errors_total",
        },
        "continuum-workers": {
            "nv_inference_request_success", "continuum_worker_request_duration_seconds_bucket",
            "continuum_worker_batch_size_bucket", "continuum_worker_offloaded_total",
            "continuum_worker_fallbacks_total", "continuum_worker_upstream_up",
            "continuum_state_last_sync_timestamp_seconds",
        },
    }  # fmt: skip
    for path in DASHBOARDS:
        used = set().union(*(metric_names(e) for _, e in _queries(_load(path))))
        assert wanted[path.stem] <= used, f"{path.name} lacks {sorted(wanted[path.stem] - used)}"
    # latency and batch-size percentiles per model and version, from the worker's histograms
    workers = [e for _, e in _queries(_load(CHART / "dashboards" / "continuum-workers.json"))]
    for metric in ("continuum_worker_request_duration_seconds", "continuum_worker_batch_size"):
        quantiles = {
            float(m.group(1))
            for e in workers
            for m in re.finditer(
                rf"histogram_quantile\((0\.\d+), sum by \(le, model, version\) \(rate\({metric}_bucket\{{", e
            )
        }
        assert quantiles == {0.5, 0.9, 0.99}, (metric, quantiles)


# --- the chart -------------------------------------------------------------------------------------


def _dashboard_maps(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in of_kind(objs, "ConfigMap")
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"
    ]


@requires_helm
def test_off_by_default() -> None:
    objs = render({})
    assert not _dashboard_maps(objs)
    assert not of_kind(objs, "PodMonitor")


@requires_helm
def test_enabled_renders_both_dashboards_for_the_grafana_sidecar() -> None:
    maps = _dashboard_maps(render(ENABLED))
    assert sorted(m["metadata"]["name"] for m in maps) == [
        f"{RELEASE}-dashboard-operator",
        f"{RELEASE}-dashboard-workers",
    ]
    for cm in maps:
        kubernetes_validate.validate(cm, KUBE_VERSION, strict=True)
        assert cm["metadata"]["namespace"] == NAMESPACE
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == _load(CHART / "dashboards" / key)


@requires_helm
def test_sidecar_label_namespace_and_folder_are_configurable() -> None:
    values = {
        "dashboards": {
            "enabled": True,
            "namespace": "monitoring",
            "label": "grafana.io/dashboard",
            "labelValue": "continuum",
            "labels": {"team": "edge"},
            "annotations": {"grafana_folder": "Continuum"},
        }
    }
    maps = _dashboard_maps(render(values))
    assert len(maps) == 2
    for cm in maps:
        meta = cm["metadata"]
        assert meta["namespace"] == "monitoring"
        assert (
            meta["labels"]["grafana.io/dashboard"] == "continuum"
            and "grafana_dashboard" not in meta["labels"]
        )
        assert meta["labels"]["team"] == "edge"
        assert meta["annotations"] == {"grafana_folder": "Continuum"}


@requires_helm
def test_worker_pod_monitor_selects_the_rendered_workers() -> None:
    from continuum.api.loader import load_manifests
    from continuum.render.worker import workload_labels

    objs = render({"dashboards": {"workerPodMonitor": {"enabled": True, "labels": {"release": "kps"}}}})
    monitor = one(objs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    workload = load_manifests([str(EXAMPLES / "workloads")]).workloads[0]
    labels = workload_labels(workload)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


@requires_helm
def test_helm_lint_with_dashboards(tmp_path: Path) -> None:
    values = {"dashboards": {"enabled": True, "workerPodMonitor": {"enabled": True}}}
    proc = run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=values, tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@requires_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dashboards": {"enabeld": True}}, "'enabeld' not allowed"),
        ({"dashboards": {"workerPodMonitor": {"interval": "soon"}}}, "/dashboards/workerPodMonitor/interval"),
    ],
)
def test_bad_dashboard_values_fail_naming_the_key(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    proc = run_helm("template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
