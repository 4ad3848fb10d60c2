"""The behaviours Triton's own example clients exercise, with tritonclient over HTTP and gRPC against a
Triton-layout repository (tests/worker/triton_models.py): infer (raw and typed contents, streaming),
strings, statistics, errors, classification, system shared memory, model control, poll mode."""

from __future__ import annotations

import json
import queue
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.worker import triton_models
from tests.worker.conftest import WorkerProcess

CLIENTS = {"http": httpclient, "grpc": grpcclient}
X0 = np.arange(16, dtype=np.int32).reshape(1, 16)
X1 = np.ones((1, 16), dtype=np.int32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return triton_models.build(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(
        ["--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "*"], grpc=True
    )
    yield worker
    worker.stop()


def client(worker: WorkerProcess, kind: str):  # type: ignore[no-untyped-def]
    return CLIENTS[kind].InferenceServerClient(worker.grpc_url if kind == "grpc" else worker.url)


def simple_inputs(kind: str, a: np.ndarray = X0, b: np.ndarray = X1, datatype: str = "INT32") -> list:  # type: ignore[type-arg]
    mod = CLIENTS[kind]
    inputs = [mod.InferInput("INPUT0", list(a.shape), datatype), mod.InferInput("INPUT1", list(b.shape), datatype)]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def get(worker: WorkerProcess, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, object]:
    request = urllib.request.Request(f"http://{worker.url}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_simple_infer_strings_and_identity(server: WorkerProcess, kind: str) -> None:
    c = client(server, kind)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("simple")
    r = c.infer("simple", simple_inputs(kind), request_id="7")
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), X0 + X1)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), X0 - X1)
    assert r.get_response(as_json=True)["id"] == "7" if kind == "grpc" else r.get_response()["id"] == "7"
    text0 = np.array([str(v).encode() for v in X0.reshape(-1)], dtype=np.object_).reshape(1, 16)
    text1 = np.array([str(v).encode() for v in X1.reshape(-1)], dtype=np.object_).reshape(1, 16)
    r = c.infer("simple_string", simple_inputs(kind, text0, text1, "BYTES"))
    assert [int(v) for v in r.as_numpy("OUTPUT0").reshape(-1)] == list((X0 + X1).reshape(-1))
    blob = np.array([b"he\x00llo", b"\x00\x01\x02\x03"], dtype=np.object_).reshape(1, 2)
    inp = CLIENTS[kind].InferInput("INPUT0", [1, 2], "BYTES")
    inp.set_data_from_numpy(blob)
    assert c.infer("simple_identity", [inp]).as_numpy("OUTPUT0").tolist() == blob.tolist()


def test_grpc_typed_contents_and_streaming(server: WorkerProcess) -> None:
    import grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    request = service_pb2.ModelInferRequest(model_name="simple_int8")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [1] * 16)):
        t = request.inputs.add(name=name, datatype="INT8", shape=[1, 16])
        t.contents.int_contents[:] = list(values)
    response = stub.ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], dtype=np.int8)
    assert out.tolist() == [v + 1 for v in range(16)]
    # streaming: answers in order, an error is reported in the stream and the stream goes on
    c = client(server, "grpc")
    answers: queue.Queue = queue.Queue()  # type: ignore[type-arg]
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    c.async_stream_infer("simple", simple_inputs("grpc"), request_id="a")
    c.async_stream_infer("nope", simple_inputs("grpc"), request_id="b")
    c.async_stream_infer("simple", simple_inputs("grpc", X1, X1), request_id="c")
    got = [answers.get(timeout=10) for _ in range(3)]
    c.stop_stream()
    assert got[0][1] is None and got[0][0].as_numpy("OUTPUT0").tolist() == (X0 + X1).tolist()
    assert "Request for unknown model: 'nope' is not found" in str(got[1][1])
    assert got[2][0].as_numpy("OUTPUT0").tolist() == (X1 + X1).tolist()


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_errors_are_tritons(server: WorkerProcess, kind: str) -> None:
    c = client(server, kind)
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope' is not found"):
        c.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'simple' version 3 is not found"):
        c.get_model_metadata("simple", model_version="3")
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope' is not found") as info:
        c.infer("nope", simple_inputs(kind))
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    with pytest.raises(InferenceServerException, match="parameter 'sequence_id' is not supported"):
        c.infer("simple", simple_inputs(kind), sequence_id=3, sequence_start=True)
    with pytest.raises(InferenceServerException, match="parameter 'priority' is not supported"):
        c.infer("simple", simple_inputs(kind), priority=2)
    with pytest.raises(InferenceServerException, match=r"unknown request parameter\(s\) \['colour'\]"):
        c.infer("simple", simple_inputs(kind), parameters={"colour": "red"})
    with pytest.raises(InferenceServerException, match="inference request batch-size must be <= 8 for 'simple'"):
        nine = np.zeros((9, 16), np.int32)
        c.infer("simple", simple_inputs(kind, nine, nine))


