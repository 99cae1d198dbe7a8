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


# --- tests of a change against a limit (the gate) -------------------------------------

BLOCK_BOOTSTRAP_MAX = 5000
"""Time-ordered sample sets larger than this are resampled as independent values (the
order-statistic shortcut): resampling blocks costs O(n) per replicate."""


def block_length(n: int) -> int:
    """Block length of the moving-block bootstrap for ``n`` time-ordered values: the
    usual n^(1/3) rate, at least 2 (1 for fewer than 4 values)."""
    if n < 4:
        return 1
    length: int = round(n ** (1.0 / 3.0))
    return max(2, length)


def block_resample(values: Sequence[float], block: int, rng: random.Random) -> list[float]:
    """A moving-block bootstrap resample of a time series: ``len(values)`` values made
    of runs of ``block`` neighbours starting at random positions (circular), so the
    correlation between neighbours (the machine's load of the moment, a queue that
    builds up) survives the resampling."""
    n = len(values)
    out: list[float] = []
    while len(out) < n:
        start = rng.randrange(n)
        out.extend(values[(start + i) % n] for i in range(block))
    return out[:n]


@dataclasses.dataclass(frozen=True)
class RatioTest:
    """A statistic of NEW over the same statistic of BASE, tested against a limit.

    ratio: point ratio; low/high: 95% interval of the ratio; se_within: standard error
    of log(ratio) from the bootstrap (sampling noise within the two runs); se: the
    total standard error the test used (within-run and run-to-run noise); p_worse:
    one-sided p-value of "NEW is worse by no more than the limit" (small: it is worse
    by more); p_better: the mirror image; method: ``bootstrap`` (independent values),
    ``block-bootstrap`` (time-ordered values, at least one side) or ``point``.
    """

    ratio: float
    low: float
    high: float
    p_worse: float
    p_better: float
    method: str
    iterations: int
    se_within: float = math.nan
    se: float = math.nan


def _stat(values: Sequence[float], q: float | None) -> float:
    if q is None:
        return sum(values) / len(values) if values else math.nan
    return percentile_sorted(sorted(values), q)


def _replicate(
    values: Sequence[float],
    sorted_values: Sequence[float],
    q: float | None,
    block: int,
    rng: random.Random,
) -> float:
    if block > 1:
        return _stat(block_resample(values, block, rng), q)
    if q is None:
        n = len(values)
        return sum(values[rng.randrange(n)] for _ in range(n)) / n
    return bootstrap_percentile(sorted_values, q, rng)


def log_bounds(limit: float, higher_is_better: bool) -> tuple[float, float]:
    """``(worse, better)`` bounds of log(ratio) for a relative ``limit``: a ratio beyond
    ``worse`` is worse by more than the limit, beyond ``better`` better by more."""
    if higher_is_better:
        return math.log(max(1e-12, 1 - limit)), math.log(1 + limit)
    return math.log(1 + limit), math.log(max(1e-12, 1 - limit))


def z_test(
    estimate: float, se: float, worse: float, better: float, *, higher_is_better: bool
) -> tuple[float, float]:
    """One-sided normal p-values ``(p_worse, p_better)`` of ``estimate`` against the
    bounds: p_worse tests "no worse than ``worse``", p_better "no better than
    ``better``". Higher estimates are worse unless ``higher_is_better``."""
    sign = -1.0 if higher_is_better else 1.0
    if not se > 0:
        p_worse = 0.0 if sign * (estimate - worse) > 0 else 1.0
        p_better = 0.0 if sign * (better - estimate) > 0 else 1.0
        return p_worse, p_better
    return (
        _upper_tail(sign * (estimate - worse) / se),
        _upper_tail(sign * (better - estimate) / se),
    )


def ratio_test(
    base: Sequence[float],
    new: Sequence[float],
    *,
    q: float | None,
    limit: float,
    higher_is_better: bool,
    base_time_ordered: bool = False,
    new_time_ordered: bool = False,
    iterations: int = 2000,
    seed: int = 20261127,
    scale: tuple[float, float] = (1.0, 1.0),
    run_noise: float = 0.0,
) -> RatioTest:
    """Test ``stat(new) / stat(base)`` against ``limit`` (a fraction).

    q: the percentile (0..100), or None for the mean. The bootstrap gives the sampling
    noise of log(ratio) within the two runs: time-ordered sides are resampled in blocks
    of neighbours (:func:`block_resample`), others value by value. run_noise: the
    standard deviation of log(ratio) between two runs of the same code on the same
    machine beyond that (the machine's load changing between runs), added to it. The
    null hypothesis of ``p_worse`` is "worse by at most ``limit``": log(ratio) <=
    log(1 + limit) for lower-is-better statistics, >= log(1 - limit) for rates; tested
    with a normal approximation of log(ratio). ``scale`` multiplies each side's
    statistic (the report's own figure over the samples' one, e.g. throughput_qps
    over the mean interval rate).
    """
    a = [float(v) for v in base]
    b = [float(v) for v in new]
    sa, sb = sorted(a), sorted(b)
    point_a, point_b = _stat(a, q) * scale[0], _stat(b, q) * scale[1]
    ratio = _ratio(point_b, point_a)
    nan = math.nan
    if len(a) < 2 or len(b) < 2 or not (point_a > 0 and point_b > 0):
        return RatioTest(ratio, nan, nan, nan, nan, "point", 0)
    block_a = block_length(len(a)) if base_time_ordered and len(a) <= BLOCK_BOOTSTRAP_MAX else 1
    block_b = block_length(len(b)) if new_time_ordered and len(b) <= BLOCK_BOOTSTRAP_MAX else 1
    rng = random.Random(seed)
    logs: list[float] = []
    for _ in range(iterations):
        ra = _replicate(a, sa, q, block_a, rng) * scale[0]
        rb = _replicate(b, sb, q, block_b, rng) * scale[1]
        if ra > 0 and rb > 0:
            logs.append(math.log(rb / ra))
    method = "block-bootstrap" if max(block_a, block_b) > 1 else "bootstrap"
    if len(logs) < 2:
        return RatioTest(ratio, nan, nan, nan, nan, method, iterations)
    mean = sum(logs) / len(logs)
    se_within = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    se = math.sqrt(se_within**2 + run_noise**2)
    estimate = math.log(ratio)
    worse, better = log_bounds(limit, higher_is_better)
    p_worse, p_better = z_test(estimate, se, worse, better, higher_is_better=higher_is_better)
    z95 = 1.959963984540054
    return RatioTest(
        ratio=ratio,
        low=math.exp(estimate - z95 * se),
        high=math.exp(estimate + z95 * se),
        p_worse=p_worse,
        p_better=p_better,
        method=method,
        iterations=len(logs),
        se_within=se_within,
        se=se,
    )


