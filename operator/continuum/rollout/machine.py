"""The rollout state machine of an EdgeWorkloadSet: (set spec, status, what the workers said) → (what to
send them, the new status, Events). Pure: no Kubernetes, no HTTP, no clock (``now`` is an argument).

The controller (:mod:`continuum.controller.workloadsets`) asks :func:`sites_to_read` which workers to
read (``GET /v2/models/{m}/rollout``, docs/rollout-protocol.md), calls :func:`advance` with their answers,
sends the PUTs it returns, writes each child's ``spec.model`` (the candidate for the sites in
``Outcome.candidate_sites``, the stable version elsewhere) and records the status and Events.

* A change of ``spec.template.model`` (to a version other than the stable one) starts a rollout. Waves
  go in order (:func:`assign_waves`; a last wave ``rest`` takes the sites no wave selects); each wave goes
  through its steps: ``shadow`` and ``canary`` are gated (:mod:`continuum.rollout.gate`, evidence pooled
  over the wave's sites, one :class:`GateState` per step kept in status), ``full`` writes the candidate
  into the wave's children (and switches their workers at once).
* Level-triggered: a site whose worker does not show the step's ``generation`` is sent the step again
  (a worker that restarted or was unreachable catches up) and is *deferred*; a step passes only when at
  most ``maxUnavailableSites`` of the wave's sites are deferred.
* Each window's evidence is the difference of the workers' cumulative counters since the previous
  reading (per site; a new ``instance`` is a restarted process: the reading becomes the new baseline).
* A failed gate rolls back (every site that got the candidate returns to the stable version; the rollout
  halts: RolledBack) or pauses (the failing wave returns to the stable version: Paused) as
  ``gate.onFailure`` says. ``paused`` holds a rollout at its step (gates still roll back), ``promote:
  <version>`` finishes it at once, ``abort: <version>`` rolls it back.
* After the last wave the candidate becomes the stable version (Promoted) and every worker is asked to
  promote it in memory (``{"promote": true}``), so a worker not restarted with the new model keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from continuum.api.models import ModelRef
from continuum.api.workloadset import (
    GateEvidence,
    GateSpec,
    Histogram,
    OnFailure,
    RolloutPhase,
    RolloutSpec,
    RolloutStatus,
    RolloutStep,
    SiteBaseline,
    VersionCounters,
    WaveStatus,
)
from continuum.rollout import gate

REST = "rest"  # the implicit last wave
SETTLE_AGAIN = 1.0  # seconds until the next look when workers were just sent something
LISTED_DEFERRED = 50  # deferred sites named per wave in status
ACTIVE = (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)


@dataclass(frozen=True)
class SiteInfo:
    site: str
    tier: str | None  # where the site's child is placed (else its pools' lowest tier)
    labels: Mapping[str, str]  # the labels of the site's EdgeNodePools


SCORED = ("ok", "drifting")  # a drift window with the worker's minimum sample, scored against a reference


@dataclass(frozen=True)
class VersionDrift:
    """One version's entry of a worker's drift view (``GET /v2/models/{m}/drift``, ``versions[v]``)."""

    status: str  # of its last window: ok, drifting, insufficient, open, no-reference, ...
    windows_closed: int
    drifting: bool = False
    output_drifting: bool | None = None  # None: a worker that does not split outputs from inputs
    output_score: float | None = None
    output_psi: float | None = None

    @property
    def outputs_drift(self) -> bool:
        """The outputs drift (a worker without the split: the whole window, inputs included)."""
        return self.drifting if self.output_drifting is None else self.output_drifting

    def describe(self) -> str:
        parts = []
        if self.output_score is not None:
            parts.append(f"output KS {self.output_score:.3f}")
        if self.output_psi is not None:
            parts.append(f"PSI {self.output_psi:.3f}")
        return ", ".join(parts) or self.status


@dataclass(frozen=True)
class Reading:
    """A worker's ``GET /v2/models/{m}/rollout`` answer."""

    mode: str
    generation: str
    instance: str
    stable_version: str | None
    candidate_version: str | None
    versions: Mapping[str, VersionCounters] = field(default_factory=dict)
    weight: float = 0.0
    drift: Mapping[str, VersionDrift] | str | None = None  # its drift view per version; str: why not read


Observation = Reading | str  # a reading, or why the worker could not be read


