"""The vectorized rules (fast.py) against the readable reference (filters.py / engine.py).

On random instances (with nodes down, cordoned, tainted, pods already running, tier restrictions and
random usage by others): the same verdict and the same reason codes in the same order for every pool,
the same chosen pool, the same hint; decide_batch equals decide_batch_reference field for field.
"""

from __future__ import annotations

import datetime
import random

import numpy as np
import pytest
from continuum.placement import engine, fast, filters
from continuum.placement.engine import (
    decide_batch,
    decide_batch_reference,
    decide_in_order,
    decide_in_order_reference,
)
from continuum.placement.snapshot import PoolUsage, Resources
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.instances import generate

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
instances = st.tuples(
    st.integers(3, 40), st.integers(1, 14), st.integers(0, 10_000), st.floats(0.3, 1.8), st.booleans()
)


def random_usage(snapshot, seed: int) -> dict[str, PoolUsage]:
    rng = random.Random(seed)
    out = {}
    for pool in snapshot.pools:
        if rng.random() < 0.6:
            free = pool.free
            share = rng.choice([0.0, 0.3, 0.9, 1.0, 1.2])
            out[pool.name] = PoolUsage(
                Resources(
                    int(free.cpu_millis * share), int(free.memory_bytes * share * rng.random()), free.gpu
                ),
                rng.choice([0.0, 10.0, 49.5, 150.0, 1999.0]),
                1,
            )
    return out


def dump(candidates):
    return [c.model_dump(mode="json") for c in candidates]


@SETTINGS
@given(instances)
def test_every_pool_same_verdict_and_reason_codes(instance):
    n_w, n_p, seed, load, variety = instance
    snapshot, requests = generate(n_w, n_p, seed=seed, load=load, variety=variety)
    usage = random_usage(snapshot, seed)
    table = fast.PoolTable(snapshot)
    used = fast.usage_array(table.names, usage)
    for req in requests:
        v = table.evaluate(req.spec, used)
        for p, pool in enumerate(snapshot.pools):
            ref = filters.evaluate(req.spec, pool, usage.get(pool.name, PoolUsage()))
            assert v.codes(p) == [r.code for r in ref], (req.key, pool.name)
        ref_decision = engine.decide(req.spec, snapshot, usage, req.key)
        got = fast.decide(req.spec, table, usage, limit=len(snapshot.pools))
        assert got.pool == ref_decision.pool
        assert got.hint == ref_decision.hint
        # what the operator's status lists: feasible in choice order, then fewest broken rules first
        feasible = [c for c in ref_decision.candidates if c.feasible]
        rejected = sorted(
            (c for c in ref_decision.candidates if not c.feasible),
            key=lambda c: (len(c.reasons), req.spec.tiers.rank(c.tier), c.pool),
        )
        assert dump(got.candidates) == dump(feasible + rejected)
        short = fast.decide(req.spec, table, usage, limit=3)
        assert dump(short.candidates) == dump((feasible + rejected)[:3])
        assert short.candidates_omitted == max(len(snapshot.pools) - 3, 0)


@SETTINGS
@given(instances)
def test_batch_equals_the_reference(instance):
    n_w, n_p, seed, load, variety = instance
    snapshot, requests = generate(n_w, n_p, seed=seed, load=load, variety=variety)
    fixed = random_usage(snapshot, seed + 1)
    got = decide_batch(requests, snapshot, fixed)
    ref = decide_batch_reference(requests, snapshot, fixed)
    for a, b in zip(got, ref, strict=True):
        assert (a.key, a.phase, a.placement, a.hint) == (b.key, b.phase, b.placement, b.hint)
        assert dump(a.candidates) == dump(b.candidates)
        counts: dict[str, int] = {}
        for c in b.candidates:
            for code in {r.code.value for r in c.reasons}:
                counts[code] = counts.get(code, 0) + 1
        assert dict(a.rejected_by_reason) == counts


@SETTINGS
@given(instances, st.integers(0, 4), st.integers(0, 3))
def test_compact_explanations(instance, alternatives, misses):
    n_w, n_p, seed, load, variety = instance
    snapshot, requests = generate(n_w, n_p, seed=seed, load=load, variety=variety)
    full = {d.key: d for d in decide_batch(requests, snapshot)}
    compact = decide_batch(
        requests, snapshot, compact=True, alternatives=alternatives, misses_per_reason=misses
    )
    for d in compact:
        ref = full[d.key]
        assert (d.phase, d.placement, d.hint, dict(d.rejected_by_reason)) == (
            ref.phase,
            ref.placement,
            ref.hint,
            dict(ref.rejected_by_reason),
        )
        shown = {c.pool: c for c in d.candidates}
        assert len(shown) == len(d.candidates)
        assert d.candidates_omitted == len(snapshot.pools) - len(d.candidates)
        every = {c.pool: c for c in ref.candidates}
        for name, cand in shown.items():  # each shown row is exactly the full explanation's row
            assert cand.model_dump() == every[name].model_dump()
        feasible = [c.pool for c in ref.candidates if c.feasible]
        if d.placement is not None:
            assert d.candidates[0].pool == d.placement.pool
            others = [p for p in feasible if p != d.placement.pool]
        else:
            others = feasible
        assert [c.pool for c in d.candidates if c.feasible and c.pool != d.pool] == others[:alternatives]
        for code, count in d.rejected_by_reason.items():  # every reason code has its nearest misses shown
            listed = [c for c in d.candidates if any(r.code.value == code for r in c.reasons)]
            assert len(listed) >= min(misses, count)


