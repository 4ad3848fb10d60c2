"""Profiles: mergeable summaries of what a model saw and answered in a time window.

A :class:`Profile` holds, for one model version and one window, a KLL sketch per *feature* and the
class frequencies of categorical outputs:

* **inputs**: a numeric input whose rows have at most ``max_features`` elements gives one feature
  per element (``x[0]``, ``x[1]``, ...). Wider rows are summarized: rows with a channel axis
  (``(C, H, W)``, or ``(H, W, C)`` when the last axis has at most 4 entries and the first more)
  give each channel's mean and standard deviation per row (``img[c0].mean``, ``img[c0].std``);
  flat rows are cut into ``max_features`` contiguous blocks and each block's mean is a feature
  (``x[block 3]``). BYTES inputs are not profiled.
* **outputs**: a float output with one value per row is a score (``y``, quantiles); with several
  values per row, the argmax is a class (frequencies, ``y`` in ``classes``) and the top value a
  score (``y.top``). An integer output with one value per row is a class label.

Requests are filed, not copied (one list append per request), and featurized and added to the sketches
``BUFFER_ROWS`` rows at once, each feature's block sorted before the KLL update (cheaper compactions;
the error bound holds for any input order). Memory per profile is bounded: features x one KLL
sketch (O(k log(n/k)) floats, ~2.4 KB serialized at k=200 up to a million rows) + the filed arrays
(at most ``BUFFER_ROWS`` rows and about ``BUFFER_BYTES``, counting the buffers they are views of) +
at most ``MAX_CLASSES`` class counters per output.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from datasketches import kll_floats_sketch

from continuum_worker.drift import sketch as sk

FORMAT = "continuum-drift-profile/1"
MAX_CLASSES = 1000
OTHER = "other"
BUFFER_ROWS = 512
BUFFER_BYTES = 8 << 20  # bytes filed requests hold before a flush, counting the buffers of views
MEASURE_EVERY = 16


def _request_bytes(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> int:
    """Bytes a filed request keeps alive: its arrays, or the buffers they are views of."""
    total = 0
    for d in (inputs, outputs):
        for array in d.values():
            base = array.base
            total += array.nbytes if base is None else _held(array, base)
    return total


def _held(array: np.ndarray, base: object) -> int:
    """Bytes an array keeps alive: its base's (a request body, a batch's output) when it is a view."""
    size = getattr(base, "nbytes", None)
    if size is None:
        try:
            size = len(base)  # type: ignore[arg-type]
        except TypeError:
            size = 0
    return max(array.nbytes, int(size))


def _stacked(parts: list[np.ndarray], batched: bool) -> list[np.ndarray]:
    """The filed arrays of one tensor as row blocks (rows along axis 0), one block per row shape."""
    if not batched or parts[0].ndim == 0:
        parts = [p.reshape(1, *p.shape) for p in parts]
    if len(parts) == 1:
        return parts
    try:
        return [np.concatenate(parts, axis=0)]
    except ValueError:  # requests of different row shapes (a dynamic axis): one block per shape
        pass
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for p in parts:
        groups.setdefault(p.shape[1:], []).append(p)
    return [np.concatenate(g, axis=0) for g in groups.values()]


def _rows(array: np.ndarray, batched: bool) -> np.ndarray:
    if batched and array.ndim >= 1:
        return array.reshape(array.shape[0], *array.shape[1:]) if array.ndim > 1 else array.reshape(-1, 1)
    return array.reshape(1, *array.shape) if array.ndim else array.reshape(1, 1)


@lru_cache(maxsize=256)
def _element_names(name: str, width: int) -> tuple[str, ...]:
    return tuple(f"{name}[{j}]" for j in range(width))


@lru_cache(maxsize=256)
def _channel_names(name: str, channels: int) -> tuple[str, ...]:
    return tuple(f"{name}[c{i}].{s}" for i in range(channels) for s in ("mean", "std"))


@lru_cache(maxsize=256)
def _block_names(name: str, blocks: int) -> tuple[str, ...]:
    return tuple(f"{name}[block {j}]" for j in range(blocks))


@lru_cache(maxsize=256)
def _single(name: str) -> tuple[str, ...]:
    return (name,)


def input_features(
    name: str, array: np.ndarray, batched: bool, max_features: int
) -> tuple[tuple[str, ...], np.ndarray] | None:
    """``(feature names, rows x features float32 matrix)`` of one input tensor, or None (not numeric)."""
    if array.dtype.kind not in "fiub" or array.size == 0:
        return None
    rows = _rows(array, batched)
    per_row = rows.shape[1:]
    width = int(np.prod(per_row)) if per_row else 1
    if width <= max_features:
        flat = rows.reshape(rows.shape[0], width).astype(np.float32, copy=False)
        return _element_names(name, width), flat
    if len(per_row) >= 2:  # channels: (C, ...) or (..., C) with C <= 4
        channel_last = per_row[-1] <= 4 < per_row[0]
        data = np.moveaxis(rows, -1, 1) if channel_last else rows
        c = data.shape[1]
        data = data.reshape(data.shape[0], c, -1).astype(np.float32, copy=False)
        stats = np.empty((data.shape[0], 2 * c), dtype=np.float32)
        stats[:, 0::2] = data.mean(axis=2)
        stats[:, 1::2] = data.std(axis=2)
        names = _channel_names(name, c)
        if len(names) <= max_features:
            return names, stats
        rows = data.reshape(data.shape[0], -1)
        width = rows.shape[1]
    flat = rows.reshape(rows.shape[0], width).astype(np.float32, copy=False)
    edges = np.linspace(0, width, max_features + 1).astype(np.int64)
    means = np.add.reduceat(flat, edges[:-1], axis=1) / np.diff(edges).astype(np.float32)
    return _block_names(name, max_features), means.astype(np.float32, copy=False)


def output_features(
    name: str, array: np.ndarray, batched: bool
) -> tuple[tuple[str, ...], np.ndarray | None, np.ndarray | None]:
    """``(score feature names, score matrix, class labels per row)`` of one output tensor."""
    if array.dtype.kind not in "fiub" or array.size == 0:
        return (), None, None
    rows = _rows(array, batched)
    flat = rows.reshape(rows.shape[0], -1)
    if flat.shape[1] == 1:
        if array.dtype.kind == "f":
            return _single(name), flat.astype(np.float32, copy=False), None
        return (), None, flat[:, 0].astype(np.int64)
    if array.dtype.kind == "f":
        classes = flat.argmax(axis=1)
        top = flat[np.arange(flat.shape[0]), classes].astype(np.float32).reshape(-1, 1)
        return _single(f"{name}.top"), top, classes
    return (), None, None


@dataclass
class Profile:
    """Sketches of one model version over one window (or of a reference sample)."""

    model: str
    version: str
    k: int = sk.DEFAULT_K
    max_features: int = 256
    start: float = 0.0
    end: float = 0.0
    rows: int = 0  # rows profiled (in the sketches and class counts)
    raw_bytes: int = 0  # bytes of the input tensors summarized (what shipping them would cost)
    rows_seen: int = 0  # rows the model answered in the window, profiled or not (the monitor samples)
    sketches: dict[str, kll_floats_sketch] = field(default_factory=dict)
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)  # the sketches of outputs (score features), not inputs
    _requests: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]] = field(
        default_factory=list, repr=False
    )
    _batched: bool = field(default=True, repr=False)
    _pending_rows: int = field(default=0, repr=False)
    _per_request: int = field(default=0, repr=False)  # largest bytes a measured filed request holds
    _measure_in: int = field(default=0, repr=False)  # requests until the next one is measured
    _steps: dict[str, sk.Steps] = field(default_factory=dict, repr=False)  # CDFs of unchanged sketches

    # -- observing ---------------------------------------------------------------------------------
    def observe(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], batched: bool
    ) -> None:
        """Add one request (or a batch of sample rows): inputs and the model's raw outputs.

        The request path only files the request (its two mappings, no copy: the caller does not reuse
        them or their arrays); featurization and sketching happen for ``BUFFER_ROWS`` rows at once
        (:meth:`flush`), or sooner when the filed requests hold about ``BUFFER_BYTES`` (the bytes a
        request keeps alive, views' buffers included, are measured on the first request after a
        flush and every ``MEASURE_EVERY`` requests; the largest is taken for each)."""
        if batched is not self._batched:
            if self._requests:
                self.flush()
            self._batched = batched
        self._requests.append((inputs, outputs))
        n = 1
        if batched:
            for array in inputs.values():
                n = array.shape[0] if array.ndim else 1
                break
        self.rows += n
        self.rows_seen += n
        self._pending_rows += n
        self._measure_in -= 1
        if self._measure_in <= 0:
            self._measure_in = MEASURE_EVERY
            held = _request_bytes(inputs, outputs)
            if held > self._per_request:
                self._per_request = held
        if self._pending_rows >= BUFFER_ROWS or len(self._requests) * self._per_request >= BUFFER_BYTES:
            self.flush()

    def flush(self) -> Profile:
        """Featurize the pending rows and add them to the sketches and class counts."""
        reqs, batched = self._requests, self._batched
        if not reqs:
            return self
        self._requests, self._pending_rows, self._per_request, self._measure_in = [], 0, 0, 0
        for side in (0, 1):
            first = reqs[0][side].keys()
            same = all([r[side].keys() == first for r in reqs])
            names = sorted(first if same else {k for r in reqs for k in r[side]})
            for name in names:
                parts = (
                    [r[side][name] for r in reqs]
                    if same
                    else [r[side][name] for r in reqs if name in r[side]]
                )
                if (
                    parts[0].dtype.kind not in "fiub"
                ):  # a tensor's type is the model's: BYTES are not profiled
                    continue
                if side == 0:
                    self.raw_bytes += sum(a.nbytes for a in parts)
                    for array in _stacked(parts, batched):
                        feats = input_features(name, array, True, self.max_features)
                        if feats is not None:
                            self._sketch(*feats)
                    continue
                for array in _stacked(parts, batched):
                    out_names, scores, labels = output_features(name, array, True)
                    if scores is not None:
                        self._sketch(out_names, scores)
                        self.outputs.update(out_names)
                    if labels is not None:
                        self._count(name, labels)
        return self

    def _sketch(self, names: tuple[str, ...], matrix: np.ndarray) -> None:
        """Add a rows x features block: each column sorted first (a KLL sketch's error bound holds for
        any order of its input, and sorted runs make its compactions ~2.5x cheaper)."""
        if matrix.size == 0:
            return
        columns = np.array(matrix.T, dtype=np.float32, order="C")
        columns.sort(axis=1)  # NaN sort last
        finite = np.isfinite(columns[:, [0, -1]]).all()  # sorted: only the ends can be -inf/inf/NaN
        sketches = self.sketches
        for name, column in zip(names, columns, strict=True):
            if not finite:
                column = column[np.isfinite(column)]  # NaN/inf carry no rank information
                if column.size == 0:
                    continue
            s = sketches.get(name)
            if s is None:
                s = sketches[name] = sk.new(self.k)
            s.update(column)
        if self._steps:
            self._steps.clear()

    def steps(self, name: str) -> sk.Steps:
        """The CDF of feature ``name`` as steps (:func:`sketch.steps`), kept until the sketch changes
        (a reference computes it once)."""
        st = self._steps.get(name)
        if st is None:
            st = self._steps[name] = sk.steps(self.sketches[name])
        return st

    def _count(self, output: str, labels: np.ndarray) -> None:
        counts = self.classes.setdefault(output, {})
        if labels.size and labels.min() >= 0 and labels.max() < 4 * MAX_CLASSES:
            per = np.bincount(labels)
            values = np.flatnonzero(per)
            n = per[values]
        else:
            values, n = np.unique(labels, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist(), strict=True):
            key = str(v)
            if key not in counts and len(counts) >= MAX_CLASSES:
                key = OTHER
            counts[key] = counts.get(key, 0) + c

    # -- merging -----------------------------------------------------------------------------------
    def merge(self, other: Profile) -> Profile:
        """Add ``other`` into this profile (sketch merges; class counts add)."""
        self.flush()
        other.flush()
        self._steps.clear()
        for name, s in other.sketches.items():
            mine = self.sketches.get(name)
            if mine is None:
                mine = self.sketches[name] = sk.new(self.k)
            mine.merge(s)
        self.outputs |= other.outputs
        for output, counts in other.classes.items():
            mine_c = self.classes.setdefault(output, {})
            for cls, c in counts.items():
                mine_c[cls] = mine_c.get(cls, 0) + c
        self.rows += other.rows
        self.rows_seen += other.rows_seen
        self.raw_bytes += other.raw_bytes
        self.start = (
            min(self.start, other.start) if self.start and other.start else (self.start or other.start)
        )
        self.end = max(self.end, other.end)
        return self

    @property
    def sample_fraction(self) -> float:
        """Rows profiled / rows seen (1.0 when every row was profiled, or none was seen)."""
        return self.rows / self.rows_seen if self.rows_seen else 1.0

    def empty_copy(self, start: float = 0.0) -> Profile:
        return Profile(self.model, self.version, self.k, self.max_features, start=start)

    def memory_bytes(self) -> int:
        """Serialized size of the sketches plus the buffered rows (what this profile holds)."""
        held = sum(_request_bytes(i, o) for i, o in self._requests)
        return held + sum(len(s.serialize()) for s in self.sketches.values())

    # -- encoding ----------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": self.model, "version": self.version, "k": self.k,
            "max_features": self.max_features, "start": self.start, "end": self.end, "rows": self.rows,
            "rows_seen": self.rows_seen, "raw_bytes": self.raw_bytes, "classes": self.classes,
        }  # fmt: skip

    def to_bytes(self) -> bytes:
        """Compact binary form (what goes upstream): ``u32 header length, JSON header, sketches``."""
        self.flush()
        blobs = {name: bytes(s.serialize()) for name, s in sorted(self.sketches.items())}
        head = self.header()
        head["sketches"] = [[name, len(b)] for name, b in blobs.items()]
        raw = json.dumps(head, separators=(",", ":")).encode()
        return struct.pack("<I", len(raw)) + raw + b"".join(blobs.values())

    @classmethod
    def from_bytes(cls, data: bytes) -> Profile:
        data = bytes(data)
        try:
            (size,) = struct.unpack_from("<I", data)
            head = json.loads(data[4 : 4 + size])
            offset = 4 + size
            sketches = {}
            for name, length in head.pop("sketches"):
                sketches[name] = sk.from_bytes(data[offset : offset + length])
                offset += length
            if offset != len(data):
                raise ValueError(f"{len(data) - offset} trailing bytes")
        except (struct.error, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ValueError(f"not a drift profile: {exc}") from None
        return cls._from_header(head, sketches)

    def to_json(self) -> dict[str, Any]:
        """The reference file's form: the header plus base64 sketches."""
        import base64

        self.flush()
        out = self.header()
        out["error_bound"] = sk.rank_error(self.k)
        out["sketches"] = {
            n: base64.b64encode(bytes(s.serialize())).decode() for n, s in sorted(self.sketches.items())
        }
        return out

    @classmethod
    def from_json(cls, doc: Any) -> Profile:
        import base64

        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a drift profile: 'format' must be {FORMAT!r}")
        try:
            sketches = {str(n): sk.from_bytes(base64.b64decode(b)) for n, b in dict(doc["sketches"]).items()}
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"not a drift profile: 'sketches': {exc}") from None
        return cls._from_header(dict(doc), sketches)

    @classmethod
    def _from_header(cls, head: dict[str, Any], sketches: dict[str, kll_floats_sketch]) -> Profile:
        if head.get("format") != FORMAT:
            raise ValueError(f"not a drift profile: 'format' must be {FORMAT!r}")
        try:
            classes = {
                str(o): {str(c): int(n) for c, n in dict(v).items()}
                for o, v in dict(head.get("classes", {})).items()
            }
            rows = int(head["rows"])
            return cls(
                model=str(head["model"]), version=str(head["version"]), k=int(head["k"]),
                max_features=int(head.get("max_features", 256)), start=float(head.get("start", 0.0)),
                end=float(head.get("end", 0.0)), rows=rows, raw_bytes=int(head.get("raw_bytes", 0)),
                rows_seen=int(head.get("rows_seen", rows)), sketches=sketches, classes=classes,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a drift profile: field {exc}") from None


def load_reference(path: str | Any) -> Profile:
    """A reference profile file (``continuum-worker profile --out``); ValueError names the problem."""
    from pathlib import Path

    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{p} is not JSON: {exc}") from None
    try:
        return Profile.from_json(doc)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