@dataclass(frozen=True)
class Put:
    site: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Wave:
    name: str
    sites: tuple[str, ...]
    steps: tuple[RolloutStep, ...]
    max_unavailable: int


@dataclass
class Outcome:
    status: RolloutStatus
    puts: list[Put] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    candidate_sites: set[str] = field(default_factory=set)  # whose child's spec.model is the candidate
    again: float | None = None  # seconds until the controller should look again


FULL = RolloutStep.model_validate({"full": {}})


def steps_of(spec: RolloutSpec, steps: Sequence[RolloutStep] | None) -> tuple[RolloutStep, ...]:
    out = list(steps or spec.steps)
    if out[-1].full is None:
        out.append(FULL)  # a wave ends with its sites on the candidate
    return tuple(out)


def assign_waves(spec: RolloutSpec, sites: Iterable[SiteInfo]) -> list[Wave]:
    """The waves in order with their sites (each site in the first wave that selects it), then ``rest``
    when some site is in none. Waves given in the spec are always listed (possibly empty), so their
    indexes are stable."""
    remaining = sorted(sites, key=lambda s: s.site)
    waves = []
    for wave in spec.waves:
        chosen: list[SiteInfo] = []
        left: list[SiteInfo] = []
        for info in remaining:
            tier_ok = wave.tiers is None or (
                info.tier is not None and info.tier in {t.value for t in wave.tiers}
            )
            label_ok = wave.selector is None or wave.selector.matches(dict(info.labels))
            (chosen if tier_ok and label_ok else left).append(info)
        remaining = left
        unavailable = (
            spec.max_unavailable_sites if wave.max_unavailable_sites is None else wave.max_unavailable_sites
        )
        waves.append(Wave(wave.name, tuple(i.site for i in chosen), steps_of(spec, wave.steps), unavailable))
    if remaining:
        waves.append(
            Wave(REST, tuple(i.site for i in remaining), steps_of(spec, None), spec.max_unavailable_sites)
        )
    return waves


def same_model(a: ModelRef | None, b: ModelRef | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.name, a.uri, a.version, a.sha256) == (b.name, b.uri, b.version, b.sha256)


def invalid_candidate(candidate: ModelRef, stable: ModelRef) -> str | None:
    if candidate.name != stable.name:
        return (
            f"spec.template.model.name: a rollout keeps the model's name ({stable.name!r}); "
            f"{candidate.name!r} is another model"
        )
    if candidate.version == stable.version:
        return (
            f"spec.template.model.version: a rollout needs a new version; {candidate.version!r} is the "
            "stable version's (give the new uri a new version)"
        )
    return None


def settings_for(spec: GateSpec, step: RolloutStep) -> gate.GateSettings:
    gated = step.gated
    min_samples = (
        gated.min_samples if gated is not None and gated.min_samples is not None else spec.min_samples
    )
    return gate.GateSettings(
        alpha=spec.alpha,
        beta=spec.beta,
        error_ratio=spec.error_ratio,
        disagreement_good=spec.disagreement_good,
        disagreement_bad=spec.disagreement_bad,
        min_samples=min(min_samples, spec.max_samples),
        max_samples=spec.max_samples,
        latency_ratio=spec.latency_ratio,
        latency_slack_seconds=spec.latency_slack_seconds,
        latency_min_samples=spec.latency_min_samples,
        drift=None
        if spec.drift is None
        else gate.DriftSettings(good=spec.drift.good, bad=spec.drift.bad, required=spec.drift.required),
    )


# --- the evidence in status <-> the gate's ----------------------------------------------------------


def to_gate_histogram(h: Histogram) -> gate.Histogram:
    return gate.Histogram(tuple(h.le), tuple(h.counts), h.count)


def from_gate_histogram(h: gate.Histogram) -> Histogram:
    return Histogram(le=list(h.le), counts=list(h.counts), count=h.count)


def to_gate_state(e: GateEvidence) -> gate.GateState:
    return gate.GateState(
        error_llr=e.error_llr,
        agreement_llr=e.agreement_llr,
        candidate_requests=e.candidate_requests,
        shadow_compared=e.shadow_compared,
        stable_latency=to_gate_histogram(e.stable_latency),
        candidate_latency=to_gate_histogram(e.candidate_latency),
        drift_llr=e.drift_llr,
        drift_windows=e.drift_windows,
        drift_drifted=e.drift_drifted,
    )


