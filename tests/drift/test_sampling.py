"""Sampling on the request path: the profiled rows per second are capped, the sample is uniform over
the window's rows, rows seen vs profiled are counted everywhere, and the minimum sample is of profiled
rows."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from continuum_worker.drift import DriftConfig, DriftMonitor, Profile, Thresholds, compare
from continuum_worker.drift.monitor import fixed_reference, geometric_skip
from continuum_worker.drift.upstream import StateSink, fleet_profiles
from continuum_worker.state.doc import StateDoc
from prometheus_client import CollectorRegistry

from tests.drift.support import Clock, write_reference

RNG = np.random.default_rng(21)
W = RNG.normal(size=(4, 3)).astype(np.float32)


def _reference(tmp_path: Path) -> Path:
    return write_reference(tmp_path, RNG, W)


def _monitor(tmp_path: Path, clock: Clock, rate: float, registry: CollectorRegistry | None = None,
             min_samples: int = 500, upload: float = 600.0, seed: int = 1) -> DriftMonitor:  # fmt: skip
    cfg = DriftConfig(window_seconds=60, upload_seconds=upload, sample_rate=rate,
                      thresholds=Thresholds(0.1, 0.2, min_samples))  # fmt: skip
    return DriftMonitor(
        cfg, fixed_reference(_reference(tmp_path)), registry, clock=clock, rng=random.Random(seed)
    )


def _pool(rows: int = 4096, per_request: int = 4, shift: float = 0.0) -> list[tuple[dict, dict]]:  # type: ignore[type-arg]
    x = RNG.normal(shift, 1.0, size=(rows, 4)).astype(np.float32)
    return [
        ({"x": x[i : i + per_request]}, {"y": x[i : i + per_request] @ W})
        for i in range(0, rows, per_request)
    ]


def _run(
    mon: DriftMonitor, clock: Clock, rows_per_second: float, seconds: float, pool: list, per_request: int = 4
) -> int:  # type: ignore[type-arg]
    """Requests of ``per_request`` rows at ``rows_per_second`` for ``seconds`` on the fake clock; rows sent."""
    step = per_request / rows_per_second
    n = int(seconds / step)
    for i in range(n):
        inputs, outputs = pool[i % len(pool)]
        mon.observe("m", "1", True, inputs, outputs, per_request)
        clock.now += step
    return n * per_request


def test_geometric_skips_sample_each_request_with_probability_p() -> None:
    rng = random.Random(7)
    assert all(geometric_skip(rng, 1.0) == 1 for _ in range(100))
    for p in (0.5, 0.1, 0.01):
        skips = [geometric_skip(rng, p) for _ in range(40_000)]
        mean = sum(skips) / len(skips)
        sd = math.sqrt((1 - p) / p**2 / len(skips))
        assert abs(mean - 1 / p) < 4 * sd, (p, mean)  # a geometric distribution's mean, 1/p
        ones = skips.count(1) / len(skips)
        assert abs(ones - p) < 4 * math.sqrt(p * (1 - p) / len(skips)), (p, ones)  # P(next) = p
        # memoryless: P(skip > a + b | skip > a) = P(skip > b), what makes the counter a Bernoulli sample
        a, b = int(1 / p), int(1 / p)
        beyond_a = [s for s in skips if s > a]
        cond = sum(s > a + b for s in beyond_a) / len(beyond_a)
        assert abs(cond - (1 - p) ** b) < 0.03, (p, cond)


def test_the_profiled_rows_per_second_are_capped_and_every_row_is_counted(tmp_path: Path) -> None:
    clock, registry = Clock(), CollectorRegistry()
    mon = _monitor(tmp_path, clock, rate=100, registry=registry)
    pool = _pool()
    sent = _run(mon, clock, 4000, 1.5, pool)  # above twice the cap from the start: the first window
    first = mon.tracks[("m", "1")].last  # (every row profiled) closes once it is 1 s old
    assert first is not None and first["sample_fraction"] == 1.0 and first["samples"] == first["rows_seen"]
    # checked every 64 profiled requests: 1,000 requests/s here
    assert 1.0 <= first["end"] - first["start"] <= 1.0 + 64 / 1000 + 0.001
    track = mon.tracks[("m", "1")]
    assert track.fraction == pytest.approx(100 / 4000, rel=0.02)  # the next window follows the rate seen
    sent += _run(mon, clock, 4000, 3 * 60.5, pool)
    mon.tick()
    windows = [h for h in mon.view("m", "1")["history"]][1:]
    assert len(windows) == 3
    for h in windows:
        assert h["end"] - h["start"] == pytest.approx(60, abs=0.1)
        assert h["rows_seen"] == pytest.approx(4000 * 60, rel=0.01)
        budget = 100 * 60
        assert abs(h["samples"] - budget) < 5 * math.sqrt(budget)  # Bernoulli: the cap's rows, give or take
    view = mon.view("m", "1")
    assert view["sampling"]["rows_seen"] == sent  # every row answered is counted, profiled or not
    profiled = view["sampling"]["rows_profiled"]
    assert profiled == sum(h["samples"] for h in view["history"]) + view["open_window"]["samples"]
    assert view["open_window"]["rows_seen"] == sent - sum(h["rows_seen"] for h in view["history"])
    get = registry.get_sample_value
    labels = {"model": "m", "version": "1"}
    assert get("continuum_drift_rows_seen_total", labels) == sent
    assert get("continuum_drift_samples_total", labels) == profiled
    assert get("continuum_drift_sample_fraction", labels) == pytest.approx(0.025, rel=0.02)
    assert profiled - first["samples"] < 0.03 * (sent - first["rows_seen"])  # 100 of 4,000 rows/s: 2.5 %


def test_at_or_below_the_cap_every_row_is_profiled(tmp_path: Path) -> None:
    clock = Clock()
    mon = _monitor(tmp_path, clock, rate=100)
    sent = _run(mon, clock, 90, 2 * 60.5, _pool())
    mon.tick()
    view = mon.view("m", "1")
    assert view["sampling"]["fraction"] == 1.0
    assert view["sampling"]["rows_profiled"] == view["sampling"]["rows_seen"] == sent
    assert all(h["samples"] == h["rows_seen"] for h in view["history"])


def test_a_rise_in_traffic_closes_the_window_early_and_the_next_one_follows(tmp_path: Path) -> None:
    clock = Clock()
    mon = _monitor(tmp_path, clock, rate=100)
    pool = _pool()
    _run(mon, clock, 1000, 62, pool)  # the first window: every row until 1 s, then p = 0.1
    track = mon.tracks[("m", "1")]
    assert track.fraction == pytest.approx(0.1, rel=0.02) and track.windows == 2
    opened = track.window.start
    _run(mon, clock, 10_000, 20, pool)  # ten times the traffic: twice the cap's rows within seconds
    assert track.windows >= 3
    closed = track.history[2]
    assert closed["start"] == opened and closed["end"] - opened < 5
    # closed once over twice the cap for its age (or over min_samples, if more), checked every 64
    # profiled requests of 4 rows
    assert closed["samples"] <= max(500, 2 * 100 * (closed["end"] - closed["start"])) + 64 * 4
    assert track.fraction == pytest.approx(0.01, rel=0.2)  # the next window is sampled for 10,000 rows/s


def test_the_sample_is_uniform_over_a_periodic_stream(tmp_path: Path) -> None:
    """Round-robin clients: the value of request i is i mod 32, and at 32 x the cap exactly one request
    in 32 is profiled on average. Every-32nd-request sampling would see one value only; the Bernoulli
    sample sees each value's share, and (over seeds) without bias."""
    shares = []
    for seed in range(6):
        clock = Clock()
        mon = _monitor(tmp_path, clock, rate=100, seed=seed)
        pool = [({"x": np.full((1, 4), v, np.float32)}, {"c": np.array([[v]], np.int64)}) for v in range(32)]
        _run(mon, clock, 3200, 1.2 + 60.5, pool, per_request=1)
        mon.tick()
        track = mon.tracks[("m", "1")]
        last = track.history[-1]
        assert (
            last["rows_seen"] == pytest.approx(3200 * 60, rel=0.01)
            and last["samples"] < 0.05 * last["rows_seen"]
        )
        counts = track.upload.classes["c"]
        track.upload.flush()
        assert len(counts) == 32  # every client's value is in the sample
        shares.append([counts.get(str(v), 0) / track.upload.rows for v in range(32)])
        cdf = np.asarray(track.upload.sketches["x[0]"].get_cdf([v + 0.5 for v in range(31)]))[:-1]
        assert np.max(np.abs(cdf - (np.arange(31) + 1) / 32)) < 0.05
    mean = np.mean(shares, axis=0)
    assert np.max(np.abs(mean - 1 / 32)) < 0.006  # the sample's shares, averaged over seeds: 1/32 each


