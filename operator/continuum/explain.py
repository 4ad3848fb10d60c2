"""``continuum explain NS/NAME``: why a running workload sits where it does, from a live cluster.

Pure core: :func:`explain` reads an EdgeWorkload object (as the API returns it) and the Events about
it, and returns an :class:`Explanation`: the decision, the ranked feasible alternatives (the
operator writes them to ``status.candidates`` in the order it would choose them), the rejected pools
grouped by reason code, the hint, the conditions and the most recent Events. :func:`render_text`
prints it. The edge (:func:`cmd_explain`) logs in with the kubeconfig (kopf's own kubeconfig login,
as ``continuum run`` does) and reads the workload, its Events and its worker Deployment/StatefulSet.

``continuum explain ews/NS/NAME`` explains an EdgeWorkloadSet the same way (:func:`explain_set`,
:func:`render_set_text`): the sites selected/placed/unschedulable/ready, each site's child (phase, tier,
pool, model version, readiness, drift), the children per version, the rollout (phase, wave, step, the
gate's evidence and verdict, the cause, deferred sites), conditions and the set's Events.
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


def events_about(
    events: Sequence[Mapping[str, Any]], name: str, uid: str | None, kind: str = "EdgeWorkload"
) -> list[EventLine]:
    """The Events whose involvedObject (or regarding) is this object (an EdgeWorkload unless ``kind``
    says otherwise), newest first."""
    mine = []
    for e in events:
        obj = e.get("involvedObject") or e.get("regarding") or {}
        if obj.get("kind") != kind or obj.get("name") != name:
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
    p.add_argument(
        "target",
        metavar="[ews/]NAMESPACE/NAME",
        help="an EdgeWorkload, or with ews/ (edgeworkloadset/) an EdgeWorkloadSet: its sites, versions and rollout",
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig path (default: $KUBECONFIG, then ~/.kube/config)"
    )
    return p


def _connect(kubeconfig: str | None) -> Any:
    """A KubeApi from the kubeconfig (``--kubeconfig``, KUBECONFIG or ~/.kube/config), as kopf logs in."""
    import logging
    import os

    import kopf

    from continuum.controller.kube import KubeApi

    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings(), logger=logging.getLogger("continuum"))
    if info is None:
        raise LookupError("no kubeconfig: set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config")
    return KubeApi.from_connection_info(info)


async def _fetch(namespace: str, name: str, kubeconfig: str | None) -> tuple[Any, list[Any], list[Any]]:
    api = _connect(kubeconfig)
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

    target = args.target
    kind, sep, rest = target.partition("/")
    if sep and rest.count("/") == 1:  # KIND/NAMESPACE/NAME
        if kind.lower() in SET_KINDS:
            namespace, _, name = rest.partition("/")
            if namespace and name:
                return cmd_explain_set(namespace, name, args)
        elif kind.lower() in WORKLOAD_KINDS:
            target = rest
        else:
            print(f"error: {args.target!r}: unknown kind {kind!r} (ews or ew)", file=sys.stderr)
            return EXIT_ERROR
    namespace, sep, name = target.partition("/")
    if not sep or not namespace or not name or "/" in name:
        print(f"error: {args.target!r}: expected NAMESPACE/NAME or ews/NAMESPACE/NAME", file=sys.stderr)
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


# --- EdgeWorkloadSets: `continuum explain ews/NAMESPACE/NAME` ---------------------------------------------

SET_KINDS = ("ews", "edgeworkloadset", "edgeworkloadsets")
WORKLOAD_KINDS = ("ew", "edgeworkload", "edgeworkloads")
LABEL_SET, LABEL_SITE = "continuum.dev/set", "continuum.dev/site"


@dataclass(frozen=True)
class SiteLine:
    site: str
    child: str
    phase: str
    tier: str | None
    pool: str | None
    version: str | None
    ready: bool
    drift: float | None  # the child's status.drift.score
    drifting: bool
    deferred: bool  # named in status.rollout.waves[].deferred: its worker has not confirmed the step


@dataclass
class SetExplanation:
    key: str
    generation_current: bool
    sites: int
    placed: int
    unschedulable: int
    ready: int
    invalid: int
    versions: list[Mapping[str, Any]]  # status.versions: version, sites, placed, ready
    children: list[SiteLine]
    deferred: list[str]  # the rollout's deferred sites (status.rollout.waves[].deferred)
    rollout: Mapping[str, Any] | None
    message: str | None
    conflicts: list[str]
    unmatched_overrides: list[str]
    conditions: list[Mapping[str, Any]]
    events: list[EventLine]


def explain_set(
    ews: Mapping[str, Any],
    children: Sequence[Mapping[str, Any]] = (),
    events: Sequence[Mapping[str, Any]] = (),
) -> SetExplanation:
    """An EdgeWorkloadSet (as the API returns it), its children and the Events about it: the counts, every
    site's child (phase, tier, pool, version, readiness, drift), the versions and the rollout."""
    meta = ews.get("metadata") or {}
    status = ews.get("status") or {}
    uid = meta.get("uid")
    deferred = sorted(
        {s for w in (status.get("rollout") or {}).get("waves") or [] for s in w.get("deferred") or []}
    )
    lines = []
    for child in children:
        cmeta = child.get("metadata") or {}
        owners = cmeta.get("ownerReferences") or []
        if uid and owners and not any(r.get("uid") == uid and r.get("controller") for r in owners):
            continue  # a same-named set's leftover, or someone else's
        cst = child.get("status") or {}
        placement = cst.get("placement") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in cst.get("conditions") or []
        )
        drift = cst.get("drift") or {}
        site = str((cmeta.get("labels") or {}).get(LABEL_SITE) or cmeta.get("name"))
        lines.append(
            SiteLine(
                site=site,
                child=str(cmeta.get("name")),
                phase=str(cst.get("phase") or "Pending"),
                tier=placement.get("tier"),
                pool=placement.get("pool"),
                version=((child.get("spec") or {}).get("model") or {}).get("version"),
                ready=ready,
                drift=drift.get("score"),
                drifting=bool(drift.get("drifting")),
                deferred=site in deferred,
            )
        )
    lines.sort(key=lambda line: line.site)
    generation = meta.get("generation")
    return SetExplanation(
        key=f"{meta.get('namespace')}/{meta.get('name')}",
        generation_current=generation is None or status.get("observedGeneration") == generation,
        sites=int(status.get("sites") or 0),
        placed=int(status.get("placed") or 0),
        unschedulable=int(status.get("unschedulable") or 0),
        ready=int(status.get("ready") or 0),
        invalid=int(status.get("invalid") or 0),
        versions=list(status.get("versions") or []),
        children=lines,
        deferred=deferred,
        rollout=status.get("rollout"),
        message=status.get("message"),
        conflicts=list(status.get("conflicts") or []),
        unmatched_overrides=list(status.get("unmatchedOverrides") or []),
        conditions=list(status.get("conditions") or []),
        events=events_about(events, str(meta.get("name")), uid, kind="EdgeWorkloadSet"),
    )


