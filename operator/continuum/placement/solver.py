"""Batch solver for :class:`~continuum.placement.problem.AssignmentProblem` (placeholder: greedy).

Being replaced by the batch solver (most-constrained-first + repair + local search).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from continuum.placement.problem import AssignmentProblem, greedy_in_order


def solve(problem: AssignmentProblem) -> npt.NDArray[np.int64]:
    return greedy_in_order(problem)
