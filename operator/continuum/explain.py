"""``continuum explain NS/NAME``: why a running workload sits where it does, from a live cluster.

Pure core: :func:`explain` reads an EdgeWorkload object (as the API returns it) and the Events about
it, and returns an :class:`Explanation`: the decision, the ranked feasible alternatives (the
operator writes them to ``status.candidates`` in the order it would choose them), the rejected pools
grouped by reason code, the hint, the conditions and the most recent Events. :func:`render_text`
prints it. The edge (:func:`cmd_explain`) logs in with the kubeconfig (kopf's own kubeconfig login,
as ``continuum run`` does) and reads the workload, its Events and its worker Deployment/StatefulSet.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

EXIT_OK, EXIT_ERROR = 0, 1
MAX_EVENTS = 10


@dataclass(frozen=True)
class Alternative:
    pool: str
    tier: str
    estimated_latency_ms: float | None
    latency_slack_ms: float | None  # budget − estimate
    hourly_cost: float | None


@dataclass(frozen=True)
class RejectedGroup:
    code: str
    count: int  # pools listed in status with this code
    pools: list[tuple[str, str]]  # (pool, message), in status order (nearest misses first)


@dataclass(frozen=True)
class EventLine:
    time: str
    type: str
    reason: str
    message: str
    count: int


@dataclass
class Explanation:
    key: str
    phase: str
    generation_current: bool  # status.observedGeneration == metadata.generation
    placement: Mapping[str, Any] | None
    previous_placement: Mapping[str, Any] | None
    budget_ms: float | None
    preferred_tiers: list[str]
    alternatives: list[Alternative]
    rejected: list[RejectedGroup]
    candidates_omitted: int
    hint: str | None
    message: str | None
    conditions: list[Mapping[str, Any]]
    events: list[EventLine]
    workers: list[str] = field(default_factory=list)  # "Deployment x: 1/1 ready"


def _event_time(event: Mapping[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("series") or {}).get("lastObservedTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def events_about(events: Sequence[Mapping[str, Any]], name: str, uid: str | None) -> list[EventLine]:
    """The Events whose involvedObject (or regarding) is this EdgeWorkload, newest first."""
    mine = []
    for e in events:
        obj = e.get("involvedObject") or e.get("regarding") or {}
        if obj.get("kind") != "EdgeWorkload" or obj.get("name") != name:
            continue
        if uid and obj.get("uid") and obj["uid"] != uid:
            continue  # about an earlier object of the same name
        mine.append(e)
    mine.sort(key=_event_time, reverse=True)
    return [
        EventLine(
            _event_time(e),
            str(e.get("type") or ""),
            str(e.get("reason") or ""),
            str(e.get("message") or e.get("note") or ""),
            int(e.get("count") or (e.get("series") or {}).get("count") or 1),
        )
        for e in mine[:MAX_EVENTS]
    ]


def explain(workload: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> Explanation:
    meta = workload.get("metadata") or {}
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    placement = status.get("placement")
    budget = (spec.get("requirements") or {}).get("latencyBudgetMs")
    chosen = placement.get("pool") if placement else None
    alternatives = []
    groups: dict[str, list[tuple[str, str]]] = {}
    for c in status.get("candidates") or []:
        if c.get("feasible"):
            if c.get("pool") == chosen:
                continue
            latency = c.get("estimatedLatencyMs")
            slack = (
                budget - latency
                if isinstance(budget, (int, float)) and isinstance(latency, (int, float))
                else None
            )
            alternatives.append(
                Alternative(c["pool"], c.get("tier", ""), latency, slack, c.get("hourlyCost"))
            )
            continue
        for r in c.get("reasons") or []:
            groups.setdefault(str(r.get("code")), []).append((c["pool"], str(r.get("message") or "")))
    rejected = sorted(
        (RejectedGroup(code, len(pools), pools) for code, pools in groups.items()),
        key=lambda g: (-g.count, g.code),
    )
    generation = meta.get("generation")
    return Explanation(
        key=f"{meta.get('namespace')}/{meta.get('name')}",
        phase=str(status.get("phase") or "Pending (no status yet)"),
        generation_current=generation is None or status.get("observedGeneration") == generation,
        placement=placement,
        previous_placement=status.get("previousPlacement"),
        budget_ms=budget,
        preferred_tiers=list((spec.get("tiers") or {}).get("preferred") or []),
        alternatives=alternatives,
        rejected=rejected,
        candidates_omitted=int(status.get("candidatesOmitted") or 0),
        hint=status.get("hint"),
        message=status.get("message"),
        conditions=list(status.get("conditions") or []),
        events=events_about(events, str(meta.get("name")), meta.get("uid")),
    )


def worker_lines(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """``Deployment name: ready/desired ready`` for the workload's rendered workers."""
    out = []
    for obj in objects:
        st = obj.get("status") or {}
        desired = (obj.get("spec") or {}).get("replicas", 1)
        pool = ((obj.get("metadata") or {}).get("labels") or {}).get("continuum.dev/pool", "?")
        out.append(
            f"{obj.get('kind')} {obj['metadata']['name']} on pool {pool}: {st.get('readyReplicas', 0)}/{desired} ready"
        )
    return out


def _ms(v: Any) -> str:
    return f"{v:g} ms" if isinstance(v, (int, float)) else "-"


