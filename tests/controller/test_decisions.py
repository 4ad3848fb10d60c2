"""Reusing a workload's decision when only the pool it runs on changed: only when a fresh decision for
that pool would be the same (same rows, the pool's row among them)."""

from __future__ import annotations

import random

from continuum.controller.workloads import _lists
from continuum.placement import fast

from bench.instances import generate


def _dump(decision):
    return (decision.pool, decision.hint, [c.model_dump() for c in decision.candidates])


def test_reused_only_when_a_fresh_decision_would_be_the_same(example_snapshot, example_workloads):
    cases = [(example_snapshot, [w.spec for w in example_workloads.values()])]
    snapshot, requests = generate(40, 30, seed=3)  # more pools than the status lists
    cases.append((snapshot, [r.spec for r in requests]))
    rng = random.Random(1)
    checked = reused = 0
    for snapshot, specs in cases:
        names = [p.name for p in snapshot.pools]
        for spec in specs:
            for made_for in (None, rng.choice(names)):
                made = fast.decide_placement(spec, snapshot, current=made_for, limit=20)
                for pool in (None, made.pool, made_for, *rng.sample(names, 5)):
                    if _lists(made, made_for, pool):
                        fresh = fast.decide_placement(spec, snapshot, current=pool, limit=20)
                        assert _dump(fresh) == _dump(made), (made_for, pool)
                        reused += 1
                    checked += 1
    assert reused and reused < checked  # both answers occur
