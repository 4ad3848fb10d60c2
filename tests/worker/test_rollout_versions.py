"""A stable and a candidate version of one model in one worker (docs/rollout-protocol.md): the split
(stable, shadow, canary, full) over HTTP and gRPC with tritonclient, version paths, shadow agreement,
the PUT's errors, hot switching under load with no failed request, persistence across a restart.
Real ``continuum-worker serve`` processes; models built with ``onnx.helper``."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from continuum_worker.errors import InvalidArgument
from continuum_worker.rollout import agree, parse_request

from tests.worker.conftest import WorkerProcess

CLIENTS = {"http": httpclient, "grpc": grpcclient}


def regressor(path: Path, scale: float) -> Path:
    """INPUT0 FP32 [-1, 64] -> OUTPUT0 [-1, 1] = scale * sum(INPUT0): one value per row (a regressor)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((64, 1), scale, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["INPUT0", "W"], ["OUTPUT0"])],
        f"regressor_{scale}",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def call(
    worker: WorkerProcess, path: str, body: Any = None, method: str = "GET", token: str | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://{worker.url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def put(worker: WorkerProcess, body: Any, token: str | None = None) -> tuple[int, Any]:
    return call(worker, "/v2/models/m/rollout", body, "PUT", token)


def rollout(worker: WorkerProcess) -> dict[str, Any]:
    status, body = call(worker, "/v2/models/m/rollout")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def candidate(uri: Path | str, version: str, **extra: str) -> dict[str, str]:
    return {"uri": str(uri), "version": version, **extra}


def infer(kind: str, worker: WorkerProcess, x: np.ndarray, version: str = "") -> tuple[str, np.ndarray]:
    """(the version that answered, OUTPUT0) through tritonclient."""
    mod = CLIENTS[kind]
    client = mod.InferenceServerClient(worker.grpc_url if kind == "grpc" else worker.url)
    inp = mod.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("m", [inp], model_version=version)
    response = result.get_response()
    answered = response.model_version if kind == "grpc" else response["model_version"]
    return str(answered), result.as_numpy("OUTPUT0")


def run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"INPUT0": x}), strict=True))


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- pure parts ------------------------------------------------------------------------------------
def test_agreement_rules() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)
    close = scores + np.float32(0.05)  # same top-1 in every row
    swapped = np.array([[0.1, 0.7, 0.2], [0.3, 0.5, 0.2]], dtype=np.float32)
    assert agree({"y": scores}, {"y": close}, True, 0.01)
    assert not agree({"y": scores}, {"y": swapped}, True, 0.01)
    y = np.array([[100.0], [-2.0], [0.0]], dtype=np.float32)
    assert agree({"y": y}, {"y": y * np.float32(1.009)}, True, 0.01)
    assert not agree({"y": y}, {"y": y * np.float32(1.02)}, True, 0.01)
    assert agree({"y": y}, {"y": y * np.float32(1.02)}, True, 0.05)  # the tolerance is the setting
    assert not agree({"y": y}, {"y": np.array([[100.0], [-2.0], [np.nan]], dtype=np.float32)}, True, 0.01)
    labels = np.array([1, 2, 3], dtype=np.int64)
    assert agree({"c": labels}, {"c": labels.copy()}, True, 0.01)
    assert not agree({"c": labels}, {"c": labels + 1}, True, 0.01)
    assert not agree({"y": scores}, {}, True, 0.01)  # a missing output disagrees
    assert not agree({"y": scores}, {"y": scores[:1]}, True, 0.01)  # so does another shape
    # without a batch axis the whole tensor is one row: four values -> top-1
    flat = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    assert agree({"y": flat}, {"y": flat * 2}, False, 0.01)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "JSON object"),
        ({"mode": "shadow", "generation": "g"}, "candidate"),
        ({"mode": "sideways", "candidate": None, "generation": "g"}, "mode"),
        ({"mode": "canary", "candidate": {"uri": "/a.onnx", "version": "2"}, "generation": "g"}, "weight"),
        (
            {"mode": "canary", "weight": 1.5, "candidate": {"uri": "/a", "version": "2"}, "generation": "g"},
            "weight",
        ),
        (
            {"mode": "canary", "weight": True, "candidate": {"uri": "/a", "version": "2"}, "generation": "g"},
            "weight",
        ),
        (
            {"mode": "shadow", "weight": 0.5, "candidate": {"uri": "/a", "version": "2"}, "generation": "g"},
            "weight",
        ),
        (
            {"mode": "full", "candidate": {"uri": "/a", "version": "1"}, "generation": "g"},
            "candidate.version",
        ),
        ({"mode": "full", "candidate": {"uri": "", "version": "2"}, "generation": "g"}, "candidate.uri"),
        (
            {"mode": "full", "candidate": {"uri": "/a", "version": "2/x"}, "generation": "g"},
            "candidate.version",
        ),
        (
            {"mode": "full", "candidate": {"uri": "/a", "version": "2", "sha256": "abc"}, "generation": "g"},
            "candidate.sha256",
        ),
        (
            {"mode": "full", "candidate": {"uri": "/a", "version": "2", "tag": "x"}, "generation": "g"},
            "candidate: unknown",
        ),
        ({"mode": "stable", "candidate": {"uri": "/a", "version": "2"}, "generation": "g"}, "candidate"),
        ({"mode": "stable", "candidate": None}, "generation"),
        ({"mode": "stable", "candidate": None, "generation": "g", "wieght": 0}, "unknown field"),
        ({"promote": "yes", "generation": "g"}, "promote"),
        ({"promote": True, "mode": "canary", "generation": "g"}, "mode"),
    ],
)
def test_bad_bodies_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")):
        parse_request(body, "1")


