"""The comparison statistics on synthetic sample sets with known shifts (pure)."""

from __future__ import annotations

import math
import random

import pytest

from dbprobe.compare.checks import decide
from dbprobe.compare.stats import (
    bootstrap_percentile,
    bootstrap_ratio_ci,
    mann_whitney_u,
    mean_ratio_ci,
    percentile_sorted,
)


def lognormal(n: int, seed: int, scale: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [scale * rng.lognormvariate(0.0, 0.5) for _ in range(n)]


def test_mann_whitney_known_values() -> None:
    # fully separated samples: U = 0 for the smaller one, p tiny
    mw = mann_whitney_u([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
    assert mw.u == 0
    assert mw.p_value < 0.001
    assert mw.prob_new_greater == 1.0
    # hand-computed: ranks of a in [1,3,5 | 2,4,6] are 1,3,5 → R1 = 9, U1 = 9 - 6 = 3
    assert mann_whitney_u([1, 3, 5], [2, 4, 6]).u == 3
    # ties get average ranks
    assert mann_whitney_u([1, 1], [1, 1]).p_value == 1.0


def test_identical_sets_show_no_difference() -> None:
    a = lognormal(400, 1)
    mw = mann_whitney_u(a, list(a))
    assert mw.p_value == 1.0 and mw.z == 0.0
    ci = bootstrap_ratio_ci(a, list(a), 95)
    assert ci.ratio == 1.0
    assert ci.low < 1.0 < ci.high
    assert decide(ci.ratio, ci.low, ci.high, 0.10, higher_is_better=False) == "unchanged"


def test_a_real_30_percent_shift_is_a_regression() -> None:
    a, b = lognormal(400, 1), lognormal(400, 2, scale=1.3)
    ci = bootstrap_ratio_ci(a, b, 95)
    assert 1.1 < ci.ratio < 1.6
    assert ci.low > 1.0
    assert mann_whitney_u(a, b).p_value < 0.001
    assert decide(ci.ratio, ci.low, ci.high, 0.10, higher_is_better=False) == "regression"
    # the same shift on a rate (q/s) is an improvement
    assert decide(ci.ratio, ci.low, ci.high, 0.10, higher_is_better=True) == "improvement"
    # an improvement needs its interval to exclude 1
    assert decide(0.8, 0.7, 1.1, 0.1, higher_is_better=False) == "unchanged"


def test_noise_alone_is_never_a_regression() -> None:
    """Fresh draws from one distribution: the p95 point ratio can exceed 10% by chance,
    but the interval then straddles 1, so the verdict is never 'regression'."""
    verdicts = []
    for seed in range(20):
        a, b = lognormal(150, 100 + seed), lognormal(150, 200 + seed)
        ci = bootstrap_ratio_ci(a, b, 95, iterations=1000)
        verdicts.append(decide(ci.ratio, ci.low, ci.high, 0.10, higher_is_better=False))
    assert "regression" not in verdicts
    assert "inconclusive" in verdicts  # the naive two-numbers comparison would have failed


def test_small_shift_under_the_threshold_passes() -> None:
    a = lognormal(2000, 5)
    b = [x * 1.03 for x in lognormal(2000, 6)]
    ci = bootstrap_ratio_ci(a, b, 50)
    assert decide(ci.ratio, ci.low, ci.high, 0.10, higher_is_better=False) == "unchanged"


def test_order_statistic_bootstrap_matches_resampling() -> None:
    """Each replicate is drawn through Beta order statistics; its distribution must
    match plain resampling (the definition of the bootstrap)."""
    rng = random.Random(7)
    data = sorted(lognormal(200, 9))
    plain = sorted(
        percentile_sorted(sorted(rng.choice(data) for _ in data), 95) for _ in range(2000)
    )
    fast = sorted(bootstrap_percentile(data, 95, rng) for _ in range(2000))
    for q in (5, 25, 50, 75, 95):
        assert percentile_sorted(fast, q) == pytest.approx(percentile_sorted(plain, q), rel=0.05)


def test_mean_ratio_interval() -> None:
    a, b = lognormal(500, 11), lognormal(500, 12, scale=1.5)
    ci = mean_ratio_ci(a, b)
    assert ci.low < 1.5 * 1.1 and ci.high > 1.5 * 0.9
    assert ci.low > 1.2


def test_percentile_matches_distribution_definition() -> None:
    data = [float(x) for x in range(1, 101)]
    assert percentile_sorted(data, 99) == pytest.approx(99.01)
    assert math.isnan(percentile_sorted([], 50))


def test_decide_without_interval_uses_points() -> None:
    nan = math.nan
    assert decide(1.2, nan, nan, 0.1, higher_is_better=False) == "regression"
    assert decide(1.05, nan, nan, 0.1, higher_is_better=False) == "unchanged"
    assert decide(0.8, nan, nan, 0.1, higher_is_better=True) == "regression"
    assert decide(math.inf, nan, nan, 0.1, higher_is_better=False) == "regression"
