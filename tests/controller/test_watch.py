"""The operator's watch streams: list, watch from the list's resourceVersion, resume after the server ends
a watch (from the last object or bookmark seen), list again on 410 Gone (observing deletions missed), back
off on errors; lines split across chunks are decoded whole."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from continuum.controller.cache import ClusterCache
from continuum.controller.kube import ApiError
from continuum.controller.watch import KINDS, Stream, Watches


def pool(name: str, rv: int) -> dict:
    return {"apiVersion": "continuum.dev/v1alpha1", "kind": "EdgeNodePool",
            "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": str(rv)},
            "spec": {"tier": "near-edge"}}  # fmt: skip


def line(event_type: str, obj: dict) -> bytes:
    return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"


class Body:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class Script:
    """A KubeApi stand-in: lists and watch responses in order; records the watches' parameters."""

    def __init__(self, lists: list, watches: list) -> None:
        self.lists, self.watches = lists, watches
        self.params: list[dict] = []

    async def list_raw(self, api_version, kind, namespace=None, label_selector=None):
        item = self.lists.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    @contextlib.asynccontextmanager
    async def stream(self, path, params, read_timeout):
        self.params.append(dict(params))
        if not self.watches:
            raise asyncio.CancelledError  # the end of the script
        item = self.watches.pop(0)
        if isinstance(item, Exception):
            raise item
        yield Body(item)


def run_stream(script: Script) -> tuple[ClusterCache, list, Stream]:
    cache = ClusterCache()
    seen: list = []

    def observe(kind, event_type, body):
        seen.append((event_type, body["metadata"]["name"]))
        cache.observe_object(kind, event_type, body)

    kind = next(k for k in KINDS if k.name == "EdgeNodePool")
    stream = Stream(kind, None, cache, observe, lambda: None)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(stream.run(script))  # type: ignore[arg-type]
    return cache, seen, stream


