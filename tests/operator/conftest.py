"""The real operator (kopf, in a thread) against the API emulator (kmock, in another thread), over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from continuum.controller.runner import run_in_thread
from continuum.controller.settings import OperatorSettings
from continuum_demo.emulator import EmulatedCluster

from tests.conftest import EXAMPLES

WORKLOADS = "continuum.dev/v1alpha1/edgeworkloads"
POOLS = "continuum.dev/v1alpha1/edgenodepools"


def docs(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    for file in files:
        for doc in yaml.safe_load_all(file.read_text()):
            if doc:
                out.extend(doc["items"] if doc.get("kind") == "List" else [doc])
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.cluster = EmulatedCluster(workdir=tmp_path).start_in_thread()
        self.cluster.start_kubelet()
        self._stops: list[Callable[[], None]] = []
        self._threads: list[Any] = []

    def start_operator(self, **overrides: Any) -> None:
        options = OperatorSettings(
            **{
                "metrics_port": 0,
                "liveness_port": 0,
                "grace_seconds": 2.0,
                "stabilization_seconds": 3.0,
                "resync_seconds": 0.5,
                **overrides,
            }
        )
        thread, stop = run_in_thread(options, str(self.cluster.kubeconfig))
        self._threads.append(thread)
        self._stops.append(stop)

    def stop_operator(self) -> None:
        while self._stops:
            self._stops.pop()()
        while self._threads:
            self._threads.pop().join(timeout=15)

    def load_cluster(self) -> None:
        for obj in docs(EXAMPLES / "cluster"):
            self.cluster.apply(obj)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.cluster.apply(obj)

    def workload(self, ns: str, name: str) -> dict[str, Any]:
        return self.cluster.get(WORKLOADS, name, ns) or {}

    def status(self, ns: str, name: str) -> dict[str, Any]:
        return self.workload(ns, name).get("status") or {}

    def condition(self, ns: str, name: str, ctype: str) -> str | None:
        return next(
            (c["status"] for c in self.status(ns, name).get("conditions", []) if c["type"] == ctype), None
        )

    def events(self, reason: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.cluster.list("v1/events")
            if (reason is None or e.get("reason") == reason)
            and (name is None or (e.get("involvedObject") or {}).get("name") == name)
        ]

    def node_ready(self, name: str, ready: bool) -> None:
        node = self.cluster.get("v1/nodes", name)
        assert node is not None
        conditions = [c for c in node["status"].get("conditions", []) if c["type"] != "Ready"]
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
        self.cluster.patch("v1/nodes", name, {"status": {"conditions": conditions}}, status=True)

    def close(self) -> None:
        self.stop_operator()
        self.cluster.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


class FakeWorkers:
    """Answers GET /{namespace}/{service}<suffix> from ``answers`` (keyed "namespace/service"); a missing
    entry gets ``missing_status`` (503: a worker not ready; 404: a worker without that endpoint)."""

    def __init__(self, suffix: str, missing_status: int) -> None:
        self.answers: dict[str, Any] = {}
        self.asked: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.asked.append(self.path)
                key = self.path.removesuffix(suffix).strip("/")
                if key not in outer.answers:
                    self.send_response(missing_status)
                    self.end_headers()
                    self.wfile.write(b"not ready" if missing_status == 503 else b"")
                    return
                body = json.dumps(outer.answers[key]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{{namespace}}/{{service}}"
