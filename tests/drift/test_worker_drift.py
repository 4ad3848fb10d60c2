"""The drift monitor inside real worker processes: the profile CLI, the drift view, metrics, a site
syncing its summaries to a cloud-tier worker that merges them; configuration errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.worker import modelgen
from tests.worker.conftest import WorkerProcess

CLI = [sys.executable, "-m", "continuum_worker.cli"]


@pytest.fixture(scope="module")
def model_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("drift")
    model = modelgen.mlp(root / "mlp.onnx")
    np.save(root / "sample.npy", np.random.default_rng(0).normal(size=(4000, 64)).astype(np.float32))
    out = subprocess.run([*CLI, "profile", "--model", str(model), "--data", str(root / "sample.npy"),
                          "--out", str(root / "ref.json")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "4000 rows, 66 features" in out.stdout
    return model, root / "ref.json"


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def _infer(w: WorkerProcess, x: np.ndarray) -> None:
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()  # fmt: skip
    req = urllib.request.Request(
        f"http://{w.url}/v2/models/mlp/infer", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def _drift(w: WorkerProcess) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://{w.url}/v2/models/mlp/drift", timeout=10) as r:
        return json.loads(r.read())


def test_a_site_detects_drift_and_the_cloud_merges_its_summaries(
    model_and_reference: tuple[Path, Path], workers: list[WorkerProcess], tmp_path: Path
) -> None:
    model, ref = model_and_reference
    common = ["--model-name", "mlp", "--model-uri", str(model), "--drift-reference", str(ref),
              "--drift-window-seconds", "0.3", "--drift-upload-seconds", "0.3", "--drift-min-samples", "200"]  # fmt: skip
    cloud = WorkerProcess([*common, "--state-dir", str(tmp_path / "cloud")])
    workers.append(cloud)
    site = WorkerProcess([*common, "--state-dir", str(tmp_path / "site"), "--sync-to", f"http://{cloud.url}"])
    workers.append(site)
    rng = np.random.default_rng(5)
    # one request: a loaded machine cannot split it over two windows
    _infer(site, rng.normal(0.6, 1.0, size=(300, 64)).astype(np.float32))
    time.sleep(0.35)
    view = _drift(site)  # closes the due window (and the upload period)
    assert view["drifting"] and view["last"]["samples"] == 300 and view["reference"]["rows"] == 4000, view
    closed = view["last"]["samples"]
    # below --drift-sample-rate (500 rows/s, and the first window is profiled in full): every row
    assert view["last"]["rows_seen"] == closed and view["last"]["sample_fraction"] == 1.0
    assert view["sampling"]["rate"] == 500.0 and view["sampling"]["rows_seen"] == 300
    assert site.metric("continuum_drift_rows_seen_total", model="mlp", version="1") == 300
    assert (
        view["upstream"]["summaries"] == 1
        and 0 < view["upstream"]["summary_bytes"] < view["upstream"]["input_bytes"]
    )
    assert site.metric("continuum_drift_drifting", model="mlp", version="1") == 1
    assert (
        site.metric("continuum_drift_summary_bytes_total", model="mlp") == view["upstream"]["summary_bytes"]
    )
    deadline = time.monotonic() + 20  # the state's sync carries the summary upstream
    fleet = None
    while time.monotonic() < deadline:
        fleet = _drift(cloud).get("fleet")
        if fleet:
            break
        time.sleep(0.2)
    assert fleet is not None, "the summary never reached the cloud replica"
    assert fleet["rows"] == closed and len(fleet["replicas"]) == 1 and fleet["report"]["drifting"]
    assert fleet["rows_seen"] == closed and fleet["weighted_by"] == "profiled rows"
    assert list(fleet["sites"].values()) == [{"rows": closed, "rows_seen": closed}]
    assert fleet["input_bytes"] == closed * 64 * 4  # the cloud knows how much data it did not receive


def test_configuration_errors_name_the_field(model_and_reference: tuple[Path, Path], tmp_path: Path) -> None:
    model, ref = model_and_reference
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    out = subprocess.run([*CLI, "serve", "--model-name", "m", "--model-uri", str(model), "--drift-reference", str(bad)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--drift-reference" in out.stderr and "not a drift profile" in out.stderr
    out = subprocess.run([*CLI, "serve", "--model-repository", str(tmp_path), "--drift-reference", str(ref)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "drift_reference.json" in out.stderr
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    out = subprocess.run([*CLI, "profile", "--model", str(model), "--data", str(tmp_path / "rows.csv"),
                          "--out", str(tmp_path / "o.json")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--data" in out.stderr and "do not fit input 'INPUT0'" in out.stderr
    out = subprocess.run([*CLI, "profile", "--model", str(tmp_path / "none.onnx"), "--data", str(tmp_path / "rows.csv"),
                          "--out", str(tmp_path / "o.json")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--model" in out.stderr and "no such file" in out.stderr


def test_drift_off_answers_with_a_json_error(
    model_and_reference: tuple[Path, Path], workers: list[WorkerProcess]
) -> None:
    model, _ = model_and_reference
    w = WorkerProcess(["--model-name", "mlp", "--model-uri", str(model), "--drift-window-seconds", "0"])
    workers.append(w)
    _infer(w, np.zeros((1, 64), np.float32))
    with pytest.raises(urllib.error.HTTPError) as err:
        _drift(w)
    assert "drift profiling is off" in json.loads(err.value.read())["error"]
