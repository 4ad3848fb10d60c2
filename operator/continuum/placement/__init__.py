"""Placement: pure functions from (workloads, cluster snapshot) to explained decisions.

No Kubernetes client and no kopf here (import-linter enforces it): everything is testable offline.
"""

from continuum.placement.engine import (
    PlacementDecision,
    UsageLedger,
    decide,
    decide_batch,
    decide_in_order,
    explain,
    ledger_for,
)
from continuum.placement.problem import AssignmentProblem, WorkloadRequest, build_problem
from continuum.placement.snapshot import (
    ClusterSnapshot,
    NodeView,
    PoolUsage,
    PoolView,
    Resources,
    build_snapshot,
)

__all__ = [
    "AssignmentProblem",
    "ClusterSnapshot",
    "NodeView",
    "PlacementDecision",
    "PoolUsage",
    "PoolView",
    "Resources",
    "UsageLedger",
    "WorkloadRequest",
    "build_problem",
    "build_snapshot",
    "decide",
    "decide_batch",
    "decide_in_order",
    "explain",
    "ledger_for",
]
