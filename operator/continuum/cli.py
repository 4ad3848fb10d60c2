"""``continuum``: plan placements offline, generate CRDs, run the operator, run the demo.

Exit codes of ``continuum plan``: 0 every workload placed, 2 some unschedulable, 1 invalid input
(the message names the file, the document and the field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from continuum import __version__

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNSCHEDULABLE = 2


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="continuum",
        description="Place AI workloads across device, near-edge, regional MEC and cloud; explain why.",
    )
    parser.add_argument("--version", action="version", version=f"continuum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = sub.add_parser(
        "plan",
        help="decide placements offline from manifests (GitOps review)",
        description="Read Node, EdgeNodePool and EdgeWorkload manifests and print the placement decisions. "
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
    plan.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
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

    crds = sub.add_parser("crds", help="generate the CustomResourceDefinitions from the API models")
    crds.add_argument("--out", type=Path, help="folder to write (default: print to stdout)")
    crds.add_argument("--chart", type=Path, help="also write the chart's copy under CHART/files/crds")
    crds.add_argument("--check", action="store_true", help="exit 1 if the files on disk differ")

    run = sub.add_parser("run", help="run the operator (kubeconfig or in-cluster)")
    run.add_argument(
        "--namespace",
        "-n",
        dest="namespaces",
        action="append",
        default=None,
        help="namespace to watch for EdgeWorkloads (repeatable; default: all) [CONTINUUM_NAMESPACES]",
    )
    run.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("CONTINUUM_METRICS_PORT", "9090") or 9090),
        help="Prometheus /metrics port, 0 to disable [CONTINUUM_METRICS_PORT]",
    )
    run.add_argument(
        "--liveness-port",
        type=int,
        default=int(_env("CONTINUUM_LIVENESS_PORT", "8080") or 8080),
        help="kopf liveness endpoint port, 0 to disable [CONTINUUM_LIVENESS_PORT]",
    )
    run.add_argument(
        "--peering",
        default=_env("CONTINUUM_PEERING"),
        help="kopf peering name for HA; unset: standalone [CONTINUUM_PEERING]",
    )
    run.add_argument(
        "--worker-image",
        default=_env("CONTINUUM_WORKER_IMAGE"),
        help="default worker image [CONTINUUM_WORKER_IMAGE]",
    )
    run.add_argument(
        "--grace-seconds",
        type=float,
        default=float(_env("CONTINUUM_GRACE_SECONDS", "60") or 60),
        help="how long a pool may be unhealthy before its workloads move [CONTINUUM_GRACE_SECONDS]",
    )
    run.add_argument(
        "--stabilization-seconds",
        type=float,
        default=float(_env("CONTINUUM_STABILIZATION_SECONDS", "300") or 300),
        help="how long a more preferred pool must stay feasible before fail-back "
        "[CONTINUUM_STABILIZATION_SECONDS]",
    )
    run.add_argument(
        "--resync-seconds",
        type=float,
        default=float(_env("CONTINUUM_RESYNC_SECONDS", "10") or 10),
        help="how often every workload and pool is re-evaluated (grace, fail-back, readiness) [CONTINUUM_RESYNC_SECONDS]",
    )
    run.add_argument(
        "--worker-url-template",
        default=_env("CONTINUUM_WORKER_URL_TEMPLATE", "http://{service}.{namespace}.svc:{port}"),
        help="where workers are asked for their state's sync health; outside the cluster e.g. "
        "http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy "
        "[CONTINUUM_WORKER_URL_TEMPLATE]",
    )
    run.add_argument(
        "--state-poll-seconds",
        type=float,
        default=float(_env("CONTINUUM_STATE_POLL_SECONDS", "30") or 30),
        help="how often workers with state are asked for their sync health [CONTINUUM_STATE_POLL_SECONDS]",
    )
    run.add_argument(
        "--kubeconfig", default=None, help="kubeconfig path (default: in-cluster, then $KUBECONFIG)"
    )
    run.add_argument("--verbose", "-v", action="store_true")

    demo = sub.add_parser(
        "demo",
        help="run the operator on the examples against an embedded API emulator (no cluster needed)",
    )
    demo.add_argument(
        "--keep-open",
        action="store_true",
        help="keep the emulator running at the end so kubectl can be used against it",
    )
    demo.add_argument(
        "--grace-seconds", type=float, default=3.0, help="re-placement grace period for the demo"
    )
    demo.add_argument("--examples", type=Path, default=None, help="examples folder (default: the repo's)")
    demo.add_argument("--no-live", action="store_true", help="plain output instead of a live table")
    return parser


# --- plan -------------------------------------------------------------------------------------------


def plan_result(paths: Sequence[str], solver: str = "batch") -> dict[str, Any]:
    """The ``-o json`` document for manifests at ``paths`` (raises ManifestError on invalid input)."""
    from continuum.api.loader import load_manifests
    from continuum.placement import build_snapshot, decide_batch, decide_in_order
    from continuum.placement.problem import WorkloadRequest

    manifests = load_manifests(paths)
    snapshot = build_snapshot(manifests.pools, manifests.nodes)
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
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(result, sort_keys=False), end="")
    else:
        _print_plan_table(result, args.explain)
    return EXIT_UNSCHEDULABLE if result["summary"]["unschedulable"] else EXIT_OK


# --- crds -------------------------------------------------------------------------------------------


def cmd_crds(args: argparse.Namespace) -> int:
    from continuum.api.crd import CHART_CRD_DIR, render_crds, write_crds

    rendered = render_crds()
    if args.check:
        stale = []
        for folder in [args.out or Path("crds")] + ([args.chart / CHART_CRD_DIR] if args.chart else []):
            for name, text in rendered.items():
                path = folder / name
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path))
        if stale:
            print(
                "error: CRDs drifted from the models; run `make crds`: " + ", ".join(stale), file=sys.stderr
            )
            return 1
        return 0
    if args.out is None and args.chart is None:
        print("---\n".join(rendered.values()), end="")
        return 0
    for path in write_crds(args.out or Path("crds"), args.chart):
        print(f"wrote {path}")
    return 0


# --- run / demo (need the operator / demo extras) -------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from continuum.controller.runner import RunOptions, run_operator

    namespaces = args.namespaces
    if namespaces is None and not args.all_namespaces:
        env = _env("CONTINUUM_NAMESPACES")
        namespaces = [n.strip() for n in env.split(",") if n.strip()] if env else None
    options = RunOptions(
        namespaces=None if args.all_namespaces else namespaces,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        peering=args.peering,
        worker_image=args.worker_image,
        grace_seconds=args.grace_seconds,
        stabilization_seconds=args.stabilization_seconds,
        kubeconfig=args.kubeconfig,
        verbose=args.verbose,
        resync_seconds=args.resync_seconds,
        worker_url_template=args.worker_url_template,
        state_poll_seconds=args.state_poll_seconds,
    )
    return run_operator(options)


def cmd_demo(args: argparse.Namespace) -> int:
    from continuum.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            keep_open=args.keep_open,
            grace_seconds=args.grace_seconds,
            examples=args.examples,
            live=not args.no_live,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"plan": cmd_plan, "crds": cmd_crds, "run": cmd_run, "demo": cmd_demo}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
