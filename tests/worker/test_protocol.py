"""tritonclient (HTTP) works unchanged against the worker: metadata, JSON and binary tensors, errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from continuum_worker.protocol import DATATYPES
from tritonclient.utils import InferenceServerException

from tests.worker.conftest import WorkerProcess
from tests.worker.modelgen import DTYPE_INPUTS


def reference(path: Path, x: np.ndarray, output: str = "OUTPUT0") -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([output], {"INPUT0": x})[0]


def client(worker: WorkerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(worker.url, network_timeout=30)


def test_health_server_and_model_metadata(mlp_worker: WorkerProcess) -> None:
    c = client(mlp_worker)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("mlp")
    meta = c.get_server_metadata()
    assert meta["name"] == "continuum-worker" and "binary_tensor_data" in meta["extensions"]
    model = c.get_model_metadata("mlp")
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in model["outputs"]] == ["OUTPUT0", "LOGITS"]
    # version paths
    assert c.get_model_metadata("mlp", model_version="1")["name"] == "mlp"
    assert c.is_model_ready("mlp", model_version="1")
    assert not c.is_model_ready("mlp", model_version="7")
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'mlp' version 7 is not found"):
        c.get_model_metadata("mlp", model_version="7")
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope' is not found"):
        c.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_onnxruntime(mlp_worker: WorkerProcess, models: dict[str, Path], binary: bool) -> None:
    x = np.random.default_rng(1).random((3, 64), dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = client(mlp_worker).infer("mlp", [inp], outputs=outputs, request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference(models["mlp"], x), rtol=1e-6)
    assert result.as_numpy("LOGITS") is None  # only what was asked for


def test_default_outputs_are_all_binary_and_version_path(
    mlp_worker: WorkerProcess, models: dict[str, Path]
) -> None:
    x = np.ones((1, 64), dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client(mlp_worker).infer("mlp", [inp], model_version="1")
    outs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(outs) == {"OUTPUT0", "LOGITS"}
    assert all("binary_data_size" in o["parameters"] for o in outs.values())
    np.testing.assert_allclose(result.as_numpy("LOGITS"), reference(models["mlp"], x, "LOGITS"), rtol=1e-6)


def _sample(datatype: str, rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", b"", "é".encode()], [b"x" * 100, b"\x00\x01", b"z"]], dtype=np.object_)
    if datatype == "BOOL":
        return rng.random((2, 3)) > 0.5
    dtype = DATATYPES[datatype]
    if dtype.kind == "f":
        return rng.normal(size=(2, 3)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=(2, 3), dtype=dtype, endpoint=True)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips(start_worker, models: dict[str, Path], binary: bool) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker("--model-name", "dtypes", "--model-uri", str(models["dtypes"]))
    rng = np.random.default_rng(7)
    inputs, sent = [], {}
    for name, (_, datatype) in DTYPE_INPUTS.items():
        data = _sample(datatype, rng)
        inp = httpclient.InferInput(name, list(data.shape), datatype)
        inp.set_data_from_numpy(data, binary_data=binary or datatype == "FP16")  # FP16 has no JSON form
        inputs.append(inp)
        sent[name] = data
    outputs = [httpclient.InferRequestedOutput(f"{n}_OUT", binary_data=binary) for n in DTYPE_INPUTS]
    result = client(worker).infer("dtypes", inputs, outputs=outputs)
    for name, (_, datatype) in DTYPE_INPUTS.items():
        got = result.as_numpy(f"{name}_OUT")
        assert got is not None, name
        if datatype == "BYTES":
            # tritonclient gives bytes for binary outputs and str for JSON ones
            values = [v.encode() if isinstance(v, str) else bytes(v) for v in got.reshape(-1)]
            assert values == list(sent[name].reshape(-1))
        else:
            assert got.dtype == sent[name].dtype, name
            np.testing.assert_array_equal(got, sent[name])


def raw_infer(
    worker: WorkerProcess, body: bytes, headers: dict[str, str] | None = None, model: str = "mlp"
) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://{worker.url}/v2/models/{model}/infer", data=body, headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _json(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


GOOD = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
BAD_REQUESTS = {
    "not json": (b"{nope", {}, "not valid JSON"),
    "no inputs": (_json([]), {}, "non-empty 'inputs'"),
    "wrong name": (_json([{**GOOD, "name": "X"}]), {}, "unexpected input(s) ['X']"),
    "wrong datatype": (_json([{**GOOD, "datatype": "INT32", "data": [0] * 64}]), {}, "model expects FP32"),
    "unknown datatype": (_json([{**GOOD, "datatype": "FP8"}]), {}, "unknown datatype"),
    "wrong shape": (_json([{**GOOD, "shape": [1, 63], "data": [0.0] * 63}]), {}, "model expects [-1, 64]"),
    "data vs shape": (_json([{**GOOD, "shape": [2, 64]}]), {}, "needs 128 elements"),
    "strings as FP32": (_json([{**GOOD, "data": ["a"] * 64}]), {}, "must be numbers"),
    "FP16 as JSON": (_json([{**GOOD, "datatype": "FP16"}]), {}, "FP16 has no JSON form"),
    "unknown output": (_json([GOOD], outputs=[{"name": "NOPE"}]), {}, "unexpected inference output 'NOPE' for model 'mlp'"),
    "binary too short": (
        _json(
            [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [1, 64],
                    "parameters": {"binary_data_size": 256},
                }
            ]
        ),
        "header",
        "exceeds",
    ),
    "header length past body": (_json([GOOD]), {"Inference-Header-Content-Length": "99999"}, "does not fit"),
    "negative dim": (_json([{**GOOD, "shape": [-1, 64]}]), {}, "negative dimension"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_are_400_with_an_error_and_the_server_stays_up(
    mlp_worker: WorkerProcess, case: str
) -> None:
    body, headers, message = BAD_REQUESTS[case]
    if headers == "header":
        headers = {"Inference-Header-Content-Length": str(len(body))}
        body += b"\x00" * 100
    status, answer = raw_infer(mlp_worker, body, headers)  # type: ignore[arg-type]
    assert status == 400, answer
    assert set(answer) == {"error"} and message in answer["error"], answer
    assert client(mlp_worker).is_server_live()


def test_unknown_model_and_failure_metrics(mlp_worker: WorkerProcess) -> None:
    status, answer = raw_infer(mlp_worker, _json([GOOD]), model="other")
    assert status == 400 and answer["error"] == "Request for unknown model: 'other' is not found"
    before = mlp_worker.metric("nv_inference_request_failure", model="mlp", version="1")
    raw_infer(mlp_worker, _json([{**GOOD, "name": "X"}]))
    assert mlp_worker.metric("nv_inference_request_failure", model="mlp", version="1") == before + 1
    text = mlp_worker.metrics()
    for name in (
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert f"# TYPE {name} counter" in text
    assert (
        'continuum_worker_backend_info{backend="onnxruntime",device="onnxruntime/CPUExecutionProvider"'
        in text
    )


def test_fixed_shape_model_without_batch_dimension(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker(
        "--model-name", "fixed", "--model-uri", str(models["fixed"]), "--max-batch-size", "8"
    )
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client(worker).infer("fixed", [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