def test_every_http_route_answers_json(server: WorkerProcess) -> None:
    assert get(server, "/v2/nowhere") == (404, {"error": "Not Found"})
    assert get(server, "/v2/models/simple", method="DELETE") == (405, {"error": "Method Not Allowed"})
    status, body = get(server, "/v2/models/nope/ready")
    assert status == 404 and body == {"error": "Request for unknown model: 'nope' is not found"}
    status, body = get(server, "/v2/repository/index", method="POST", body=b"[1]")
    assert status == 400 and "JSON object" in body["error"]  # type: ignore[index]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_statistics_extension(server: WorkerProcess, kind: str) -> None:
    c = client(server, kind)
    before = c.get_inference_statistics("simple_fp32", **({"as_json": True} if kind == "grpc" else {}))
    x = np.ones((2, 16), np.float32)
    for _ in range(3):
        c.infer("simple_fp32", simple_inputs(kind, x, x, "FP32"))
    with pytest.raises(InferenceServerException):
        bad = np.ones((2, 15), np.float32)  # the model takes 16 columns
        c.infer("simple_fp32", simple_inputs(kind, bad, bad, "FP32"))
    stats = c.get_inference_statistics("simple_fp32", **({"as_json": True} if kind == "grpc" else {}))
    entry, old = stats["model_stats"][0], before["model_stats"][0]
    assert entry["name"] == "simple_fp32" and entry["version"] == "1"
    inf, old_inf = entry["inference_stats"], old["inference_stats"]
    assert int(inf["success"]["count"]) == int(old_inf["success"].get("count", 0)) + 3
    assert int(inf["fail"]["count"]) == int(old_inf["fail"].get("count", 0)) + 1
    assert int(entry["inference_count"]) == int(old.get("inference_count", 0)) + 6  # rows
    assert int(inf["compute_infer"]["ns"]) > 0 and int(entry["last_inference"]) > 0
    assert any(int(b["batch_size"]) == 2 for b in entry["batch_stats"])
    everything = c.get_inference_statistics(**({"as_json": True} if kind == "grpc" else {}))
    assert {e["name"] for e in everything["model_stats"]} >= {"simple", "simple_fp32", "simple_string"}
    # the same numbers behind the Prometheus metrics
    assert server.metric("nv_inference_request_success", model="simple_fp32") == int(inf["success"]["count"])