def test_the_minimum_sample_counts_profiled_rows_not_rows_seen(tmp_path: Path) -> None:
    clock = Clock()
    mon = _monitor(tmp_path, clock, rate=100, min_samples=2000, upload=600)
    pool = _pool()
    _run(mon, clock, 10_000, 62, pool)  # p = 0.01 from the first window's 10,000 rows/s
    track = mon.tracks[("m", "1")]
    assert track.fraction == pytest.approx(0.01, rel=0.05)
    before = track.windows
    shifted = _pool(shift=3.0)
    _run(mon, clock, 1000, 120, shifted)  # traffic falls: 120,000 rows seen, about 1,200 profiled
    w = track.window
    assert w.rows_seen >= 120_000 and w.rows < 2000 and track.windows == before  # stretched, not scored
    assert not mon.view("m", "1")["live"]["drifting"]  # too few profiled rows: no verdict, however shifted
    assert mon.view("m", "1")["live"]["status"] == "insufficient"
    clock.now += 600  # the upload period ends it anyway: insufficient, never drifting
    mon.tick()
    last = track.last
    assert last is not None and last["status"] == "insufficient" and not last["drifting"]
    assert last["rows_seen"] >= 120_000 and last["samples"] < 2000
    report = compare(
        Profile("m", "1", rows=1999, rows_seen=10**6), Profile("m", "1"), Thresholds(min_samples=2000)
    )
    assert report["status"] == "insufficient" and report["sample_fraction"] == pytest.approx(1999e-6)


