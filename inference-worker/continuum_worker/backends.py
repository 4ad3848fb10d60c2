"""Local inference backends behind one interface. Adding one (TensorRT-native, TFLite) touches this file.

A backend list such as ``onnxruntime:tensorrt,cuda,openvino,cpu;openvino:GPU,CPU`` is tried in
order. For onnxruntime the options are execution providers: only those the installed wheel really
offers are requested, and what the session really runs is read back from ``get_providers()`` (the
CPU wheel accepts GPU providers with a warning and runs on CPU, so asking is not knowing). For
openvino the options are devices. The first backend that loads the model wins.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("continuum.worker")

DEFAULT_BACKENDS = "onnxruntime:tensorrt,cuda,openvino,cpu"

ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

# ONNX tensor element type names (as onnxruntime reports them) -> v2 datatype
ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity, capped by a cgroup v2 CPU quota (a pod's limit),
    which onnxruntime's own default (one thread per core of the node) ignores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def auto_intra_op_threads(concurrent_runs: int) -> int:
    """Threads per onnxruntime run so that ``concurrent_runs`` runs together fill the usable CPUs, no more
    (oversubscribed cores also starve the event loop that serves HTTP)."""
    return max(1, usable_cpus() // max(1, concurrent_runs))


class BackendError(RuntimeError):
    """The backend cannot load or run the model."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a variable dimension

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class BackendChoice:
    kind: str  # "onnxruntime" | "openvino"
    options: tuple[str, ...] = ()


def parse_backends(text: str | None) -> list[BackendChoice]:
    """``onnxruntime:cuda,cpu;openvino:CPU`` -> choices; a bare ``openvino`` takes its defaults."""
    choices = []
    for entry in (text or DEFAULT_BACKENDS).split(";"):
        entry = entry.strip()
        if not entry:
            continue
        kind, _, opts = entry.partition(":")
        kind = kind.strip().lower()
        if kind not in BACKENDS:
            raise ValueError(f"unknown backend {kind!r} in {text!r} (known: {', '.join(sorted(BACKENDS))})")
        options = tuple(
            o.strip().lower() if kind == "onnxruntime" else o.strip() for o in opts.split(",") if o.strip()
        )
        if kind == "onnxruntime":
            unknown = [o for o in options if o not in ORT_PROVIDERS]
            if unknown:
                raise ValueError(
                    f"unknown onnxruntime provider(s) {unknown} (known: {', '.join(ORT_PROVIDERS)})"
                )
        choices.append(BackendChoice(kind, options))
    if not choices:
        raise ValueError("the backend list is empty")
    return choices


class Backend(ABC):
    kind: str
    text_only_strings = False  # whether BYTES tensors must be UTF-8 text (checked before inference)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model; thread-safe. ``outputs`` None means every output."""

    @property
    @abstractmethod
    def device(self) -> str:
        """What really runs the model, e.g. ``onnxruntime/CPUExecutionProvider``."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "device": self.device}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class OrtBackend(Backend):
    """onnxruntime with an execution-provider preference list; ``threads`` 0 is onnxruntime's default."""

    kind = "onnxruntime"
    text_only_strings = True

    def __init__(
        self,
        path: Path,
        requested: tuple[str, ...] = ("tensorrt", "cuda", "openvino", "cpu"),
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        self.path, self.requested, self.threads = path, requested, threads

        available = set(ort.get_available_providers())
        wanted = [ORT_PROVIDERS[p] for p in self.requested]
        usable = [p for p in wanted if p in available]
        self.skipped = [p for p in wanted if p not in available]
        if not usable:
            raise BackendError(
                f"none of the providers {wanted} is in this onnxruntime build ({sorted(available)})"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=usable)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BackendError(f"onnxruntime cannot load {self.path}: {exc}") from exc
        self.providers = list(self.session.get_providers())
        if self.providers[0] != usable[0]:
            log.warning("asked onnxruntime for %s, it runs on %s", usable, self.providers)
        log.info("onnxruntime runs %s on %s (%s intra-op threads)", path.name, self.providers, threads or "auto")
        self.inputs = [_ort_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_ort_spec(o) for o in self.session.get_outputs()]
        self._string_inputs = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self._string_outputs = {s.name for s in self.outputs if s.datatype == "BYTES"}

    @property
    def device(self) -> str:
        return f"onnxruntime/{self.providers[0]}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers, "unavailable": self.skipped}

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or [o.name for o in self.outputs]
        for name in self._string_inputs:  # onnxruntime's strings are str (UTF-8), the wire's BYTES are bytes
            if name in inputs:
                inputs = {**inputs, name: _to_str(inputs[name])}
        try:
            values = self.session.run(names, inputs)
        except Exception as exc:
            raise BackendError(str(exc)) from exc
        return {
            n: _to_bytes(v) if n in self._string_outputs else v for n, v in zip(names, values, strict=True)
        }


def _to_str(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.object_)
    for idx, v in np.ndenumerate(array):
        out[idx] = v.decode("utf-8") if isinstance(v, bytes) else str(v)  # checked by LoadedModel.validate
    return out


def _to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.object_)
    for idx, v in np.ndenumerate(array):
        out[idx] = v.encode() if isinstance(v, str) else bytes(v)
    return out