def test_a_stream_resumes_from_the_last_version_and_lists_again_on_410():
    added = line("ADDED", pool("b", 6))
    bookmark = line("BOOKMARK", {"metadata": {"resourceVersion": "9"}})
    script = Script(
        lists=[([pool("a", 5)], "5"), ([pool("b", 6), pool("c", 15)], "20")],
        watches=[
            [added[:17], added[17:] + bookmark[:30], bookmark[30:]],
            [line("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})],
            [line("DELETED", pool("c", 21)) + line("MODIFIED", pool("b", 22))],
        ],
    )
    cache, seen, stream = run_stream(script)
    assert [p["resourceVersion"] for p in script.params] == ["5", "9", "20", "22"]
    assert all(p["watch"] == "true" and p["allowWatchBookmarks"] == "true" for p in script.params)
    assert seen == [
        (None, "a"),  # the first list
        ("ADDED", "b"),  # split over two chunks
        ("DELETED", "a"),  # the second list (after the 410) no longer has it
        (None, "b"),
        (None, "c"),
        ("DELETED", "c"),
        ("MODIFIED", "b"),
    ]
    assert sorted(cache.pools) == ["b"] and stream.lists == 2


def test_a_stream_backs_off_and_lists_again_after_an_error(monkeypatch):
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    script = Script(
        lists=[
            ApiError(404, "NotFound", "the CRD is not installed yet"),
            ([pool("a", 5)], "5"),
            ([pool("a", 5)], "5"),
        ],
        watches=[ApiError(500, "InternalError", "etcd"), []],  # then the server ends a watch: resumed
    )
    _, seen, stream = run_stream(script)
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0]  # exponential
    assert [p["resourceVersion"] for p in script.params] == ["5", "5", "5"]  # listed again after the error
    assert seen == [(None, "a"), (None, "a")] and stream.lists == 2


def test_the_cache_is_primed_once_every_stream_has_listed():
    cache = ClusterCache()
    watches = Watches(cache, lambda *_: None, namespaces=["one", "two"])
    by_kind: dict[str, list] = {}
    for stream in watches.streams:
        by_kind.setdefault(stream.kind.name, []).append(stream.namespace)
    assert by_kind["EdgeWorkload"] == ["one", "two"] and by_kind["Deployment"] == ["one", "two"]
    assert by_kind["Pod"] == [None] and by_kind["Node"] == [None]  # pods: capacity on every node
    for stream in watches.streams[:-1]:
        stream.synced = True
        watches._synced()
    assert not cache.primed.is_set()
    watches.streams[-1].synced = True
    watches._synced()
    assert cache.primed.is_set()


async def test_the_pod_stream_leaves_continuums_own_worker_pods_on_the_server(tmp_path):
    """Own worker pods hold no capacity in the snapshot (placement counts them per workload), so the Pod
    stream asks the server for the others only (``!continuum.dev/workload``), in its list and its watch."""
    from continuum.controller.kube import KubeApi
    from continuum_demo.emulator import EmulatedCluster

    def pod(name: str, ours: bool) -> dict:
        labels = {"continuum.dev/workload": "w"} if ours else {"app": "x"}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns", "labels": labels},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}}  # fmt: skip

    kind = next(k for k in KINDS if k.name == "Pod")
    assert kind.label_selector == "!continuum.dev/workload" and kind.all_namespaces
    async with EmulatedCluster(workdir=tmp_path) as cluster:
        cluster.apply(pod("listed-ours", True))
        cluster.apply(pod("listed-other", False))
        cache = ClusterCache()
        seen: list = []

        def observe(kind_name, event_type, body):
            seen.append(body["metadata"]["name"])
            cache.observe_object(kind_name, event_type, body)

        api = KubeApi(cluster.url)
        stream = Stream(kind, None, cache, observe, lambda: None)
        task = asyncio.create_task(stream.run(api))
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if stream.synced:
                    break
            cluster.apply(pod("watched-ours", True))
            cluster.apply(pod("watched-other", False))
            for _ in range(100):
                await asyncio.sleep(0.05)
                if "watched-other" in seen:
                    break
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await api.close()
    assert seen == ["listed-other", "watched-other"]
    assert sorted(name for _, name in cache.pods) == ["listed-other", "watched-other"]


def compact(event_type: str, obj: dict) -> bytes:
    """A watch line as the apiserver and the emulator write it: compact JSON, ``type`` first."""
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def test_the_echo_of_our_own_write_is_skipped_undecoded_and_only_once():
    """The answer to our own write is already in the cache (:meth:`ClusterCache.note_own_write`): the watch
    event at that version is not decoded or observed, but the stream still resumes after it. Any other
    version, a DELETED event, or a line in another shape is observed as before."""
    cache = ClusterCache()
    seen: list = []

    def observe(kind, event_type, body):
        seen.append((event_type, body["metadata"]["name"], body["metadata"]["resourceVersion"]))
        cache.observe_object(kind, event_type, body)

    for version, name in (("7", "a"), ("9", "b"), ("11", "b"), ("13", "b")):
        cache.note_own_write("EdgeNodePool", written(version, name))
    cache.note_own_write("Node", written("8"))  # another kind's write: not this stream's echo
    script = Script(
        lists=[([pool("a", 5)], "5")],
        watches=[[
            compact("MODIFIED", pool("a", 7)),  # our write's echo: skipped
            compact("MODIFIED", pool("a", 8)),  # someone else's change
            compact("ADDED", pool("b", 9)),  # our create's echo: skipped
            line("MODIFIED", pool("b", 11)),  # not compact: decoded
            compact("DELETED", pool("b", 13)),  # deletions are always observed
        ]],
    )
    kind = next(k for k in KINDS if k.name == "EdgeNodePool")
    stream = Stream(kind, None, cache, observe, lambda: None)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(stream.run(script))  # type: ignore[arg-type]
    assert seen == [(None, "a", "5"), ("MODIFIED", "a", "8"), ("MODIFIED", "b", "11"), ("DELETED", "b", "13")]
    assert [p["resourceVersion"] for p in script.params] == ["5", "13"]
    # consumed once: the same version again (it cannot happen on a server) would be observed
    assert not cache.own_echo("EdgeNodePool", "7", compact("MODIFIED", pool("a", 7)))
    assert cache.own_echo("EdgeNodePool", "11", compact("MODIFIED", pool("b", 11)))  # left: its event had another shape
    assert cache.own_echo("Node", "8", b'"uid":"uid-b"')


def test_own_writes_whose_events_never_come_age_out():
    from continuum.controller.cache import OWN_WRITES_KEPT

    cache = ClusterCache()
    for version in range(OWN_WRITES_KEPT + 10):
        cache.note_own_write("EdgeWorkload", written(str(version)))
    uid = b'"uid":"uid-b"'
    assert not cache.own_echo("EdgeWorkload", "0", uid) and not cache.own_echo("EdgeWorkload", "9", uid)
    assert cache.own_echo("EdgeWorkload", "10", uid)
    assert cache.own_echo("EdgeWorkload", str(OWN_WRITES_KEPT + 9), uid)


def test_an_echo_needs_the_written_objects_uid():
    """The same version on another object (it cannot happen on one server, but a label or annotation named
    resourceVersion could precede the real one in a line) is not taken for our write's echo."""
    cache = ClusterCache()
    cache.note_own_write("EdgeNodePool", written("7"))
    assert not cache.own_echo("EdgeNodePool", "7", compact("MODIFIED", pool("a", 7)))
    assert cache.own_echo("EdgeNodePool", "7", compact("MODIFIED", pool("b", 7)))


def written(version: str, name: str = "b") -> dict:
    """The answer to our write of pool ``name`` at ``version``."""
    return pool(name, int(version))
