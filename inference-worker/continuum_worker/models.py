"""Loading models: from a path, ``file://`` or ``http(s)://`` into the cache, checksummed, warmed, swapped.

A new version is fetched, loaded and warmed next to the one serving; only then does it replace it,
so no request fails during the swap. Requests already running finish on the old version.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import urllib.parse
import urllib.request
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from continuum_worker.backends import Backend, BackendChoice, BackendError, TensorSpec, create_backend
from continuum_worker.batching import DynamicBatcher, timed
from continuum_worker.protocol import DATATYPES, ProtocolError

log = logging.getLogger("continuum.worker")
INLINE_BELOW_SECONDS = 0.001  # models faster than this run in the event loop (a thread hop costs more)


class ModelError(RuntimeError):
    """The model cannot be fetched, verified or loaded."""


def resident_bytes() -> int:
    """This process's resident memory (Linux), 0 where unknown."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def file_bytes(path: Path) -> int:
    """A model's size on disk (an OpenVINO ``.xml`` counts its ``.bin``)."""
    size = path.stat().st_size if path.is_file() else 0
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():
        size += weights.stat().st_size
    return size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_model(uri: str, cache_dir: Path, sha256: str | None = None, timeout: float = 300.0) -> Path:
    """A local path to the model file; downloads go to ``cache_dir`` atomically and are reused."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
    elif parsed.scheme in ("http", "https"):
        name = Path(parsed.path).name or "model.onnx"
        key = hashlib.sha256(uri.encode()).hexdigest()[:16]
        path = cache_dir / f"{key}-{name}"
        if not (path.is_file() and (sha256 is None or sha256_of(path) == sha256.lower())):
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(path.suffix + f".{os.getpid()}.partial")
            try:
                with urllib.request.urlopen(uri, timeout=timeout) as response, partial.open("wb") as out:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                partial.unlink(missing_ok=True)
                raise ModelError(f"cannot download {uri}: {exc}") from exc
            os.replace(partial, path)
    else:
        raise ModelError(
            f"unsupported model URI scheme {parsed.scheme!r} in {uri} (path, file://, http(s)://)"
        )
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise ModelError(f"checksum mismatch for {uri}: expected sha256 {sha256}, got {actual}")
    return path


def _dummy(spec: TensorSpec) -> np.ndarray:
    shape = tuple(1 if d < 0 else d for d in spec.shape)
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=np.object_)
    return np.zeros(shape, dtype=DATATYPES[spec.datatype])


@dataclass
class LoadedModel:
    name: str
    version: str
    backend: Backend
    path: Path
    max_batch_size: int = 0
    max_queue_delay_us: int = 500
    executor: Executor | None = None
    on_batch: Any = None
    batcher: DynamicBatcher | None = None
    ready: bool = False
    compute_ema: float = 0.0
    in_flight: int = 0
    max_rows: int = 0  # a batch limit without dynamic batching (a repository config's max_batch_size)
    memory_bytes: int = 0  # what loading it took (resident memory growth, at least its file)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()
        self.batchable = bool(self.backend.inputs) and all(
            len(s.shape) >= 1 and s.shape[0] == -1 for s in (*self.backend.inputs, *self.backend.outputs)
        )
        if self.max_batch_size > 0 and self.batchable:
            self.max_rows = self.max_batch_size
        if self.max_batch_size > 0 and self.batchable:
            self.batcher = DynamicBatcher(
                self.backend.infer,
                self.max_batch_size,
                self.max_queue_delay_us,
                self.executor,
                self.on_batch,
                inline_below_seconds=INLINE_BELOW_SECONDS,
            )

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.backend.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.backend.outputs

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx" if self.backend.kind == "onnxruntime" else "openvino"

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
        }

    def validate(self, inputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> None:
        """Names, datatypes and shapes against the model; a mismatch is the client's error (400)."""
        if self._valid_fast(inputs, datatypes):
            return
        specs = {s.name: s for s in self.inputs}
        unknown = sorted(set(inputs) - set(specs))
        if unknown:
            raise ProtocolError(
                f"unexpected input(s) {unknown} for model '{self.name}' (inputs: {sorted(specs)})"
            )
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise ProtocolError(f"model '{self.name}' needs input(s) {missing}")
        rows = set()
        for name, array in inputs.items():
            spec = specs[name]
            if datatypes[name] != spec.datatype:
                raise ProtocolError(
                    f"input '{name}': datatype {datatypes[name]}, model expects {spec.datatype}"
                )
            if len(array.shape) != len(spec.shape) or any(
                d != -1 and d != a for d, a in zip(spec.shape, array.shape, strict=True)
            ):
                raise ProtocolError(
                    f"input '{name}': shape {list(array.shape)}, model expects {list(spec.shape)}"
                )
            if self.batchable:
                rows.add(array.shape[0])
        self._check_text(inputs)
        if len(rows) > 1:
            raise ProtocolError(f"inputs disagree on the batch dimension: {sorted(rows)}")
        if self.max_rows and rows and max(rows) > self.max_rows:
            raise ProtocolError(
                f"inference request batch-size must be <= {self.max_rows} for '{self.name}' (got {max(rows)})"
            )

    def _check_text(self, inputs: dict[str, np.ndarray]) -> None:
        """BYTES a backend can only take as text (onnxruntime's strings are UTF-8) must be UTF-8: never
        replaced by U+FFFD and silently answered."""
        if not self.backend.text_only_strings:
            return
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if spec.datatype != "BYTES" or array is None:
                continue
            for i, item in enumerate(array.reshape(-1)):
                try:
                    item.decode("utf-8") if isinstance(item, bytes) else None
                except UnicodeDecodeError as exc:
                    raise ProtocolError(
                        f"input '{spec.name}': BYTES element {i} is not UTF-8 ({exc.reason} at byte "
                        f"{exc.start}); {self.backend.kind} takes strings as UTF-8 text"
                    ) from None

    def _valid_fast(self, inputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> bool:
        """The common case in a few comparisons; anything else goes through the full check and its messages."""
        if len(inputs) != len(self.inputs):
            return False
        rows = -1
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None or datatypes[spec.name] != spec.datatype or array.ndim != len(spec.shape):
                return False
            for want, have in zip(spec.shape, array.shape, strict=True):
                if want != -1 and want != have:
                    return False
            if self.batchable:
                if rows not in (-1, array.shape[0]):
                    return False
                rows = array.shape[0]
        if self.backend.text_only_strings and any(s.datatype == "BYTES" for s in self.inputs):
            return False  # the full check looks at the text
        return not self.max_rows or rows <= self.max_rows

    async def infer(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float, bool]:
        """(outputs, queue seconds, compute seconds, batched). Tiny models run inline; others in the
        executor or the batcher."""
        self.in_flight += 1
        self._idle.clear()
        try:
            if self.batcher is not None:
                outputs, queued, computed = await self.batcher.submit_timed(inputs)
                return outputs, queued, computed, True
            started = time.perf_counter()
            if self.compute_ema and self.compute_ema < INLINE_BELOW_SECONDS:
                outputs = self.backend.infer(inputs)
                elapsed = own = time.perf_counter() - started
            else:  # the decision weighs the model's own time in the thread, not the round trip (see timed)
                loop = asyncio.get_running_loop()
                outputs, own = await loop.run_in_executor(self.executor, timed, self.backend.infer, inputs)
                elapsed = time.perf_counter() - started
            self.compute_ema = own if not self.compute_ema else 0.9 * self.compute_ema + 0.1 * own
            return outputs, 0.0, elapsed, False
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def warm(self, rounds: int = 3) -> None:
        """Run the model on zeros so the first real request does not pay for initialisation."""
        sample = {s.name: _dummy(s) for s in self.inputs}
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            try:
                _, own = await loop.run_in_executor(self.executor, timed, self.backend.infer, sample)
            except BackendError as exc:
                # Zeros and empty strings are not every model's valid input (a string->number Cast
                # rejects b""): the model still serves; it only starts cold, in the executor.
                log.warning("model %s version %s: warm-up skipped (%s)", self.name, self.version, exc)
                self.compute_ema = 0.0
                break
            self.compute_ema = own
        if self.batcher is not None:
            self.batcher.compute_ema = self.compute_ema
        self.ready = True

    async def retire(self, timeout: float = 30.0) -> None:
        """Wait for requests still running on this version, then release it."""
        self.ready = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning(
                "model %s version %s retired with %d requests running",
                self.name,
                self.version,
                self.in_flight,
            )
        if self.batcher is not None:
            await self.batcher.close()
        self.backend.close()


async def load_model(
    name: str,
    uri: str,
    version: str,
    choices: list[BackendChoice],
    cache_dir: Path,
    sha256: str | None = None,
    max_batch_size: int = 0,
    max_queue_delay_us: int = 500,
    executor: Executor | None = None,
    on_batch: Any = None,
    intra_op_threads: int = 0,
    max_rows: int = 0,
) -> LoadedModel:
    """Fetch, load and warm one model version (the blocking parts run in ``executor``)."""
    loop = asyncio.get_running_loop()
    before = resident_bytes()
    try:
        path = await loop.run_in_executor(executor, fetch_model, uri, cache_dir, sha256)
        backend = await loop.run_in_executor(executor, create_backend, path, choices, intra_op_threads)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(str(exc)) from exc
    model = LoadedModel(name, version, backend, path, max_batch_size, max_queue_delay_us, executor, on_batch)
    if max_rows and not model.max_rows:
        model.max_rows = max_rows
    await model.warm()
    model.memory_bytes = max(resident_bytes() - before, file_bytes(path))
    log.info("model %s version %s ready on %s from %s", name, version, backend.device, uri)
    return model