def test_latency_and_batch_size_histograms_count_the_requests(server: WorkerProcess) -> None:
    """The request-duration and batch-size histograms per model/version count what a few tritonclient
    requests (HTTP and gRPC) did, from the numbers behind the statistics extension."""
    model, labels = "simple_fp32", {"model": "simple_fp32", "version": "1"}
    dur, size = "continuum_worker_request_duration_seconds", "continuum_worker_batch_size"

    def snapshot() -> dict[str, float]:
        return {
            "count": server.metric(f"{dur}_count", **labels),
            "sum": server.metric(f"{dur}_sum", **labels),
            "le10": server.metric(f"{dur}_bucket", le="10.0", **labels),
            "inf": server.metric(f"{dur}_bucket", le="+Inf", **labels),
            "us": server.metric("nv_inference_request_duration_us", **labels),
            "execs": server.metric(f"{size}_count", **labels),
            "rows": server.metric(f"{size}_sum", **labels),
            "le1": server.metric(f"{size}_bucket", le="1.0", **labels),
            "le2": server.metric(f"{size}_bucket", le="2.0", **labels),
            "le4": server.metric(f"{size}_bucket", le="4.0", **labels),
        }

    before = snapshot()
    wall = 0.0
    for kind, rows in [("http", 2), ("http", 3), ("grpc", 2), ("grpc", 3), ("grpc", 1)]:
        x = np.ones((rows, 16), np.float32)
        c = client(server, kind)
        started = time.perf_counter()
        c.infer(model, simple_inputs(kind, x, x, "FP32"))
        wall += time.perf_counter() - started
    bad = np.ones((2, 15), np.float32)  # the model takes 16 columns
    started = time.perf_counter()
    with pytest.raises(InferenceServerException):  # a failed request is a request too (not an execution)
        c.infer(model, simple_inputs("grpc", bad, bad, "FP32"))
    wall += time.perf_counter() - started
    after = snapshot()
    d = {k: after[k] - before[k] for k in before}
    assert d["count"] == 6 and d["inf"] == 6 and d["le10"] == 6  # none took 10 s
    # the histogram's sum is the Triton counter's number, in seconds; the server's time is within the client's
    assert after["sum"] == pytest.approx(after["us"] / 1e6, rel=1e-9)
    assert 0 < d["sum"] < wall
    assert d["execs"] == 5 and d["rows"] == 2 + 3 + 2 + 3 + 1
    assert (d["le1"], d["le2"], d["le4"]) == (1, 3, 5)  # sizes 1; 2, 2; 3, 3 (le 4)


