"""``EdgeWorkloadSet`` (``continuum.dev/v1alpha1``, namespaced, short name ``ews``): one EdgeWorkload per site.

A fleet (a store chain, a set of plants) is one spec: ``spec.sites`` picks the sites (names, and/or a label
selector over EdgeNodePools whose ``spec.site`` values count), ``spec.template`` is an EdgeWorkload spec
whose ``source.site`` is filled per site, and ``spec.overrides`` are JSON merge patches (RFC 7386) of the
template for chosen sites. The pure expansion (set + pools → children) is :mod:`continuum.api.fleet`; the
operator and ``continuum plan`` both call it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from continuum.api.models import (
    GROUP,
    ApiModel,
    Condition,
    EdgeWorkloadSpec,
    LabelSelector,
    ObjectMeta,
    SiteName,
    StatusModel,
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


class EdgeWorkloadSetSpec(ApiModel):
    sites: SiteSelection
    template: WorkloadTemplate
    overrides: list[SiteOverride] = Field(default_factory=list)


class VersionCount(StatusModel):
    version: str
    sites: int = 0
    placed: int = 0
    ready: int = 0


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
