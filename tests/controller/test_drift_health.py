"""Drift in the operator: the worker's drift view as status, the Drifting condition, its Events, and
the probe asking a real worker process on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from continuum.api.models import Condition, DriftStatus, EdgeWorkloadStatus
from continuum.controller.drift_health import DriftProbe, parse_drift_report, significant
from continuum.controller.keys import WorkloadKey
from continuum.controller.status import drift_event, drifting_condition

from tests.worker import modelgen
from tests.worker.conftest import WorkerProcess

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_drift_view_becomes_status_and_a_condition():
    view = {"model": "m", "version": "2", "drifting": True, "score": 0.31234,
            "last": {"status": "drifting", "samples": 1200, "drifting_features": ["x[1]", "x[2]"],
                     "drifting_outputs": ["y"]}}  # fmt: skip
    status = parse_drift_report(view, T0)
    assert (status.score, status.drifting, status.samples, status.version) == (0.3123, True, 1200, "2")
    assert status.features == ["x[1]", "x[2]", "y"] and status.window_status == "drifting"
    assert drifting_condition(status)[:2] == (True, "Drifting")
    ok = parse_drift_report(
        {**view, "drifting": False, "score": 0.02, "last": {"status": "ok", "samples": 900}}, T0
    )
    assert drifting_condition(ok)[:2] == (False, "WithinReference")
    few = parse_drift_report(
        {"drifting": False, "score": None, "last": {"status": "insufficient", "samples": 3}}, T0
    )
    assert drifting_condition(few) == (None, "NotScored", "the last window had too few rows (3)")
    assert drifting_condition(None)[1] == "NotObserved"
    assert drifting_condition(DriftStatus(observed_at=T0, reachable=False, message="HTTP 404: x")) == (
        None, "Unreachable", "HTTP 404: x")  # fmt: skip
    assert "malformed" in (parse_drift_report([1], T0).message or "")
    assert "malformed" in (parse_drift_report({"score": "high"}, T0).message or "")
    # a score that moves by less than 0.01 does not rewrite the status
    assert significant(status) == significant(status.model_copy(update={"score": 0.3149}))
    assert significant(status) != significant(status.model_copy(update={"score": 0.33}))


def _with(status: str | None) -> EdgeWorkloadStatus:
    conds = (
        []
        if status is None
        else [Condition(type="Drifting", status=status, reason="r", message=f"now {status}")]
    )
    return EdgeWorkloadStatus(conditions=conds)


def test_events_when_drift_starts_and_ends():
    assert drift_event(_with(None), _with("True")) == ("Warning", "DriftStarted", "now True")
    assert drift_event(_with("False"), _with("True")) == ("Warning", "DriftStarted", "now True")
    assert drift_event(_with("True"), _with("True")) is None
    assert drift_event(_with("True"), _with("False")) == ("Normal", "DriftEnded", "now False")
    assert drift_event(_with("True"), _with("Unknown")) is None  # an unreachable worker is not an end
    assert drift_event(_with("False"), _with("False")) is None


@pytest.fixture
def drifting_worker(tmp_path: Path):  # type: ignore[no-untyped-def]
    model = modelgen.mlp(tmp_path / "mlp.onnx")
    np.save(tmp_path / "s.npy", np.random.default_rng(0).normal(size=(3000, 64)).astype(np.float32))
    subprocess.run([sys.executable, "-m", "continuum_worker.cli", "profile", "--model", str(model), "--data",
                    str(tmp_path / "s.npy"), "--out", str(tmp_path / "ref.json")], check=True, timeout=60)  # fmt: skip
    worker = WorkerProcess(["--model-name", "mlp", "--model-uri", str(model), "--drift-reference",
                            str(tmp_path / "ref.json"), "--drift-window-seconds", "0.2", "--drift-min-samples", "200"])  # fmt: skip
    x = np.random.default_rng(1).normal(0.7, 1.0, size=(300, 64)).astype(np.float32)
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [300, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    )
    req = urllib.request.Request(
        f"http://{worker.url}/v2/models/mlp/infer", body.encode(), {"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=10).read()
    time.sleep(0.25)
    yield worker
    worker.stop()


def test_the_probe_asks_a_real_worker(drifting_worker: WorkerProcess):
    key, missing = WorkloadKey("ns", "line"), WorkloadKey("ns", "gone")
    health: dict[WorkloadKey, DriftStatus] = {missing: DriftStatus(observed_at=T0, reachable=True)}
    requeued: list[WorkloadKey] = []
    port = drifting_worker.port
    probe = DriftProbe(lambda: [(key, port, "mlp"), (WorkloadKey("ns", "other"), port, "nope")], health,
                       requeued.append, url_template="http://127.0.0.1:{port}")  # fmt: skip

    async def poll() -> None:
        async with aiohttp.ClientSession() as session:
            await probe.poll_once(session)
            await probe.poll_once(session)  # nothing changed: no second requeue

    asyncio.run(poll())
    status = health[key]
    assert (
        status.reachable and status.drifting and status.samples == 300 and status.score and status.score > 0.1
    )
    assert drifting_condition(status)[0] is True
    other = health[WorkloadKey("ns", "other")]
    assert not other.reachable and "HTTP 404" in (other.message or "")
    assert missing not in health and requeued == [key, WorkloadKey("ns", "other")]