def _model(ref: Any) -> str:
    return f"{ref.get('version')} ({ref.get('uri')})" if isinstance(ref, Mapping) else "-"


def _rollout_lines(r: Mapping[str, Any]) -> list[str]:
    lines = [f"Rollout: {r.get('phase', 'Stable')}"]
    lines.append(f"  stable: {_model(r.get('stable'))}")
    if r.get("candidate"):
        lines.append(f"  candidate: {_model(r.get('candidate'))}")
    if r.get("waveName"):
        step = f"step {int(r.get('step') or 0) + 1} ({r.get('stepKind')})"
        since = f", since {r['stepStartedAt']}" if r.get("stepStartedAt") else ""
        lines.append(f"  at wave {int(r.get('wave') or 0) + 1} ({r.get('waveName')}), {step}{since}")
    if r.get("cause"):
        lines.append(f"  cause: {r['cause']}")
    waves = r.get("waves") or []
    if waves:
        lines.append("  waves (sites running the candidate / sites):")
        for i, w in enumerate(waves):
            marker = "→" if r.get("waveName") and i == r.get("wave") else " "
            text = f"   {marker} {w.get('name')}: {w.get('done', 0)}/{w.get('sites', 0)}"
            if w.get("deferred"):
                text += f", deferred: {', '.join(w['deferred'])}"
            lines.append(text)
    g = r.get("gate") or {}
    if r.get("waveName") and g:
        lines.append("  gate evidence (this step, pooled over the wave's sites):")
        if g.get("verdict"):
            lines.append(f"    verdict: {g['verdict']}")
        lines.append(
            f"    errors: log likelihood ratio {float(g.get('errorLlr') or 0):.2f} over "
            f"{g.get('candidateRequests', 0)} candidate requests"
        )
        lines.append(
            f"    agreement: log likelihood ratio {float(g.get('agreementLlr') or 0):.2f} over "
            f"{g.get('shadowCompared', 0)} compared answers"
        )
        for side in ("stable", "candidate"):
            hist = g.get(f"{side}Latency") or {}
            if hist.get("count"):
                lines.append(f"    {side} latency: {hist['count']} samples")
        if g.get("driftWindows") or g.get("driftLlr"):
            lines.append(
                f"    drift: {g.get('driftDrifted', 0)} of {g.get('driftWindows', 0)} scored candidate windows "
                f"drifted on the outputs, log likelihood ratio {float(g.get('driftLlr') or 0):.2f}"
            )
        if g.get("driftLast"):
            lines.append(f"    last drifted window: {g['driftLast']}")
    for name, what in (("reverting", "back to the stable version"), ("promoting", "the promoted version")):
        if r.get(name):
            lines.append(f"  not yet confirmed {what}: {', '.join(r[name])}")
    return lines


