"""``EdgeWorkloadSet`` (``continuum.dev/v1alpha1``, namespaced, short name ``ews``): one EdgeWorkload per site.

A fleet (a store chain, a set of plants) is one spec: ``spec.sites`` picks the sites (names, and/or a label
selector over EdgeNodePools whose ``spec.site`` values count), ``spec.template`` is an EdgeWorkload spec
whose ``source.site`` is filled per site, and ``spec.overrides`` are JSON merge patches (RFC 7386) of the
template for chosen sites. The pure expansion (set + pools → children) is :mod:`continuum.api.fleet`; the
operator and ``continuum plan`` both call it.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from continuum.api.models import (
    GROUP,
    ApiModel,
    Condition,
    EdgeWorkloadSpec,
    LabelSelector,
    ModelRef,
    ObjectMeta,
    SiteName,
    StatusModel,
    Tier,
    Timestamp,
    WorkloadSource,
)

LABEL_SET = f"{GROUP}/set"
LABEL_SET_SITE = f"{GROUP}/site"
ANNOTATION_APPLIED = f"{GROUP}/set-applied"  # the spec the set last rendered into a child (3-way merge)


class SiteSelection(ApiModel):
    """Which sites get a child: the union of names and the sites of the pools poolSelector matches."""

    names: list[SiteName] = Field(default_factory=list, description="Sites chosen by name")
    pool_selector: LabelSelector | None = Field(
        default=None,
        description="A label selector over EdgeNodePools (their metadata.labels); the spec.site of every "
        "matching pool is selected",
    )

    @model_validator(mode="after")
    def _something_selected(self) -> SiteSelection:
        if not self.names and self.pool_selector is None:
            raise ValueError("give names, poolSelector or both")
        if len(set(self.names)) != len(self.names):
            raise ValueError("names lists a site twice")
        if self.pool_selector is not None and self.pool_selector.is_empty():
            raise ValueError(
                "an empty poolSelector would match no pool; give matchLabels or matchExpressions"
            )
        return self


class WorkloadTemplate(EdgeWorkloadSpec):
    """An EdgeWorkload spec without ``source``: the set fills ``source.site`` for each site."""

    source: WorkloadSource | None = Field(  # type: ignore[assignment]  # optional here, filled per site
        default=None, description="Filled per site from spec.sites: leave it unset"
    )

    @field_validator("source")
    @classmethod
    def _no_source(cls, value: WorkloadSource | None) -> WorkloadSource | None:
        if value is not None:
            raise ValueError(
                "source.site is filled per site from spec.sites; leave spec.template.source unset"
            )
        return value


class SiteOverride(ApiModel):
    sites: list[SiteName] = Field(min_length=1, description="The sites this patch applies to")
    patch: dict[str, Any] = Field(
        description="A JSON merge patch (RFC 7386) of spec.template for these sites (null removes a field); "
        "overrides apply in order"
    )

    @field_validator("patch")
    @classmethod
    def _not_source(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "source" in value:
            raise ValueError("source.site is filled per site from spec.sites; a patch cannot set it")
        return value


# --- spec.rollout -------------------------------------------------------------------------------------
# The defaults of the gate settings are GateSettings' (continuum.rollout.gate); api/ cannot import rollout/
# (layers), so they are repeated here and tests/fleet/test_rollout_api.py checks that both agree.


class ShadowStep(ApiModel):
    """The candidate answers a copy of every request; its answers are compared, never returned."""

    duration_seconds: float = Field(
        default=0, ge=0, description="The step lasts at least this long, whatever the evidence"
    )
    min_samples: int | None = Field(
        default=None, ge=1, description="Candidate requests before this step may pass; unset: gate.minSamples"
    )


class CanaryStep(ShadowStep):
    """The worker sends this percentage of requests to the candidate (its answers are returned)."""

    weight: int = Field(ge=1, le=99, description="Percent of requests the candidate answers")


class FullStep(ApiModel):
    """Every request to the candidate: the wave's children get the candidate in spec.model."""


