"""Rollout gates: decide promote / roll back / wait from what the workers count per model version. Pure.

A gate decides only on enough evidence, pooled over the wave's sites (counts are summed: a site with
1 request/s adds what it has), with Wald's sequential probability ratio test (SPRT), truncated:

* **Error rate, candidate vs stable** (:class:`ErrorGate`). Given the requests each version served, an
  error is the candidate's with probability ``θ = n_c·p_c / (n_c·p_c + n_s·p_s)``. The test is on that
  attribution, so the unknown (and per-site different) base error rate cancels: H0 (good) ``p_c = p_s``
  gives ``θ0 = n_c / (n_c + n_s)``, H1 (bad) ``p_c = ratio·p_s`` gives ``θ1 = ratio·n_c / (ratio·n_c + n_s)``.
  Each window's errors add ``e_c·log(θ1/θ0) + e_s·log((1-θ1)/(1-θ0))`` to the log likelihood ratio, with
  the window's own traffic split (the canary weight may change between windows).
* **p99 latency relative to the stable version** (:func:`latency_verdict`): the p99 of the candidate's
  and of the stable version's latency histograms (buckets pooled over the wave's sites, interpolated as
  Prometheus' ``histogram_quantile``); once both versions have ``latency_min_samples`` samples (1,000 by
  default: at least ten beyond the p99, so one stall does not decide), a candidate
  above ``latency_ratio × stable p99 + latency_slack_seconds`` is rolled back. Not sequential: a
  threshold on the pooled tail, checked at every window from then on.
* **Disagreement with the stable version** (:class:`AgreementGate`, shadowed requests: top-1 for
  classifiers, relative error over a tolerance for regressors): a one-sample binomial SPRT of
  H0 ``d = d0`` against H1 ``d = d1``.
* **Drift of the candidate's outputs** (optional, :class:`DriftSettings`): the workers score each version's
  windows against its reference profile (docs/drift.md). In shadow and canary both versions see the same
  inputs, so a candidate window whose *outputs* drift while the stable version's at that site do not is
  the candidate's doing. Each scored candidate window of the step (pooled over the wave's sites; windows
  where the stable's outputs drift too are not counted: the site's inputs moved both) is one trial of a
  binomial SPRT: H0 a fraction ``good`` of them drifts (the worker's false-positive rate per window at its
  default thresholds is about 1 %), H1 a fraction ``bad``. It rolls back like the others; it holds a step
  until it can promote only when ``required`` (windows close every minute at best and need 1,000 rows, so a
  quiet site may give none in a step).

Wald's boundaries ``A = log((1-β)/(α/k))`` (roll back; α is split over the k gates that can roll back)
and ``B = log(β/(1-α))`` (promote) bound the false-rollback rate by about α and the false-promote rate (for a
candidate at H1 or worse) by about β.
No promotion before ``min_samples`` candidate requests (three clean requests promote nothing); at
``max_samples`` candidate requests a gate that has not crossed either boundary decides by the side of
zero its log likelihood ratio is on (the rollout neither stalls forever nor waits for errors that a
good version at a low base rate does not make). The rates actually reached, with that truncation, are
measured by :func:`simulate` (``bench/gate.py``, ``tests/fleet/test_gate.py``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np


class Verdict(enum.StrEnum):
    CONTINUE = "Continue"  # not enough evidence yet
    PROMOTE = "Promote"
    ROLLBACK = "Rollback"


@dataclass(frozen=True)
class DriftSettings:
    good: float = 0.01  # H0: this fraction of a good candidate's scored windows drift on the outputs
    bad: float = 0.5  # H1: this fraction of a bad one's do
    required: bool = False  # a step waits until the drift gate can promote (else it only rolls back)

    def __post_init__(self) -> None:
        if not 0 < self.good < self.bad < 1:
            raise ValueError("need 0 < drift good < drift bad < 1")


@dataclass(frozen=True)
class GateSettings:
    alpha: float = 0.03  # false rollback (a good candidate rolled back): Wald bound, measured: docs/fleet.md
    beta: float = 0.03  # false promote (a candidate at the bad hypothesis promoted): likewise
    error_ratio: float = 2.0  # bad: the candidate's error rate is this many times the stable's
    disagreement_good: float = 0.01  # H0 of the agreement gate: 1 % of shadowed answers differ
    disagreement_bad: float = 0.05  # H1: 5 % differ
    min_samples: int = 500  # candidate requests before anything is promoted
    # candidate requests after which a gate decides by its LLR's sign (at 50,000, 5.1-5.7 % of good candidates
    # were rolled back at a 0.1 % base error rate in bench/gate.py; 1.8 % at most at 100,000)
    max_samples: int = 100_000
    latency_ratio: float = 1.5  # bad: candidate p99 above this many times the stable p99 (+ the slack)
    latency_slack_seconds: float = 0.005  # absolute slack on the latency limit (sub-ms models jitter)
    latency_min_samples: int = 1000  # per version before p99 is compared: >= 10 samples beyond the p99
    drift: DriftSettings | None = None  # the drift gate, when configured

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError("alpha and beta must be in (0, 0.5)")
        if self.error_ratio <= 1:
            raise ValueError("error_ratio must be > 1")
        if not 0 < self.disagreement_good < self.disagreement_bad < 1:
            raise ValueError("need 0 < disagreement_good < disagreement_bad < 1")
        if not 0 < self.min_samples <= self.max_samples:
            raise ValueError("need 0 < min_samples <= max_samples")
        if self.latency_ratio <= 1 or self.latency_slack_seconds < 0 or self.latency_min_samples < 1:
            raise ValueError("need latency_ratio > 1, latency_slack_seconds >= 0, latency_min_samples >= 1")

    @property
    def upper(self) -> float:
        return self.upper_for(1)

    def upper_for(self, gates: int) -> float:
        """The roll-back boundary when ``gates`` gates can each roll back: alpha is split between them
        (Bonferroni), so a good candidate is rolled back by any of them with probability about alpha."""
        return math.log((1 - self.beta) / (self.alpha / gates))

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))


@dataclass(frozen=True)
class Histogram:
    """Latency samples in seconds: cumulative counts at the finite upper bounds ``le`` (ascending) and
    ``count`` samples in all (the +Inf bucket)."""

    le: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    count: int = 0

    def __post_init__(self) -> None:
        if len(self.le) != len(self.counts):
            raise ValueError("le and counts differ in length")

    def __add__(self, other: Histogram) -> Histogram:
        if not other.count and not other.le:
            return self
        if not self.count and not self.le:
            return other
        bounds = tuple(sorted(set(self.le) | set(other.le)))
        counts = tuple(self.at(b) + other.at(b) for b in bounds)
        return Histogram(bounds, counts, self.count + other.count)

    def at(self, bound: float) -> int:
        """Samples at or below ``bound`` (a bound this histogram lacks: the next lower one's count)."""
        below = 0
        for le, count in zip(self.le, self.counts, strict=True):
            if le > bound:
                break
            below = count
        return below

    def minus(self, earlier: Histogram) -> Histogram:
        """The samples since ``earlier`` (same process): per-bucket differences, never below zero."""
        bounds = tuple(sorted(set(self.le) | set(earlier.le)))
        counts = tuple(max(0, self.at(b) - earlier.at(b)) for b in bounds)
        return Histogram(bounds, counts, max(0, self.count - earlier.count))

    def quantile(self, q: float) -> float:
        """Prometheus' ``histogram_quantile``: linear within the bucket holding rank q·count; in the +Inf
        bucket, the highest finite bound. NaN without samples."""
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        lower, below = 0.0, 0
        for le, count in zip(self.le, self.counts, strict=True):
            if count >= rank:
                inside = count - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, count
        return self.le[-1] if self.le else math.nan


@dataclass(frozen=True)
class Window:
    """What the wave's sites counted in one window, summed over the sites."""

    stable_requests: int
    stable_errors: int
    candidate_requests: int
    candidate_errors: int
    shadow_compared: int = 0  # shadowed requests whose answers were compared
    shadow_disagreed: int = 0
    stable_latency: Histogram = Histogram()
    candidate_latency: Histogram = Histogram()
    drift_windows: int = 0  # scored candidate windows (the stable's outputs not drifting too)
    drift_drifted: int = 0  # of them, windows whose outputs drifted

    def __add__(self, other: Window) -> Window:
        return Window(
            self.stable_requests + other.stable_requests,
            self.stable_errors + other.stable_errors,
            self.candidate_requests + other.candidate_requests,
            self.candidate_errors + other.candidate_errors,
            self.shadow_compared + other.shadow_compared,
            self.shadow_disagreed + other.shadow_disagreed,
            self.stable_latency + other.stable_latency,
            self.candidate_latency + other.candidate_latency,
            self.drift_windows + other.drift_windows,
            self.drift_drifted + other.drift_drifted,
        )


@dataclass(frozen=True)
class GateState:
    """The evidence so far (kept in the set's status between windows, so a restart loses nothing)."""

    error_llr: float = 0.0
    agreement_llr: float = 0.0
    candidate_requests: int = 0
    shadow_compared: int = 0
    stable_latency: Histogram = Histogram()  # pooled over the wave's sites and the step's windows
    candidate_latency: Histogram = Histogram()
    drift_llr: float = 0.0
    drift_windows: int = 0
    drift_drifted: int = 0


def error_increment(window: Window, ratio: float) -> float:
    """The error gate's log likelihood ratio contributed by one window."""
    n_c, n_s = window.candidate_requests, window.stable_requests
    if n_c <= 0 or n_s <= 0 or window.candidate_errors + window.stable_errors == 0:
        return 0.0
    theta0 = n_c / (n_c + n_s)
    theta1 = ratio * n_c / (ratio * n_c + n_s)
    return window.candidate_errors * math.log(theta1 / theta0) + window.stable_errors * math.log(
        (1 - theta1) / (1 - theta0)
    )


def agreement_increment(window: Window, d0: float, d1: float) -> float:
    k, n = window.shadow_disagreed, window.shadow_compared
    return k * math.log(d1 / d0) + (n - k) * math.log((1 - d1) / (1 - d0))


def drift_increment(window: Window, drift: DriftSettings) -> float:
    """The drift gate's log likelihood ratio from one window's scored candidate windows."""
    k, n = window.drift_drifted, window.drift_windows
    return k * math.log(drift.bad / drift.good) + (n - k) * math.log((1 - drift.bad) / (1 - drift.good))


def observe(state: GateState, window: Window, settings: GateSettings) -> GateState:
    drift = settings.drift
    return GateState(
        error_llr=state.error_llr + error_increment(window, settings.error_ratio),
        agreement_llr=state.agreement_llr
        + agreement_increment(window, settings.disagreement_good, settings.disagreement_bad),
        candidate_requests=state.candidate_requests + window.candidate_requests,
        shadow_compared=state.shadow_compared + window.shadow_compared,
        stable_latency=state.stable_latency + window.stable_latency,
        candidate_latency=state.candidate_latency + window.candidate_latency,
        drift_llr=state.drift_llr + (drift_increment(window, drift) if drift is not None else 0.0),
        drift_windows=state.drift_windows + window.drift_windows,
        drift_drifted=state.drift_drifted + window.drift_drifted,
    )


def drift_verdict(state: GateState, settings: GateSettings, upper: float) -> Verdict:
    """The drift SPRT: ROLLBACK at ``upper``, PROMOTE at the lower boundary, else CONTINUE (no truncation:
    without scored windows there is no evidence either way; a gate that is not ``required`` never holds a
    step, see :func:`decide`)."""
    if state.drift_llr >= upper:
        return Verdict.ROLLBACK
    if state.drift_llr <= settings.lower and state.drift_windows:
        return Verdict.PROMOTE
    return Verdict.CONTINUE


def latency_verdict(state: GateState, settings: GateSettings) -> tuple[Verdict, str]:
    """ROLLBACK when both versions have ``latency_min_samples`` latency samples (a p99 from a few dozen
    requests is their maximum: one stall of the machine would decide) and the candidate's p99 is above
    ``latency_ratio × stable p99 + latency_slack_seconds``; PROMOTE when it is not (or when the workers
    report no latency at all: nothing to gate on); CONTINUE while either has too few samples."""
    stable, candidate = state.stable_latency, state.candidate_latency
    if not candidate.count:
        return Verdict.PROMOTE, "no candidate latency measured (shadow copies are not timed)"
    if min(stable.count, candidate.count) < settings.latency_min_samples:
        return Verdict.CONTINUE, "collecting latency samples"
    p_s, p_c = stable.quantile(0.99), candidate.quantile(0.99)
    limit = settings.latency_ratio * p_s + settings.latency_slack_seconds
    text = f"candidate p99 {p_c:.4f} s, stable p99 {p_s:.4f} s (limit {limit:.4f} s)"
    if p_c > limit:
        return Verdict.ROLLBACK, "latency gate: " + text
    return Verdict.PROMOTE, text


def _one(llr: float, samples: int, settings: GateSettings, upper: float) -> Verdict:
    if llr >= upper:
        return Verdict.ROLLBACK  # no minimum: clear evidence of harm acts at once
    if samples >= settings.max_samples:
        return Verdict.ROLLBACK if llr > 0 else Verdict.PROMOTE
    if llr <= settings.lower and samples >= settings.min_samples:
        return Verdict.PROMOTE
    return Verdict.CONTINUE


def decide(
    state: GateState, settings: GateSettings, agreement: bool, errors: bool = True
) -> tuple[Verdict, str]:
    """Roll back when any gate says so; promote when every gate (agreement only with ``agreement``, the
    error gate only with ``errors``) and the latency check do. A shadow step gates on agreement alone:
    the worker does not count shadow copies as the candidate's requests (a candidate error in a shadow
    copy is a disagreement), docs/rollout-protocol.md."""
    if not (agreement or errors):
        raise ValueError("decide needs the error gate, the agreement gate or both")
    drift = settings.drift
    upper = settings.upper_for(int(agreement) + int(errors) + int(drift is not None))
    verdicts = {}
    if errors:
        verdicts["errors"] = _one(state.error_llr, state.candidate_requests, settings, upper)
    if agreement:
        verdicts["agreement"] = _one(state.agreement_llr, state.shadow_compared, settings, upper)
    for name, verdict in verdicts.items():
        if verdict is Verdict.ROLLBACK:
            llr = state.error_llr if name == "errors" else state.agreement_llr
            return Verdict.ROLLBACK, f"{name} gate: log likelihood ratio {llr:.2f} (bad at {upper:.2f})"
    drifted = drift_verdict(state, settings, upper) if drift is not None else Verdict.PROMOTE
    if drifted is Verdict.ROLLBACK:
        return Verdict.ROLLBACK, (
            f"drift gate: {state.drift_drifted} of {state.drift_windows} scored candidate windows drifted on "
            f"the outputs where the stable version's did not: log likelihood ratio {state.drift_llr:.2f} "
            f"(bad at {upper:.2f})"
        )
    latency, why = latency_verdict(state, settings)
    if latency is Verdict.ROLLBACK:
        return latency, why
    drift_ok = drift is None or not drift.required or drifted is Verdict.PROMOTE
    if all(v is Verdict.PROMOTE for v in verdicts.values()) and latency is Verdict.PROMOTE and drift_ok:
        return Verdict.PROMOTE, "every gate passed"
    if drift is not None and drift.required and not drift_ok:
        return (
            Verdict.CONTINUE,
            f"collecting evidence (drift: {state.drift_windows} scored candidate windows)",
        )
    return Verdict.CONTINUE, "collecting evidence"


# --- simulation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationResult:
    promoted: float  # fraction of runs promoted
    rolled_back: float
    undecided: float  # fraction still undecided at the horizon
    median_seconds: float  # median time to a decision (decided runs)
    p95_seconds: float


def simulate(
    *,
    rate_per_site: float,
    sites: int,
    weight: float,
    stable_error: float,
    candidate_error: float,
    settings: GateSettings,
    disagreement: float | None = None,
    window_seconds: float = 10.0,
    horizon_seconds: float = 24 * 3600.0,
    runs: int = 2000,
    seed: int = 0,
) -> SimulationResult:
    """Many rollouts of one wave, vectorized: each window draws Poisson arrivals per site (summed: the
    pooling), splits them by ``weight`` (``weight`` 1.0 = shadow: both versions see every request),
    draws errors and disagreements, updates the gates and applies :func:`decide`'s rule."""
    rng = np.random.default_rng(seed)
    use_agreement = disagreement is not None
    upper, lower = settings.upper_for(2 if use_agreement else 1), settings.lower
    err_llr = np.zeros(runs)
    agr_llr = np.zeros(runs)
    n_cand = np.zeros(runs)
    n_shadow = np.zeros(runs)
    decided = np.zeros(runs, dtype=np.int8)  # 0 undecided, 1 promoted, -1 rolled back
    when = np.full(runs, np.nan)
    steps = int(horizon_seconds // window_seconds)
    ratio = settings.error_ratio
    for step in range(1, steps + 1):
        live = decided == 0
        if not live.any():
            break
        arrivals = rng.poisson(rate_per_site * sites * window_seconds, runs)
        if weight >= 1.0:  # shadow: the candidate answers a copy of every request
            n_c = arrivals
            n_s = arrivals
        else:
            n_c = rng.binomial(arrivals, weight)
            n_s = arrivals - n_c
        e_c = rng.binomial(n_c, candidate_error)
        e_s = rng.binomial(n_s, stable_error)
        with np.errstate(divide="ignore", invalid="ignore"):
            theta0 = n_c / (n_c + n_s)
            theta1 = ratio * n_c / (ratio * n_c + n_s)
            inc = e_c * np.log(theta1 / theta0) + e_s * np.log((1 - theta1) / (1 - theta0))
        ok = (n_c > 0) & (n_s > 0) & ((e_c + e_s) > 0)
        err_llr = err_llr + np.where(ok & live, inc, 0.0)
        n_cand = n_cand + np.where(live, n_c, 0)
        if use_agreement:
            assert disagreement is not None
            compared = n_c if weight >= 1.0 else np.zeros(runs, dtype=np.int64)
            k = rng.binomial(compared, disagreement)
            d0, d1 = settings.disagreement_good, settings.disagreement_bad
            agr_llr = agr_llr + np.where(
                live, k * math.log(d1 / d0) + (compared - k) * math.log((1 - d1) / (1 - d0)), 0
            )
            n_shadow = n_shadow + np.where(live, compared, 0)

        def one(llr: np.ndarray, samples: np.ndarray) -> np.ndarray:
            out = np.zeros(runs, dtype=np.int8)
            truncated = samples >= settings.max_samples
            out[(llr <= lower) & (samples >= settings.min_samples)] = 1
            out[truncated] = np.where(llr[truncated] > 0, -1, 1)
            out[llr >= upper] = -1
            return out

        verdict = one(err_llr, n_cand)
        if use_agreement:
            other = one(agr_llr, n_shadow)
            verdict = np.where(
                (verdict == -1) | (other == -1), -1, np.where((verdict == 1) & (other == 1), 1, 0)
            )
        newly = live & (verdict != 0)
        decided[newly] = verdict[newly]
        when[newly] = step * window_seconds
    done = decided != 0
    times = when[done]
    return SimulationResult(
        promoted=float(np.mean(decided == 1)),
        rolled_back=float(np.mean(decided == -1)),
        undecided=float(np.mean(decided == 0)),
        median_seconds=float(np.median(times)) if times.size else math.nan,
        p95_seconds=float(np.percentile(times, 95)) if times.size else math.nan,
    )