def from_gate_state(s: gate.GateState, verdict: str | None, drift_last: str | None = None) -> GateEvidence:
    return GateEvidence(
        error_llr=s.error_llr,
        agreement_llr=s.agreement_llr,
        candidate_requests=s.candidate_requests,
        shadow_compared=s.shadow_compared,
        stable_latency=from_gate_histogram(s.stable_latency),
        candidate_latency=from_gate_histogram(s.candidate_latency),
        drift_llr=s.drift_llr,
        drift_windows=s.drift_windows,
        drift_drifted=s.drift_drifted,
        drift_last=drift_last,
        verdict=verdict,
    )


def window_between(old: SiteBaseline, new: SiteBaseline) -> gate.Window:
    """What one site counted between two readings of the same process (counters never go back)."""

    def d(a: int, b: int) -> int:
        return max(0, b - a)

    s0, s1, c0, c1 = old.stable, new.stable, old.candidate, new.candidate
    return gate.Window(
        stable_requests=d(s0.requests, s1.requests),
        stable_errors=d(s0.errors, s1.errors),
        candidate_requests=d(c0.requests, c1.requests),
        candidate_errors=d(c0.errors, c1.errors),
        shadow_compared=d(c0.shadow_compared, c1.shadow_compared),
        shadow_disagreed=d(c0.shadow_disagreed, c1.shadow_disagreed),
        stable_latency=to_gate_histogram(s1.latency).minus(to_gate_histogram(s0.latency)),
        candidate_latency=to_gate_histogram(c1.latency).minus(to_gate_histogram(c0.latency)),
    )


def baseline_of(site: str, reading: Reading, stable: str, candidate: str) -> SiteBaseline:
    empty = VersionCounters()
    drift = reading.drift.get(candidate) if isinstance(reading.drift, Mapping) else None
    return SiteBaseline(
        site=site,
        instance=reading.instance,
        stable=reading.versions.get(stable, empty).model_copy(deep=True),
        candidate=reading.versions.get(candidate, empty).model_copy(deep=True),
        drift_windows=drift.windows_closed if drift is not None else None,
    )


def drift_trial(
    before: SiteBaseline, reading: Reading, stable: str, candidate: str
) -> tuple[gate.Window, str | None]:
    """The drift gate's trial from one site since its previous reading (same worker process): the
    candidate's last window if a new one closed and was scored; not counted when the stable version's
    outputs drift too at that site (its inputs moved both). Returns the window and, when the candidate's
    outputs drifted, a description for the status."""
    views = reading.drift if isinstance(reading.drift, Mapping) else {}
    cand, base = views.get(candidate), views.get(stable)
    if (
        cand is None
        or before.drift_windows is None
        or cand.windows_closed <= before.drift_windows
        or cand.status not in SCORED
    ):
        return gate.Window(0, 0, 0, 0), None
    stable_drifts = base is not None and base.status in SCORED and base.outputs_drift
    if cand.outputs_drift and stable_drifts:
        return gate.Window(0, 0, 0, 0), None
    if not cand.outputs_drift:
        return gate.Window(0, 0, 0, 0, drift_windows=1), None
    against = (
        f"stable {base.describe()}" if base is not None and base.status in SCORED else "stable not scored"
    )
    return gate.Window(
        0, 0, 0, 0, drift_windows=1, drift_drifted=1
    ), f"candidate {cand.describe()} ({against})"


def wants_drift(spec: RolloutSpec, prev: RolloutStatus | None) -> bool:
    """Whether this pass should also read the workers' drift views (the drift gate is on, a rollout runs)."""
    return (
        spec.gate.drift is not None
        and prev is not None
        and prev.phase in ACTIVE
        and prev.candidate is not None
        and not prev.paused_by_gate
    )


# --- which sites run what ---------------------------------------------------------------------------


def _candidate_sites(st: RolloutStatus, waves: list[Wave]) -> set[str]:
    if st.candidate is None or st.phase not in ACTIVE:
        return set()
    out = {s for w in waves[: st.wave] for s in w.sites}
    if not st.paused_by_gate and st.wave < len(waves):
        wave = waves[st.wave]
        if st.step < len(wave.steps) and wave.steps[st.step].full is not None:
            out |= set(wave.sites)
    return out


