"""``continuum plan``: decide placements offline from manifests and explain them (GitOps review).

Exit codes: 0 every workload placed, 2 some unschedulable, 1 invalid input (the message names the
file, the document and the field).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field

from continuum.api.models import Candidate, Phase, StatusModel, Tier

if TYPE_CHECKING:
    from continuum.api.loader import Manifests
    from continuum.placement.snapshot import ClusterSnapshot, Resources

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNSCHEDULABLE = 2


class PlanPlacement(StatusModel):
    """One workload's decision and its explanation (``candidates``: the pools shown)."""

    namespace: str
    name: str
    phase: Phase
    pool: str | None = None
    tier: Tier | None = None
    site: str | None = None
    estimated_latency_ms: float | None = None
    wan_mbps: float | None = None
    hourly_cost: float | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    rejected_by_reason: dict[str, int] = Field(
        default_factory=dict,
        description="Pools rejected per reason code, over every pool (one pool may count under two codes)",
    )
    candidates_omitted: int = Field(default=0, description="Pools evaluated but not listed in candidates")
    feasible_pools: int = Field(default=0, description="Pools that could host it, over every pool")
    hint: str | None = None


class PlanSummary(StatusModel):
    workloads: int
    placed: int
    unschedulable: int
    hourly_cost: float
    pools: int = 0


class PlanOptimality(StatusModel):
    """How good the batch plan is known to be (lexicographic: placed count, then rank sum, then cost)."""

    method: str = Field(description="highs: checked by the exact solver; heuristic: not checked")
    proven: bool = Field(description="No plan places more, then ranks better, then costs less")
    placed_bound: int | None = Field(default=None, description="No plan places more workloads than this")
    cost_gap: float | None = Field(
        default=None, description="Relative gap between the plan's cost and HiGHS's bound (0: optimal)"
    )
    seconds: float = 0.0
    improved: bool = Field(default=False, description="The exact solver improved on the heuristic's plan")
    summary: str = ""


