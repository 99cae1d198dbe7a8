"""Service-level objectives: ``[tool.dbprobe.slo]`` in pyproject.toml, checked against
every report, and suggested from measured distributions.

```toml
[tool.dbprobe.slo]
query_p95_ms = 5            # p95 of every query-latency distribution
query_p99_ms = 20
pool_acquire_p95_ms = 2     # p95 of every pool acquire-wait distribution (per step)
pool_acquire_p99_ms = 10
connect_p95_ms = 25         # p95 of each driver's cold-start total
connect_p99_ms = 50
error_rate = 0.001          # failed share of pool requests (timeouts + errors), 0..1 (0 allowed)
pool_concurrency = 8        # operating concurrency: pool SLOs apply to steps up to it
```

Pool objectives (query, acquire, error_rate) are checked only at the pool steps within
the operating load: closed-loop steps with at most ``pool_concurrency`` workers (default:
the pool's capacity, size + overflow) — ``dbprobe pool`` always drives past exhaustion,
and the steps beyond it are the stress test, not the service level. Query objectives
also cover the latency of the application's captured statements
(``metrics.capture.query_latency``).

:func:`check_slos` is pure (report in, ``slo-violation`` findings out);
:func:`apply_slos` loads the configuration and adds the findings to a report — the one
call each command makes before writing its report.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dbprobe.errors import UsageError
from dbprobe.report.model import Finding, Report
from dbprobe.report.views import NOT_DRIVERS, iter_distributions, pool_view
from dbprobe.rules import RULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclasses.dataclass(frozen=True)
class SloKind:
    """What an SLO key measures: ``stat`` of the distributions a ``kind`` selects."""

    key: str
    kind: str  # query | acquire | connect | error_rate
    stat: str | None  # p95 / p99; None for error_rate
    unit: str
    what: str


SLO_KINDS: dict[str, SloKind] = {
    k.key: k
    for k in (
        SloKind("query_p95_ms", "query", "p95", "ms", "query latency"),
        SloKind("query_p99_ms", "query", "p99", "ms", "query latency"),
        SloKind("pool_acquire_p95_ms", "acquire", "p95", "ms", "pool acquire wait"),
        SloKind("pool_acquire_p99_ms", "acquire", "p99", "ms", "pool acquire wait"),
        SloKind("connect_p95_ms", "connect", "p95", "ms", "connection cold start"),
        SloKind("connect_p99_ms", "connect", "p99", "ms", "connection cold start"),
        SloKind("error_rate", "error_rate", None, "", "pool error rate"),
    )
}
SETTINGS = ("pool_concurrency",)
"""Keys of ``[tool.dbprobe.slo]`` that are settings, not objectives."""

RECOMMENDATIONS = {
    "query": "find the slow statements (pytest --dbprobe, pg_stat_statements) and fix their "
    "plans or the N+1 loops behind them; if the objective is wrong, change {key} in "
    "[tool.dbprobe.slo]",
    "acquire": "the pool queues requests at this concurrency: raise the pool size (within the "
    "server's max_connections) or shorten how long each request holds a connection (no "
    "remote calls inside a transaction); dbprobe pool shows the knee",
    "connect": "keep connections warm in a pool (min size > 0) instead of connecting per "
    "request; the cold-start phases show where the time goes (TLS, authentication, driver "
    "initialisation)",
    "error_rate": "requests time out or fail under this load: raise the pool size or its "
    "timeout, or cap concurrency below the knee; see the pool-exhaustion findings",
}


@dataclasses.dataclass(frozen=True)
class Slos:
    """Declared objectives (``None`` = not declared); ``source`` is the file they came from."""

    query_p95_ms: float | None = None
    query_p99_ms: float | None = None
    pool_acquire_p95_ms: float | None = None
    pool_acquire_p99_ms: float | None = None
    connect_p95_ms: float | None = None
    connect_p99_ms: float | None = None
    error_rate: float | None = None
    pool_concurrency: int | None = None
    source: str | None = None

    def items(self) -> list[tuple[SloKind, float]]:
        """Declared objectives, in declaration order of :data:`SLO_KINDS`."""
        out = []
        for key, kind in SLO_KINDS.items():
            value = getattr(self, key)
            if value is not None:
                out.append((kind, float(value)))
        return out

    def __bool__(self) -> bool:
        return bool(self.items())

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str | None = None) -> Slos:
        """Validate a ``[tool.dbprobe.slo]`` table; :class:`UsageError` names the bad key."""
        where = f" in {source}" if source else ""
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "pool_concurrency":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise UsageError(
                        f"SLO setting pool_concurrency must be a whole number of workers >= 1"
                        f"{where}, got {value!r}"
                    )
                values[key] = value
                continue
            if key not in SLO_KINDS:
                known = ", ".join((*SLO_KINDS, *SETTINGS))
                raise UsageError(
                    f"unknown SLO {key!r} in [tool.dbprobe.slo]{where} (known: {known})"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(
                    f"SLO {key} must be a number{where}, got {type(value).__name__} {value!r}"
                )
            v = float(value)
            if key == "error_rate" and v == 0:
                pass  # "no request may fail" is a valid objective
            elif not math.isfinite(v) or v <= 0:
                raise UsageError(f"SLO {key} must be a positive number{where}, got {value!r}")
            if key == "error_rate" and v > 1:
                raise UsageError(f"SLO error_rate is a fraction 0..1{where}, got {value!r}")
            values[key] = v
        return cls(**values, source=source)


def find_pyproject(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (default: the current directory)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_slos(
    config: str | os.PathLike[str] | None = None, *, start: str | os.PathLike[str] | None = None
) -> Slos:
    """``[tool.dbprobe.slo]`` from ``config`` (a pyproject.toml or any TOML file with that
    table), else from the nearest pyproject.toml above ``start``/the current directory.
    No file or no table: empty :class:`Slos`. Unreadable or invalid: :class:`UsageError`."""
    path = Path(config) if config else find_pyproject(start)
    if path is None:
        return Slos()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    table = data.get("tool", {}).get("dbprobe", {}).get("slo")
    if table is None:
        return Slos(source=str(path))
    if not isinstance(table, Mapping):
        raise UsageError(f"{path}: [tool.dbprobe.slo] must be a table")
    return Slos.from_mapping(table, str(path))


# --- which measurements each kind of SLO reads -------------------------------------

_STEP = re.compile(r"\[[cr]=[^\]]*\]")


@dataclasses.dataclass(frozen=True)
class Observation:
    """One measured value an SLO applies to: the metric path, the value, its sample
    count, and the pool step's concurrency when it comes from one."""

    metric: str
    value: float
    n: int
    concurrency: int | None = None
    healthy: bool = True  # False for a pool step with timeouts or errors
    operating: bool = True  # False for a pool step beyond the operating load
    samples: tuple[float, ...] = ()

    @property
    def group(self) -> str:
        """The metric without its step: observations of one group form one finding."""
        return _STEP.sub("", self.metric)