def test_good_bodies_parse() -> None:
    r = parse_request(
        {"mode": "canary", "weight": 0.25, "candidate": candidate("/b", "2"), "generation": "g"}, "1"
    )
    assert (r.mode, r.weight, r.candidate and r.candidate.version, r.generation) == ("canary", 0.25, "2", "g")
    assert (
        parse_request({"mode": "full", "candidate": candidate("/b", "2"), "generation": ""}, "1").weight
        == 1.0
    )
    assert parse_request({"mode": "stable", "candidate": None, "generation": "g"}, "1").candidate is None
    assert parse_request({"promote": True, "generation": "g"}, "1").promote


# -- real workers ----------------------------------------------------------------------------------
def test_put_errors_leave_the_state_unchanged(start_worker, models: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker("--model-name", "m", "--model-uri", str(models["mlp"]), "--admin-token", "s3cret")
    good = {"mode": "shadow", "candidate": candidate(models["mlp2"], "2"), "generation": "g1"}
    assert put(worker, good)[0] == 401  # the admin token guards the PUT
    assert put(worker, good, token="wrong")[0] == 401
    status, body = put(worker, good, token="s3cret")
    assert status == 200 and body["mode"] == "shadow" and body["candidate"]["version"] == "2", body
    before = {k: v for k, v in rollout(worker).items() if k != "versions"}

    status, body = put(
        worker,
        {"mode": "canary", "weight": 2, "candidate": candidate(models["mlp2"], "2"), "generation": "x"},
        "s3cret",
    )
    assert status == 400 and body["error"].startswith("weight:"), body
    status, body = put(
        worker,
        {
            "mode": "canary",
            "weight": 0.5,
            "candidate": candidate(tmp_path / "missing.onnx", "3"),
            "generation": "x",
        },
        "s3cret",
    )
    assert status == 422 and body["error"].startswith("candidate.uri:"), body
    status, body = put(
        worker,
        {
            "mode": "canary",
            "weight": 0.5,
            "candidate": candidate(models["mlp_small"], "3", sha256="0" * 64),
            "generation": "x",
        },
        "s3cret",
    )
    assert (
        status == 422
        and body["error"].startswith("candidate.sha256:")
        and "checksum mismatch" in body["error"]
    ), body
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"not a model")
    status, body = put(
        worker, {"mode": "full", "candidate": candidate(not_onnx, "3"), "generation": "x"}, "s3cret"
    )
    assert status == 422 and body["error"].startswith("candidate.uri:"), body
    status, body = call(worker, "/v2/models/m/rollout", None, "PUT", "s3cret")
    assert status == 400 and "JSON object" in body["error"], body
    status, body = call(worker, "/v2/models/other/rollout")
    assert status == 404 and "other" in body["error"], body
    assert {k: v for k, v in rollout(worker).items() if k != "versions"} == before  # nothing changed
    status, body = call(worker, "/v2/models/m/versions/3")
    assert status == 404  # no failed candidate left loaded

    # the repository load of the shorthand refuses to swap the stable under a candidate
    load = {"parameters": {"uri": str(models["mlp_small"]), "version": "5"}}
    status, body = call(worker, "/v2/repository/models/m/load", load, "POST", "s3cret")
    assert status == 409 and "rollout" in body["error"], body
    assert put(worker, {"mode": "stable", "candidate": None, "generation": "g2"}, "s3cret")[0] == 200
    status, body = put(worker, {"promote": True, "generation": "g3"}, "s3cret")
    assert status == 409 and body["error"].startswith("promote:"), body


