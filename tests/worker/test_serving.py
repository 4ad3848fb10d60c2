"""Serving behaviour against real worker processes: batching, backends, offload with fallback, hot swap."""

from __future__ import annotations

import functools
import hashlib
import http.client
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.worker.conftest import WorkerProcess, free_port


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def infer(url: str, x: np.ndarray, model: str = "mlp", output: str = "OUTPUT0") -> np.ndarray:
    c = httpclient.InferenceServerClient(url, network_timeout=30)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return c.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(output)]).as_numpy(output)


def test_dynamic_batching_keeps_every_response_with_its_request(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    # ~1 ms of compute per lone row: requests arriving while a batch computes form the next batch
    worker = start_worker(
        "--model-name", "heavy", "--model-uri", str(models["heavy"]), "--max-batch-size", "32", "--max-queue-delay-us", "5000"
    )  # fmt: skip
    ref = session(models["heavy"])
    rng = np.random.default_rng(0)
    requests = [rng.random((int(rng.integers(1, 4)), 64), dtype=np.float32) for _ in range(160)]

    def one(x: np.ndarray) -> None:
        got = infer(worker.url, x, model="heavy")
        np.testing.assert_allclose(got, ref.run(["OUTPUT0"], {"INPUT0": x})[0], rtol=1e-4, atol=1e-5)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, requests))
    success = worker.metric("nv_inference_request_success", model="heavy")
    executions = worker.metric("nv_inference_exec_count", model="heavy")
    rows = worker.metric("nv_inference_count", model="heavy")
    assert success == 160 and rows == sum(len(x) for x in requests)
    # ~0.45-0.5 here (2-core machine, clients in this process); unbatched it is exactly 1
    assert executions < 0.75 * success, f"{executions} executions for {success} requests: batching did not happen"
    assert worker.metric("nv_inference_queue_duration_us", model="heavy") > 0
    # as in Triton, a request larger than max_batch_size is the client's error, not a crash
    try:
        infer(worker.url, np.zeros((33, 64), np.float32), model="heavy")
    except InferenceServerException as exc:
        assert exc.status() == "400" and "inference request batch-size must be <= 32 for 'heavy'" in str(exc.message())
    else:
        raise AssertionError("a 33-row request was accepted with max_batch_size 32")


