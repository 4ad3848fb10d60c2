"""The leadership gate: kopf's rule over the peering object, and what happens on taking over."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from continuum.controller.kube import ApiError
from continuum.controller.leader import Leadership, may_act

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def peer(priority: int, seen: timedelta = timedelta(0), lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lastseen": (NOW - seen).isoformat(), "lifetime": lifetime}


def test_may_act_only_when_registered_and_no_live_peer_has_an_equal_or_higher_priority():
    assert may_act({"me": peer(5), "other": peer(3)}, "me", 5, NOW)
    assert not may_act({"other": peer(3)}, "me", 5, NOW)  # not registered yet
    assert not may_act({"me": peer(5), "other": peer(7)}, "me", 5, NOW)
    assert not may_act({"me": peer(5), "other": peer(5)}, "me", 5, NOW)  # ties: nobody acts
    assert may_act({"me": peer(5), "other": peer(7, seen=timedelta(seconds=61))}, "me", 5, NOW)  # dead
    assert may_act({"me": peer(5), "other": {"priority": 9}}, "me", 5, NOW)  # unreadable: not alive


class FakeApi:
    def __init__(self) -> None:
        self.peers: dict[str, Any] | None = None

    async def request(self, method: str, path: str) -> dict[str, Any]:
        if self.peers is None:
            raise ApiError(404, "NotFound", path)
        return {"status": self.peers}


def test_standalone_always_acts():
    assert Leadership(None, "me", 1).active.is_set()


def test_peering_paths_are_cluster_wide_or_per_namespace():
    assert Leadership("p", "me", 1)._paths() == ["/apis/kopf.dev/v1/clusterkopfpeerings/p"]
    assert Leadership("p", "me", 1, ["a", "b"])._paths() == [
        "/apis/kopf.dev/v1/namespaces/a/kopfpeerings/p",
        "/apis/kopf.dev/v1/namespaces/b/kopfpeerings/p",
    ]


async def test_taking_over_calls_back_before_the_workers_resume_and_standing_by_pauses_them():
    api = FakeApi()
    gate = Leadership("p", "me", 5, interval=0.01)
    gate.api = api  # type: ignore[assignment]
    acquired: list[bool] = []
    ready = asyncio.Event()
    ready.set()
    task = asyncio.create_task(gate.run(ready, lambda: acquired.append(gate.active.is_set())))
    try:
        await asyncio.sleep(0.05)
        assert not gate.active.is_set() and acquired == []  # no peering object: stand by
        api.peers = {"me": {**peer(5), "lastseen": datetime.now(UTC).isoformat()}}
        await asyncio.wait_for(gate.active.wait(), 5.0)
        assert acquired == [False]  # called once, while the workers were still paused
        api.peers["other"] = {**peer(9), "lastseen": datetime.now(UTC).isoformat()}
        for _ in range(500):  # up to 5 s on a loaded machine; the gate polls every 10 ms
            if not gate.active.is_set():
                break
            await asyncio.sleep(0.01)
        assert not gate.active.is_set() and acquired == [False]
    finally:
        task.cancel()
