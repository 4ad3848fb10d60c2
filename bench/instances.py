"""Seeded generator of realistic, tight-capacity placement instances (shared by bench and tests)."""

from __future__ import annotations

import random
from typing import Any

from continuum.api.models import EdgeNodePool, EdgeWorkloadSpec, Tier
from continuum.placement import build_snapshot
from continuum.placement.problem import WorkloadRequest
from continuum.placement.snapshot import ClusterSnapshot, requested_by_node

REGIONS = ("eu-central", "eu-west", "us-east")
NODE_SHAPES = {  # cpu, memory GiB, gpus
    Tier.DEVICE: (4, 8, 0),
    Tier.NEAR_EDGE: (16, 64, 1),
    Tier.REGIONAL_MEC: (32, 128, 2),
    Tier.CLOUD: (64, 256, 4),
}
PRICES = {  # cpu, memoryGiB, gpu, wanMbps per hour
    Tier.DEVICE: (0.004, 0.001, 0.0, 0.0),
    Tier.NEAR_EDGE: (0.01, 0.002, 0.25, 0.001),
    Tier.REGIONAL_MEC: (0.06, 0.008, 1.2, 0.0005),
    Tier.CLOUD: (0.04, 0.005, 2.1, 0.0002),
}


def generate(
    n_workloads: int,
    n_pools: int,
    seed: int = 0,
    nodes_per_pool: int = 5,
    load: float = 1.05,
    variety: bool = False,
) -> tuple[ClusterSnapshot, list[WorkloadRequest]]:
    """The instance as placement sees it (see :func:`generate_objects`)."""
    pools, nodes, pods, workloads = generate_objects(
        n_workloads, n_pools, seed, nodes_per_pool, load, variety
    )
    requests = [
        WorkloadRequest(f"ns/{w['metadata']['name']}", EdgeWorkloadSpec.model_validate(w["spec"]))
        for w in workloads
    ]
    return build_snapshot(pools, nodes, requested_by_node(pods)), requests


def manifests(n_workloads: int, n_pools: int, seed: int = 0, **kw: Any) -> list[dict[str, Any]]:
    """The same instance as Kubernetes objects, for ``continuum plan -f`` (Nodes, Pods, pools, workloads)."""
    pools, nodes, pods, workloads = generate_objects(n_workloads, n_pools, seed, **kw)
    docs = [{"apiVersion": "v1", "kind": "Node", **n} for n in nodes]
    docs += [{"apiVersion": "v1", "kind": "Pod", **p} for p in pods]
    docs += [p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in pools]
    return docs + workloads


