"""The Continuum API, ``continuum.dev/v1alpha1``: ``EdgeNodePool`` and ``EdgeWorkload``.

These pydantic models are the single source of truth: the CRD YAML in ``crds/`` is generated from them
(:mod:`continuum.api.crd`), the operator and ``continuum plan`` validate every object with them, and a
validation error's location (``spec.requirements.latencyBudgetMs``) is what users see.

Field names are the camelCase names users write in YAML; Python code uses snake_case attributes.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from continuum.api.quantity import QUANTITY_PATTERN, QuantityError, cpu_millis, memory_bytes

GROUP = "continuum.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_POOL = f"{GROUP}/pool"
LABEL_TIER = f"{GROUP}/tier"
LABEL_SITE = f"{GROUP}/site"
LABEL_WORKLOAD = f"{GROUP}/workload"
LABEL_ACCELERATOR = f"{GROUP}/accelerator"
GPU_RESOURCE = "nvidia.com/gpu"


class Tier(enum.StrEnum):
    """Where on the continuum a pool sits, nearest to the data first."""

    DEVICE = "device"
    NEAR_EDGE = "near-edge"
    REGIONAL_MEC = "regional-mec"
    CLOUD = "cloud"

    @property
    def order(self) -> int:
        return _TIER_ORDER[self]


_TIER_ORDER = {tier: i for i, tier in enumerate(Tier)}


class Privacy(enum.StrEnum):
    """Data classification, lowest first: ``public < internal < confidential < restricted``."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"

    @property
    def rank(self) -> int:
        return _PRIVACY_RANK[self]


_PRIVACY_RANK = {level: i for i, level in enumerate(Privacy)}

DEFAULT_MAX_PRIVACY: dict[Tier, Privacy] = {
    Tier.DEVICE: Privacy.RESTRICTED,
    Tier.NEAR_EDGE: Privacy.RESTRICTED,
    Tier.REGIONAL_MEC: Privacy.CONFIDENTIAL,
    Tier.CLOUD: Privacy.INTERNAL,
}
TAINTED_BY_DEFAULT = frozenset({Tier.DEVICE, Tier.NEAR_EDGE})


# --- shared field types ---------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _check_quantity(value: str) -> str:
    try:
        cpu_millis(value)
    except QuantityError as exc:
        raise ValueError(str(exc)) from None
    return value


def _coerce_quantity(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string such as 500m or 512Mi, not a boolean")
    if isinstance(value, int | float):
        return str(value)
    return value


# A Kubernetes quantity: accepted as a number or a string, kept as the string the user wrote.
Quantity = Annotated[
    str,
    BeforeValidator(_coerce_quantity),
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
SiteName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes timestamps."""
    global _last_timestamp
    last = _last_timestamp
    if last[0] == moment:  # a status's timestamps are mostly one moment: formatted once
        return last[1]
    text = (moment.astimezone(UTC) if moment.tzinfo is not None else moment).strftime("%Y-%m-%dT%H:%M:%SZ")
    _last_timestamp = (moment, text)
    return text


_last_timestamp: tuple[datetime | None, str] = (None, "")  # the last moment formatted, and its text


Timestamp = Annotated[
    datetime,
    PlainSerializer(format_timestamp, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class ApiModel(BaseModel):
    """Base for spec models: camelCase in YAML, unknown fields are an error (they are typos)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
        serialize_by_alias=True,
    )

    def dump(self) -> dict[str, Any]:
        """The YAML/JSON form users write: camelCase, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(ApiModel):
    """Status is written by the operator; tolerate fields from newer versions."""

    model_config = ConfigDict(extra="ignore", frozen=False)


# --- Kubernetes building blocks ------------------------------------------------------------------


class LabelSelectorRequirement(ApiModel):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(ApiModel):
    """A Kubernetes label selector. An empty selector matches no node (never every node by accident)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: dict[str, str]) -> bool:
        if self.is_empty():
            return False
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class Taint(ApiModel):
    key: str = Field(min_length=1)
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"

    def toleration(self) -> dict[str, str]:
        """The toleration that tolerates exactly this taint."""
        tol = {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}
        if not self.value:
            tol = {"key": self.key, "operator": "Exists", "effect": self.effect}
        return tol


