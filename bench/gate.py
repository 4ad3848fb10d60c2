"""The rollout gate's false-promote and false-rollback rates, by simulation (`python -m bench.gate`).

Each row simulates many rollouts of one wave (:func:`continuum.rollout.gate.simulate`): Poisson arrivals
per site summed over the wave (the pooling), a shadow step (the candidate answers a copy of every request,
and its answers are compared with the stable version's) or a canary step (10 % of requests), errors drawn
at the stable and candidate rates, 10 s windows. A *good* candidate has the stable's error rate (and, in
shadow, disagrees on 1 % of answers); a *bad* one has twice the errors (or, second table, disagrees on
5 %). False rollback = good candidates rolled back; false promote = bad candidates promoted.
"""

from __future__ import annotations

import argparse
import time

from continuum.rollout.gate import GateSettings, simulate


def rows(runs: int, seed: int) -> list[str]:
    settings = GateSettings()
    out = [
        f"Settings: alpha={settings.alpha}, beta={settings.beta}, error ratio (bad) {settings.error_ratio}, "
        f"disagreement good {settings.disagreement_good} / bad {settings.disagreement_bad}, "
        f"min {settings.min_samples} / max {settings.max_samples} candidate requests; {runs} rollouts per row.",
        "",
        "| req/s per site | sites in the wave | step | stable errors | false rollback | false promote "
        "| decision p50 / p95 (good) | decision p50 / p95 (bad) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cases = [
        (rate, sites, weight, base)
        for base in (0.01, 0.001)
        for sites in (10, 1)
        for rate in (1.0, 10.0, 100.0)
        for weight in (1.0, 0.1)
    ]
    for rate, sites, weight, base in cases:
        common = {
            "rate_per_site": rate,
            "sites": sites,
            "weight": weight,
            "stable_error": base,
            "settings": settings,
            "runs": runs,
            "seed": seed,
            "horizon_seconds": 24 * 3600.0,
            "disagreement": 0.01 if weight >= 1.0 else None,
        }
        good = simulate(candidate_error=base, **common)
        bad = simulate(candidate_error=2 * base, **common)
        step = "shadow" if weight >= 1.0 else f"canary {weight:.0%}"
        out.append(
            f"| {rate:g} | {sites} | {step} | {base:.1%} | {good.rolled_back:.1%} "
            f"({good.undecided:.0%} undecided) | {bad.promoted:.1%} ({bad.undecided:.0%} undecided) "
            f"| {good.median_seconds:.0f} / {good.p95_seconds:.0f} s | {bad.median_seconds:.0f} / {bad.p95_seconds:.0f} s |"
        )
    out += ["", "Disagreement (shadow, errors equal, bad = 5 % of answers differ):", ""]
    out += ["| req/s per site | sites | false promote | decision p50 / p95 |", "|---|---|---|---|"]
    for rate in (1.0, 10.0, 100.0):
        bad = simulate(
            rate_per_site=rate, sites=10, weight=1.0, stable_error=0.01, candidate_error=0.01,
            disagreement=0.05, settings=settings, runs=runs, seed=seed,
        )  # fmt: skip
        out.append(
            f"| {rate:g} | 10 | {bad.promoted:.1%} | {bad.median_seconds:.0f} / {bad.p95_seconds:.0f} s |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated rollouts per row")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print("\n".join(rows(args.runs, args.seed)))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
