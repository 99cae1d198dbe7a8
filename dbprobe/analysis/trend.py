"""Trend tests for time series: is this series growing, or just noisy?

Mann–Kendall (a rank test: no assumption on the distribution, robust to outliers, with
the variance corrected for ties) decides whether there is a monotonic trend; Theil–Sen
(the median of pairwise slopes) says how steep it is. Both are O(n²) on pairs, so long
series are first reduced to at most :data:`MAX_POINTS` bucket medians. Pure functions.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

MAX_POINTS = 400


@dataclasses.dataclass(frozen=True)
class MannKendall:
    """Mann–Kendall statistic ``s``, its variance, the normal score ``z`` (with
    continuity correction), Kendall's ``tau`` and the one-sided p-values for an
    increasing and a decreasing trend."""

    n: int
    s: int
    var_s: float
    z: float
    tau: float
    p_increasing: float
    p_decreasing: float


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_kendall(values: Sequence[float]) -> MannKendall:
    """The Mann–Kendall trend test of ``values`` in time order."""
    n = len(values)
    s = 0
    for i in range(n - 1):
        vi = values[i]
        for j in range(i + 1, n):
            d = values[j] - vi
            if d > 0:
                s += 1
            elif d < 0:
                s -= 1
    ties: dict[float, int] = {}
    for v in values:
        ties[v] = ties.get(v, 0) + 1
    tie_term = sum(t * (t - 1) * (2 * t + 5) for t in ties.values() if t > 1)
    var_s = (n * (n - 1) * (2 * n + 5) - tie_term) / 18.0
    if var_s <= 0:
        z = 0.0
    elif s > 0:
        z = (s - 1) / math.sqrt(var_s)
    elif s < 0:
        z = (s + 1) / math.sqrt(var_s)
    else:
        z = 0.0
    pairs = n * (n - 1) / 2
    return MannKendall(
        n=n,
        s=s,
        var_s=var_s,
        z=z,
        tau=s / pairs if pairs else 0.0,
        p_increasing=_normal_sf(z) if var_s > 0 else 1.0,
        p_decreasing=_normal_sf(-z) if var_s > 0 else 1.0,
    )


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _autocorrelation(values: Sequence[float], max_lag: int) -> list[float]:
    """Sample autocorrelation at lags 1..max_lag (0.0 for a constant series)."""
    n = len(values)
    mean = sum(values) / n
    dev = [v - mean for v in values]
    denom = sum(d * d for d in dev)
    if denom <= 0:
        return [0.0] * max_lag
    return [sum(dev[i] * dev[i + k] for i in range(n - k)) / denom for k in range(1, max_lag + 1)]


ACF_Z = 1.959963984540054
"""Two-sided 5% normal quantile: lags whose rank autocorrelation exceeds
``ACF_Z / sqrt(n)`` count in the Hamed–Rao correction."""


def effective_sample_ratio(values: Sequence[float]) -> float:
    """Hamed & Rao (1998) variance inflation ``n / n*`` for the Mann–Kendall statistic
    of an autocorrelated series: the series is detrended with its Theil–Sen slope, ranked,
    and the significant lags of the ranks' autocorrelation are summed with weights
    ``(n−k)(n−k−1)(n−k−2)``. At least 1 (positive correlation only inflates)."""
    n = len(values)
    if n < 4:
        return 1.0
    xs = [float(i) for i in range(n)]
    slope, _ = theil_sen(xs, values)
    ranks = _ranks([v - slope * x for x, v in zip(xs, values, strict=True)])
    acf = _autocorrelation(ranks, n - 1)
    bound = ACF_Z / math.sqrt(n)
    total = sum(
        (n - k) * (n - k - 1) * (n - k - 2) * r
        for k, r in enumerate(acf, start=1)
        if abs(r) > bound
    )
    return max(1.0, 1.0 + 2.0 * total / (n * (n - 1) * (n - 2)))


def mann_kendall_corrected(values: Sequence[float]) -> MannKendall:
    """Mann–Kendall with the Hamed–Rao variance correction for serial correlation
    (:func:`effective_sample_ratio`): a flat but autocorrelated series (memory that
    drifts, a random walk) no longer passes for a trend. Same fields as
    :func:`mann_kendall`, ``var_s`` inflated."""
    plain = mann_kendall(values)
    ratio = effective_sample_ratio(values)
    if ratio <= 1.0 or plain.var_s <= 0:
        return plain
    var_s = plain.var_s * ratio
    s = plain.s
    z = 0.0 if s == 0 else (s - math.copysign(1, s)) / math.sqrt(var_s)
    return dataclasses.replace(
        plain,
        var_s=var_s,
        z=z,
        p_increasing=_normal_sf(z),
        p_decreasing=_normal_sf(-z),
    )


@dataclasses.dataclass(frozen=True)
class BlockedTrend:
    """Mann–Kendall on block medians, for a series whose neighbours are correlated.

    lag1: lag-1 autocorrelation of the Theil–Sen-detrended series (bias-corrected);
    effective_n: ``n (1 − lag1) / (1 + lag1)``, the number of independent samples it is
    worth; blocks: medians tested (``effective_n / 2``, at most ``n``); test: the
    Hamed–Rao-corrected Mann–Kendall of those medians (None when fewer than ``min_blocks``
    remain: the series is too autocorrelated to show a trend).
    """

    n: int
    lag1: float
    effective_n: float
    blocks: int
    test: MannKendall | None


MIN_BLOCKS = 6
"""Fewest block medians worth testing: with 6, a strictly rising series reaches
p < 0.01 (with 5 it cannot)."""
BLOCK_FACTOR = 2.0
"""Blocks per effective sample: one median per two effective samples keeps the false-trend
rate of flat AR(1) series near the nominal level (tests/test_trend.py simulates it)."""


def blocked_mann_kendall(values: Sequence[float], min_blocks: int = MIN_BLOCKS) -> BlockedTrend:
    """A trend test robust to serial correlation (memory that drifts, a random walk).

    Plain Mann–Kendall assumes independent samples: on a flat AR(1) series with
    φ = 0.8 it finds a trend at α = 0.01 about 20% of the time. Here the series is
    detrended (Theil–Sen), its lag-1 autocorrelation estimated (with the ``(1 + 3r)/n``
    small-sample bias correction), and the series reduced to medians of consecutive
    blocks, one per :data:`BLOCK_FACTOR` effective samples, which are tested with the
    Hamed–Rao correction. A steady trend leaves little autocorrelation once detrended,
    so it keeps most of its points.
    """
    n = len(values)
    if n < 4:
        return BlockedTrend(n, 0.0, float(n), n, mann_kendall(values) if n >= min_blocks else None)
    xs = [float(i) for i in range(n)]
    slope, _ = theil_sen(xs, values)
    residuals = [v - slope * x for x, v in zip(xs, values, strict=True)]
    scale = max(1.0, *(abs(v) for v in values))
    if max(residuals) - min(residuals) <= 1e-9 * scale:
        r = 0.0  # an exact line: no noise to be correlated
    else:
        r = _autocorrelation(residuals, 1)[0]
    if r > 0:
        r = min(0.99, r + (1.0 + 3.0 * r) / n)
        effective = n * (1.0 - r) / (1.0 + r)
        blocks = min(n, math.floor(effective / BLOCK_FACTOR))
    else:
        effective = float(n)
        blocks = n
    if blocks < min_blocks:
        return BlockedTrend(n, r, effective, blocks, None)
    if blocks == n:
        medians = list(values)
    else:
        medians = [
            _median(list(values[b * n // blocks : (b + 1) * n // blocks])) for b in range(blocks)
        ]
    return BlockedTrend(n, r, effective, blocks, mann_kendall_corrected(medians))


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Theil–Sen line through ``(xs, ys)``: (slope, intercept), both medians."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs))
        for j in range(i + 1, len(xs))
        if xs[j] != xs[i]
    ]
    if not slopes:
        return 0.0, _median(list(ys)) if ys else 0.0
    slope = _median(slopes)
    intercept = _median([y - slope * x for x, y in zip(xs, ys, strict=True)])
    return slope, intercept


def _median(values: list[float]) -> float:
    data = sorted(values)
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2.0


def reduce_series(
    xs: Sequence[float], ys: Sequence[float], max_points: int = MAX_POINTS
) -> tuple[list[float], list[float]]:
    """At most ``max_points`` (x, y) pairs: medians of equal consecutive buckets."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(max_points):
        lo = b * n // max_points
        hi = (b + 1) * n // max_points
        out_x.append(_median(list(xs[lo:hi])))
        out_y.append(_median(list(ys[lo:hi])))
    return out_x, out_y


