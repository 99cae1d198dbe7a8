"""Mann–Kendall and Theil–Sen (pure), checked against hand-computed values."""

from __future__ import annotations

import math
import random

import pytest

from dbprobe.analysis.trend import growth, mann_kendall, reduce_series, theil_sen


def test_mann_kendall_of_a_strictly_increasing_series() -> None:
    mk = mann_kendall([float(i) for i in range(1, 11)])
    assert mk.s == 45
    assert mk.var_s == pytest.approx(10 * 9 * 25 / 18)
    assert mk.z == pytest.approx(44 / math.sqrt(125))
    assert mk.tau == pytest.approx(1.0)
    assert mk.p_increasing == pytest.approx(0.5 * math.erfc(mk.z / math.sqrt(2)))
    assert mk.p_increasing < 1e-4
    assert mk.p_decreasing > 0.999


def test_mann_kendall_corrects_the_variance_for_ties() -> None:
    mk = mann_kendall([1.0, 1.0, 2.0, 2.0])
    assert mk.s == 4
    assert mk.var_s == pytest.approx((4 * 3 * 13 - 2 * (2 * 1 * 9)) / 18)


def test_mann_kendall_of_a_constant_series_finds_nothing() -> None:
    mk = mann_kendall([3.0] * 20)
    assert mk.s == 0
    assert mk.p_increasing == 1.0


def test_mann_kendall_agrees_with_scipy_kendalltau_without_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    values = [i * 0.05 + rng.gauss(0, 1) for i in range(60)]
    ours = mann_kendall(values)
    tau, _p = stats.kendalltau(list(range(60)), values)
    assert ours.tau == pytest.approx(tau)


def test_theil_sen_ignores_an_outlier() -> None:
    xs = [float(i) for i in range(11)]
    ys = [2.0 * x + 1.0 for x in xs]
    ys[5] = 1000.0
    slope, intercept = theil_sen(xs, ys)
    assert slope == pytest.approx(2.0)
    assert intercept == pytest.approx(1.0)


def test_reduce_series_keeps_the_shape() -> None:
    xs = [float(i) for i in range(4000)]
    rx, ry = reduce_series(xs, xs, max_points=100)
    assert len(rx) == len(ry) == 100
    assert rx == sorted(rx)
    assert theil_sen(rx, ry)[0] == pytest.approx(1.0)


def test_growth_needs_enough_points() -> None:
    g = growth("open_fds", [0.0, 1.0, 2.0], [1.0, 2.0, 3.0], min_growth=1)
    assert not g.growing
    assert "too few samples" in g.reason


def test_growth_drops_the_warm_up_and_respects_the_minimum() -> None:
    times = [float(i) for i in range(50)]
    # fills during the first tenth, then flat with noise: no growth after warm-up
    rng = random.Random(3)
    filling = [min(i, 5) * 10.0 + rng.choice((0.0, 1.0)) for i in range(50)]
    assert not growth("checked_out", times, filling, min_growth=2).growing
    steady = [i * 0.5 for i in range(50)]
    g = growth("checked_out", times, steady, min_growth=2)
    assert g.growing
    assert g.slope_per_s == pytest.approx(0.5)
    tiny = [i * 0.001 for i in range(50)]
    small = growth("checked_out", times, tiny, min_growth=2)
    assert not small.growing
    assert "too small" in small.reason
