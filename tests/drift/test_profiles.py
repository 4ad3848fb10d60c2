"""Profiles: features of flat, wide and image inputs, outputs, encodings, bounded memory, scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from continuum_worker.drift import Profile, Thresholds, compare
from continuum_worker.drift.profile import load_reference

RNG = np.random.default_rng(3)
W = RNG.normal(size=(8, 4)).astype(np.float32)


def _profile(x: np.ndarray, requests: int = 1) -> Profile:
    p = Profile("m", "1")
    for part in np.array_split(x, requests):
        p.observe({"x": part}, {"y": part @ W}, True)
    return p.flush()


def test_features_of_flat_inputs_and_outputs() -> None:
    p = _profile(RNG.normal(size=(600, 8)).astype(np.float32), requests=300)
    assert p.rows == 600
    assert sorted(p.sketches) == sorted([f"x[{j}]" for j in range(8)] + ["y.top"])
    assert all(s.n == 600 for s in p.sketches.values())
    assert sum(p.classes["y"].values()) == 600
    assert p.raw_bytes == 600 * 8 * 4


def test_unbatched_models_profile_one_row_per_request() -> None:
    p = Profile("m", "1")
    for _ in range(5):
        p.observe({"x": RNG.normal(size=8).astype(np.float32)}, {"score": np.array([0.5], np.float32)}, False)
    p.flush()
    assert p.rows == 5 and p.sketches["x[7]"].n == 5 and p.sketches["score"].n == 5


def test_images_give_per_channel_statistics_and_wide_rows_block_means() -> None:
    p = Profile("m", "1", max_features=16)
    img = RNG.normal(size=(4, 3, 8, 8)).astype(np.float32)
    img[:, 1] += 5.0
    p.observe(
        {"img": img, "nhwc": np.moveaxis(img, 1, -1), "wide": RNG.normal(size=(4, 100)).astype(np.float32)},
        {},
        True,
    )
    p.flush()
    assert {f"img[c{c}].{s}" for c in range(3) for s in ("mean", "std")} <= set(p.sketches)
    assert {f"nhwc[c{c}].mean" for c in range(3)} <= set(p.sketches)
    assert p.sketches["img[c1].mean"].get_min_value() > 4.0
    assert p.sketches["nhwc[c1].mean"].get_quantile(0.5) == pytest.approx(
        p.sketches["img[c1].mean"].get_quantile(0.5)
    )
    assert {f"wide[block {j}]" for j in range(16)} == {n for n in p.sketches if n.startswith("wide")}


def test_integer_labels_are_classes_and_bytes_are_skipped() -> None:
    p = Profile("m", "1")
    p.observe(
        {"s": np.array([b"a", b"b"], dtype=np.object_)}, {"label": np.array([[1], [1], [2]], np.int64)}, True
    )
    p.flush()
    assert p.classes == {"label": {"1": 2, "2": 1}} and not p.sketches


def test_binary_and_json_forms_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = _profile(RNG.normal(size=(2000, 8)).astype(np.float32), requests=10)
    back = Profile.from_bytes(p.to_bytes())
    assert back.rows == p.rows and back.classes == p.classes and sorted(back.sketches) == sorted(p.sketches)
    assert back.sketches["x[3]"].get_quantile(0.5) == p.sketches["x[3]"].get_quantile(0.5)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(p.to_json()))
    ref = load_reference(path)
    assert ref.rows == 2000 and ref.sketches["x[0]"].n == 2000
    with pytest.raises(ValueError, match="not a drift profile"):
        Profile.from_bytes(b"\x05\x00\x00\x00{}")
    path.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="'format' must be"):
        load_reference(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_reference(tmp_path / "missing.json")


def test_memory_per_profile_is_bounded() -> None:
    p = Profile("m", "1")
    sizes = []
    for _ in range(4):
        for _ in range(50):
            x = RNG.normal(size=(1000, 8)).astype(np.float32)
            p.observe({"x": x}, {"y": x @ W}, True)
        sizes.append(p.flush().memory_bytes())
    assert p.rows == 200_000
    assert sizes[-1] < 9 * 3200  # 9 sketches, each ~2.4 KB at k=200, not 200k rows x 36 bytes
    assert sizes[-1] - sizes[0] < 9 * 400  # grows with log(n), not n


def test_scores() -> None:
    base = RNG.normal(size=(20_000, 8)).astype(np.float32)
    ref = _profile(base)
    t = Thresholds(threshold=0.1, psi_threshold=0.2, min_samples=1000)
    same = compare(_profile(RNG.normal(size=(2000, 8)).astype(np.float32)), ref, t)
    assert same["status"] == "ok" and not same["drifting"] and same["score"] < 0.1
    shifted = RNG.normal(size=(2000, 8)).astype(np.float32)
    shifted[:, 2] += 1.0
    report = compare(_profile(shifted), ref, t)
    assert (
        report["drifting"]
        and "x[2]" in report["drifting_features"]
        and report["top_features"][0]["feature"] in ("x[2]", "y.top")
    )
    constant = RNG.normal(size=(2000, 8)).astype(np.float32)
    constant[:, 5] = 0.25
    assert "x[5]" in compare(_profile(constant), ref, t)["drifting_features"]
    few = compare(_profile(shifted[:999]), ref, t)
    assert few["status"] == "insufficient" and not few["drifting"] and few["score"] > 0.1
    prior = ref.empty_copy()
    prior.classes = {"y": {"0": 1500, "1": 500}}
    prior.rows = 2000
    ref2 = ref.empty_copy()
    ref2.classes, ref2.rows = {"y": {"0": 1000, "1": 1000}}, 2000
    report = compare(prior, ref2, t)
    assert report["drifting_outputs"] == ["y"] and report["drifting"] and report["psi"]["y"] > 0.2


def test_sorted_block_updates_keep_the_bound_and_views_of_large_buffers_flush_early() -> None:
    from continuum_worker.drift import profile as prof
    from continuum_worker.drift import sketch as sk

    x = RNG.normal(size=(50_000, 8)).astype(np.float32)
    p = _profile(x, requests=5000)  # 10-row requests, 512-row sorted blocks
    grid = np.quantile(x[:, 2], np.linspace(0.01, 0.99, 99))
    exact = np.searchsorted(np.sort(x[:, 2]), grid, side="right") / len(x)
    assert np.max(np.abs(np.asarray(p.sketches["x[2]"].get_cdf(grid))[:-1] - exact)) <= sk.rank_error(200)
    big = np.zeros((prof.BUFFER_BYTES // 4 // 8 + 1, 8), np.float32)  # a batch of > BUFFER_BYTES
    q = Profile("m", "1")
    q.observe({"x": big[:1]}, {}, True)  # one row, but it keeps the whole batch alive
    assert not q._requests and q.sketches["x[0]"].n == 1
    nan = RNG.normal(size=(600, 8)).astype(np.float32)
    nan[::3, 1] = np.nan
    nan[0, 2] = np.inf
    r = _profile(nan, requests=60)
    assert r.sketches["x[1]"].n == 400 and r.sketches["x[2]"].n == 599 and r.sketches["x[0]"].n == 600