class Condition(StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: Timestamp | None = None
    observed_generation: int | None = None


# --- EdgeNodePool -----------------------------------------------------------------------------------


class PoolNetwork(ApiModel):
    rtt_ms: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description='Round-trip time in ms from each source site\'s data to this pool; "*" is the default '
        'for sites not listed. A site with no entry and no "*" has no route to the pool.',
    )
    wan_ingress_mbps: float | None = Field(
        default=None,
        ge=0,
        description="Capacity in Mbps for data arriving from other sites. Unset: not limited.",
    )

    def rtt_from(self, site: str) -> float | None:
        if site in self.rtt_ms:
            return self.rtt_ms[site]
        return self.rtt_ms.get("*")


class PoolCost(ApiModel):
    """Hourly prices. Any currency, as long as every pool uses the same one."""

    cpu: float = Field(default=0.0, ge=0, description="per core per hour")
    memory_gi_b: float = Field(default=0.0, ge=0, alias="memoryGiB", description="per GiB per hour")
    gpu: float = Field(default=0.0, ge=0, description="per GPU per hour")
    wan_mbps: float = Field(default=0.0, ge=0, description="per Mbps crossing into the pool per hour")


class EdgeNodePoolSpec(ApiModel):
    tier: Tier
    site: SiteName
    region: str | None = Field(default=None, min_length=1, description="Jurisdiction, e.g. eu-central")
    node_selector: LabelSelector = Field(description="Chooses the member nodes. Must not be empty.")
    taints: list[Taint] | None = Field(
        default=None,
        description="Taints put on member nodes. Unset: continuum.dev/tier=<tier>:NoSchedule for device "
        "and near-edge pools, none otherwise. [] for none.",
    )
    network: PoolNetwork = Field(default_factory=PoolNetwork)
    max_privacy: Privacy | None = Field(
        default=None,
        description="Highest privacy level the pool may host. Unset: restricted for device and "
        "near-edge, confidential for regional-mec, internal for cloud.",
    )
    cost: PoolCost = Field(default_factory=PoolCost)

    @field_validator("node_selector")
    @classmethod
    def _selector_not_empty(cls, value: LabelSelector) -> LabelSelector:
        if value.is_empty():
            raise ValueError(
                "an empty nodeSelector would match no node; give matchLabels or matchExpressions"
            )
        return value

    @cached_property
    def effective_taints(self) -> tuple[Taint, ...]:
        """The taints the pool puts on its nodes (and its workers tolerate); made once per spec (frozen),
        as every render and snapshot reads them."""
        if self.taints is not None:
            return tuple(self.taints)
        if self.tier in TAINTED_BY_DEFAULT:
            return (Taint(key=LABEL_TIER, value=self.tier.value, effect="NoSchedule"),)
        return ()

    @property
    def effective_max_privacy(self) -> Privacy:
        return self.max_privacy if self.max_privacy is not None else DEFAULT_MAX_PRIVACY[self.tier]


class ResourceAmounts(StatusModel):
    cpu: str = "0"
    memory: str = "0"
    gpu: int = 0