def render_set_text(x: SetExplanation) -> str:
    lines = [
        f"{x.key}: {x.sites} sites selected, {x.placed} placed, {x.unschedulable} unschedulable, "
        f"{x.ready} ready" + (f", {x.invalid} invalid" if x.invalid else "")
    ]
    if not x.generation_current:
        lines.append(
            "  (the status is for an older generation of the spec: the operator has not caught up yet)"
        )
    if x.message:
        lines.append(f"  {x.message}")
    if x.versions:
        lines.append(
            "  versions: "
            + "; ".join(
                f"{v.get('version')}: {v.get('sites', 0)} sites, {v.get('placed', 0)} placed, "
                f"{v.get('ready', 0)} ready"
                for v in x.versions
            )
        )
    lines += ["", f"Sites ({len(x.children)}):" if x.children else "Sites: no child found"]
    if x.children:
        width = max(len(c.site) for c in x.children)
        for c in x.children:
            where = f"{c.tier} on pool {c.pool}" if c.pool else "-"
            drift = ""
            if c.drift is not None:
                drift = f", drift {c.drift:g}" + (" (drifting)" if c.drifting else "")
            lines.append(
                f"  {c.site:<{width}}  {c.phase:<13} {where}, version {c.version or '-'}, "
                f"{'ready' if c.ready else 'not ready'}{drift}" + (", rollout deferred" if c.deferred else "")
            )
    if x.deferred:
        lines.append(
            f"  deferred by the rollout (worker has not confirmed its step): {', '.join(x.deferred)}"
        )
    if x.conflicts:
        lines.append(f"  names held by EdgeWorkloads this set does not own: {', '.join(x.conflicts)}")
    if x.unmatched_overrides:
        lines.append(f"  overrides name sites not selected: {', '.join(x.unmatched_overrides)}")
    if x.rollout:
        lines += ["", *_rollout_lines(x.rollout)]
    if x.conditions:
        lines += ["", "Conditions:"]
        for cond in x.conditions:
            text = f"  {cond.get('type')}={cond.get('status')} {cond.get('reason', '')}: {cond.get('message', '')}"
            lines.append(text.rstrip(": "))
    lines += ["", f"Events (newest first, up to {MAX_EVENTS}):" if x.events else "Events: none"]
    for e in x.events:
        times = f" (×{e.count})" if e.count > 1 else ""
        lines.append(f"  {e.time}  {e.type:<8} {e.reason:<16} {e.message}{times}")
    return "\n".join(lines) + "\n"


async def _fetch_set(namespace: str, name: str, kubeconfig: str | None) -> tuple[Any, list[Any], list[Any]]:
    api = _connect(kubeconfig)
    try:
        ews = await api.get("continuum.dev/v1alpha1", "EdgeWorkloadSet", name, namespace)
        if ews is None:
            return None, [], []
        children = await api.list(
            "continuum.dev/v1alpha1", "EdgeWorkload", namespace, label_selector=f"{LABEL_SET}={name}"
        )
        events = await api.request(
            "GET",
            f"/api/v1/namespaces/{namespace}/events",
            params={"fieldSelector": f"involvedObject.kind=EdgeWorkloadSet,involvedObject.name={name}"},
        )
        return ews, list(children), list(events.get("items") or [])
    finally:
        await api.close()


def cmd_explain_set(namespace: str, name: str, args: argparse.Namespace) -> int:
    import asyncio

    try:
        ews, children, events = asyncio.run(_fetch_set(namespace, name, args.kubeconfig))
    except Exception as exc:  # the edge: name the failure, never a traceback
        print(f"error: cannot read the cluster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if ews is None:
        print(f"error: EdgeWorkloadSet {namespace}/{name} not found", file=sys.stderr)
        return EXIT_ERROR
    result = explain_set(ews, children, events)
    if args.output == "json":
        print(json.dumps(asdict(result), indent=2, default=str))
    else:
        sys.stdout.write(render_set_text(result))
    return EXIT_OK
