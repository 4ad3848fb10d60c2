"""The exact batch optimum with HiGHS, warm-started from the heuristic, under a time budget.

The batch problem (:class:`~continuum.placement.problem.AssignmentProblem`) is a 0/1 program: one
variable per (workload, candidate pool) pair, each workload at most once, per pool and resource the
demand within the free capacity, per pool with a WAN limit the off-site ingest within it. Its objective
is lexicographic, as the heuristic's (:mod:`solver`): (1) place as many as possible, (2) then the
smallest sum of preference ranks, (3) then the lowest hourly cost. :func:`improve` solves it in those
three phases, each fixing the previous phase's value, each started from the best known assignment (the
heuristic's first), so a phase that runs out of time still returns an assignment at least as good.

Workloads the heuristic kept on the pool they run on (hysteresis: never moved for a small gain) stay
there: the optimum is over the others. The answer says whether each phase was proven optimal, and
otherwise how far from optimal it can be (HiGHS's dual bound): at most ``placed_bound`` placeable, and
the relative cost gap of the last phase.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from continuum.placement.problem import AssignmentProblem, objective, violations

DEFAULT_BUDGET_S = 1.0  # wall seconds for the three phases together
MAX_PAIRS = 400_000  # beyond this many (workload, pool) pairs the model is not worth building in the budget
REL_GAP = 1e-6
# Share of the time left that each phase may use: the count first (the objective that matters most,
# and the one the plan promises to match), then the rank sum, then the cost with whatever remains. The count
# gets 0.7: with the accelerator rows its phase took 0.24-0.33 s (load 8) on tests/placement's 300 × 24
# instance, too close to 0.5 s.
SHARES = (0.7, 0.6, 1.0)


@dataclass(frozen=True)
class Optimality:
    """How good a batch plan is known to be."""

    method: str  # "heuristic" (exact solver not run), "highs" (exact solver run, possibly out of time)
    proven: bool  # every phase proven optimal: no plan places more, then ranks better, then costs less
    placed_bound: int | None  # no plan places more than this (None: not known)
    cost_gap: float | None  # relative gap of the cost phase between the plan and HiGHS's bound
    seconds: float
    improved: bool  # the exact solver found a better plan than the heuristic's
    note: str = ""

    def summary(self) -> str:
        if self.proven:
            return f"proven optimal (HiGHS, {self.seconds:.2f} s)"
        if self.method == "heuristic":
            return f"heuristic, optimality not checked ({self.note})" if self.note else "heuristic"
        parts = []
        if self.placed_bound is not None:
            parts.append(f"at most {self.placed_bound} placeable")
        if self.cost_gap is not None:
            parts.append(f"cost within {self.cost_gap * 100:.2f} % of the bound")
        bound = "; ".join(parts) if parts else "no bound"
        return f"not proven optimal within {self.seconds:.2f} s: {bound}" + (
            f" ({self.note})" if self.note else ""
        )


@dataclass(frozen=True)
class ExactResult:
    assignment: npt.NDArray[np.int64]
    optimality: Optimality


def heuristic_only(note: str = "") -> Optimality:
    return Optimality("heuristic", False, None, None, 0.0, False, note)


def improve(
    problem: AssignmentProblem,
    start: npt.NDArray[np.int64],
    budget_s: float = DEFAULT_BUDGET_S,
    threads: int = 1,
    phases: int = 3,
) -> ExactResult:
    """The lexicographic optimum of ``problem``, from the feasible assignment ``start``, in at most
    about ``budget_s`` seconds; never worse than ``start`` (a phase without a better answer keeps it).
    ``phases``: 1 the count only, 2 then the rank sum, 3 then the cost too."""
    import highspy  # imported on use: the operator's per-workload path never needs it

    started = time.perf_counter()
    nnz = len(problem.cand_pool)
    if nnz == 0 or problem.n_workloads == 0:
        return ExactResult(start.copy(), Optimality("highs", True, 0, 0.0, 0.0, False))
    if nnz > MAX_PAIRS:
        return ExactResult(
            start.copy(), heuristic_only(f"{nnz} pairs, more than {MAX_PAIRS} for the exact solver")
        )
    rows_w = np.repeat(np.arange(problem.n_workloads), np.diff(problem.cand_ptr))
    x0 = _pairs(problem, rows_w, start)
    lp: Any = _model(problem, rows_w, highspy)
    n_cols = int(lp.num_col_)  # the pairs, then one 0/1 column per accelerator constraint (see _model)

    h = _quiet_highs(highspy)
    h.setOptionValue("threads", threads)
    h.setOptionValue("mip_rel_gap", REL_GAP)
    h.setOptionValue("random_seed", 0)
    h.passModel(lp)
    # Running workloads the heuristic kept where they are stay there.
    pinned = np.nonzero((problem.current >= 0) & (start == problem.current))[0]
    if len(pinned):
        fixed = np.nonzero(np.isin(rows_w, pinned) & (problem.cand_pool == start[rows_w]))[0]
        h.changeColsBounds(len(fixed), fixed.astype(np.int32), np.ones(len(fixed)), np.ones(len(fixed)))

    proven = True
    best = x0
    placed_bound: int | None = None
    cost_gap: float | None = None
    objectives = (
        ("placed", -np.ones(nnz)),
        ("rank", problem.cand_rank.astype(np.float64)),
        ("cost", problem.cand_cost.astype(np.float64)),
    )
    for i, (name, c) in enumerate(objectives[:phases]):
        left = budget_s - (time.perf_counter() - started)
        if left <= 0.01:
            proven = False
            break
        h.setOptionValue("time_limit", left * SHARES[i])
        h.changeColsCost(nnz, np.arange(nnz, dtype=np.int32), c)  # the others cost 0
        # The best known value as a cutoff (HiGHS 1.16's setSolution warm start returned vectors that did
        # not match the objective it reported): "infeasible" then proves the known plan optimal.
        known = float(c @ best)
        cutoff = known - 0.5 if name != "cost" else known - max(abs(known), 1.0) * REL_GAP
        h.setOptionValue("objective_bound", cutoff)
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        x = np.round(np.asarray(h.getSolution().col_value, dtype=np.float64))
        x = x[:nnz] if len(x) == n_cols else x
        if status == highspy.HighsModelStatus.kInfeasible:
            ok = True  # nothing beats the known plan
        else:
            ok = status == highspy.HighsModelStatus.kOptimal
            if info.primal_solution_status == 2 and len(x) == nnz and float(c @ x) < known:
                best = x.astype(np.float64)
        proven = proven and ok
        value = float(c @ best)
        bound = value if ok else min(float(info.mip_dual_bound), value)
        if name == "placed":
            placed_bound = int(np.floor(-bound + 1e-6)) if np.isfinite(bound) else None
        if name == "cost":
            cost_gap = max(value - bound, 0.0) / max(abs(value), 1e-9) if np.isfinite(bound) else None
        # keep this phase's value for the next ones (with integer values, a half-unit tolerance)
        if name == "placed":
            h.addRow(-value - 0.5, np.inf, nnz, np.arange(nnz, dtype=np.int32), np.ones(nnz))
        elif name == "rank":
            h.addRow(-np.inf, value + 0.5, nnz, np.arange(nnz, dtype=np.int32), c)
    assignment = np.full(problem.n_workloads, -1, dtype=np.int64)
    chosen = np.nonzero(best > 0.5)[0]
    assignment[rows_w[chosen]] = problem.cand_pool[chosen]
    # The rounded answer is checked exactly (HiGHS works within tolerances).
    improved = not violations(problem, assignment) and objective(problem, assignment).better_than(
        objective(problem, start)
    )
    if not improved:
        assignment = start.copy()
    return ExactResult(
        assignment,
        Optimality("highs", proven, placed_bound, cost_gap, time.perf_counter() - started, improved),
    )


def _quiet_highs(highspy: Any) -> Any:
    """A solver that prints nothing: HiGHS writes its banner to file descriptor 1 when it is created,
    which would corrupt ``continuum plan -o json``."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
            h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return h