def sites_to_read(spec: RolloutSpec, prev: RolloutStatus | None, sites: Iterable[SiteInfo]) -> list[str]:
    """The workers :func:`advance` needs to hear from: the current wave's, and those still settling."""
    if prev is None:
        return []
    wanted = set(prev.reverting) | set(prev.promoting)
    if prev.phase in ACTIVE and prev.candidate is not None and not prev.paused_by_gate:
        waves = assign_waves(spec, sites)
        if prev.wave < len(waves):
            wanted |= set(waves[prev.wave].sites)
    return sorted(wanted)


# --- the machine ------------------------------------------------------------------------------------


def candidate_body(model: ModelRef) -> dict[str, Any]:
    body = {"uri": model.uri, "version": model.version}
    if model.sha256:
        body["sha256"] = model.sha256
    return body


class _Pass:
    def __init__(
        self,
        spec: RolloutSpec,
        uid: str,
        waves: list[Wave],
        readings: Mapping[str, Observation],
        now: datetime,
        st: RolloutStatus,
    ) -> None:
        self.spec, self.uid, self.waves, self.readings, self.now, self.st = (
            spec,
            uid,
            waves,
            readings,
            now,
            st,
        )
        self.puts: list[Put] = []
        self.events: list[Event] = []
        self.deferred: list[str] = []
        self.moved = False  # the rollout went to another step, wave or phase in this pass

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def touched(self) -> set[str]:
        """Sites that may run the candidate: every site of the waves up to the current one."""
        return {s for w in self.waves[: self.st.wave + 1] for s in w.sites}

    def start(self, candidate: ModelRef) -> None:
        st = self.st
        st.phase, st.candidate, st.cause, st.paused_by_gate = RolloutPhase.PROGRESSING, candidate, None, False
        st.wave, st.step, st.step_started_at, st.started_at, st.finished_at = 0, 0, self.now, self.now, None
        st.gate, st.baselines = GateEvidence(), []
        assert st.stable is not None
        self.event(
            "Normal",
            "RolloutStarted",
            f"rolling out {candidate.name} version {candidate.version} (stable: {st.stable.version}) "
            f"in {len(self.waves)} waves: {', '.join(f'{w.name} ({len(w.sites)})' for w in self.waves)}",
        )

    def roll_back(self, phase: RolloutPhase, cause: str, reason: str) -> None:
        st = self.st
        st.reverting = sorted(set(st.reverting) | self.touched())
        st.phase, st.cause, st.finished_at, st.paused_by_gate = phase, cause, self.now, False
        st.baselines = []
        self.event("Warning", reason, cause)

    def promote(self, how: str) -> None:
        st = self.st
        assert st.candidate is not None
        self.event(
            "Normal",
            "RolloutPromoted",
            f"{st.candidate.name} version {st.candidate.version} is the stable version at every site ({how})",
        )
        st.stable, st.candidate = st.candidate, None
        st.phase, st.finished_at, st.paused_by_gate = RolloutPhase.PROMOTED, self.now, False
        st.promoting = sorted({s for w in self.waves for s in w.sites})
        st.reverting, st.baselines, st.cause = [], [], None

    def next_step(self, why: str) -> None:
        st = self.st
        wave = self.waves[st.wave]
        kind = wave.steps[st.step].kind
        st.step += 1
        if st.step >= len(wave.steps):
            self.event("Normal", "WaveDone", f"wave {wave.name}: {len(wave.sites)} sites run the candidate")
            st.wave, st.step = st.wave + 1, 0
        else:
            self.event("Normal", "StepPassed", f"wave {wave.name} step {st.step} ({kind}) passed: {why}")
        st.step_started_at, st.gate, st.baselines = self.now, GateEvidence(), []
        self.moved = True

    def drive(self) -> None:
        """The current step of the current wave: send it where it is not, gather evidence, decide."""
        st = self.st
        assert st.candidate is not None and st.stable is not None
        while st.wave < len(self.waves) and not self.waves[st.wave].sites:
            st.wave, st.step = st.wave + 1, 0  # an empty wave has nothing to wait for
        if st.wave >= len(self.waves):
            self.promote("every wave passed")
            return
        wave = self.waves[st.wave]
        step = wave.steps[st.step]
        generation = f"{self.uid}/{st.candidate.version}/{st.wave}/{st.step}"
        st.wave_name, st.step_kind, st.generation = wave.name, step.kind, generation
        weight = (
            step.canary.weight / 100 if step.canary is not None else 1.0 if step.full is not None else 0.0
        )
        body = {
            "candidate": candidate_body(st.candidate),
            "mode": step.kind,
            "weight": weight,
            "generation": generation,
        }
        st.reverting = [s for s in st.reverting if s not in set(wave.sites)]  # driven by this step now
        promoting = set(st.promoting)
        baselines = {b.site: b for b in st.baselines}
        kept: list[SiteBaseline] = []
        window = gate.Window(0, 0, 0, 0)
        drift_last = st.gate.drift_last
        for site in wave.sites:
            reading = self.readings.get(site)
            if site in promoting:  # still taking the previous rollout's version: it comes first
                self.deferred.append(site)
                continue
            confirmed = isinstance(reading, Reading) and (
                reading.generation == generation
                or (step.full is not None and reading.stable_version == st.candidate.version)
            )
            if not isinstance(reading, Reading) or not confirmed:
                self.deferred.append(site)
                self.puts.append(Put(site, body))
                continue
            if step.full is not None:
                continue
            now = baseline_of(site, reading, st.stable.version, st.candidate.version)
            before = baselines.get(site)
            if before is not None and before.instance == now.instance:
                window = window + window_between(before, now)
                trial, drifted = drift_trial(before, reading, st.stable.version, st.candidate.version)
                window = window + trial
                drift_last = f"{site}: {drifted}" if drifted else drift_last
            if now.drift_windows is None and before is not None and before.instance == now.instance:
                now.drift_windows = before.drift_windows  # not read this time: keep the mark
            kept.append(now)
        st.baselines = kept
        within = len(self.deferred) <= wave.max_unavailable
        if step.full is not None:
            if within and st.phase is RolloutPhase.PROGRESSING:
                self.next_step("the candidate serves every request")
            return
        gated = step.gated
        assert gated is not None
        settings = settings_for(self.spec.gate, step)
        state = gate.observe(to_gate_state(st.gate), window, settings)
        shadow = step.shadow is not None
        verdict, why = gate.decide(state, settings, agreement=shadow, errors=not shadow)
        st.gate = from_gate_state(state, f"{verdict.value}: {why}", drift_last)
        where = f"wave {wave.name} step {st.step + 1} ({step.kind})"
        if verdict is gate.Verdict.ROLLBACK:
            if why.startswith("drift gate") and drift_last:
                why = f"{why}; last: {drift_last}"
            self.fail(f"{where}: {why}")
            return
        started = st.step_started_at or self.now
        long_enough = (self.now - started).total_seconds() >= gated.duration_seconds
        if (
            verdict is gate.Verdict.PROMOTE
            and long_enough
            and within
            and st.phase is RolloutPhase.PROGRESSING
        ):
            self.next_step(why)

    def fail(self, cause: str) -> None:
        st = self.st
        if self.spec.gate.on_failure is OnFailure.ROLLBACK:
            self.roll_back(RolloutPhase.ROLLED_BACK, f"rolled back: {cause}", "RolledBack")
            return
        wave = self.waves[st.wave]
        st.reverting = sorted(set(st.reverting) | set(wave.sites))
        st.phase, st.cause, st.paused_by_gate, st.baselines = (
            RolloutPhase.PAUSED,
            f"paused: {cause}",
            True,
            [],
        )
        self.event(
            "Warning",
            "RolloutPaused",
            f"{st.cause}; wave {wave.name} is back on the stable version; set spec.rollout.promote or "
            "spec.rollout.abort to the candidate's version to go on",
        )

    def settle(self) -> None:
        """Sites rolled back or promoted whose worker has not confirmed it yet."""
        st = self.st
        assert st.stable is not None
        tag = st.candidate.version if st.candidate is not None else st.stable.version
        known = {s for w in self.waves for s in w.sites}  # a site that left the set has no worker to ask
        st.reverting = [s for s in st.reverting if s in known]
        st.promoting = [s for s in st.promoting if s in known]
        reverting = []
        for site in st.reverting:
            reading = self.readings.get(site)
            if (
                isinstance(reading, Reading)
                and reading.mode == "stable"
                and reading.candidate_version is None
            ):
                continue
            reverting.append(site)
            body = {
                "candidate": None,
                "mode": "stable",
                "weight": 0.0,
                "generation": f"{self.uid}/{tag}/stable",
            }
            self.puts.append(Put(site, body))
        st.reverting = reverting
        promoting = []
        for site in st.promoting:
            reading = self.readings.get(site)
            if isinstance(reading, Reading) and reading.stable_version == st.stable.version:
                continue
            promoting.append(site)
            if not isinstance(reading, Reading):
                continue  # asked again next time
            generation = f"{self.uid}/{st.stable.version}/promote"
            if reading.candidate_version == st.stable.version:
                self.puts.append(Put(site, {"promote": True, "generation": generation}))
            else:  # load it first (full), promote on the next look
                load: dict[str, Any] = {"candidate": candidate_body(st.stable), "mode": "full", "weight": 1.0}
                self.puts.append(Put(site, {**load, "generation": generation}))
        st.promoting = promoting


