"""The data plane: what the worker does, with no transport attached (as MLServer's ``DataPlane`` and
KServe's model server split it). HTTP (``rest.py``) and gRPC (``grpc_server.py``) parse their wire
format into a :class:`~continuum_worker.protocol.InferRequest`, call this, and encode the answer.

It holds the models (one shorthand model, or a Triton-layout repository with several models and
versions), validates and runs requests (dynamic batching inside the model), keeps Triton's
statistics, shared-memory regions, and hands results to the state recorder.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from continuum_worker import __version__
from continuum_worker.backends import BackendChoice, auto_intra_op_threads, parse_backends
from continuum_worker.errors import (
    Forbidden,
    InvalidArgument,
    NotFound,
    ServerError,
    Unauthorized,
    Unavailable,
)
from continuum_worker.metrics import WorkerMetrics
from continuum_worker.models import LoadedModel, ModelError, file_bytes, load_model
from continuum_worker.protocol import (
    DATATYPES,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    array_from_bytes,
    tensor_bytes,
)
from continuum_worker.repository import (
    DATA_TYPES,
    ConfigurationError,
    ModelSource,
    config_from_parameter,
    read_model,
    scan,
)
from continuum_worker.rollout import (
    Conflict,
    LoadFailed,
    Rollout,
    VersionBook,
    VersionCollector,
    VersionRef,
    parse_request,
)
from continuum_worker.settings import WorkerSettings
from continuum_worker.shm import CUDA_UNSUPPORTED, SharedMemoryRegistry
from continuum_worker.stats import StatsBook
from continuum_worker.upstream import Forwarded, Upstream, UpstreamFailure

log = logging.getLogger("continuum.worker")
EXTENSIONS = [
    "classification", "binary_tensor_data", "model_repository", "model_repository(unload_dependents)",
    "schedule_policy", "model_configuration", "system_shared_memory", "statistics",
]  # fmt: skip
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
REQUEST_PARAMETERS = {"binary_data_output", "timeout", "priority", *SEQUENCE_PARAMETERS}
T = TypeVar("T")


class InferenceRecorder(Protocol):
    """Where successful results go (the CRDT state's edge filter, ``StateHandle``)."""

    def record_inference(self, model: str, outputs: dict[str, np.ndarray]) -> None: ...


Encoder = Callable[[LoadedModel, dict[str, np.ndarray], list[RequestedOutput]], T]


@dataclass
class ModelSlot:
    """One model name: its loaded versions and where it came from."""

    name: str
    versions: dict[str, LoadedModel] = field(default_factory=dict)
    source: ModelSource | None = None
    config: mc.ModelConfig | None = None
    state: str = "UNAVAILABLE"
    reason: str = ""

    def latest(self) -> LoadedModel | None:
        ready = [m for m in self.versions.values() if m.ready]
        if not ready:
            return None
        return max(ready, key=lambda m: (m.version.isdigit(), int(m.version) if m.version.isdigit() else 0, m.version))


def unknown(name: str, version: str | None = None) -> NotFound:
    if version:
        return NotFound(f"Request for unknown model: '{name}' version {version} is not found")
    return NotFound(f"Request for unknown model: '{name}' is not found")


class DataPlane:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.settings = settings
        self.choices = parse_backends(settings.backends)
        self.metrics = metrics or WorkerMetrics()
        self.stats = StatsBook()
        self.metrics.bind_stats(self.stats)
        self.shm = SharedMemoryRegistry()
        self.executor = ThreadPoolExecutor(max(1, settings.threads), thread_name_prefix="infer")
        self.models: dict[str, ModelSlot] = {}
        self.loading = asyncio.Lock()
        self.draining = False
        self.in_flight = 0
        self.recorder: InferenceRecorder | None = None
        self.drift = _drift_monitor(settings, self.metrics)
        self.upstream = Upstream(settings.upstream, settings.upstream_timeout_ms) if settings.upstream else None
        self._poller: asyncio.Task[None] | None = None
        self.versions = VersionBook()  # per version requests/errors/latency/shadow (docs/rollout-protocol.md)
        self.rollout: Rollout | None = None  # the shorthand model's stable/candidate split
        self.metrics.registry.register(VersionCollector(self.versions, lambda: [self.rollout] if self.rollout else []))

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load what the settings ask for; a shorthand model that fails to load raises ModelError."""
        s = self.settings
        if s.shorthand:
            assert s.model_name and s.model_uri
            local = s.fallback_model_uri if (s.upstream and s.fallback_model_uri) else s.model_uri
            sha = None if local != s.model_uri else s.model_sha256
            await self._load_shorthand(local, s.model_version, sha)
            await self._restore_rollout()
        else:
            assert s.model_repository is not None
            names = list(scan(s.model_repository))
            if s.model_control_mode == "explicit":
                wanted = set(s.load_model)
                names = names if "*" in wanted else [n for n in names if n in wanted]
                missing = sorted(wanted - {"*"} - set(scan(s.model_repository)))
                if missing:
                    raise ModelError(f"--load-model {missing}: no such model in {s.model_repository}")
            for name in scan(s.model_repository):
                self.models.setdefault(name, ModelSlot(name, reason="unloaded"))
            for name in names:
                try:
                    await self.load_repository_model(name)
                except (ServerError, ModelError) as exc:  # one bad model does not stop the others
                    log.error("model %s not loaded: %s", name, exc)
            if s.model_control_mode == "poll":
                self._poller = asyncio.get_running_loop().create_task(self._poll())
        if self.upstream is not None:
            self.metrics.upstream_up.labels(self.upstream.base_url).set(1)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self.rollout is not None:
            await self.rollout.close()
        if self.upstream is not None:
            await self.upstream.close()
        for slot in self.models.values():
            for model in slot.versions.values():
                await model.retire(timeout=self.settings.drain_seconds)
        self.shm.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        if self.draining:
            return False
        if self.settings.shorthand:
            slot = self.models.get(self.settings.model_name or "")
            return slot is not None and slot.latest() is not None
        return all(slot.latest() is not None for slot in self.models.values() if slot.state != "UNAVAILABLE")

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "continuum-worker", "version": __version__, "extensions": EXTENSIONS}

    # -- models ------------------------------------------------------------------------------------
    def model(self, name: str, version: str | None = None) -> LoadedModel:
        slot = self.models.get(name)
        if slot is None:
            raise unknown(name)
        if version:
            model = slot.versions.get(version)
            if model is None or not model.ready:
                raise unknown(name, version)
            return model
        if self.rollout is not None and self.rollout.name == name:
            primary = slot.versions.get(self.rollout.primary())
            if primary is not None and primary.ready:
                return primary
        model = slot.latest()
        if model is None:
            raise NotFound(f"Request for unknown model: '{name}' has no available versions")
        return model

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.model(name, version)
        except NotFound:
            return False
        return not self.draining

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.model(name, version)
        meta = model.metadata()
        meta["versions"] = sorted(self.models[name].versions, key=lambda v: (len(v), v))
        return meta

    def model_config(self, name: str, version: str | None = None) -> mc.ModelConfig:
        model = self.model(name, version)
        slot = self.models[name]
        return slot.config if slot.config is not None else self._autocomplete(mc.ModelConfig(name=name), model)

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        if name:
            models = [self.model(name, version)] if version else [
                m for m in self.models.get(name, ModelSlot(name)).versions.values() if m.ready
            ]
            if not models:
                self.model(name)  # raises the right NotFound
        else:
            models = [m for slot in self.models.values() for m in slot.versions.values() if m.ready]
        entries = []
        for m in models:
            stats = self.stats.of(m.name, m.version)
            stats.memory_bytes = m.memory_bytes
            entries.append(stats.json())
        return {"model_stats": entries}

    def drift_view(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{m}[/versions/{v}]/drift``: the model version's drift report (docs/drift.md)."""
        model = self.model(name, version)
        if self.drift is None:
            raise Unavailable("drift profiling is off (--drift-window-seconds 0)")
        return self.drift.view(model.name, model.version)

    # -- inference ---------------------------------------------------------------------------------
    async def infer(
        self, name: str, version: str | None, request: InferRequest, encode: Encoder[T],
        timings: dict[str, float] | None = None,
    ) -> T:
        """Validate, run and encode one request; raises :class:`ServerError` (unknown models: NotFound).
        ``timings``, when given, receives this request's ``queue`` and ``compute`` seconds (ingest's
        per-stage latency)."""
        started = time.perf_counter()
        model = self._route(name, version)
        stats = self.stats.of(model.name, model.version)
        counters = self.versions.of(model.name, model.version)
        self.in_flight += 1
        try:
            inputs = self._inputs(request)
            self._check_parameters(request.parameters)
            model.validate(inputs, request.datatypes)
            wanted = self._wanted(model, request)
            ready = time.perf_counter()
            timeout = request.parameters.get("timeout")
            if timeout:  # awaited directly (not wait_for's task): the version counts it in flight at once
                async with asyncio.timeout(timeout / 1e6):
                    results, queued, computed, batched = await model.infer(inputs)
            else:
                results, queued, computed, batched = await model.infer(inputs)
            done = time.perf_counter()
            raw_results = results
            results = self._outputs(model, results, wanted)
            payload = encode(model, results, wanted)
            finished = time.perf_counter()
        except TimeoutError:
            stats.failure(elapsed := time.perf_counter() - started)
            counters.observe("error", elapsed)
            raise Unavailable("Request timeout expired") from None
        except ServerError as exc:
            stats.failure(elapsed := time.perf_counter() - started)
            counters.observe("invalid" if exc.http_status < 500 else "error", elapsed)
            raise
        except ProtocolError as exc:
            stats.failure(elapsed := time.perf_counter() - started)
            counters.observe("invalid", elapsed)
            raise InvalidArgument(str(exc)) from None
        except Exception as exc:  # a backend failure must never take the server down
            log.exception("inference failed for model %s", name)
            stats.failure(elapsed := time.perf_counter() - started)
            counters.observe("error", elapsed)
            raise ServerError(f"inference failed: {exc}") from exc
        finally:
            self.in_flight -= 1
        rows = next(iter(inputs.values())).shape[0] if model.batchable and inputs else 1
        compute_input = ready - started
        queue = queued if batched else max(0.0, done - ready - computed)
        stats.success(rows, finished - started, queue, compute_input, computed, finished - done)
        counters.observe("success", finished - started)
        if version is None and self.rollout is not None and self.rollout.name == model.name:
            try:  # shadow mode: a copy for the candidate, after the answer is computed, never delaying it
                self.rollout.offer(
                    model.version, inputs, request.datatypes, raw_results, model.batchable, bool(request.shm_inputs)
                )
            except Exception:
                log.exception("queueing a shadow copy for model %s failed", model.name)
        if timings is not None:
            timings["queue"], timings["compute"] = queue, computed
        if not batched:
            stats.execution(rows, compute_input, computed, finished - done)
        if self.drift is not None:
            try:
                self.drift.observe(model.name, model.version, model.batchable, inputs, raw_results, rows)
            except Exception:  # profiling must never fail a computed answer
                log.exception("drift profiling of model %s failed", model.name)
        if self.recorder is not None:
            try:
                self.recorder.record_inference(model.name, results)
            except Exception:  # the answer is computed: a state failure must not turn it into an error
                log.exception("recording the inference of model %s in the state failed", model.name)
        return payload

    def _route(self, name: str, version: str | None) -> LoadedModel:
        """The version answering one request: the one asked for, else the rollout's draw."""
        r = self.rollout
        if version is None and r is not None and r.name == name:
            slot = self.models.get(name)
            model = slot.versions.get(r.pick()) if slot is not None else None
            if model is not None and model.ready:
                return model
        return self.model(name, version)

    def observe_shadow(self, model: LoadedModel, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """A shadow answer of the candidate: profiled for drift under its version like a served one."""
        if self.drift is not None:
            try:
                self.drift.observe(model.name, model.version, model.batchable, inputs, outputs)
            except Exception:
                log.exception("drift profiling of model %s (shadow) failed", model.name)

    def _inputs(self, request: InferRequest) -> dict[str, np.ndarray]:
        if not request.shm_inputs:
            return request.inputs
        inputs = dict(request.inputs)
        for name, ref in request.shm_inputs.items():
            region = self.shm.get(ref.ref.region)
            data = region.read(ref.ref.offset, ref.ref.byte_size, f"input '{name}'")
            inputs[name] = array_from_bytes(data, ref.datatype, ref.shape, name)
        return inputs

    @staticmethod
    def _check_parameters(params: Mapping[str, Any]) -> None:
        unknown_params = sorted(set(params) - REQUEST_PARAMETERS)
        if unknown_params:
            raise InvalidArgument(
                f"unknown request parameter(s) {unknown_params}: no model of this worker reads them "
                f"(known: {sorted(REQUEST_PARAMETERS)})"
            )
        for key in SEQUENCE_PARAMETERS:
            if key in params:
                raise InvalidArgument(
                    f"parameter '{key}' is not supported: this worker has no sequence batcher "
                    "(its models are stateless)"
                )
        if params.get("priority", 0) not in (0, None):
            raise InvalidArgument("parameter 'priority' is not supported: this worker has one priority level")
        timeout = params.get("timeout")
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
            raise InvalidArgument(f"parameter 'timeout' must be microseconds (an integer >= 0), got {timeout!r}")

    @staticmethod
    def _wanted(model: LoadedModel, request: InferRequest) -> list[RequestedOutput]:
        known = [o.name for o in model.outputs]
        if request.outputs is None:
            return [RequestedOutput(n, request.binary_default) for n in known]
        for out in request.outputs:
            if out.name not in known:
                raise InvalidArgument(
                    f"unexpected inference output '{out.name}' for model '{model.name}' (outputs: {known})"
                )
        return request.outputs

    def _outputs(
        self, model: LoadedModel, results: dict[str, np.ndarray], wanted: list[RequestedOutput]
    ) -> dict[str, np.ndarray]:
        out = dict(results)
        for req in wanted:
            if req.classification:
                out[req.name] = classify(
                    results[req.name], req.classification, model.batchable, self._labels(model.name, req.name)
                )
            if req.shm is not None:
                region = self.shm.get(req.shm.region)
                region.write(req.shm.offset, tensor_bytes(out[req.name]), req.shm.byte_size, f"output '{req.name}'")
        return out

    def _labels(self, model: str, output: str) -> list[str] | None:
        slot = self.models.get(model)
        path = slot.source.label_file(output) if slot and slot.source else None
        return path.read_text().splitlines() if path else None

    # -- offload -----------------------------------------------------------------------------------
    async def offload(self, name: str, body: bytes, headers: Mapping[str, str]) -> Forwarded | None:
        """Forward a raw HTTP request upstream; None when the local model must answer."""
        assert self.upstream is not None
        up = self.upstream
        started = time.perf_counter()
        try:
            answer = await up.forward(f"/v2/models/{name}/infer", body, headers)
        except UpstreamFailure as exc:
            self.metrics.fallbacks.labels(name, exc.reason).inc()
            self.metrics.upstream_up.labels(up.base_url).set(1 if up.up else 0)
            return None
        self.metrics.upstream_up.labels(up.base_url).set(1)
        self.metrics.offloaded.labels(name).inc()
        model = self.model(name)
        stats = self.stats.of(model.name, model.version)
        elapsed = time.perf_counter() - started
        if answer.status < 400:  # the upstream's 4xx is the request's fault: counted as Triton would
            stats.success(0, elapsed, 0.0, 0.0, 0.0, 0.0)
        else:
            stats.failure(elapsed)
        return answer

    # -- repository --------------------------------------------------------------------------------
    def check_admin(self, authorization: str | None) -> None:
        token = self.settings.admin_token
        if not token:
            if self.settings.shorthand:
                raise Forbidden("model control is off: start the worker with --admin-token")
            return
        if not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
            raise Unauthorized("missing or wrong bearer token")

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for name in sorted(self.models):
            slot = self.models[name]
            versions = sorted(slot.versions.values(), key=lambda m: (len(m.version), m.version))
            if versions:
                for m in versions:
                    state = "READY" if m.ready else "LOADING"
                    if not ready_only or state == "READY":
                        entries.append({"name": name, "version": m.version, "state": state})
            elif not ready_only:
                entry = {"name": name, "state": slot.state}
                if slot.reason:
                    entry["reason"] = slot.reason
                entries.append(entry)
        return entries

    async def load(self, name: str, parameters: Mapping[str, Any], authorization: str | None) -> None:
        self.check_admin(authorization)
        s = self.settings
        if s.shorthand:
            if name != s.model_name:
                raise InvalidArgument(f"this worker serves model '{s.model_name}', not '{name}'")
            unknown_params = sorted(set(parameters) - {"uri", "version", "sha256"})
            if unknown_params:
                raise InvalidArgument(f"load parameter(s) {unknown_params} are not supported (uri, version, sha256)")
            uri = str(parameters.get("uri") or s.model_uri)
            version = str(parameters.get("version") or s.model_version)
            if self.rollout is not None and self.rollout.candidate is not None:
                raise Conflict(
                    f"model '{name}' has a rollout candidate (version {self.rollout.candidate.version}): "
                    f"roll back or promote it first (PUT /v2/models/{name}/rollout)"
                )
            try:
                await self._load_shorthand(uri, version, parameters.get("sha256"))
            except ModelError as exc:
                raise InvalidArgument(f"loading {uri} failed, still serving the previous version: {exc}") from None
            return
        if s.model_control_mode != "explicit":
            raise Unavailable(
                f"explicit model load / unload is not allowed if model control mode is '{s.model_control_mode}' "
                "(start the worker with --model-control-mode explicit)"
            )
        files = sorted(k for k in parameters if k.startswith("file:"))
        others = sorted(k for k in parameters if k != "config" and not k.startswith("file:"))
        if others:
            raise InvalidArgument(f"load parameter(s) {others} are not supported (supported: config)")
        if files:  # Triton's status and text (its own TODO calls INVALID_ARGUMENT better; clients match these)
            raise ServerError(
                f"failed to load '{name}', failed to poll from model repository: model files in the request "
                f"({len(files)} 'file:' parameter(s)) are not supported by this worker"
            )
        override = None
        if "config" in parameters:
            try:
                override = config_from_parameter(parameters["config"], name)
            except ConfigurationError as exc:
                raise InvalidArgument(f"failed to load '{name}': {exc}") from None
        await self.load_repository_model(name, override)

    async def unload(self, name: str, authorization: str | None) -> None:
        self.check_admin(authorization)
        s = self.settings
        if s.shorthand:
            raise InvalidArgument("the one-model shorthand cannot unload its model (use --model-repository)")
        if s.model_control_mode != "explicit":
            raise Unavailable(
                f"explicit model load / unload is not allowed if model control mode is '{s.model_control_mode}'"
            )
        slot = self.models.get(name)
        if slot is None:
            raise InvalidArgument(f"failed to unload '{name}', no version is available")
        await self._unload(slot)

    async def _unload(self, slot: ModelSlot, reason: str = "unloaded") -> None:
        old, slot.versions = slot.versions, {}
        slot.state, slot.reason = "UNAVAILABLE", reason
        for model in old.values():
            self.metrics.backend.remove(model.name, model.version, model.backend.kind, model.backend.device)
            self.metrics.memory.remove(model.name, model.version)
            await model.retire(timeout=self.settings.drain_seconds)

    def memory_in_use(self, excluding: str | None = None) -> int:
        return sum(m.memory_bytes for n, s in self.models.items() if n != excluding for m in s.versions.values())

    async def load_repository_model(self, name: str, override: mc.ModelConfig | None = None) -> None:
        s = self.settings
        assert s.model_repository is not None
        directory = s.model_repository / name
        if not directory.is_dir():
            raise InvalidArgument(f"failed to load '{name}', failed to poll from model repository")
        async with self.loading:
            slot = self.models.setdefault(name, ModelSlot(name))
            try:
                source = read_model(directory, override)
                versions = source.selected_versions()
                if not versions:
                    raise ConfigurationError(f"model '{name}' has no version directory with a model file")
            except ConfigurationError as exc:
                slot.reason = str(exc)
                raise InvalidArgument(f"failed to load '{name}': {exc}") from None
            estimate = sum(file_bytes(source.versions[v]) for v in versions)
            self._check_memory(name, estimate, "needs at least")
            loaded: dict[str, LoadedModel] = {}
            slot.state = "LOADING"
            try:
                config = source.config
                choices = self._choices(config)
                dynamic = config.HasField("dynamic_batching") and config.max_batch_size > 0
                for version in versions:
                    model = await load_model(
                        name, str(source.versions[version]), version, choices, s.model_cache_dir, None,
                        config.max_batch_size if dynamic else 0,
                        config.dynamic_batching.max_queue_delay_microseconds if dynamic else 0,
                        self.executor, self.metrics.batch_hook(self.stats.of(name, version)),
                        s.intra_op_threads or auto_intra_op_threads(s.threads),
                        max_rows=config.max_batch_size,
                    )  # fmt: skip
                    loaded[version] = model
                    self._check_config(config, model)
                self._check_memory(name, sum(m.memory_bytes for m in loaded.values()), "took")
            except (ModelError, ConfigurationError, ServerError) as exc:
                for model in loaded.values():
                    await model.retire(timeout=1)
                slot.state = "UNAVAILABLE" if not slot.versions else "READY"
                slot.reason = str(exc)
                self.metrics.model_loads.labels(name, "failed").inc()
                raise InvalidArgument(f"failed to load '{name}': {exc}") from None
            config = self._autocomplete(config, next(iter(loaded.values())))
            old = slot.versions
            slot.versions, slot.source, slot.config, slot.state, slot.reason = loaded, source, config, "READY", ""
            self._publish(loaded.values(), old.values())
        for model in old.values():
            asyncio.get_running_loop().create_task(model.retire(timeout=s.drain_seconds))

    def _check_memory(self, name: str, size: int, verb: str) -> None:
        limit = self.settings.memory_limit
        if limit is None:
            return
        used = self.memory_in_use(excluding=name)
        if used + size > limit:
            raise InvalidArgument(
                f"model '{name}' {verb} {_size(size)}; {_size(used)} of the --memory-limit {_size(limit)} "
                "are in use by the other models"
            )

    def _choices(self, config: mc.ModelConfig) -> list[BackendChoice]:
        kind = config.backend or {"onnxruntime_onnx": "onnxruntime", "openvino": "openvino"}.get(config.platform)
        if not kind:
            return self.choices
        chosen = [c for c in self.choices if c.kind == kind]
        return chosen or [BackendChoice(kind)]

    @staticmethod
    def _check_config(config: mc.ModelConfig, model: LoadedModel) -> None:
        """A configuration's inputs and outputs must be the model's (names, datatypes, dims)."""
        specs = {s.name: s for s in (*model.inputs, *model.outputs)}
        batch = 1 if config.max_batch_size > 0 else 0
        for kind, tensors in (("input", config.input), ("output", config.output)):
            for t in tensors:
                spec = specs.get(t.name)
                if spec is None:
                    raise ConfigurationError(f"configuration {kind} '{t.name}' is not in model '{model.name}'")
                datatype = DATA_TYPES.get(t.data_type)
                if datatype != spec.datatype:
                    raise ConfigurationError(
                        f"configuration {kind} '{t.name}' is {mc.DataType.Name(t.data_type)}, the model has {spec.datatype}"
                    )
                dims = list(spec.shape[batch:])
                if t.dims and (len(t.dims) != len(dims) or any(d not in (-1, c) and c != -1 for c, d in zip(t.dims, dims, strict=True))):
                    raise ConfigurationError(f"configuration {kind} '{t.name}' dims {list(t.dims)}, the model has {dims}")

    @staticmethod
    def _autocomplete(config: mc.ModelConfig, model: LoadedModel) -> mc.ModelConfig:
        """Fill what a configuration leaves out from the model, as Triton's auto-complete does."""
        out = mc.ModelConfig()
        out.CopyFrom(config)
        out.platform = out.platform or model.platform
        out.backend = out.backend or model.backend.kind
        batch = 1 if out.max_batch_size > 0 else 0
        by_type = {v: k for k, v in DATA_TYPES.items()}
        if not out.input:
            for s in model.inputs:
                out.input.add(name=s.name, data_type=by_type[s.datatype], dims=list(s.shape[batch:]))
        if not out.output:
            for s in model.outputs:
                out.output.add(name=s.name, data_type=by_type[s.datatype], dims=list(s.shape[batch:]))
        return out

    def _publish(self, new: Any, old: Any) -> None:
        for model in old:
            self.metrics.backend.remove(model.name, model.version, model.backend.kind, model.backend.device)
            self.metrics.memory.remove(model.name, model.version)
        for model in new:
            self.metrics.model_loads.labels(model.name, "loaded").inc()
            self.metrics.backend.labels(model.name, model.version, model.backend.kind, model.backend.device).set(1)
            self.metrics.memory.labels(model.name, model.version).set(model.memory_bytes)

    async def _load_shorthand(self, uri: str, version: str, sha256: str | None) -> None:
        s = self.settings
        name = s.model_name or ""
        async with self.loading:
            slot = self.models.setdefault(name, ModelSlot(name))
            try:
                model = await load_model(
                    name, uri, version, self.choices, s.model_cache_dir, sha256, s.max_batch_size,
                    s.max_queue_delay_us, self.executor, self.metrics.batch_hook(self.stats.of(name, version)),
                    s.intra_op_threads or auto_intra_op_threads(s.threads),
                )  # fmt: skip
            except ModelError:
                self.metrics.model_loads.labels(name, "failed").inc()
                raise
            old = slot.versions
            slot.versions, slot.state, slot.reason = {version: model}, "READY", ""
            self._publish([model], old.values())
            stable = VersionRef(version, uri, sha256.lower() if sha256 else None)
            if self.rollout is None:
                self.rollout = Rollout(self, name, stable, self.versions)
            else:
                self.rollout.stable = stable
        for m in old.values():
            asyncio.get_running_loop().create_task(m.retire())

    # -- rollouts (docs/rollout-protocol.md) -------------------------------------------------------
    def _rollout(self, name: str) -> Rollout:
        if name not in self.models:
            raise unknown(name)
        if self.rollout is None or self.rollout.name != name:
            raise InvalidArgument(
                "rollouts are for the one-model shorthand (--model-name/--model-uri); "
                f"model '{name}' comes from a repository"
            )
        return self.rollout

    def rollout_view(self, name: str) -> dict[str, Any]:
        """``GET /v2/models/{m}/rollout``."""
        return self._rollout(name).view()

    def check_rollout_auth(self, authorization: str | None) -> None:
        """A rollout PUT needs the admin or the state token when the worker has either; else it is open."""
        tokens = [t for t in (self.settings.admin_token, self.settings.state_token) if t]
        if not tokens:
            return
        given = (authorization or "").encode()
        if not any(hmac.compare_digest(given, f"Bearer {t}".encode()) for t in tokens):
            raise Unauthorized("missing or wrong bearer token (--admin-token or --state-token)")

    async def apply_rollout(self, name: str, body: Any, authorization: str | None) -> dict[str, Any]:
        """``PUT /v2/models/{m}/rollout``: load and warm a new candidate first, then switch at once;
        on any failure nothing changes. Answers the GET body."""
        self.check_rollout_auth(authorization)
        r = self._rollout(name)
        await self._apply_rollout(r, body)
        try:
            r.persist(body)
        except OSError as exc:  # the split is applied; only its survival across a restart is lost
            log.error("rollout state of model %s not persisted: %s", name, exc)
        return r.view()

    async def _apply_rollout(self, r: Rollout, body: Any) -> None:
        async with self.loading:
            request = parse_request(body, r.stable.version)  # checked under the lock: the stable may change
            slot = self.models[r.name]
            retired: list[LoadedModel] = []
            new = None
            if request.promote:
                if r.candidate is None:
                    raise Conflict("promote: there is no candidate to promote (PUT one first)")
                old_stable = slot.versions.get(r.stable.version)
                r.stable, r.candidate = r.candidate, None
                r.switch(request)  # from here on the former candidate answers as the stable
                if old_stable is not None:
                    del slot.versions[old_stable.version]
                    retired.append(old_stable)
            else:
                if request.candidate is not None and request.candidate != r.candidate:
                    new = await self._load_candidate(r.name, request.candidate)
                old = slot.versions.get(r.candidate.version) if r.candidate is not None else None
                if new is not None:
                    slot.versions[new.version] = new  # ready: versioned paths reach it from now on
                r.switch(request)  # from here on unversioned requests follow the new split
                if old is not None and (r.candidate is None or slot.versions.get(r.candidate.version) is not old):
                    retired.append(old)
                    if slot.versions.get(old.version) is old:
                        del slot.versions[old.version]
            self._publish([new] if new is not None else [], retired)
            for model in retired:  # requests running on it finish first
                asyncio.get_running_loop().create_task(model.retire(timeout=self.settings.drain_seconds))
        log.info(
            "model %s rollout: mode %s weight %s stable %s candidate %s generation %r", r.name, r.mode, r.share,
            r.stable.version, r.candidate.version if r.candidate else None, r.generation,
        )  # fmt: skip

    async def _load_candidate(self, name: str, ref: VersionRef) -> LoadedModel:
        s = self.settings
        try:
            model = await load_model(
                name, ref.uri, ref.version, self.choices, s.model_cache_dir, ref.sha256, s.max_batch_size,
                s.max_queue_delay_us, self.executor, self.metrics.batch_hook(self.stats.of(name, ref.version)),
                s.intra_op_threads or auto_intra_op_threads(s.threads),
            )  # fmt: skip
        except ModelError as exc:
            self.metrics.model_loads.labels(name, "failed").inc()
            where = "candidate.sha256" if "checksum mismatch" in str(exc) else "candidate.uri"
            raise LoadFailed(f"{where}: cannot load version {ref.version} from {ref.uri}: {exc}") from None
        if s.memory_limit is not None:
            stable = self.rollout.stable.version if self.rollout else ""
            used = sum(m.memory_bytes for n, slot in self.models.items() for m in slot.versions.values()
                       if n != name or m.version == stable)  # fmt: skip
            if used + model.memory_bytes > s.memory_limit:
                await model.retire(timeout=1)
                self.metrics.model_loads.labels(name, "failed").inc()
                raise LoadFailed(
                    f"candidate: version {ref.version} took {_size(model.memory_bytes)}; {_size(used)} of the "
                    f"--memory-limit {_size(s.memory_limit)} are in use by the stable and the other models"
                )
        return model

    async def _restore_rollout(self) -> None:
        """Re-apply the persisted split of the shorthand model (a failure leaves the stable serving)."""
        r = self.rollout
        saved = r.saved() if r is not None else None
        if r is None or saved is None:
            return
        try:
            await self._apply_rollout(r, saved.canonical())
        except ServerError as exc:
            log.error("rollout state of model %s not restored (the stable version serves alone): %s", r.name, exc.message)
            return
        log.info("model %s: rollout restored (generation %r)", r.name, r.generation)

    async def _poll(self) -> None:
        """Poll mode: load new and changed models, unload removed ones."""
        s = self.settings
        assert s.model_repository is not None
        while True:
            await asyncio.sleep(s.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:
                log.exception("polling the model repository %s failed", s.model_repository)

    async def poll_once(self) -> None:
        s = self.settings
        assert s.model_repository is not None
        present = scan(s.model_repository)
        for name, slot in list(self.models.items()):
            if name not in present:
                await self._unload(slot, "removed from the repository")
                del self.models[name]
        for name, directory in present.items():
            slot = self.models.get(name)
            try:
                stamp = read_model(directory).stamp
            except ConfigurationError as exc:
                self.models.setdefault(name, ModelSlot(name)).reason = str(exc)
                continue
            if slot is None or slot.source is None or slot.source.stamp != stamp:
                try:
                    await self.load_repository_model(name)
                except ServerError as exc:
                    log.error("model %s not loaded: %s", name, exc)

    # -- shared memory -----------------------------------------------------------------------------
    def cuda_register(self) -> None:
        raise InvalidArgument(CUDA_UNSUPPORTED)


def _drift_monitor(settings: WorkerSettings, metrics: WorkerMetrics) -> Any:
    """The drift monitor the settings ask for (docs/drift.md), or None with ``--drift-window-seconds 0``."""
    if not settings.drift_window_seconds:
        return None
    from continuum_worker.drift import DriftConfig, DriftMonitor, Thresholds
    from continuum_worker.drift.monitor import fixed_reference, repository_reference

    config = DriftConfig(
        window_seconds=settings.drift_window_seconds, upload_seconds=settings.drift_upload_seconds,
        k=settings.drift_k, max_features=settings.drift_max_features, sample_rate=settings.drift_sample_rate,
        thresholds=Thresholds(settings.drift_threshold, settings.drift_psi_threshold, settings.drift_min_samples),
    )  # fmt: skip
    lookup = (
        repository_reference(settings.model_repository) if settings.model_repository is not None
        else fixed_reference(settings.drift_reference)
    )  # fmt: skip
    return DriftMonitor(config, lookup, metrics.registry)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def classify(array: np.ndarray, k: int, batched: bool, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: the top ``k`` entries as ``"value:index[:label]"`` BYTES."""
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim > 1 else array.reshape(1, -1)
    if rows.dtype.kind not in "fiub":
        raise InvalidArgument(f"classification needs a numeric output, not {rows.dtype}")
    k = min(k, rows.shape[1])
    out = np.empty((rows.shape[0], k), dtype=np.object_)
    for r, row in enumerate(rows):
        for j, idx in enumerate(np.argsort(-row.astype(np.float64), kind="stable")[:k]):
            value = row[idx]
            text = f"{value:f}" if rows.dtype.kind == "f" else str(int(value))
            label = f":{labels[idx]}" if labels and idx < len(labels) else ""
            out[r, j] = f"{text}:{idx}{label}".encode()
    return out if batched and array.ndim > 1 else out.reshape(k)


__all__ = ["DATATYPES", "EXTENSIONS", "DataPlane", "InferenceRecorder", "classify"]
