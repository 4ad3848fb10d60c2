"""When a running workload moves: only when it must, or when it gains enough, never on a blip.

Pure: the operator passes the current placement (from status), the fresh decision, the timestamps it
recorded, and the clock. The rules:

* **Not yet placed** → take the decision.
* **Current pool still feasible** → stay, whatever the cost gain; if a *more preferred* tier is now
  feasible, start (or continue) the stabilization window and fail back only once the better pool has
  been feasible for ``stabilization_seconds`` without interruption (karmada#7441, #4990).
* **Current pool can no longer host it** (nodes NotReady or gone, capacity lost, pool changed or
  deleted) → start the grace period and move only after ``grace_seconds`` (OpenYurt's autonomy,
  Karmada's ``tolerationSeconds``); if it recovers within the grace period, nothing happens.
* **Nowhere to go** → stay where it is (serving something beats serving nothing) and report it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from continuum.api.models import Candidate, EdgeWorkloadSpec, Placement
from continuum.placement.engine import PlacementDecision


class Action(enum.StrEnum):
    PLACE = "Place"  # first placement (or re-placement from Unschedulable)
    STAY = "Stay"
    WAIT_GRACE = "WaitGrace"  # current pool broken, waiting out the grace period
    MOVE = "Move"  # current pool broken past the grace period
    WAIT_STABILIZATION = "WaitStabilization"  # a better pool is feasible, not for long enough yet
    FAIL_BACK = "FailBack"  # the better pool stayed feasible through the window
    UNSCHEDULABLE = "Unschedulable"


@dataclass(frozen=True)
class HysteresisPolicy:
    grace_seconds: float = 60.0
    stabilization_seconds: float = 300.0


@dataclass(frozen=True)
class Verdict:
    action: Action
    target: Placement | None  # where the workload should run after this step
    disruption_since: datetime | None  # set while the current pool is broken
    better_since: datetime | None  # set while a more preferred pool is feasible
    reason: str

    @property
    def moves(self) -> bool:
        return self.action in (Action.MOVE, Action.FAIL_BACK)


def _candidate(decision: PlacementDecision, pool: str) -> Candidate | None:
    return next((c for c in decision.candidates if c.pool == pool), None)


def judge(
    spec: EdgeWorkloadSpec,
    current: Placement | None,
    decision: PlacementDecision,
    now: datetime,
    policy: HysteresisPolicy,
    disruption_since: datetime | None = None,
    better_since: datetime | None = None,
) -> Verdict:
    """What to do with a workload now. ``decision`` must be computed without the workload's own usage."""
    best = decision.placement
    if current is None:
        if best is None:
            return Verdict(Action.UNSCHEDULABLE, None, None, None, decision.message)
        return Verdict(Action.PLACE, best, None, None, decision.message)

    here = _candidate(decision, current.pool)
    if here is not None and here.feasible:
        # Still fine where it is. Fail back only to a more preferred tier, after the window.
        if (
            best is not None
            and best.pool != current.pool
            and spec.tiers.rank(best.tier) < spec.tiers.rank(current.tier)
        ):
            since = better_since or now
            waited = (now - since).total_seconds()
            if waited >= policy.stabilization_seconds:
                return Verdict(
                    Action.FAIL_BACK,
                    best,
                    None,
                    None,
                    f"preferred tier {best.tier.value} (pool {best.pool}) feasible for {waited:.0f}s",
                )
            return Verdict(
                Action.WAIT_STABILIZATION,
                current,
                None,
                since,
                f"preferred pool {best.pool} feasible for {waited:.0f}s of {policy.stabilization_seconds:.0f}s",
            )
        refreshed = best if best is not None and best.pool == current.pool else current
        return Verdict(Action.STAY, refreshed, None, None, f"pool {current.pool} still hosts it")

    why = (
        "; ".join(r.message for r in here.reasons)
        if here is not None
        else f"pool {current.pool} no longer exists"
    )
    since = disruption_since or now
    waited = (now - since).total_seconds()
    if waited < policy.grace_seconds:
        return Verdict(
            Action.WAIT_GRACE,
            current,
            since,
            None,
            f"pool {current.pool} cannot host it ({why}); moving in {policy.grace_seconds - waited:.0f}s unless it recovers",
        )
    if best is None:
        return Verdict(
            Action.UNSCHEDULABLE,
            current,
            since,
            None,
            f"pool {current.pool} cannot host it ({why}) and no other pool can",
        )
    return Verdict(
        Action.MOVE, best, None, None, f"pool {current.pool} cannot host it ({why}) for {waited:.0f}s"
    )
