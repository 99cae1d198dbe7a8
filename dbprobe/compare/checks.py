"""Regression limits parsed from the command line into small check objects, and the
test each check runs on one metric.

Spec grammar (``--threshold``, repeatable)::

    STAT:LIMIT               p95:10%   p99:10%   throughput:5%   mean:5%   failed:2%
    GLOB:LIMIT               pool.*.throughput:5%   coldstart.*.total:20%
    GLOB:STAT:LIMIT          coldstart.*.total:p99:25%
    ...:off                  p99:off   coldstart.*:off        (switch a check off)

STAT is ``p50``, ``p90``, ``p95``, ``p99``, any ``pNN[.N]``, ``mean``, ``max``,
``throughput`` (a rate's mean: for a pool step, ``throughput_qps``, the completed
requests over the step's window) or ``failed`` (a pool step's share of failed requests,
timeouts and errors; its LIMIT is in percentage points: ``failed:2%`` lets the share
grow by two points, 3% → 5%). Other limits are relative: ``p95:10%`` lets the p95 grow
by 10%. GLOB is an fnmatch pattern over metric paths
(``pool.psycopg_pool.steps[c=16].acquire_wait``); a GLOB without STAT checks
``throughput`` on rates, ``failed`` on step shares and ``p95`` and ``p99`` on the rest.

Defaults (:data:`DEFAULT_SPECS`): the headline limits (cold-start total p95 25%, pool
query p95 25%, pool throughput 15%, failed share 5 points) and 10% on p95/p99/throughput
of everything else. For each metric and statistic the most specific check wins: the
user's GLOB checks, then the user's plain STAT checks, then the default GLOB checks,
then the default plain ones; among equals, the one given last.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from dbprobe.errors import UsageError
from dbprobe.report.views import is_rate

TIME_UNITS = frozenset({"ms", "s", "us", "µs", "ns"})
NAMED_STATS = ("mean", "max", "throughput", "failed")
SHARE_UNIT = "share"
"""Unit of a pool step's failed share (0..1); its limits are in percentage points."""
_PCT = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")
_LIMIT = re.compile(r"^(\d+(?:\.\d+)?)%$")

Verdict = str
"""``regression`` (a gating check failed: exit 1), ``worse`` (significantly worse by more
than the limit on a check that does not gate), ``inconclusive`` (beyond the limit but
within noise, or untestable), ``improvement``, ``unchanged``."""

VERDICTS = ("regression", "worse", "inconclusive", "improvement", "unchanged")


def is_stat(word: str) -> bool:
    return word in NAMED_STATS or bool(_PCT.match(word))


@dataclasses.dataclass(frozen=True)
class MetricChange:
    """The outcome of one check on one metric present in both reports.

    ratio: new/base of the statistic (for ``failed``: of the shares); ci_low/ci_high:
    its 95% bootstrap interval (for ``failed``: of the difference of the shares); NaN
    when decided on point values. p_value: two-sided Mann–Whitney on the raw samples
    (context only); p_worse: one-sided p of "worse by no more than the limit";
    p_adjusted: p_worse after Holm's correction over the checks of its family (the
    gating checks, or the informational ones) — the verdict follows it. threshold:
    fraction (0.10 for 10%; for ``failed``, 0.05 for 5 points). gate: whether a
    regression here fails the comparison. method: ``bootstrap``, ``block-bootstrap``,
    ``proportion`` or ``point`` (no samples, or fewer than ``MIN_SAMPLES``).
    """

    metric: str
    stat: str
    unit: str
    higher_is_better: bool
    base: float
    new: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    n_base: int
    n_new: int
    threshold: float
    check: str
    method: str
    verdict: Verdict
    gate: bool = False
    p_worse: float = math.nan
    p_better: float = math.nan
    p_adjusted: float = math.nan
    counts: tuple[int, int, int, int] | None = None  # failed/requests base, new

    @property
    def change_pct(self) -> float:
        """Relative change in percent; for a share, the change in percentage points."""
        if self.stat == "failed":
            return (self.new - self.base) * 100
        return (self.ratio - 1) * 100

    @property
    def beyond_limit(self) -> bool:
        """The point change is beyond the limit in the bad direction."""
        if self.stat == "failed":
            return self.new - self.base > self.threshold
        if not math.isfinite(self.ratio):
            return (self.ratio > 1) != self.higher_is_better
        if self.higher_is_better:
            return self.ratio < 1 - self.threshold
        return self.ratio > 1 + self.threshold

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return round(v, 6) if math.isfinite(v) else None

        out: dict[str, Any] = {
            "metric": self.metric,
            "stat": self.stat,
            "unit": self.unit,
            "direction": "higher-is-better" if self.higher_is_better else "lower-is-better",
            "base": num(self.base),
            "new": num(self.new),
            "ratio": num(self.ratio),
            "change_pct": num(self.change_pct),
            "ci": [num(self.ci_low), num(self.ci_high)],
            "p_value": num(self.p_value),
            "p_worse": num(self.p_worse),
            "p_adjusted": num(self.p_adjusted),
            "n_base": self.n_base,
            "n_new": self.n_new,
            "threshold_pct": round(self.threshold * 100, 6),
            "check": self.check,
            "method": self.method,
            "gate": self.gate,
            "verdict": self.verdict,
        }
        if self.counts is not None:
            fb, tb, fn, tn = self.counts
            out["failed"] = {"base": fb, "base_requests": tb, "new": fn, "new_requests": tn}
        return out


