"""The rollout state machine (pure): waves, steps, gates, deferral, rollback, control fields; properties."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from continuum.api.models import ModelRef
from continuum.api.workloadset import (
    DriftGateSpec,
    EdgeWorkloadSetSpec,
    GateSpec,
    RolloutPhase,
    RolloutSpec,
    RolloutStatus,
    SiteBaseline,
    VersionCounters,
)
from continuum.rollout import gate
from continuum.rollout.machine import (
    REST,
    Observation,
    Outcome,
    Reading,
    SiteInfo,
    VersionDrift,
    advance,
    assign_waves,
    baseline_of,
    drift_trial,
    sites_to_read,
    wants_drift,
    window_between,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

T0 = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)
V4 = ModelRef(name="footfall", uri="http://models/footfall/4.onnx", version="4")
V5 = ModelRef(name="footfall", uri="http://models/footfall/5.onnx", version="5")
UID = "uid-1"

SITES = [
    SiteInfo("store-a", "device", {"continuum.dev/ring": "0"}),
    SiteInfo("store-b", "device", {"continuum.dev/ring": "1"}),
    SiteInfo("store-c", "device", {"continuum.dev/ring": "1"}),
    SiteInfo("mec", "regional-mec", {}),
]


def spec(**over: Any) -> RolloutSpec:
    raw: dict[str, Any] = {
        "waves": [
            {"name": "ring-0", "selector": {"matchLabels": {"continuum.dev/ring": "0"}}},
            {
                "name": "ring-1",
                "selector": {"matchLabels": {"continuum.dev/ring": "1"}},
                "maxUnavailableSites": 1,
            },
        ],
        "steps": [{"shadow": {}}, {"canary": {"weight": 20}}, {"full": {}}],
        "gate": {"minSamples": 20, "maxSamples": 40},
        "windowSeconds": 1,
    }
    raw.update(over)
    return RolloutSpec.model_validate(raw)


class Fleet:
    """Workers as the machine sees them: what they were last sent, and counters a test makes grow."""

    def __init__(self, sites: list[str], stable: str = "4") -> None:
        self.state = {
            s: {"mode": "stable", "generation": "", "candidate": None, "stable": stable, "instance": "i1"}
            for s in sites
        }
        self.counters: dict[str, dict[str, VersionCounters]] = {s: {} for s in sites}
        self.down: set[str] = set()

    def reading(self, site: str) -> Observation:
        if site in self.down:
            return "ConnectionError: down"
        s = self.state[site]
        return Reading(
            mode=s["mode"],
            generation=s["generation"],
            instance=s["instance"],
            stable_version=s["stable"],
            candidate_version=s["candidate"],
            versions={v: c.model_copy(deep=True) for v, c in self.counters[site].items()},
        )

    def apply(self, outcome: Outcome) -> None:
        for put in outcome.puts:
            if put.site in self.down:
                continue
            s, body = self.state[put.site], put.body
            if body.get("promote"):
                s.update(stable=s["candidate"], candidate=None, mode="stable")
            else:
                cand = body.get("candidate")
                s.update(mode=body["mode"], candidate=cand["version"] if cand else None)
            s["generation"] = body["generation"]

    def traffic(self, requests: int, errors: dict[str, float] | None = None, disagree: float = 0.0) -> None:
        """Each site serves ``requests``: split by its mode; errors and disagreements as fractions."""
        errors = errors or {}
        for site, s in self.state.items():
            if site in self.down:
                continue
            book = self.counters[site]
            stable = book.setdefault(s["stable"], VersionCounters())
            cand = book.setdefault(s["candidate"], VersionCounters()) if s["candidate"] else None
            if s["mode"] == "stable" or cand is None:
                stable.requests += requests
                stable.errors += round(requests * errors.get(s["stable"], 0))
            elif s["mode"] == "shadow":
                stable.requests += requests
                stable.errors += round(requests * errors.get(s["stable"], 0))
                cand.shadow_compared += requests
                cand.shadow_disagreed += round(requests * disagree)
            elif s["mode"] == "canary":
                n_c = requests // 5
                cand.requests += n_c
                cand.errors += round(n_c * errors.get(s["candidate"], 0))
                stable.requests += requests - n_c
                stable.errors += round((requests - n_c) * errors.get(s["stable"], 0))
            else:
                cand.requests += requests


def run(
    rollout: RolloutSpec,
    fleet: Fleet,
    template: ModelRef = V5,
    passes: int = 30,
    prev: RolloutStatus | None = None,
    sites: list[SiteInfo] = SITES,
    **traffic: Any,
) -> tuple[RolloutStatus, list[Outcome]]:
    outcomes = []
    now = T0
    status = prev
    for _ in range(passes):
        wanted = sites_to_read(rollout, status, sites)
        readings = {s: fleet.reading(s) for s in wanted}
        out = advance(rollout, template, UID, sites, status, readings, now, V4)
        fleet.apply(out)
        fleet.traffic(50, **traffic)
        outcomes.append(out)
        status = out.status
        now += timedelta(seconds=1)
    assert status is not None
    return status, outcomes


def reasons(outcomes: list[Outcome]) -> list[str]:
    return [e.reason for o in outcomes for e in o.events]


def test_waves_by_label_and_tier_with_the_rest_last() -> None:
    waves = assign_waves(spec(), SITES)
    assert [(w.name, w.sites) for w in waves] == [
        ("ring-0", ("store-a",)),
        ("ring-1", ("store-b", "store-c")),
        (REST, ("mec",)),
    ]
    assert waves[1].max_unavailable == 1 and waves[2].max_unavailable == 0
    assert [s.kind for s in waves[0].steps] == ["shadow", "canary", "full"]
    by_tier = spec(
        waves=[{"name": "mec-first", "tiers": ["regional-mec"]}], steps=[{"canary": {"weight": 5}}]
    )
    waves = assign_waves(by_tier, SITES)
    assert [(w.name, len(w.sites)) for w in waves] == [("mec-first", 1), (REST, 3)]
    assert [s.kind for s in waves[1].steps] == ["canary", "full"]  # a last full is implied


def test_a_good_version_goes_through_every_wave_and_is_promoted() -> None:
    fleet = Fleet([s.site for s in SITES])
    status, outcomes = run(spec(), fleet, passes=60)
    assert status.phase is RolloutPhase.PROMOTED, status.gate.verdict
    assert status.stable == V5 and status.candidate is None and not status.promoting
    seen = reasons(outcomes)
    assert seen[0] == "RolloutStarted" and seen.count("WaveDone") == 3 and seen[-1] == "RolloutPromoted"
    assert all(s["stable"] == "5" and s["candidate"] is None for s in fleet.state.values())
    # children: the candidate exactly for the waves done, one wave after the other
    done = [sorted(o.candidate_sites) for o in outcomes]
    assert ["store-a"] in done and ["store-a", "store-b", "store-c"] in done
    assert outcomes[-1].candidate_sites == set() and outcomes[-1].again is None  # the stable is v5 now


def test_disagreeing_outputs_roll_back_the_first_wave_in_shadow() -> None:
    fleet = Fleet([s.site for s in SITES])
    status, outcomes = run(spec(), fleet, passes=10, disagree=0.5)
    assert status.phase is RolloutPhase.ROLLED_BACK and status.candidate == V5 and status.stable == V4
    assert status.cause is not None and "ring-0" in status.cause and "agreement gate" in status.cause
    assert "RolledBack" in reasons(outcomes)
    assert fleet.state["store-a"]["mode"] == "stable" and fleet.state["store-a"]["candidate"] is None
    assert all(fleet.state[s]["generation"] == "" for s in ("store-b", "store-c", "mec"))  # never touched
    assert all(not o.candidate_sites for o in outcomes)
    # halted: the same template does not start it again
    again, more = run(spec(), fleet, passes=3, prev=status)
    assert again.phase is RolloutPhase.ROLLED_BACK and "RolloutStarted" not in reasons(more)


def test_errors_in_canary_roll_back_and_pause_keeps_earlier_waves() -> None:
    fleet = Fleet([s.site for s in SITES])
    rollout = spec(
        steps=[{"canary": {"weight": 20}}],
        gate={"minSamples": 20, "maxSamples": 40, "onFailure": "pause"},
    )
    # ring-0 passes on a clean candidate, then the candidate starts failing in ring-1
    status, _ = run(rollout, fleet, passes=8)
    assert status.wave >= 1
    status, outcomes = run(rollout, fleet, passes=8, prev=status, errors={"5": 0.5, "4": 0.0})
    assert status.phase is RolloutPhase.PAUSED and status.paused_by_gate
    assert status.cause is not None and "errors gate" in status.cause and "ring-1" in status.cause
    assert outcomes[-1].candidate_sites == {"store-a"}  # ring-0 keeps the candidate; ring-1 is back
    assert {fleet.state[s]["mode"] for s in ("store-b", "store-c")} == {"stable"}
    # promote names the version: a stale value does nothing, the right one finishes the rollout
    status, _ = run(spec(promote="9", gate={"onFailure": "pause"}), fleet, passes=2, prev=status)
    assert status.phase is RolloutPhase.PAUSED
    status, outcomes = run(rollout.model_copy(update={"promote": "5"}), fleet, passes=4, prev=status)
    assert status.phase is RolloutPhase.PROMOTED and status.stable == V5
    assert all(s["stable"] == "5" for s in fleet.state.values())


def test_unreachable_sites_are_deferred_and_catch_up() -> None:
    fleet = Fleet([s.site for s in SITES])
    fleet.down = {"store-a"}
    status, outcomes = run(spec(), fleet, passes=5)
    assert status.phase is RolloutPhase.PROGRESSING and status.wave == 0 and status.step == 0
    assert status.waves[0].deferred == ["store-a"]
    assert any(p.site == "store-a" for p in outcomes[-1].puts)  # asked again every pass
    fleet.down = {"store-c"}  # ring-0 is back; in ring-1 one site down is allowed
    status, outcomes = run(spec(), fleet, passes=60, prev=status)
    assert "WaveDone" in reasons(outcomes)
    assert status.phase is RolloutPhase.PROMOTED
    assert status.promoting == ["store-c"]  # still to confirm when it returns
    fleet.down = set()
    status, _ = run(spec(), fleet, passes=3, prev=status)
    assert status.promoting == [] and fleet.state["store-c"]["stable"] == "5"


def test_a_restarted_worker_is_sent_its_step_again_and_its_counters_restart() -> None:
    fleet = Fleet([s.site for s in SITES])
    status, _ = run(spec(gate={"minSamples": 1000, "maxSamples": 2000}), fleet, passes=4)
    before = status.gate.shadow_compared
    fleet.state["store-a"].update(mode="stable", generation="", candidate=None, instance="i2")
    fleet.counters["store-a"] = {}
    status, outcomes = run(spec(gate={"minSamples": 1000, "maxSamples": 2000}), fleet, passes=1, prev=status)
    assert [p.site for p in outcomes[0].puts] == ["store-a"] and status.gate.shadow_compared == before
    status, _ = run(spec(gate={"minSamples": 1000, "maxSamples": 2000}), fleet, passes=3, prev=status)
    assert status.gate.shadow_compared > before  # counting again from the new process's counters


def test_paused_holds_the_step_and_abort_rolls_back() -> None:
    fleet = Fleet([s.site for s in SITES])
    status, outcomes = run(spec(paused=True), fleet, passes=20)
    assert status.phase is RolloutPhase.PAUSED and status.wave == 0 and status.step == 0
    assert status.gate.shadow_compared > 40  # evidence gathered, nothing advanced
    status, outcomes = run(spec(abort="5"), fleet, passes=2, prev=status)
    assert status.phase is RolloutPhase.ABORTED and "RolloutAborted" in reasons(outcomes)
    assert fleet.state["store-a"]["mode"] == "stable"


def test_same_version_is_invalid_and_names_the_field() -> None:
    fleet = Fleet([s.site for s in SITES])
    other_uri = V4.model_copy(update={"uri": "http://models/footfall/4b.onnx"})
    status, outcomes = run(spec(), fleet, template=other_uri, passes=3)
    assert status.phase is RolloutPhase.INVALID and "spec.template.model.version" in (status.cause or "")
    assert reasons(outcomes) == ["RolloutInvalid"]  # once


def test_a_new_candidate_mid_rollout_supersedes_the_old_one() -> None:
    fleet = Fleet([s.site for s in SITES])
    status, _ = run(spec(steps=[{"canary": {"weight": 20}}]), fleet, passes=10)
    assert status.wave >= 1
    v6 = V5.model_copy(update={"version": "6", "uri": "http://models/footfall/6.onnx"})
    status, outcomes = run(spec(), fleet, template=v6, passes=1, prev=status)
    assert reasons(outcomes)[:2] == ["RolloutSuperseded", "RolloutStarted"]
    assert status.candidate == v6 and status.wave == 0 and "store-a" not in status.reverting
    assert "store-b" in status.reverting or fleet.state["store-b"]["mode"] == "stable"


def test_spec_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="full may appear once, as the last step"):
        RolloutSpec.model_validate({"steps": [{"full": {}}, {"shadow": {}}]})
    with pytest.raises(ValidationError, match="exactly one of shadow, canary, full"):
        RolloutSpec.model_validate({"steps": [{"shadow": {}, "canary": {"weight": 5}}]})
    with pytest.raises(ValidationError, match="give tiers, selector or both"):
        RolloutSpec.model_validate({"waves": [{"name": "w"}]})
    with pytest.raises(ValidationError, match="rest"):
        RolloutSpec.model_validate({"waves": [{"name": "rest", "tiers": ["device"]}]})
    with pytest.raises(ValidationError, match=r"overrides\[0\].patch.model"):
        EdgeWorkloadSetSpec.model_validate(
            {
                "sites": {"names": ["a"]},
                "template": {"requirements": {"latencyBudgetMs": 10}, "model": V4.dump()},
                "overrides": [{"sites": ["a"], "patch": {"model": {"version": "9"}}}],
                "rollout": {},
            }
        )


def test_gate_spec_defaults_are_the_gate_settings() -> None:
    spec_defaults = GateSpec()
    settings_defaults = gate.GateSettings()
    for name in (
        "alpha",
        "beta",
        "error_ratio",
        "disagreement_good",
        "disagreement_bad",
        "min_samples",
        "max_samples",
        "latency_ratio",
        "latency_slack_seconds",
        "latency_min_samples",
    ):
        assert getattr(spec_defaults, name) == getattr(settings_defaults, name), name
    drift_spec_defaults, drift_defaults = DriftGateSpec(), gate.DriftSettings()
    for name in ("good", "bad", "required"):
        assert getattr(drift_spec_defaults, name) == getattr(drift_defaults, name), name
    assert spec_defaults.drift is None  # off unless the set asks for it
    with pytest.raises(ValidationError, match="good must be below bad"):
        RolloutSpec.model_validate({"gate": {"drift": {"good": 0.5, "bad": 0.2}}})


# --- properties -------------------------------------------------------------------------------------

site_names = st.lists(st.sampled_from([f"s{i}" for i in range(8)]), min_size=1, max_size=8, unique=True)


@settings(max_examples=60, deadline=None)
@given(
    names=site_names,
    rings=st.lists(st.sampled_from(["0", "1", "2"]), min_size=8, max_size=8),
    down=st.sets(st.sampled_from([f"s{i}" for i in range(8)])),
    disagree=st.sampled_from([0.0, 0.5]),
    passes=st.integers(1, 40),
)
def test_properties(names: list[str], rings: list[str], down: set[str], disagree: float, passes: int) -> None:
    """Whatever the sites, their rings, the unreachable ones and the candidate: every site is in exactly one
    wave; the candidate only ever reaches the children of waves before the current one (or of the
    current one in its full step); a rolled-back rollout has no site on the candidate; a promoted one
    has the candidate as its stable version."""
    sites = [SiteInfo(n, "device", {"continuum.dev/ring": rings[i]}) for i, n in enumerate(names)]
    rollout = spec(maxUnavailableSites=1)
    waves = assign_waves(rollout, sites)
    flat = [s for w in waves for s in w.sites]
    assert sorted(flat) == sorted(names) and len(set(flat)) == len(flat)
    fleet = Fleet(names)
    fleet.down = down & set(names)
    status, outcomes = run(rollout, fleet, passes=passes, sites=sites, disagree=disagree)
    for out in outcomes:
        st_ = out.status
        if st_.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED):
            allowed = {s for w in waves[: st_.wave] for s in w.sites}
            if st_.wave < len(waves):
                allowed |= set(waves[st_.wave].sites)
            assert out.candidate_sites <= allowed
        else:
            assert out.candidate_sites == set()
        if st_.phase is RolloutPhase.ROLLED_BACK:
            assert disagree > 0 and st_.stable == V4
        if st_.phase is RolloutPhase.PROMOTED:
            assert st_.stable == V5
    if disagree == 0:
        assert status.phase is not RolloutPhase.ROLLED_BACK


BUCKETS = [0.001, 0.01, 0.1]


def counters(requests: int, errors: int, compared: int, disagreed: int, fast: int) -> VersionCounters:
    fast = min(fast, requests)
    return VersionCounters.model_validate(
        {
            "requests": requests,
            "errors": errors,
            "shadowCompared": compared,
            "shadowDisagreed": disagreed,
            "latency": {"le": BUCKETS, "counts": [fast, fast, requests], "count": requests},
        }
    )


increments = st.lists(st.tuples(*[st.integers(0, 50)] * 5), min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(stable_steps=increments, candidate_steps=increments)
def test_windows_add_up_to_the_counters_difference(
    stable_steps: list[tuple[int, ...]], candidate_steps: list[tuple[int, ...]]
) -> None:
    """However often a worker is read, the windows between its readings add up to what it counted in all
    (cumulative counters of one process): no request is lost or counted twice between windows."""
    n = min(len(stable_steps), len(candidate_steps))
    readings = []
    totals_s, totals_c = [0] * 5, [0] * 5
    for i in range(n):
        totals_s = [a + b for a, b in zip(totals_s, stable_steps[i], strict=True)]
        totals_c = [a + b for a, b in zip(totals_c, candidate_steps[i], strict=True)]
        reading = Reading(
            mode="canary",
            generation="g",
            instance="i",
            stable_version="4",
            candidate_version="5",
            versions={"4": counters(*totals_s), "5": counters(*totals_c)},
        )
        readings.append(baseline_of("s", reading, "4", "5"))
    first = SiteBaseline(site="s", instance="i")
    summed = gate.Window(0, 0, 0, 0)
    previous = first
    for now in readings:
        summed = summed + window_between(previous, now)
        previous = now
    whole = window_between(first, readings[-1])
    assert summed.stable_requests == whole.stable_requests == readings[-1].stable.requests
    assert summed.candidate_errors == whole.candidate_errors
    assert summed.shadow_compared == whole.shadow_compared
    assert summed.candidate_latency.count == whole.candidate_latency.count
    assert summed.candidate_latency.counts == whole.candidate_latency.counts


# --- the drift gate ---------------------------------------------------------------------------------


class DriftFleet(Fleet):
    """Workers that also answer their drift view: one window closes per version per pass."""

    def __init__(self, sites: list[str], candidate_drifts: bool, stable_drifts: bool = False) -> None:
        super().__init__(sites)
        self.candidate_drifts, self.stable_drifts = candidate_drifts, stable_drifts
        self.windows = dict.fromkeys(sites, 0)
        self.closing = True

    def reading(self, site: str) -> Observation:
        reading = super().reading(site)
        if isinstance(reading, str):
            return reading
        s, n = self.state[site], self.windows[site]

        def view(drifts: bool) -> VersionDrift:
            status = "drifting" if drifts else "ok"
            score = 0.4 if drifts else 0.03
            return VersionDrift(
                status, n, drifts, output_drifting=drifts, output_score=score, output_psi=0.01
            )

        views = {s["stable"]: view(self.stable_drifts)}
        if s["candidate"]:
            views[s["candidate"]] = view(self.candidate_drifts)
        return dataclasses.replace(reading, drift=views)

    def traffic(self, requests: int, errors: dict[str, float] | None = None, disagree: float = 0.0) -> None:
        super().traffic(requests, errors, disagree)
        if self.closing:
            for site in self.windows:
                self.windows[site] += 1


def drift_spec(**drift: Any) -> RolloutSpec:
    return spec(gate={"minSamples": 200, "maxSamples": 400, "drift": drift})


def test_a_candidate_whose_outputs_drift_is_rolled_back_with_the_cause() -> None:
    fleet = DriftFleet([s.site for s in SITES], candidate_drifts=True)
    status, outcomes = run(drift_spec(), fleet, passes=8)
    assert status.phase is RolloutPhase.ROLLED_BACK and status.stable == V4
    assert status.cause is not None and status.cause.startswith(
        "rolled back: wave ring-0 step 1 (shadow): drift gate"
    )
    assert "2 of 2 scored candidate windows drifted on the outputs" in status.cause
    assert "last: store-a: candidate output KS 0.400, PSI 0.010 (stable output KS 0.030" in status.cause
    assert "RolledBack" in reasons(outcomes)
    assert fleet.state["store-a"]["mode"] == "stable" and fleet.state["store-a"]["candidate"] is None
    assert all(fleet.state[s]["generation"] == "" for s in ("store-b", "store-c", "mec"))


def test_drift_the_stable_version_shares_is_not_the_candidates() -> None:
    """The site's inputs moved: both versions' outputs drift. Not the candidate's doing: promoted."""
    fleet = DriftFleet([s.site for s in SITES], candidate_drifts=True, stable_drifts=True)
    status, outcomes = run(drift_spec(), fleet, passes=250)
    assert status.phase is RolloutPhase.PROMOTED, status.gate.verdict
    assert "RolledBack" not in reasons(outcomes)


