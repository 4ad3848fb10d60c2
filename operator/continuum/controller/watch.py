"""The operator's own watch streams: list, then watch from the list's resourceVersion, per kind.

Each stream feeds :meth:`Controller.observe` directly (no framework handler machinery per event):

* the first list of every stream primes the cache (:attr:`ClusterCache.primed` is set when all have
  read theirs); a list goes through :meth:`ClusterCache.relist`, so deletions missed while a stream was
  down are observed too;
* the watch resumes from the last resourceVersion seen (objects and ``BOOKMARK`` events,
  ``allowWatchBookmarks``) after the server ends it (``timeoutSeconds``) or the connection drops, and
  lists again on ``410 Gone``/``Expired`` (the resourceVersion fell out of the server's window);
* errors back off exponentially (a CRD not installed yet, RBAC, a network outage) and never end the
  stream;
* watch lines are decoded with orjson, a whole received chunk at a time.

Namespaced kinds are watched per namespace when the operator serves some namespaces only, except Pods:
they are read cluster-wide (every pod holds capacity on its node; the chart grants exactly that), all but
Continuum's own worker pods (``!continuum.dev/workload``: placement counts those per workload).
The streams run on standby replicas too (warm caches); only the workers wait for the leadership.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from continuum.api.models import API_VERSION, LABEL_WORKLOAD
from continuum.api.workloadset import EdgeWorkloadSet
from continuum.controller.cache import ClusterCache, Observe
from continuum.controller.kube import ApiError, KubeApi, path_for
from continuum.controller.metrics import WATCH_EVENTS

log = logging.getLogger("continuum.operator")

SERVER_TIMEOUT = 300  # seconds: the server ends each watch after this (timeoutSeconds); it is resumed
READ_TIMEOUT = SERVER_TIMEOUT + 30  # a connection silent for this long is dead (bookmarks arrive ~1/min)
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


@dataclass(frozen=True)
class Kind:
    """One watched kind: what :meth:`Controller.observe` calls it, its API, its selector."""

    name: str  # the cache's kind (Node, Pod, EdgeNodePool, ..., Deployment, StatefulSet)
    api_version: str
    kind: str
    namespaced: bool
    label_selector: str | None = None
    all_namespaces: bool = False  # read cluster-wide even when the operator serves some namespaces


KINDS: tuple[Kind, ...] = (
    Kind("Node", "v1", "Node", namespaced=False),
    Kind("EdgeNodePool", API_VERSION, "EdgeNodePool", namespaced=False),
    # Continuum's own worker pods hold no capacity in the snapshot (placement accounts for them per
    # workload, snapshot.pod_holds): the server leaves them out, so a burst's pods cost the operator nothing
    Kind("Pod", "v1", "Pod", namespaced=True, label_selector=f"!{LABEL_WORKLOAD}", all_namespaces=True),
    Kind("Deployment", "apps/v1", "Deployment", namespaced=True, label_selector=LABEL_WORKLOAD),
    Kind("StatefulSet", "apps/v1", "StatefulSet", namespaced=True, label_selector=LABEL_WORKLOAD),
    Kind("EdgeWorkload", API_VERSION, "EdgeWorkload", namespaced=True),
    Kind(EdgeWorkloadSet.KIND, API_VERSION, EdgeWorkloadSet.KIND, namespaced=True),
)


_ECHO_TYPES = (b'{"type":"MODIFIED",', b'{"type":"ADDED",')
_RV_KEY = b'"resourceVersion":"'


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Stream:
    """List + watch of one kind in one namespace (None: cluster-wide)."""

    def __init__(
        self,
        kind: Kind,
        namespace: str | None,
        cache: ClusterCache,
        observe: Observe,
        on_synced: Callable[[], None],
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.cache = cache
        self.observe = observe
        self.on_synced = on_synced
        self.path = path_for(kind.api_version, kind.kind, None, namespace)
        self.observed = "Rendered" if kind.name in ("Deployment", "StatefulSet") else kind.name
        self.synced = False
        self.lists = 0  # how many lists were read (the first, then one per 410 or error)
        self._observed_events = WATCH_EVENTS.labels(kind.name, "observed")
        self._echo_events = WATCH_EVENTS.labels(kind.name, "own-echo")

    def __repr__(self) -> str:
        return f"{self.kind.name} in {self.namespace}" if self.namespace else f"{self.kind.name} cluster-wide"

    async def run(self, api: KubeApi) -> None:
        version: str | None = None
        backoff = BACKOFF_MIN
        while True:
            try:
                if version is None:
                    version = await self.list(api)
                version = await self.watch(api, version)
                backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except Gone:
                log.debug("watch of %s: resourceVersion expired, listing again", self)
                version = None
            except (ApiError, aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as exc:
                log.warning("watch of %s failed, again in %.1fs: %s", self, backoff, exc)
                version = None  # list again: events may have been missed while it was down
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def list(self, api: KubeApi) -> str:
        """Read the list into the cache; returns its resourceVersion (where the watch starts)."""
        kind = self.kind
        with self.cache.listing():
            items, version = await api.list_raw(
                kind.api_version, kind.kind, self.namespace, kind.label_selector
            )
            self.cache.relist(
                kind.name, self.namespace, items, int(version) if version.isdigit() else 0, self.observe
            )
        self.lists += 1
        if not self.synced:
            self.synced = True
            self.on_synced()
        return version

    async def watch(self, api: KubeApi, version: str) -> str:
        """One watch request from ``version``, until the server ends it; returns the last version seen."""
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(SERVER_TIMEOUT),
        }
        if self.kind.label_selector:
            params["labelSelector"] = self.kind.label_selector
        try:
            async with api.stream(self.path, params, READ_TIMEOUT) as body:
                pending = b""
                while True:
                    chunk = await body.readany()
                    if not chunk:
                        return version
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if not line.strip():
                            continue
                        echo = self._own_echo(line)
                        if echo is not None:
                            self._echo_events.inc()
                            version = echo
                            continue
                        self._observed_events.inc()
                        version = self.event(orjson.loads(line), version)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone from exc
            raise

    def _own_echo(self, line: bytes) -> str | None:
        """The resourceVersion of an ADDED/MODIFIED event that repeats the answer to one of our own writes
        (already in the cache: :meth:`ClusterCache.note_own_write`), else None. Read from the raw line, so
        the echo of each status and Deployment write is not decoded. Both the apiserver and the emulator
        write compact JSON with ``type`` first and the object's metadata before its spec and status (inside
        a string a key's quotes are escaped); the line must also carry the written object's uid. A line in
        any other shape is simply decoded."""
        if not line.startswith(_ECHO_TYPES):
            return None
        start = line.find(_RV_KEY)
        if start < 0:
            return None
        start += len(_RV_KEY)
        end = line.find(b'"', start)
        version = line[start:end].decode("ascii", "replace")
        return version if self.cache.own_echo(self.observed, version, line) else None

    def event(self, event: Any, version: str) -> str:
        """Take one watch event; returns the resourceVersion to resume from."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone
            raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message")))
        new_version = (obj.get("metadata") or {}).get("resourceVersion") or version
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.observe(self.observed, kind, obj)
        return new_version


class Watches:
    """Every stream the operator needs; sets :attr:`ClusterCache.primed` once all have listed."""

    def __init__(self, cache: ClusterCache, observe: Observe, namespaces: Sequence[str] | None) -> None:
        self.cache = cache
        self.streams = [
            Stream(kind, ns, cache, observe, self._synced)
            for kind in KINDS
            for ns in (namespaces if kind.namespaced and namespaces and not kind.all_namespaces else [None])
        ]

    def _synced(self) -> None:
        if all(stream.synced for stream in self.streams):
            self.cache.primed.set()

    async def run(self, api_ready: asyncio.Event, api: Callable[[], KubeApi | None]) -> None:
        await api_ready.wait()
        client = api()
        assert client is not None
        tasks = [asyncio.create_task(stream.run(client), name=f"watch {stream!r}") for stream in self.streams]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