@dataclasses.dataclass(frozen=True)
class MetricCheck:
    """One limit: ``stat`` of metrics matching ``pattern`` may get at most ``threshold``
    (a fraction) worse. ``threshold`` None means switched off. ``default``: one of
    :data:`DEFAULT_SPECS`, which the user's checks override."""

    stat: str | None
    threshold: float | None
    pattern: str | None = None
    spec: str = ""
    default: bool = False

    @property
    def specificity(self) -> int:
        """User GLOB 3, user STAT 2, default GLOB 1, default STAT 0."""
        return (0 if self.default else 2) + (1 if self.pattern else 0)

    @property
    def explicit(self) -> bool:
        """A user's GLOB check: the metrics it names gate the comparison."""
        return bool(self.pattern) and not self.default

    def stats_for(self, unit: str) -> tuple[str, ...]:
        """The statistics this check covers on a metric of ``unit``."""
        if self.stat is not None:
            return (self.stat,)
        if unit == SHARE_UNIT:
            return ("failed",)
        return ("throughput",) if is_rate(unit) else ("p95", "p99")

    def applies(self, path: str, unit: str) -> bool:
        """Whether this check covers a metric at ``path`` of ``unit``: plain percentile
        checks cover times, ``throughput`` rates, ``failed`` step shares; a GLOB covers
        what it names (without a STAT, with the defaults of the metric's kind)."""
        if self.pattern is not None and not fnmatch.fnmatchcase(path, self.pattern):
            return False
        if unit == SHARE_UNIT:
            return self.stat in (None, "failed")
        if self.stat == "failed":
            return False
        if self.stat == "throughput":
            return is_rate(unit)
        if self.stat is None or self.pattern is not None:
            return True
        return unit in TIME_UNITS

    def fails(self, change: MetricChange) -> str | None:
        """Why ``change`` fails this check, or ``None``."""
        if change.verdict != "regression":
            return None
        if change.stat == "failed":
            return (
                f"{change.metric} failed share grew {change.change_pct:.1f} points "
                f"({change.base:.1%} → {change.new:.1%}; limit {self.spec})"
            )
        worse = "lower" if change.higher_is_better else "higher"
        return (
            f"{change.metric} {change.stat} is {abs(change.change_pct):.1f}% {worse} "
            f"({change.base:.4g} → {change.new:.4g} {change.unit}; limit {self.spec})"
        )


