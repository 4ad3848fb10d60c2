"""The exact optimum of an AssignmentProblem with scipy's MILP (HiGHS), lexicographic in three phases:
(1) maximize the number placed, (2) minimize the sum of preference ranks, (3) minimize hourly cost.
A dev/bench dependency only: the package never imports scipy."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from continuum.placement.problem import AssignmentProblem
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix


@dataclass
class IlpResult:
    assignment: npt.NDArray[np.int64]
    optimal: bool
    seconds: float


def solve_ilp(problem: AssignmentProblem, time_limit: float = 60.0) -> IlpResult:
    started = time.perf_counter()
    nnz = len(problem.cand_pool)
    rows_w = np.repeat(np.arange(problem.n_workloads), np.diff(problem.cand_ptr))
    cons = []
    # each workload at most once
    cons.append(
        LinearConstraint(
            csr_matrix((np.ones(nnz), (rows_w, np.arange(nnz))), shape=(problem.n_workloads, nnz)), -np.inf, 1
        )
    )
    # capacity per pool and resource
    for r in range(3):
        data = problem.demand[rows_w, r]
        cons.append(
            LinearConstraint(
                csr_matrix((data, (problem.cand_pool, np.arange(nnz))), shape=(problem.n_pools, nnz)),
                -np.inf,
                problem.capacity[:, r],
            )
        )
    wan_data = np.where(problem.cand_offsite, problem.ingest[rows_w], 0.0)
    finite = np.isfinite(problem.wan_capacity)
    wan = csr_matrix((wan_data, (problem.cand_pool, np.arange(nnz))), shape=(problem.n_pools, nnz))[finite]
    if wan.shape[0]:
        cons.append(LinearConstraint(wan, -np.inf, problem.wan_capacity[finite]))
    # accelerator classes (continuum.placement.problem): while a pool hosts a workload of class c needing
    # resource r, the pool's total r stays within the class's nodes: per such pair k,
    # sum of the pool's demands of r + gap * x_k <= capacity (x_k = 1: within capacity - gap)
    pair_cls = problem.accel_classes[rows_w]
    gap = problem.accel_gap()
    for r in range(3):
        d = problem.demand[rows_w, r]
        pairs = np.nonzero((pair_cls >= 0) & (d > 0))[0]
        pairs = pairs[gap[pair_cls[pairs], problem.cand_pool[pairs], r] > 1e-9]
        if not len(pairs):
            continue
        same = (problem.cand_pool[None, :] == problem.cand_pool[pairs][:, None]) & (d > 0)[None, :]
        rows = np.where(same, d[None, :], 0.0)
        rows[np.arange(len(pairs)), pairs] += gap[pair_cls[pairs], problem.cand_pool[pairs], r]
        cons.append(
            LinearConstraint(csr_matrix(rows), -np.inf, problem.capacity[problem.cand_pool[pairs], r])
        )
    integrality = np.ones(nnz)
    bounds = Bounds(0, 1)
    optimal = True

    def run(
        c: npt.NDArray[np.float64],
        extra: list[LinearConstraint],
        share: float,
        fallback: npt.NDArray[np.float64] | None,
    ) -> npt.NDArray[np.float64]:
        nonlocal optimal
        remaining = max(1.0, (time_limit - (time.perf_counter() - started)) * share)
        res = milp(
            c,
            constraints=cons + extra,
            integrality=integrality,
            bounds=bounds,
            options={"time_limit": remaining, "disp": False, "mip_rel_gap": 1e-6},
        )
        optimal = optimal and res.status == 0
        if res.x is None:  # time limit without an incumbent: keep the previous phase's solution
            if fallback is None:
                raise RuntimeError(f"ILP failed: {res.message}")
            return fallback
        return np.round(res.x)

    x = run(-np.ones(nnz), [], 0.5, None)
    placed = int(x.sum())
    keep = [LinearConstraint(np.ones((1, nnz)), placed, np.inf)]
    rank = problem.cand_rank.astype(float)
    x = run(rank, keep, 0.5, x)
    keep.append(LinearConstraint(rank.reshape(1, -1), -np.inf, float(rank @ x) + 0.5))
    x = run(problem.cand_cost.astype(float), keep, 1.0, x)
    assignment = np.full(problem.n_workloads, -1, dtype=np.int64)
    for k in np.nonzero(x > 0.5)[0]:
        assignment[rows_w[k]] = problem.cand_pool[k]
    return IlpResult(assignment, optimal, time.perf_counter() - started)
