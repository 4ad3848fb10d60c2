"""One test per rule of the placement contract: the reason code and a message with the margin."""

from __future__ import annotations

from typing import Any

from continuum.api.models import EdgeNodePool, EdgeWorkloadSpec, ReasonCode
from continuum.placement import build_snapshot, decide
from continuum.placement.snapshot import PoolUsage, Resources


def pool(name: str, tier: str = "near-edge", site: str = "a", **spec: Any) -> EdgeNodePool:
    base = {
        "tier": tier,
        "site": site,
        "region": "eu",
        "nodeSelector": {"matchLabels": {"pool": name}},
        "network": {"rttMs": {"a": 2, "*": 30}},
    }
    return EdgeNodePool.model_validate({"metadata": {"name": name}, "spec": {**base, **spec}})


def node(
    name: str,
    pool_name: str,
    cpu: str = "4",
    memory: str = "8Gi",
    gpu: int = 0,
    ready: bool = True,
    **labels: str,
):
    alloc = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": str(gpu)} if gpu else {})}
    return {
        "metadata": {"name": name, "labels": {"pool": pool_name, **labels}},
        "status": {
            "allocatable": alloc,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def workload(**spec: Any) -> EdgeWorkloadSpec:
    base: dict[str, Any] = {
        "source": {"site": "a"},
        "requirements": {"latencyBudgetMs": 20},
        "model": {"name": "m", "uri": "x"},
    }
    for key, value in spec.items():
        if key in ("latencyBudgetMs", "privacy", "residency", "resources", "inferenceMs", "bandwidth"):
            base["requirements"][key] = value
        else:
            base[key] = value
    return EdgeWorkloadSpec.model_validate(base)


def reasons(spec: EdgeWorkloadSpec, pools, nodes, usage=None) -> dict[str, list[tuple[str, str]]]:
    d = decide(spec, build_snapshot(pools, nodes), usage or {})
    return {c.pool: [(r.code.value, r.message) for r in c.reasons] for c in d.candidates}


def only(result, pool_name):
    return result[pool_name]


def test_tier_not_allowed():
    r = reasons(workload(tiers={"allowed": ["cloud"]}), [pool("p")], [node("n", "p")])
    assert only(r, "p") == [("TierNotAllowed", "tier near-edge is not in tiers.allowed [cloud]")]


def test_privacy_ceiling_and_restricted_stays_on_site():
    r = reasons(workload(privacy="confidential"), [pool("c", tier="cloud", site="z")], [node("n", "c")])
    assert ("Privacy", "privacy confidential is above the pool's maxPrivacy internal") in only(r, "c")
    r = reasons(workload(privacy="restricted"), [pool("far", site="b")], [node("n", "far")])
    assert only(r, "far")[0][0] == "Privacy" and "never leaves its source site a" in only(r, "far")[0][1]


def test_residency():
    r = reasons(workload(residency=["us"]), [pool("p")], [node("n", "p")])
    assert only(r, "p") == [("Residency", "region eu is not in residency [us]")]


def test_latency_with_margin_and_no_route():
    cloud = pool("c", tier="cloud", site="z", network={"rttMs": {"*": 30}})
    r = reasons(workload(latencyBudgetMs=10, inferenceMs={"cloud": 4}), [cloud], [node("n", "c")])
    assert only(r, "c") == [("Latency", "latency 34.0 ms > budget 10 ms (rtt 30 + inference 4)")]
    lonely = pool("l", network={"rttMs": {"b": 1}})
    r = reasons(workload(), [lonely], [node("n", "l")])
    assert only(r, "l")[0][0] == "Latency" and "no route from site a" in only(r, "l")[0][1]


def test_bandwidth_counts_what_others_already_send():
    p = pool("m", tier="regional-mec", site="mec", network={"rttMs": {"*": 5}, "wanIngressMbps": 100})
    spec = workload(bandwidth={"ingestMbps": 60})
    assert only(reasons(spec, [p], [node("n", "m")]), "m") == []
    used = {"m": PoolUsage(wan_mbps=50)}
    r = reasons(spec, [p], [node("n", "m")], used)
    assert only(r, "m") == [("Bandwidth", "ingest 60 Mbps over the WAN > 50 Mbps free of wanIngressMbps 100")]
    on_site = reasons(
        workload(bandwidth={"ingestMbps": 500}),
        [pool("p", network={"rttMs": {"a": 1}, "wanIngressMbps": 0})],
        [node("n", "p")],
    )
    assert only(on_site, "p") == []  # on-site data does not cross the WAN


def test_capacity_aggregate_and_single_node_fit():
    p = pool("p")
    nodes = [node("n1", "p"), node("n2", "p")]
    fits = workload(replicas=2, resources={"cpu": "3", "memory": "1Gi"})
    assert only(reasons(fits, [p], nodes), "p") == []
    too_many = workload(replicas=3, resources={"cpu": "3", "memory": "1Gi"})
    [(code, message)] = only(reasons(too_many, [p], nodes), "p")
    assert (
        code == "Capacity"
        and "needs 9 cpu, 3Gi memory for 3 replica(s), 8 cpu, 16Gi memory free; short by 1 cpu" in message
    )
    too_big = workload(resources={"cpu": "6", "memory": "1Gi"})
    [(code, message)] = only(reasons(too_big, [p], nodes), "p")
    assert code == "Capacity" and message.startswith("one replica (6 cpu, 1Gi memory) fits on no single node")


def test_capacity_messages_name_zero_free_gpus_when_a_replica_asks_for_one():
    # "largest free" and "free" must say 0 gpu beside a GPU request, not list only cpu and memory
    p = pool("p")
    gpu_replica = workload(resources={"cpu": "1", "memory": "1Gi", "gpu": 1})
    [(code, message)] = only(reasons(gpu_replica, [p], [node("n1", "p")]), "p")
    assert code == "Capacity" and message == (
        "one replica (1 cpu, 1Gi memory, 1 gpu) fits on no single node (largest free: 4 cpu, 8Gi memory, 0 gpu)"
    )
    # the node's one GPU is taken by another Continuum workload: the aggregate check reports 0 free
    used = {"p": PoolUsage(resources=Resources(1000, 1 << 30, 1), workloads=1)}
    [(code, message)] = only(reasons(gpu_replica, [p], [node("n1", "p", gpu=1)], used), "p")
    assert code == "Capacity" and message == (
        "needs 1 cpu, 1Gi memory, 1 gpu for 1 replica(s), 3 cpu, 7Gi memory, 0 gpu free; short by 1 gpu"
    )
    # without a GPU request the free GPUs are not mentioned (as before)
    r = reasons(workload(replicas=3, resources={"cpu": "3", "memory": "1Gi"}), [p], [node("n1", "p")])
    assert all("gpu" not in message for _, message in only(r, "p")), r


def test_accelerator_and_no_nodes():
    r = reasons(workload(resources={"accelerator": "coral-tpu"}), [pool("p")], [node("n", "p")])
    assert only(r, "p") == [("Accelerator", "no ready member node offers accelerator coral-tpu")]
    r = reasons(
        workload(resources={"accelerator": "coral-tpu"}),
        [pool("p")],
        [node("n", "p", **{"continuum.dev/accelerator": "coral-tpu"})],
    )
    assert only(r, "p") == []
    r = reasons(workload(), [pool("p")], [node("n", "p", ready=False)])
    assert only(r, "p") == [
        (
            "NoNodes",
            "none of the pool's 1 member nodes can run its workers (1 not ready; a worker tolerates only the pool's own taints)",
        )
    ]
    r = reasons(workload(), [pool("empty")], [])
    assert only(r, "empty")[0][0] == ReasonCode.NO_NODES.value


def test_preferred_tier_wins_over_cost_then_spills():
    edge = pool("edge", cost={"cpu": 1.0})
    mec = pool("mec", tier="regional-mec", site="m", network={"rttMs": {"*": 5}}, cost={"cpu": 0.01})
    nodes = [node("e", "edge"), node("m", "mec")]
    prefer_edge = workload(tiers={"preferred": ["near-edge"]})
    assert decide(prefer_edge, build_snapshot([edge, mec], nodes)).pool == "edge"
    assert decide(workload(), build_snapshot([edge, mec], nodes)).pool == "mec"  # no preference: cheapest
    full = {"edge": PoolUsage()}
    spill = workload(tiers={"preferred": ["near-edge"]}, resources={"cpu": "3"}, replicas=2)
    assert (
        decide(
            spill, build_snapshot([edge, mec], [node("e", "edge", cpu="4"), node("m", "mec", cpu="8")]), full
        ).pool
        == "mec"
    )


def test_hint_names_the_smallest_fix():
    d = decide(
        workload(latencyBudgetMs=10, inferenceMs={"regional-mec": 12}),
        build_snapshot(
            [pool("mec", tier="regional-mec", site="m", network={"rttMs": {"a": 9}})], [node("n", "mec")]
        ),
    )
    assert d.placement is None and d.hint == "to fit on pool mec: raise requirements.latencyBudgetMs to 21 ms"
    d = decide(workload(privacy="restricted"), build_snapshot([pool("far", site="b")], [node("n", "far")]))
    assert "every pool breaks a rule no small change fixes (Privacy)" in d.hint