@dataclasses.dataclass(frozen=True)
class Growth:
    """Verdict on one series: ``growing`` when Mann–Kendall finds an increasing trend at
    ``alpha`` and the Theil–Sen growth over the tested span reaches ``min_growth``.

    slope: units per second; growth: slope × span (units); tested: points after the
    warm-up was dropped; reason: why not, when not growing.
    """

    series: str
    growing: bool
    slope_per_s: float
    growth: float
    start_value: float
    end_value: float
    p_value: float
    tau: float
    tested: int
    span_s: float
    min_growth: float
    reason: str
    blocks: int = 0
    lag1: float = math.nan

    def to_metrics(self) -> dict[str, object]:
        return {
            "growing": self.growing,
            "slope_per_s": self.slope_per_s,
            "growth": self.growth,
            "start": self.start_value,
            "end": self.end_value,
            "p_value": self.p_value,
            "tau": self.tau,
            "tested": self.tested,
            "span_s": self.span_s,
            "min_growth": self.min_growth,
            "reason": self.reason,
            "blocks": self.blocks,
            "lag1": self.lag1,
        }


MONOTONE_MIN_POINTS = 20
MONOTONE_MAX_DOWN_SHARE = 0.05
"""A series of at least 20 points that steps down at most 5% of the time, and rises
significantly by plain Mann–Kendall, climbs almost monotonically: a leak whose rate
varies (stalls, bursts) leaves residuals too autocorrelated for the block test, but
noise, even a random walk, does not climb like that (half its steps go down)."""