def render_text(x: Explanation) -> str:
    lines = [f"{x.key}: {x.phase}"]
    if not x.generation_current:
        lines.append(
            "  (the status is for an older generation of the spec: the operator has not caught up yet)"
        )
    if x.placement:
        p = x.placement
        lines.append(
            f"  placed on pool {p.get('pool')} ({p.get('tier')} at {p.get('site')}): "
            f"{_ms(p.get('estimatedLatencyMs'))} of a {_ms(x.budget_ms)} budget, "
            f"{p.get('wanMbps', 0):g} Mbps over the WAN, {p.get('hourlyCost', 0):.4g}/h"
        )
    if x.previous_placement:
        lines.append(f"  moving from pool {x.previous_placement.get('pool')} (make-before-break)")
    if x.preferred_tiers:
        lines.append(f"  preferred tiers: {', '.join(x.preferred_tiers)}")
    if x.message:
        lines.append(f"  {x.message}")
    lines.append("")
    if x.alternatives:
        lines.append(
            f"Feasible alternatives, in the order the operator would choose them ({len(x.alternatives)}):"
        )
        for i, a in enumerate(x.alternatives, 1):
            slack = f", {a.latency_slack_ms:g} ms to spare" if a.latency_slack_ms is not None else ""
            cost = f", {a.hourly_cost:.4g}/h" if a.hourly_cost is not None else ""
            lines.append(f"  {i}. {a.pool} ({a.tier}): {_ms(a.estimated_latency_ms)}{slack}{cost}")
    else:
        lines.append("Feasible alternatives: none")
    lines.append("")
    if x.rejected:
        lines.append("Rejected pools by reason:")
        for g in x.rejected:
            lines.append(f"  {g.code} ({g.count}):")
            for pool, message in g.pools[:5]:
                lines.append(f"    {pool}: {message}")
            if len(g.pools) > 5:
                lines.append(f"    … {len(g.pools) - 5} more")
    if x.candidates_omitted:
        lines.append(f"  ({x.candidates_omitted} more pools evaluated but not listed in the status)")
    if x.hint:
        lines += ["", f"Hint: {x.hint}"]
    if x.conditions:
        lines += ["", "Conditions:"]
        for c in x.conditions:
            lines.append(
                f"  {c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}".rstrip(
                    ": "
                )
            )
    if x.workers:
        lines += ["", "Workers:"] + [f"  {w}" for w in x.workers]
    lines += ["", f"Events (newest first, up to {MAX_EVENTS}):" if x.events else "Events: none"]
    for e in x.events:
        times = f" (×{e.count})" if e.count > 1 else ""
        lines.append(f"  {e.time}  {e.type:<8} {e.reason:<16} {e.message}{times}")
    return "\n".join(lines) + "\n"


# --- edge ------------------------------------------------------------------------------------------


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "explain",
        help="why a workload sits where it does, from a live cluster (kubeconfig)",
        description="Read an EdgeWorkload, its Events and its workers from the cluster and explain the "
        "placement: the decision, ranked alternatives, rejected pools by reason, the hint, recent Events. "
        "Exit 0: shown; 1: not found, or the cluster could not be read.",
    )
    p.add_argument("target", metavar="NAMESPACE/NAME")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig path (default: $KUBECONFIG, then ~/.kube/config)"
    )
    return p


async def _fetch(namespace: str, name: str, kubeconfig: str | None) -> tuple[Any, list[Any], list[Any]]:
    import logging
    import os

    import kopf

    from continuum.controller.kube import KubeApi

    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings(), logger=logging.getLogger("continuum"))
    if info is None:
        raise LookupError("no kubeconfig: set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config")
    api = KubeApi.from_connection_info(info)
    try:
        workload = await api.get("continuum.dev/v1alpha1", "EdgeWorkload", name, namespace)
        if workload is None:
            return None, [], []
        events = await api.request(
            "GET",
            f"/api/v1/namespaces/{namespace}/events",
            params={"fieldSelector": f"involvedObject.kind=EdgeWorkload,involvedObject.name={name}"},
        )
        workers = []
        for kind in ("Deployment", "StatefulSet"):
            workers += await api.list(
                "apps/v1", kind, namespace, label_selector=f"continuum.dev/workload={name}"
            )
        return workload, list(events.get("items") or []), workers
    finally:
        await api.close()


def cmd_explain(args: argparse.Namespace) -> int:
    import asyncio

    namespace, sep, name = args.target.partition("/")
    if not sep or not namespace or not name:
        print(f"error: {args.target!r}: expected NAMESPACE/NAME", file=sys.stderr)
        return EXIT_ERROR
    try:
        workload, events, workers = asyncio.run(_fetch(namespace, name, args.kubeconfig))
    except Exception as exc:  # the edge: name the failure, never a traceback
        print(f"error: cannot read the cluster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if workload is None:
        print(f"error: EdgeWorkload {namespace}/{name} not found", file=sys.stderr)
        return EXIT_ERROR
    result = explain(workload, events)
    result.workers = worker_lines(workers)
    if args.output == "json":
        print(json.dumps(asdict(result), indent=2, default=str))
    else:
        sys.stdout.write(render_text(result))
    return EXIT_OK