class RolloutStep(ApiModel):
    """Exactly one of shadow, canary, full."""

    shadow: ShadowStep | None = None
    canary: CanaryStep | None = None
    full: FullStep | None = None

    @model_validator(mode="after")
    def _one(self) -> RolloutStep:
        if sum(x is not None for x in (self.shadow, self.canary, self.full)) != 1:
            raise ValueError("a step is exactly one of shadow, canary, full")
        return self

    @property
    def kind(self) -> str:
        return "shadow" if self.shadow else "canary" if self.canary else "full"

    @property
    def gated(self) -> ShadowStep | None:
        return self.shadow or self.canary


def _check_steps(steps: list[RolloutStep]) -> list[RolloutStep]:
    fulls = [i for i, step in enumerate(steps) if step.full is not None]
    if fulls and fulls != [len(steps) - 1]:
        raise ValueError("full may appear once, as the last step")
    return steps


class OnFailure(enum.StrEnum):
    ROLLBACK = "rollback"  # every site back to the stable version; the rollout halts (RolledBack)
    PAUSE = "pause"  # the failing wave back to the stable version; the rollout pauses (Paused)


class DriftGateSpec(ApiModel):
    """The drift gate (continuum.rollout.gate.DriftSettings, docs/fleet.md): the candidate's scored drift
    windows whose outputs drift against its reference while the stable version's at that site do not."""

    good: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Good: this fraction of the candidate's scored windows drift on the outputs",
    )
    bad: float = Field(
        default=0.5, gt=0, lt=1, description="Bad: this fraction of the candidate's scored windows drift"
    )
    required: bool = Field(
        default=False,
        description="A step waits until the drift gate passes (scored windows need the worker's "
        "--drift-min-samples rows); false: it only rolls back",
    )

    @model_validator(mode="after")
    def _ordered(self) -> DriftGateSpec:
        if self.good >= self.bad:
            raise ValueError("good must be below bad")
        return self


class GateSpec(ApiModel):
    """The gate between steps (continuum.rollout.gate, docs/fleet.md); defaults are GateSettings'."""

    alpha: float = Field(default=0.03, gt=0, lt=0.5, description="Targeted false-rollback rate")
    beta: float = Field(default=0.03, gt=0, lt=0.5, description="Targeted false-promote rate")
    error_ratio: float = Field(
        default=2.0, gt=1, description="Bad: the candidate's error rate is this many times the stable's"
    )
    disagreement_good: float = Field(
        default=0.01, gt=0, lt=1, description="Good: this fraction of shadowed answers differ"
    )
    disagreement_bad: float = Field(
        default=0.05, gt=0, lt=1, description="Bad: this fraction of shadowed answers differ"
    )
    min_samples: int = Field(default=500, ge=1, description="Candidate requests before a step may pass")
    max_samples: int = Field(
        default=100_000,
        ge=1,
        description="Candidate requests after which a gate decides by its evidence's sign",
    )
    latency_ratio: float = Field(
        default=1.5,
        gt=1,
        description="Bad: the candidate's p99 latency is above this many times the stable's",
    )
    latency_slack_seconds: float = Field(
        default=0.005, ge=0, description="Added to the latency limit (a 1 ms model's p99 jitters)"
    )
    latency_min_samples: int = Field(
        default=1000,
        ge=1,
        description="Requests each version answered (in the step, pooled) before their p99 are compared",
    )
    on_failure: OnFailure = Field(default=OnFailure.ROLLBACK, description="rollback (halt) or pause")
    drift: DriftGateSpec | None = Field(
        default=None,
        description="Gate on the drift of the candidate's outputs (the workers' drift reports); unset: off",
    )

    @model_validator(mode="after")
    def _ordered(self) -> GateSpec:
        if self.disagreement_good >= self.disagreement_bad:
            raise ValueError("disagreementGood must be below disagreementBad")
        if self.min_samples > self.max_samples:
            raise ValueError("minSamples must not exceed maxSamples")
        return self