def test_nearest_misses_come_first():
    snapshot, requests = generate(30, 12, seed=5, load=1.6)
    table = fast.PoolTable(snapshot)
    used = np.zeros((table.n, 4))
    for req in requests:
        v = table.evaluate(req.spec, used)
        rejected = np.nonzero(~v.feasible)[0]
        order = table.nearest_misses(v, rejected)
        broken = [int(v.bad[p].sum()) for p in order]
        assert broken == sorted(broken)


@pytest.mark.parametrize("n_pools", [0, 1])
def test_tiny_clusters(n_pools):
    snapshot, requests = generate(5, max(n_pools, 1), seed=2)
    if n_pools == 0:
        snapshot = type(snapshot)(pools=())
    table = fast.PoolTable(snapshot)
    for req in requests:
        ref = engine.decide(req.spec, snapshot, {}, req.key)
        got = fast.decide(req.spec, table)
        assert (got.pool, got.hint) == (ref.pool, ref.hint)


@SETTINGS
@given(instances, st.integers(1, 6))
def test_partial_orders_are_prefixes_of_the_full_orders(instance, limit):
    n_w, n_p, seed, load, variety = instance
    snapshot, requests = generate(n_w, n_p, seed=seed, load=load, variety=variety)
    table = fast.PoolTable(snapshot)
    used = fast.usage_array(table.names, random_usage(snapshot, seed))
    for req in requests:
        v = table.evaluate(req.spec, used)
        feasible = np.nonzero(v.feasible)[0]
        assert list(table.choice_order(v, feasible, limit)) == list(table.choice_order(v, feasible))[:limit]
        rejected = np.nonzero(~v.feasible)[0]
        for slots in ([fast.LATENCY], [fast.NODE_FIT, fast.CAPACITY], [fast.BANDWIDTH], None):
            full = list(table.nearest_misses(v, rejected, slots))
            assert list(table.nearest_misses(v, rejected, slots, limit)) == full[:limit]


@SETTINGS
@given(instances)
def test_in_order_equals_the_reference(instance):
    n_w, n_p, seed, load, variety = instance
    snapshot, requests = generate(n_w, n_p, seed=seed, load=load, variety=variety)
    fixed = random_usage(snapshot, seed + 2)
    got = decide_in_order(requests, snapshot, fixed)
    ref = decide_in_order_reference(requests, snapshot, fixed)
    for a, b in zip(got, ref, strict=True):
        assert (a.key, a.phase, a.placement, a.hint) == (b.key, b.phase, b.placement, b.hint)
        assert dump(a.candidates) == dump(b.candidates)


@SETTINGS
@given(instances, st.integers(1, 5))
def test_operator_decision_equals_the_reference_and_keeps_the_current_pool(instance, limit):
    """fast.decide_placement is what the operator can call instead of engine.decide + status_candidates:
    same decision and hint, the status rows in status order, and the current pool's row always there
    (the hysteresis reads its verdict), whatever the limit."""
    from continuum.placement.hysteresis import HysteresisPolicy, judge

    n_w, n_p, seed, load, variety = instance
    snapshot, requests = generate(n_w, n_p, seed=seed, load=load, variety=variety)
    usage = random_usage(snapshot, seed + 3)
    names = [p.name for p in snapshot.pools]
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for i, req in enumerate(requests):
        current_pool = names[(seed + i) % len(names)]
        ref = engine.decide(req.spec, snapshot, usage, req.key)
        got = fast.decide_placement(req.spec, snapshot, usage, req.key, current=current_pool, limit=limit)
        assert (got.phase, got.placement, got.hint) == (ref.phase, ref.placement, ref.hint)
        full = {c.pool: c for c in ref.candidates}
        assert [c.pool for c in got.candidates].count(current_pool) == 1
        for cand in got.candidates:
            assert cand.model_dump() == full[cand.pool].model_dump()
        assert got.candidates_omitted == len(snapshot.pools) - len(got.candidates)
        assert got.feasible_pools == sum(c.feasible for c in ref.candidates)
        current = engine.placement_on(req.spec, snapshot.pool(current_pool))
        policy = HysteresisPolicy(60, 300, 0.5)
        assert judge(req.spec, current, got, now, policy) == judge(req.spec, current, ref, now, policy)
        # the operator passes the usage as the ledger's (P, 4) rows: the same decision, rows and messages
        rows = fast.usage_array(snapshot.table.names, usage)
        by_rows = fast.decide_placement(
            req.spec, snapshot, None, req.key, current=current_pool, limit=limit, used=rows
        )
        assert (by_rows.phase, by_rows.placement, by_rows.hint) == (got.phase, got.placement, got.hint)
        assert dump(by_rows.candidates) == dump(got.candidates)
