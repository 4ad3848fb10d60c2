"""The watch cache: stale events are ignored; the snapshot is rebuilt only when what placement reads
changes; workloads' model index tells which peers to re-render."""

from __future__ import annotations

import copy

from continuum.controller.cache import ClusterCache, WorkloadChange
from continuum.controller.keys import RENDERED, WorkloadKey


def with_rv(obj, rv):
    obj = copy.deepcopy(obj)
    obj["metadata"]["resourceVersion"] = str(rv)
    return obj


def test_older_events_are_ignored(example_nodes):
    cache = ClusterCache()
    node = example_nodes[0]
    assert cache.observe_object("Node", "ADDED", with_rv(node, 5))
    older = with_rv(node, 4)
    older["status"]["conditions"][0]["status"] = "False"
    assert not cache.observe_object("Node", "MODIFIED", older)
    assert cache.nodes[node["metadata"]["name"]]["metadata"]["resourceVersion"] == "5"


def test_the_snapshot_is_rebuilt_only_when_what_placement_reads_changes(example_nodes):
    cache = ClusterCache()
    for i, node in enumerate(example_nodes):
        cache.observe_object("Node", "ADDED", with_rv(node, i + 1))
    first = cache.snapshot()
    assert cache.snapshot() is first and not cache.stale
    node = with_rv(example_nodes[0], 100)
    node["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:00Z"  # a heartbeat
    node["metadata"]["labels"]["continuum.dev/pool"] = "x"  # our own label
    assert not cache.observe_object("Node", "MODIFIED", node)
    assert cache.snapshot() is first
    node = with_rv(node, 101)
    node["spec"] = {"taints": [{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]}
    assert cache.observe_object("Node", "MODIFIED", node) and cache.stale
    assert cache.snapshot() is not first
    assert cache.observe_object("Node", "DELETED", node)


def test_pods_count_only_when_bound_running_and_not_ours():
    cache = ClusterCache()
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "1"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
    }
    assert cache.observe_object("Pod", "ADDED", pod)
    ours = with_rv(pod, 2)
    ours["metadata"]["labels"] = {"continuum.dev/workload": "w"}
    assert cache.observe_object("Pod", "MODIFIED", ours)  # stops counting: the snapshot changes
    assert not cache.observe_object("Pod", "MODIFIED", with_rv(ours, 3))


def workload(name, uid="u1", rv=1, model="m", tier=None, phase=None):
    status = {"phase": phase} if phase else {}
    if tier:
        status["placement"] = {"tier": tier, "pool": "p"}
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": str(rv)},
        "spec": {"model": {"name": model}},
        "status": status,
    }


def test_workload_changes_and_the_unschedulable_set():
    cache = ClusterCache()
    key = WorkloadKey("ns", "a")
    assert cache.observe_workload("ADDED", workload("a", phase="Unschedulable")) == (
        key,
        WorkloadChange.UPDATED,
    )
    assert key in cache.unschedulable
    assert cache.observe_workload("MODIFIED", workload("a")) == (key, WorkloadChange.STALE)
    assert cache.observe_workload("MODIFIED", workload("a", rv=2, phase="Placed")) == (
        key,
        WorkloadChange.UPDATED,
    )
    assert key not in cache.unschedulable
    assert cache.observe_workload("ADDED", workload("a", uid="u2", rv=3))[1] is WorkloadChange.RECREATED
    assert cache.observe_workload("DELETED", workload("a", rv=4))[1] is WorkloadChange.DELETED
    assert key not in cache.workloads


def test_a_copy_changing_tier_names_its_peers():
    cache = ClusterCache()
    a, b = WorkloadKey("ns", "a"), WorkloadKey("ns", "b")
    assert cache.index_model(a, workload("a")) == set()
    assert cache.index_model(b, workload("b")) == {"a"}
    assert cache.index_model(b, workload("b", tier="cloud")) == {"a"}  # b placed: a's upstreams change
    assert cache.index_model(b, workload("b", tier="cloud")) == set()  # nothing changed
    assert cache.same_model("ns", "m") == ["a", "b"]
    assert cache.index_model(b, None) == {"a"}
    assert cache.same_model("ns", "m") == ["a"]