class EdgeNodePoolStatus(StatusModel):
    member_nodes: list[str] = Field(default_factory=list)
    node_count: int = 0
    ready_nodes: int = 0
    allocatable: ResourceAmounts | None = None
    requested: ResourceAmounts | None = None
    workloads: int = 0
    conflicts: list[str] = Field(default_factory=list, description="Nodes also selected by another pool")
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class ObjectMeta(BaseModel):
    """The part of ObjectMeta Continuum reads; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", value):
            raise ValueError("must be a lowercase DNS name (a-z, 0-9, '-', '.')")
        return value


class EdgeNodePool(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    KIND: ClassVar[str] = "EdgeNodePool"
    PLURAL: ClassVar[str] = "edgenodepools"

    api_version: Literal["continuum.dev/v1alpha1"] = Field(
        default="continuum.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["EdgeNodePool"] = "EdgeNodePool"
    metadata: ObjectMeta
    spec: EdgeNodePoolSpec
    status: EdgeNodePoolStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name


# --- EdgeWorkload -----------------------------------------------------------------------------------


class WorkloadSource(ApiModel):
    site: SiteName = Field(description="Site where the workload's data originates")


class Bandwidth(ApiModel):
    ingest_mbps: float = Field(default=0.0, ge=0, description="Data rate from the source, in Mbps")


class ResourceRequests(ApiModel):
    cpu: Quantity = Field(default="100m", description="CPU per replica")
    memory: Quantity = Field(default="128Mi", description="Memory per replica")
    gpu: int = Field(default=0, ge=0, description=f"GPUs per replica ({GPU_RESOURCE})")
    accelerator: str | None = Field(
        default=None,
        min_length=1,
        description=f"Accelerator a node must offer: a value of the node label {LABEL_ACCELERATOR}, "
        "or key=value for any node label (e.g. nvidia.com/gpu.product=Orin)",
    )

    @property
    def cpu_millis(self) -> int:
        return cpu_millis(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return memory_bytes(self.memory)

    def accelerator_matches(self, labels: dict[str, str]) -> bool:
        if self.accelerator is None:
            return True
        if "=" in self.accelerator:
            key, _, value = self.accelerator.partition("=")
            return labels.get(key) == value
        return labels.get(LABEL_ACCELERATOR) == self.accelerator


class Requirements(ApiModel):
    latency_budget_ms: float = Field(gt=0, description="End-to-end budget: RTT from the source + inference")
    bandwidth: Bandwidth = Field(default_factory=Bandwidth)
    privacy: Privacy = Field(default=Privacy.INTERNAL)
    residency: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="Regions the workload may run in. Unset: any."
    )
    resources: ResourceRequests = Field(default_factory=ResourceRequests)
    inference_ms: dict[Tier, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="Estimated model time per tier, in ms (unset tiers: 0)"
    )


class TierPreferences(ApiModel):
    allowed: list[Tier] | None = Field(default=None, min_length=1, description="Unset: every tier")
    preferred: list[Tier] = Field(
        default_factory=list,
        description="Ordered: the first tier that can host the workload wins; other allowed tiers are spill",
    )

    @model_validator(mode="after")
    def _preferred_within_allowed(self) -> TierPreferences:
        if len(set(self.preferred)) != len(self.preferred):
            raise ValueError("tiers.preferred lists a tier twice")
        if self.allowed is not None:
            outside = [t.value for t in self.preferred if t not in self.allowed]
            if outside:
                raise ValueError(f"preferred tiers {outside} are not in tiers.allowed")
        return self

    def rank(self, tier: Tier) -> int:
        """0 for the first preferred tier, 1 for the next, ...; len(preferred) for any other tier."""
        try:
            return self.preferred.index(tier)
        except ValueError:
            return len(self.preferred)


class ModelRef(ApiModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    uri: str = Field(min_length=1, description="path, file://, http(s):// URI of the model file")
    version: str = Field(default="1", min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class EnvVar(ApiModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str = ""


class WorkerOverrides(ApiModel):
    image: str | None = Field(default=None, min_length=1, description="Unset: the operator's default")
    backends: list[str] | None = Field(
        default=None, min_length=1, description="Backend preference, e.g. [onnxruntime:cuda,cpu, openvino]"
    )
    port: int = Field(default=8000, ge=1, le=65535)
    max_batch_size: int = Field(default=0, ge=0, description="Dynamic batching; 0 turns it off")
    max_queue_delay_us: int = Field(default=500, ge=0)
    env: list[EnvVar] = Field(default_factory=list)
    limits: dict[str, Quantity] | None = Field(default=None, description="Container resource limits")


class StateSpec(ApiModel):
    enabled: bool = False
    size: Quantity = "1Gi"
    storage_class_name: str = Field(default="local-path", min_length=1)
    sync_to: Tier | None = Field(default=None, description="Tier whose replica of this model receives state")
    retention: int = Field(default=1000, ge=1, description="Events kept per event log")


class OffloadSpec(ApiModel):
    tier: Tier = Field(description="Offload inference to the same model placed on this tier")
    timeout_ms: int = Field(default=50, ge=1, le=60000)
    fallback_model_uri: str | None = Field(default=None, min_length=1)


class IngestSpec(ApiModel):
    """Streaming input: the worker consumes MQTT topics and publishes results (docs/streaming.md)."""

    broker: str = Field(pattern=r"^mqtt://[^/?#]+$", description="Source broker, mqtt://HOST[:PORT]")
    topics: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="Source topics (+/# allowed)")
    decoder: Literal["v2", "raw", "npy"] = Field(default="v2", description="v2 infer request JSON, raw array, .npy")
    dtype: str | None = Field(default=None, description="decoder raw: v2 datatype, e.g. FP32")
    shape: list[int] | None = Field(default=None, description="decoder raw: shape, -1 for one free dimension")
    input: str | None = Field(default=None, description="decoder raw/npy: the model input fed")
    publish_broker: str | None = Field(
        default=None, pattern=r"^mqtt://[^/?#]+$", description="Where results go; unset: the source broker"
    )
    publish_topic: str = Field(min_length=1, description="Results (or events) topic; also TOPIC/summary, TOPIC/dead-letter")
    filter: Literal["all", "events"] = Field(default="all", description="events: only rows above the threshold, plus summaries")
    event_threshold: float = Field(default=0.9, description="events filter: top score above it is an event")
    publish_after: Literal["written", "durable"] = Field(
        default="written", description="written: a result is published once handed to the outbox (the source is "
        "acknowledged after its commit either way); durable: once committed",
    )
    messages_per_second: float = Field(default=0.0, ge=0, description="Expected message rate (the WAN charge)")
    message_bytes: int = Field(default=0, ge=0, description="Expected message size in bytes (the WAN charge)")

    @property
    def mbps(self) -> float:
        """The stream's data rate in Mbps."""
        return self.messages_per_second * self.message_bytes * 8 / 1e6

    @model_validator(mode="after")
    def _decoder_fields(self) -> IngestSpec:
        if self.decoder == "raw" and (not self.dtype or not self.shape):
            raise ValueError("ingest.decoder raw needs ingest.dtype and ingest.shape")
        if self.decoder != "raw" and (self.dtype or self.shape):
            raise ValueError("ingest.dtype and ingest.shape apply to decoder raw only")
        if self.decoder == "v2" and self.input:
            raise ValueError("ingest.input applies to decoder raw/npy (a v2 request names its inputs)")
        if "#" in self.publish_topic or "+" in self.publish_topic:
            raise ValueError("ingest.publishTopic cannot hold the wildcards + or #")
        return self


