"""The worker's drift monitor: profiles per model version and window, scores, metrics, summaries.

``observe()`` runs on the request path after a successful inference. It profiles a uniform random
sample of the requests, capped at ``sample_rate`` rows per second per model version: each request is
profiled with a probability ``p`` that is fixed for the window (a Bernoulli sample, drawn as geometric
skips, so an unprofiled request costs a counter decrement) and set when the window opens from the
rate the previous window saw (``p = 1`` at or below the cap: every row is profiled). A profiled
request is filed into the open window (the sketches take the rows in blocks). A window closes after
``window_seconds`` once it has ``min_samples`` profiled rows (a quiet site's window stretches until it
has, or until ``upload_seconds``), or sooner, once it has profiled more than twice the cap's rows for
its age (the traffic rose: the next window's ``p`` follows). A closed window is scored against the
reference and merged into the upload period, whose compact summary goes to the
:class:`~continuum_worker.drift.upstream.SummarySink` (the CRDT state) every ``upload_seconds``.
Windows count the rows they saw and the rows they profiled; merges (the upload period, the fleet)
weigh each window by its profiled rows (docs/drift.md).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from continuum_worker.drift.profile import Profile, load_reference
from continuum_worker.drift.score import Thresholds, compare
from continuum_worker.drift.sketch import WINDOW_K
from continuum_worker.drift.upstream import SummarySink, fleet_profiles

log = logging.getLogger("continuum.worker.drift")
REFERENCE_FILE = "drift_reference.json"
METRICS_EVERY = 256  # profiled requests between counter updates (a multiple of CHECK_EVERY)
CHECK_EVERY = 64  # profiled requests between checks of the window's profiled rows against the cap


@dataclass(frozen=True)
class DriftConfig:
    window_seconds: float = 60.0
    upload_seconds: float = 900.0
    k: int = 200  # the upload period's sketches (what goes upstream)
    max_features: int = 256
    thresholds: Thresholds = field(default_factory=Thresholds)
    window_k: int | None = None  # the scored windows' sketches (local only); None: max(2k, 400)
    sample_rate: float = 500.0  # rows per second per model version profiled at most; 0: every row

    @property
    def scoring_k(self) -> int:
        return self.window_k if self.window_k else max(2 * self.k, WINDOW_K)

    @property
    def row_budget(self) -> float:
        """Rows per second a window is sampled for: the cap, or enough for ``min_samples`` per window
        (a cap below that would only stretch every window); 0: no cap."""
        if not self.sample_rate:
            return 0.0
        window = self.window_seconds or 1.0
        return max(self.sample_rate, self.thresholds.min_samples / window)

    def fraction_for(self, rows_per_second: float) -> float:
        """The sampling probability of a window expected to see ``rows_per_second``."""
        budget = self.row_budget
        if not budget or rows_per_second <= budget:
            return 1.0
        return budget / rows_per_second


def geometric_skip(rng: random.Random, p: float) -> int:
    """Requests until the next profiled one (1: the next) for a Bernoulli(``p``) sample of requests:
    the count of a geometric distribution, so counting down to it samples each request independently
    with probability ``p``."""
    if p >= 1.0:
        return 1
    return 1 + int(math.log(1.0 - rng.random()) / math.log1p(-p))


def _rows_of(inputs: Mapping[str, np.ndarray], batched: bool) -> int:
    if batched:
        for array in inputs.values():
            return array.shape[0] if array.ndim else 1
    return 1


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        kw: dict[str, Any] = {"registry": registry if registry is not None else CollectorRegistry()}
        labels = ("model", "version")
        self.score = Gauge(
            "continuum_drift_score",
            "Largest KS distance of the last scored window to the reference",
            labels,
            **kw,
        )
        self.drifting = Gauge(
            "continuum_drift_drifting", "1 while the last scored window is drifting", labels, **kw
        )
        self.window_samples = Gauge(
            "continuum_drift_window_samples", "Rows profiled in the last closed window", labels, **kw
        )
        self.samples = Counter("continuum_drift_samples", "Rows profiled", labels, **kw)
        self.rows_seen = Counter(
            "continuum_drift_rows_seen",
            "Rows answered, profiled or not (the profile samples them)",
            labels,
            **kw,
        )
        self.sample_fraction = Gauge(
            "continuum_drift_sample_fraction",
            "Probability that a request is profiled in the open window (1: every request)",
            labels,
            **kw,
        )
        self.windows = Counter(
            "continuum_drift_windows", "Closed windows by status", (*labels, "status"), **kw
        )
        self.input_bytes = Counter(
            "continuum_drift_input_bytes", "Bytes of input tensors profiled (never sent)", labels, **kw
        )
        self.summary_bytes = Counter(
            "continuum_drift_summary_bytes", "Bytes of summaries recorded for upstream", labels, **kw
        )
        self.profile_bytes = Gauge(
            "continuum_drift_profile_bytes", "Bytes held by the open window's profile", labels, **kw
        )


@dataclass
class Track:
    """One model version: its reference, open window, upload period and last report."""

    model: str
    version: str
    window: Profile
    upload: Profile
    reference: Profile | None = None
    reference_path: Path | None = None
    reference_mtime: float | None = None
    reference_error: str | None = None
    last: dict[str, Any] | None = None
    was_drifting: bool = False
    windows: int = 0
    uploads: int = 0
    summary_bytes: int = 0
    input_bytes: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0  # profiled requests since the counters were last updated
    counted_rows: int = 0
    counted_bytes: int = 0
    counted_seen: int = 0
    samples_child: Any = None  # the Prometheus children of this model version
    bytes_child: Any = None
    seen_child: Any = None
    due: float = 0.0  # when the open window is due to close (its start + window_seconds)
    fraction: float = 1.0  # the open window's sampling probability
    skip: int = 1  # requests until the next profiled one (1: the next)
    rows_seen_total: int = 0  # every row answered since the track started
    rows_profiled_total: int = 0


class DriftMonitor:
    def __init__(
        self,
        config: DriftConfig,
        reference_lookup: Callable[[str, str], Path | None],
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.rng = rng if rng is not None else random.Random()
        self.reference_lookup = reference_lookup
        self.metrics = DriftMetrics(registry)
        self.clock = clock
        self.tracks: dict[tuple[str, str], Track] = {}
        self.sink: SummarySink | None = None
        self._budget = config.row_budget

    # -- request path ------------------------------------------------------------------------------
    def observe(
        self,
        model: str,
        version: str,
        batched: bool,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        rows: int | None = None,
    ) -> None:
        """One answered request (``rows``: its rows, when the caller knows them). Unless it is drawn
        for the sample, this counts its rows and returns."""
        track = self.tracks.get((model, version))
        now = self.clock()
        if track is None:
            track = self._track(model, version, now)
        elif now >= track.due:
            self._maybe_close(track, now)
        track.skip -= 1
        if track.skip > 0:
            track.window.rows_seen += rows if rows is not None else _rows_of(inputs, batched)
            return
        track.skip = geometric_skip(self.rng, track.fraction)
        track.window.observe(inputs, outputs, batched)
        track.calls += 1
        if not track.calls % CHECK_EVERY:
            if track.calls >= METRICS_EVERY:
                self._count(track)
            self._check_rate(track, now)

    def _check_rate(self, track: Track, now: float) -> None:
        """Close the window early when it has profiled more than twice the cap's rows for its age (the
        traffic rose since its ``p`` was set; the next window's follows); never before it is
        ``min(1 s, window)`` old and has the minimum sample. Checked every ``CHECK_EVERY`` profiled
        requests."""
        cfg = self.config
        budget = self._budget
        if not budget:
            return
        w = track.window
        elapsed = now - w.start
        if (
            elapsed >= min(1.0, cfg.window_seconds)
            and w.rows >= cfg.thresholds.min_samples
            and w.rows > 2.0 * budget * elapsed
        ):
            self._close(track, now)

    def _count(self, track: Track) -> None:
        """Move the rows and bytes profiled (and the rows seen) since the last call into the counters
        (every ``METRICS_EVERY`` profiled requests and whenever a window closes or is viewed, not per
        request)."""
        w = track.window
        seen = w.rows_seen
        rows, raw, more = (
            w.rows - track.counted_rows,
            w.raw_bytes - track.counted_bytes,
            seen - track.counted_seen,
        )
        if rows or raw:
            track.samples_child.inc(rows)
            track.bytes_child.inc(raw)
            track.input_bytes += raw
            track.rows_profiled_total += rows
        if more:
            track.seen_child.inc(more)
            track.rows_seen_total += more
        track.counted_rows, track.counted_bytes, track.counted_seen, track.calls = (
            w.rows,
            w.raw_bytes,
            seen,
            0,
        )

    def tick(self) -> None:
        """Close every window that is due (the request path does it too; this covers quiet models)."""
        now = self.clock()
        for track in list(self.tracks.values()):
            if now >= track.due:
                self._maybe_close(track, now)

    # -- windows -----------------------------------------------------------------------------------
    def _new_profile(self, model: str, version: str, start: float, k: int | None = None) -> Profile:
        return Profile(model, version, k or self.config.k, self.config.max_features, start=start)

    def _new_window(self, model: str, version: str, start: float) -> Profile:
        return self._new_profile(model, version, start, self.config.scoring_k)

    def _track(self, model: str, version: str, now: float) -> Track:
        track = Track(
            model,
            version,
            self._new_window(model, version, now),
            self._new_profile(model, version, now),
            due=now + self.config.window_seconds,
        )
        track.samples_child = self.metrics.samples.labels(model, version)
        track.bytes_child = self.metrics.input_bytes.labels(model, version)
        track.seen_child = self.metrics.rows_seen.labels(model, version)
        self.metrics.sample_fraction.labels(model, version).set(1.0)
        self._load_reference(track)
        self.tracks[(model, version)] = track
        return track

    def _load_reference(self, track: Track) -> None:
        path = self.reference_lookup(track.model, track.version)
        track.reference_path = path
        if path is None:
            track.reference, track.reference_error, track.reference_mtime = None, None, None
            return
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            track.reference, track.reference_error = None, f"{path}: {exc.strerror or exc}"
            return
        if mtime == track.reference_mtime and (track.reference is not None or track.reference_error):
            return
        track.reference_mtime = mtime
        try:
            track.reference, track.reference_error = load_reference(path), None
        except ValueError as exc:
            track.reference, track.reference_error = None, str(exc)
            log.error("drift reference of model %s version %s not used: %s", track.model, track.version, exc)

    def _maybe_close(self, track: Track, now: float) -> None:
        w = track.window
        cfg = self.config
        if w.rows_seen == 0:
            w.start = now
            track.due = now + cfg.window_seconds
            return
        if w.rows < cfg.thresholds.min_samples and now - w.start < cfg.upload_seconds:
            return  # a quiet window stretches until it has enough profiled rows to say something
        self._close(track, now)

    def _close(self, track: Track, now: float) -> None:
        w = track.window
        cfg = self.config
        w.end = now
        w.flush()
        self._count(track)  # after the flush: a window's input bytes are summed when its rows are sketched
        self._load_reference(track)  # a new reference file is picked up at the next window
        labels = (track.model, track.version)
        if track.reference is not None:
            report = compare(w, track.reference, cfg.thresholds)
        else:
            report = {"status": "no-reference", "drifting": False, "score": None, "samples": w.rows,
                      "rows_seen": w.rows_seen, "sample_fraction": round(w.sample_fraction, 6),
                      "start": w.start, "end": w.end}  # fmt: skip
        track.last = report
        track.windows += 1
        track.history = [
            *track.history[-23:],
            {k: report.get(k) for k in ("start", "end", "samples", "rows_seen", "score", "status")},
        ]
        self.metrics.windows.labels(*labels, report["status"]).inc()
        self.metrics.window_samples.labels(*labels).set(w.rows)
        if report["score"] is not None and report["status"] != "insufficient":
            self.metrics.score.labels(*labels).set(report["score"])
            self.metrics.drifting.labels(*labels).set(1 if report["drifting"] else 0)
            if report["drifting"] != track.was_drifting:
                log.warning("model %s version %s %s drifting (score %.3f, features %s)", track.model, track.version,
                            "started" if report["drifting"] else "stopped", report["score"],
                            report.get("drifting_features", [])[:5])  # fmt: skip
            track.was_drifting = report["drifting"]
        track.upload.merge(w)
        track.window = self._new_window(track.model, track.version, now)
        track.due = now + cfg.window_seconds
        track.counted_rows = track.counted_bytes = track.counted_seen = 0
        elapsed = now - w.start
        if elapsed > 0:  # the next window is sampled for the rate this one saw
            track.fraction = cfg.fraction_for(w.rows_seen / elapsed)
        # a fresh draw: the skip drawn with the old p is not a draw of this p
        track.skip = geometric_skip(self.rng, track.fraction)
        self.metrics.sample_fraction.labels(*labels).set(track.fraction)
        self.metrics.profile_bytes.labels(*labels).set(
            track.window.memory_bytes() + track.upload.memory_bytes()
        )
        if now - track.upload.start >= cfg.upload_seconds:
            self._upload(track, now)

    def _upload(self, track: Track, now: float) -> None:
        up = track.upload
        up.end = now
        if self.sink is not None and up.rows:
            blob = up.to_bytes()
            try:
                recorded = self.sink.record_summary(track.model, track.version, up.start, blob)
            except Exception:  # the state must not break inference
                log.exception("recording the drift summary of model %s failed", track.model)
                recorded = False
            if recorded:
                track.uploads += 1
                track.summary_bytes += len(blob)
                self.metrics.summary_bytes.labels(track.model, track.version).inc(len(blob))
        track.upload = self._new_profile(track.model, track.version, now)

    # -- views -------------------------------------------------------------------------------------
    def view(self, model: str, version: str) -> dict[str, Any]:
        """The JSON of ``GET /v2/models/{m}[/versions/{v}]/drift``."""
        self.tick()
        track = self.tracks.get((model, version))
        if track is None:
            track = self._track(model, version, self.clock())
        self._count(track)
        cfg = self.config
        # the input bytes of every row answered, estimated from the profiled rows' (a uniform sample)
        seen_bytes = (
            round(track.input_bytes * track.rows_seen_total / track.rows_profiled_total)
            if track.rows_profiled_total
            else 0
        )
        live = None
        if track.reference is not None and track.window.rows:
            live = compare(track.window, track.reference, cfg.thresholds)
        out: dict[str, Any] = {
            "model": model,
            "version": version,
            "drifting": bool(track.last and track.last.get("drifting")),
            "score": track.last.get("score") if track.last else None,
            "window_seconds": cfg.window_seconds,
            "upload_seconds": cfg.upload_seconds,
            "k": cfg.k,
            "window_k": cfg.scoring_k,
            "reference": None if track.reference is None else {
                "path": str(track.reference_path), "rows": track.reference.rows, "version": track.reference.version,
                "features": len(track.reference.sketches),
            },
            "reference_error": track.reference_error,
            "last": track.last,
            "live": live,
            "open_window": {"start": track.window.start, "samples": track.window.rows,
                            "rows_seen": track.window.rows_seen},
            "sampling": {"rate": cfg.sample_rate, "row_budget": cfg.row_budget, "fraction": track.fraction,
                         "rows_seen": track.rows_seen_total, "rows_profiled": track.rows_profiled_total},
            "windows_closed": track.windows,
            "history": track.history,
            "upstream": {"summaries": track.uploads, "summary_bytes": track.summary_bytes,
                         "input_bytes": track.input_bytes, "input_bytes_seen": seen_bytes,
                         "ratio": (track.summary_bytes / seen_bytes) if seen_bytes else None},
        }  # fmt: skip
        out["versions"] = self.versions(model)
        if self.sink is not None:
            out["fleet"] = self.fleet(model, version, track.reference)
        return out

    def versions(self, model: str) -> dict[str, dict[str, Any]]:
        """Every profiled version of ``model`` and its last scored window (what a rollout gate compares:
        the candidate version's score against the stable one's, docs/drift.md)."""
        out = {}
        for t in self.tracks.values():
            if t.model != model:
                continue
            last = t.last or {}
            out[t.version] = {
                "drifting": bool(last.get("drifting")), "score": last.get("score"),
                "status": last.get("status", "open"), "samples": last.get("samples", 0),
                "rows_seen": last.get("rows_seen", 0), "sample_fraction": t.fraction,
                "end": last.get("end"), "windows_closed": t.windows, "open_samples": t.window.rows,
                "reference": t.reference is not None,
                "output_score": last.get("output_score"), "output_psi": last.get("output_psi"),
                "output_drifting": bool(last.get("output_drifting")),
            }  # fmt: skip
        return out

    def fleet(self, model: str, version: str, reference: Profile | None) -> dict[str, Any] | None:
        """Every replica's summaries of this model version in the state, merged and scored."""
        assert self.sink is not None
        merged, info = fleet_profiles([e for e in self.sink.summaries(model) if e[1] == version])
        profile = merged.get(version)
        if profile is None:
            return None
        report = compare(profile, reference, self.config.thresholds) if reference is not None else None
        return {**info[version], "rows": profile.rows, "rows_seen": profile.rows_seen,
                "input_bytes": profile.raw_bytes, "report": report}  # fmt: skip

    def summary(self) -> list[dict[str, Any]]:
        self.tick()
        return [
            {"model": t.model, "version": t.version, "drifting": bool(t.last and t.last.get("drifting")),
             "score": t.last.get("score") if t.last else None,
             "samples": t.last.get("samples") if t.last else 0, "status": t.last["status"] if t.last else "open"}
            for t in self.tracks.values()
        ]  # fmt: skip


def repository_reference(repository: Path) -> Callable[[str, str], Path | None]:
    """``<repo>/<model>/<version>/drift_reference.json``, else ``<repo>/<model>/drift_reference.json``."""

    def lookup(model: str, version: str) -> Path | None:
        for candidate in (repository / model / version / REFERENCE_FILE, repository / model / REFERENCE_FILE):
            if candidate.is_file():
                return candidate
        return None

    return lookup


def fixed_reference(path: Path | None) -> Callable[[str, str], Path | None]:
    return lambda model, version: path