def _pairs(
    problem: AssignmentProblem, rows_w: npt.NDArray[np.int64], assignment: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """The 0/1 vector over candidate pairs of an assignment."""
    return (problem.cand_pool == assignment[rows_w]).astype(np.float64)


def _model(problem: AssignmentProblem, rows_w: npt.NDArray[np.int64], highspy: object) -> object:
    """The constraint matrix in column-wise form: per pair its workload row, three capacity rows of its
    pool (nonzero demands only) and its pool's WAN row (off-site pairs of finite WAN limits).

    Accelerator classes (see :mod:`problem`): per (class, pool, resource) where the class's nodes have
    less than the pool and some candidate of the class needs the resource, a 0/1 column ``y`` (the pool
    hosts the class), a row ``sum of demands + gap * y <= capacity`` (hosting it: the pool's total within
    the class's nodes) and per such candidate pair a row ``x - y <= 0``."""
    n_w, n_p = problem.n_workloads, problem.n_pools
    nnz = len(problem.cand_pool)
    cols = np.arange(nnz)
    finite = np.isfinite(problem.wan_capacity)
    wan_row = np.full(n_p, -1, dtype=np.int64)
    wan_row[finite] = n_w + 3 * n_p + np.arange(int(finite.sum()))
    parts_r, parts_c, parts_v = [rows_w], [cols], [np.ones(nnz)]
    # Rows scaled to a capacity of 1 (memory is in bytes: unscaled, HiGHS's tolerances cut off optima).
    scale = np.where(problem.capacity > 0, problem.capacity, 1.0)
    wan_scale = np.where(finite & (problem.wan_capacity > 0), problem.wan_capacity, 1.0)
    for r in range(3):
        d = problem.demand[rows_w, r]
        keep = d > 0
        pools = problem.cand_pool[keep]
        parts_r.append(n_w + 3 * pools + r)
        parts_c.append(cols[keep])
        parts_v.append(d[keep] / scale[pools, r])
    ingest = problem.ingest[rows_w]
    keep = problem.cand_offsite & finite[problem.cand_pool] & (ingest > 0)
    pools = problem.cand_pool[keep]
    parts_r.append(wan_row[pools])
    parts_c.append(cols[keep])
    parts_v.append(ingest[keep] / wan_scale[pools])
    n_rows = n_w + 3 * n_p + int(finite.sum())
    upper = [np.ones(n_w), (problem.capacity / scale).reshape(-1), (problem.wan_capacity / wan_scale)[finite]]
    # accelerator classes
    n_cols = nnz
    pair_cls = problem.accel_classes[rows_w]
    gap = problem.accel_gap()
    for r in range(3):
        pairs = np.nonzero((pair_cls >= 0) & (problem.demand[rows_w, r] > 0))[0]
        pairs = pairs[gap[pair_cls[pairs], problem.cand_pool[pairs], r] > 1e-9]
        if not len(pairs):
            continue
        key = pair_cls[pairs] * n_p + problem.cand_pool[pairs]
        groups, y_of_pair = np.unique(key, return_inverse=True)
        g_cls, g_pool = groups // n_p, groups % n_p
        ys = n_cols + np.arange(len(groups))
        n_cols += len(groups)
        # sum of the pool's demands of r + gap * y <= capacity (a new row per group: the pool's pairs again)
        cap_rows = n_rows + np.arange(len(groups))
        n_rows += len(groups)
        d = problem.demand[rows_w, r]
        parts_r.append(cap_rows)  # the gap * y entries
        parts_c.append(ys)
        parts_v.append(gap[g_cls, g_pool, r] / scale[g_pool, r])
        for c in np.unique(g_cls).tolist():  # per class (few): the demands of every pair on its pools
            row_of_pool = np.full(n_p, -1, dtype=np.int64)
            mine = g_cls == c
            row_of_pool[g_pool[mine]] = cap_rows[mine]
            at = np.nonzero((row_of_pool[problem.cand_pool] >= 0) & (d > 0))[0]
            at_pool = problem.cand_pool[at]
            parts_r.append(row_of_pool[at_pool])
            parts_c.append(at)
            parts_v.append(d[at] / scale[at_pool, r])
        upper.append(problem.capacity[g_pool, r] / scale[g_pool, r])
        # valid for 0/1 values, and a much tighter relaxation: the class's own demands <= its nodes * y
        own_rows = n_rows + np.arange(len(groups))
        n_rows += len(groups)
        parts_r += [own_rows[y_of_pair], own_rows]
        parts_c += [pairs, ys]
        parts_v += [
            d[pairs] / scale[g_pool[y_of_pair], r],
            -problem.accel_caps[g_cls, g_pool, r] / scale[g_pool, r],
        ]
        upper.append(np.zeros(len(groups)))
        # x - y <= 0 per pair of the class
        link_rows = n_rows + np.arange(len(pairs))
        n_rows += len(pairs)
        parts_r += [link_rows, link_rows]
        parts_c += [pairs, ys[y_of_pair]]
        parts_v += [np.ones(len(pairs)), -np.ones(len(pairs))]
        upper.append(np.zeros(len(pairs)))
    r_all, c_all, v_all = np.concatenate(parts_r), np.concatenate(parts_c), np.concatenate(parts_v)
    order = np.lexsort((r_all, c_all))
    lp = highspy.HighsLp()  # type: ignore[attr-defined]
    lp.num_col_ = n_cols
    lp.num_row_ = n_rows
    lp.col_cost_ = np.zeros(n_cols)
    lp.col_lower_ = np.zeros(n_cols)
    lp.col_upper_ = np.ones(n_cols)
    lp.row_lower_ = np.full(n_rows, -np.inf)
    lp.row_upper_ = np.maximum(np.concatenate(upper), 0.0)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise  # type: ignore[attr-defined]
    lp.a_matrix_.start_ = np.concatenate([[0], np.cumsum(np.bincount(c_all, minlength=n_cols))]).astype(
        np.int32
    )
    lp.a_matrix_.index_ = r_all[order].astype(np.int32)
    lp.a_matrix_.value_ = v_all[order]
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n_cols  # type: ignore[attr-defined]
    return lp
