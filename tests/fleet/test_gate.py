"""The rollout gate: a truncated SPRT over pooled per-version counts; its error rates by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from continuum.rollout.gate import (
    DriftSettings,
    GateSettings,
    GateState,
    Histogram,
    Verdict,
    Window,
    decide,
    error_increment,
    latency_verdict,
    observe,
    simulate,
)
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("rate", [10.0, 100.0])
def test_at_a_low_base_error_rate_the_sample_cap_keeps_both_rates_at_most_5_percent(rate: float) -> None:
    """Stable error rate 0.1 %: few errors, so many rollouts reach the cap, where the evidence's sign decides.
    With the cap at 50,000 requests a good candidate was rolled back in 5.1 % of shadow rollouts; the default
    is 100,000 (docs/fleet.md)."""
    common = {
        "rate_per_site": rate,
        "sites": 10,
        "weight": 1.0,
        "stable_error": 0.001,
        "settings": SETTINGS,
        "runs": 800,
        "horizon_seconds": 4 * 3600.0,
        "seed": 7,
        "disagreement": 0.01,
    }
    good = simulate(candidate_error=0.001, **common)
    bad = simulate(candidate_error=0.002, **common)
    assert good.rolled_back <= 0.05 and good.undecided == 0, good
    assert bad.promoted <= 0.05 and bad.undecided == 0, bad


# --- p99 latency relative to the stable version -------------------------------------------------------

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


def hist(samples: list[float]) -> Histogram:
    return Histogram(BOUNDS, tuple(sum(1 for s in samples if s <= b) for b in BOUNDS), len(samples))


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    h = Histogram((0.01, 0.1), (50, 100), 100)
    assert h.quantile(0.5) == pytest.approx(0.01)
    assert h.quantile(0.75) == pytest.approx(0.01 + 0.09 * 0.5)
    assert math.isnan(Histogram().quantile(0.99))
    assert Histogram((0.01,), (10,), 20).quantile(0.99) == 0.01  # in +Inf: the highest finite bound
    # pooling and differences
    a, b = hist([0.002] * 10), hist([0.02] * 5)
    assert (a + b).count == 15 and (a + b).at(0.0025) == 10 and (a + b).at(0.025) == 15
    assert (a + b).minus(a) == Histogram(BOUNDS, b.counts, 5)


def test_latency_gate_rolls_back_a_slower_candidate_once_both_have_enough_samples() -> None:
    s = GateSettings(min_samples=100, latency_min_samples=100)
    fast, slow = hist([0.002] * 200), hist([0.02] * 200)
    assert latency_verdict(GateState(stable_latency=fast, candidate_latency=fast), s)[0] is Verdict.PROMOTE
    verdict, why = latency_verdict(GateState(stable_latency=fast, candidate_latency=slow), s)
    assert verdict is Verdict.ROLLBACK and why.startswith("latency gate: candidate p99")
    few = hist([0.02] * 50)
    assert latency_verdict(GateState(stable_latency=fast, candidate_latency=few), s)[0] is Verdict.CONTINUE
    # shadow copies are not timed: no candidate latency gates nothing
    assert latency_verdict(GateState(stable_latency=fast), s)[0] is Verdict.PROMOTE
    # the slack absorbs sub-millisecond jitter
    slightly = hist([0.004] * 200)
    assert (
        latency_verdict(GateState(stable_latency=fast, candidate_latency=slightly), s)[0] is Verdict.PROMOTE
    )
    # decide: the error gate promotes, the latency gate still rolls back
    state = GateState(
        error_llr=s.lower - 1, candidate_requests=200, stable_latency=fast, candidate_latency=slow
    )
    assert decide(state, s, agreement=False)[0] is Verdict.ROLLBACK
    state = GateState(
        error_llr=s.lower - 1, candidate_requests=200, stable_latency=fast, candidate_latency=fast
    )
    assert decide(state, s, agreement=False) == (Verdict.PROMOTE, "every gate passed")


def test_shadow_decides_on_agreement_alone() -> None:
    s = GateSettings(min_samples=10, max_samples=20)
    state = GateState(agreement_llr=-1.0, shadow_compared=25)  # no candidate requests in shadow
    assert decide(state, s, agreement=True, errors=False)[0] is Verdict.PROMOTE
    assert decide(state, s, agreement=True)[0] is Verdict.CONTINUE  # the error gate would wait forever
    with pytest.raises(ValueError):
        decide(state, s, agreement=False, errors=False)


# --- the drift gate ------------------------------------------------------------------------------------


PASSED = GateState(agreement_llr=-10.0, shadow_compared=1000)  # the agreement gate alone would promote


def _drift(windows: int, drifted: int, **kw: object) -> tuple[GateState, GateSettings]:
    s = GateSettings(min_samples=10, max_samples=20, drift=DriftSettings(**kw))  # type: ignore[arg-type]
    return observe(PASSED, Window(0, 0, 0, 0, drift_windows=windows, drift_drifted=drifted), s), s


def test_candidate_windows_drifting_on_the_outputs_roll_back() -> None:
    state, s = _drift(2, 2)
    verdict, why = decide(state, s, agreement=True, errors=False)
    assert verdict is Verdict.ROLLBACK
    assert why.startswith("drift gate: 2 of 2 scored candidate windows drifted on the outputs")
    assert state.drift_llr == pytest.approx(2 * math.log(0.5 / 0.01))
    one, _ = _drift(1, 1)  # one window is not enough evidence at the defaults (α split over two gates)
    assert decide(one, s, agreement=True, errors=False)[0] is Verdict.PROMOTE  # and it does not hold the step


def test_a_required_drift_gate_holds_the_step_until_clean_windows_pass_it() -> None:
    state, s = _drift(0, 0, required=True)
    verdict, why = decide(state, s, agreement=True, errors=False)
    assert verdict is Verdict.CONTINUE and "drift: 0 scored candidate windows" in why
    few, _ = _drift(4, 0, required=True)
    assert decide(few, s, agreement=True, errors=False)[0] is Verdict.CONTINUE  # llr -2.7 > lower -3.48
    enough, _ = _drift(6, 0, required=True)
    assert decide(enough, s, agreement=True, errors=False) == (Verdict.PROMOTE, "every gate passed")
    with pytest.raises(ValueError):
        DriftSettings(good=0.5, bad=0.1)


@settings(max_examples=200, deadline=None)
@given(
    windows=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=20),
    required=st.booleans(),
)
def test_drift_evidence_adds_up_and_clean_windows_never_roll_back(
    windows: list[tuple[int, int]], required: bool
) -> None:
    """However the scored windows arrive, the evidence is the sum of the windows' (the SPRT is additive);
    a candidate none of whose windows drifted is never rolled back by it; a step that is not required never
    waits for it."""
    s = GateSettings(min_samples=10, max_samples=20, drift=DriftSettings(required=required))
    state = PASSED
    total_n = total_k = 0
    for n, k in windows:
        k = min(k, n)
        state = observe(state, Window(0, 0, 0, 0, drift_windows=n, drift_drifted=k), s)
        total_n, total_k = total_n + n, total_k + k
    assert (state.drift_windows, state.drift_drifted) == (total_n, total_k)
    assert state.drift_llr == pytest.approx(
        total_k * math.log(0.5 / 0.01) + (total_n - total_k) * math.log(0.5 / 0.99)
    )
    verdict, _ = decide(state, s, agreement=True, errors=False)
    if total_k == 0:
        assert verdict is not Verdict.ROLLBACK
        if not required:
            assert verdict is Verdict.PROMOTE
    # rolled back exactly when the evidence crossed the boundary (alpha split over agreement and drift)
    assert (verdict is Verdict.ROLLBACK) == (state.drift_llr >= s.upper_for(2))
    if total_k >= 2 and total_n == total_k:
        assert verdict is Verdict.ROLLBACK  # two windows, both drifting: enough at the defaults


@pytest.mark.parametrize("p", [0.01, 0.5])
def test_drift_gate_error_rates_by_simulation(p: float) -> None:
    """Scored windows one at a time until the required drift gate decides: a good candidate (1 % of its
    windows drift: the worker's false-positive rate) is rolled back in at most α of the runs, a bad one
    (half drift) promoted in at most β."""
    s = GateSettings(min_samples=10, max_samples=20, drift=DriftSettings(required=True))
    rng = np.random.default_rng(7)
    runs, rolled, promoted = 2000, 0, 0
    for _ in range(runs):
        state = PASSED
        for _ in range(200):
            hit = int(rng.random() < p)
            state = observe(state, Window(0, 0, 0, 0, drift_windows=1, drift_drifted=hit), s)
            verdict, _ = decide(state, s, agreement=True, errors=False)
            if verdict is not Verdict.CONTINUE:
                rolled += verdict is Verdict.ROLLBACK
                promoted += verdict is Verdict.PROMOTE
                break
    if p == 0.01:
        assert rolled / runs <= s.alpha
    else:
        assert promoted / runs <= s.beta
