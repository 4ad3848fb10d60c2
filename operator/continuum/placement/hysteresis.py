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
* **Same preference, much cheaper elsewhere** → only when the other pool costs at most
  ``1 - min_cost_gain`` of the current one (default: half), and only after that stayed true for the
  stabilization window. A small cost gain never moves a running workload.
* **Nowhere to go** → stay where it is (serving something beats serving nothing) and report it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from continuum.api.models import Candidate, EdgeWorkloadSpec, Placement
from continuum.placement.engine import PlacementDecision, placed_message


class Action(enum.StrEnum):
    PLACE = "Place"  # first placement (or re-placement from Unschedulable)
    STAY = "Stay"
    WAIT_GRACE = "WaitGrace"  # current pool broken, waiting out the grace period
    MOVE = "Move"  # current pool broken past the grace period
    WAIT_STABILIZATION = "WaitStabilization"  # a better pool is feasible, not for long enough yet
    FAIL_BACK = "FailBack"  # the better pool stayed feasible through the window
    REBALANCE = "Rebalance"  # a much cheaper pool of the same preference stayed feasible through the window
    UNSCHEDULABLE = "Unschedulable"


@dataclass(frozen=True)
class HysteresisPolicy:
    grace_seconds: float = 60.0
    stabilization_seconds: float = 300.0
    # A running workload moves for cost alone only to a pool of the same preference that costs at most
    # (1 - min_cost_gain) of the current one; >= 1 never moves for cost.
    min_cost_gain: float = 0.5

    def __post_init__(self) -> None:
        if self.grace_seconds < 0 or self.stabilization_seconds < 0:
            raise ValueError("grace_seconds and stabilization_seconds must be >= 0")
        if self.min_cost_gain <= 0:
            raise ValueError("min_cost_gain must be > 0 (a fraction of the current cost, e.g. 0.5)")


@dataclass(frozen=True)
class Verdict:
    action: Action
    target: Placement | None  # where the workload should run after this step
    disruption_since: datetime | None  # set while the current pool is broken
    better_since: datetime | None  # set while a more preferred pool is feasible
    reason: str

    @property
    def moves(self) -> bool:
        return self.action in (Action.MOVE, Action.FAIL_BACK, Action.REBALANCE)


def _candidate(decision: PlacementDecision, pool: str) -> Candidate | None:
    return next((c for c in decision.candidates if c.pool == pool), None)


def _better(
    spec: EdgeWorkloadSpec,
    here: Candidate,
    current: Placement,
    best: Placement | None,
    policy: HysteresisPolicy,
) -> tuple[Action, str] | None:
    """Whether ``best`` is worth leaving a pool that still works for: (action, why) or None."""
    if best is None or best.pool == current.pool:
        return None
    if spec.tiers.rank(best.tier) < spec.tiers.rank(here.tier):
        return Action.FAIL_BACK, f"preferred tier {best.tier.value} (pool {best.pool}) feasible"
    if spec.tiers.rank(best.tier) > spec.tiers.rank(here.tier):
        return None
    cost_here = here.hourly_cost or 0.0
    if cost_here > 0 and best.hourly_cost <= cost_here * (1 - policy.min_cost_gain):
        return (
            Action.REBALANCE,
            f"pool {best.pool} costs {best.hourly_cost:.4g}/h instead of {cost_here:.4g}/h "
            f"(at least {policy.min_cost_gain:.0%} less)",
        )
    return None


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
        # Still fine where it is. Move only to a more preferred tier or for a large cost gain, and only
        # once that has held for the stabilization window.
        better = _better(spec, here, current, best, policy)
        if better is None or best is None:
            refreshed = best if best is not None and best.pool == current.pool else current
            # the placement's own message: a workload that just got placed keeps its status text, so its
            # next pass (e.g. on the Deployment's progress) writes no status for a rewording
            return Verdict(Action.STAY, refreshed, None, None, placed_message(refreshed))
        action, why = better
        since = better_since or now
        waited = (now - since).total_seconds()
        if waited >= policy.stabilization_seconds:
            return Verdict(action, best, None, None, f"{why} for {waited:.0f}s")
        return Verdict(
            Action.WAIT_STABILIZATION,
            current,
            None,
            since,
            f"{why} for {waited:.0f}s of {policy.stabilization_seconds:.0f}s",
        )

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