class WaveSpec(ApiModel):
    """The sites of one wave: those whose tier is in ``tiers`` and whose pools' labels match ``selector``
    (both when both are given); a site belongs to the first wave that selects it."""

    name: SiteName
    tiers: list[Tier] | None = Field(
        default=None, min_length=1, description="The tier the site's child is placed on (else its pools')"
    )
    selector: LabelSelector | None = Field(
        default=None,
        description="Over the labels of the site's EdgeNodePools (e.g. continuum.dev/ring)",
    )
    max_unavailable_sites: int | None = Field(
        default=None,
        ge=0,
        description="Sites that may be deferred (unreachable) while the wave proceeds; "
        "unset: spec.rollout.maxUnavailableSites",
    )
    steps: list[RolloutStep] | None = Field(
        default=None, min_length=1, description="Unset: spec.rollout.steps"
    )

    @model_validator(mode="after")
    def _selects(self) -> WaveSpec:
        if self.tiers is None and self.selector is None:
            raise ValueError("give tiers, selector or both")
        if self.selector is not None and self.selector.is_empty():
            raise ValueError("an empty selector would match no site; give matchLabels or matchExpressions")
        if self.steps is not None:
            _check_steps(self.steps)
        return self


DEFAULT_STEPS = [{"shadow": {}}, {"canary": {"weight": 10}}, {"full": {}}]


class RolloutSpec(ApiModel):
    """How a change of spec.template.model reaches the sites: waves, steps, gates, control fields."""

    waves: list[WaveSpec] = Field(
        default_factory=list, description="In order; a last wave named 'rest' takes the sites none selects"
    )
    steps: list[RolloutStep] = Field(
        default_factory=lambda: [RolloutStep.model_validate(s) for s in DEFAULT_STEPS],
        min_length=1,
        description="Every wave's steps unless the wave gives its own; a last full step is implied",
    )
    max_unavailable_sites: int = Field(default=0, ge=0, description="Every wave's unless it gives its own")
    window_seconds: float = Field(default=10.0, ge=0.2, description="How often the workers are read")
    gate: GateSpec = Field(default_factory=GateSpec)
    paused: bool = Field(
        default=False, description="Hold the rollout at its step (a failing gate still rolls back)"
    )
    promote: str | None = Field(
        default=None,
        min_length=1,
        description="The candidate version to promote now: every site gets it, no more gates "
        "(names a version so that a value left in Git never promotes a later candidate)",
    )
    abort: str | None = Field(
        default=None, min_length=1, description="The candidate version to abort: every site back to stable"
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[RolloutStep]) -> list[RolloutStep]:
        return _check_steps(value)

    @model_validator(mode="after")
    def _distinct(self) -> RolloutSpec:
        names = [w.name for w in self.waves]
        if len(set(names)) != len(names):
            raise ValueError("two waves have the same name")
        if "rest" in names:
            raise ValueError("'rest' is the name of the implicit last wave")
        if self.promote is not None and self.promote == self.abort:
            raise ValueError("promote and abort name the same version")
        return self


class EdgeWorkloadSetSpec(ApiModel):
    sites: SiteSelection
    template: WorkloadTemplate
    overrides: list[SiteOverride] = Field(default_factory=list)
    rollout: RolloutSpec | None = Field(
        default=None,
        description="Unset: a change of template.model is written into every child at once",
    )

    @model_validator(mode="after")
    def _model_is_the_sets(self) -> EdgeWorkloadSetSpec:
        if self.rollout is not None:
            for index, override in enumerate(self.overrides):
                if "model" in override.patch:
                    raise ValueError(
                        f"overrides[{index}].patch.model: with spec.rollout the model is the rollout's "
                        "(one version at every site); remove the override"
                    )
        return self


class VersionCount(StatusModel):
    version: str
    sites: int = 0
    placed: int = 0
    ready: int = 0


class RolloutPhase(enum.StrEnum):
    STABLE = "Stable"  # no candidate: every site runs the stable version
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    INVALID = "Invalid"  # the template's model cannot be rolled out (the message names the field)


class Histogram(StatusModel):
    """Latency in seconds: cumulative counts at the finite upper bounds ``le``; ``count`` is every sample."""

    le: list[float] = Field(default_factory=list)
    counts: list[int] = Field(default_factory=list)
    count: int = 0


class VersionCounters(StatusModel):
    requests: int = 0
    errors: int = 0
    shadow_compared: int = 0
    shadow_disagreed: int = 0
    latency: Histogram = Field(default_factory=Histogram)