class PlanDocument(StatusModel):
    """What ``continuum plan -o json`` prints (camelCase, by the models' own serialisation)."""

    schema_version: int = 2
    placements: list[PlanPlacement] = Field(default_factory=list)
    summary: PlanSummary
    optimality: PlanOptimality | None = None
    conflicts: dict[str, list[str]] = Field(default_factory=dict)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``plan`` sub-command's arguments (``sub``: the CLI's subparsers)."""
    plan = sub.add_parser(
        "plan",
        help="decide placements offline from manifests (GitOps review)",
        description="Read Node, Pod, EdgeNodePool and EdgeWorkload manifests and print the placement decisions "
        "(Pods: what already runs, e.g. `kubectl get pods -A -o yaml`; their requests are not free capacity). "
        "Exit 0: all placed; 2: some unschedulable; 1: invalid input.",
    )
    plan.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        required=True,
        metavar="PATH",
        help="file or folder of YAML (repeatable)",
    )
    plan.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml", "markdown"),
        default="table",
        help="json is indented up to 1,000 workloads and compact beyond (pipe it through jq to read it)",
    )
    plan.add_argument(
        "--baseline",
        action="append",
        metavar="OLD",
        help="show what changes against OLD: a previous `-o json` plan, or the manifests (files/folders, "
        "repeatable) of the target branch; -o markdown renders it for a PR comment (continuum.plandiff)",
    )
    plan.add_argument(
        "--report",
        metavar="FILE.html",
        help="also write a self-contained HTML report with plots (continuum.report)",
    )
    plan.add_argument(
        "--solver",
        choices=("batch", "in-order"),
        default="batch",
        help="batch: all workloads at once (default); in-order: one at a time in file order, as a "
        "per-pod scheduler would",
    )
    plan.add_argument(
        "--optimize-seconds",
        type=float,
        default=None,
        metavar="S",
        help="batch: up to S seconds for the exact solver (HiGHS) to improve the heuristic's plan and prove "
        f"it optimal or bound its gap (0: heuristic only; default {DEFAULT_OPTIMIZE_S:g} s when the batch has "
        f"at most {AUTO_EXACT_PAIRS:,} candidate (workload, pool) pairs, about 300 workloads × 30 pools, and 0 "
        "beyond: there a second does not even bound the count)",
    )
    plan.add_argument(
        "--explain",
        nargs="?",
        const="",
        default=None,
        metavar="NS/NAME",
        help="table output: list the rejected pools shown with their reasons; with NS/NAME: every pool "
        "for that one workload (table and JSON), whatever the number of pools",
    )
    plan.add_argument(
        "--all-candidates",
        action="store_true",
        help=f"list every pool for every workload (default only up to {SHOW_ALL_POOLS} pools; beyond, each "
        "workload lists its chosen pool, feasible alternatives and the nearest misses per reason, with counts)",
    )
    return plan


def snapshot_of(manifests: Manifests) -> ClusterSnapshot:
    """The cluster as placement sees it: nodes matched to pools, minus what the given Pods request
    (the operator's rule, :func:`continuum.placement.snapshot.pod_holds`)."""
    from continuum.api.loader import ManifestError
    from continuum.placement.snapshot import ZERO, build_snapshot, pod_holds

    requested: dict[str, Resources] = {}
    problems = []
    for pod, origin in zip(manifests.pods, manifests.pod_origins, strict=True):
        try:
            held = pod_holds(pod)
        except ValueError as exc:
            problems.append(f"{origin}: {exc}")
            continue
        if held is not None:
            requested[held[0]] = requested.get(held[0], ZERO) + held[1]
    if problems:
        raise ManifestError(problems)
    return build_snapshot(manifests.pools, manifests.nodes, requested)


SCHEMA_VERSION = 2  # 1: the unversioned document before rejectedByReason/candidatesOmitted
SHOW_ALL_POOLS = 50  # up to this many pools every pool is listed per workload by default
INDENTED_UP_TO = 1000  # -o json is indented up to this many workloads, compact beyond
DEFAULT_OPTIMIZE_S = 1.0  # seconds for HiGHS to improve and check the batch plan
# Without --optimize-seconds, HiGHS runs only up to this many candidate pairs: at 300 × 30 (1-2 k pairs) a
# second proves the count and finds the one more placement the heuristic misses on some instances; at
# 1,000 × 100 (11-14 k pairs) a second gives no bound at all (5 s: the count only), so it would only add
# a second to every plan.
AUTO_EXACT_PAIRS = 5_000


def plan_document(
    paths: Sequence[str],
    solver: str = "batch",
    all_candidates: bool | None = None,
    explain: str | None = None,
    alternatives: int = 3,
    misses_per_reason: int = 2,
    optimize_seconds: float | None = 0.0,
) -> PlanDocument:
    """The plan for manifests at ``paths`` (raises ManifestError on invalid input).

    Each workload lists every pool when there are at most :data:`SHOW_ALL_POOLS` (or ``all_candidates``);
    otherwise its chosen pool, up to ``alternatives`` feasible others, and per reason code the
    ``misses_per_reason`` nearest misses, with ``rejectedByReason`` counts and ``candidatesOmitted``.
    ``explain`` (``namespace/name``) lists every pool for that workload whatever the size. With the batch
    solver and ``optimize_seconds`` > 0, HiGHS improves the heuristic's plan within that budget and says
    whether it is proven optimal (``optimality``); None: :data:`DEFAULT_OPTIMIZE_S` up to
    :data:`AUTO_EXACT_PAIRS` candidate pairs, else none (what the CLI does by default)."""
    from continuum.api.loader import ManifestError, load_manifests
    from continuum.placement import decide_batch, decide_in_order
    from continuum.placement.problem import WorkloadRequest

    manifests = load_manifests(paths)
    snapshot = snapshot_of(manifests)
    requests = [
        WorkloadRequest(w.key, w.spec, w.status.placement.pool if w.status and w.status.placement else None)
        for w in manifests.workloads
    ]
    if explain is not None and explain not in {r.key for r in requests}:
        raise ManifestError([f"--explain {explain}: no EdgeWorkload with that namespace/name in the input"])
    compact = (len(snapshot.pools) > SHOW_ALL_POOLS) if all_candidates is None else not all_candidates
    optimality: PlanOptimality | None = None
    if solver == "batch":
        from continuum.placement import exact
        from continuum.placement.solver import solve

        def solve_then_improve(problem: Any) -> Any:
            nonlocal optimality
            start = solve(problem)
            budget = optimize_seconds
            pairs = len(problem.cand_pool)
            if budget is None:
                budget = DEFAULT_OPTIMIZE_S if pairs <= AUTO_EXACT_PAIRS else 0.0
                note = f"{pairs:,} candidate pairs, more than {AUTO_EXACT_PAIRS:,}: --optimize-seconds S to check"
            else:
                note = "--optimize-seconds 0"
            if budget <= 0:
                optimality = _optimality(exact.heuristic_only(note))
                return start
            result = exact.improve(problem, start, budget_s=budget)
            optimality = _optimality(result.optimality)
            return result.assignment

        decisions = decide_batch(
            requests,
            snapshot,
            solver=solve_then_improve,
            compact=compact,
            alternatives=alternatives,
            misses_per_reason=misses_per_reason,
            full_for=(explain,) if explain else (),
        )
    else:
        decisions = decide_in_order(
            requests,
            snapshot,
            compact=compact,
            alternatives=alternatives,
            misses_per_reason=misses_per_reason,
            full_for=(explain,) if explain else (),
        )
    placements = []
    for d in decisions:
        namespace, _, name = d.key.partition("/")
        p = d.placement
        placements.append(
            PlanPlacement.model_construct(
                namespace=namespace,
                name=name,
                phase=d.phase,
                pool=p.pool if p else None,
                tier=p.tier if p else None,
                site=p.site if p else None,
                estimated_latency_ms=p.estimated_latency_ms if p else None,
                wan_mbps=p.wan_mbps if p else None,
                hourly_cost=p.hourly_cost if p else None,
                candidates=list(d.candidates),
                rejected_by_reason=dict(d.rejected_by_reason) or _count_reasons(d.candidates),
                candidates_omitted=d.candidates_omitted,
                feasible_pools=d.feasible_pools
                if d.feasible_pools is not None
                else sum(1 for c in d.candidates if c.feasible),
                hint=d.hint,
            )
        )
    placed = [x for x in placements if x.phase is Phase.PLACED]
    return PlanDocument.model_construct(
        schema_version=SCHEMA_VERSION,
        placements=placements,
        summary=PlanSummary.model_construct(
            workloads=len(placements),
            placed=len(placed),
            unschedulable=len(placements) - len(placed),
            hourly_cost=round(sum(x.hourly_cost or 0.0 for x in placed), 6),
            pools=len(snapshot.pools),
        ),
        conflicts={node: list(pools) for node, pools in sorted(snapshot.conflicts.items())},
        optimality=optimality,
    )


def _optimality(o: Any) -> PlanOptimality:
    return PlanOptimality.model_construct(
        method=o.method,
        proven=o.proven,
        placed_bound=o.placed_bound,
        cost_gap=None if o.cost_gap is None else round(o.cost_gap, 6),
        seconds=round(o.seconds, 3),
        improved=o.improved,
        summary=o.summary(),
    )


def _count_reasons(candidates: Sequence[Candidate]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in candidates:
        for code in dict.fromkeys(r.code.value for r in c.reasons):
            out[code] = out.get(code, 0) + 1
    return out


def plan_result(paths: Sequence[str], solver: str = "batch", **options: Any) -> dict[str, Any]:
    """The ``-o json`` document as plain data (see :func:`plan_document` for ``options``)."""
    return plan_document(paths, solver, **options).model_dump(mode="json", by_alias=True)


def _print_plan_table(result: dict[str, Any], explain: bool, only: str | None = None) -> None:
    """The plan as a table; then, per unschedulable workload (every workload with ``explain``, or only
    ``only``), the rejected pools shown with their reasons, the count of the others per reason, the hint."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title="Continuum placement plan", header_style="bold")
    for col, kw in (
        ("WORKLOAD", {"no_wrap": True}),
        ("PHASE", {"no_wrap": True}),
        ("TIER", {"no_wrap": True}),
        ("POOL", {"no_wrap": True}),
        ("LATENCY", {"justify": "right", "no_wrap": True}),
        ("WAN Mbps", {"justify": "right"}),
        ("COST/h", {"justify": "right"}),
        ("FEASIBLE", {"justify": "right"}),
    ):
        table.add_column(col, **kw)
    n_pools = result["summary"]["pools"]
    for row in result["placements"]:
        placed = row["phase"] == "Placed"
        table.add_row(
            f"{row['namespace']}/{row['name']}",
            f"[green]{row['phase']}[/]" if placed else f"[red]{row['phase']}[/]",
            row["tier"] or "-",
            row["pool"] or "-",
            f"{row['estimatedLatencyMs']:g} ms" if placed else "-",
            f"{row['wanMbps']:g}" if placed else "-",
            f"{row['hourlyCost']:.4g}" if placed else "-",
            f"{row['feasiblePools']}/{n_pools}",
        )
    console.print(table)
    for row in result["placements"]:
        key = f"{row['namespace']}/{row['name']}"
        if only is not None and key != only:
            continue
        if only is None and not explain and row["phase"] == "Placed":
            continue
        rejected = [c for c in row["candidates"] if not c["feasible"]]
        if not rejected and not row["candidatesOmitted"]:
            continue
        console.print(f"[bold]{key}[/] ({row['phase']}) rejected pools:")
        for cand in rejected:
            reasons = "; ".join(f"[yellow]{r['code']}[/] {r['message']}" for r in cand["reasons"])
            console.print(f"  {cand['pool']} ({cand['tier']}): {reasons}", highlight=False)
        if row["candidatesOmitted"]:
            counts = ", ".join(
                f"{code} {n}" for code, n in sorted(row["rejectedByReason"].items(), key=lambda x: -x[1])
            )
            console.print(
                f"  … {row['candidatesOmitted']} more pools not listed; rejected per reason: {counts} "
                f"(--explain {key} lists every pool)",
                highlight=False,
            )
        if row["hint"]:
            console.print(f"  [bold]hint:[/] {row['hint']}", highlight=False)
    summary = result["summary"]
    console.print(
        f"{summary['placed']}/{summary['workloads']} placed, {summary['unschedulable']} unschedulable, "
        f"total {summary['hourlyCost']:.4g}/h"
    )
    if result.get("optimality"):
        console.print(f"optimality: {result['optimality']['summary']}", highlight=False)
    for node, pools in result["conflicts"].items():
        console.print(
            f"[yellow]warning:[/] node {node} is selected by pools {', '.join(pools)} and joins neither"
        )


def cmd_plan(args: argparse.Namespace) -> int:
    import gc

    # A one-shot process allocating ~10 objects per (workload, shown pool) and freeing almost none: the
    # cyclic collector's passes over every live object (the imported modules included) were ~10 % of
    # its CPU at 1,000 × 100. The imports are frozen out of its scans and its passes made rarer.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)
    try:
        return _cmd_plan(args)
    finally:  # as it was (the tests call main() in their own process)
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _cmd_plan(args: argparse.Namespace) -> int:
    from continuum.api.loader import ManifestError

    explain_key = args.explain or None  # bare --explain: "" (rejected pools of every workload)
    try:
        doc = plan_document(
            args.paths,
            args.solver,
            all_candidates=True if args.all_candidates else None,
            explain=explain_key,
            optimize_seconds=args.optimize_seconds,
        )
    except ManifestError as exc:
        print("error: invalid input", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    code = EXIT_UNSCHEDULABLE if doc.summary.unschedulable else EXIT_OK
    if args.output == "json" and not (args.report or args.baseline):
        indent = 2 if doc.summary.workloads <= INDENTED_UP_TO else None  # big plans: compact, half the size
        sys.stdout.write(doc.model_dump_json(indent=indent, by_alias=True) + "\n")
        return code
    result = doc.model_dump(mode="json", by_alias=True)
    if args.report:
        from continuum.report import write_report_for

        if not write_report_for(args, result):
            return EXIT_INVALID
    if args.baseline or args.output == "markdown":
        from continuum.plandiff import run_diff

        return run_diff(args, result, code)
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(result, sort_keys=False), end="")
    else:
        _print_plan_table(result, args.explain is not None, explain_key)
    return code
