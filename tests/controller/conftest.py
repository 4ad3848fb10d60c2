"""Fixtures for the controller's unit tests: the examples' cluster as a snapshot, their workloads."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

pytest.importorskip("kopf")

from continuum.api.loader import load_manifests
from continuum.api.models import EdgeWorkload
from continuum.placement.snapshot import ClusterSnapshot, build_snapshot

from tests.conftest import EXAMPLES


@pytest.fixture(scope="session")
def example_snapshot() -> ClusterSnapshot:
    manifests = load_manifests([EXAMPLES / "cluster"])
    return build_snapshot(manifests.pools, manifests.nodes)


@pytest.fixture(scope="session")
def example_workloads() -> dict[str, EdgeWorkload]:
    manifests = load_manifests([EXAMPLES / "workloads"])
    return {w.name: w for w in manifests.workloads}


@pytest.fixture(scope="session")
def example_nodes() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load((EXAMPLES / "cluster" / "nodes.yaml").read_text())["items"]]
