"""Which replica acts when several run with kopf peering (``--peering NAME``).

kopf pauses its watch streams on the replicas that lose the peering; the reconcile workers are the
operator's own, so they need the same verdict. It is read from the same place kopf reads it — the
``KopfPeering``/``ClusterKopfPeering`` object, where every replica's kopf keeps its id, priority and
last heartbeat — with kopf's rule: a replica acts when it is registered and no other live replica has
an equal or higher priority. Standalone (no peering), the one replica always acts.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from continuum.controller import metrics
from continuum.controller.kube import ApiError, KubeApi

log = logging.getLogger("continuum.operator")


def own_identity() -> str:
    """The peer id kopf would use: ``POD_ID`` in a cluster, else user@host/time/random."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    rnd = "".join(random.choices("abcdefhijklmnopqrstuvwxyz0123456789", k=3))
    return f"{getpass.getuser()}@{socket.gethostname()}/{now}/{rnd}"


def _alive(info: Mapping[str, Any], now: datetime) -> bool:
    try:
        lastseen = datetime.fromisoformat(str(info["lastseen"]))
        lifetime = float(info.get("lifetime", 60))
    except (KeyError, ValueError, TypeError):
        return False
    if lastseen.tzinfo is None:
        lastseen = lastseen.replace(tzinfo=UTC)
    return lastseen + timedelta(seconds=lifetime) > now


def may_act(peers: Mapping[str, Any], identity: str, priority: int, now: datetime | None = None) -> bool:
    """kopf's rule over a peering object's status: registered, and no live peer at >= our priority."""
    now = now or datetime.now(UTC)
    if identity not in peers:
        return False
    for peer, info in peers.items():
        if peer == identity or not isinstance(info, Mapping) or not _alive(info, now):
            continue
        if int(info.get("priority", 0)) >= priority:
            return False
    return True


class Leadership:
    def __init__(
        self,
        peering: str | None,
        identity: str,
        priority: int,
        namespaces: Sequence[str] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.peering = peering
        self.identity = identity
        self.priority = priority
        self.namespaces = list(namespaces) if namespaces else None
        self.interval = interval
        self.api: KubeApi | None = None
        self.active = asyncio.Event()
        if peering is None:
            self.active.set()
        metrics.ACTING.set(1 if self.active.is_set() else 0)

    def _paths(self) -> list[str]:
        if self.namespaces is None:
            return [f"/apis/kopf.dev/v1/clusterkopfpeerings/{self.peering}"]
        return [f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/{self.peering}" for ns in self.namespaces]

    async def check(self) -> bool:
        assert self.api is not None
        for path in self._paths():
            try:
                obj = await self.api.request("GET", path)
            except ApiError as exc:
                if exc.status == 404:
                    return False
                raise
            if not may_act(obj.get("status") or {}, self.identity, self.priority):
                return False
        return True

    async def run(self, api_ready: asyncio.Event, on_acquired: Callable[[], None]) -> None:
        """Follow the peering object; on becoming active, call ``on_acquired`` (re-list the cluster and
        reconcile everything) before the workers resume."""
        if self.peering is None:
            return
        await api_ready.wait()
        while True:
            try:
                acting = await self.check()
            except Exception as exc:  # network, API: stand by until the object can be read
                log.warning("cannot read the peering object %s: %s", self.peering, exc)
                acting = False
            if acting and not self.active.is_set():
                log.info("acting: %s has the highest priority in peering %s", self.identity, self.peering)
                on_acquired()
                self.active.set()
                metrics.ACTING.set(1)
            elif not acting and self.active.is_set():
                log.info("standing by: another replica acts in peering %s", self.peering)
                self.active.clear()
                metrics.ACTING.set(0)
            await asyncio.sleep(self.interval)
