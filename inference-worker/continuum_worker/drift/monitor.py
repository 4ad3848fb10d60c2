"""The worker's drift monitor: profiles per model version and window, scores, metrics, summaries.

``observe()`` runs on the request path after a successful inference: it copies the request's rows into
the open window's buffers (the sketches take them in blocks) and, when the window is due, closes it.
A window closes after ``window_seconds`` once it has ``min_samples`` rows (a quiet site's window
stretches until it has, or until ``upload_seconds``); a closed window is scored against the
reference and merged into the upload period, whose compact summary goes to the
:class:`~continuum_worker.drift.upstream.SummarySink` (the CRDT state) every ``upload_seconds``.
"""

from __future__ import annotations

import logging
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
METRICS_EVERY = 256


@dataclass(frozen=True)
class DriftConfig:
    window_seconds: float = 60.0
    upload_seconds: float = 900.0
    k: int = 200  # the upload period's sketches (what goes upstream)
    max_features: int = 256
    thresholds: Thresholds = field(default_factory=Thresholds)
    window_k: int | None = None  # the scored windows' sketches (local only); None: max(2k, 400)

    @property
    def scoring_k(self) -> int:
        return self.window_k if self.window_k else max(2 * self.k, WINDOW_K)


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
            "continuum_drift_window_samples", "Rows in the last closed window", labels, **kw
        )
        self.samples = Counter("continuum_drift_samples", "Rows profiled", labels, **kw)
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
    calls: int = 0  # requests since the counters were last updated
    counted_rows: int = 0
    counted_bytes: int = 0
    samples_child: Any = None  # the Prometheus children of this model version
    bytes_child: Any = None


class DriftMonitor:
    def __init__(
        self,
        config: DriftConfig,
        reference_lookup: Callable[[str, str], Path | None],
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.reference_lookup = reference_lookup
        self.metrics = DriftMetrics(registry)
        self.clock = clock
        self.tracks: dict[tuple[str, str], Track] = {}
        self.sink: SummarySink | None = None

    # -- request path ------------------------------------------------------------------------------
    def observe(
        self,
        model: str,
        version: str,
        batched: bool,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        track = self.tracks.get((model, version))
        now = self.clock()
        if track is None:
            track = self._track(model, version, now)
        elif now - track.window.start >= self.config.window_seconds:
            self._maybe_close(track, now)
        track.window.observe(inputs, outputs, batched)
        track.calls += 1
        if track.calls >= METRICS_EVERY:
            self._count(track)

    def _count(self, track: Track) -> None:
        """Move the rows and bytes profiled since the last call into the counters (every
        ``METRICS_EVERY`` requests and whenever a window closes or is viewed, not per request)."""
        w = track.window
        rows, raw = w.rows - track.counted_rows, w.raw_bytes - track.counted_bytes
        if rows or raw:
            track.samples_child.inc(rows)
            track.bytes_child.inc(raw)
            track.input_bytes += raw
        track.counted_rows, track.counted_bytes, track.calls = w.rows, w.raw_bytes, 0

    def tick(self) -> None:
        """Close every window that is due (the request path does it too; this covers quiet models)."""
        now = self.clock()
        for track in list(self.tracks.values()):
            if now - track.window.start >= self.config.window_seconds:
                self._maybe_close(track, now)

    # -- windows -----------------------------------------------------------------------------------
    def _new_profile(self, model: str, version: str, start: float, k: int | None = None) -> Profile:
        return Profile(model, version, k or self.config.k, self.config.max_features, start=start)

    def _new_window(self, model: str, version: str, start: float) -> Profile:
        return self._new_profile(model, version, start, self.config.scoring_k)

    def _track(self, model: str, version: str, now: float) -> Track:
        track = Track(
            model, version, self._new_window(model, version, now), self._new_profile(model, version, now)
        )
        track.samples_child = self.metrics.samples.labels(model, version)
        track.bytes_child = self.metrics.input_bytes.labels(model, version)
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
        if w.rows == 0:
            w.start = now
            return
        if w.rows < cfg.thresholds.min_samples and now - w.start < cfg.upload_seconds:
            return  # a quiet window stretches until it has enough rows to say something
        w.end = now
        w.flush()
        self._count(track)  # after the flush: a window's input bytes are summed when its rows are sketched
        self._load_reference(track)  # a new reference file is picked up at the next window
        labels = (track.model, track.version)
        if track.reference is not None:
            report = compare(w, track.reference, cfg.thresholds)
        else:
            report = {"status": "no-reference", "drifting": False, "score": None, "samples": w.rows,
                      "start": w.start, "end": w.end}  # fmt: skip
        track.last = report
        track.windows += 1
        track.history = [
            *track.history[-23:],
            {k: report.get(k) for k in ("start", "end", "samples", "score", "status")},
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
        track.counted_rows = track.counted_bytes = 0
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
            "open_window": {"start": track.window.start, "samples": track.window.rows},
            "windows_closed": track.windows,
            "history": track.history,
            "upstream": {"summaries": track.uploads, "summary_bytes": track.summary_bytes,
                         "input_bytes": track.input_bytes,
                         "ratio": (track.summary_bytes / track.input_bytes) if track.input_bytes else None},
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
        return {**info[version], "rows": profile.rows, "input_bytes": profile.raw_bytes, "report": report}

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
