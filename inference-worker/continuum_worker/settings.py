"""Every setting of ``continuum-worker serve``, in one place.

:class:`WorkerSettings` is the source of truth: each field is a flag ``--field-name`` and a variable
``CONTINUUM_FIELD_NAME`` (a flag wins); the CLI parser, its help and its defaults are derived from the
fields, and a test checks the worker table of docs/contracts.md against them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "CONTINUUM_"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.I)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # fmt: skip


def parse_size(value: Any) -> int:
    """``512Mi``, ``2G``, ``1000000`` -> bytes (Kubernetes quantity suffixes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (e.g. 512Mi, 2G, 1000000)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]
UriList = Annotated[list[str], NoDecode]  # URIs may hold commas (shape=1,64): space-separated in the variable


class WorkerSettings(BaseSettings):
    """``continuum-worker serve``. Either one model (``--model-name`` and ``--model-uri``) or a
    Triton-layout ``--model-repository``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, env_ignore_empty=True
    )

    model_name: str | None = Field(None, description="model name served under /v2/models/{name} (one-model shorthand)")
    model_uri: str | None = Field(None, description="path, file://, http(s):// URI of the ONNX file (one-model shorthand)")
    model_version: str = Field("1", description="version string of the one model")
    model_sha256: str | None = Field(None, description="checksum verified after download")
    model_repository: Path | None = Field(
        None, description="Triton-layout repository: <model>/<version>/model.onnx, optional config.pbtxt"
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        "none", description="repository: none (load all, no API loads), explicit (API loads), poll (rescan)"
    )
    load_model: CommaList = Field(
        default_factory=list, description="explicit mode: models loaded at start (repeatable or comma-separated; * = all)"
    )
    repository_poll_secs: float = Field(15.0, description="poll mode: seconds between repository scans")
    memory_limit: int | None = Field(
        None, description="bytes (512Mi, 2G) the loaded models may use; a load beyond it fails"
    )
    backends: str | None = Field(
        None, description="preference list, ';'-separated, e.g. 'onnxruntime:tensorrt,cuda,openvino,cpu;openvino:GPU,CPU'"
    )
    fallback_model_uri: str | None = Field(None, description="smaller local model used when the upstream is down")
    host: str = Field("0.0.0.0", description="listen address")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port (v2 protocol, /metrics, /state)")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port (KServe v2 GRPCInferenceService); 0: off")
    upstream: str | None = Field(None, description="base URL of an upstream v2 server (offload target)")
    upstream_timeout_ms: float = Field(50.0, gt=0, description="per-request timeout to the upstream")
    max_batch_size: int = Field(0, ge=0, description="dynamic batching of the one model: largest batch; 0: off")
    max_queue_delay_us: int = Field(500, ge=0, description="dynamic batching: longest wait")
    model_cache_dir: Path = Field(Path("/tmp/continuum-models"), description="where downloaded models go")
    state_dir: Path | None = Field(None, description="CRDT state volume (none: state off)")
    state_token: str | None = Field(None, description="bearer token guarding /state writes and /sync")
    sync_to: CommaList = Field(default_factory=list, description="comma-separated upstream base URLs to sync state to")
    sync_peers: CommaList = Field(default_factory=list, description="comma-separated peer base URLs (same pool)")
    state_retention: int = Field(1000, ge=1, description="events kept per bounded event log")
    event_threshold: float = Field(0.9, description="inference scores above it are recorded as events")
    ingest: UriList = Field(
        default_factory=list,
        description="MQTT source mqtt://HOST:PORT/TOPIC[?decoder=v2|raw|npy&dtype=&shape=&input=&model=&qos=&protocol=] "
        "(repeatable; the variable: space-separated)",
    )
    publish: str | None = Field(
        None, description="MQTT sink mqtt://HOST:PORT/TOPIC for results or events; TOPIC/summary, TOPIC/dead-letter"
    )
    ingest_filter: Literal["all", "events"] = Field(
        "all", description="all: every result upstream; events: only rows above --event-threshold and summaries"
    )
    ingest_summary_secs: float = Field(10.0, gt=0, description="events filter: period of the summary messages")
    ingest_max_in_flight: int = Field(
        256, ge=1, le=65535, description="source messages received and not yet acknowledged (the broker holds the rest)"
    )
    ingest_publish_after: Literal["written", "durable"] = Field(
        "written", description="publish a result of an MQTT source to an MQTT sink once handed to the outbox "
        "(written; the source's acknowledgement still waits for the commit) or once committed (durable)",
    )
    outbox_dir: Path | None = Field(None, description="durable outbox of results (default: <state-dir>/outbox)")
    outbox_max_messages: int = Field(1_000_000, ge=1, description="unpublished records the outbox holds at most")
    outbox_max_bytes: int = Field(2**30, ge=1, description="unpublished payload bytes the outbox holds at most (512Mi, 2G)")
    outbox_full_policy: Literal["block", "drop-oldest"] = Field(
        "block", description="outbox full: block (stop acknowledging; the broker holds messages) or drop-oldest"
    )
    mqtt_client_id: str | None = Field(
        None, description="stable MQTT client id prefix (persistent sessions); default continuum-<replica-id or host>"
    )
    replica_id: str | None = Field(None, description="this replica's name (the pod name)")
    admin_token: str | None = Field(None, description="bearer token for model loads and unloads")
    threads: int = Field(2, ge=1, description="executor threads for model loads and heavier models")
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime threads per run; 0: usable CPUs (cgroup quota) / --threads"
    )
    shadow_tolerance: float = Field(
        0.01, gt=0, description="rollout shadow mode: relative error under which a regressor output agrees"
    )
    shadow_queue: int = Field(
        64, ge=1, description="rollout shadow mode: request copies waiting for the candidate; beyond: dropped, counted"
    )
    drain_seconds: float = Field(25.0, ge=0, description="how long SIGTERM waits for requests in flight")
    log_level: str = Field("INFO", description="Python logging level")
    drift_window_seconds: float = Field(
        60.0, ge=0, description="drift: profile window length (closes once it has --drift-min-samples rows); 0: drift off"
    )
    drift_reference: Path | None = Field(
        None, description="drift: reference profile of the one model (continuum-worker profile --out); repository: <model>[/<version>]/drift_reference.json"
    )
    drift_threshold: float = Field(0.1, gt=0, le=1, description="drift: a feature drifts when its KS distance exceeds it")
    drift_psi_threshold: float = Field(0.2, gt=0, description="drift: a class output drifts when its PSI exceeds it")
    drift_min_samples: int = Field(1000, ge=1, description="drift: rows a window needs before it is scored")
    drift_upload_seconds: float = Field(
        900.0, gt=0, description="drift: period of the summaries recorded in the state and synced upstream"
    )
    drift_k: int = Field(200, ge=8, le=65535, description="drift: KLL sketch size (200: 1.65 % rank error)")
    drift_sample_rate: float = Field(
        500.0, ge=0, description="drift: rows per second per model version profiled at most; above it a uniform random "
        "sample of the requests (rows seen are counted); 0: every row",
    )
    drift_max_features: int = Field(
        256, ge=1, description="drift: widest input profiled element by element; wider: per-channel stats or block means"
    )

    @field_validator("load_model", "sync_to", "sync_peers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [v for item in value for v in _split(item)]
        return _split(value)

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return None if value in (None, "") else parse_size(value)

    @field_validator("backends")
    @classmethod
    def _backends(cls, value: str | None) -> str | None:
        from continuum_worker.backends import parse_backends

        parse_backends(value)  # a typo fails before anything loads
        return value

    @field_validator("ingest", mode="before")
    @classmethod
    def _uri_list(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        return [u for item in items for u in (item.split() if isinstance(item, str) else [item])]

    @field_validator("ingest")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        from continuum_worker.ingest.uri import parse_endpoint

        for uri in value:
            parse_endpoint(uri, source=True)  # names the URI and the part that is wrong
        return value

    @field_validator("publish")
    @classmethod
    def _sink(cls, value: str | None) -> str | None:
        if value is not None:
            from continuum_worker.ingest.uri import parse_endpoint

            parse_endpoint(value, source=False)
        return value

    @field_validator("outbox_max_bytes", mode="before")
    @classmethod
    def _outbox_size(cls, value: Any) -> Any:
        return parse_size(value)

    @field_validator("drift_reference")
    @classmethod
    def _drift_reference(cls, value: Path | None) -> Path | None:
        if value is not None:
            from continuum_worker.drift.profile import load_reference

            load_reference(value)  # a missing or malformed reference fails at start, naming the flag
        return value

    @model_validator(mode="after")
    def _one_source(self) -> WorkerSettings:
        if self.model_repository is None:
            missing = [f for f, v in (("--model-name", self.model_name), ("--model-uri", self.model_uri)) if not v]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)} required (or CONTINUUM_MODEL_NAME / CONTINUUM_MODEL_URI), "
                    "or --model-repository"
                )
            if self.model_control_mode != "none" or self.load_model:
                raise ValueError("--model-control-mode and --load-model need --model-repository")
        elif self.model_uri:
            raise ValueError("--model-uri and --model-repository exclude each other")
        elif self.drift_reference is not None:
            raise ValueError(
                "--drift-reference is for the one-model shorthand; in a repository put drift_reference.json "
                "in <model>/ or <model>/<version>/"
            )
        if self.load_model and self.model_control_mode != "explicit":
            raise ValueError("--load-model needs --model-control-mode explicit")
        return self

    @property
    def shorthand(self) -> bool:
        """One model from ``--model-name/--model-uri`` rather than a repository."""
        return self.model_repository is None


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_var(field: str) -> str:
    return ENV_PREFIX + field.upper()


def default_text(field: str) -> str:
    """The default as docs/contracts.md writes it: the value, or ``none``."""
    info = WorkerSettings.model_fields[field]
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is None or value == []:
        return "none"
    return str(value)