def test_summaries_carry_rows_seen_and_the_fleet_says_how_it_weighs_sites(tmp_path: Path) -> None:
    """Two sites, one at ten times the other's traffic, both above the cap: their summaries hold about
    the same profiled rows; the fleet merge weighs them by those, says so, and gives each one's rows seen."""
    cloud = StateDoc()
    for rps in (1000, 10_000):
        clock = Clock()
        mon = _monitor(tmp_path, clock, rate=100, upload=120)
        state = StateDoc()
        mon.sink = StateSink(SimpleNamespace(state=state, opened=True))
        _run(mon, clock, rps, 2 * 60.5 + 2, _pool(per_request=20), per_request=20)
        mon.tick()
        cloud.apply_remote(state.diff(cloud.state_vector()))
    entries = StateSink(SimpleNamespace(state=cloud, opened=True)).summaries("m")
    assert len(entries) == 2
    decoded = {replica: Profile.from_bytes(blob) for replica, _, _, blob in entries}
    merged, info = fleet_profiles(entries)
    sites = info["1"]["sites"]
    assert info["1"]["weighted_by"] == "profiled rows" and set(sites) == set(decoded)
    for replica, p in decoded.items():
        assert sites[replica] == {"rows": p.rows, "rows_seen": p.rows_seen}
    small, large = sorted(decoded.values(), key=lambda p: p.rows_seen)
    assert large.rows_seen > 7 * small.rows_seen  # ten times the traffic (the first window's p is 1)
    assert large.rows < 2 * small.rows  # not ten times the weight in the sketches
    assert merged["1"].rows == small.rows + large.rows
    assert merged["1"].rows_seen == small.rows_seen + large.rows_seen
    assert merged["1"].sketches["x[0]"].n == merged["1"].rows


def test_rows_seen_round_trip_and_default_to_rows_in_older_summaries() -> None:
    p = Profile("m", "1")
    x = RNG.normal(size=(100, 4)).astype(np.float32)
    p.observe({"x": x}, {"y": x @ W}, True)
    p.rows_seen += 900  # 900 rows answered and not profiled
    back = Profile.from_bytes(p.to_bytes())
    assert back.rows == 100 and back.rows_seen == 1000 and back.sample_fraction == pytest.approx(0.1)
    doc = p.to_json()
    del doc["rows_seen"]  # a file written before rows were sampled: every row was profiled
    assert Profile.from_json(doc).rows_seen == 100


def test_the_setting_reaches_the_monitor() -> None:
    from continuum_worker.dataplane import _drift_monitor
    from continuum_worker.metrics import WorkerMetrics
    from continuum_worker.settings import WorkerSettings

    settings = WorkerSettings(model_name="m", model_uri="/m.onnx", drift_sample_rate=123.0)
    mon = _drift_monitor(settings, WorkerMetrics())
    assert mon.config.sample_rate == 123.0 and mon.config.row_budget == 123.0
    off = _drift_monitor(
        WorkerSettings(model_name="m", model_uri="/m.onnx", drift_sample_rate=0), WorkerMetrics()
    )
    assert off.config.row_budget == 0.0 and off.config.fraction_for(1e9) == 1.0
    low = DriftConfig(window_seconds=60, sample_rate=5, thresholds=Thresholds(min_samples=1200))
    assert low.row_budget == 20.0  # a cap below min_samples per window would only stretch every window
