"""Helpers for the state tests: real aiohttp servers on 127.0.0.1 with the state library attached."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from continuum_worker.state.worker_integration import StateHandle, StateSettings, attach


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    url: str
    handle: StateHandle
    runner: web.AppRunner | None
    port: int
    settings: StateSettings

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def start_node(state_dir: Path, port: int | None = None, **kwargs: Any) -> Node:
    port = port or free_port()
    defaults: dict[str, Any] = {"sync_interval": 0.2, "min_backoff": 0.05, "max_backoff": 0.3, "request_timeout": 2.0}
    settings = StateSettings(state_dir=state_dir, **{**defaults, **kwargs})
    app = web.Application()
    handle = attach(app, settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return Node(f"http://127.0.0.1:{port}", handle, runner, port, settings)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def nodes():
    started: list[Node] = []

    async def make(state_dir: Path, **kwargs: Any) -> Node:
        node = await start_node(state_dir, **kwargs)
        started.append(node)
        return node

    yield make
    for node in started:
        await node.stop()
