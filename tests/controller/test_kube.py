"""The thin API client against the emulator, which answers lists as kube-apiserver does."""

from __future__ import annotations

from pathlib import Path

from continuum.controller.kube import KubeApi
from continuum_demo.emulator import EmulatedCluster


async def test_list_items_carry_kind_although_the_server_leaves_it_off(tmp_path: Path) -> None:
    """kube-apiserver puts kind/apiVersion on the list only; the cache keys rendered objects by kind, so a list
    without them made every Deployment look stale after an operator restart on a real cluster."""
    async with EmulatedCluster(workdir=tmp_path) as cluster:
        cluster.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "w", "namespace": "ns", "labels": {"continuum.dev/workload": "w"}},
                "spec": {"replicas": 1},
            }
        )
        api = KubeApi(cluster.url)
        try:
            raw = await api.request("GET", "/apis/apps/v1/namespaces/ns/deployments")
            assert "kind" not in raw["items"][0]  # what the server sends
            (item,) = await api.list("apps/v1", "Deployment", "ns")
            assert (item["apiVersion"], item["kind"]) == ("apps/v1", "Deployment")
        finally:
            await api.close()


async def test_apply_without_reading_creates_and_patches_and_still_raises_errors(tmp_path: Path) -> None:
    """``read=False`` (a Service or an Event whose answer nobody uses): the object is created, or patched
    when it exists, the answer is not decoded ({}), and an error is raised with the server's message."""
    import pytest
    from continuum.controller.kube import ApiError

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "w", "namespace": "ns", "labels": {"a": "1"}},
        "spec": {"ports": [{"port": 8000}]},
    }
    async with EmulatedCluster(workdir=tmp_path) as cluster:
        api = KubeApi(cluster.url)
        try:
            assert await api.apply(service, read=False) == {}
            assert (await api.get("v1", "Service", "w", "ns") or {})["metadata"]["labels"] == {"a": "1"}
            changed = {**service, "metadata": {**service["metadata"], "labels": {"a": "2"}}}
            assert await api.apply(changed, read=False) == {}  # exists (409): patched
            assert (await api.get("v1", "Service", "w", "ns") or {})["metadata"]["labels"] == {"a": "2"}
            assert (await api.apply(changed))["metadata"]["labels"] == {"a": "2"}  # read: the object
            with pytest.raises(ApiError) as failed:
                await api.apply({**service, "metadata": {"namespace": "ns"}}, read=False)  # no name
            assert failed.value.status >= 400
        finally:
            await api.close()
