"""Partition and merge: replicas exchange updates over a lossy network, then sync by state vector."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest
from continuum_worker.state.doc import RejectedUpdate, StateDoc
from continuum_worker.state.framing import covers, decode_state_vector
from continuum_worker.state.hlc import HLC
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

RETENTION = 8


class Cluster:
    """Replicas whose every update is broadcast as a message the network may drop, duplicate or reorder."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self.rng = rng
        self.replicas = [StateDoc(retention=RETENTION) for _ in range(n)]
        self.inflight: list[tuple[int, int, bytes]] = []  # (from, to, update)
        self.partition: list[set[int]] = [set(range(n))]
        self.sums: dict[str, int] = defaultdict(int)
        self.counts: dict[str, int] = defaultdict(int)
        self.event_keys: dict[str, list[str]] = defaultdict(list)
        self.registers: dict[str, list[tuple[tuple[int, int, str], Any]]] = defaultdict(list)
        for i, replica in enumerate(self.replicas):
            replica.on_update(lambda u, i=i: self._broadcast(i, u))

    def _broadcast(self, sender: int, update: bytes) -> None:
        if self.replicas[sender].applying_remote:
            return  # only local updates are broadcast; remote ones came from somewhere
        for to in range(len(self.replicas)):
            if to != sender:
                self.inflight.append((sender, to, update))

    def connected(self, a: int, b: int) -> bool:
        return any(a in group and b in group for group in self.partition)

    # operations
    def increment(self, r: int, name: str, by: int) -> None:
        self.replicas[r].increment(name, by)
        self.sums[name] += by
        self.counts[name] += 1

    def event(self, r: int, log: str, data: Any) -> None:
        key = self.replicas[r].append_event(log, data)
        self.event_keys[log].append(key)

    def register(self, r: int, name: str, value: Any) -> None:
        stamp = self.replicas[r].set_register(name, value)
        self.registers[name].append(((*stamp, self.replicas[r].replica), value))

    # network
    def deliver(self, index: int, duplicate: bool = False) -> None:
        sender, to, update = self.inflight[index] if duplicate else self.inflight.pop(index)
        if self.connected(sender, to):
            self.replicas[to].apply_remote(update)
        # else: lost in the partition

    def step_network(self) -> None:
        if not self.inflight:
            return
        fate = self.rng.random()
        index = self.rng.randrange(len(self.inflight))  # any message: reordering
        if fate < 0.15:
            self.inflight.pop(index)  # dropped
        elif fate < 0.3:
            self.deliver(index, duplicate=True)
        else:
            self.deliver(index)

    def sync_pair(self, a: int, b: int) -> None:
        """The sync protocol's round: state-vector handshake, then diffs both ways."""
        ra, rb = self.replicas[a], self.replicas[b]
        ra.apply_remote(rb.diff(ra.state_vector()))
        rb.apply_remote(ra.diff(rb.state_vector()))

    def heal_and_sync(self) -> None:
        self.partition = [set(range(len(self.replicas)))]
        n = len(self.replicas)
        for a in range(n):
            for b in range(a + 1, n):
                self.sync_pair(a, b)
        for a in range(1, n):  # a second pass carries what the first pass brought to later replicas
            self.sync_pair(0, a)

    def expected(self) -> dict[str, Any]:
        counters = {name: self.sums[name] for name in self.sums}
        events = {log: sorted(keys)[-RETENTION:] for log, keys in self.event_keys.items()}
        registers = {name: max(sets, key=lambda s: s[0])[1] for name, sets in self.registers.items()}
        return {"counters": counters, "events": events, "registers": registers}

    def check_converged(self) -> None:
        states = [r.to_json() for r in self.replicas]
        for state in states[1:]:
            assert state == states[0]
        svs = [decode_state_vector(r.state_vector()) for r in self.replicas]
        assert all(covers(svs[0], sv) and covers(sv, svs[0]) for sv in svs)
        expected = self.expected()
        state = states[0]
        assert {k: v["value"] for k, v in state["counters"].items()} == expected["counters"]
        assert {k: v["count"] for k, v in state["counters"].items()} == dict(self.counts)
        assert state["registers"] == expected["registers"]
        for log, keys in expected["events"].items():
            assert len(state["events"][log]) == len(keys)
            shown = [f"{round(e['time'] * 1000):013d}" for e in state["events"][log]]
            assert shown == [k.split(".")[0] for k in keys]


