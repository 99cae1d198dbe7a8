"""Regression thresholds parsed from the command line into small check objects.

Spec grammar (``--threshold``, repeatable)::

    STAT:LIMIT               p95:10%   p99:10%   throughput:5%   mean:5%
    GLOB:LIMIT               pool.*.throughput:5%   coldstart.*.total:20%
    GLOB:STAT:LIMIT          coldstart.*.total:p99:25%
    ...:off                  p99:off   coldstart.*:off        (switch a check off)

STAT is ``p50``, ``p90``, ``p95``, ``p99``, any ``pNN[.N]``, ``mean``, ``max`` or
``throughput`` (the median of a rate distribution such as per-interval q/s). GLOB is an
fnmatch pattern over metric paths (``pool.psycopg_pool.steps[c=16].acquire_wait``); a
GLOB without STAT checks ``throughput`` on rates and ``p95`` and ``p99`` on the rest.

Defaults: ``p95:10%``, ``p99:10%`` on time distributions (ms, s, us) and
``throughput:10%`` on rates (units ending in ``/s``). For each metric and statistic the
most specific check wins: a GLOB check over a plain STAT check over a default; among
equals, the one given last.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dbprobe.compare.stats import (
    MIN_SAMPLES,
    bootstrap_ratio_ci,
    mann_whitney_u,
    mean_ratio_ci,
)
from dbprobe.errors import UsageError
from dbprobe.report.views import is_rate

TIME_UNITS = frozenset({"ms", "s", "us", "µs", "ns"})
NAMED_STATS = ("mean", "max", "throughput")
_PCT = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")
_LIMIT = re.compile(r"^(\d+(?:\.\d+)?)%$")

Verdict = str  # "regression" | "improvement" | "inconclusive" | "unchanged"


def is_stat(word: str) -> bool:
    return word in NAMED_STATS or bool(_PCT.match(word))


@dataclasses.dataclass(frozen=True)
class MetricChange:
    """The outcome of one check on one metric present in both reports.

    ratio: new/base of the statistic; ci_low/ci_high its confidence interval (NaN when
    decided on point values); p_value: Mann–Whitney on the raw samples (NaN without
    samples); threshold: fraction (0.10 for 10%); method: ``bootstrap`` (percentiles),
    ``delta`` (mean) or ``point`` (no samples, or fewer than ``MIN_SAMPLES``).
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

    @property
    def change_pct(self) -> float:
        return (self.ratio - 1) * 100

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return round(v, 6) if math.isfinite(v) else None

        return {
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
            "n_base": self.n_base,
            "n_new": self.n_new,
            "threshold_pct": round(self.threshold * 100, 6),
            "check": self.check,
            "method": self.method,
            "verdict": self.verdict,
        }


def _samples(dist: Mapping[str, Any]) -> list[float]:
    raw = dist.get("samples")
    if not isinstance(raw, list):
        return []
    return [float(v) for v in raw if v is not None]


def _point(dist: Mapping[str, Any], stat: str, samples: Sequence[float]) -> float:
    key = "p50" if stat == "throughput" else stat
    value = dist.get(key)
    if value is not None:
        return float(value)
    if samples and key.startswith("p"):
        from dbprobe.compare.stats import percentile_sorted

        return percentile_sorted(sorted(samples), float(key[1:]))
    return math.nan


@dataclasses.dataclass(frozen=True)
class MetricCheck:
    """One threshold: ``stat`` of metrics matching ``pattern`` may get at most
    ``threshold`` (a fraction) worse. ``threshold`` None means switched off."""

    stat: str | None
    threshold: float | None
    pattern: str | None = None
    spec: str = ""
    default: bool = False

    @property
    def specificity(self) -> int:
        return 2 if self.pattern else (0 if self.default else 1)

    def stats_for(self, unit: str) -> tuple[str, ...]:
        """The statistics this check covers on a metric of ``unit``."""
        if self.stat is not None:
            return (self.stat,)
        return ("throughput",) if is_rate(unit) else ("p95", "p99")

    def applies(self, path: str, unit: str) -> bool:
        if self.pattern is not None:
            return fnmatch.fnmatchcase(path, self.pattern)
        if self.stat == "throughput":
            return is_rate(unit)
        return unit in TIME_UNITS

    def compute(
        self, path: str, stat: str, base: Mapping[str, Any], new: Mapping[str, Any]
    ) -> MetricChange:
        """Compare ``stat`` of two serialised distributions of the metric ``path``."""
        unit = str(new.get("unit") or base.get("unit") or "ms")
        higher = is_rate(unit)
        a, b = _samples(base), _samples(new)
        va, vb = _point(base, stat, a), _point(new, stat, b)
        ratio = vb / va if va else (1.0 if vb == va else math.inf)
        low = high = p_value = math.nan
        method = "point"
        if len(a) >= MIN_SAMPLES and len(b) >= MIN_SAMPLES and stat != "max":
            if stat == "mean":
                ci = mean_ratio_ci(a, b)
                method = "delta"
            else:
                q = 50.0 if stat == "throughput" else float(stat[1:])
                ci = bootstrap_ratio_ci(a, b, q)
                method = "bootstrap"
            low, high = ci.low, ci.high
            p_value = mann_whitney_u(a, b).p_value
        threshold = self.threshold or 0.0
        verdict = decide(ratio, low, high, threshold, higher_is_better=higher)
        return MetricChange(
            metric=path,
            stat=stat,
            unit=unit,
            higher_is_better=higher,
            base=va,
            new=vb,
            ratio=ratio,
            ci_low=low,
            ci_high=high,
            p_value=p_value,
            n_base=int(base.get("n") or len(a)),
            n_new=int(new.get("n") or len(b)),
            threshold=threshold,
            check=self.spec,
            method=method,
            verdict=verdict,
        )

    def fails(self, change: MetricChange) -> str | None:
        """Why ``change`` fails this check, or ``None``."""
        if change.verdict != "regression":
            return None
        worse = "lower" if change.higher_is_better else "higher"
        return (
            f"{change.metric} {change.stat} is {abs(change.change_pct):.1f}% {worse} "
            f"({change.base:.4g} → {change.new:.4g} {change.unit}; limit {self.spec})"
        )


def decide(
    ratio: float, low: float, high: float, threshold: float, *, higher_is_better: bool
) -> Verdict:
    """Regression when the point ratio is beyond the threshold in the bad direction and,
    when a confidence interval exists, the whole interval is on the bad side of 1 (the
    shift is real, not noise). Beyond the threshold with an interval that includes 1:
    ``inconclusive``. The mirror image is an ``improvement``."""
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
            # a glob that itself contains ':' is unlikely; treat "a:b:10%" as GLOB:STAT
            raise UsageError(
                f"bad threshold {spec!r}: unknown statistic {stat!r} "
                f"(use p50, p95, p99, pNN, mean, max or throughput)"
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


DEFAULT_SPECS = ("p95:10%", "p99:10%", "throughput:10%")


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
            current = chosen.get(stat)
            if current is None or check.specificity >= current.specificity:
                chosen[stat] = check
    return [(stat, c) for stat, c in chosen.items() if c.threshold is not None]


def build_checks(specs: Iterable[str]) -> list[MetricCheck]:
    """Defaults followed by the user's checks (which override them)."""
    return [*default_checks(), *(parse_check(s) for s in specs)]