class EdgeWorkloadSpec(ApiModel):
    source: WorkloadSource
    requirements: Requirements
    replicas: int = Field(default=1, ge=1, le=1000)
    tiers: TierPreferences = Field(default_factory=TierPreferences)
    model: ModelRef
    worker: WorkerOverrides = Field(default_factory=WorkerOverrides)
    state: StateSpec = Field(default_factory=StateSpec)
    offload: OffloadSpec | None = None
    ingest: IngestSpec | None = Field(
        default=None,
        description="Streaming input over MQTT (needs state.enabled); its messagesPerSecond x messageBytes "
        "raises requirements.bandwidth.ingestMbps (the WAN charge when placed off-site) to the stream's rate",
    )

    @model_validator(mode="after")
    def _ingest(self) -> EdgeWorkloadSpec:
        if self.ingest is None:
            return self
        if not self.state.enabled:
            raise ValueError("ingest needs state.enabled: results are stored on the state volume before a "
                             "message is acknowledged")  # fmt: skip
        if self.ingest.mbps > self.requirements.bandwidth.ingest_mbps:  # placement charges the stream's rate
            bandwidth = self.requirements.bandwidth.model_copy(update={"ingest_mbps": self.ingest.mbps})
            object.__setattr__(self, "requirements", self.requirements.model_copy(update={"bandwidth": bandwidth}))
        return self

    @model_validator(mode="after")
    def _offload_elsewhere(self) -> EdgeWorkloadSpec:
        allowed = self.tiers.allowed
        if self.offload is not None and allowed is not None and allowed == [self.offload.tier]:
            raise ValueError("offload.tier is the only allowed tier: the workload would offload to itself")
        return self


class Phase(enum.StrEnum):
    PLACED = "Placed"
    UNSCHEDULABLE = "Unschedulable"
    INVALID = "Invalid"


class ReasonCode(enum.StrEnum):
    """Why a pool cannot host a workload. Every rejected candidate carries at least one."""

    TIER_NOT_ALLOWED = "TierNotAllowed"
    PRIVACY = "Privacy"
    RESIDENCY = "Residency"
    LATENCY = "Latency"
    BANDWIDTH = "Bandwidth"
    NO_NODES = "NoNodes"
    ACCELERATOR = "Accelerator"
    CAPACITY = "Capacity"


class Reason(StatusModel):
    code: ReasonCode
    message: str


class Candidate(StatusModel):
    pool: str
    tier: Tier
    feasible: bool
    estimated_latency_ms: float | None = None
    hourly_cost: float | None = None
    reasons: list[Reason] = Field(default_factory=list)


