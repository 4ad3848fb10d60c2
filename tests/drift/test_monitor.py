"""The monitor: windows on a fake clock, metrics, summaries in the CRDT state, a fleet merge upstream."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from continuum_worker.drift import DriftConfig, DriftMonitor, Profile, Thresholds
from continuum_worker.drift import sketch as sk
from continuum_worker.drift.monitor import fixed_reference, repository_reference
from continuum_worker.drift.upstream import StateSink, fleet_profiles, read_summaries
from continuum_worker.state.doc import StateDoc
from prometheus_client import CollectorRegistry
from pycrdt import Map

from tests.drift.support import Clock, write_reference

RNG = np.random.default_rng(11)
W = RNG.normal(size=(8, 3)).astype(np.float32)


def _reference(tmp_path: Path) -> Path:
    return write_reference(tmp_path, RNG, W)


def _monitor(
    tmp_path: Path, clock: Clock, registry: CollectorRegistry | None = None, **kw: float
) -> DriftMonitor:
    cfg = DriftConfig(
        window_seconds=60, upload_seconds=kw.get("upload", 180), thresholds=Thresholds(0.1, 0.2, 500)
    )
    return DriftMonitor(cfg, fixed_reference(_reference(tmp_path)), registry, clock=clock)


def _feed(mon: DriftMonitor, rows: int, shift: float = 0.0, per_request: int = 4) -> None:
    for _ in range(rows // per_request):
        x = RNG.normal(shift, 1.0, size=(per_request, 8)).astype(np.float32)
        mon.observe("m", "1", True, {"x": x}, {"y": x @ W})


def test_windows_close_score_and_export_metrics(tmp_path: Path) -> None:
    clock, registry = Clock(), CollectorRegistry()
    mon = _monitor(tmp_path, clock, registry)
    _feed(mon, 1000)
    clock.now += 61
    mon.tick()
    view = mon.view("m", "1")
    assert view["last"]["status"] == "ok" and view["last"]["samples"] == 1000 and not view["drifting"]
    _feed(mon, 1000, shift=0.8)
    assert mon.view("m", "1")["live"]["drifting"]  # the open window is scored live
    clock.now += 61
    mon.tick()
    view = mon.view("m", "1")
    assert view["drifting"] and view["last"]["status"] == "drifting" and view["windows_closed"] == 2
    get = registry.get_sample_value
    assert get("continuum_drift_drifting", {"model": "m", "version": "1"}) == 1
    assert get("continuum_drift_score", {"model": "m", "version": "1"}) == view["score"]
    assert get("continuum_drift_samples_total", {"model": "m", "version": "1"}) == 2000
    assert get("continuum_drift_windows_total", {"model": "m", "version": "1", "status": "drifting"}) == 1
    assert get("continuum_drift_input_bytes_total", {"model": "m", "version": "1"}) == 2000 * 8 * 4


def test_a_quiet_window_stretches_until_it_has_the_minimum_sample(tmp_path: Path) -> None:
    clock = Clock()
    mon = _monitor(tmp_path, clock)
    _feed(mon, 200, shift=2.0)
    clock.now += 61
    mon.tick()
    assert mon.view("m", "1")["last"] is None  # 200 < 500 rows: nothing said yet
    _feed(mon, 400, shift=2.0)  # the overdue window closes as soon as it has 500 rows
    last = mon.view("m", "1")["last"]
    assert last["samples"] == 500 and last["drifting"]
    assert mon.view("m", "1")["open_window"]["samples"] == 100
    clock.now += 200  # past the upload period: closed anyway, and says "insufficient"
    mon.tick()
    last = mon.view("m", "1")["last"]
    assert last["status"] == "insufficient" and not last["drifting"]


def test_no_reference_and_a_bad_reference_are_reported(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "drift_reference.json").write_text("{broken")
    clock = Clock()
    mon = DriftMonitor(
        DriftConfig(thresholds=Thresholds(min_samples=10)), repository_reference(tmp_path), clock=clock
    )
    _feed(mon, 40)
    view = mon.view("m", "1")
    assert view["reference"] is None and "is not JSON" in view["reference_error"]
    clock.now += 61
    mon.tick()
    assert mon.view("m", "1")["last"]["status"] == "no-reference"
    (tmp_path / "m" / "1" / "drift_reference.json").write_text(_reference(tmp_path).read_text())
    _feed(mon, 2000)
    clock.now += 61
    mon.tick()  # picked up at the next window: the version's own file wins over the model's
    view = mon.view("m", "1")
    assert view["reference"]["path"].endswith("m/1/drift_reference.json") and view["last"]["status"] == "ok"


def test_only_summaries_go_upstream_and_the_cloud_merges_sites(tmp_path: Path) -> None:
    """Two sites record their upload periods in their CRDT state; the cloud replica receives both by
    the state's sync and merges them: the fleet profile answers like a sketch of the union."""
    cloud = StateDoc()
    sites = []
    raw: list[np.ndarray] = []
    for shift in (0.0, 1.5):
        clock = Clock()
        state = StateDoc()
        mon = _monitor(tmp_path, clock, upload=120)
        mon.sink = StateSink(SimpleNamespace(state=state, opened=True))
        for _ in range(3):
            x = RNG.normal(shift, 1.0, size=(3000, 8)).astype(np.float32)
            raw.append(x)
            for part in np.array_split(x, 100):
                mon.observe("m", "1", True, {"x": part}, {"y": part @ W})
            clock.now += 61
            mon.tick()
        sites.append((mon, state))
        cloud.apply_remote(state.diff(cloud.state_vector()))  # what the sync sends upstream
    bytes_up = sum(m.tracks[("m", "1")].summary_bytes for m, _ in sites)
    raw_bytes = sum(x.nbytes for x in raw)
    assert bytes_up < 0.1 * raw_bytes  # 18k rows only: the ratio falls with traffic (bench/drift.py)
    cloud_mon = _monitor(tmp_path, Clock())
    cloud_mon.sink = StateSink(SimpleNamespace(state=cloud, opened=True))
    fleet = cloud_mon.view("m", "1")["fleet"]
    assert (
        len(fleet["replicas"]) == 2 and fleet["rows"] == 12_000
    )  # two periods of 2 windows x 3000 rows each
    site_map = sites[0][1].doc.get("drift", type=Map)
    assert [Profile.from_bytes(site_map[k]).rows for k in site_map] == [6000]  # one period recorded
    union = np.concatenate([raw[0], raw[1], raw[3], raw[4]])[:, 4]  # the uploaded periods' rows
    exact = sk.new()
    exact.update(union)
    fleet_profile = cloud_mon.fleet("m", "1", None)
    assert fleet_profile is not None and fleet_profile["rows"] == 12_000
    profiles, _ = fleet_profiles(read_summaries(cloud.doc.get("drift", type=Map), "m"))
    assert sk.ks_distance(profiles["1"].sketches["x[4]"], exact) <= 2 * sk.rank_error(200)
    assert fleet["report"]["drifting"]  # the second site's shifted data shows in the fleet view


