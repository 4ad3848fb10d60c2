"""Taints: a node whose NoSchedule/NoExecute taint the rendered worker does not tolerate is no capacity.

kube-scheduler's TaintToleration filter leaves such pods Pending, so our capacity model must agree.
The worker tolerates exactly its pool's taints (render/worker.py); the check below compares against the
tolerations of the real rendered pod template, not against a copy of the rule.
"""

from __future__ import annotations

from typing import Any

from continuum.api.models import EdgeWorkload, Placement
from continuum.placement import build_snapshot, decide
from continuum.placement.snapshot import NodeTaint, node_taints, tolerates, untolerated
from continuum.render.worker import RenderSettings, render_workload_object
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.placement.test_rules import node, pool, workload


def tainted(name: str, pool_name: str, *taints: dict[str, str], **kw: Any) -> dict[str, Any]:
    obj = node(name, pool_name, **kw)
    obj["spec"] = {"taints": list(taints)}
    return obj


def only(decision, name):
    return next(c for c in decision.candidates if c.pool == name)


def test_untolerated_noschedule_and_noexecute_taints_remove_capacity():
    p = pool("p", taints=[])
    spec = workload(resources={"cpu": "3", "memory": "1Gi"}, replicas=2)
    clean = [node("a", "p"), node("b", "p")]
    assert only(decide(spec, build_snapshot([p], clean)), "p").feasible
    for effect, key in (
        ("NoSchedule", "node.kubernetes.io/disk-pressure"),
        ("NoExecute", "node.kubernetes.io/unreachable"),
        ("NoSchedule", "node-role.kubernetes.io/control-plane"),
    ):
        nodes = [node("a", "p"), tainted("b", "p", {"key": key, "effect": effect})]
        snap = build_snapshot([p], nodes)
        assert snap.pools[0].free.cpu_millis == 4000  # only node a counts
        assert [n.name for n in snap.pools[0].usable_nodes] == ["a"]
        cand = only(decide(spec, snap), "p")
        assert not cand.feasible and [r.code.value for r in cand.reasons] == ["Capacity"]
        # both tainted: the pool has no usable node, and the message says which taint
        nodes = [tainted(n, "p", {"key": key, "effect": effect}) for n in ("a", "b")]
        [reason] = only(decide(spec, build_snapshot([p], nodes)), "p").reasons
        assert reason.code.value == "NoNodes"
        assert f"2 tainted ({key}:{effect})" in reason.message


def test_prefer_no_schedule_still_counts():
    p = pool("p", taints=[])
    nodes = [tainted("a", "p", {"key": "maintenance", "value": "soon", "effect": "PreferNoSchedule"})]
    snap = build_snapshot([p], nodes)
    assert snap.pools[0].free.cpu_millis == 4000
    assert only(decide(workload(), snap), "p").feasible


def test_the_pools_own_taints_are_tolerated():
    # device/near-edge pools taint their nodes continuum.dev/tier=<tier>:NoSchedule by default
    p = pool("p", tier="device")
    own = {"key": "continuum.dev/tier", "value": "device", "effect": "NoSchedule"}
    assert only(decide(workload(), build_snapshot([p], [tainted("a", "p", own)])), "p").feasible
    # a stale value under the pool's key+effect is the operator's to replace: not held against the node
    stale = {"key": "continuum.dev/tier", "value": "near-edge", "effect": "NoSchedule"}
    assert only(decide(workload(), build_snapshot([p], [tainted("a", "p", stale)])), "p").feasible
    # the same key with another effect is not the pool's taint
    other = {"key": "continuum.dev/tier", "value": "device", "effect": "NoExecute"}
    assert not only(decide(workload(), build_snapshot([p], [tainted("a", "p", other)])), "p").feasible
    # a pool taint without value is tolerated with Exists, whatever value the node carries
    q = pool("q", taints=[{"key": "dedicated", "effect": "NoSchedule"}])
    any_value = {"key": "dedicated", "value": "vision", "effect": "NoSchedule"}
    assert only(decide(workload(), build_snapshot([q], [tainted("a", "q", any_value)])), "q").feasible


def test_cordoned_and_not_ready_are_still_excluded_and_named():
    p = pool("p", taints=[])
    cordoned = node("b", "p")
    cordoned["spec"] = {"unschedulable": True}
    nodes = [node("a", "p", ready=False), cordoned, tainted("c", "p", {"key": "x", "effect": "NoExecute"})]
    [reason] = only(decide(workload(), build_snapshot([p], nodes)), "p").reasons
    assert "1 not ready, 1 cordoned, 1 tainted (x:NoExecute)" in reason.message


keys = st.sampled_from(["continuum.dev/tier", "dedicated", "node.kubernetes.io/unreachable", "gpu"])
values = st.sampled_from(["", "device", "near-edge", "vision"])
effects = st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"])
taint_dicts = st.builds(lambda k, v, e: {"key": k, "value": v, "effect": e}, keys, values, effects)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["device", "near-edge", "regional-mec", "cloud"]),
    st.one_of(st.none(), st.lists(taint_dicts, max_size=2, unique_by=lambda t: (t["key"], t["effect"]))),
    st.lists(taint_dicts, max_size=3),
)
def test_capacity_agrees_with_the_rendered_tolerations(tier, pool_taints, node_taint_list):
    """A node counts iff every NoSchedule/NoExecute taint on it, after the operator replaced the ones it
    owns (same key and effect as a pool taint) by the pool's, is tolerated by the rendered pod."""
    kw = {} if pool_taints is None else {"taints": pool_taints}
    p = pool("p", tier=tier, **kw)
    snap = build_snapshot([p], [tainted("a", "p", *node_taint_list)])
    ew = EdgeWorkload.model_validate(
        {
            "metadata": {"name": "w", "namespace": "ns", "uid": "u"},
            "spec": workload().model_dump(by_alias=True),
        }
    )
    placement = Placement(pool="p", tier=p.spec.tier, site="a", estimated_latency_ms=1.0)
    rendered = render_workload_object(ew, placement, p, RenderSettings())
    tolerations = rendered["spec"]["template"]["spec"].get("tolerations") or []
    own = {(t.key, t.effect) for t in p.spec.effective_taints}
    after_operator = [
        t for t in node_taints({"spec": {"taints": node_taint_list}}) if (t.key, t.effect) not in own
    ]
    after_operator += [
        NodeTaint(t.key, t.value, t.effect) for t in p.spec.effective_taints if t.effect != "PreferNoSchedule"
    ]
    schedulable = all(any(tolerates(tol, t) for tol in tolerations) for t in after_operator)
    assert snap.pools[0].nodes[0].usable == schedulable
    assert bool(untolerated(node_taints({"spec": {"taints": node_taint_list}}), p)) == (not schedulable)


def test_toleration_semantics():
    t = NodeTaint("k", "v", "NoSchedule")
    assert tolerates({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, t)
    assert tolerates({"key": "k", "value": "v"}, t)  # Equal is the default; empty effect matches all
    assert not tolerates({"key": "k", "operator": "Equal", "value": "w", "effect": "NoSchedule"}, t)
    assert tolerates({"key": "k", "operator": "Exists", "effect": "NoSchedule"}, t)
    assert not tolerates({"key": "k", "operator": "Exists", "effect": "NoExecute"}, t)
    assert tolerates({"operator": "Exists"}, t)  # empty key with Exists tolerates everything
    assert not tolerates({"key": "other", "operator": "Exists"}, t)