class Placement(StatusModel):
    pool: str
    tier: Tier
    site: str
    estimated_latency_ms: float
    wan_mbps: float = 0.0
    hourly_cost: float = 0.0
    since: Timestamp | None = None


class Disruption(StatusModel):
    """The current pool stopped being able to host the workload; it moves after the grace period."""

    since: Timestamp
    reason: str


class StateSyncStatus(StatusModel):
    """Sync health of the workload's CRDT state, as its worker reports it (``GET /state/sync``)."""

    observed_at: Timestamp = Field(description="When the operator last asked the worker")
    reachable: bool = Field(description="Whether the worker answered")
    pending_updates: int = Field(default=0, ge=0, description="Local updates the upstream has not acknowledged")
    last_sync_time: Timestamp | None = Field(default=None, description="Last successful sync with the upstream")
    sync_failures: int = Field(default=0, ge=0, description="Failed sync attempts since the worker started")
    peers: int = Field(default=0, ge=0, description="Peers and upstreams the worker syncs with")
    message: str | None = None


class DriftStatus(StatusModel):
    """Model drift as the workload's worker reports it (``GET /v2/models/{m}/drift``, docs/drift.md)."""

    observed_at: Timestamp = Field(description="When the operator last asked the worker")
    reachable: bool = Field(description="Whether the worker answered")
    score: float | None = Field(
        default=None, ge=0, le=1, description="Largest KS distance of the last scored window to the reference"
    )
    drifting: bool = Field(default=False, description="Whether the last scored window is drifting")
    samples: int = Field(default=0, ge=0, description="Rows in the last closed window")
    window_status: str | None = Field(
        default=None, description="ok, drifting, insufficient, no-reference or no-common-features"
    )
    features: list[str] = Field(default_factory=list, description="The most drifted features (at most 5)")
    version: str | None = Field(default=None, description="The model version the worker serves")
    message: str | None = None


class IngestStatus(StatusModel):
    """The streaming input as the workload's worker reports it (``GET /v2/ingest``, docs/streaming.md)."""

    observed_at: Timestamp = Field(description="When the operator last asked the worker")
    reachable: bool = Field(description="Whether the worker answered")
    broker_connected: bool = Field(default=False, description="Every source and the results broker connected")
    pending_records: int = Field(default=0, ge=0, description="Results in the outbox not yet published upstream")
    pending_bytes: int = Field(default=0, ge=0, description="Their payload bytes")
    lag_seconds: float = Field(default=0.0, ge=0, description="Age of the oldest result not yet published upstream")
    source_lag_seconds: float | None = Field(
        default=None, ge=0, description="Receive time minus the publisher's timestamp of the last message (its clock)"
    )
    source_lag_records: int | None = Field(
        default=None, ge=0, description="Kafka sources: records in the topics not yet consumed"
    )
    dropped: int = Field(default=0, ge=0, description="Results dropped unpublished (outbox full, drop-oldest)")
    message: str | None = None


class EdgeWorkloadStatus(StatusModel):
    phase: Phase | None = None
    placement: Placement | None = None
    previous_placement: Placement | None = Field(
        default=None, description="The pool being drained during a make-before-break move"
    )
    candidates: list[Candidate] = Field(
        default_factory=list,
        description="The best feasible pools in the order they would be chosen, then the nearest misses "
        "(fewest broken rules) with their reasons; at most 20 (see candidatesOmitted)",
    )
    candidates_omitted: int = Field(
        default=0, ge=0, description="Pools evaluated but not listed in candidates (continuum plan lists all)"
    )
    hint: str | None = None
    message: str | None = None
    ready_replicas: int = 0
    disruption: Disruption | None = None
    better_since: Timestamp | None = Field(
        default=None, description="Since when a more preferred pool has been feasible (fail-back window)"
    )
    state: StateSyncStatus | None = Field(default=None, description="Present when spec.state.enabled")
    drift: DriftStatus | None = Field(default=None, description="Present once the worker was asked")
    ingest: IngestStatus | None = Field(default=None, description="Present with spec.ingest, once the worker was asked")
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class EdgeWorkload(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    KIND: ClassVar[str] = "EdgeWorkload"
    PLURAL: ClassVar[str] = "edgeworkloads"

    api_version: Literal["continuum.dev/v1alpha1"] = Field(
        default="continuum.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["EdgeWorkload"] = "EdgeWorkload"
    metadata: ObjectMeta
    spec: EdgeWorkloadSpec
    status: EdgeWorkloadStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