MIN_POINTS = 8
"""Fewer points than this cannot show a significant trend; the verdict says so."""


def growth(
    series: str,
    times_s: Sequence[float],
    values: Sequence[float | None],
    *,
    min_growth: float,
    alpha: float = 0.01,
    warmup_fraction: float = 0.2,
) -> Growth:
    """Does ``values`` grow steadily over ``times_s``?

    The first ``warmup_fraction`` of the samples is dropped (caches and pools fill
    then), missing values are skipped. ``min_growth`` is the least total growth over the
    tested span that matters (bytes, descriptors, connections). The trend test is
    :func:`blocked_mann_kendall`, so a flat series that wanders (autocorrelated noise)
    is not taken for growth.
    """
    pairs = [(t, float(v)) for t, v in zip(times_s, values, strict=False) if v is not None]
    skip = math.ceil(len(pairs) * warmup_fraction)
    pairs = pairs[skip:]
    xs, ys = reduce_series([p[0] for p in pairs], [p[1] for p in pairs])
    nan = math.nan
    if len(xs) < MIN_POINTS:
        return Growth(
            series, False, nan, nan, nan, nan, nan, nan, len(xs), 0.0, min_growth,
            f"too few samples ({len(xs)} after warm-up; {MIN_POINTS} needed)",
        )  # fmt: skip
    blocked = blocked_mann_kendall(ys)
    mk = blocked.test or mann_kendall(ys)
    slope, intercept = theil_sen(xs, ys)
    span = xs[-1] - xs[0]
    total = slope * span
    start_value = intercept + slope * xs[0]
    end_value = intercept + slope * xs[-1]
    steps = len(ys) - 1
    down = sum(1 for a, b in itertools.pairwise(ys) if b < a)
    plain = mann_kendall(ys)
    monotone = (
        len(ys) >= MONOTONE_MIN_POINTS
        and down <= MONOTONE_MAX_DOWN_SHARE * steps
        and plain.p_increasing < alpha
    )
    if monotone and (blocked.test is None or mk.p_increasing >= alpha) and total >= min_growth:
        mk = plain
        reason = (
            f"grows {slope:.4g}/s over {span:.1f}s, almost monotonically ({down} of {steps} "
            f"steps down, tau={plain.tau:.2f})"
        )
        growing = True
    elif blocked.test is None:
        reason = (
            f"too autocorrelated to show a trend (lag-1 autocorrelation {blocked.lag1:.2f}: "
            f"{len(ys)} samples are worth about {blocked.effective_n:.1f} independent ones)"
        )
        growing = False
    elif mk.p_increasing >= alpha:
        reason = (
            f"no significant upward trend (Mann-Kendall on {blocked.blocks} block medians, "
            f"corrected for autocorrelation, p={mk.p_increasing:.3g})"
        )
        growing = False
    elif total < min_growth:
        reason = f"trend too small to matter ({total:.4g} < {min_growth:.4g})"
        growing = False
    else:
        reason = (
            f"grows {slope:.4g}/s over {span:.1f}s (Mann-Kendall on {blocked.blocks} block "
            f"medians, corrected for autocorrelation, p={mk.p_increasing:.2g},"
            f" tau={mk.tau:.2f})"
        )
        growing = True
    return Growth(
        series=series,
        growing=growing,
        slope_per_s=slope,
        growth=total,
        start_value=start_value,
        end_value=end_value,
        p_value=mk.p_increasing,
        tau=mk.tau,
        tested=len(xs),
        span_s=span,
        min_growth=min_growth,
        reason=reason,
        blocks=blocked.blocks,
        lag1=blocked.lag1,
    )
