"""The batch model and the rule agree for workloads that ask for an accelerator.

The rule (:func:`continuum.placement.filters.check_capacity`) is scheduler-safe: a workload asking for an
accelerator runs only on the pool's nodes that offer it, and since placement does not know on which nodes
the pool's other workloads' pods land, everything on the pool counts against those nodes. The batch model
(:mod:`continuum.placement.problem`, the heuristic and the ILP) must express exactly that, so every
workload the solvers place is reported placed by ``continuum plan`` (before, the model counted the whole
pool for everyone and plan dropped 7 of 245 at the bench's 300 × 30 and 14 of 792 at 1,000 × 100).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from continuum.api.models import EdgeWorkloadSpec, Phase
from continuum.placement import decide_batch
from continuum.placement.engine import decide_batch_reference
from continuum.placement.exact import improve
from continuum.placement.problem import (
    WorkloadRequest,
    build_problem,
    build_problem_reference,
    greedy_in_order,
    objective,
    violations,
)
from continuum.placement.solver import solve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.instances import generate

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# two classes on the same nodes (the label's value, and key=value): hosting both must satisfy both
ACCELERATORS = ("coral-tpu", "continuum.dev/accelerator=coral-tpu")


def with_accelerator(spec: EdgeWorkloadSpec, accelerator: str) -> EdgeWorkloadSpec:
    req = spec.requirements
    resources = req.resources.model_copy(update={"accelerator": accelerator})
    return spec.model_copy(update={"requirements": req.model_copy(update={"resources": resources})})


def accelerated(n_w: int, n_p: int, seed: int, load: float, share: float, variety: bool = False):
    """A generated instance (GPUs on near-edge, MEC and cloud nodes; the accelerator label on half the
    device-tier nodes) where a ``share`` of the workloads ask for an accelerator (and lose their GPU
    request, since the accelerator nodes have none: otherwise they could go nowhere)."""
    snapshot, requests = generate(n_w, n_p, seed=seed, load=load, variety=variety)
    rng = random.Random(seed)
    out = []
    for r in requests:
        spec = r.spec
        if rng.random() < share:
            spec = with_accelerator(spec, rng.choice(ACCELERATORS))
            res = spec.requirements.resources.model_copy(update={"gpu": 0})
            spec = spec.model_copy(
                update={"requirements": spec.requirements.model_copy(update={"resources": res})}
            )
        out.append(WorkloadRequest(r.key, spec, r.current_pool))
    return snapshot, sorted(out, key=lambda r: r.key)


def assert_plan_keeps(snapshot, requests, assignment) -> None:
    """``continuum plan``'s rule check (decide_batch, vectorized, and its filters.py reference) keeps
    every workload the solution places, on the pool the solution chose."""
    names = [p.name for p in snapshot.pools]
    expected = {
        r.key: (names[p] if p >= 0 else None) for r, p in zip(requests, assignment.tolist(), strict=True)
    }
    for decisions in (
        decide_batch(requests, snapshot, assignment=assignment),
        decide_batch_reference(requests, snapshot, solver=lambda _problem: assignment),
    ):
        got = {d.key: d.pool for d in decisions}
        assert got == expected
        assert sum(d.phase is Phase.PLACED for d in decisions) == int((assignment >= 0).sum())


@SETTINGS
@given(
    st.tuples(
        st.integers(5, 80),
        st.integers(2, 14),
        st.integers(0, 10_000),
        st.floats(0.5, 1.8),
        st.floats(0.05, 0.6),
        st.booleans(),
    )
)
def test_what_the_batch_solver_places_the_plan_places(instance):
    n_w, n_p, seed, load, share, variety = instance
    snapshot, requests = accelerated(n_w, n_p, seed, load, share, variety)
    problem = build_problem(requests, snapshot)
    reference = build_problem_reference(requests, snapshot)
    np.testing.assert_array_equal(problem.accel_classes, reference.accel_classes)
    np.testing.assert_allclose(problem.accel_caps, reference.accel_caps)
    for assignment in (solve(problem), greedy_in_order(problem)):
        assert violations(problem, assignment) == []
        assert_plan_keeps(snapshot, requests, assignment)


@SETTINGS
@given(st.tuples(st.integers(5, 40), st.integers(2, 8), st.integers(0, 10_000), st.floats(0.6, 1.6)))
def test_what_the_exact_stage_places_the_plan_places(instance):
    n_w, n_p, seed, load = instance
    snapshot, requests = accelerated(n_w, n_p, seed, load, share=0.4)
    problem = build_problem(requests, snapshot)
    result = improve(problem, solve(problem), budget_s=1.0)
    assert violations(problem, result.assignment) == []
    assert_plan_keeps(snapshot, requests, result.assignment)


def _rule_optimum(snapshot, requests, problem) -> int:
    """The most workloads any assignment places such that the plan's rule check keeps them all
    (brute force over every candidate choice: tiny instances only)."""
    choices = [[-1, *problem.cand_pool[problem.candidates(w)].tolist()] for w in range(problem.n_workloads)]
    best = 0
    for combo in itertools.product(*choices):
        placed = sum(p >= 0 for p in combo)
        if placed <= best:
            continue
        assignment = np.asarray(combo, dtype=np.int64)
        decisions = decide_batch(requests, snapshot, assignment=assignment)
        if sum(d.phase is Phase.PLACED for d in decisions) == placed:
            best = placed
    return best


@pytest.mark.parametrize("seed", [11, 98, 143, 243, 261, 327])  # accelerator pairs on pools with other nodes
def test_the_exact_count_is_the_rules_optimum_on_tiny_instances(seed):
    """The ILP's proven count equals a brute-force optimum of the rule itself: the model is not too
    strict either (it forbids nothing the rule allows)."""
    snapshot, requests = accelerated(8, 3, seed, load=1.6, share=0.6)
    problem = build_problem(requests, snapshot)
    if (
        np.prod([1 + problem.cand_ptr[w + 1] - problem.cand_ptr[w] for w in range(problem.n_workloads)])
        > 5_000
    ):
        pytest.skip("too many combinations to enumerate")
    result = improve(problem, solve(problem), budget_s=10.0, phases=1)
    assert result.optimality.proven
    assert objective(problem, result.assignment).placed == _rule_optimum(snapshot, requests, problem)


@pytest.mark.parametrize(("n_w", "n_p"), [(300, 30), (1000, 100)])
def test_bench_instances_plan_places_what_the_solver_places(n_w, n_p):
    """The bench's quality instances (bench/placement.py, seed 7): 245 → 238 and 792 → 778 before."""
    snapshot, requests = generate(n_w, n_p, seed=7)
    requests = sorted(requests, key=lambda r: r.key)
    problem = build_problem(requests, snapshot)
    assert (problem.accel_classes >= 0).any()
    assignment = solve(problem)
    assert violations(problem, assignment) == []
    placed = decide_batch(requests, snapshot, assignment=assignment)
    assert sum(d.phase is Phase.PLACED for d in placed) == int((assignment >= 0).sum())
