"""Worker benchmark: the same model through bare onnxruntime, our worker and Seldon MLServer, in one run.

    .venv/bin/python bench/worker.py [--quick] [--no-write] [--no-mlserver]

Per-request latency at batch 1 (median and p99 of sequential requests over one keep-alive connection)
with tritonclient HTTP (binary and JSON tensors) and with a minimal raw HTTP client (to show the
server's share without tritonclient's own ~0.2 ms), and throughput with 1, 8 and 32 concurrent
clients with and without dynamic batching, on two models: the 64→128→10 MLP (compute ~12 µs: the
HTTP path dominates) and an 8-layer 1024-wide MLP with the same small I/O (compute-bound: what
batching is for).

MLServer runs from its own virtualenv (.venv-bench, created on first use: `pip install mlserver
onnxruntime`) with bench/mlserver_onnx.py as its runtime. The reported overhead is the latency minus
bare onnxruntime's, both measured in this run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from continuum_worker.backends import auto_intra_op_threads  # noqa: E402

from bench.report import machine, markdown_table, percentile, write_section  # noqa: E402

BENCH_VENV = ROOT / ".venv-bench"
ROUNDS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def start_worker(model: Path, name: str, batch: int = 0, delay_us: int = 500) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "continuum_worker.cli", "serve", "--model-name", name, "--model-uri", str(model)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--max-batch-size", str(batch), "--max-queue-delay-us", str(delay_us)]
    proc = subprocess.Popen(cmd, env={**os.environ, "CONTINUUM_LOG_LEVEL": "WARNING"})
    url = f"127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def ensure_mlserver() -> Path | None:
    exe = BENCH_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe
    print("installing MLServer into .venv-bench (first run only) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        pip = [str(BENCH_VENV / "bin" / "pip"), "install", "-q", "mlserver", "onnxruntime", "numpy"]
        subprocess.run(pip, check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"MLServer could not be installed ({exc}); its rows are left out", file=sys.stderr)
        return None
    return exe if exe.exists() else None


def mlserver_version() -> str:
    """The MLServer version installed in .venv-bench (read from its metadata, not assumed)."""
    found = sorted((BENCH_VENV / "lib").glob("python*/site-packages/mlserver-*.dist-info"))
    return found[-1].name.removeprefix("mlserver-").removesuffix(".dist-info") if found else "?"


def start_mlserver(model: Path, name: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    exe = ensure_mlserver()
    if exe is None:
        return None
    port = free_port()
    folder = workdir / "mlserver"
    (folder / name).mkdir(parents=True, exist_ok=True)
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {"name": name, "implementation": "mlserver_onnx.OnnxModel", "parameters": {"uri": str(model)}}
    (folder / name / "model-settings.json").write_text(json.dumps(model_settings))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
    proc = subprocess.Popen(
        [str(exe), "start", str(folder)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


# -- clients ---------------------------------------------------------------------------------------
def tritonclient_latencies(url: str, name: str, x: np.ndarray, binary: bool, n: int) -> list[float]:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    for _ in range(min(200, n)):
        c.infer(name, [inp], outputs=outputs)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.infer(name, [inp], outputs=outputs)
        out.append(time.perf_counter() - t)
    return out


def mlserver_binary_error(url: str, x: np.ndarray) -> str | None:
    """What MLServer answers to tritonclient's default binary tensors (None if it works)."""
    from tritonclient.utils import InferenceServerException

    try:
        tritonclient_latencies(url, "mlp", x, True, 1)
    except InferenceServerException as exc:
        return f"fails: HTTP {exc.status()}" + (" (JSON decode error)" if "json_invalid" in str(exc) else "")
    return None


