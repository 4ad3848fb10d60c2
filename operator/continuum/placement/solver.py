"""Batch solver for :class:`~continuum.placement.problem.AssignmentProblem`.

A multi-dimensional generalized assignment problem (NP-hard), solved heuristically and checked
against an exact ILP in ``bench/placement.py``:

1. **keep** running workloads where they are when their pool is still a candidate with room
   (hysteresis: never moved for a small gain);
2. **construct** most-constrained-first: workloads with the fewest candidates, then the largest
   demand relative to their candidates' capacity, take their best candidate (rank, cost) with room
   (and, up to 200,000 candidate pairs, in arrival order too: never fewer placed than per-workload greedy);
3. **repair** each unplaced workload with an ejection chain: evict the most movable workloads from one
   of its candidates and re-insert them elsewhere, recursively (depth 2), undoing chains that fail;
4. **improve** by shift moves (a workload to a better candidate with room) until a pass finds none.

Every step keeps the accelerator constraint of :mod:`problem` (while a pool hosts a workload of an
accelerator class, the pool's total stays within that class's nodes): a pool's ``reserve`` is what must
stay free for the classes it hosts, so what the solver places passes the rule ``continuum plan`` checks.

Plain Python floats in the hot loops (numpy per-element access is slower at this size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from continuum.placement.problem import AssignmentProblem, Objective, objective

EPS = 1e-9
RANK_WEIGHT = 1e9  # lexicographic: one preference rank outweighs any cost


@dataclass
class _State:
    cap: list[list[float]]  # pool -> [cpu, mem, gpu] free
    wan: list[float]  # pool -> free WAN
    cands: list[list[tuple[float, int, float, bool]]]  # workload -> sorted [(score, pool, cost, offsite)]
    demand: list[tuple[float, float, float]]
    ingest: list[float]
    assign: list[int]
    at: list[dict[int, tuple[float, bool]]]  # workload -> {pool: (score, offsite)} (O(1) lookups)
    # accelerator classes (see problem.py): workload -> class (-1 none); class -> pool -> how much of each
    # resource must stay free while the pool hosts the class (whole pool minus the class's nodes)
    cls: list[int]
    gap: list[list[list[float]]]
    reserve: list[list[float]]  # pool -> [cpu, mem, gpu] that must stay free (largest gap hosted)
    hosted: list[dict[int, list[int]]]  # pool -> class -> per resource, hosted workloads needing it

    def fits(self, w: int, p: int, offsite: bool) -> bool:
        c, d, rs = self.cap[p], self.demand[w], self.reserve[p]
        if d[0] > c[0] - rs[0] + EPS or d[1] > c[1] - rs[1] + EPS or d[2] > c[2] - rs[2] + EPS:
            return False
        k = self.cls[w]
        if k >= 0:
            g = self.gap[k][p]
            for r in range(3):
                if d[r] > 0 and d[r] > c[r] - g[r] + EPS:
                    return False
        return not (offsite and self.ingest[w] > self.wan[p] + EPS)

    def _host(self, w: int, p: int, step: int) -> None:
        k, d = self.cls[w], self.demand[w]
        counts = self.hosted[p].setdefault(k, [0, 0, 0])
        for r in range(3):
            if d[r] > 0:
                counts[r] += step
        rs = [0.0, 0.0, 0.0]
        for j, n in self.hosted[p].items():
            g = self.gap[j][p]
            for r in range(3):
                if n[r] > 0 and g[r] > rs[r]:
                    rs[r] = g[r]
        self.reserve[p] = rs

    def take(self, w: int, p: int, offsite: bool) -> None:
        c, d = self.cap[p], self.demand[w]
        c[0] -= d[0]
        c[1] -= d[1]
        c[2] -= d[2]
        if offsite:
            self.wan[p] -= self.ingest[w]
        self.assign[w] = p
        if self.cls[w] >= 0:
            self._host(w, p, 1)

    def release(self, w: int) -> None:
        p = self.assign[w]
        if p < 0:
            return
        c, d = self.cap[p], self.demand[w]
        c[0] += d[0]
        c[1] += d[1]
        c[2] += d[2]
        if self.offsite(w, p):
            self.wan[p] += self.ingest[w]
        self.assign[w] = -1
        if self.cls[w] >= 0:
            self._host(w, p, -1)

    def offsite(self, w: int, p: int) -> bool:
        return self.at[w][p][1]

    def score(self, w: int, p: int) -> float:
        return self.at[w][p][0]

    def copy(self, n_workloads: int) -> _State:
        """A fresh state: nothing assigned, the same problem data."""
        return _State(
            cap=[list(row) for row in self.cap],
            wan=list(self.wan),
            cands=self.cands,
            demand=self.demand,
            ingest=self.ingest,
            assign=[-1] * n_workloads,
            at=self.at,
            cls=self.cls,
            gap=self.gap,
            reserve=[[0.0, 0.0, 0.0] for _ in self.cap],
            hosted=[{} for _ in self.cap],
        )


def _state(problem: AssignmentProblem) -> _State:
    ptr = problem.cand_ptr.tolist()
    pools = problem.cand_pool.tolist()
    costs = problem.cand_cost.tolist()
    offs = problem.cand_offsite.tolist()
    cands = []
    scores = (problem.cand_rank * RANK_WEIGHT + problem.cand_cost).tolist()
    for w in range(problem.n_workloads):
        lo, hi = ptr[w], ptr[w + 1]
        row = sorted(zip(scores[lo:hi], pools[lo:hi], costs[lo:hi], offs[lo:hi], strict=True))
        cands.append(row)
    return _State(
        cap=[list(map(float, row)) for row in problem.capacity.tolist()],
        wan=[float(x) for x in problem.wan_capacity.tolist()],
        cands=cands,
        demand=[(row[0], row[1], row[2]) for row in problem.demand.tolist()],
        ingest=[float(x) for x in problem.ingest.tolist()],
        assign=[-1] * problem.n_workloads,
        at=[{p: (score, off) for score, p, _, off in row} for row in cands],
        cls=problem.accel_classes.tolist(),
        gap=problem.accel_gap().tolist(),
        reserve=[[0.0, 0.0, 0.0] for _ in range(problem.n_pools)],
        hosted=[{} for _ in range(problem.n_pools)],
    )


def _shares(problem: AssignmentProblem, st: _State) -> list[float]:
    """Each workload's largest demand share of the roomiest of its candidate pools."""
    cap = np.maximum(problem.capacity, EPS)
    share = [0.0] * problem.n_workloads
    for w in range(problem.n_workloads):
        pools = [p for _, p, _, _ in st.cands[w]]
        if pools:
            share[w] = float(np.max(problem.demand[w] / cap[pools].max(axis=0)))
    return share


