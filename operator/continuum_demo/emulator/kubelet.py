"""A stand-in for kubelets and the controllers behind Deployments, for the emulator (no pods run).

It marks a Deployment's or StatefulSet's replicas ready when its ``continuum.dev/pool`` nodeSelector
matches a ready node that has room for one replica, as a real rollout would; otherwise not ready.
Clearly not part of the operator: it lives beside the emulator and is used by the demo and tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from continuum.api.models import LABEL_POOL
from continuum.placement.snapshot import node_allocatable, node_ready, pod_requests

from continuum_demo.emulator.store import Store

KINDS = ("apps/v1/deployments", "apps/v1/statefulsets")


def _fits(template: dict[str, Any], node: dict[str, Any]) -> bool:
    need = pod_requests(template)
    return need.fits_in(node_allocatable(node))


def desired_status(obj: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    template = spec.get("template") or {}
    pool = ((template.get("spec") or {}).get("nodeSelector") or {}).get(LABEL_POOL)
    ok = any(
        node_ready(n) and (n["metadata"].get("labels") or {}).get(LABEL_POOL) == pool and _fits(template, n)
        for n in nodes
    )
    ready = replicas if ok else 0
    return {
        "observedGeneration": obj["metadata"].get("generation", 1),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }


async def run_fake_kubelet(store: Store, lock: asyncio.Lock, interval: float = 0.2) -> None:
    while True:
        async with lock:
            nodes = store.select("v1/nodes")
            for resource in KINDS:
                for obj in store.select(resource):
                    want = desired_status(obj, nodes)
                    if (obj.get("status") or {}) != want:
                        key = (resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                        store.patch(key, {"status": want}, "application/merge-patch+json", "status")
        await asyncio.sleep(interval)