def test_a_required_drift_gate_waits_for_scored_windows() -> None:
    fleet = DriftFleet([s.site for s in SITES], candidate_drifts=False)
    fleet.closing = False  # a quiet site: no window closes
    status, _ = run(drift_spec(required=True), fleet, passes=20)
    assert status.phase is RolloutPhase.PROGRESSING and (status.wave, status.step) == (0, 0)
    assert status.gate.shadow_compared >= 400  # the agreement gate alone would have passed long ago
    assert status.gate.verdict == "Continue: collecting evidence (drift: 0 scored candidate windows)"
    fleet.closing = True  # windows close, clean: it goes on
    status, _ = run(drift_spec(required=True), fleet, passes=250, prev=status)
    assert status.phase is RolloutPhase.PROMOTED, status.gate.verdict
    assert wants_drift(drift_spec(), None) is False
    assert wants_drift(spec(), status) is False  # no drift gate: the drift views are not read


@settings(max_examples=40, deadline=None)
@given(
    drifts=st.lists(st.booleans(), min_size=1, max_size=12),
    stable=st.lists(st.booleans(), min_size=12, max_size=12),
    closed=st.lists(st.integers(0, 2), min_size=12, max_size=12),
)
def test_drift_trials_count_each_new_scored_window_once(
    drifts: list[bool], stable: list[bool], closed: list[int]
) -> None:
    """However windows close between readings: a site's trials are the readings at which a new candidate
    window had closed; drifted ones only where the stable version's outputs did not drift too."""
    before = SiteBaseline(site="s", instance="i", drift_windows=0)
    n_windows = trials = drifted = 0
    for i, d in enumerate(drifts):
        n_windows += closed[i]
        views = {
            "4": VersionDrift(
                "drifting" if stable[i] else "ok", n_windows, stable[i], output_drifting=stable[i]
            ),
            "5": VersionDrift("drifting" if d else "ok", n_windows, d, output_drifting=d),
        }
        reading = Reading("shadow", "g", "i", "4", "5", drift=views)
        window, note = drift_trial(before, reading, "4", "5")
        new = closed[i] > 0
        counted = new and not (d and stable[i])
        assert window.drift_windows == int(counted)
        assert window.drift_drifted == int(counted and d)
        assert (note is not None) == (counted and d)
        trials += window.drift_windows
        drifted += window.drift_drifted
        before = baseline_of("s", reading, "4", "5")
        assert before.drift_windows == n_windows
    assert drifted <= trials <= n_windows
