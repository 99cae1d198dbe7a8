"""Mann–Kendall and Theil–Sen (pure), checked against hand-computed values."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from dbprobe.analysis.trend import (
    blocked_mann_kendall,
    growth,
    mann_kendall,
    reduce_series,
    theil_sen,
)


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


def _ar1(n: int, phi: float, rng: random.Random) -> list[float]:
    x = [rng.gauss(0.0, 1.0) / math.sqrt(1.0 - phi * phi)]
    for _ in range(n - 1):
        x.append(phi * x[-1] + rng.gauss(0.0, 1.0))
    return x


def _false_trend_rate(series: list[list[float]], test: Any) -> float:
    return sum(1 for s in series if test(s)) / len(series)


def _blocked_finds(values: list[float]) -> bool:
    result = blocked_mann_kendall(values)
    return result.test is not None and result.test.p_increasing < 0.01


def _plain_finds(values: list[float]) -> bool:
    return mann_kendall(values).p_increasing < 0.01


@pytest.mark.parametrize(("n", "phi", "reps"), [(60, 0.8, 300), (60, 0.95, 300), (300, 0.8, 60)])
def test_flat_autocorrelated_series_rarely_look_like_a_trend(n: int, phi: float, reps: int) -> None:
    # Flat AR(1) series: plain Mann-Kendall at alpha 0.01 calls 20-40% of them a trend
    # (the review measured 19% at phi 0.8, 31% at 0.95); the blocked, Hamed-Rao
    # corrected test stays near the nominal 1% (3% allows for the simulation's noise).
    rng = random.Random(n * 100 + int(phi * 100))
    series = [_ar1(n, phi, rng) for _ in range(reps)]
    assert _false_trend_rate(series, _plain_finds) > 0.1
    assert _false_trend_rate(series, _blocked_finds) <= 0.03


def test_random_walk_memory_is_not_a_trend_but_a_leak_is() -> None:
    rng = random.Random(11)
    walks = []
    for _ in range(200):
        walk = [0.0]
        for _ in range(59):
            walk.append(walk[-1] + rng.gauss(0.0, 1.0))
        walks.append(walk)
    assert _false_trend_rate(walks, _plain_finds) > 0.1
    assert _false_trend_rate(walks, _blocked_finds) <= 0.03
    # a steady leak under noise (and a little autocorrelation) is still found
    leaks = [[0.3 * i + v for i, v in enumerate(_ar1(60, 0.5, rng))] for _ in range(50)]
    assert _false_trend_rate(leaks, _blocked_finds) >= 0.9


def test_a_leak_that_stalls_is_still_growth_and_a_random_walk_is_not() -> None:
    # A connection leak on a loaded machine: a staircase that stalls for a third of the
    # soak, then resumes. Detrended by one line its residuals are one long excursion
    # (lag-1 autocorrelation ~0.9), too few effective samples for the block test; but it
    # never steps down, which noise does half of the time.
    times = [0.05 * i for i in range(60)]
    stalled = [float(min(i, 20) + max(0, i - 40)) // 1 for i in range(60)]
    g = growth("checked_out", times, stalled, min_growth=2)
    assert g.growing, g.reason
    assert "almost monotonically" in g.reason
    rng = random.Random(21)
    found = 0
    for _ in range(200):
        walk = [0.0]
        for _ in range(59):
            walk.append(walk[-1] + rng.gauss(0.0, 1.0))
        found += growth("rss_bytes", times, walk, min_growth=0.0).growing
    assert found / 200 <= 0.03
