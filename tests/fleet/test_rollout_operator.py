"""Rollouts in the real operator (kopf, in a thread) against the API emulator, with fake workers that honour
docs/rollout-protocol.md (GET/PUT /v2/models/{m}/rollout, cumulative counters per process instance):
an operator restart in the middle of a rollout loses no evidence; paused / abort driven by spec patches;
an unreachable store is deferred and catches up; a version that cannot be rolled out is reported."""

from __future__ import annotations

import copy
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from continuum.render.worker import service_name_for

from tests.conftest import EXAMPLES
from tests.operator.conftest import Harness, docs, wait_for

SETS = "continuum.dev/v1alpha1/edgeworkloadsets"
WORKLOADS = "continuum.dev/v1alpha1/edgeworkloads"
CHAIN = EXAMPLES / "fleets" / "store-chain"
NS = "retail"
MODEL = "footfall-counter"
STORES = ["store-berlin-mitte", "store-hamburg", "store-lyon", "store-munich", "store-paris", "store-vienna"]


class FakeWorker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stable = {"version": "4", "uri": "/models/4.onnx"}
        self.candidate: dict[str, str] | None = None
        self.mode, self.weight, self.generation = "stable", 0.0, ""
        self.instance = secrets.token_hex(8)
        self.counters: dict[str, dict[str, int]] = {}
        self.puts = 0
        self.born = time.monotonic()

    def count(self, version: str) -> dict[str, int]:
        return self.counters.setdefault(version, {"requests": 0, "errors": 0, "compared": 0, "disagreed": 0})

    def serve(self, n: int, disagree: float) -> None:
        with self.lock:
            stable = self.count(self.stable["version"])
            cand = self.count(self.candidate["version"]) if self.candidate else None
            if cand is None or self.mode == "stable":
                stable["requests"] += n
            elif self.mode == "shadow":
                stable["requests"] += n
                cand["compared"] += n
                cand["disagreed"] += round(n * disagree)
            elif self.mode == "canary":
                to_candidate = round(n * self.weight)
                cand["requests"] += to_candidate
                stable["requests"] += n - to_candidate
            else:
                cand["requests"] += n

    def view(self) -> dict[str, Any]:
        with self.lock:
            return {
                "model": MODEL,
                "stable": dict(self.stable),
                "candidate": dict(self.candidate) if self.candidate else None,
                "mode": self.mode,
                "weight": self.weight,
                "generation": self.generation,
                "instance": self.instance,
                "versions": {
                    v: {
                        "requests": c["requests"],
                        "errors": c["errors"],
                        "latency_seconds_buckets": [[0.001, c["requests"]], ["+Inf", c["requests"]]],
                        "shadow_compared": c["compared"],
                        "shadow_disagreed": c["disagreed"],
                    }
                    for v, c in self.counters.items()
                },
            }

    def put(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.puts += 1
            if body.get("promote"):
                assert self.candidate is not None
                self.stable, self.candidate, self.mode, self.weight = self.candidate, None, "stable", 0.0
            else:
                cand = body.get("candidate")
                self.candidate = {"version": cand["version"], "uri": cand["uri"]} if cand else None
                self.mode, self.weight = body["mode"], float(body.get("weight") or 0.0)
            self.generation = body["generation"]

    def drift_view(self, candidate_drifts: bool) -> dict[str, Any]:
        """``GET /v2/models/{m}/drift`` (docs/drift.md): a window of each version closes every 0.2 s."""
        with self.lock:
            closed = int((time.monotonic() - self.born) / 0.2)

            def entry(drifts: bool) -> dict[str, Any]:
                return {"drifting": drifts, "score": 0.4 if drifts else 0.03, "status": "drifting" if drifts else "ok",
                        "samples": 1000, "windows_closed": closed, "output_score": 0.4 if drifts else 0.03,
                        "output_psi": 0.01, "output_drifting": drifts}  # fmt: skip

            versions = {self.stable["version"]: entry(False)}
            if self.candidate:
                versions[self.candidate["version"]] = entry(candidate_drifts)
            return {"model": MODEL, "version": self.stable["version"], "versions": versions}

    def restart(self) -> None:
        with self.lock:
            self.candidate, self.mode, self.weight, self.generation = None, "stable", 0.0, ""
            self.instance, self.counters = secrets.token_hex(8), {}


class FakeFleet:
    """One HTTP server for every store's fake worker: ``/{namespace}/{service}/v2/models/{m}/rollout``."""

    def __init__(self) -> None:
        self.workers = {s: FakeWorker() for s in STORES}
        self.by_service = {f"{NS}/{service_name_for(f'footfall-{s}')}": s for s in STORES}
        self.down: set[str] = set()
        self.disagree = 0.0
        self.candidate_drifts = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def worker(self) -> FakeWorker | None:
                parts = self.path.split("/", 3)
                store = outer.by_service.get(f"{parts[1]}/{parts[2]}") if len(parts) == 4 else None
                paths = (f"v2/models/{MODEL}/rollout", f"v2/models/{MODEL}/drift")
                if store is None or store in outer.down or parts[3] not in paths:
                    self.reply(503, {"error": "unavailable"})
                    return None
                return outer.workers[store]

            def do_GET(self) -> None:
                if (w := self.worker()) is not None:
                    drift = self.path.endswith("/drift")
                    self.reply(200, w.drift_view(outer.candidate_drifts) if drift else w.view())

            def do_PUT(self) -> None:
                if (w := self.worker()) is not None:
                    w.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                    self.reply(200, w.view())

            def reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.stop = threading.Event()
        threading.Thread(target=self.traffic, daemon=True).start()

    def traffic(self) -> None:
        while not self.stop.is_set():
            for store, worker in self.workers.items():
                if store not in self.down:
                    worker.serve(2, self.disagree)
            time.sleep(0.05)

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{{namespace}}/{{service}}"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Harness, FakeFleet]]:
    fleet = FakeFleet()
    h = Harness(tmp_path)
    try:
        for obj in docs(CHAIN / "nodes.yaml") + docs(CHAIN / "pools.yaml"):
            h.apply(obj)
        h.start_operator(worker_url_template=fleet.template)
        yield h, fleet
    finally:
        h.close()
        fleet.stop.set()
        fleet.server.shutdown()


def the_set(version: str, uri: str | None = None, **rollout: Any) -> dict[str, Any]:
    (ews,) = docs(CHAIN / "set.yaml")
    ews = copy.deepcopy(ews)
    ews["spec"]["template"]["model"] = {
        "name": MODEL,
        "uri": uri or f"/models/{version}.onnx",
        "version": version,
    }
    spec = ews["spec"]["rollout"]
    spec["steps"] = [{"shadow": {}}, {"canary": {"weight": 50}}, {"full": {}}]
    spec["gate"].update(minSamples=40, maxSamples=120, latencyMinSamples=40)
    spec["windowSeconds"] = 0.5
    spec.update(rollout)
    return ews


def status(h: Harness) -> dict[str, Any]:
    return ((h.cluster.get(SETS, "footfall", NS) or {}).get("status") or {}).get("rollout") or {}


def set_condition(h: Harness, ctype: str) -> dict[str, Any]:
    conditions = ((h.cluster.get(SETS, "footfall", NS) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == ctype), {})


def reasons(h: Harness) -> list[str]:
    return [str(e.get("reason")) for e in h.events(name="footfall")]


def child_versions(h: Harness) -> dict[str, str]:
    return {
        w["metadata"]["labels"]["continuum.dev/site"]: w["spec"]["model"]["version"]
        for w in h.cluster.list(WORKLOADS, NS)
        if w["metadata"].get("labels", {}).get("continuum.dev/set") == "footfall"
    }


def stable_set(h: Harness) -> None:
    h.apply(the_set("4"))
    wait_for(lambda: status(h).get("phase") == "Stable", timeout=30, what="a stable set")
    wait_for(lambda: set(child_versions(h)) == set(STORES), timeout=30, what="six children")


def test_an_operator_restart_mid_rollout_loses_no_evidence(setup: tuple[Harness, FakeFleet]) -> None:
    h, fleet = setup
    stable_set(h)
    h.apply(the_set("5", gate={"minSamples": 300, "maxSamples": 600}))  # a slow shadow step
    wait_for(lambda: status(h).get("gate", {}).get("shadowCompared", 0) >= 40, timeout=30, what="evidence")
    h.stop_operator()
    kept = status(h)
    assert kept["phase"] == "Progressing" and kept["waveName"] == "ring-0" and kept["baselines"]
    time.sleep(1)  # the worker keeps counting while no operator looks
    h.start_operator(worker_url_template=fleet.template)
    wait_for(
        lambda: status(h).get("gate", {}).get("shadowCompared", 0) > kept["gate"]["shadowCompared"] + 40,
        timeout=30,
        what="more evidence after the restart",
    )
    after = status(h)
    assert after["startedAt"] == kept["startedAt"] and after["step"] == kept["step"]  # the same step went on
    # the reading after the restart continued from the kept baseline: what was counted meanwhile is in
    berlin = fleet.workers["store-berlin-mitte"].view()["versions"]["5"]["shadow_compared"]
    assert after["gate"]["shadowCompared"] <= berlin
    assert after["gate"]["shadowCompared"] >= berlin - 200  # at most a few windows behind the worker
    assert reasons(h).count("RolloutStarted") == 1
    wait_for(
        lambda: status(h).get("phase") == "Promoted" and not status(h).get("promoting"),
        timeout=90,
        what="promotion",
    )
    assert child_versions(h) == dict.fromkeys(STORES, "5")
    assert all(w.stable["version"] == "5" and w.candidate is None for w in fleet.workers.values())


def test_paused_and_abort_from_the_spec(setup: tuple[Harness, FakeFleet]) -> None:
    h, fleet = setup
    stable_set(h)
    h.apply(the_set("5", paused=True))
    wait_for(lambda: status(h).get("phase") == "Paused", timeout=30, what="paused")
    # more evidence than the step needs (84 agreeing answers cross the promote boundary): nothing advances
    wait_for(lambda: status(h).get("gate", {}).get("shadowCompared", 0) > 100, timeout=30, what="evidence")
    time.sleep(1)
    held = status(h)
    assert held["wave"] == 0 and held["step"] == 0 and held["phase"] == "Paused"
    assert held["cause"] == "paused by spec.rollout.paused"
    assert set_condition(h, "Rollout")["reason"] == "Paused"
    assert fleet.workers["store-berlin-mitte"].mode == "shadow"
    h.apply(the_set("5", paused=False))
    wait_for(lambda: status(h).get("waveName") == "ring-1", timeout=30, what="resumed into ring-1")
    wait_for(lambda: "RolloutResumed" in reasons(h), timeout=15, what="the RolloutResumed Event")
    h.apply(the_set("5", paused=False, abort="5"))
    wait_for(lambda: status(h).get("phase") == "Aborted", timeout=30, what="aborted")
    wait_for(lambda: not status(h).get("reverting"), timeout=30, what="every worker back on 4")
    assert all(w.mode == "stable" and w.candidate is None for w in fleet.workers.values())
    assert child_versions(h) == dict.fromkeys(STORES, "4")
    assert set_condition(h, "Rollout")["status"] == "False"
    wait_for(lambda: "RolloutAborted" in reasons(h), timeout=15, what="the RolloutAborted Event")


def test_an_unreachable_store_is_deferred_and_catches_up(setup: tuple[Harness, FakeFleet]) -> None:
    h, fleet = setup
    stable_set(h)
    fleet.down = {"store-berlin-mitte"}  # ring-0 allows no unavailable site
    h.apply(the_set("5"))
    wait_for(
        lambda: status(h).get("waves", [{}])[0].get("deferred") == ["store-berlin-mitte"],
        timeout=30,
        what="berlin deferred",
    )
    time.sleep(2)
    assert status(h)["waveName"] == "ring-0" and status(h)["step"] == 0  # waits for it
    fleet.down = {"store-hamburg"}  # berlin is back; ring-1 may go on with one store down
    wait_for(lambda: status(h).get("phase") == "Promoted", timeout=90, what="promotion")
    wait_for(lambda: status(h).get("promoting") == ["store-hamburg"], timeout=30, what="all but hamburg")
    time.sleep(1)
    assert status(h)["promoting"] == ["store-hamburg"]  # it stays listed while it is away
    assert fleet.workers["store-berlin-mitte"].stable["version"] == "5"
    fleet.down = set()
    wait_for(lambda: not status(h).get("promoting"), timeout=30, what="hamburg promoted too")
    assert fleet.workers["store-hamburg"].stable["version"] == "5"


def test_a_version_that_cannot_be_rolled_out_is_reported(setup: tuple[Harness, FakeFleet]) -> None:
    h, fleet = setup
    stable_set(h)
    h.apply(the_set("4", uri="/models/4-retrained.onnx"))  # a new file under the stable's version
    wait_for(lambda: status(h).get("phase") == "Invalid", timeout=30, what="invalid")
    assert status(h)["cause"].startswith("spec.template.model.version: a rollout needs a new version")
    assert set_condition(h, "Rollout")["reason"] == "Invalid"
    wait_for(lambda: "RolloutInvalid" in reasons(h), timeout=15, what="the RolloutInvalid Event")
    assert all(w.puts == 0 for w in fleet.workers.values())
    assert {c for c in child_versions(h).values()} == {"4"}
    uris = {w["spec"]["model"]["uri"] for w in h.cluster.list(WORKLOADS, NS)}
    assert uris == {"/models/4.onnx"}  # the children keep the stable model
    # an invalid rollout spec names the field
    bad = the_set("4")
    bad["spec"]["rollout"]["steps"] = [{"full": {}}, {"shadow": {}}]
    h.apply(bad)
    wait_for(
        lambda: set_condition(h, "Synced").get("reason") == "InvalidSpec", timeout=30, what="invalid spec"
    )
    assert "spec.rollout.steps: Value error, full may appear once" in set_condition(h, "Synced")["message"]


def test_the_drift_gate_rolls_back_a_candidate_whose_outputs_drift(setup: tuple[Harness, FakeFleet]) -> None:
    """With spec.rollout.gate.drift, the operator reads each wave worker's drift view next to its rollout
    counters; the candidate's outputs drift against its reference while the stable's do not: rolled back in
    ring-0's shadow step (the agreement gate alone would still be collecting), the cause in status and an Event."""
    h, fleet = setup
    stable_set(h)
    fleet.candidate_drifts = True
    h.apply(the_set("5", gate={"minSamples": 5000, "maxSamples": 10000, "drift": {}}))
    wait_for(lambda: status(h).get("phase") == "RolledBack", timeout=60, what="rolled back by the drift gate")
    cause = status(h)["cause"]
    assert cause.startswith("rolled back: wave ring-0 step 1 (shadow): drift gate:"), cause
    assert "last: store-berlin-mitte: candidate output KS 0.400" in cause
    assert status(h)["gate"]["driftDrifted"] >= 2
    assert set_condition(h, "Rollout")["reason"] == "RolledBack"
    wait_for(lambda: "RolledBack" in reasons(h), timeout=15, what="the RolledBack Event")
    wait_for(lambda: not status(h).get("reverting"), timeout=30, what="berlin back on 4")
    assert fleet.workers["store-berlin-mitte"].mode == "stable"
    assert all(fleet.workers[s].puts == 0 for s in STORES if s != "store-berlin-mitte")
    assert child_versions(h) == dict.fromkeys(STORES, "4")
    # an invalid drift gate names the field (condition and Event), as every invalid spec does
    h.apply(the_set("4", gate={"drift": {"good": 0.2, "bad": 0.1}}))
    wait_for(
        lambda: set_condition(h, "Synced").get("reason") == "InvalidSpec", timeout=30, what="invalid spec"
    )
    assert (
        "spec.rollout.gate.drift: Value error, good must be below bad"
        in set_condition(h, "Synced")["message"]
    )
    wait_for(lambda: "InvalidSpec" in reasons(h), timeout=15, what="the InvalidSpec Event")