def advance(
    spec: RolloutSpec,
    template: ModelRef,
    uid: str,
    sites: Sequence[SiteInfo],
    prev: RolloutStatus | None,
    readings: Mapping[str, Observation],
    now: datetime,
    initial_stable: ModelRef,
) -> Outcome:
    """One pass. ``prev``: the rollout status as last written (None: the set's first pass with a rollout;
    the stable version is then ``initial_stable``, what the existing children run); ``readings``: the
    answers of the workers :func:`sites_to_read` named (a missing one: not read)."""
    st = prev.model_copy(deep=True) if prev is not None else RolloutStatus(stable=initial_stable)
    if st.stable is None:
        st.stable = initial_stable
    waves = assign_waves(spec, sites)
    p = _Pass(spec, uid, waves, readings, now, st)
    if same_model(template, st.stable):
        if st.candidate is not None and st.phase in ACTIVE:
            p.roll_back(
                RolloutPhase.ABORTED,
                f"aborted: spec.template.model is the stable version {st.stable.version} again",
                "RolloutAborted",
            )
        st.candidate = None  # a halted rollout of it may be tried again later
        if st.phase is RolloutPhase.INVALID:
            st.phase, st.cause = RolloutPhase.STABLE, None
    elif not same_model(template, st.candidate):
        if st.candidate is not None and st.phase in ACTIVE:
            st.reverting = sorted(set(st.reverting) | p.touched())
            p.event(
                "Normal",
                "RolloutSuperseded",
                f"version {st.candidate.version} is replaced by {template.version} before it finished",
            )
        problem = invalid_candidate(template, st.stable)
        if problem is not None:
            if st.cause != problem or st.phase is not RolloutPhase.INVALID:
                p.event("Warning", "RolloutInvalid", problem)
            st.phase, st.candidate, st.cause, st.paused_by_gate = RolloutPhase.INVALID, None, problem, False
        else:
            p.start(template)
    if st.candidate is not None and st.phase in ACTIVE:
        if spec.abort == st.candidate.version:
            p.roll_back(RolloutPhase.ABORTED, "aborted by spec.rollout.abort", "RolloutAborted")
        elif spec.promote == st.candidate.version:
            p.promote("spec.rollout.promote")
        elif not st.paused_by_gate:
            if spec.paused and st.phase is RolloutPhase.PROGRESSING:
                st.phase, st.cause = RolloutPhase.PAUSED, "paused by spec.rollout.paused"
                p.event("Normal", "RolloutPaused", st.cause)
            elif not spec.paused and st.phase is RolloutPhase.PAUSED:
                st.phase, st.cause = RolloutPhase.PROGRESSING, None
                p.event("Normal", "RolloutResumed", "spec.rollout.paused is false")
            p.drive()
    p.settle()
    candidates = _candidate_sites(st, waves)
    st.waves = [
        WaveStatus(
            name=w.name,
            sites=len(w.sites),
            done=sum(1 for s in w.sites if s in candidates),
            deferred=sorted(p.deferred)[:LISTED_DEFERRED] if i == st.wave and st.phase in ACTIVE else [],
        )
        for i, w in enumerate(waves)
    ]
    if st.phase not in ACTIVE:
        st.wave_name = st.step_kind = st.generation = None
    again: float | None = None
    if st.phase in ACTIVE or st.reverting or st.promoting:
        again = SETTLE_AGAIN if p.puts or p.moved else spec.window_seconds
        again = min(again, spec.window_seconds)
    return Outcome(st, p.puts, p.events, candidates, again)
