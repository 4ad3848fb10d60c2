"""A real Mosquitto on a free loopback port with a generated configuration, and a worker subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM a broker process and wait for it; SIGKILL after ``timeout`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def broker_url(scheme: str, port: int, topic: str, opts: dict[str, str]) -> str:
    query = "&".join(f"{k}={v}" for k, v in opts.items())
    return f"{scheme}://127.0.0.1:{port}/{topic}" + (f"?{query}" if query else "")


@dataclass
class Broker:
    """``persistence``: sessions and queued messages survive a restart (saved on SIGTERM) — the upstream
    broker of the outage tests, whose subscriber must not miss what arrives while it reconnects."""

    directory: Path
    port: int = field(default_factory=free_port)
    persistence: bool = False
    proc: subprocess.Popen[bytes] | None = None

    def config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",  # small packets (PUBACKs) go out at once, not after the peer's delayed ACK
            "max_queued_messages 2000000",
            "max_queued_bytes 0",
            "log_dest none",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines += [f"persistence_location {self.directory}/", "autosave_interval 0"]
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config())], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)  # fmt: skip
        wait_port(self.port)

    def stop(self) -> None:
        terminate(self.proc, 10)
        self.proc = None

    def url(self, topic: str, **opts: str) -> str:
        return broker_url("mqtt", self.port, topic, opts)


def _broker(tmp_path_factory: pytest.TempPathFactory, name: str, persistence: bool) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto; .ci/run installs it)")
    broker = Broker(tmp_path_factory.mktemp(name), persistence=persistence)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def source_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from _broker(tmp_path_factory, "source", False)


@pytest.fixture
def upstream_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from _broker(tmp_path_factory, "upstream", True)


@pytest.fixture(scope="session")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.worker.modelgen import mlp

    return mlp(tmp_path_factory.mktemp("models") / "mlp.onnx")


@dataclass
class Worker:
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    launcher: list[str] | None = None  # instead of -m continuum_worker.cli (tests/ingest/gated_worker.py)

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "inference-worker")}
        env.pop("CONTINUUM_INGEST", None)
        self.proc = subprocess.Popen(
            [sys.executable, *(self.launcher or ["-m", "continuum_worker.cli"]), "serve", *self.args],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Worker] = []

    def make(*args: str, launcher: list[str] | None = None) -> Worker:
        w = Worker([*args, "--port", str(free_port()), "--grpc-port", "0", "--log-level", "WARNING"],
                   tmp_path / f"worker{len(started)}.log", launcher=launcher)  # fmt: skip
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


class Link:
    """A TCP link to a broker that can be cut (every connection closed, new ones refused) and restored on
    the same port: an uplink outage while the broker itself keeps running. (Stopping Mosquitto 2.0.11
    instead loses the messages it had queued for a connected persistent-session subscriber: measured,
    see docs/streaming.md.)"""

    def __init__(self, target_port: int) -> None:
        import asyncio
        import threading

        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: object | None = None
        self.writers: set[object] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.restore()

    async def _pipe(self, reader: object, writer: object) -> None:
        try:
            while data := await reader.read(65536):  # type: ignore[attr-defined]
                writer.write(data)  # type: ignore[attr-defined]
                await writer.drain()  # type: ignore[attr-defined]
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()  # type: ignore[attr-defined]

    async def _handle(self, reader: object, writer: object) -> None:
        import asyncio

        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()  # type: ignore[attr-defined]
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def _run(self, coro: object) -> object:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def restore(self) -> None:
        import asyncio

        async def start() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        self._run(start())

    def cut(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()  # type: ignore[attr-defined]
                self.server = None
            for w in list(self.writers):
                w.transport.abort()  # type: ignore[attr-defined]
            self.writers.clear()

        self._run(stop())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)

    def url(self, topic: str) -> str:
        return f"mqtt://127.0.0.1:{self.port}/{topic}"
