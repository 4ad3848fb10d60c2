"""Each apiserver behaviour the emulator adds to kmock, pinned over real HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import kmock
import pytest
from continuum_demo.emulator import EmulatedCluster

EW = "/apis/continuum.dev/v1alpha1/namespaces/ns/edgeworkloads"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSONPATCH = {"Content-Type": "application/json-patch+json"}


def workload(name: str, **extra: object) -> dict:
    return {
        "apiVersion": "continuum.dev/v1alpha1",
        "kind": "EdgeWorkload",
        "metadata": {"name": name, **extra},
        "spec": {"a": 1},
    }


@pytest.fixture
async def api() -> AsyncIterator[tuple[EmulatedCluster, aiohttp.ClientSession]]:
    async with EmulatedCluster() as cluster, aiohttp.ClientSession(cluster.url) as session:
        yield cluster, session


async def test_server_sets_metadata(api):
    _, s = api
    first = await (await s.post(EW, json=workload("a"))).json()
    second = await (await s.post(EW, json=workload("b"))).json()
    meta = first["metadata"]
    assert meta["uid"] and meta["uid"] != second["metadata"]["uid"]
    assert meta["generation"] == 1 and meta["namespace"] == "ns" and meta["creationTimestamp"].endswith("Z")
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    again = await s.post(EW, json=workload("a"))
    assert again.status == 409


async def test_generation_bumps_on_spec_not_on_metadata_or_status(api):
    _, s = api
    await s.post(EW, json=workload("a"))
    r = await (await s.patch(f"{EW}/a", json={"metadata": {"labels": {"x": "y"}}}, headers=MERGE)).json()
    assert r["metadata"]["generation"] == 1
    r = await (await s.patch(f"{EW}/a/status", json={"status": {"phase": "Placed"}}, headers=MERGE)).json()
    assert r["metadata"]["generation"] == 1
    r = await (await s.patch(f"{EW}/a", json={"spec": {"a": 2}}, headers=MERGE)).json()
    assert r["metadata"]["generation"] == 2


async def test_status_subresource_semantics(api):
    _, s = api
    await s.post(EW, json=workload("a"))
    r = await (
        await s.patch(f"{EW}/a/status", json={"status": {"phase": "Placed"}, "spec": {"a": 9}}, headers=MERGE)
    ).json()
    assert r["spec"] == {"a": 1} and r["status"] == {"phase": "Placed"}
    r = await (
        await s.patch(f"{EW}/a", json={"status": {"phase": "Nope"}, "spec": {"a": 3}}, headers=MERGE)
    ).json()
    assert r["spec"] == {"a": 3} and r["status"] == {"phase": "Placed"}


async def test_merge_patch_null_deletes_and_noop_keeps_resource_version(api):
    _, s = api
    await s.post(EW, json=workload("a", labels={"k": "v", "z": "1"}))
    r = await (await s.patch(f"{EW}/a", json={"metadata": {"labels": {"k": None}}}, headers=MERGE)).json()
    assert r["metadata"]["labels"] == {"z": "1"}
    again = await (await s.patch(f"{EW}/a", json={"metadata": {"labels": {"z": "1"}}}, headers=MERGE)).json()
    assert again["metadata"]["resourceVersion"] == r["metadata"]["resourceVersion"]


async def test_failed_json_patch_test_is_422_and_stale_write_is_409(api):
    _, s = api
    created = await (await s.post(EW, json=workload("a"))).json()
    rv = created["metadata"]["resourceVersion"]
    bad = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
        {"op": "add", "path": "/spec/b", "value": 1},
    ]
    r = await s.patch(f"{EW}/a", json=bad, headers=JSONPATCH)
    assert r.status == 422 and (await r.json())["reason"] == "Invalid"
    good = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/spec/b", "value": 1},
    ]
    r = await s.patch(f"{EW}/a", json=good, headers=JSONPATCH)
    assert r.status == 200 and (await r.json())["spec"] == {"a": 1, "b": 1}
    stale = await s.patch(
        f"{EW}/a", json={"metadata": {"resourceVersion": rv}, "spec": {"a": 5}}, headers=MERGE
    )
    assert stale.status == 409


async def test_finalizers_delay_deletion_and_owners_collect_dependents(api):
    _, s = api
    owner = await (await s.post(EW, json=workload("a", finalizers=["x/y"]))).json()
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "a",
            "ownerReferences": [
                {
                    "apiVersion": "continuum.dev/v1alpha1",
                    "kind": "EdgeWorkload",
                    "name": "a",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
        "spec": {},
    }
    assert (await s.post("/apis/apps/v1/namespaces/ns/deployments", json=dep)).status == 200
    r = await (await s.delete(f"{EW}/a")).json()
    assert r["metadata"]["deletionTimestamp"]
    assert (await s.get(f"{EW}/a")).status == 200
    assert (await s.get("/apis/apps/v1/namespaces/ns/deployments/a")).status == 200
    await s.patch(f"{EW}/a", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert (await s.get(f"{EW}/a")).status == 404
    assert (await s.get("/apis/apps/v1/namespaces/ns/deployments/a")).status == 404  # garbage-collected


async def _read_events(resp: aiohttp.ClientResponse, seconds: float) -> list[dict]:
    events = []
    try:
        async with asyncio.timeout(seconds):
            async for line in resp.content:
                if line.strip():
                    events.append(json.loads(line))
    except TimeoutError:
        pass
    return events


async def test_watch_resumes_from_resource_version_without_replay(api):
    _, s = api
    await s.post(EW, json=workload("a"))
    mark = (await (await s.get(EW)).json())["metadata"]["resourceVersion"]
    await s.post(EW, json=workload("b"))
    resp = await s.get(EW, params={"watch": "true", "resourceVersion": mark})
    await s.patch(f"{EW}/a", json={"spec": {"a": 2}}, headers=MERGE)
    events = await _read_events(resp, 0.5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
    ]


async def test_watch_without_resource_version_lists_then_streams(api):
    _, s = api
    await s.post(EW, json=workload("a"))
    resp = await s.get(EW, params={"watch": "true"})
    await s.delete(f"{EW}/a")
    events = await _read_events(resp, 0.5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("DELETED", "a"),
    ]


async def test_label_and_field_selectors(api):
    _, s = api
    await s.post(EW, json=workload("a", labels={"tier": "edge", "env": "prod"}))
    await s.post(EW, json=workload("b", labels={"tier": "cloud"}))

    async def names(**params: str) -> list[str]:
        items = (await (await s.get(EW, params=params)).json())["items"]
        return [i["metadata"]["name"] for i in items]

    assert await names(labelSelector="tier=edge") == ["a"]
    assert await names(labelSelector="tier in (edge,cloud),!env") == ["b"]
    assert await names(labelSelector="tier!=edge") == ["b"]
    assert await names(labelSelector="env") == ["a"]
    assert await names(fieldSelector="metadata.name=b") == ["b"]
    resp = await s.get(EW, params={"watch": "true", "labelSelector": "tier=cloud"})
    await s.patch(f"{EW}/a", json={"spec": {"a": 2}}, headers=MERGE)
    await s.patch(f"{EW}/b", json={"spec": {"a": 2}}, headers=MERGE)
    events = await _read_events(resp, 0.5)
    assert {e["object"]["metadata"]["name"] for e in events} == {"b"}


async def test_lists_carry_kind_and_core_discovery_is_v1(api):
    """The list carries kind/apiVersion and its items do not, exactly as kube-apiserver answers (the
    differential test in tests/cluster compares the two)."""
    _, s = api
    await s.post("/api/v1/nodes", json={"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}})
    body = await (await s.get("/api/v1/nodes")).json()
    assert body["kind"] == "NodeList" and body["apiVersion"] == "v1"
    assert "kind" not in body["items"][0] and "apiVersion" not in body["items"][0]
    single = await (await s.get("/api/v1/nodes/n")).json()
    assert single["kind"] == "Node" and single["apiVersion"] == "v1"
    assert (await (await s.get("/api/v1")).json())["groupVersion"] == "v1"


async def test_latency_stays_flat_over_many_requests(api):
    _, s = api
    await s.post(EW, json=workload("a"))

    async def sample(n: int) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await (await s.get(f"{EW}/a")).read()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    async def fetch() -> None:
        async with s.get(f"{EW}/a") as resp:
            await resp.read()

    early = await sample(50)
    for _ in range(20):
        await asyncio.gather(*(fetch() for _ in range(100)))
    late = await sample(50)
    # kmock alone re-filters its whole request history per request: ~1 ms → ~180 ms after 4,000 requests
    assert late < early * 2 + 0.002, (early, late)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_works(tmp_path: Path):
    cluster = EmulatedCluster(workdir=tmp_path).start_in_thread()
    try:
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "edge-1", "labels": {"continuum.dev/pool": "p"}},
            }
        )
        cluster.apply(
            {
                "apiVersion": "continuum.dev/v1alpha1",
                "kind": "EdgeNodePool",
                "metadata": {"name": "p"},
                "spec": {"tier": "device"},
            }
        )

        def kubectl(*args: str) -> str:
            proc = subprocess.run(
                ["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            return proc.stdout + proc.stderr

        assert "edge-1" in kubectl("get", "nodes", "-L", "continuum.dev/pool")
        out = kubectl("get", "enp", "-o", "custom-columns=NAME:.metadata.name,TIER:.spec.tier")
        assert "device" in out and "Warning" not in out
        assert "No resources found" in kubectl("get", "edgeworkloads", "-A")
    finally:
        cluster.stop()


TABLE = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}


async def test_table_format_uses_the_crd_printer_columns(api):
    _, s = api
    await s.post(EW, json=workload("a"))
    status = {
        "phase": "Placed",
        "placement": {"tier": "near-edge", "pool": "munich-line", "estimatedLatencyMs": 12.5},
        "conditions": [{"type": "Placed", "status": "True"}, {"type": "Ready", "status": "False"}],
    }
    await s.patch(f"{EW}/a/status", json={"status": status}, headers=MERGE)
    await s.post(EW, json=workload("b"))
    listed = await (await s.get(EW, headers=TABLE)).json()
    assert listed["kind"] == "Table" and listed["apiVersion"] == "meta.k8s.io/v1"
    names = [c["name"] for c in listed["columnDefinitions"]]
    assert names == ["Name", "Tier", "Pool", "Latency", "Phase", "Ready", "Drift", "Cost/h", "Age"]
    rows = {r["cells"][0]: r for r in listed["rows"]}
    assert rows["a"]["cells"][1:6] == ["near-edge", "munich-line", 12.5, "Placed", "False"]
    assert rows["b"]["cells"][1:8] == [None] * 7  # kubectl prints blanks
    assert rows["a"]["cells"][8].endswith("s")  # an age, as the apiserver renders date columns
    assert rows["a"]["object"]["kind"] == "PartialObjectMetadata"
    assert rows["a"]["object"]["metadata"]["namespace"] == "ns"
    one = await (await s.get(f"{EW}/a", headers=TABLE)).json()
    assert one["kind"] == "Table" and [r["cells"][0] for r in one["rows"]] == ["a"]
    full = await (await s.get(EW, params={"includeObject": "Object"}, headers=TABLE)).json()
    assert full["rows"][0]["object"]["kind"] == "EdgeWorkload"
    # plain JSON without the Table media type, and for resources without printer columns
    assert (await (await s.get(EW)).json())["kind"] == "EdgeWorkloadList"
    assert (await (await s.get("/api/v1/nodes", headers=TABLE)).json())["kind"] == "NodeList"


def test_human_duration_matches_kubectl_ages():
    from continuum_demo.emulator.table import human_duration

    cases = {
        5: "5s",
        119: "119s",
        125: "2m5s",
        600: "10m",
        3 * 3600: "3h",
        3 * 3600 + 300: "3h5m",
        30 * 3600: "30h",
    }
    cases |= {3 * 86400: "3d", 3 * 86400 + 7200: "3d2h", 30 * 86400: "30d", 800 * 86400: "2y70d"}
    assert {s: human_duration(s) for s in cases} == cases


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_get_shows_printer_columns(tmp_path: Path):
    cluster = EmulatedCluster(workdir=tmp_path).start_in_thread()
    try:
        cluster.apply(
            {
                **workload("cam", namespace="shop"),
                "status": {
                    "phase": "Placed",
                    "placement": {"tier": "device", "pool": "store-1", "estimatedLatencyMs": 4},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "ew", "-A"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        header, row = proc.stdout.splitlines()[:2]
        assert header.split() == ["NAMESPACE", "NAME", "TIER", "POOL", "LATENCY", "PHASE", "READY", "DRIFT", "AGE"]
        assert row.split()[:7] == ["shop", "cam", "device", "store-1", "4", "Placed", "True"]
    finally:
        cluster.stop()


async def test_resource_calls_answer_alike_through_kmocks_reactions_and_without_them(api):
    """While no reaction was added, resource calls skip kmock's filters (most of the emulator's CPU per
    call); they answer exactly as through them, and a reaction added while serving takes effect at once."""
    cluster, s = api
    emulator = cluster.emulator

    async def calls(name: str) -> list[tuple[int, object]]:
        out = []
        for method, path, body, headers in [
            ("POST", EW, workload(name), None),
            ("POST", EW, workload(name), None),  # 409
            ("GET", f"{EW}/{name}", None, None),
            ("GET", f"{EW}/{name}-missing", None, None),  # 404
            ("PATCH", f"{EW}/{name}/status", {"status": {"phase": "Placed"}}, MERGE),
            ("GET", f"{EW}?labelSelector=app%3D{name}", None, None),
            ("GET", "/apis/continuum.dev/v1alpha1/nope", None, None),  # unknown resource
            ("DELETE", f"{EW}/{name}", None, None),
        ]:
            async with s.request(method, path, json=body, headers=headers) as resp:
                data = await resp.json(content_type=None)
                out.append((resp.status, _normalized(data, name)))
        return out

    direct = await calls("first-one")
    assert not emulator._customized()
    emulator["get /never-asked"] << 418  # any reaction: from now on every call goes through kmock's DSL
    assert emulator._customized()
    assert await calls("second-one") == direct
    emulator["create apps/v1/deployments"][:1] << kmock.KubernetesError(500, "InternalError", "injected")
    deployments = "/apis/apps/v1/namespaces/ns/deployments"
    for name, status in (("d1", 500), ("d2", 200)):
        body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {}}
        assert (await s.post(deployments, json=body)).status == status


def _normalized(data: object, name: str) -> object:
    """``data`` with what differs between two objects (server-set metadata, the name) made equal."""
    if isinstance(data, dict):
        volatile = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "traceback")
        return {k: _normalized(v, name) for k, v in data.items() if k not in volatile}
    if isinstance(data, list):
        return [_normalized(v, name) for v in data]
    if isinstance(data, str):
        return data.replace(name, "NAME")
    return data
