"""Rollouts end to end: the operator (kopf, in a thread) against the API emulator, the store-chain example
(examples/fleets/store-chain: six stores, waves ring-0 → ring-1 → rest), and a REAL worker process
(``continuum-worker serve``) per store, reached the way the operator reaches workers for state health
(the worker URL template) through a small proxy that maps ``/{namespace}/{service}/...`` to each store's
worker. A client sends requests to every store during the rollout.

(a) a good version (the same weights under a new version) is promoted through every wave; (b) a bad one
is rolled back in its first wave, with the cause in status and an Event: other weights (its top-1 answers
disagree with the stable's) or another input width (it fails on every request) by the agreement gate in
shadow; the same answers ~0.1 s slower by the latency gate in the canary. No client request fails in any run.
The gate settings are the example's, with small sample sizes so that a run takes well under a minute.
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from continuum.render.worker import service_name_for

from tests.conftest import EXAMPLES
from tests.operator.conftest import Harness, docs, wait_for
from tests.worker import modelgen
from tests.worker.conftest import WorkerProcess

pytest.importorskip("onnx")

SETS = "continuum.dev/v1alpha1/edgeworkloadsets"
WORKLOADS = "continuum.dev/v1alpha1/edgeworkloads"
CHAIN = EXAMPLES / "fleets" / "store-chain"
NS = "retail"
MODEL = "footfall-counter"
RING_0 = ["store-berlin-mitte"]
STORES = ["store-berlin-mitte", "store-hamburg", "store-lyon", "store-munich", "store-paris", "store-vienna"]
RATE = 25.0  # client requests per second per store


class Proxy:
    """``/{namespace}/{service}/rest`` → ``http://{the store's worker}/rest`` (GET and PUT, bodies as is)."""

    def __init__(self) -> None:
        self.routes: dict[str, str] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                parts = self.path.split("/", 3)  # "", namespace, service, rest
                target = outer.routes.get(f"{parts[1]}/{parts[2]}") if len(parts) == 4 else None
                if target is None:
                    self.reply(503, b"no such worker")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                request = urllib.request.Request(
                    f"http://{target}/{parts[3]}",
                    data=data,
                    method=self.command,
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as r:
                        self.reply(r.status, r.read())
                except urllib.error.HTTPError as exc:
                    self.reply(exc.code, exc.read())
                except OSError as exc:
                    self.reply(502, str(exc).encode())

            do_GET = do_PUT = forward

            def reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{{namespace}}/{{service}}"


class Load:
    """One client thread per store sending ``/infer`` requests to that store's worker; counts failures."""

    def __init__(self, workers: dict[str, WorkerProcess]) -> None:
        self.workers = workers
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(s,), daemon=True) for s in workers]

    def run(self, store: str) -> None:
        rng = np.random.default_rng(abs(hash(store)) % 2**32)
        url = f"http://{self.workers[store].url}/v2/models/{MODEL}/infer"
        while not self.stop.is_set():
            x = rng.normal(size=64).astype(np.float32).tolist()
            body = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": x}]}
            request = urllib.request.Request(
                url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    answer = json.loads(r.read())
                    assert any(o["name"] == "OUTPUT0" for o in answer["outputs"])
                with self.lock:
                    self.ok += 1
            except (OSError, AssertionError, KeyError, ValueError) as exc:
                with self.lock:
                    self.failed.append(f"{store}: {type(exc).__name__}: {exc}")
            time.sleep(1 / RATE)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=40)