def test_stats_is_not_a_model_name(server: WorkerProcess) -> None:
    status, body = get(server, "/v2/models/stats")
    assert status == 200 and "model_stats" in body  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_classification(server: WorkerProcess, kind: str) -> None:
    mod = CLIENTS[kind]
    a = np.array([[0.5, 3.0, -1.0, 2.0] + [0.0] * 12], np.float32)
    out = mod.InferRequestedOutput("OUTPUT0", class_count=2)
    r = client(server, kind).infer("simple_fp32", simple_inputs(kind, a, np.zeros_like(a), "FP32"), outputs=[out])
    assert r.as_numpy("OUTPUT0").tolist() == [[b"3.000000:1", b"2.000000:3"]]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_system_shared_memory_inputs_and_outputs(server: WorkerProcess, kind: str) -> None:
    c, mod = client(server, kind), CLIENTS[kind]
    c.unregister_system_shared_memory()
    c.unregister_cuda_shared_memory()  # nothing registered: succeeds, as the examples expect
    size = X0.nbytes
    key_in, key_out = f"/ct_in_{kind}", f"/ct_out_{kind}"
    h_in = shm.create_shared_memory_region("in", key_in, size * 2)
    h_out = shm.create_shared_memory_region("out", key_out, size * 2)
    try:
        shm.set_shared_memory_region(h_in, [X0])
        shm.set_shared_memory_region(h_in, [X1], offset=size)
        c.register_system_shared_memory("in", key_in, size * 2)
        c.register_system_shared_memory("out", key_out, size * 2)
        status = c.get_system_shared_memory_status(**({"as_json": True} if kind == "grpc" else {}))
        assert status  # both regions are listed
        inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_shared_memory("in", size)
        inputs[1].set_shared_memory("in", size, offset=size)
        outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory("out", size)
        outputs[1].set_shared_memory("out", size, offset=size)
        r = c.infer("simple", inputs, outputs=outputs)
        assert r.get_output("OUTPUT0") is not None
        got0 = shm.get_contents_as_numpy(h_out, np.int32, [1, 16])
        got1 = shm.get_contents_as_numpy(h_out, np.int32, [1, 16], offset=size)
        np.testing.assert_array_equal(got0, X0 + X1)
        np.testing.assert_array_equal(got1, X0 - X1)
        # an output that does not fit the bytes given is a 400 naming it, never answered inline
        small = [mod.InferRequestedOutput("OUTPUT0")]
        small[0].set_shared_memory("out", size // 2)
        with pytest.raises(InferenceServerException, match=r"output .OUTPUT0.*do not fit"):
            c.infer("simple", inputs, outputs=small)
        with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
            c.register_cuda_shared_memory("gpu", b"aGFuZGxl", 0, 16)
        c.unregister_system_shared_memory("in")
        with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'in'"):
            c.infer("simple", inputs)
    finally:
        c.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_model_control(repo: Path, start_worker, kind: str) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker("--model-repository", str(repo), "--model-control-mode", "explicit", grpc=True)
    c = client(worker, kind)
    index = c.get_model_repository_index(**({"as_json": True} if kind == "grpc" else {}))
    index = index["models"] if kind == "grpc" else index
    assert len(index) == 7 and all(e.get("state") == "UNAVAILABLE" for e in index)
    assert not c.is_model_ready("simple")
    c.load_model("simple")
    assert c.is_model_ready("simple")
    ready = c.get_model_repository_index(**({"as_json": True} if kind == "grpc" else {}))
    ready = ready["models"] if kind == "grpc" else ready
    assert [e["name"] for e in ready if e.get("state") == "READY"] == ["simple"]
    if kind == "http":
        status, body = get(worker, "/v2/repository/index", method="POST", body=b'{"ready": true}')
        assert status == 200 and [e["name"] for e in body] == ["simple"]  # type: ignore[union-attr]
    with pytest.raises(InferenceServerException, match="failed to load 'simple'"):
        c.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    c.load_model("simple", config='{"max_batch_size":"16"}')
    config = c.get_model_config("simple", **({"as_json": True} if kind == "grpc" else {}))
    config = config["config"] if kind == "grpc" else config
    assert int(config["max_batch_size"]) == 16 and [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    with pytest.raises(InferenceServerException, match='no field named "mystery"'):
        c.load_model("simple", config='{"mystery": 1}')
    with pytest.raises(InferenceServerException, match=r"\['sequence_batching'\] are not supported by this worker"):
        c.load_model("simple", config='{"sequence_batching": {"max_sequence_idle_microseconds": 5}}')
    assert c.is_model_ready("simple")  # a refused configuration leaves the loaded version serving
    c.unload_model("simple")
    assert not c.is_model_ready("simple")
    with pytest.raises(InferenceServerException, match="failed to load 'wrong_model_name'"):
        c.load_model("wrong_model_name")


def test_memory_limit_refuses_a_load_with_a_clear_error(repo: Path, start_worker) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker(
        "--model-repository", str(repo), "--model-control-mode", "explicit", "--memory-limit", "1Ki"
    )
    c = client(worker, "http")
    with pytest.raises(InferenceServerException, match=r"model 'simple' (needs at least|took) .*; 0 bytes of the --memory-limit 1024 bytes are in use") as info:
        c.load_model("simple")
    assert info.value.status() == "400" and c.is_server_live()


def test_poll_mode_loads_new_models_and_unloads_removed_ones(repo: Path, tmp_path: Path, start_worker) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "polled"
    root.mkdir()
    shutil.copytree(repo / "simple", root / "simple")
    worker = start_worker(
        "--model-repository", str(root), "--model-control-mode", "poll", "--repository-poll-secs", "0.2"
    )
    c = client(worker, "http")
    assert c.is_model_ready("simple") and not c.is_model_ready("simple_fp32")
    shutil.copytree(repo / "simple_fp32", root / "simple_fp32")
    shutil.rmtree(root / "simple")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (c.is_model_ready("simple_fp32") and not c.is_model_ready("simple")):
        time.sleep(0.1)
    assert c.is_model_ready("simple_fp32") and not c.is_model_ready("simple")
    with pytest.raises(InferenceServerException, match="not allowed if model control mode is 'poll'"):
        c.load_model("simple_fp32")