def test_rendered_objects_are_kept_by_their_workload():
    cache = ClusterCache()
    deployment = {
        "kind": "Deployment",
        "metadata": {
            "name": "w-p",
            "namespace": "ns",
            "labels": {"continuum.dev/workload": "w"},
            "resourceVersion": "2",
        },
    }
    assert cache.observe_rendered("ADDED", deployment) == WorkloadKey("ns", "w")
    assert cache.observe_rendered("MODIFIED", with_rv(deployment, 1)) is None  # stale
    assert (
        cache.observe_rendered("ADDED", {"kind": "Deployment", "metadata": {"name": "x"}}) is None
    )  # not ours
    assert cache.observe_rendered("DELETED", deployment) == WorkloadKey("ns", "w")
    assert WorkloadKey("ns", "w") not in cache.rendered and RENDERED == "Rendered"


class ListsWhileWriting:
    """A KubeApi stand-in whose lists are snapshots at resourceVersion 10, during which the operator's own
    writes reach the cache (``during``: called once, while the list is being read)."""

    def __init__(self, objects: dict[str, list[dict]], during) -> None:
        self.objects, self.during = objects, during

    async def list_raw(self, api_version, kind, namespace=None, label_selector=None):
        if self.during is not None:
            self.during()
            self.during = None
        return copy.deepcopy(self.objects.get(kind, [])), "10"


def _pool(name, rv):
    return {"apiVersion": "continuum.dev/v1alpha1", "kind": "EdgeNodePool",
            "metadata": {"name": name, "resourceVersion": str(rv)}, "spec": {"tier": "near-edge"}}  # fmt: skip


def _observer(cache: ClusterCache):
    seen = []

    def observe(kind, event_type, body):
        seen.append((kind, event_type, body["metadata"]["name"]))
        if kind in ("Node", "EdgeNodePool", "Pod"):
            cache.observe_object(kind, event_type, body)
        elif kind == "EdgeWorkload":
            cache.observe_workload(event_type, body)
        elif kind == RENDERED:
            cache.observe_rendered(event_type, body)
        else:
            cache.observe_workload_set(event_type, body)

    return observe, seen


def test_a_list_keeps_what_was_added_after_it_and_forgets_what_was_deleted():
    """Found on the real control plane: an EdgeNodePool created while the operator started was seen by the
    watch, then dropped by the start-up list (an older snapshot), and a set never got that site's child.
    A watcher's list (its start, a 410) keeps what is newer than the list and does not bring back what was
    deleted while it was read; deletions the watch missed are observed."""
    import asyncio

    from continuum.controller.watch import KINDS, Stream

    cache = ClusterCache()
    cache.observe_object("EdgeNodePool", "ADDED", _pool("old-gone", 3))  # deleted before the list: dropped
    cache.observe_object("EdgeNodePool", "ADDED", _pool("deleted-meanwhile", 8))

    def writes() -> None:
        cache.observe_object("EdgeNodePool", "ADDED", _pool("added-meanwhile", 12))
        cache.observe_object("EdgeNodePool", "DELETED", _pool("deleted-meanwhile", 13))

    api = ListsWhileWriting({"EdgeNodePool": [_pool("kept", 5), _pool("deleted-meanwhile", 8)]}, writes)
    observe, seen = _observer(cache)
    synced = []
    pools = next(k for k in KINDS if k.name == "EdgeNodePool")
    stream = Stream(pools, None, cache, observe, lambda: synced.append(True))
    assert asyncio.run(stream.list(api)) == "10"  # type: ignore[arg-type]
    assert sorted(cache.pools) == ["added-meanwhile", "kept"]
    assert ("EdgeNodePool", "DELETED", "old-gone") in seen
    assert synced == [True] and stream.synced
    assert not cache._tombstones  # remembered only while a list is read


def test_a_list_of_one_namespace_touches_only_that_namespace():
    import asyncio

    from continuum.controller.watch import KINDS, Stream

    def deployment(name, ns, rv):
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv),
                             "labels": {"continuum.dev/workload": name}}}  # fmt: skip

    cache = ClusterCache()
    cache.observe_rendered("ADDED", deployment("a", "one", 3))
    cache.observe_rendered("ADDED", deployment("b", "two", 4))
    observe, seen = _observer(cache)
    kind = next(k for k in KINDS if k.name == "Deployment")
    stream = Stream(kind, "one", cache, observe, lambda: None)
    asyncio.run(stream.list(ListsWhileWriting({"Deployment": []}, None)))  # type: ignore[arg-type]
    assert seen == [(RENDERED, "DELETED", "a")]  # gone from "one"; "two" is another stream's
    assert list(cache.rendered) == [WorkloadKey("two", "b")]