def test_shadow_answers_with_the_stable_and_counts_agreement(
    start_worker, models: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker("--model-name", "m", "--model-uri", str(models["mlp"]), grpc=True)
    status, body = put(
        worker, {"mode": "shadow", "candidate": candidate(models["mlp2"], "2"), "generation": "s1"}
    )
    assert status == 200, body
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=(int(rng.integers(1, 5)), 64)).astype(np.float32) for _ in range(40)]
    expected_disagree = 0
    for i, x in enumerate(xs):
        version, out = infer("http" if i % 2 else "grpc", worker, x)
        want = run(models["mlp"], x)
        assert version == "1"
        np.testing.assert_allclose(out, want["OUTPUT0"], rtol=1e-5, atol=1e-6)  # the stable's answer, always
        other = run(models["mlp2"], x)
        same = all(
            np.array_equal(want[o].argmax(axis=1), other[o].argmax(axis=1)) for o in ("OUTPUT0", "LOGITS")
        )
        expected_disagree += not same
    assert 0 < expected_disagree < len(xs)  # the seeds give both cases
    wait_for(lambda: rollout(worker)["versions"]["2"]["shadow_compared"] == len(xs))
    v = rollout(worker)["versions"]
    assert v["2"]["shadow_disagreed"] == expected_disagree and v["2"]["shadow_dropped"] == 0
    assert v["1"]["requests"] == len(xs) and v["2"]["requests"] == 0  # shadow copies are not requests
    assert (
        worker.metric("continuum_shadow_comparisons_total", model="m", version="2", result="disagree")
        == expected_disagree
    )
    assert (
        worker.metric("continuum_shadow_comparisons_total", model="m", version="2", result="agree")
        == len(xs) - expected_disagree
    )

    # version paths reach each version exactly, over both protocols
    x = xs[0]
    for kind in CLIENTS:
        version, out = infer(kind, worker, x, version="2")
        assert version == "2"
        np.testing.assert_allclose(out, run(models["mlp2"], x)["OUTPUT0"], rtol=1e-5, atol=1e-6)
        version, out = infer(kind, worker, x, version="1")
        assert version == "1"
    stats = httpclient.InferenceServerClient(worker.url).get_inference_statistics("m")
    assert sorted(s["version"] for s in stats["model_stats"]) == ["1", "2"]
    assert call(worker, "/v2/models/m")[1]["versions"] == ["1", "2"]

    # an identical candidate agrees on every request; the previous candidate is unloaded
    same = tmp_path / "same.onnx"
    shutil.copy(models["mlp"], same)
    assert put(worker, {"mode": "shadow", "candidate": candidate(same, "3"), "generation": "s2"})[0] == 200
    for i, x in enumerate(xs[:10]):
        assert infer("http" if i % 2 else "grpc", worker, x)[0] == "1"
    wait_for(lambda: rollout(worker)["versions"]["3"]["shadow_compared"] == 10)
    assert rollout(worker)["versions"]["3"]["shadow_disagreed"] == 0
    wait_for(lambda: call(worker, "/v2/models/m/versions/2")[0] == 404)  # retired after its requests