def _ort_spec(arg: Any) -> TensorSpec:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        raise BackendError(f"tensor {arg.name} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


_OV_TYPES = {
    "f32": "FP32",
    "f16": "FP16",
    "f64": "FP64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "boolean": "BOOL",
}


class OpenVinoBackend(Backend):
    """OpenVINO on the first device that compiles the model, with shared (zero-copy) tensors."""

    kind = "openvino"

    def __init__(self, path: Path, devices: tuple[str, ...] = ("CPU",)) -> None:
        import openvino as ov

        self.core = ov.Core()
        available = set(self.core.available_devices)
        errors = []
        for device in devices or ("CPU",):
            if device.split(".")[0] not in available and device not in ("AUTO",):
                errors.append(f"{device}: not available ({sorted(available)})")
                continue
            try:
                model = self.core.read_model(str(path))
                # CPUs with bf16 units default to bf16 inference: a model's FP32 answers would change
                config = {"INFERENCE_PRECISION_HINT": "f32"} if device.split(".")[0] == "CPU" else {}
                self.compiled = self.core.compile_model(model, device, config)
                self._device = device
                break
            except Exception as exc:  # openvino raises RuntimeError subclasses
                errors.append(f"{device}: {exc}")
        else:
            raise BackendError("openvino cannot run the model: " + "; ".join(errors))
        self.inputs = [self._spec(p) for p in self.compiled.inputs]
        self.outputs = [self._spec(p) for p in self.compiled.outputs]
        self._local = threading.local()

    @staticmethod
    def _spec(port: Any) -> TensorSpec:
        datatype = _OV_TYPES.get(port.get_element_type().get_type_name())
        if datatype is None:
            raise BackendError(f"tensor {port.get_any_name()} has unsupported type {port.get_element_type()}")
        shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
        return TensorSpec(port.get_any_name(), datatype, shape)

    @property
    def device(self) -> str:
        return f"openvino/{self._device}"

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:  # one infer request per thread: they are not thread-safe
            request = self._local.request = self.compiled.create_infer_request()
        try:
            result = request.infer(inputs, share_inputs=True, share_outputs=True)
        except Exception as exc:
            raise BackendError(str(exc)) from exc
        names = outputs or [o.name for o in self.outputs]
        by_name = {port.get_any_name(): value for port, value in result.items()}
        return {n: np.array(by_name[n], copy=True) for n in names}  # shared outputs are reused: copy out


BACKENDS = {"onnxruntime": OrtBackend, "openvino": OpenVinoBackend}


def create_backend(path: Path, choices: list[BackendChoice], threads: int = 0) -> Backend:
    """The first backend of ``choices`` that loads the model; errors of the others are in the message."""
    errors = []
    for choice in choices:
        try:
            if choice.kind == "onnxruntime":
                return OrtBackend(path, choice.options or ("cpu",), threads=threads)
            return OpenVinoBackend(path, choice.options or ("CPU",))
        except (BackendError, ImportError) as exc:
            log.warning("backend %s unavailable: %s", choice.kind, exc)
            errors.append(f"{choice.kind}: {exc}")
    raise BackendError("no backend could load the model: " + "; ".join(errors))