def decide(
    ratio: float, low: float, high: float, threshold: float, *, higher_is_better: bool
) -> Verdict:
    """The verdict of a single check from its point ratio and 95% interval, without a
    correction for multiple checks: ``regression`` when the point ratio is beyond the
    threshold in the bad direction and, when an interval exists, the whole interval is
    on the bad side of 1 (the shift is real, not noise); beyond the threshold with an
    interval that includes 1: ``inconclusive``; the mirror image is an ``improvement``.
    Without an interval the point decides. (``dbprobe compare`` itself decides from
    Holm-adjusted one-sided tests against the limit; ``benchmarks/regress.py`` uses this
    rule.)"""
    if not math.isfinite(ratio):
        return "regression" if (ratio > 1) != higher_is_better else "improvement"
    worse = ratio < 1 - threshold if higher_is_better else ratio > 1 + threshold
    better = ratio > 1 + threshold if higher_is_better else ratio < 1 - threshold
    has_ci = math.isfinite(low) and math.isfinite(high)
    if worse:
        if not has_ci:
            return "regression"
        real = high < 1 if higher_is_better else low > 1
        return "regression" if real else "inconclusive"
    if better:
        if not has_ci:
            return "improvement"
        real = low > 1 if higher_is_better else high < 1
        return "improvement" if real else "unchanged"
    return "unchanged"


def parse_check(spec: str) -> MetricCheck:
    """Parse one ``--threshold`` spec (see the module docstring); raise
    :class:`UsageError` with one clear line when it is not valid."""
    text = spec.strip()
    parts = text.rsplit(":", 2)
    if len(parts) < 2 or not all(parts):
        raise UsageError(
            f"bad threshold {spec!r}: expected STAT:N%, GLOB:N% or GLOB:STAT:N% "
            "(e.g. p95:10%, pool.*.throughput:5%)"
        )
    limit_text = parts[-1].strip()
    if limit_text == "off":
        limit: float | None = None
    else:
        m = _LIMIT.match(limit_text)
        if not m:
            raise UsageError(
                f"bad threshold {spec!r}: the limit must be a percentage like 10% (or off)"
            )
        limit = float(m.group(1)) / 100
    stat: str | None
    pattern: str | None
    if len(parts) == 3:
        pattern, stat = parts[0].strip(), parts[1].strip()
        if not is_stat(stat):
            raise UsageError(
                f"bad threshold {spec!r}: unknown statistic {stat!r} "
                f"(use p50, p95, p99, pNN, mean, max, throughput or failed)"
            )
    else:
        head = parts[0].strip()
        if is_stat(head):
            stat, pattern = head, None
        elif re.fullmatch(r"p\d[\d.]*", head):
            raise UsageError(f"bad threshold {spec!r}: unknown statistic {head!r}")
        else:
            stat, pattern = None, head
    return MetricCheck(stat=stat, threshold=limit, pattern=pattern, spec=text)


HEADLINE_SPECS = (
    "coldstart.*.total:p95:25%",
    "pool.*.query_latency:p95:25%",
    "pool.*.throughput:throughput:15%",
    "failed:5%",
)
"""Limits of the headline checks, which gate by default (see :func:`is_headline`)."""

DEFAULT_SPECS = ("p95:10%", "p99:10%", "throughput:10%", *HEADLINE_SPECS)


def default_checks() -> list[MetricCheck]:
    return [dataclasses.replace(parse_check(s), default=True) for s in DEFAULT_SPECS]


def resolve_checks(
    path: str, unit: str, checks: Sequence[MetricCheck]
) -> list[tuple[str, MetricCheck]]:
    """The ``(stat, check)`` pairs that decide ``path``: per statistic, the most specific
    applicable check, the last given among equals; switched-off checks drop out."""
    chosen: dict[str, MetricCheck] = {}
    for check in checks:
        if not check.applies(path, unit):
            continue
        for stat in check.stats_for(unit):
            if unit == SHARE_UNIT and stat != "failed":
                continue
            if unit != SHARE_UNIT and stat == "failed":
                continue
            current = chosen.get(stat)
            if current is None or check.specificity >= current.specificity:
                chosen[stat] = check
    return [(stat, c) for stat, c in chosen.items() if c.threshold is not None]


def build_checks(specs: Iterable[str]) -> list[MetricCheck]:
    """Defaults followed by the user's checks (which override them)."""
    return [*default_checks(), *(parse_check(s) for s in specs)]