def test_provider_preference_reports_what_really_runs(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    # This machine's onnxruntime has no TensorRT or CUDA: the worker must say it runs on CPU.
    worker = start_worker(
        "--model-name",
        "mlp",
        "--model-uri",
        str(models["mlp"]),
        "--backends",
        "onnxruntime:tensorrt,cuda,cpu",
    )
    assert worker.metric("continuum_worker_backend_info", device="onnxruntime/CPUExecutionProvider") == 1
    assert worker.proc.poll() is None


def test_openvino_backend_and_fallthrough(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(3).random((2, 64), dtype=np.float32)
    expected = session(models["mlp"]).run(["OUTPUT0"], {"INPUT0": x})[0]
    # onnxruntime offers no CUDA here: the list falls through to OpenVINO
    worker = start_worker(
        "--model-name",
        "mlp",
        "--model-uri",
        str(models["mlp"]),
        "--backends",
        "onnxruntime:cuda;openvino:CPU",
    )
    assert worker.metric("continuum_worker_backend_info", backend="openvino", device="openvino/CPU") == 1
    np.testing.assert_allclose(infer(worker.url, x), expected, rtol=1e-4, atol=1e-6)


def test_configuration_errors_exit_non_zero_naming_the_flag(models: dict[str, Path], tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "continuum_worker.cli", "serve", "--port", str(free_port()), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})

    out = run("--model-uri", str(models["mlp"]))
    assert out.returncode == 2 and "--model-name" in out.stderr
    out = run("--model-name", "m", "--model-uri", str(models["mlp"]), "--backends", "tensorflow")
    assert out.returncode == 2 and "unknown backend 'tensorflow'" in out.stderr
    out = run("--model-name", "m", "--model-uri", str(models["mlp"]), "--model-sha256", "0" * 64)
    assert out.returncode == 1 and "checksum mismatch" in out.stderr
    out = run("--model-name", "m", "--model-uri", str(tmp_path / "missing.onnx"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    # an installation without the state library: --state-dir is refused with a clear message
    hide = "import sys; sys.modules['continuum_worker.state.worker_integration'] = None; "
    main = "from continuum_worker.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["serve", "--model-name", "m", "--model-uri", str(models["mlp"]), "--state-dir", str(tmp_path / "s")]
    out = subprocess.run([sys.executable, "-c", hide + main, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--state-dir needs the state library" in out.stderr, out.stderr


def test_environment_configuration_and_http_model_uri(
    start_worker, models: dict[str, Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(models["mlp"].parent))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        digest = hashlib.sha256(models["mlp"].read_bytes()).hexdigest()
        env = {
            "CONTINUUM_MODEL_NAME": "from-env",
            "CONTINUUM_MODEL_URI": f"http://127.0.0.1:{httpd.server_address[1]}/mlp.onnx",
            "CONTINUUM_MODEL_SHA256": digest,
            "CONTINUUM_MODEL_VERSION": "7",
            "CONTINUUM_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        }
        worker = start_worker(env=env)
        c = httpclient.InferenceServerClient(worker.url)
        assert c.get_model_metadata("from-env")["versions"] == ["7"]
        assert len(list((tmp_path / "cache").glob("*-mlp.onnx"))) == 1  # downloaded into the cache
        x = np.ones((1, 64), dtype=np.float32)
        np.testing.assert_allclose(
            infer(worker.url, x, model="from-env"),
            session(models["mlp"]).run(["OUTPUT0"], {"INPUT0": x})[0],
            rtol=1e-6,
        )
    finally:
        httpd.shutdown()


class Load:
    """Clients sending requests in a loop until stopped; records every failure."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url, self.stop, self.failures, self.results = url, threading.Event(), [], []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, seed: int) -> None:
        x = np.random.default_rng(seed).random((1, 64), dtype=np.float32)
        c = httpclient.InferenceServerClient(self.url, network_timeout=30)
        inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        while not self.stop.is_set():
            try:
                out = c.infer("mlp", [inp]).as_numpy("OUTPUT0")
                self.results.append((time.monotonic(), x, out))
            except Exception as exc:  # every failure counts against the test
                self.failures.append(repr(exc))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@functools.cache
def _cached_session(path: Path) -> ort.InferenceSession:
    return session(path)


def which(models: dict[str, Path], x: np.ndarray, out: np.ndarray) -> str:
    """Which model produced ``out`` for ``x``."""
    for name in ("mlp", "mlp_small"):
        expected = _cached_session(models[name]).run(["OUTPUT0"], {"INPUT0": x})[0]
        if np.allclose(out, expected, rtol=1e-5, atol=1e-6):
            return name
    return "neither"


def test_offload_falls_back_when_the_upstream_dies_and_returns(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    upstream = start_worker("--model-name", "mlp", "--model-uri", str(models["mlp"]))
    edge = start_worker(
        "--model-name", "mlp", "--model-uri", str(models["mlp"]),
        "--fallback-model-uri", str(models["mlp_small"]),
        "--upstream", f"http://{upstream.url}", "--upstream-timeout-ms", "200",
    )  # fmt: skip
    load = Load(edge.url)
    time.sleep(1.0)
    killed = time.monotonic()
    upstream.kill()  # mid-run
    time.sleep(1.5)
    upstream.start()  # back on the same port: the breaker's half-open probe finds it
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and edge.metric("continuum_worker_upstream_up") != 1:
        time.sleep(0.1)
    back = time.monotonic()
    assert back < deadline, "the edge never offloaded again after the upstream came back"
    time.sleep(1.0)
    load.finish()

    assert load.failures == [], load.failures[:3]  # no client request failed
    before = [which(models, x, o) for t, x, o in load.results if t < killed]
    during = [which(models, x, o) for t, x, o in load.results if killed + 0.3 < t < back - 0.5]
    after = [which(models, x, o) for t, x, o in load.results if t > back + 0.5]
    assert before and set(before) == {"mlp"}  # answered upstream
    assert during and set(during) == {"mlp_small"}  # the smaller local model answered
    assert after and set(after) == {"mlp"}  # offloading again
    fallbacks = edge.metric("continuum_worker_fallbacks_total", model="mlp")
    assert fallbacks >= len(during)
    # the breaker opened: most fallbacks did not wait for the upstream at all
    assert edge.metric("continuum_worker_fallbacks_total", reason="breaker_open") > fallbacks / 2
    assert edge.metric("continuum_worker_offloaded_total") > 0


def test_hot_swap_under_load_fails_no_request(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    worker = start_worker("--model-name", "mlp", "--model-uri", str(models["mlp"]), "--admin-token", "s3cret")
    load = Load(worker.url)
    time.sleep(0.5)

    def load_model(uri: str, version: str, token: str = "s3cret") -> tuple[int, dict]:
        body = json.dumps({"parameters": {"uri": uri, "version": version}}).encode()
        request = urllib.request.Request(
            f"http://{worker.url}/v2/repository/models/mlp/load",
            data=body,
            headers={"Authorization": f"Bearer {token}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert load_model(str(models["mlp_small"]), "2", token="wrong")[0] == 401
    assert load_model("/nope.onnx", "3")[0] == 400  # a bad version leaves the old one serving
    status, answer = load_model(str(models["mlp_small"]), "2")
    swapped = time.monotonic()
    assert status == 200 and answer["version"] == "2"
    time.sleep(0.5)
    load.finish()
    assert load.failures == [], load.failures[:3]
    assert httpclient.InferenceServerClient(worker.url).get_model_metadata("mlp")["versions"] == ["2"]
    late = [which(models, x, o) for t, x, o in load.results if t > swapped + 0.1]
    assert late and set(late) == {"mlp_small"}


def test_sigterm_drains_in_flight_requests(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    worker: WorkerProcess = start_worker(
        "--model-name", "slow", "--model-uri", str(models["slow"]), "--threads", "1"
    )
    x = np.random.default_rng(0).random((64, 256), dtype=np.float32)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(infer, worker.url, x, "slow") for _ in range(8)]
        time.sleep(0.05)
        worker.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=60) for f in futures]
    assert all(r.shape == (64, 256) for r in results)
    assert worker.proc.wait(30) == 0


def test_offload_relays_binary_requests_and_client_errors_unchanged(start_worker, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    upstream = start_worker("--model-name", "mlp", "--model-uri", str(models["mlp"]))
    edge = start_worker(
        "--model-name", "mlp", "--model-uri", str(models["mlp"]),
        "--fallback-model-uri", str(models["mlp_small"]), "--upstream", f"http://{upstream.url}",
    )  # fmt: skip
    x = np.random.default_rng(5).random((2, 64), dtype=np.float32)
    header = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 64], "parameters": {"binary_data_size": x.nbytes}}],
         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    # header names in lower case (as HTTP/2 proxies send them) must still reach the upstream
    conn = http.client.HTTPConnection(edge.url, timeout=10)  # sends header names exactly as given
    conn.request(
        "POST",
        "/v2/models/mlp/infer",
        body=header + x.tobytes(),
        headers={"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"},
    )
    r = conn.getresponse()
    assert r.status == 200, r.read()
    size = int(r.headers["Inference-Header-Content-Length"])
    body = r.read()
    conn.close()
    got = np.frombuffer(body[size:], dtype=np.float32).reshape(2, 10)
    assert which(models, x[:1], got[:1]) == "mlp"  # answered by the upstream, not the small fallback
    assert edge.metric("continuum_worker_offloaded_total") == 1
    # the upstream's 400 is the client's fault: relayed as is, no fallback, counted as a failure
    bad = urllib.request.Request(
        f"http://{edge.url}/v2/models/mlp/infer", data=b'{"inputs": []}', method="POST"
    )
    try:
        urllib.request.urlopen(bad, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 400 and "inputs" in json.loads(exc.read())["error"]
    else:
        raise AssertionError("an empty request was accepted")
    assert edge.metric("continuum_worker_fallbacks_total") == 0
    assert edge.metric("nv_inference_request_failure", model="mlp") == 1
