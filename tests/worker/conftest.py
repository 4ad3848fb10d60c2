"""Real workers on 127.0.0.1, started as ``continuum-worker serve`` processes, and tiny ONNX models."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker import modelgen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, port: int | None = None, grpc: bool = False
    ) -> None:
        self.port = port or free_port()
        self.grpc_port = free_port() if grpc else 0
        self.args = args
        self.env = {**os.environ, "CONTINUUM_LOG_LEVEL": "WARNING", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, wait: bool = True) -> None:
        cmd = [
            sys.executable,
            "-m",
            "continuum_worker.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
        ]
        self.proc = subprocess.Popen([*cmd, *self.args], env=self.env, stderr=subprocess.PIPE)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {err}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("worker not ready")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.url}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            m = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else 0


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "mlp": modelgen.mlp(root / "mlp.onnx"),
        "mlp2": modelgen.mlp(root / "mlp2.onnx", seed=2),
        "mlp_small": modelgen.mlp(root / "mlp_small.onnx", hidden=16, seed=3),
        "fixed": modelgen.fixed(root / "fixed.onnx"),
        "dtypes": modelgen.dtypes(root / "dtypes.onnx"),
        "slow": modelgen.slow(root / "slow.onnx"),
        "heavy": modelgen.heavy(root / "heavy.onnx"),
    }


@pytest.fixture
def start_worker() -> Iterator:  # type: ignore[type-arg]
    started: list[WorkerProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, port: int | None = None, grpc: bool = False
    ) -> WorkerProcess:
        worker = WorkerProcess(list(args), env, port, grpc)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def mlp_worker(models: dict[str, Path]) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(["--model-name", "mlp", "--model-uri", str(models["mlp"])])
    yield worker
    worker.stop()