def observations(
    metrics: Mapping[str, Any], kind: SloKind, *, pool_concurrency: int | None = None
) -> list[Observation]:
    """Every value in a serialised metrics tree that ``kind`` constrains. Pool steps
    beyond the operating load (``pool_concurrency`` workers, default the pool's
    capacity; see :meth:`PoolView.within_capacity`) are marked ``operating=False``."""
    out: list[Observation] = []
    steps: dict[str, tuple[int, bool, bool]] = {}
    for pool in pool_view(metrics):
        for step in pool.steps:
            prefix = f"pool.{pool.name}.steps{step.key}"
            operating = pool.within_capacity(step, pool_concurrency)
            steps[prefix] = (step.concurrency, step.error_count == 0, operating)
            if kind.kind == "error_rate" and step.requests:
                out.append(
                    Observation(
                        f"{prefix}.error_rate",
                        step.error_rate,
                        step.requests,
                        step.concurrency,
                        healthy=step.error_count == 0,
                        operating=operating,
                    )
                )
    if kind.kind == "error_rate":
        return out
    for path, dist in iter_distributions(metrics):
        leaf = path.rsplit(".", 1)[-1]
        if kind.kind == "query":
            match = leaf == "query_latency"
        elif kind.kind == "acquire":
            match = leaf == "acquire_wait"
        else:  # connect: each driver's cold-start total, not the raw TCP floor
            parts = path.split(".")
            match = len(parts) == 3 and parts[0] == "coldstart" and parts[2] == "total"
            match = match and parts[1] not in NOT_DRIVERS
        value = dist.get(kind.stat or "")
        if not match or value is None or str(dist.get("unit", "ms")) != "ms":
            continue
        concurrency, healthy, operating = steps.get(path.rsplit(".", 1)[0], (None, True, True))
        raw = dist.get("samples")
        samples = tuple(float(v) for v in raw if isinstance(v, (int, float))) if raw else ()
        out.append(
            Observation(
                path,
                float(value),
                int(dist.get("n") or 0),
                concurrency,
                healthy=healthy,
                operating=operating,
                samples=samples,
            )
        )
    return out