def test_each_replica_keeps_its_newest_entries_and_old_replicas_age_out() -> None:
    state = StateDoc()
    old_process = StateSink(SimpleNamespace(state=StateDoc(), opened=True), retention=3, horizon_seconds=1000)
    old_process.handle.state.doc.get("drift", type=Map)["m\x1f1\x1f0000000500000\x1fdead"] = b"x"
    state.apply_remote(old_process.handle.state.diff())  # a predecessor's entry, synced in
    sink = StateSink(SimpleNamespace(state=state, opened=True), retention=3, horizon_seconds=1000)
    blob = Profile("m", "1").to_bytes()
    for start in (1000.0, 1100.0, 1200.0, 1300.0):
        sink.record_summary("m", "1", start, blob)
    starts = [s for _, _, s, _ in sink.summaries("m")]
    assert starts == [500.0, 1100.0, 1200.0, 1300.0]  # own: newest 3; the predecessor's is within the horizon
    sink.record_summary("m", "1", 1600.0, blob)  # 1600 - 1000 > 500: the predecessor's entry ages out
    assert [s for _, _, s, _ in sink.summaries("m")] == [1200.0, 1300.0, 1600.0]


def test_every_version_is_in_the_view_with_its_score_and_windows_are_scored_at_a_larger_k(
    tmp_path: Path,
) -> None:
    clock = Clock()
    mon = _monitor(tmp_path, clock, upload=60)
    mon.sink = StateSink(SimpleNamespace(state=StateDoc(), opened=True))
    _feed(mon, 1000)
    for _ in range(250):  # a candidate version whose inputs moved
        x = RNG.normal(0.8, 1.0, size=(4, 8)).astype(np.float32)
        mon.observe("m", "2", True, {"x": x}, {"y": x @ W})
    assert mon.tracks[("m", "1")].window.k == 400 and mon.tracks[("m", "1")].upload.k == 200
    clock.now += 61
    mon.tick()
    versions = mon.view("m", "1")["versions"]
    assert set(versions) == {"1", "2"}
    assert versions["1"]["status"] == "ok" and not versions["1"]["drifting"]
    assert versions["2"]["drifting"] and versions["2"]["score"] > versions["1"]["score"] + 0.1
    assert versions["2"]["samples"] == 1000 and versions["2"]["reference"]
    (entry,) = [e for e in mon.sink.summaries("m") if e[1] == "1"]
    assert Profile.from_bytes(entry[3]).sketches["x[0]"].k == 200  # what goes upstream stays at k=200


def test_each_version_reports_the_drift_of_its_outputs_apart_from_its_inputs(tmp_path: Path) -> None:
    """A candidate answering the same inputs differently (a rollout's shadow or canary): its inputs are
    within the reference, its outputs are not; the stable version's outputs are. What a rollout's drift
    gate reads (versions[v].output_drifting, output_score, output_psi)."""
    clock = Clock()
    mon = _monitor(tmp_path, clock)
    other = W * 2.0  # the same classes mostly, scores twice as large
    for _ in range(250):
        x = RNG.normal(size=(4, 8)).astype(np.float32)
        mon.observe("m", "1", True, {"x": x}, {"y": x @ W})
        mon.observe("m", "2", True, {"x": x}, {"y": x @ other})  # the same inputs, other answers
    clock.now += 61
    mon.tick()
    versions = mon.view("m", "1")["versions"]
    stable, candidate = versions["1"], versions["2"]
    assert stable["status"] == "ok" and not stable["output_drifting"]
    assert stable["output_score"] is not None and stable["output_score"] < 0.1
    assert stable["output_psi"] is not None and stable["output_psi"] < 0.2
    assert candidate["drifting"] and candidate["output_drifting"]
    assert candidate["output_score"] > 0.1 or candidate["output_psi"] > 0.2
    last = mon.tracks[("m", "2")].last
    assert last is not None and "y.top" in last["ks"]
    inputs = [d for n, d in last["ks"].items() if n.startswith("x[")]
    assert inputs and max(inputs) < 0.1  # the inputs did not move: the drift is the outputs'
    # too few rows: no output verdict either
    mon2 = _monitor(tmp_path, clock)
    for _ in range(10):
        x = RNG.normal(size=(4, 8)).astype(np.float32)
        mon2.observe("m", "2", True, {"x": x}, {"y": x @ other})
    assert not mon2.view("m", "2")["versions"]["2"]["output_drifting"]
