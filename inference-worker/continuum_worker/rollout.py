"""Two versions of the one model at once: a stable and a candidate, and how requests are split between
them (docs/rollout-protocol.md).

* :func:`parse_request` checks a ``PUT /v2/models/{m}/rollout`` body and names the field that is wrong.
* :class:`VersionBook` counts, per model version, the requests that version answered, their errors and
  latency, and the shadow comparisons it was the candidate of; :class:`VersionCollector` exposes the
  same numbers to Prometheus at scrape time (a request pays a bisect and a few increments, no lock).
* :func:`agree` decides whether a candidate's outputs agree with the stable's.
* :class:`Rollout` is the split itself: mode, weight, the shadow queue and its consumers, the
  persisted last accepted PUT. The data plane owns one for its shorthand model and asks it which
  version answers each unversioned request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
import secrets
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from continuum_worker.errors import InvalidArgument, ServerError
from continuum_worker.stats import REQUEST_BUCKETS

if TYPE_CHECKING:
    from continuum_worker.models import LoadedModel

log = logging.getLogger("continuum.worker")

MODES = ("stable", "shadow", "canary", "full")
FIELDS = ("candidate", "generation", "mode", "promote", "weight")
CANDIDATE_FIELDS = ("sha256", "uri", "version")
OUTCOMES = ("success", "error", "invalid")
REGRESSION_FLOOR = 1e-6  # |stable| below it: the relative error is taken against this
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class Conflict(ServerError):
    """The request cannot apply to the current state (409): e.g. promote without a candidate."""

    http_status = 409


class LoadFailed(ServerError):
    """The candidate cannot be fetched, verified or loaded (422); nothing changed."""

    http_status = 422


# -- the PUT body ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionRef:
    version: str
    uri: str
    sha256: str | None = None

    def json(self) -> dict[str, str]:
        out = {"version": self.version, "uri": self.uri}
        if self.sha256:
            out["sha256"] = self.sha256
        return out


@dataclass(frozen=True)
class RolloutRequest:
    mode: str
    weight: float
    candidate: VersionRef | None
    generation: str
    promote: bool = False

    def canonical(self) -> dict[str, Any]:
        """The body that re-creates this state (what is persisted)."""
        return {
            "candidate": self.candidate.json() if self.candidate else None,
            "mode": self.mode,
            "weight": self.weight,
            "generation": self.generation,
        }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_request(body: Any, stable_version: str) -> RolloutRequest:
    """A checked PUT body; :class:`InvalidArgument` naming the field otherwise."""
    if not isinstance(body, dict):
        raise InvalidArgument("request must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown field(s) {unknown} (fields: {', '.join(FIELDS)})")
    generation = body.get("generation")
    if not isinstance(generation, str):
        raise InvalidArgument(f"generation: required, a string (got {generation!r})")
    promote = body.get("promote", False)
    if not isinstance(promote, bool):
        raise InvalidArgument(f"promote: must be true or false (got {promote!r})")
    weight = body.get("weight")
    if weight is not None and (not _number(weight) or not math.isfinite(weight) or not 0 <= weight <= 1):
        raise InvalidArgument(f"weight: must be a number in [0, 1] (got {weight!r})")
    if promote:
        if body.get("mode", "stable") != "stable":
            raise InvalidArgument(
                f"mode: promote makes the candidate the stable: mode must be absent or 'stable' (got {body['mode']!r})"
            )
        if body.get("candidate") is not None:
            raise InvalidArgument(
                "candidate: promote promotes the loaded candidate: candidate must be absent or null"
            )
        if weight not in (None, 0):
            raise InvalidArgument(f"weight: must be absent or 0 with promote (got {weight!r})")
        return RolloutRequest("stable", 0.0, None, generation, promote=True)
    mode = body.get("mode")
    if mode not in MODES:
        raise InvalidArgument(f"mode: required, one of {', '.join(MODES)} (got {mode!r})")
    raw = body.get("candidate")
    if mode == "stable":
        if raw is not None:
            raise InvalidArgument(
                "candidate: must be null in mode 'stable' (stable mode unloads the candidate)"
            )
        candidate = None
    else:
        candidate = _candidate(raw, mode, stable_version)
    if mode == "canary":
        if weight is None:
            raise InvalidArgument("weight: required in mode 'canary' (the candidate's share, in [0, 1])")
        share = float(weight)
    elif mode == "full":
        if weight not in (None, 1):
            raise InvalidArgument(f"weight: must be absent or 1 in mode 'full' (got {weight!r})")
        share = 1.0
    else:
        if weight not in (None, 0):
            raise InvalidArgument(
                f"weight: must be absent or 0 in mode '{mode}' (weights are for 'canary'; got {weight!r})"
            )
        share = 0.0
    return RolloutRequest(mode, share, candidate, generation)


def _candidate(raw: Any, mode: str, stable_version: str) -> VersionRef:
    if raw is None:
        raise InvalidArgument(f"candidate: required in mode '{mode}' (an object with uri and version)")
    if not isinstance(raw, dict):
        raise InvalidArgument(f"candidate: must be an object with uri and version (got {raw!r})")
    unknown = sorted(set(raw) - set(CANDIDATE_FIELDS))
    if unknown:
        raise InvalidArgument(
            f"candidate: unknown field(s) {unknown} (fields: {', '.join(CANDIDATE_FIELDS)})"
        )
    uri, version, sha = raw.get("uri"), raw.get("version"), raw.get("sha256")
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidArgument(f"candidate.uri: required, a non-empty string (got {uri!r})")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise InvalidArgument(
            f"candidate.version: required, a string of letters, digits, '.', '_', '-' (got {version!r})"
        )
    if version == stable_version:
        raise InvalidArgument(
            f"candidate.version: {version!r} is the stable version; a candidate needs another"
        )
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise InvalidArgument(f"candidate.sha256: must be 64 hex digits or absent (got {sha!r})")
    return VersionRef(version, uri, sha.lower() if sha else None)


# -- counters --------------------------------------------------------------------------------------
@dataclass
class VersionCounters:
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(REQUEST_BUCKETS) + 1))
    seconds: float = 0.0
    shadow: dict[str, int] = field(default_factory=lambda: {"agree": 0, "disagree": 0, "dropped": 0})

    def observe(self, outcome: str, seconds: float) -> None:
        self.requests[outcome] += 1
        self.buckets[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def cumulative(self) -> list[int]:
        total, out = 0, []
        for n in self.buckets:
            total += n
            out.append(total)
        return out

    def json(self) -> dict[str, Any]:
        counts = self.cumulative()
        buckets: list[list[Any]] = [[b, c] for b, c in zip(REQUEST_BUCKETS, counts, strict=False)]
        buckets.append(["+Inf", counts[-1]])
        return {
            "requests": sum(self.requests.values()),
            "errors": self.requests["error"],
            "invalid": self.requests["invalid"],
            "latency_seconds_buckets": buckets,
            "shadow_compared": self.shadow["agree"] + self.shadow["disagree"],
            "shadow_disagreed": self.shadow["disagree"],
            "shadow_dropped": self.shadow["dropped"],
        }


class VersionBook:
    """Counters per (model, version), kept after a version is unloaded (cumulative since start)."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], VersionCounters] = {}

    def of(self, model: str, version: str) -> VersionCounters:
        key = (model, version)
        counters = self.versions.get(key)
        if counters is None:
            counters = self.versions[key] = VersionCounters()
        return counters