def test_only_updates_of_what_the_reconciler_reads_of_a_deployment_queue_its_workload():
    """A rendered Deployment's status churns (conditions, replica counts) while a rollout runs; only a
    change of what the reconciler reads (spec, labels, generation, its readiness: ready replicas and rollout
    complete) queues the workload."""
    from continuum.controller.manager import Controller
    from continuum.controller.settings import OperatorSettings

    controller = Controller(OperatorSettings())
    workload = {"apiVersion": "continuum.dev/v1alpha1", "kind": "EdgeWorkload",
                "metadata": {"name": "w", "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "1"},
                "spec": {"model": {"name": "m", "uri": "http://m/m.onnx"}}}  # fmt: skip
    controller.observe("EdgeWorkload", "ADDED", workload)
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "w-p", "namespace": "ns", "labels": {"continuum.dev/workload": "w"},
                     "resourceVersion": "2", "generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1},
    }  # fmt: skip
    key = WorkloadKey("ns", "w")
    added: list = []
    controller.queue.add = lambda queued, urgent=False, version=None: added.append(queued)  # type: ignore[method-assign]

    def seen(body: dict, event: str = "MODIFIED") -> bool:
        added.clear()
        controller.observe(RENDERED, event, body)
        return key in added

    assert seen(deployment)  # new
    heartbeat = copy.deepcopy(with_rv(deployment, 3))
    heartbeat["status"]["conditions"] = [{"type": "Progressing", "lastUpdateTime": "2026-12-03T12:00:00Z"}]
    heartbeat["status"]["availableReplicas"] = 0
    assert not seen(heartbeat)
    surge = copy.deepcopy(with_rv(heartbeat, 4))  # a rollout's step: neither ready nor complete changes
    surge["status"].update(replicas=2, updatedReplicas=0, observedGeneration=1)
    assert not seen(surge)
    ready = copy.deepcopy(with_rv(surge, 5))
    ready["status"].update(readyReplicas=1, updatedReplicas=1, replicas=1)
    assert seen(ready)
    relabelled = copy.deepcopy(with_rv(ready, 6))
    relabelled["metadata"]["labels"]["extra"] = "x"
    assert seen(relabelled)
    assert seen(with_rv(relabelled, 7), "DELETED")  # a delete always queues


async def test_the_watch_echo_of_a_reconciles_own_writes_does_not_queue_it_again():
    """Against a fast server the watch events of a reconcile's own writes (its status, its Deployment)
    often arrive before the writes' answers, while the reconcile runs; they must not make it run again,
    while someone else's change seen meanwhile must."""
    from continuum.controller.manager import Controller
    from continuum.controller.settings import OperatorSettings

    controller = Controller(OperatorSettings())
    workload = {"apiVersion": "continuum.dev/v1alpha1", "kind": "EdgeWorkload",
                "metadata": {"name": "w", "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "1"},
                "spec": {"model": {"name": "m", "uri": "http://m/m.onnx"}}}  # fmt: skip
    deployment = {"kind": "Deployment", "spec": {"replicas": 1},
                  "metadata": {"name": "w-p", "namespace": "ns", "labels": {"continuum.dev/workload": "w"},
                               "resourceVersion": "2", "generation": 1}}  # fmt: skip
    key = WorkloadKey("ns", "w")
    queue = controller.queue
    controller.observe("EdgeWorkload", "ADDED", workload)
    assert await queue.get() == key  # the reconcile starts
    controller.observe(RENDERED, "ADDED", deployment)  # its Deployment's watch event, then the answer
    controller.observe_own(RENDERED, "MODIFIED", deployment)
    placed = with_rv(workload, 3)
    placed["status"] = {"phase": "Placed"}
    controller.observe("EdgeWorkload", "MODIFIED", placed)  # its status's watch event, then the answer
    controller.observe_own("EdgeWorkload", "MODIFIED", placed)
    queue.done(key)
    assert len(queue) == 0

    queue.add(key)
    assert await queue.get() == key
    edited = with_rv(placed, 4)
    edited["spec"] = {"model": {"name": "m2", "uri": "http://m/m2.onnx"}}
    edited["metadata"]["generation"] = 2
    controller.observe("EdgeWorkload", "MODIFIED", edited)  # a user's edit while it runs
    rewritten = with_rv(edited, 5)
    controller.observe_own("EdgeWorkload", "MODIFIED", rewritten)
    queue.done(key)
    assert len(queue) == 1 and await queue.get() == key
