"""Trend tests for time series: is this series growing, or just noisy?

Mann–Kendall (a rank test: no assumption on the distribution, robust to outliers, with
the variance corrected for ties) decides whether there is a monotonic trend; Theil–Sen
(the median of pairwise slopes) says how steep it is. Both are O(n²) on pairs, so long
series are first reduced to at most :data:`MAX_POINTS` bucket medians. Pure functions.
"""

from __future__ import annotations

import dataclasses
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
        }


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
    tested span that matters (bytes, descriptors, connections).
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
    mk = mann_kendall(ys)
    slope, intercept = theil_sen(xs, ys)
    span = xs[-1] - xs[0]
    total = slope * span
    start_value = intercept + slope * xs[0]
    end_value = intercept + slope * xs[-1]
    if mk.p_increasing >= alpha:
        reason = f"no significant upward trend (Mann-Kendall p={mk.p_increasing:.3g})"
        growing = False
    elif total < min_growth:
        reason = f"trend too small to matter ({total:.4g} < {min_growth:.4g})"
        growing = False
    else:
        reason = (
            f"grows {slope:.4g}/s over {span:.1f}s (Mann-Kendall p={mk.p_increasing:.2g},"
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
    )
