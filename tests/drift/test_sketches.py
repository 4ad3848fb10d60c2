"""Sketch KS against the exact two-sample statistic, PSI, and merging sites' sketches."""

from __future__ import annotations

import numpy as np
import pytest
from continuum_worker.drift import sketch as sk
from scipy import stats


def _sketch(values: np.ndarray, k: int = 200):  # type: ignore[no-untyped-def]
    s = sk.new(k)
    s.update(values.astype(np.float32))
    return s


@pytest.mark.parametrize(
    "shift,scale,n", [(0.0, 1.0, 1000), (0.2, 1.0, 3000), (0.0, 1.5, 5000), (1.0, 1.0, 20000)]
)
def test_sketch_ks_is_the_exact_statistic_within_the_error_bound(shift: float, scale: float, n: int) -> None:
    rng = np.random.default_rng(int(shift * 10 + scale * 100 + n))
    ref = rng.normal(size=50_000).astype(np.float32)
    win = rng.normal(shift, scale, size=n).astype(np.float32)
    exact = stats.ks_2samp(ref, win).statistic
    got = sk.ks_distance(_sketch(ref), _sketch(win))
    assert abs(got - exact) <= 2 * sk.rank_error(200), (got, exact)


def test_ks_distance_extremes() -> None:
    a = _sketch(np.zeros(500))
    assert sk.ks_distance(a, a) == 0.0
    assert sk.ks_distance(a, _sketch(np.ones(500))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        sk.ks_distance(a, sk.new())


def test_psi() -> None:
    same = {"0": 500, "1": 500}
    assert sk.psi(same, same) == 0.0
    shifted = sk.psi({"0": 700, "1": 300}, same)
    assert shifted == pytest.approx(0.2 * np.log(0.7 / 0.5) + (-0.2) * np.log(0.3 / 0.5))
    assert sk.psi({"0": 500, "1": 400, "new": 100}, same) > 0.5  # a class never seen before
    with pytest.raises(ValueError, match="empty"):
        sk.psi({}, same)


def test_merged_sites_answer_like_the_union_within_the_bound() -> None:
    rng = np.random.default_rng(7)
    site_a = rng.normal(0, 1, 40_000).astype(np.float32)
    site_b = rng.normal(2, 0.5, 25_000).astype(np.float32)  # different sites see different data
    merged = sk.merged(
        [sk.from_bytes(_sketch(site_a).serialize()), sk.from_bytes(_sketch(site_b).serialize())]
    )
    union = np.sort(np.concatenate([site_a, site_b]))
    assert merged.n == union.size
    probes = np.quantile(union, np.linspace(0.01, 0.99, 99)).astype(np.float32)
    exact = np.searchsorted(union, probes, side="right") / union.size
    assert np.max(np.abs(np.asarray(merged.get_cdf(probes, inclusive=True))[:-1] - exact)) <= sk.rank_error(
        200
    )
    # and against a single sketch of the union: the KS distance between them is within both bounds
    assert sk.ks_distance(merged, _sketch(union)) <= 2 * sk.rank_error(200)


def test_ks_distance_is_the_supremum_over_every_retained_item_of_both_sketches() -> None:
    rng = np.random.default_rng(7)
    for shift in (0.0, 0.1, 0.3):
        a, b = sk.new(400), sk.new(1600)
        a.update(rng.normal(shift, 1, size=1000).astype(np.float32))
        b.update(rng.normal(size=20_000).astype(np.float32))
        values, cum = sk.steps(a)
        assert np.allclose(np.asarray(a.get_cdf(values, inclusive=True))[:-1], cum, atol=1e-6)
        grid = np.unique(np.concatenate([values, sk.steps(b)[0]]))
        fa = np.asarray(a.get_cdf(grid, inclusive=True))[:-1]
        fb = np.asarray(b.get_cdf(grid, inclusive=True))[:-1]
        assert sk.ks_distance(a, b) == pytest.approx(float(np.max(np.abs(fa - fb))), abs=1e-6)