def raw_request(name: str, x: np.ndarray) -> bytes:
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}],
         "outputs": [{"name": "OUTPUT0"}]}
    ).encode()  # fmt: skip
    head = f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _read_response(s: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += s.recv(65536)


def raw_latencies(url: str, name: str, x: np.ndarray, n: int) -> list[float]:
    host, port = url.split(":")
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = raw_request(name, x)
    for _ in range(min(200, n)):
        s.sendall(req)
        _read_response(s)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(req)
        _read_response(s)
        out.append(time.perf_counter() - t)
    s.close()
    return out


def _throughput_process(url: str, name: str, features: int, threads: int, seconds: float, queue: mp.Queue) -> None:
    import threading

    req = raw_request(name, np.random.default_rng(threads).random((1, features), dtype=np.float32))
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def run(i: int) -> None:
        host, port = url.split(":")
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.monotonic() < stop:
            s.sendall(req)
            _read_response(s)
            counts[i] += 1
        s.close()

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    queue.put(sum(counts))


def throughput(url: str, name: str, features: int, clients: int, seconds: float) -> float:
    """Requests/s with ``clients`` concurrent keep-alive connections (spread over up to 4 processes)."""
    procs = min(clients, 4)
    queue: mp.Queue = mp.Queue()
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ps = [mp.Process(target=_throughput_process, args=(url, name, features, k, seconds, queue)) for k in per]
    for p in ps:
        p.start()
    total = sum(queue.get() for _ in ps)
    for p in ps:
        p.join()
    return total / seconds


def bare_latencies(model: Path, x: np.ndarray, n: int) -> list[float]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for _ in range(200):
        s.run(["OUTPUT0"], {"INPUT0": x})
    out = []
    for _ in range(n):
        t = time.perf_counter()
        s.run(["OUTPUT0"], {"INPUT0": x})
        out.append(time.perf_counter() - t)
    return out


def p(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter throughput runs")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-mlserver", action="store_true")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tests.worker import modelgen

    n = 500 if args.quick else 3000
    seconds = 1.5 if args.quick else 4.0
    console = Console(width=150)
    tmp = Path(tempfile.mkdtemp(prefix="continuum-bench-"))
    mlp = modelgen.mlp(tmp / "mlp.onnx")
    deep = modelgen.heavy(tmp / "heavy.onnx")
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)

    # Every configuration is measured in ROUNDS short slices, interleaved (bare, ours, MLServer, ...), so
    # load that comes and goes on the shared machine hits them all alike instead of one of them.
    servers = {"ours": start_worker(mlp, "mlp")}
    ml = None if args.no_mlserver else start_mlserver(mlp, "mlp", tmp)
    if ml is not None:
        servers["mlserver"] = ml
    samples: dict[str, list[float]] = {}
    configs = [("bare", "-")]
    configs += [("ours", c) for c in ("tritonclient binary", "tritonclient JSON", "raw HTTP JSON")]
    if ml is not None:
        configs += [("mlserver", c) for c in ("tritonclient JSON", "raw HTTP JSON")]
    binary_error = None
    try:
        with console.status("latency at batch 1 (interleaved rounds)"):
            for _ in range(ROUNDS):
                for server, client in configs:
                    k = max(1, n // ROUNDS)
                    if server == "bare":
                        got = bare_latencies(mlp, x, k)
                    else:
                        url = servers[server][1]
                        got = (
                            raw_latencies(url, "mlp", x, k)
                            if client == "raw HTTP JSON"
                            else tritonclient_latencies(url, "mlp", x, client == "tritonclient binary", k)
                        )
                    samples.setdefault(f"{server} {client}", []).extend(got)
            if ml is not None:
                binary_error = mlserver_binary_error(ml[1], x)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    names = {"bare": "bare onnxruntime session.run (in-process)", "ours": "continuum-worker"}
    names["mlserver"] = f"MLServer {mlserver_version()} (reference)"
    bare_ms = statistics.median(samples["bare -"]) * 1000
    rows: list[list[str]] = []
    lat: dict[str, float] = {}
    for server, client in configs:
        values = samples[f"{server} {client}"]
        med = statistics.median(values) * 1000
        lat[f"{server} {client}"] = med
        overhead = "-" if server == "bare" else f"{med - bare_ms:.3f}"
        rows.append([names[server], client, f"{med:.3f}", f"{p(values, 0.99):.3f}", overhead])
    if binary_error:  # tritonclient's default (binary tensors) against MLServer
        rows.append([names["mlserver"], "tritonclient binary", binary_error, "-", "-"])

    latency_table = markdown_table(["server", "client", "median ms", "p99 ms", "overhead over bare ms"], rows)
    goal_rows = []
    for client in ("tritonclient JSON", "raw HTTP JSON"):
        if f"mlserver {client}" in lat:
            ours, theirs = lat[f"ours {client}"] - bare_ms, lat[f"mlserver {client}"] - bare_ms
            goal_rows.append([client, f"{ours:.3f}", f"{theirs:.3f}", f"{ours / theirs:.2f}", "yes" if ours <= theirs / 2 else "no"])

    tput_rows = []
    ratios = {}
    for label, model, features in (("MLP 64→128→10", mlp, 64), ("8×1024 MLP", deep, 64)):
        for batching in (False, True):
            proc, url = start_worker(model, "m", batch=32 if batching else 0, delay_us=500)
            try:
                with console.status(f"throughput {label} batching={batching}"):
                    values = [throughput(url, "m", features, c, seconds) for c in (1, 8, 32)]
            finally:
                stop(proc)
            ratios[(label, batching)] = values
            tput_rows.append([label, "on (32, 500 µs)" if batching else "off", *[f"{v:,.0f}" for v in values]])
    for label in ("MLP 64→128→10", "8×1024 MLP"):
        off, on = ratios[(label, False)], ratios[(label, True)]
        tput_rows.append([label, "gain with batching", *[f"{b / a:.2f}×" for a, b in zip(off, on, strict=True)]])
    tput_table = markdown_table(["model", "dynamic batching", "1 client req/s", "8 clients req/s", "32 clients req/s"], tput_rows)

    for title, headers, body in (
        ("Latency at batch 1 (64→128→10 MLP)", ["server", "client", "median ms", "p99 ms", "overhead ms"], rows),
        ("Per-request overhead vs MLServer", ["client", "ours ms", "MLServer ms", "ratio", "≤ ½?"], goal_rows),
        ("Throughput (raw keep-alive JSON clients)", ["model", "batching", "1", "8", "32"], tput_rows),
    ):
        table = Table(title=title)
        for h in headers:
            table.add_column(h)
        for r in body:
            table.add_row(*r)
        console.print(table)

    met = [r[0] for r in goal_rows if r[4] == "yes"]
    missed = [r[0] for r in goal_rows if r[4] != "yes"]
    overhead_verdict = (
        "Goal (overhead at most half of MLServer's): "
        + (f"met with {', '.join(met)}" if met else "not met with any client")
        + (f"; not met with {', '.join(missed)}" if missed and met else "")
        + ". Both servers are measured with the same client, so the client's own cost (tritonclient's JSON "
        "encoding and decoding) is in both overheads. tritonclient's default, binary tensors, has no MLServer "
        "row to compare with: MLServer rejects it (see the table)."
        if goal_rows
        else ""
    )
    mlserver_note = (
        f"MLServer {mlserver_version()} from `.venv-bench`" if goal_rows else "MLServer not run"
    )
    deep_gain = ratios[("8×1024 MLP", True)][2] / ratios[("8×1024 MLP", False)][2]
    mlp_gain = ratios[("MLP 64→128→10", True)][2] / ratios[("MLP 64→128→10", False)][2]
    section = f"""## Inference worker (`bench/worker.py`)

Machine: {machine("onnxruntime", "aiohttp", "uvloop", "tritonclient")}; {mlserver_note}.
Server and clients share the {os.cpu_count()} cores. The worker runs with its defaults: two executor threads and
`--intra-op-threads 0`, i.e. usable CPUs / executor threads = {auto_intra_op_threads(2)} onnxruntime thread(s) per run.
Latency: sequential requests over one keep-alive connection, n = {n} per row, taken in {ROUNDS} interleaved rounds.

{latency_table}

Overhead over bare onnxruntime, ours vs MLServer's (goal: at most half):

{markdown_table(["client", "ours ms", "MLServer ms", "ratio", "at most half?"], goal_rows) if goal_rows else "MLServer was not run."}

{overhead_verdict}

Throughput, {seconds:g} s per cell, raw keep-alive JSON clients in up to 4 processes:

{tput_table}

Dynamic batching at 32 clients: {deep_gain:.2f}× on the compute-bound 8×1024 MLP (goal ≥ 2×: {"met" if deep_gain >= 2 else "missed"}),
{mlp_gain:.2f}× on the 12 µs MLP, whose cost is the HTTP path, not the model: batching cannot help it.
"""
    if not args.no_write:
        write_section("worker", section)
        console.print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
