"""Noise-aware statistics for comparing two runs, in pure Python (no numpy/scipy).

- :func:`mann_whitney_u`: two-sided Mann–Whitney U test (normal approximation with tie
  and continuity corrections) — "are these two sample sets from the same distribution?"
- :func:`bootstrap_ratio_ci`: bootstrap confidence interval of the ratio of a percentile
  of the new samples over the same percentile of the base samples.

The bootstrap draws each replicate's order statistics directly instead of resampling:
the k-th smallest of n draws from the empirical distribution is the empirical quantile
function at the k-th smallest of n uniforms, which is Beta(k, n + 1 - k) distributed,
and the next order statistic follows from it by a Beta(1, n - k) step. A replicate thus
costs O(1) whatever n is, and has exactly the distribution that resampling gives, so
thousands of replicates of a 100k-sample distribution take milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

MIN_SAMPLES = 10
"""Fewer samples than this on either side: no statistical verdict, only point values."""


def percentile_sorted(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of sorted values (as ``Distribution``)."""
    n = len(values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


@dataclasses.dataclass(frozen=True)
class MannWhitney:
    """U of the first sample, the z score, the two-sided p-value, and the probability that
    a draw from the second sample exceeds one from the first (ties count half)."""

    u: float
    z: float
    p_value: float
    prob_new_greater: float


def _ranks(values: Sequence[float]) -> tuple[list[float], float]:
    """Average ranks (1-based) of ``values`` and the tie term sum(t^3 - t)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    return ranks, ties


def mann_whitney_u(base: Sequence[float], new: Sequence[float]) -> MannWhitney:
    """Two-sided Mann–Whitney U test of ``base`` against ``new``.

    Normal approximation with tie correction and continuity correction; good from about
    ten samples a side (see :data:`MIN_SAMPLES`). Identical inputs give p = 1.
    """
    n1, n2 = len(base), len(new)
    if n1 == 0 or n2 == 0:
        return MannWhitney(math.nan, math.nan, math.nan, math.nan)
    ranks, ties = _ranks([*base, *new])
    r1 = sum(ranks[:n1])
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    prob_new_greater = 1 - u1 / (n1 * n2)
    if var <= 0:
        return MannWhitney(u1, 0.0, 1.0, prob_new_greater)
    diff = u1 - mu
    z = (diff - math.copysign(0.5, diff)) / math.sqrt(var) if diff else 0.0
    if abs(diff) <= 0.5:
        z = 0.0
    p = math.erfc(abs(z) / math.sqrt(2))
    return MannWhitney(u1, z, min(1.0, p), prob_new_greater)


NORMAL_BETA_MIN = 50
"""Both Beta parameters at least this: draw it from its normal approximation (same mean
and variance; the skew is negligible there) — a fifth of the cost of betavariate."""


def _beta(a: int, b: int, rng: random.Random) -> float:
    if min(a, b) < NORMAL_BETA_MIN:
        return rng.betavariate(a, b)
    total = a + b
    mean = a / total
    sd = math.sqrt(a * b / (total * total * (total + 1)))
    return min(1.0 - 1e-12, max(1e-12, rng.gauss(mean, sd)))


def _inverse_ecdf(values: Sequence[float], u: float) -> float:
    n = len(values)
    return values[min(n - 1, max(0, math.ceil(u * n) - 1))]


def bootstrap_percentile(sorted_values: Sequence[float], q: float, rng: random.Random) -> float:
    """One bootstrap replicate of the interpolated ``q``-th percentile of a resample of
    ``sorted_values`` (drawn through order statistics, see the module docstring)."""
    n = len(sorted_values)
    if n == 1:
        return sorted_values[0]
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    frac = pos - lo
    k = lo + 1  # 1-based rank of the lower order statistic
    u_k = _beta(k, n + 1 - k, rng)
    x_k = _inverse_ecdf(sorted_values, u_k)
    if frac == 0 or k >= n:
        return x_k
    # Beta(1, m) by inversion: 1 - (1 - V)^(1/m), no gamma draws needed
    u_next = u_k + (1 - u_k) * (1 - (1 - rng.random()) ** (1 / (n - k)))
    x_next = _inverse_ecdf(sorted_values, u_next)
    return x_k + (x_next - x_k) * frac


@dataclasses.dataclass(frozen=True)
class RatioCI:
    """Point ratio new/base of a statistic and its bootstrap confidence interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    iterations: int


def bootstrap_ratio_ci(
    base: Sequence[float],
    new: Sequence[float],
    q: float,
    *,
    iterations: int = 2000,
    confidence: float = 0.95,
    seed: int = 20261127,
) -> RatioCI:
    """Percentile-bootstrap CI of ``percentile(new, q) / percentile(base, q)``.

    iterations: replicates (default 2000); confidence: two-sided level (default 0.95);
    seed: fixed so the same two reports always give the same verdict.
    """
    a = sorted(float(v) for v in base)
    b = sorted(float(v) for v in new)
    point_a, point_b = percentile_sorted(a, q), percentile_sorted(b, q)
    ratio = _ratio(point_b, point_a)
    if len(a) < 2 or len(b) < 2:
        return RatioCI(ratio, math.nan, math.nan, confidence, 0)
    rng = random.Random(seed)
    reps = []
    for _ in range(iterations):
        ra = bootstrap_percentile(a, q, rng)
        rb = bootstrap_percentile(b, q, rng)
        r = _ratio(rb, ra)
        if math.isfinite(r):
            reps.append(r)
    if not reps:
        return RatioCI(ratio, math.nan, math.nan, confidence, iterations)
    reps.sort()
    tail = (1 - confidence) / 2 * 100
    return RatioCI(
        ratio,
        percentile_sorted(reps, tail),
        percentile_sorted(reps, 100 - tail),
        confidence,
        iterations,
    )


def mean_ratio_ci(
    base: Sequence[float], new: Sequence[float], *, confidence: float = 0.95
) -> RatioCI:
    """CI of ``mean(new) / mean(base)`` by the delta method (normal approximation)."""
    na, nb = len(base), len(new)
    ma, mb = sum(base) / na, sum(new) / nb
    ratio = _ratio(mb, ma)
    if na < 2 or nb < 2 or ma == 0 or not math.isfinite(ratio):
        return RatioCI(ratio, math.nan, math.nan, confidence, 0)
    va = sum((x - ma) ** 2 for x in base) / (na - 1)
    vb = sum((x - mb) ** 2 for x in new) / (nb - 1)
    rel = math.sqrt(va / (na * ma * ma) + vb / (nb * mb * mb)) if mb else math.inf
    z = _z(confidence)
    return RatioCI(ratio, ratio * (1 - z * rel), ratio * (1 + z * rel), confidence, 0)


def _z(confidence: float) -> float:
    """Two-sided normal quantile by bisection on erfc (no scipy)."""
    target = 1 - confidence
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if math.erfc(mid / math.sqrt(2)) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _ratio(new: float, base: float) -> float:
    if base == 0:
        return 1.0 if new == 0 else math.inf
    return new / base
