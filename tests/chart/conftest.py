"""Helpers for the chart tests: find helm, render the chart with a value set (cached), load YAML.

helm comes from $HELM, then PATH, then the repository's .tools/helm (`make helm` fetches it with
scripts/fetch_helm.py). Without any of them the helm-based tests skip and say how to get it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES, ROOT

CHART = ROOT / "charts" / "continuum"
CRDS = ROOT / "crds"
RELEASE, NAMESPACE = "continuum", "continuum-system"

# Named value sets every helm-based test runs over.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ha": {"replicaCount": 2},
    "namespaced": {"operator": {"watchNamespaces": ["logistics", "retail"]}},
    "namespaced-ha-state": {
        "replicaCount": 3,
        "operator": {"watchNamespaces": ["logistics", NAMESPACE]},
        "state": {"enabled": True},
    },
    "crds-disabled": {"crds": {"enabled": False}},
    "crds-not-kept": {"crds": {"keep": False}},
    "state": {"state": {"enabled": True}},
    "peering-single": {"peering": {"enabled": True, "name": "edge-ops", "installCRDs": False}},
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        "podDisruptionBudget": {"minAvailable": "50%"},
        "image": {"digest": "sha256:" + "a" * 64},
        "operator": {"verbose": True, "extraEnv": [{"name": "TZ", "value": "UTC"}]},
    },
    "minimal": {
        "rbac": {"create": False, "aggregateToDefaultRoles": False},
        "serviceAccount": {"create": False, "name": "ops"},
        "podDisruptionBudget": {"enabled": False},
        "metrics": {"service": {"enabled": False}},
        "livenessProbe": {"enabled": False},
        "nodeSelector": None,
        "tolerations": [],
    },
}


def find_helm() -> str | None:
    for candidate in (os.environ.get("HELM"), shutil.which("helm"), str(ROOT / ".tools" / "helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


HELM = find_helm()
requires_helm = pytest.mark.skipif(
    HELM is None,
    reason="helm not found: set HELM=/path/to/helm, put helm on PATH, or run `make helm` "
    "(python3 scripts/fetch_helm.py .tools/helm)",
)


def run_helm(
    *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    cmd = [HELM, *args]
    if values:
        assert tmp is not None
        path = tmp / "values.json"
        path.write_text(json.dumps(values))
        cmd += ["-f", str(path)]
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/continuum-helm-cache",
        "HELM_CONFIG_HOME": "/tmp/continuum-helm-config",
    }
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)


@functools.cache
def _render(values_json: str) -> tuple[dict[str, Any], ...]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = run_helm(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            values=json.loads(values_json),
            tmp=Path(tmp),
        )
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed: {proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders for ``values`` (cached per value set)."""
    return [json.loads(json.dumps(d)) for d in _render(json.dumps(values, sort_keys=True))]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def load_docs(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
    out: list[dict[str, Any]] = []
    for file in files:
        for doc in yaml.safe_load_all(file.read_text()):
            if isinstance(doc, dict):
                out.append(doc)
    return out


__all__ = ["CHART", "CRDS", "EXAMPLES", "NAMESPACE", "RELEASE", "ROOT", "VALUE_SETS"]
