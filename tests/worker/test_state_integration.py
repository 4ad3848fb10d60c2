"""The worker with a state volume: inference results become CRDT counters and events, survive restarts,
and reach the upstream tier — also after the upstream was gone for a while."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tests.worker.conftest import WorkerProcess
from tests.worker.test_serving import infer

TOKEN = "t0ken"


def get(worker: WorkerProcess, path: str, token: str | None = TOKEN) -> dict:
    request = urllib.request.Request(f"http://{worker.url}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def inferences(worker: WorkerProcess) -> float:
    counters = get(worker, "/state")["counters"]
    return counters.get("mlp/inferences", {}).get("value", 0)


def wait(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_inference_results_are_recorded_synced_and_survive_restarts(start_worker, models: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = ["--model-name", "mlp", "--model-uri", str(models["mlp"]), "--state-token", TOKEN]
    cloud = start_worker(*model, "--state-dir", str(tmp_path / "cloud"))
    edge_args = [*model, "--state-dir", str(tmp_path / "edge"), "--sync-to", f"http://{cloud.url}"]
    edge = start_worker(*edge_args, env={"CONTINUUM_EVENT_THRESHOLD": "0.1"})
    rng = np.random.default_rng(0)
    for _ in range(10):
        infer(edge.url, rng.random((3, 64), dtype=np.float32))
    assert inferences(edge) == 30  # every row counted per class, durably, without the client waiting
    state = get(edge, "/state")
    per_class = sum(v["value"] for k, v in state["counters"].items() if k.startswith("mlp/OUTPUT0/class/"))
    assert per_class == 30
    assert state["events"]["mlp"], "scores above the threshold are logged as events"

    # Only summaries travel: the upstream converges on the edge's counters.
    wait(lambda: inferences(cloud) == 30, what="the upstream to receive the edge's counts")
    status = wait(lambda: (s := get(edge, "/state/sync", token=None))["last_sync_time"] and s, what="a sync")
    assert status["peers"] == 1 and status["error"] is None
    wait(lambda: get(edge, "/state/sync", token=None)["pending_updates"] == 0, what="the upstream's acknowledgement")

    # Upstream gone: the edge keeps serving and recording, reports the failures, and catches up later.
    cloud.stop()
    for _ in range(5):
        infer(edge.url, rng.random((2, 64), dtype=np.float32))
    assert inferences(edge) == 40
    down = wait(lambda: (s := get(edge, "/state/sync", token=None))["sync_failures"] > 0 and s, what="sync failures")
    assert down["pending_updates"] > 0 and down["error"]
    cloud.start()
    wait(lambda: inferences(cloud) == 40, timeout=60, what="the upstream to catch up after reconnecting")

    # A restart keeps what was acknowledged (new process, new CRDT client id, same volume).
    assert edge.stop() == 0
    edge.start()
    assert inferences(edge) == 40
    infer(edge.url, rng.random((1, 64), dtype=np.float32))
    assert inferences(edge) == 41
    wait(lambda: inferences(cloud) == 41, what="sync after the edge restarted")


def test_state_api_needs_the_token_and_replicas_skip_themselves(start_worker, models: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    peer = start_worker("--model-name", "mlp", "--model-uri", str(models["mlp"]), "--state-dir", str(tmp_path / "p"))
    worker = start_worker(
        "--model-name", "mlp", "--model-uri", str(models["mlp"]), "--state-dir", str(tmp_path / "w"),
        "--state-token", TOKEN, "--replica-id", "mlp-line-0",
        # as the operator renders it: every replica's URL, its own included
        "--sync-peers", f"http://mlp-line-0.mlp-peers.ns.svc:8000,http://{peer.url}",
    )  # fmt: skip
    assert get(worker, "/state/sync", token=None)["peers"] == 1  # itself skipped
    request = urllib.request.Request(
        f"http://{worker.url}/state/counters/visitors", data=b'{"by": 2}', method="POST"
    )
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("a write without the token was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
    assert get(worker, "/state")["counters"]["visitors"]["value"] == 2