def slower(path: Path, v4: Path, width: int = 2048, depth: int = 160) -> Path:
    """The stable model's answers exactly, plus ``depth`` chained ``width``-wide layers whose result is
    multiplied by zero and added to LOGITS: the same outputs, ~0.1 s slower per request (0.6 ms per layer
    here, one thread). That is far above the stable's tail on purpose: with p99s taken over 100 requests on
    a shared 2-core machine, a stall of the machine lifts both versions' tails, and a candidate only ~5 ms
    slower (depth 8; ~24 ms at p99 in the test) was once let through ring-0 by a stable p99 above 20 ms."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(v4))
    graph = model.graph
    rng = np.random.default_rng(7)
    graph.initializer.extend(
        [
            numpy_helper.from_array(rng.normal(0, 1 / 8, (64, width)).astype(np.float32), "SLOW_IN"),
            numpy_helper.from_array(rng.normal(0, 1 / 45, (width, width)).astype(np.float32), "SLOW_W"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "SLOW_ZERO"),
        ]
    )
    nodes = [helper.make_node("MatMul", ["INPUT0", "SLOW_IN"], ["slow_0"])]
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "SLOW_W"], [f"slow_m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"slow_{depth}"], ["slow_sum"], keepdims=1))
    nodes.append(helper.make_node("Mul", ["slow_sum", "SLOW_ZERO"], ["slow_nothing"]))
    # LOGITS = h3 + B2 (+ 0 · the slow branch): rename the original LOGITS producer, add the branch to it
    for node in graph.node:
        if list(node.output) == ["LOGITS"]:
            node.output[0] = "logits_fast"
        node.input[:] = ["logits_fast" if x == "LOGITS" else x for x in node.input]
    nodes.append(helper.make_node("Add", ["logits_fast", "slow_nothing"], ["LOGITS"]))
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    softmax.input[0] = "LOGITS"
    ordered = [n for n in graph.node if n.op_type != "Softmax"] + nodes + [softmax]
    del graph.node[:]
    graph.node.extend(ordered)
    graph.name = "footfall_slower"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    v4 = modelgen.mlp(tmp_path / "footfall-4.onnx", seed=0)
    good = tmp_path / "footfall-5-good.onnx"
    shutil.copy(v4, good)  # the same weights: every answer agrees
    bad = modelgen.mlp(tmp_path / "footfall-5-bad.onnx", seed=2)  # other weights: top-1 answers differ
    # another input width: it fails on every request the stores send (an error on each shadowed copy)
    failing = modelgen.mlp(tmp_path / "footfall-5-failing.onnx", features=32, seed=0)
    slow = slower(tmp_path / "footfall-5-slower.onnx", v4)  # the same answers, ~0.1 s slower each
    return {"4": v4, "good": good, "bad": bad, "failing": failing, "slower": slow}


@pytest.fixture
def fleet(
    tmp_path: Path, models: dict[str, Path]
) -> Iterator[tuple[Harness, Proxy, dict[str, WorkerProcess]]]:
    args = ["--model-name", MODEL, "--model-uri", str(models["4"]), "--model-version", "4", "--threads", "1"]
    with ThreadPoolExecutor(len(STORES)) as pool:
        started = list(pool.map(lambda _: WorkerProcess(args), STORES))
    workers = dict(zip(STORES, started, strict=True))
    proxy = Proxy()
    for store, worker in workers.items():
        proxy.routes[f"{NS}/{service_name_for(f'footfall-{store}')}"] = worker.url
    h = Harness(tmp_path)
    try:
        for obj in docs(CHAIN / "nodes.yaml") + docs(CHAIN / "pools.yaml"):
            h.apply(obj)
        h.start_operator(worker_url_template=proxy.template)
        yield h, proxy, workers
    finally:
        h.close()
        proxy.server.shutdown()
        for worker in workers.values():
            worker.stop()


def the_set(model_uri: Path, version: str) -> dict[str, Any]:
    """The example's set (waves ring-0, ring-1, rest; shadow → canary → full) with local model files and
    small samples: minSamples 20 and maxSamples 40 candidate requests per step, p99s compared on 100
    requests, a 50 % canary, 1 s windows."""
    (ews,) = docs(CHAIN / "set.yaml")
    ews = copy.deepcopy(ews)
    ews["spec"]["template"]["model"] = {"name": MODEL, "uri": str(model_uri), "version": version}
    rollout = ews["spec"]["rollout"]
    assert [w["name"] for w in rollout["waves"]] == ["ring-0", "ring-1"]
    rollout["steps"] = [{"shadow": {}}, {"canary": {"weight": 50}}, {"full": {}}]
    # p99s compared on 100 requests of each version (the default 1,000 would take minutes at this load),
    # with a 15 ms slack: this machine is shared, and a stall of a few ms is not the version's doing
    rollout["gate"].update(minSamples=20, maxSamples=40, latencyMinSamples=100, latencySlackSeconds=0.015)
    rollout["windowSeconds"] = 1
    return ews


def rollout_status(h: Harness) -> dict[str, Any]:
    return ((h.cluster.get(SETS, "footfall", NS) or {}).get("status") or {}).get("rollout") or {}


def worker_view(worker: WorkerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{worker.url}/v2/models/{MODEL}/rollout", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def child_versions(h: Harness) -> dict[str, str]:
    return {
        w["metadata"]["labels"]["continuum.dev/site"]: w["spec"]["model"]["version"]
        for w in h.cluster.list(WORKLOADS, NS)
        if w["metadata"].get("labels", {}).get("continuum.dev/set") == "footfall"
    }


def event_log(h: Harness) -> list[str]:
    return [f"{e.get('reason')}: {e.get('message')}" for e in h.events(name="footfall")]


def start(h: Harness, models: dict[str, Path]) -> None:
    h.apply(the_set(models["4"], "4"))
    wait_for(lambda: set(child_versions(h)) == set(STORES), timeout=30, what="six children")
    wait_for(lambda: rollout_status(h).get("phase") == "Stable", timeout=30, what="a stable set")
    assert rollout_status(h)["stable"]["version"] == "4"


def test_a_good_version_is_promoted_through_every_wave(
    fleet: tuple[Harness, Proxy, dict[str, WorkerProcess]], models: dict[str, Path]
) -> None:
    h, _, workers = fleet
    start(h, models)
    with Load(workers) as load:
        time.sleep(1)
        started = time.monotonic()
        h.apply(the_set(models["good"], "5"))
        seen_waves: list[str] = []

        def promoted() -> bool:
            status = rollout_status(h)
            if status.get("waveName") and status["waveName"] not in seen_waves:
                seen_waves.append(status["waveName"])
            return status.get("phase") == "Promoted" and not status.get("promoting")

        try:
            wait_for(promoted, timeout=120, what="promotion")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; status.rollout: {rollout_status(h)}; events: {event_log(h)}"
            ) from None
        took = time.monotonic() - started
    status = rollout_status(h)
    assert status["stable"]["version"] == "5" and "candidate" not in status
    assert [w["name"] for w in status["waves"]] == ["ring-0", "ring-1", "rest"]
    assert [w["sites"] for w in status["waves"]] == [1, 2, 3]
    assert seen_waves[0] == "ring-0" and seen_waves.index("ring-0") < seen_waves.index("ring-1")
    assert child_versions(h) == dict.fromkeys(STORES, "5")
    for store, worker in workers.items():  # every worker promoted the version in memory
        view = worker_view(worker)
        assert view["stable"]["version"] == "5" and view["candidate"] is None and view["mode"] == "stable", (
            store
        )
        assert view["versions"]["5"]["requests"] > 0, store  # it served the canary and full steps
    wait_for(
        lambda: "RolloutPromoted" in [e.get("reason") for e in h.events(name="footfall")],
        timeout=15,
        what="the RolloutPromoted Event",
    )
    reasons = [e.get("reason") for e in h.events(name="footfall")]
    assert reasons.count("WaveDone") == 3 and "RolloutStarted" in reasons and "RolloutPromoted" in reasons
    assert "RolledBack" not in reasons
    assert load.failed == [], load.failed[:5]
    assert load.ok > 100
    print(f"promoted through 3 waves in {took:.1f} s, {load.ok} client requests, none failed")


CAUGHT = {
    "bad": "rolled back: wave ring-0 step 1 (shadow): agreement gate",
    "failing": "rolled back: wave ring-0 step 1 (shadow): agreement gate",
    "slower": "rolled back: wave ring-0 step 2 (canary): latency gate: candidate p99",
}


@pytest.mark.parametrize("bad", list(CAUGHT))
def test_a_bad_version_is_rolled_back_in_its_first_wave(
    fleet: tuple[Harness, Proxy, dict[str, WorkerProcess]], models: dict[str, Path], bad: str
) -> None:
    """``bad``: its answers disagree with the stable's; ``failing``: it fails on every request (a candidate
    error on a shadowed copy counts as a disagreement): both caught in shadow, no client sees them.
    ``slower``: the same answers (it passes shadow), but its p99 latency in the canary is far above the
    stable's: the latency gate rolls it back (clients got slower answers, none failed)."""
    h, _, workers = fleet
    start(h, models)
    with Load(workers) as load:
        time.sleep(1)
        h.apply(the_set(models[bad], "5"))
        try:
            wait_for(lambda: rollout_status(h).get("phase") == "RolledBack", timeout=90, what="a rollback")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; status.rollout: {rollout_status(h)}; events: {event_log(h)}"
            ) from None
        status = rollout_status(h)
        decided = datetime.fromisoformat(status["finishedAt"].replace("Z", "+00:00"))

        def ring_0_stable() -> bool:
            return all(
                (v := worker_view(workers[s]))["mode"] == "stable" and v["candidate"] is None for s in RING_0
            )

        wait_for(ring_0_stable, timeout=60, what="ring-0 back on the stable version")
        back = datetime.now(decided.tzinfo)
        time.sleep(1)
    assert (back - decided).total_seconds() < 60
    print(f"rolled back {(back - decided).total_seconds():.1f} s after the decision: {status['cause']}")
    assert status["cause"].startswith(CAUGHT[bad]), status["cause"]
    assert status["candidate"]["version"] == "5" and status["stable"]["version"] == "4"
    assert not status.get("reverting") or set(status["reverting"]) <= set(RING_0)
    condition = next(
        c for c in h.cluster.get(SETS, "footfall", NS)["status"]["conditions"] if c["type"] == "Rollout"
    )
    assert condition["status"] == "False" and condition["reason"] == "RolledBack"
    assert CAUGHT[bad].split(": ")[2] in condition["message"]
    events = wait_for(
        lambda: [e for e in h.events(name="footfall") if e.get("reason") == "RolledBack"],
        timeout=15,
        what="the RolledBack Event",
    )
    assert "wave ring-0" in events[0]["message"] and events[0]["type"] == "Warning"
    # the other waves never saw the candidate; no child ever ran it
    for store in STORES:
        view = worker_view(workers[store])
        assert view["stable"]["version"] == "4" and view["candidate"] is None, store
        if store not in RING_0:
            assert view["generation"] == "" and "5" not in view["versions"], store
    assert child_versions(h) == dict.fromkeys(STORES, "4")
    # halted: the spec still names version 5 and nothing starts again
    time.sleep(2)
    assert rollout_status(h)["phase"] == "RolledBack"
    assert load.failed == [], load.failed[:5]
    assert load.ok > 50
