"""Workloads of one shape share the usage-independent part of their evaluation (fast.PoolTable.static):
decisions made from that shared part, after other usages and other workloads of the same shape, are the
reference's (engine.decide) for every usage."""

from __future__ import annotations

import random

from continuum.api.models import EdgeWorkloadSpec
from continuum.placement import engine, fast
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.instances import generate
from tests.placement.test_fast import random_usage

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.integers(3, 30), st.integers(1, 12), st.integers(0, 10_000), st.floats(0.3, 1.8), st.booleans())
def test_shared_shapes_decide_as_the_reference_under_every_usage(n_w, n_p, seed, load, variety):
    snapshot, requests = generate(n_w, n_p, seed=seed, load=load, variety=variety)
    rng = random.Random(seed)
    # copies of the same specs under other keys, so shapes repeat
    requests = requests + [r for r in requests if rng.random() < 0.5]
    limit = rng.choice([1, 3, 20])
    for round_ in range(3):
        usage = random_usage(snapshot, seed + round_)
        rows = fast.usage_array(snapshot.table.names, usage)
        for req in requests:
            ref = engine.decide(req.spec, snapshot, usage, req.key)
            got = fast.decide_placement(req.spec, snapshot, None, req.key, limit=limit, used=rows)
            assert (got.phase, got.placement, got.hint) == (ref.phase, ref.placement, ref.hint)
            full = {c.pool: c.model_dump() for c in ref.candidates}
            assert all(c.model_dump() == full[c.pool] for c in got.candidates)
            # and exactly what a table that never saw the shape gives (no shared part yet)
            fresh = fast.decide(req.spec, fast.PoolTable(snapshot), None, limit, used=rows)
            assert [c.model_dump() for c in got.candidates] == [c.model_dump() for c in fresh.candidates]
            assert (got.rejected_by_reason, got.feasible_pools) == (
                fresh.rejected_by_reason,
                fresh.feasible_pools,
            )


def test_every_field_the_evaluation_reads_is_part_of_the_shape():
    base = {
        "source": {"site": "a"},
        "requirements": {"latencyBudgetMs": 60, "resources": {"cpu": "100m", "memory": "128Mi"}},
        "model": {"name": "m", "uri": "http://m"},
    }
    changes = [
        {"source": {"site": "b"}},
        {"replicas": 2},
        {"requirements": {"latencyBudgetMs": 61}},
        {"requirements": {"privacy": "restricted"}},
        {"requirements": {"residency": ["eu"]}},
        {"requirements": {"inferenceMs": {"cloud": 3}}},
        {"requirements": {"bandwidth": {"ingestMbps": 5}}},
        {"requirements": {"resources": {"cpu": "200m"}}},
        {"requirements": {"resources": {"memory": "256Mi"}}},
        {"requirements": {"resources": {"gpu": 1}}},
        {"requirements": {"resources": {"accelerator": "nvidia-t4"}}},
        {"tiers": {"allowed": ["cloud"]}},
        {"tiers": {"preferred": ["cloud"]}},
    ]

    def merged(a: dict, b: dict) -> dict:
        return {
            k: merged(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
            for k, v in {**a, **b}.items()
        }

    shape = fast.shape_of(EdgeWorkloadSpec.model_validate(base))
    assert (
        fast.shape_of(EdgeWorkloadSpec.model_validate({**base, "model": {"name": "n", "uri": "http://n"}}))
        == shape
    )
    for change in changes:
        assert fast.shape_of(EdgeWorkloadSpec.model_validate(merged(base, change))) != shape, change
