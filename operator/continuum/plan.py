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

if TYPE_CHECKING:
    from continuum.api.loader import Manifests
    from continuum.placement.snapshot import ClusterSnapshot, Resources

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNSCHEDULABLE = 2


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
    plan.add_argument("-o", "--output", choices=("table", "json", "yaml", "markdown"), default="table")
    plan.add_argument(
        "--baseline",
        action="append",
        metavar="OLD",
        help="show what changes against OLD: a previous `-o json` plan, or the manifests (files/folders, "
        "repeatable) of the target branch; -o markdown renders it for a PR comment (continuum.plandiff)",
    )
    plan.add_argument(
        "--solver",
        choices=("batch", "in-order"),
        default="batch",
        help="batch: all workloads at once (default); in-order: one at a time in file order, as a "
        "per-pod scheduler would",
    )
    plan.add_argument(
        "--explain", action="store_true", help="table output: list every rejected pool with reasons"
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


def plan_result(paths: Sequence[str], solver: str = "batch") -> dict[str, Any]:
    """The ``-o json`` document for manifests at ``paths`` (raises ManifestError on invalid input)."""
    from continuum.api.loader import load_manifests
    from continuum.placement import decide_batch, decide_in_order
    from continuum.placement.problem import WorkloadRequest

    manifests = load_manifests(paths)
    snapshot = snapshot_of(manifests)
    requests = [
        WorkloadRequest(w.key, w.spec, w.status.placement.pool if w.status and w.status.placement else None)
        for w in manifests.workloads
    ]
    decide = decide_batch if solver == "batch" else decide_in_order
    decisions = decide(requests, snapshot)
    placements = []
    for d in decisions:
        namespace, _, name = d.key.partition("/")
        p = d.placement
        placements.append(
            {
                "namespace": namespace,
                "name": name,
                "phase": d.phase.value,
                "pool": p.pool if p else None,
                "tier": p.tier.value if p else None,
                "site": p.site if p else None,
                "estimatedLatencyMs": p.estimated_latency_ms if p else None,
                "wanMbps": p.wan_mbps if p else None,
                "hourlyCost": p.hourly_cost if p else None,
                "candidates": [
                    {
                        "pool": c.pool,
                        "tier": c.tier.value,
                        "feasible": c.feasible,
                        "estimatedLatencyMs": c.estimated_latency_ms,
                        "hourlyCost": c.hourly_cost,
                        "reasons": [{"code": r.code.value, "message": r.message} for r in c.reasons],
                    }
                    for c in d.candidates
                ],
                "hint": d.hint,
            }
        )
    placed = [x for x in placements if x["phase"] == "Placed"]
    return {
        "placements": placements,
        "summary": {
            "workloads": len(placements),
            "placed": len(placed),
            "unschedulable": len(placements) - len(placed),
            "hourlyCost": round(sum(x["hourlyCost"] or 0.0 for x in placed), 6),
        },
        "conflicts": {node: list(pools) for node, pools in sorted(snapshot.conflicts.items())},
    }


def _print_plan_table(result: dict[str, Any], explain: bool) -> None:
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
    for row in result["placements"]:
        placed = row["phase"] == "Placed"
        feasible = sum(1 for c in row["candidates"] if c["feasible"])
        table.add_row(
            f"{row['namespace']}/{row['name']}",
            f"[green]{row['phase']}[/]" if placed else f"[red]{row['phase']}[/]",
            row["tier"] or "-",
            row["pool"] or "-",
            f"{row['estimatedLatencyMs']:g} ms" if placed else "-",
            f"{row['wanMbps']:g}" if placed else "-",
            f"{row['hourlyCost']:.4g}" if placed else "-",
            f"{feasible}/{len(row['candidates'])}",
        )
    console.print(table)
    for row in result["placements"]:
        if not explain and row["phase"] == "Placed":
            continue
        rejected = [c for c in row["candidates"] if not c["feasible"]]
        if not rejected:
            continue
        console.print(f"[bold]{row['namespace']}/{row['name']}[/] ({row['phase']}) rejected pools:")
        for cand in rejected:
            reasons = "; ".join(f"[yellow]{r['code']}[/] {r['message']}" for r in cand["reasons"])
            console.print(f"  {cand['pool']} ({cand['tier']}): {reasons}", highlight=False)
        if row["hint"]:
            console.print(f"  [bold]hint:[/] {row['hint']}", highlight=False)
    summary = result["summary"]
    console.print(
        f"{summary['placed']}/{summary['workloads']} placed, {summary['unschedulable']} unschedulable, "
        f"total {summary['hourlyCost']:.4g}/h"
    )
    for node, pools in result["conflicts"].items():
        console.print(
            f"[yellow]warning:[/] node {node} is selected by pools {', '.join(pools)} and joins neither"
        )


def cmd_plan(args: argparse.Namespace) -> int:
    from continuum.api.loader import ManifestError

    try:
        result = plan_result(args.paths, args.solver)
    except ManifestError as exc:
        print("error: invalid input", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    code = EXIT_UNSCHEDULABLE if result["summary"]["unschedulable"] else EXIT_OK
    if args.baseline or args.output == "markdown":
        from continuum.plandiff import run_diff

        return run_diff(args, result, code)
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(result, sort_keys=False), end="")
    else:
        _print_plan_table(result, args.explain)
    return code
