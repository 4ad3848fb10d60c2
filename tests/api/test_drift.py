"""Drift in the API: the status field, its bounds, and the DRIFT printer column of EdgeWorkload."""

from __future__ import annotations

from datetime import UTC, datetime

import pydantic
import pytest
import yaml
from continuum.api.crd import render_crds
from continuum.api.models import DriftStatus, EdgeWorkloadStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_drift_status_round_trips_in_camel_case_and_bounds_the_score():
    status = EdgeWorkloadStatus(drift=DriftStatus(observed_at=T0, reachable=True, score=0.31, drifting=True,
                                                  samples=1200, window_status="drifting", features=["x[1]"]))  # fmt: skip
    written = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert written["drift"]["windowStatus"] == "drifting" and written["drift"]["score"] == 0.31
    assert EdgeWorkloadStatus.model_validate(written).drift == status.drift
    with pytest.raises(pydantic.ValidationError, match="score"):
        DriftStatus(observed_at=T0, reachable=True, score=1.5)


def test_kubectl_get_ew_shows_the_drift_score():
    crd = yaml.safe_load(render_crds()["edgeworkloads.continuum.dev.yaml"])
    version = crd["spec"]["versions"][0]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Drift"] == {"name": "Drift", "type": "number", "jsonPath": ".status.drift.score"}
    drift = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["drift"]
    assert {"score", "drifting", "samples", "windowStatus", "features"} <= set(drift["properties"])