class SiteBaseline(StatusModel):
    """A site's counters when last read (cumulative per worker process ``instance``): a window is the
    difference to the next reading."""

    site: str
    instance: str
    stable: VersionCounters = Field(default_factory=VersionCounters)
    candidate: VersionCounters = Field(default_factory=VersionCounters)
    drift_windows: int | None = Field(
        default=None, description="The candidate's closed drift windows at that reading (drift gate)"
    )


class GateEvidence(StatusModel):
    """The gate's state (GateState) for the current step: kept here so a restart loses nothing."""

    error_llr: float = 0.0
    agreement_llr: float = 0.0
    candidate_requests: int = 0
    shadow_compared: int = 0
    stable_latency: Histogram = Field(default_factory=Histogram)
    candidate_latency: Histogram = Field(default_factory=Histogram)
    drift_llr: float = 0.0
    drift_windows: int = Field(default=0, description="Scored candidate drift windows counted (drift gate)")
    drift_drifted: int = Field(default=0, description="Of them, windows whose outputs drifted")
    drift_last: str | None = Field(
        default=None, description="The last candidate window that drifted, and where"
    )
    verdict: str | None = Field(default=None, description="The gate's last decision and why")


class WaveStatus(StatusModel):
    name: str
    sites: int = Field(default=0, description="Sites in this wave")
    done: int = Field(default=0, description="Sites whose child runs the candidate")
    deferred: list[str] = Field(
        default_factory=list, description="Sites of the running step whose worker has not confirmed it"
    )


class RolloutStatus(StatusModel):
    phase: RolloutPhase = RolloutPhase.STABLE
    stable: ModelRef | None = Field(
        default=None, description="The version every site runs when no rollout is"
    )
    candidate: ModelRef | None = None
    wave: int = Field(default=0, description="Index of the current wave")
    wave_name: str | None = None
    step: int = Field(default=0, description="Index of the current step in the wave")
    step_kind: str | None = None
    step_started_at: Timestamp | None = None
    generation: str | None = Field(default=None, description="What the current wave's workers are asked for")
    waves: list[WaveStatus] = Field(default_factory=list)
    gate: GateEvidence = Field(default_factory=GateEvidence)
    baselines: list[SiteBaseline] = Field(default_factory=list)
    reverting: list[str] = Field(
        default_factory=list, description="Sites whose worker has not yet confirmed the stable version"
    )
    promoting: list[str] = Field(
        default_factory=list, description="Sites whose worker has not yet confirmed the promoted version"
    )
    cause: str | None = Field(default=None, description="Why the rollout rolled back, paused or aborted")
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    paused_by_gate: bool = False


class EdgeWorkloadSetStatus(StatusModel):
    sites: int = Field(default=0, description="Sites selected")
    placed: int = Field(default=0, description="Children whose phase is Placed")
    unschedulable: int = Field(default=0, description="Children whose phase is Unschedulable")
    ready: int = Field(default=0, description="Children whose Ready condition is True")
    invalid: int = Field(default=0, description="Sites whose rendered spec (template + overrides) is invalid")
    versions: list[VersionCount] = Field(default_factory=list, description="Children per model version")
    conflicts: list[str] = Field(
        default_factory=list, description="Child names already taken by an EdgeWorkload this set does not own"
    )
    unmatched_overrides: list[str] = Field(
        default_factory=list, description="Sites named in spec.overrides that are not selected"
    )
    message: str | None = None
    rollout: RolloutStatus | None = Field(default=None, description="Present with spec.rollout")
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class EdgeWorkloadSet(BaseModel):
    """One EdgeWorkload per selected site, from one template (a fleet)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    KIND: ClassVar[str] = "EdgeWorkloadSet"
    PLURAL: ClassVar[str] = "edgeworkloadsets"

    api_version: Literal["continuum.dev/v1alpha1"] = Field(
        default="continuum.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["EdgeWorkloadSet"] = "EdgeWorkloadSet"
    metadata: ObjectMeta
    spec: EdgeWorkloadSetSpec
    status: EdgeWorkloadSetStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