class VersionCollector:
    """``continuum_model_version_*``, ``continuum_shadow_comparisons_total`` and the rollout gauges,
    read from the :class:`VersionBook` at each scrape."""

    def __init__(self, book: VersionBook, rollouts: Callable[[], list[Rollout]]) -> None:
        self.book = book
        self.rollouts = rollouts

    def _families(self) -> tuple[Metric, ...]:
        return (
            CounterMetricFamily(
                "continuum_model_version_requests",
                "Inference requests answered by each model version, by outcome (success, error: a server "
                "error, invalid: the client's request)",
                labels=["model", "version", "outcome"],
            ),
            HistogramMetricFamily(
                "continuum_model_version_request_duration_seconds",
                "Server-side duration of the requests each model version answered, seconds",
                labels=["model", "version"],
            ),
            CounterMetricFamily(
                "continuum_shadow_comparisons",
                "Shadow copies of requests per candidate version: agree, disagree with the stable, or dropped",
                labels=["model", "version", "result"],
            ),
            GaugeMetricFamily(
                "continuum_rollout_weight", "The candidate's share of unversioned requests", labels=["model"]
            ),
            GaugeMetricFamily(
                "continuum_rollout_mode", "1 for the rollout's current mode", labels=["model", "mode"]
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, durations, shadow, weight, mode = self._families()
        for (model, version), c in sorted(list(self.book.versions.items())):
            for outcome, n in c.requests.items():
                requests.add_metric([model, version, outcome], n)  # type: ignore[attr-defined]
            counts = c.cumulative()
            buckets = [(repr(float(b)), n) for b, n in zip(REQUEST_BUCKETS, counts, strict=False)]
            durations.add_metric([model, version], [*buckets, ("+Inf", counts[-1])], c.seconds)  # type: ignore[attr-defined]
            if any(c.shadow.values()):
                for result, n in c.shadow.items():
                    shadow.add_metric([model, version, result], n)  # type: ignore[attr-defined]
        for r in self.rollouts():
            weight.add_metric([r.name], r.share)  # type: ignore[attr-defined]
            for m in MODES:
                mode.add_metric([r.name, m], 1.0 if r.mode == m else 0.0)  # type: ignore[attr-defined]
        yield from (requests, durations, shadow, weight, mode)


# -- agreement -------------------------------------------------------------------------------------
def _rows(array: np.ndarray, batched: bool) -> np.ndarray:
    return array.reshape(array.shape[0], -1) if batched and array.ndim >= 1 else array.reshape(1, -1)


def agree(
    stable: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], batched: bool, tolerance: float
) -> bool:
    """Whether every output of the stable's answer agrees with the candidate's: floating outputs with
    several values per row by their top-1 index, with one value per row by relative error within
    ``tolerance``; integer, boolean and BYTES outputs by equality. A missing output, another shape or
    another kind of datatype disagrees."""
    for name, s in stable.items():
        c = candidate.get(name)
        if c is None or c.shape != s.shape:
            return False
        if s.size == 0:
            continue
        if s.dtype.kind == "f":
            if c.dtype.kind != "f":
                return False
            srows, crows = _rows(s, batched), _rows(c, batched)
            if srows.shape[1] > 1:
                if not np.array_equal(srows.argmax(axis=1), crows.argmax(axis=1)):
                    return False
                continue
            sv, cv = srows.astype(np.float64), crows.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                rel = np.abs(cv - sv) / np.maximum(np.abs(sv), REGRESSION_FLOOR)
            if not bool(np.all(rel <= tolerance)):  # NaN compares False: disagrees
                return False
        elif s.dtype.kind != c.dtype.kind or not np.array_equal(s, c):
            return False
    return True


# -- the split -------------------------------------------------------------------------------------
@dataclass
class ShadowCopy:
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    expected: dict[str, np.ndarray]
    batched: bool
    version: str


class Rollout:
    """The stable and candidate versions of one model, and which of them answers.

    ``plane`` is the data plane (loads, retires, its settings and metrics); it calls :meth:`pick` for
    every unversioned request and :meth:`offer` after the stable answered one in shadow mode.
    """

    def __init__(self, plane: Any, name: str, stable: VersionRef, book: VersionBook) -> None:
        s = plane.settings
        self.plane = plane
        self.name = name
        self.stable = stable
        self.candidate: VersionRef | None = None
        self.mode = "stable"
        self.weight = 0.0
        self.generation = ""
        self.instance = secrets.token_hex(8)
        self.book = book
        self.tolerance: float = s.shadow_tolerance
        self.queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(maxsize=s.shadow_queue)
        self.consumers: list[asyncio.Task[None]] = []
        self.path = Path(s.state_dir) / "rollout" / f"{name}.json" if s.state_dir is not None else None
        self.random = random.Random()

    # -- routing (no awaits: a request sees one consistent state) ----------------------------------
    @property
    def share(self) -> float:
        return self.weight if self.mode == "canary" else 1.0 if self.mode == "full" else 0.0

    def primary(self) -> str:
        """The version answering when no draw is made (metadata, config, ready of the bare model)."""
        return self.candidate.version if self.mode == "full" and self.candidate else self.stable.version

    def pick(self) -> str:
        """The version answering one unversioned request."""
        if self.candidate is not None:
            if self.mode == "full":
                return self.candidate.version
            if self.mode == "canary" and self.random.random() < self.weight:
                return self.candidate.version
        return self.stable.version

    def offer(self, version: str, inputs: dict[str, np.ndarray], datatypes: dict[str, str],
              expected: dict[str, np.ndarray], batched: bool, copy: bool) -> None:  # fmt: skip
        """The stable answered an unversioned request: in shadow mode queue a copy for the candidate
        (dropped and counted when the queue is full). ``copy``: the inputs live in shared memory the
        client may overwrite once answered."""
        if self.mode != "shadow" or self.candidate is None or version != self.stable.version:
            return
        if copy:
            inputs = {k: np.array(v, copy=True) for k, v in inputs.items()}
        target = self.candidate.version
        try:
            self.queue.put_nowait(ShadowCopy(inputs, datatypes, expected, batched, target))
        except asyncio.QueueFull:
            self.book.of(self.name, target).shadow["dropped"] += 1
            return
        if not self.consumers:  # one at a time: a shadow holds at most one executor thread
            self.consumers = [asyncio.get_running_loop().create_task(self._consume())]

    async def _consume(self) -> None:
        while True:
            item = await self.queue.get()
            counters = self.book.of(self.name, item.version)
            model = self._shadow_target(item.version)
            if model is None:  # the split moved on before this copy's turn
                counters.shadow["dropped"] += 1
                continue
            try:
                model.validate(item.inputs, item.datatypes)
                outputs, _, _, _ = await model.infer(item.inputs)
            except Exception as exc:  # the candidate failing is a disagreement, never the client's error
                log.debug("shadow request on %s version %s failed: %s", self.name, item.version, exc)
                counters.shadow["disagree"] += 1
                continue
            ok = agree(item.expected, outputs, item.batched, self.tolerance)
            counters.shadow["agree" if ok else "disagree"] += 1
            self.plane.observe_shadow(model, item.inputs, outputs)

    def _shadow_target(self, version: str) -> LoadedModel | None:
        if self.mode != "shadow" or self.candidate is None or self.candidate.version != version:
            return None
        slot = self.plane.models.get(self.name)
        model = slot.versions.get(version) if slot is not None else None
        return model if model is not None and model.ready else None

    async def close(self) -> None:
        for task in self.consumers:
            task.cancel()
        for task in self.consumers:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self.consumers = []

    # -- the endpoint ------------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """The GET body."""
        slot = self.plane.models.get(self.name)
        loaded = set(slot.versions) if slot is not None else set()
        versions = {v for (m, v) in self.book.versions if m == self.name} | loaded
        return {
            "model": self.name,
            "stable": self.stable.json(),
            "candidate": self.candidate.json() if self.candidate else None,
            "mode": self.mode,
            "weight": self.share,
            "generation": self.generation,
            "instance": self.instance,
            "versions": {
                v: self.book.of(self.name, v).json() for v in sorted(versions, key=lambda v: (len(v), v))
            },
        }

    def state(self) -> RolloutRequest:
        return RolloutRequest(self.mode, self.weight, self.candidate, self.generation)

    def switch(self, request: RolloutRequest) -> None:
        """Take the new split at once (the candidate, if any, is loaded and ready)."""
        self.candidate, self.mode, self.weight, self.generation = (
            request.candidate,
            request.mode,
            request.weight,
            request.generation,
        )  # copies still queued for another mode or candidate find no target: dropped, counted

    # -- persistence -------------------------------------------------------------------------------
    def persist(self, raw: Any) -> None:
        """The accepted PUT (``request``) and the state it produced (``body``, re-applied at start)."""
        if self.path is None:
            return
        doc = {
            "model": self.name,
            "stable": self.stable.json(),
            "body": self.state().canonical(),
            "request": raw,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.partial")
        with partial.open("w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.path)

    def saved(self) -> RolloutRequest | None:
        """The persisted state to re-apply at start, when it is for this stable; else None (logged)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            doc = json.loads(self.path.read_text())
            stable = doc["stable"]
            body = doc["body"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("rollout state %s is unreadable (%s): ignored", self.path, exc)
            return None
        if not isinstance(stable, dict) or (stable.get("version"), stable.get("uri")) != (
            self.stable.version,
            self.stable.uri,
        ):
            log.warning(
                "rollout state %s is for stable %s, this worker starts with version %s from %s: discarded",
                self.path, stable, self.stable.version, self.stable.uri,
            )  # fmt: skip
            self.path.unlink(missing_ok=True)
            return None
        try:
            return parse_request(body, self.stable.version)
        except InvalidArgument as exc:
            log.warning("rollout state %s is invalid (%s): ignored", self.path, exc.message)
            return None
