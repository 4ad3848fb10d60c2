"""Pure builders of :class:`EdgeWorkloadSetStatus`: the set's rollup of its children's status.

A child's status is the child's (written by the workload reconciler); the set only counts it: sites
selected, children Placed / Unschedulable / Ready, children per model version, and the conditions
``Synced`` (every selected site has its child with the spec the set renders) and ``Ready`` (every
selected site's child is Ready).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from continuum.api.fleet import Expansion, applied_spec, three_way_patch
from continuum.api.models import Condition, Phase
from continuum.api.workloadset import EdgeWorkloadSetStatus, RolloutPhase, RolloutStatus, VersionCount
from continuum.controller.status import condition

LISTED = 5  # sites named in a condition message before "(+N more)"


def listed(names: list[str]) -> str:
    head = ", ".join(names[:LISTED])
    return head + (f" (+{len(names) - LISTED} more)" if len(names) > LISTED else "")


def child_ready(child: Mapping[str, Any]) -> bool:
    conditions = (child.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def child_in_sync(desired: Mapping[str, Any], child: Mapping[str, Any]) -> bool:
    """Whether the child holds every field the set renders (others' fields do not matter)."""
    return not three_way_patch(applied_spec(child), desired, child.get("spec") or {})


def workload_set_status(
    expansion: Expansion,
    children: Mapping[str, Mapping[str, Any]],
    conflicts: list[str],
    generation: int | None,
    previous: list[Condition],
    now: datetime | None = None,
) -> EdgeWorkloadSetStatus:
    """``children``: the set's own children by name (as cached after this pass's writes)."""
    placed = unschedulable = ready = 0
    versions: dict[str, VersionCount] = {}
    missing, not_ready = [], []
    for child in expansion.children:
        raw = children.get(child.name)
        stale = raw is None or not child_in_sync(child.spec, raw)
        if stale and child.error is None and child.name not in conflicts:
            missing.append(child.site)
        if raw is None:
            not_ready.append(child.site)
            continue
        status = raw.get("status") or {}
        version = str(((raw.get("spec") or {}).get("model") or {}).get("version") or "1")
        count = versions.setdefault(version, VersionCount(version=version))
        count.sites += 1
        if status.get("phase") == Phase.PLACED.value:
            placed += 1
            count.placed += 1
        elif status.get("phase") == Phase.UNSCHEDULABLE.value:
            unschedulable += 1
        if child_ready(raw):
            ready += 1
            count.ready += 1
        else:
            not_ready.append(child.site)
    errors = expansion.errors
    sites = len(expansion.sites)
    if errors:
        synced = condition("Synced", False, "InvalidSite", "; ".join(errors), generation, previous, now)
    elif conflicts:
        message = f"EdgeWorkloads owned by something else hold these names: {listed(conflicts)}"
        synced = condition("Synced", False, "ChildConflict", message, generation, previous, now)
    elif missing:
        message = f"children not yet written for sites {listed(missing)}"
        synced = condition("Synced", False, "Pending", message, generation, previous, now)
    else:
        synced = condition("Synced", True, "Synced", f"{sites} children", generation, previous, now)
    if sites == 0:
        ready_cond = condition("Ready", False, "NoSites", "no site is selected", generation, previous, now)
    elif not_ready:
        message = f"{ready}/{sites} sites ready; not ready: {listed(not_ready)}"
        ready_cond = condition("Ready", False, "SitesNotReady", message, generation, previous, now)
    else:
        ready_cond = condition(
            "Ready", True, "AllReady", f"{sites}/{sites} sites ready", generation, previous, now
        )
    return EdgeWorkloadSetStatus(
        sites=sites,
        placed=placed,
        unschedulable=unschedulable,
        ready=ready,
        invalid=len(errors),
        versions=[versions[v] for v in sorted(versions)],
        conflicts=sorted(conflicts),
        unmatched_overrides=expansion.unmatched_overrides,
        message="; ".join(errors)[:1024] or None,
        conditions=[synced, ready_cond],
        observed_generation=generation,
    )


def invalid_set_status(
    error: str, generation: int | None, previous: list[Condition], now: datetime | None = None
) -> EdgeWorkloadSetStatus:
    """The spec does not validate: nothing is created, changed or removed until it does."""
    message = f"invalid spec: {error}"
    return EdgeWorkloadSetStatus(
        message=message[:1024],
        conditions=[
            condition("Synced", False, "InvalidSpec", message, generation, previous, now),
            condition("Ready", False, "InvalidSpec", message, generation, previous, now),
        ],
        observed_generation=generation,
    )


def rollout_condition(
    rollout: RolloutStatus, generation: int | None, previous: list[Condition], now: datetime | None = None
) -> Condition:
    """``Rollout``: True while every site runs (or is on its way to) a version that passed its gates;
    False when a rollout rolled back, paused, was aborted or cannot start (the message is the cause)."""
    phase = rollout.phase
    stable = rollout.stable.version if rollout.stable is not None else "?"
    if phase is RolloutPhase.PROGRESSING:
        candidate = rollout.candidate.version if rollout.candidate is not None else "?"
        step = f"step {rollout.step + 1} ({rollout.step_kind})" if rollout.step_kind else "starting"
        message = f"version {candidate} (stable {stable}): wave {rollout.wave_name or rollout.wave}, {step}"
        return condition("Rollout", True, phase.value, message, generation, previous, now)
    if phase in (RolloutPhase.STABLE, RolloutPhase.PROMOTED):
        message = f"every site runs version {stable}" + (
            f"; confirming on {len(rollout.promoting)} workers" if rollout.promoting else ""
        )
        return condition("Rollout", True, phase.value, message, generation, previous, now)
    return condition("Rollout", False, phase.value, rollout.cause or phase.value, generation, previous, now)