@pytest.mark.parametrize("seed", range(12))
def test_random_partitions_drops_duplicates_reorders_then_sync_converge(seed: int) -> None:
    rng = random.Random(seed)
    cluster = Cluster(rng.randint(3, 5), rng)
    n = len(cluster.replicas)
    for _ in range(300):
        r = rng.randrange(n)
        op = rng.random()
        if op < 0.4:
            cluster.increment(r, rng.choice("abc"), rng.randint(-5, 10))
        elif op < 0.6:
            cluster.event(r, rng.choice(["det", "alarm"]), {"r": r, "x": rng.random()})
        elif op < 0.7:
            cluster.register(r, rng.choice(["cfg", "mode"]), rng.choice([1, "two", [3], {"four": 4}, None]))
        elif op < 0.75:
            members = list(range(n))
            rng.shuffle(members)
            cut = rng.randint(1, n - 1)
            cluster.partition = [set(members[:cut]), set(members[cut:])]
        elif op < 0.8:
            a, b = rng.sample(range(n), 2)
            if cluster.connected(a, b):
                cluster.sync_pair(a, b)
        else:
            for _ in range(rng.randint(1, 6)):
                cluster.step_network()
    cluster.heal_and_sync()
    cluster.check_converged()


def test_concurrent_increments_on_one_counter_are_all_kept() -> None:
    a, b = StateDoc(), StateDoc()
    for _ in range(100):
        a.increment("hits")
        b.increment("hits", 2)
    a.apply_remote(b.diff(a.state_vector()))
    b.apply_remote(a.diff(b.state_vector()))
    assert a.counter("hits") == b.counter("hits") == {"value": 300, "count": 200, "min": 1, "max": 2}


def test_register_is_latest_by_hybrid_clock_not_by_client_id() -> None:
    wall = {"t": 1000}
    # the replica with the larger client id writes first; the later write of the smaller one must win
    big = StateDoc(client_id=2**50, hlc=HLC(lambda: wall["t"]))
    small = StateDoc(client_id=7, hlc=HLC(lambda: wall["t"]))
    big.set_register("cfg", "old")
    wall["t"] = 2000
    small.set_register("cfg", "new")
    big.apply_remote(small.diff(big.state_vector()))
    small.apply_remote(big.diff(small.state_vector()))
    assert big.register("cfg") == small.register("cfg") == "new"
    # a writer whose wall clock is behind still wins once it has seen the newer value (causality)
    wall["t"] = 10
    big.set_register("cfg", "after-seeing")
    small.apply_remote(big.diff(small.state_vector()))
    assert small.register("cfg") == "after-seeing"


def test_updates_claiming_our_client_id_are_refused() -> None:
    a = StateDoc()
    forged = StateDoc(client_id=a.doc.client_id)
    forged.increment("x", 5)
    before = a.to_json()
    with pytest.raises(RejectedUpdate):
        a.apply_remote(forged.diff())
    assert a.to_json() == before


class ReplicaMachine(RuleBasedStateMachine):
    """Hypothesis drives 3 replicas, a lossy network and partitions; after a full sync all equal the model."""

    def __init__(self) -> None:
        super().__init__()
        self.cluster = Cluster(3, random.Random(0))

    @rule(r=st.integers(0, 2), name=st.sampled_from(["a", "b"]), by=st.integers(-3, 7))
    def increment(self, r: int, name: str, by: int) -> None:
        self.cluster.increment(r, name, by)

    @rule(r=st.integers(0, 2), value=st.integers(0, 9))
    def event(self, r: int, value: int) -> None:
        self.cluster.event(r, "det", {"v": value})

    @rule(r=st.integers(0, 2), value=st.one_of(st.integers(-(2**60), 2**60), st.text(max_size=5), st.none()))
    def register(self, r: int, value: Any) -> None:
        self.cluster.register(r, "cfg", value)

    @precondition(lambda self: self.cluster.inflight)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        self.cluster.deliver(data.draw(st.integers(0, len(self.cluster.inflight) - 1)))

    @precondition(lambda self: self.cluster.inflight)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.cluster.deliver(data.draw(st.integers(0, len(self.cluster.inflight) - 1)), duplicate=True)

    @precondition(lambda self: self.cluster.inflight)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.cluster.inflight.pop(data.draw(st.integers(0, len(self.cluster.inflight) - 1)))

    @rule(alone=st.integers(0, 2))
    def partition(self, alone: int) -> None:
        self.cluster.partition = [{alone}, set(range(3)) - {alone}]

    @rule()
    def heal(self) -> None:
        self.cluster.partition = [set(range(3))]

    @rule(a=st.integers(0, 2), b=st.integers(0, 2))
    def sync(self, a: int, b: int) -> None:
        if a != b and self.cluster.connected(a, b):
            self.cluster.sync_pair(a, b)

    @invariant()
    def local_counts_never_exceed_the_model(self) -> None:
        for replica in self.cluster.replicas:
            for name, agg in replica.to_json()["counters"].items():
                assert agg["count"] <= self.cluster.counts[name]

    def teardown(self) -> None:
        self.cluster.heal_and_sync()
        self.cluster.check_converged()


TestReplicaMachine = ReplicaMachine.TestCase
TestReplicaMachine.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