def _orders(problem: AssignmentProblem, st: _State) -> list[list[int]]:
    """Construction orders tried: for the most placements small workloads go first (as in knapsack),
    for the fewest stranded constrained ones the most constrained go first."""
    share = _shares(problem, st)
    keys = problem.workload_keys
    n = range(problem.n_workloads)
    return [
        sorted(n, key=lambda w: (share[w], len(st.cands[w]), keys[w])),
        sorted(n, key=lambda w: (len(st.cands[w]) > 1, share[w], keys[w])),
        sorted(n, key=lambda w: (len(st.cands[w]), share[w], keys[w])),
        sorted(n, key=lambda w: (len(st.cands[w]), -share[w], keys[w])),
    ]


class _Journal:
    """Moves made while trying an ejection chain, so a failed chain can be undone exactly."""

    def __init__(self, st: _State, users: list[set[int]]) -> None:
        self.st, self.users = st, users
        self.log: list[tuple[int, int]] = []

    def move(self, w: int, p: int) -> None:
        old = self.st.assign[w]
        if old >= 0:
            self.users[old].discard(w)
            self.st.release(w)
        if p >= 0:
            self.st.take(w, p, self.st.offsite(w, p))
            self.users[p].add(w)
        self.log.append((w, old))

    def mark(self) -> int:
        return len(self.log)

    def undo(self, mark: int) -> None:
        while len(self.log) > mark:
            w, old = self.log.pop()
            now = self.st.assign[w]
            if now >= 0:
                self.users[now].discard(w)
                self.st.release(w)
            if old >= 0:
                self.st.take(w, old, self.st.offsite(w, old))
                self.users[old].add(w)


def _victims(st: _State, w: int, p: int, off: bool, users: set[int], pinned: set[int]) -> list[int] | None:
    """Workloads to evict from ``p`` so that ``w`` fits: the most movable first, until the deficit is covered."""
    cap, need = st.cap[p], st.demand[w]
    held = list(st.reserve[p])  # what must stay free (evicting can only lower it)
    if st.cls[w] >= 0:
        g = st.gap[st.cls[w]][p]
        held = [max(held[r], g[r]) if need[r] > 0 else held[r] for r in range(3)]
    deficit = [max(need[r] - (cap[r] - held[r]), 0.0) for r in range(3)]
    wan_deficit = max(st.ingest[w] - st.wan[p], 0.0) if off else 0.0
    chosen: list[int] = []
    pool = sorted(
        (v for v in users if v not in pinned), key=lambda v: (-len(st.cands[v]), -sum(st.demand[v]), v)
    )
    for v in pool:
        if all(d <= EPS for d in deficit) and wan_deficit <= EPS:
            break
        helps = any(deficit[r] > EPS and st.demand[v][r] > 0 for r in range(3))
        helps = helps or (wan_deficit > EPS and st.offsite(v, p) and st.ingest[v] > 0)
        if not helps:
            continue
        chosen.append(v)
        for r in range(3):
            deficit[r] -= st.demand[v][r]
        if st.offsite(v, p):
            wan_deficit -= st.ingest[v]
    if any(d > EPS for d in deficit) or wan_deficit > EPS:
        return None
    return chosen