@dataclasses.dataclass(frozen=True)
class ProportionTest:
    """Failed share of NEW against BASE, tested against a margin (percentage points as
    a fraction: 0.05 = 5 points).

    share_base/share_new: observed shares; diff: their difference; low/high: the
    Agresti–Caffo 95% interval of the difference; p_worse: one-sided p of "the share
    grew by at most ``margin``"; p_better: of "it fell by at most ``margin``".
    """

    share_base: float
    share_new: float
    diff: float
    low: float
    high: float
    p_worse: float
    p_better: float


def _upper_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def proportion_test(
    failed_base: int,
    total_base: int,
    failed_new: int,
    total_new: int,
    *,
    margin: float,
    run_noise: float = 0.0,
) -> ProportionTest:
    """Two-proportion test with the Agresti–Caffo adjustment (one failure and one
    success added to each side), which behaves at shares of 0 and small counts where
    the plain Wald test does not. run_noise: the standard deviation of the difference
    between two runs of the same code beyond the binomial one (a queue's timeouts come
    in bursts), in share units. Needs at least one request a side."""
    p1 = failed_base / total_base
    p2 = failed_new / total_new
    a1 = (failed_base + 1) / (total_base + 2)
    a2 = (failed_new + 1) / (total_new + 2)
    se = math.sqrt(
        a1 * (1 - a1) / (total_base + 2) + a2 * (1 - a2) / (total_new + 2) + run_noise**2
    )
    d = a2 - a1
    z95 = 1.959963984540054
    return ProportionTest(
        share_base=p1,
        share_new=p2,
        diff=p2 - p1,
        low=d - z95 * se,
        high=d + z95 * se,
        p_worse=_upper_tail((d - margin) / se),
        p_better=_upper_tail((-d - margin) / se),
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN stays NaN).

    Rejecting every hypothesis whose adjusted p-value is at most alpha keeps the chance
    of any false rejection in the family at most alpha, whatever the dependence
    between the tests."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


# --- per-run summaries: several runs a side -----------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T > t) = ``p`` (bisection; 0 < p < 1)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_upper_tail(mid, df) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclasses.dataclass(frozen=True)
class RunsTest:
    """A statistic compared through one summary per run (its p95 in each BASE run and
    each NEW run): the difference of the side means, on the log scale for ratios, in
    share units for failed shares, tested with Student's t on the pooled run-to-run
    variance, so the variation between runs is measured rather than assumed.

    estimate: mean(NEW) - mean(BASE) (of logs, or of shares); ratio: exp(estimate) for
    logs; low/high: 95% interval of the ratio (or of the difference); df: degrees of
    freedom; p_worse/p_better as in :class:`RatioTest`.
    """

    estimate: float
    low: float
    high: float
    se: float
    df: int
    p_worse: float
    p_better: float


def runs_test(
    base: Sequence[float],
    new: Sequence[float],
    *,
    worse: float,
    better: float,
    higher_is_better: bool,
) -> RunsTest | None:
    """Welch-free pooled two-sample t-test of per-run summaries against the bounds
    ``worse``/``better`` (already on the summaries' scale: logs or shares). Needs at
    least three runs in all and two on one side; ``None`` otherwise."""
    kb, kn = len(base), len(new)
    if kb + kn < 3 or max(kb, kn) < 2:
        return None
    mb, mn = sum(base) / kb, sum(new) / kn
    ss = sum((x - mb) ** 2 for x in base) + sum((x - mn) ** 2 for x in new)
    df = kb + kn - 2
    s = math.sqrt(ss / df)
    se = s * math.sqrt(1 / kb + 1 / kn)
    estimate = mn - mb
    sign = -1.0 if higher_is_better else 1.0
    if se > 0:
        p_worse = t_upper_tail(sign * (estimate - worse) / se, df)
        p_better = t_upper_tail(sign * (better - estimate) / se, df)
    else:
        p_worse = 0.0 if sign * (estimate - worse) > 0 else 1.0
        p_better = 0.0 if sign * (better - estimate) > 0 else 1.0
    t975 = t_quantile(0.025, df)
    return RunsTest(estimate, estimate - t975 * se, estimate + t975 * se, se, df, p_worse, p_better)