def generate_objects(
    n_workloads: int,
    n_pools: int,
    seed: int = 0,
    nodes_per_pool: int = 5,
    load: float = 1.05,
    variety: bool = False,
) -> tuple[list[EdgeNodePool], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``load`` is total CPU demand / total CPU capacity (above 1: not everything can fit).

    ``variety`` adds what a live cluster has (from a second random stream, so the base instance is
    the same): nodes not ready, cordoned or carrying a taint the workers do not tolerate, pods already
    running on nodes, pools whose nodes are all gone, and workloads restricted to some tiers."""
    rng = random.Random(seed)
    vrng = random.Random(seed * 7919 + 1)
    n_sites = max(2, n_pools // 4)
    sites = [f"site-{i}" for i in range(n_sites)]
    site_region = {s: rng.choice(REGIONS[:2]) for s in sites}
    tiers = rng.choices(list(Tier), weights=(25, 35, 25, 15), k=n_pools)
    pools: list[EdgeNodePool] = []
    nodes: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    for i, tier in enumerate(tiers):
        name = f"pool-{i:04d}"
        if tier in (Tier.DEVICE, Tier.NEAR_EDGE):
            site = sites[i % n_sites]
            region = site_region[site]
            rtt = {site: round(rng.uniform(0.3, 3.0), 1)}
            wan = 0.0 if tier is Tier.DEVICE else rng.choice([50.0, 100.0, 200.0])
        elif tier is Tier.REGIONAL_MEC:
            site, region = f"mec-{i}", rng.choice(REGIONS[:2])
            rtt = {
                s: round(rng.uniform(5, 20), 1)
                for s in rng.sample(sites, k=min(len(sites), rng.randint(2, 6)))
            }
            rtt["*"] = 30.0
            wan = rng.choice([500.0, 1000.0, 2000.0])
        else:
            site, region = f"cloud-{i}", rng.choice(REGIONS)
            rtt = {"*": round(rng.uniform(30, 120), 1)}
            wan = 10000.0
        price = [p * rng.uniform(0.8, 1.25) for p in PRICES[tier]]
        pools.append(
            EdgeNodePool.model_validate(
                {
                    "metadata": {"name": name},
                    "spec": {
                        "tier": tier.value,
                        "site": site,
                        "region": region,
                        "nodeSelector": {"matchLabels": {"pool": name}},
                        "network": {"rttMs": rtt, "wanIngressMbps": wan},
                        "cost": {
                            "cpu": price[0],
                            "memoryGiB": price[1],
                            "gpu": price[2],
                            "wanMbps": price[3],
                        },
                    },
                }
            )
        )
        cpu, mem, gpu = NODE_SHAPES[tier]
        for k in range(nodes_per_pool):
            alloc = {"cpu": str(cpu), "memory": f"{mem}Gi"}
            if gpu and (tier is not Tier.NEAR_EDGE or k % 2 == 0):
                alloc["nvidia.com/gpu"] = str(gpu)
            labels = {"pool": name}
            if tier is Tier.DEVICE and k % 2 == 0:
                labels["continuum.dev/accelerator"] = "coral-tpu"
            node: dict[str, Any] = {
                "metadata": {"name": f"{name}-n{k}", "labels": labels},
                "spec": {},
                "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": "True"}]},
            }
            if variety:
                roll = vrng.random()
                if roll < 0.08 or i % 7 == 6:  # every 7th pool loses all its nodes
                    node["status"]["conditions"][0]["status"] = "False"
                elif roll < 0.12:
                    node["spec"]["unschedulable"] = True
                elif roll < 0.17:
                    node["spec"]["taints"] = [
                        {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}
                    ]
                elif roll < 0.22:
                    node["spec"]["taints"] = [{"key": "soon", "effect": "PreferNoSchedule"}]
                if vrng.random() < 0.3:  # pods outside Continuum already hold part of the node
                    held = {
                        "cpu": f"{vrng.randint(1, cpu * 500)}m",
                        "memory": f"{vrng.randint(1, mem * 256)}Mi",
                    }
                    pods.append(
                        {
                            "metadata": {"name": f"p-{name}-{k}", "namespace": "kube-system"},
                            "spec": {
                                "nodeName": node["metadata"]["name"],
                                "containers": [{"resources": {"requests": held}}],
                            },
                            "status": {"phase": "Running"},
                        }
                    )
            nodes.append(node)
    capacity_cpu = sum(NODE_SHAPES[t][0] for t in tiers) * nodes_per_pool
    mean_cpu = capacity_cpu * load / n_workloads
    workloads: list[dict[str, Any]] = []
    for i in range(n_workloads):
        replicas = rng.choice([1, 1, 1, 2, 3])
        cpu = max(0.1, min(rng.expovariate(1 / (mean_cpu / (replicas * 1.4))), 12.0))
        gpu = 1 if rng.random() < 0.12 else 0
        privacy = rng.choices(["public", "internal", "confidential", "restricted"], weights=(20, 45, 25, 10))[
            0
        ]
        spec: dict[str, Any] = {
            "source": {"site": rng.choice(sites)},
            "requirements": {
                "latencyBudgetMs": rng.choice([3, 8, 15, 25, 40, 100, 300]),
                "bandwidth": {"ingestMbps": rng.choice([0, 1, 5, 20, 50, 100])},
                "privacy": privacy,
                "resources": {
                    "cpu": f"{int(cpu * 1000)}m",
                    "memory": f"{int(cpu * rng.uniform(1, 4) * 1024)}Mi",
                    "gpu": gpu,
                },
                "inferenceMs": {"device": 4.0, "near-edge": 2.5, "regional-mec": 1.5, "cloud": 1.0},
            },
            "replicas": replicas,
            "model": {"name": f"m{i % 50}", "uri": "file:///m.onnx"},
        }
        if rng.random() < 0.25:
            spec["requirements"]["residency"] = rng.sample(REGIONS, k=2)
        if rng.random() < 0.05:
            spec["requirements"]["resources"]["accelerator"] = "coral-tpu"
        if rng.random() < 0.4:
            spec["tiers"] = {"preferred": rng.sample([t.value for t in Tier], k=rng.randint(1, 2))}
        if variety and vrng.random() < 0.2:
            tiers_spec = spec.setdefault("tiers", {})
            allowed = vrng.sample([t.value for t in Tier], k=vrng.randint(1, 3))
            tiers_spec["allowed"] = sorted({*allowed, *tiers_spec.get("preferred", [])})
        EdgeWorkloadSpec.model_validate(spec)  # fail here, not in the caller, on a generator bug
        workloads.append(
            {
                "apiVersion": "continuum.dev/v1alpha1",
                "kind": "EdgeWorkload",
                "metadata": {"name": f"w{i:05d}", "namespace": "ns"},
                "spec": spec,
            }
        )
    return pools, nodes, pods, workloads