def _fmt(value: float, kind: SloKind) -> str:
    if kind.kind == "error_rate":
        return f"{value * 100:.3g}%"
    return f"{value:.3g} {kind.unit}"


def check_slos(report: Report | Mapping[str, Any], slos: Slos) -> list[Finding]:
    """``slo-violation`` findings for every declared objective a report's measurements
    break: one finding per objective and metric group (a pool's steps form one group;
    the finding lists the concurrency levels that break it and those that meet it).
    Pure: reads the report, changes nothing."""
    doc = report.to_dict() if isinstance(report, Report) else report
    metrics = doc.get("metrics") or {}
    rule = RULES["slo-violation"]
    findings: list[Finding] = []
    for kind, limit in slos.items():
        groups: dict[str, list[Observation]] = {}
        for obs in observations(metrics, kind, pool_concurrency=slos.pool_concurrency):
            if obs.operating:
                groups.setdefault(obs.group, []).append(obs)
        for group, items in groups.items():
            bad = [o for o in items if o.value > limit]
            if not bad:
                continue
            worst = max(bad, key=lambda o: o.value)
            label = kind.what if kind.stat is None else f"{kind.what} {kind.stat}"
            message = f"{label} {_fmt(worst.value, kind)} breaks the SLO {kind.key} = "
            message += f"{_fmt(limit, kind)} ({group}"
            levels = sorted(o.concurrency for o in bad if o.concurrency is not None)
            met = sorted(o.concurrency for o in items if o.concurrency is not None and o not in bad)
            if levels:
                message += f" at concurrency {', '.join(map(str, levels))}"
                if met:
                    message += f"; met at {', '.join(map(str, met))}"
            message += ")"
            if kind.stat == "p99" and worst.n < 100:
                message += f"; p99 of only {worst.n} samples"
            if kind.kind != "connect" and any(o.concurrency is not None for o in items):
                load = slos.pool_concurrency
                message += (
                    f"; pool steps checked up to {load} workers"
                    if load
                    else "; pool steps checked within the pool's capacity"
                )
            findings.append(
                rule.finding(
                    message,
                    RECOMMENDATIONS[kind.kind].format(key=kind.key),
                    fingerprint=f"slo:{kind.key}:{group}",
                    evidence={
                        "slo": kind.key,
                        "limit": limit,
                        "unit": kind.unit or "fraction",
                        "observed": worst.value,
                        "metric": worst.metric,
                        "n": worst.n,
                        "violations": [
                            {"metric": o.metric, "observed": o.value, "n": o.n} for o in bad
                        ],
                        "met": [o.metric for o in items if o not in bad],
                        "source": slos.source,
                    },
                )
            )
    return findings


def apply_slos(
    report: Report, slos: Slos | None = None, *, config: str | None = None
) -> list[Finding]:
    """Check ``report`` against ``slos`` (default: :func:`load_slos` of ``config`` or the
    nearest pyproject.toml) and add the ``slo-violation`` findings it does not hold yet.
    Returns the findings added. Safe to call twice."""
    if slos is None:
        slos = load_slos(config)
    if not slos:
        return []
    have = {f.identity() for f in report.findings}
    added = [f for f in check_slos(report, slos) if f.identity() not in have]
    report.extend(added)
    return added


# --- suggestions -----------------------------------------------------------------

NICE_STEPS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
DEFAULT_HEADROOM = 1.5


def nice_ceil(value: float) -> float:
    """Round up to the next of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k."""
    if value <= 0 or not math.isfinite(value):
        return value
    exp = math.floor(math.log10(value))
    for step in NICE_STEPS:
        candidate = round(step * 10.0**exp, 12)
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10.0 ** (exp + 1)  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class SloSuggestion:
    """A proposed objective: ``value`` from ``observed`` × headroom, rounded up."""

    key: str
    value: float
    observed: float
    metric: str
    n: int
    basis: str


CONFIDENCE = 0.95
"""Confidence of the upper bound a suggested percentile objective starts from."""


