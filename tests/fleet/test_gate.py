"""The rollout gate: a truncated SPRT over pooled per-version counts; its error rates by simulation."""

from __future__ import annotations

import math

import pytest
from continuum.rollout.gate import (
    GateSettings,
    GateState,
    Verdict,
    Window,
    decide,
    error_increment,
    observe,
    simulate,
)

SETTINGS = GateSettings()


def test_errors_attributed_to_the_candidate_raise_the_evidence_and_the_stables_lower_it() -> None:
    even = Window(stable_requests=900, stable_errors=0, candidate_requests=100, candidate_errors=1)
    assert error_increment(even, 2.0) == pytest.approx(math.log((2 * 100 / 1000 * 1000 / 1100) / 0.1))
    assert error_increment(Window(900, 9, 100, 0), 2.0) < 0
    assert error_increment(Window(900, 0, 100, 0), 2.0) == 0  # no error: no evidence either way
    assert error_increment(Window(0, 0, 100, 3), 2.0) == 0  # nothing to compare with


def test_three_clean_requests_promote_nothing_but_clear_harm_rolls_back_at_once() -> None:
    clean = observe(GateState(), Window(1000, 30, 3, 0), SETTINGS)
    assert decide(clean, SETTINGS, agreement=False)[0] is Verdict.CONTINUE
    state = GateState(error_llr=SETTINGS.lower - 1, candidate_requests=SETTINGS.min_samples - 1)
    assert decide(state, SETTINGS, agreement=False)[0] is Verdict.CONTINUE  # below the minimum sample
    state = GateState(error_llr=SETTINGS.lower - 1, candidate_requests=SETTINGS.min_samples)
    assert decide(state, SETTINGS, agreement=False)[0] is Verdict.PROMOTE
    harm = observe(GateState(), Window(100, 0, 100, 13), SETTINGS)  # 13 errors of 13 are the candidate's
    verdict, reason = decide(harm, SETTINGS, agreement=False)
    assert verdict is Verdict.ROLLBACK and reason.startswith("errors gate")


def test_every_gate_must_pass_and_any_can_roll_back() -> None:
    passed = GateState(error_llr=-10, agreement_llr=-10, candidate_requests=10**4, shadow_compared=10**4)
    assert decide(passed, SETTINGS, agreement=True)[0] is Verdict.PROMOTE
    disagreeing = GateState(error_llr=-10, agreement_llr=10, candidate_requests=10**4, shadow_compared=10**4)
    verdict, reason = decide(disagreeing, SETTINGS, agreement=True)
    assert verdict is Verdict.ROLLBACK and reason.startswith("agreement gate")
    waiting = GateState(error_llr=-10, agreement_llr=0, candidate_requests=10**4, shadow_compared=10)
    assert decide(waiting, SETTINGS, agreement=True)[0] is Verdict.CONTINUE


def test_at_the_sample_cap_the_gate_decides_by_the_side_its_evidence_is_on() -> None:
    cap = SETTINGS.max_samples
    assert decide(GateState(error_llr=0.3, candidate_requests=cap), SETTINGS, False)[0] is Verdict.ROLLBACK
    assert decide(GateState(error_llr=-0.3, candidate_requests=cap), SETTINGS, False)[0] is Verdict.PROMOTE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.6},
        {"beta": 0},
        {"error_ratio": 1.0},
        {"disagreement_good": 0.1, "disagreement_bad": 0.05},
        {"min_samples": 10, "max_samples": 5},
    ],
)
def test_settings_are_checked(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        GateSettings(**kwargs)


@pytest.mark.parametrize("rate", [1.0, 10.0, 100.0])
@pytest.mark.parametrize("weight", [1.0, 0.1], ids=["shadow", "canary10"])
def test_false_promote_and_false_rollback_rates_at_most_5_percent(rate: float, weight: float) -> None:
    """A wave of 10 sites, stable error rate 1 %; good = the same, bad = twice the errors (docs/fleet.md)."""
    common = {
        "rate_per_site": rate,
        "sites": 10,
        "weight": weight,
        "stable_error": 0.01,
        "settings": SETTINGS,
        "runs": 800,
        "horizon_seconds": 4 * 3600.0,
        "seed": 7,
    }
    good = simulate(candidate_error=0.01, **common)
    bad = simulate(candidate_error=0.02, **common)
    assert good.rolled_back <= 0.05 and good.undecided == 0, good
    assert bad.promoted <= 0.05 and bad.undecided == 0, bad
    if rate >= 10:
        assert good.p95_seconds <= 600 and bad.p95_seconds <= 600  # minutes, not hours, at 10 req/s per site
