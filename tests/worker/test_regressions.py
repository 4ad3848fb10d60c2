"""Regressions of the bugs found by running Triton's example clients (issue #13): compression,
BYTES warm-up, non-UTF-8 BYTES, malformed compressed bodies."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.worker import modelgen
from tests.worker.conftest import WorkerProcess


def post(worker: WorkerProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    request = urllib.request.Request(f"http://{worker.url}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def mlp_input(x: np.ndarray) -> httpclient.InferInput:
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_decompressed_once(mlp_worker: WorkerProcess, algorithm: str) -> None:
    x = np.random.default_rng(1).random((2, 64), dtype=np.float32)
    c = httpclient.InferenceServerClient(mlp_worker.url)
    plain = c.infer("mlp", [mlp_input(x)]).as_numpy("OUTPUT0")
    got = c.infer("mlp", [mlp_input(x)], request_compression_algorithm=algorithm).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(got, plain)
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 64], "data": x.tolist()}]})
    packed = gzip.compress(body.encode()) if algorithm == "gzip" else zlib.compress(body.encode())
    status, answer = post(mlp_worker, "/v2/models/mlp/infer", packed, {"Content-Encoding": algorithm})
    assert status == 200, answer
    np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(2, 10), plain, rtol=1e-6)


def test_responses_are_compressed_only_when_asked_and_large_enough(mlp_worker: WorkerProcess) -> None:
    from continuum_worker.rest import COMPRESS_MIN_BYTES

    def infer(rows: int, accept: str | None) -> tuple[str | None, bytes]:
        x = np.random.default_rng(rows).random((rows, 64), dtype=np.float32)
        body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [rows, 64], "data": x.tolist()}]})
        headers = {"Content-Type": "application/json", **({"Accept-Encoding": accept} if accept else {})}
        request = urllib.request.Request(
            f"http://{mlp_worker.url}/v2/models/mlp/infer", data=body.encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as r:  # urllib does not decompress
            return r.headers.get("Content-Encoding"), r.read()

    encoding, raw = infer(1, "gzip, deflate")  # one row of 10 floats: a few hundred bytes
    assert encoding is None and len(raw) < COMPRESS_MIN_BYTES and json.loads(raw)["outputs"], raw
    encoding, raw = infer(64, "gzip")  # 640 floats: compressed as asked
    assert encoding == "gzip" and len(json.loads(gzip.decompress(raw))["outputs"][0]["data"]) == 640
    encoding, raw = infer(64, None)  # not asked: never compressed
    assert encoding is None and len(raw) >= COMPRESS_MIN_BYTES


def test_a_malformed_compressed_body_is_a_400_not_an_inference_failure(mlp_worker: WorkerProcess) -> None:
    before = mlp_worker.metric("nv_inference_request_failure", model="mlp")
    status, answer = post(mlp_worker, "/v2/models/mlp/infer", b"this is not gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in answer["error"], answer
    assert mlp_worker.metric("nv_inference_request_failure", model="mlp") == before + 1
    assert httpclient.InferenceServerClient(mlp_worker.url).is_server_live()


def test_compressed_requests_are_offloaded_decompressed(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    upstream = start_worker("--model-name", "mlp", "--model-uri", str(models["mlp"]))
    edge = start_worker(
        "--model-name", "mlp", "--model-uri", str(models["mlp"]), "--upstream", f"http://{upstream.url}"
    )
    x = np.random.default_rng(2).random((1, 64), dtype=np.float32)
    c = httpclient.InferenceServerClient(edge.url)
    got = c.infer("mlp", [mlp_input(x)], request_compression_algorithm="gzip").as_numpy("OUTPUT0")
    want = httpclient.InferenceServerClient(upstream.url).infer("mlp", [mlp_input(x)]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(got, want)
    assert edge.metric("continuum_worker_offloaded_total") == 1
    assert edge.metric("continuum_worker_fallbacks_total") == 0
    # a compressed answer the client asked for comes back compressed and decodes
    got = c.infer("mlp", [mlp_input(x)], response_compression_algorithm="gzip").as_numpy("OUTPUT0")
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def strings_worker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # the model's NUMBER input is parsed by a Cast that rejects the empty string the warm-up feeds
    path = modelgen.strings(tmp_path_factory.mktemp("strings") / "strings.onnx")
    worker = WorkerProcess(["--model-name", "strings", "--model-uri", str(path)])
    yield worker
    worker.stop()


def _strings_inputs(text: list[bytes], numbers: list[bytes]) -> list[httpclient.InferInput]:
    a = httpclient.InferInput("TEXT", [len(text)], "BYTES")
    a.set_data_from_numpy(np.array(text, dtype=np.object_))
    b = httpclient.InferInput("NUMBER", [len(numbers)], "BYTES")
    b.set_data_from_numpy(np.array(numbers, dtype=np.object_))
    return [a, b]


def test_a_model_that_parses_its_bytes_input_starts_and_serves(strings_worker: WorkerProcess) -> None:
    c = httpclient.InferenceServerClient(strings_worker.url)
    result = c.infer("strings", _strings_inputs([b"a", "é".encode()], [b"12", b"-3"]))
    assert result.as_numpy("VALUE").tolist() == [12, -3]
    assert result.as_numpy("TEXT_OUT").tolist() == [b"a", "é".encode()]


def test_non_utf8_bytes_are_refused_never_corrupted(strings_worker: WorkerProcess) -> None:
    c = httpclient.InferenceServerClient(strings_worker.url)
    with pytest.raises(InferenceServerException, match=r"input 'TEXT': BYTES element 1 is not UTF-8") as info:
        c.infer("strings", _strings_inputs([b"ok", b"\xff\xfe"], [b"1", b"2"]))
    assert info.value.status() == "400"
    # the server is fine afterwards
    assert c.infer("strings", _strings_inputs([b"x"], [b"7"])).as_numpy("VALUE").tolist() == [7]


def test_non_utf8_bytes_output_in_json_is_an_error_naming_binary_data() -> None:
    from continuum_worker.protocol import ProtocolError, RequestedOutput, encode_infer_response

    out = {"T": np.array([b"\xff\xfe"], dtype=np.object_)}
    with pytest.raises(ProtocolError, match=r"output .T.: BYTES element 0 is not UTF-8.*binary_data"):
        encode_infer_response("m", "1", None, out, [RequestedOutput("T", False)])
    body, _ = encode_infer_response("m", "1", None, out, [RequestedOutput("T", True)])
    assert body.endswith(b"\x02\x00\x00\x00\xff\xfe")  # binary keeps the bytes exactly