def test_shadow_regressor_tolerance_and_a_full_queue(
    start_worker, models: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    base, near, far = (regressor(tmp_path / f"r{i}.onnx", s) for i, s in enumerate((1.0, 1.005, 1.05)))
    worker = start_worker("--model-name", "m", "--model-uri", str(base), "--shadow-tolerance", "0.01")
    rng = np.random.default_rng(3)
    xs = [rng.uniform(0.5, 1.5, size=(2, 64)).astype(np.float32) for _ in range(10)]
    for uri, version, disagreed in ((near, "2", 0), (far, "3", len(xs))):
        assert (
            put(worker, {"mode": "shadow", "candidate": candidate(uri, version), "generation": version})[0]
            == 200
        )
        for x in xs:
            assert infer("http", worker, x)[0] == "1"
        wait_for(lambda v=version: rollout(worker)["versions"][v]["shadow_compared"] == len(xs))  # type: ignore[misc]
        assert rollout(worker)["versions"][version]["shadow_disagreed"] == disagreed

    # a slow candidate behind a queue of one: copies are dropped and counted, answers do not wait
    slow = start_worker(
        "--model-name", "m", "--model-uri", str(models["mlp"]), "--shadow-queue", "1", "--threads", "1"
    )
    assert (
        put(slow, {"mode": "shadow", "candidate": candidate(models["heavy"], "2"), "generation": "q"})[0]
        == 200
    )
    x = np.random.default_rng(5).normal(size=(64, 64)).astype(np.float32)
    want = run(models["mlp"], x)["OUTPUT0"]
    failures: list[str] = []

    def client() -> None:
        for _ in range(15):
            try:
                version, out = infer("http", slow, x)
                assert version == "1" and np.allclose(out, want, rtol=1e-5, atol=1e-6)
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []

    def settled() -> bool:
        v = rollout(slow)["versions"]["2"]
        return bool(v["shadow_compared"] + v["shadow_dropped"] == 60)

    wait_for(settled, 60)
    v = rollout(slow)["versions"]["2"]
    assert v["shadow_dropped"] > 0
    assert v["shadow_disagreed"] == v["shadow_compared"]  # heavy has no LOGITS output: never agrees
    assert (
        slow.metric("continuum_shadow_comparisons_total", model="m", version="2", result="dropped")
        == v["shadow_dropped"]
    )


def test_canary_split_follows_the_weight_on_http_and_grpc(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker("--model-name", "m", "--model-uri", str(models["mlp"]), grpc=True)
    weight, n = 0.3, 600
    status, body = put(
        worker,
        {"mode": "canary", "weight": weight, "candidate": candidate(models["mlp2"], "2"), "generation": "c"},
    )
    assert status == 200 and body["weight"] == weight, body
    x = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
    outputs = {"1": run(models["mlp"], x)["OUTPUT0"], "2": run(models["mlp2"], x)["OUTPUT0"]}
    counts = {"http": 0, "grpc": 0}
    for i in range(n):
        kind = "http" if i % 2 else "grpc"
        version, out = infer(kind, worker, x)
        np.testing.assert_allclose(
            out, outputs[version], rtol=1e-5, atol=1e-6
        )  # the answer is that version's
        counts[kind] += version == "2"
    # each protocol's share within 4.5 standard deviations of the binomial (a false failure: ~1e-5)
    half = n // 2
    for kind, k in counts.items():
        assert abs(k - half * weight) <= 4.5 * math.sqrt(half * weight * (1 - weight)), (kind, k)
    v = rollout(worker)["versions"]
    assert v["2"]["requests"] == sum(counts.values()) and v["1"]["requests"] == n - sum(counts.values())
    assert v["2"]["errors"] == 0 and v["2"]["latency_seconds_buckets"][-1] == ["+Inf", v["2"]["requests"]]
    assert (
        worker.metric("continuum_model_version_requests_total", model="m", version="2", outcome="success")
        == v["2"]["requests"]
    )
    assert (
        worker.metric("continuum_model_version_request_duration_seconds_count", model="m", version="1")
        == v["1"]["requests"]
    )
    assert worker.metric("continuum_rollout_weight", model="m") == weight

    assert (
        put(worker, {"mode": "full", "candidate": candidate(models["mlp2"], "2"), "generation": "f"})[1][
            "weight"
        ]
        == 1.0
    )
    assert {infer("http" if i % 2 else "grpc", worker, x)[0] for i in range(20)} == {"2"}
    assert (
        put(
            worker,
            {"mode": "canary", "weight": 0, "candidate": candidate(models["mlp2"], "2"), "generation": "z"},
        )[0]
        == 200
    )
    assert {infer("http" if i % 2 else "grpc", worker, x)[0] for i in range(20)} == {"1"}


class Load:
    """HTTP and gRPC clients looping until stopped; every failure and which version answered."""

    def __init__(self, worker: WorkerProcess, threads: int = 4) -> None:
        self.worker, self.stop = worker, threading.Event()
        self.failures: list[str] = []
        self.answers: list[tuple[float, str, np.ndarray, np.ndarray]] = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, seed: int) -> None:
        kind = "http" if seed % 2 else "grpc"
        x = np.random.default_rng(seed).normal(size=(1, 64)).astype(np.float32)
        while not self.stop.is_set():
            try:
                version, out = infer(kind, self.worker, x)
                self.answers.append((time.monotonic(), version, x, out))
            except Exception as exc:  # every failure counts against the test
                self.failures.append(repr(exc))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_hot_switching_under_load_fails_no_request(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker("--model-name", "m", "--model-uri", str(models["mlp"]), grpc=True)
    load = Load(worker)
    cand = candidate(models["mlp_small"], "2")
    steps = [
        {"mode": "shadow", "candidate": cand, "generation": "1"},
        {"mode": "canary", "weight": 0.5, "candidate": cand, "generation": "2"},
        {"mode": "full", "candidate": cand, "generation": "3"},
        {"mode": "stable", "candidate": None, "generation": "4"},  # roll back
        {"mode": "canary", "weight": 0.5, "candidate": cand, "generation": "5"},  # loaded again under load
        {"mode": "full", "candidate": cand, "generation": "6"},
    ]
    periods = []  # (switched, next switch asked for): only this step's split answers in between
    time.sleep(0.5)
    for body in steps:
        status, answer = put(worker, body)
        assert status == 200, answer
        switched = time.monotonic()
        time.sleep(0.6)
        periods.append((switched, time.monotonic()))
    status, answer = put(worker, {"promote": True, "generation": "7"})
    assert status == 200 and answer["stable"]["version"] == "2" and answer["candidate"] is None, answer
    promoted = time.monotonic()
    time.sleep(0.6)
    load.finish()
    assert load.failures == [], load.failures[:3]
    assert len(load.answers) > 100

    paths = {"1": models["mlp"], "2": models["mlp_small"]}
    for _, version, x, out in load.answers[::7]:  # each answer is the version's that says it answered
        np.testing.assert_allclose(out, run(paths[version], x)["OUTPUT0"], rtol=1e-5, atol=1e-6)

    def versions(start: float, end: float) -> set[str]:
        return {v for t, v, _, _ in load.answers if start + 0.1 < t < end}

    split = [versions(*p) for p in periods]
    assert split == [{"1"}, {"1", "2"}, {"2"}, {"1"}, {"1", "2"}, {"2"}]  # shadow, canary, full, back, ...
    assert versions(promoted, math.inf) == {"2"}  # promoted
    assert call(worker, "/v2/models/m")[1]["versions"] == ["2"]
    wait_for(lambda: call(worker, "/v2/models/m/versions/1")[0] == 404)


def test_the_split_survives_a_restart(start_worker, models: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    token = ["--state-token", "t0k"]  # the operator's state token also guards the PUT
    args = ["--model-name", "m", "--model-uri", str(models["mlp"]), "--state-dir", str(state), *token]
    worker = start_worker(*args)
    body = {
        "mode": "canary",
        "weight": 0.25,
        "candidate": candidate(models["mlp2"], "2"),
        "generation": "wave-0/canary",
    }
    assert put(worker, body)[0] == 401
    assert put(worker, body, token="t0k")[0] == 200
    x = np.random.default_rng(2).normal(size=(1, 64)).astype(np.float32)
    infer("http", worker, x)
    before = rollout(worker)
    worker.stop()

    worker.start()
    after = rollout(worker)
    same = ("stable", "candidate", "mode", "weight", "generation")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}
    assert after["instance"] != before["instance"]  # the caller sees the restart: counters start over
    assert sum(v["requests"] for v in after["versions"].values()) == 0
    assert infer("http", worker, x, version="2")[0] == "2"  # the candidate is loaded again

    # promote, restart with the promoted version as the model arguments: the same thing is served
    assert put(worker, {"promote": True, "generation": "promoted"}, token="t0k")[0] == 200
    worker.stop()
    promoted = start_worker("--model-name", "m", "--model-uri", str(models["mlp2"]), "--model-version", "2",
                            "--state-dir", str(state), *token, port=worker.port)  # fmt: skip
    view = rollout(promoted)
    assert (view["stable"]["version"], view["candidate"], view["mode"], view["generation"]) == (
        "2",
        None,
        "stable",
        "promoted",
    )
    promoted.stop()

    # other model arguments than the persisted stable: the persisted split is discarded
    again = start_worker(*args, port=worker.port)
    assert put(again, body, token="t0k")[0] == 200  # persisted for version 1 again
    again.stop()
    other = start_worker("--model-name", "m", "--model-uri", str(models["mlp_small"]), "--model-version", "9",
                         "--state-dir", str(state), *token)  # fmt: skip
    view = rollout(other)
    assert (view["stable"]["version"], view["candidate"], view["mode"], view["generation"]) == (
        "9",
        None,
        "stable",
        "",
    )
    other.stop()
    assert rollout(start_worker(*args, port=worker.port))["generation"] == ""  # the stale split was deleted
