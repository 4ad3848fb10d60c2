"""Each install a user or an image makes, alone in a clean virtualenv, and its entry points run.

A development venv with every extra hides a missing dependency (the operator image once died at import:
numpy was declared only by the worker extra). Each test builds a venv with exactly one install:
  base        `pip install .`               -> `continuum plan` on the examples
  [operator]  `pip install '.[operator]'`   -> `continuum run --help`, the controller and runner import
  [worker]    `pip install '.[worker]'`     -> `continuum-worker serve` answers ready and infers
pip's cache makes repeated runs quick; the first run downloads the wheels.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.slow


def make_venv(tmp: Path, spec: str) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", spec],
        capture_output=True, text=True, check=False, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv / "bin"


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=timeout)


def test_base_install_runs_plan(tmp_path: Path) -> None:
    bin_ = make_venv(tmp_path, str(ROOT))
    proc = run(str(bin_ / "continuum"), "plan", "-f", str(EXAMPLES / "cluster"), "-f",
               str(EXAMPLES / "workloads"), "-o", "json")
    # exit 2: one example workload is unschedulable on purpose (the GitOps gate)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert out, "plan printed no decisions"
    # the base install does not drag in the operator's or the worker's dependencies
    probe = run(str(bin_ / "python"), "-c", "import importlib.util as u; print([m for m in "
                "('kopf','kubernetes','onnxruntime','aiohttp') if u.find_spec(m)])")
    assert probe.stdout.strip() == "[]", probe.stdout


def test_operator_install_imports_the_runtime(tmp_path: Path) -> None:
    bin_ = make_venv(tmp_path, f"{ROOT}[operator]")
    proc = run(str(bin_ / "continuum"), "run", "--help")
    assert proc.returncode == 0 and "--metrics-port" in proc.stdout, proc.stderr
    proc = run(str(bin_ / "python"), "-c",
               "import continuum.controller.runner, continuum.controller.handlers, continuum.render.worker, "
               "continuum.placement.engine; print('ok')")
    assert proc.stdout.strip() == "ok", proc.stderr
    # `continuum run` takes uvloop's event loop (part of the extra)
    proc = run(str(bin_ / "python"), "-c",
               "import asyncio; from continuum.cli import _use_uvloop; _use_uvloop(); "
               "print(type(asyncio.get_event_loop_policy()).__module__)")
    assert proc.stdout.strip().startswith("uvloop"), (proc.stdout, proc.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _identity_model(path: Path) -> Path:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [None, 4])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_worker_install_serves(tmp_path: Path) -> None:
    bin_ = make_venv(tmp_path, f"{ROOT}[worker]")
    model = _identity_model(tmp_path / "identity.onnx")
    port = _free_port()
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [str(bin_ / "continuum-worker"), "serve", "--model-name", "identity", "--model-uri", str(model),
         "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "worker never became ready"
            time.sleep(0.5)
        body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                                       "data": [1, 2, 3, 4]}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/identity/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.loads(r.read())
        assert out["outputs"][0]["data"] == [1, 2, 3, 4]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