def _insert(
    st: _State,
    journal: _Journal,
    w: int,
    depth: int,
    banned: frozenset[int],
    pinned: set[int],
    tries: int = 6,
) -> bool:
    """Place ``w``, evicting and re-inserting others recursively (an ejection chain) up to ``depth``."""
    for _, p, _, off in st.cands[w]:
        if p not in banned and st.fits(w, p, off):
            journal.move(w, p)
            return True
    if depth == 0:
        return False
    for _, p, _, off in [c for c in st.cands[w] if c[1] not in banned][:tries]:
        victims = _victims(st, w, p, off, journal.users[p], pinned)
        if not victims or len(victims) > 4:
            continue
        mark = journal.mark()
        for v in victims:
            journal.move(v, -1)
        if not st.fits(w, p, off):  # (the victims cover the deficit: a guard, not a search)
            journal.undo(mark)
            continue
        journal.move(w, p)
        if all(_insert(st, journal, v, depth - 1, banned | {p}, pinned | {w}) for v in victims):
            return True
        journal.undo(mark)
    return False


def _solve_once(
    problem: AssignmentProblem,
    base: _State,
    order: list[int],
    keep_current: bool,
    max_passes: int,
    depth: int,
    budget: list[int],
) -> list[int]:
    st = base.copy(problem.n_workloads)
    users: list[set[int]] = [set() for _ in range(problem.n_pools)]
    if keep_current:
        for w in order:
            p = int(problem.current[w])
            if p >= 0 and p in st.at[w]:
                off = st.offsite(w, p)
                if st.fits(w, p, off):
                    st.take(w, p, off)
                    users[p].add(w)
    for w in order:
        if st.assign[w] >= 0:
            continue
        for _, p, _, off in st.cands[w]:
            if st.fits(w, p, off):
                st.take(w, p, off)
                users[p].add(w)
                break
    pinned = {
        w for w in range(problem.n_workloads) if keep_current and st.assign[w] == int(problem.current[w]) >= 0
    }
    journal = _Journal(st, users)
    for w in order:
        if st.assign[w] < 0 and st.cands[w]:
            mark = journal.mark()
            if not _insert(st, journal, w, depth, frozenset(), set(pinned)):
                journal.undo(mark)
        journal.log.clear()
    for _ in range(max_passes):
        improved = False
        for w in order:
            p = st.assign[w]
            if p < 0 or w in pinned:
                continue
            here = st.score(w, p)
            for score, q, _, off in st.cands[w]:
                if score >= here - EPS:
                    break
                if st.fits(w, q, off):
                    journal.move(w, q)
                    improved = True
                    break
                if budget[0] > 0 and _improve_by_eviction(st, journal, w, q, here - score, pinned, budget):
                    improved = True
                    break
            journal.log.clear()
        if not improved:
            break
    return st.assign


def _improve_by_eviction(
    st: _State, journal: _Journal, w: int, q: int, gain: float, pinned: set[int], budget: list[int]
) -> bool:
    """Move ``w`` to the better pool ``q`` by moving one workload ``v`` off ``q`` to another of its
    candidates, when the two moves together improve the objective."""
    for v in sorted(journal.users[q] - pinned, key=lambda v: (-sum(st.demand[v]), v))[:16]:
        at_q = st.score(v, q)
        for score_v, r, _, _ in st.cands[v]:
            budget[0] -= 1
            if r == q or score_v - at_q >= gain - EPS:
                continue
            mark = journal.mark()
            journal.move(v, -1)
            journal.move(w, -1)
            if st.fits(w, q, st.offsite(w, q)):
                journal.move(w, q)
                if st.fits(v, r, st.offsite(v, r)):
                    journal.move(v, r)
                    return True
            journal.undo(mark)
        if budget[0] <= 0:
            return False
    return False


def solve(
    problem: AssignmentProblem, keep_current: bool = True, max_passes: int = 4, depth: int = 2
) -> npt.NDArray[np.int64]:
    """Assign each workload a pool index (or -1); never breaks a capacity or WAN constraint.

    Runs the construction from several orders and keeps the best lexicographic objective."""
    best: tuple[Objective, list[int]] | None = None
    base = _state(problem)
    orders = _orders(problem, base)
    if len(problem.cand_pool) > 200_000:  # large batches: the two orders that win most often
        orders = orders[:2]
    else:  # arrival order too: its construction is the per-workload greedy, so the count is never below it
        orders.append(list(range(problem.n_workloads)))
    for order in orders:
        budget = [min(50_000, 20 * problem.n_workloads)]  # deterministic bound on the eviction moves' work
        assign = _solve_once(problem, base, order, keep_current, max_passes, depth, budget)
        score = objective(problem, np.asarray(assign, dtype=np.int64))
        if best is None or score.better_than(best[0]):
            best = (score, assign)
    assert best is not None
    return np.asarray(best[1], dtype=np.int64)