def percentile_upper_bound(
    samples: Sequence[float], q: float, confidence: float = CONFIDENCE
) -> float:
    """A distribution-free upper confidence bound of the ``q``-th percentile (0..100):
    the smallest order statistic X(k) with P(Binomial(n, q/100) <= k - 1) >= confidence,
    so the true percentile lies below it with that confidence. With too few samples for
    that (k > n), the largest sample. NaN without samples."""
    data = sorted(samples)
    n = len(data)
    if not n:
        return math.nan
    p = q / 100
    if p <= 0:
        return data[0]
    if p >= 1:
        return data[-1]
    # the binomial probabilities in log space: math.comb(n, k) overflows a float past
    # n ≈ 1,000
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.exp(
            log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        )
        if cdf >= confidence:
            return data[min(k, n - 1)]
    return data[-1]


def suggest_slos(
    report: Report | Mapping[str, Any],
    *,
    headroom: float = DEFAULT_HEADROOM,
    pool_concurrency: int | None = None,
) -> list[SloSuggestion]:
    """Objectives a report's measurements meet with ``headroom`` (default 1.5×).

    Rule: for each key, over the same measurements :func:`check_slos` reads (pool steps
    within the operating load: ``pool_concurrency`` workers, default each pool's
    capacity), take the worst 95% upper confidence bound of the percentile
    (:func:`percentile_upper_bound`; the reported value when the raw samples are
    absent), multiply by ``headroom`` and round up to a nice number (1, 1.2, 1.5, 2,
    2.5, 3, 4, 5, 6, 8 × 10^k). The suggestion is thus at least the observed value, so
    the report meets it, and it holds against the sampling noise of the next run. A
    p99 objective is not suggested from fewer than 100 samples. ``error_rate``: the
    worst step's failed share or, with few failures, the rule-of-three upper bound
    3/N, × headroom.
    """
    if headroom < 1:
        raise UsageError(f"headroom must be at least 1 (got {headroom})")
    doc = report.to_dict() if isinstance(report, Report) else report
    metrics = doc.get("metrics") or {}
    out: list[SloSuggestion] = []
    for kind in SLO_KINDS.values():
        items = [
            o for o in observations(metrics, kind, pool_concurrency=pool_concurrency) if o.operating
        ]
        if kind.kind == "error_rate":
            if not items:
                continue
            requests = sum(o.n for o in items)
            failed = sum(round(o.value * o.n) for o in items)
            worst_step = max(o.value for o in items)
            upper = max(worst_step, 3 / requests)
            value = min(1.0, nice_ceil(upper * headroom))
            basis = (
                f"{failed} failures in {requests} requests over {len(items)} pool step(s) "
                f"within the operating load; max(worst step {worst_step:.2g}, rule of three "
                f"{3 / requests:.2g}) × {headroom:g}"
            )
            out.append(
                SloSuggestion(
                    kind.key, value, failed / requests, "pool.*.error_rate", requests, basis
                )
            )
            continue
        if not items:
            continue
        q = float(kind.stat[1:]) if kind.stat else 95.0
        if q >= 99 and max(o.n for o in items) < 100:
            continue  # a p99 of fewer than 100 samples is mostly the maximum
        bounds = [
            (max(o.value, percentile_upper_bound(o.samples, q)) if o.samples else o.value, o)
            for o in items
        ]
        bound, worst = max(bounds, key=lambda b: b[0])
        value = nice_ceil(bound * headroom)
        basis = (
            f"worst {kind.stat} {worst.value:.3g} ms of {len(items)} distribution(s) "
            f"({worst.metric}, n={worst.n}); 95% upper bound {bound:.3g} ms × {headroom:g}"
        )
        out.append(SloSuggestion(kind.key, value, worst.value, worst.metric, worst.n, basis))
    return out


def _toml_number(value: float) -> str:
    if value >= 1 and float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"


def suggestions_toml(suggestions: Sequence[SloSuggestion], source: str = "") -> str:
    """A ``[tool.dbprobe.slo]`` snippet to paste into pyproject.toml, one comment per key."""
    lines = [
        "# Suggested by `dbprobe slo suggest`"
        + (f" from {source}" if source else "")
        + ": observed × headroom, rounded up.",
        "[tool.dbprobe.slo]",
    ]
    if not suggestions:
        lines.append("# (the report has no measurement an SLO applies to)")
    for s in suggestions:
        lines.append(f"{s.key} = {_toml_number(s.value)}  # {s.basis}")
    return "\n".join(lines) + "\n"


def slo_keys() -> Iterable[str]:
    return SLO_KINDS.keys()
