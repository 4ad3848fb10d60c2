"""Placement benchmark: batch solver vs an exact ILP (scipy/HiGHS) and vs per-workload greedy.

    .venv/bin/python bench/placement.py [--quick] [--no-write]

In one run, on generated tight-capacity instances (5 nodes per pool):
* throughput: build (static rules, vectorized) + solve for 1k×100 and 10k×1000, and the full
  decide_batch with per-pool explanations for 1k×100;
* quality: placed count, preference-rank sum and hourly cost against the ILP optimum (300×30 and
  1000×100) and against greedy in arrival order (what kube-scheduler does); the speed ratio to the ILP.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from continuum.placement import decide_batch
from continuum.placement.problem import build_problem, greedy_in_order, objective, violations
from continuum.placement.solver import solve
from rich.console import Console
from rich.table import Table

from bench.ilp import solve_ilp
from bench.instances import generate
from bench.report import machine, markdown_table, write_section


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--ilp-seconds", type=float, default=120.0)
    args = parser.parse_args()
    console = Console(width=150)

    speed_sizes = [(1000, 100)] if args.quick else [(1000, 100), (10000, 1000)]
    speed_rows = []
    for n_w, n_p in speed_sizes:
        snapshot, requests = generate(n_w, n_p, seed=42)
        problem, t_build = timed(build_problem, requests, snapshot)
        assignment, t_solve = timed(solve, problem)
        assert violations(problem, assignment) == []
        explained = "-"
        if n_w <= 1000:
            _, t_full = timed(decide_batch, requests, snapshot)
            explained = f"{t_full:.2f} s ({n_w / t_full:,.0f}/s)"
        total = t_build + t_solve
        speed_rows.append(
            [
                f"{n_w:,} × {n_p:,}",
                f"{len(problem.cand_pool):,}",
                f"{t_build:.2f} s",
                f"{t_solve:.2f} s",
                f"{total:.2f} s",
                f"{n_w / total:,.0f}",
                explained,
            ]
        )
        console.print(f"speed {n_w}x{n_p}: build {t_build:.2f}s solve {t_solve:.2f}s")

    quality_sizes = [(300, 30)] if args.quick else [(300, 30), (1000, 100)]
    quality_rows = []
    for n_w, n_p in quality_sizes:
        snapshot, requests = generate(n_w, n_p, seed=7)
        problem = build_problem(requests, snapshot)
        ours, t_ours = timed(solve, problem)
        greedy, t_greedy = timed(greedy_in_order, problem)
        exact = solve_ilp(problem, time_limit=args.ilp_seconds)
        o, g, e = objective(problem, ours), objective(problem, greedy), objective(problem, exact.assignment)
        for label, obj, secs in (
            ("batch solver", o, t_ours),
            ("greedy in arrival order", g, t_greedy),
            ("ILP (HiGHS)" + ("" if exact.optimal else ", time limit"), e, exact.seconds),
        ):
            quality_rows.append(
                [
                    f"{n_w:,} × {n_p:,}",
                    label,
                    f"{obj.placed} ({obj.placed - e.placed:+d})",
                    f"{obj.rank} ({obj.rank - e.rank:+d})",
                    f"{obj.cost:.2f} ({(obj.cost / e.cost - 1) * 100:+.2f} %)",
                    f"{secs:.3f} s",
                    f"{exact.seconds / secs:,.0f}×" if label == "batch solver" else "-",
                ]
            )
        console.print(f"quality {n_w}x{n_p}: ours {o} greedy {g} ilp {e} optimal={exact.optimal}")

    headers_speed = [
        "workloads × pools",
        "candidate pairs",
        "build",
        "solve",
        "total",
        "decisions/s",
        "decide_batch with explanations",
    ]
    headers_quality = [
        "instance",
        "method",
        "placed (vs ILP)",
        "rank sum (vs ILP)",
        "cost/h (vs ILP)",
        "time",
        "ILP time / ours",
    ]
    for title, headers, rows in (
        ("Throughput (one core)", headers_speed, speed_rows),
        ("Quality against the exact optimum", headers_quality, quality_rows),
    ):
        table = Table(title=title, header_style="bold")
        for h in headers:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if not args.no_write:
        body = (
            "## Placement (`bench/placement.py`)\n\n"
            f"Machine: {machine('numpy', 'scipy', 'pydantic')}.{' Quick run.' if args.quick else ''}\n\n"
            "Generated tight-capacity instances (`bench/instances.py`: sites, four tiers with RTTs, regions, a privacy "
            "mix, GPUs, WAN limits, 5 nodes per pool, CPU demand ≈ 1.05 × capacity). The objective is lexicographic: "
            "placed count, then the sum of preference ranks, then hourly cost.\n\n"
            + markdown_table(headers_speed, speed_rows)
            + "\n\n"
            + markdown_table(headers_quality, quality_rows)
            + "\n"
        )
        write_section("placement", body)
        console.print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
