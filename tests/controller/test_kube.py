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
