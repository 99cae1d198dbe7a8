"""Compare two ``dbprobe.report/1`` documents: new and resolved findings, metric
regressions decided from the raw samples, and warnings when the runs are not comparable.

Pure: takes the two parsed JSON documents, returns a :class:`Comparison`.

The statistical design (docs/reports.md, "How compare decides"):

- only the **headline** checks gate by default: each cold-start driver's total p95, the
  query-latency p95 and the throughput (``throughput_qps``) of every pool step within
  the pool's capacity, and the failed share (timeouts and errors) of every pool step.
  Every other metric is shown as information, never fails the comparison; a user's
  GLOB threshold (``-t "pool.*.acquire_wait:p99:50%"``) or ``--gate all`` makes more
  checks gate. ``max``, ``audit.*`` and checks with fewer than ten samples a side never
  gate;
- each check tests "worse by more than its limit" (not "different"): a one-sided
  bootstrap test of the ratio against 1 + limit — resampling blocks of neighbouring
  samples when the samples are in time order — or, for failed shares, an
  Agresti–Caffo two-proportion test against the margin in percentage points;
- the p-values of the gating checks are corrected together with Holm's method, so the
  chance that noise fails a comparison is at most ``alpha`` (5%) however many checks
  there are; the informational checks are corrected as a family of their own;
- run-to-run variation a single run per side cannot show (the machine's load) is what
  the limits absorb: a shift smaller than the limit never fails;
- reports from different machines: timing checks do not gate (a warning says so)
  unless ``same_machine``; findings still do.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from dbprobe.compare.checks import (
    SHARE_UNIT,
    MetricChange,
    MetricCheck,
    build_checks,
    resolve_checks,
)
from dbprobe.compare.stats import (
    MIN_SAMPLES,
    holm,
    log_bounds,
    mann_whitney_u,
    proportion_test,
    ratio_test,
    runs_test,
)
from dbprobe.errors import UsageError
from dbprobe.report.model import TIME_ORDER, Finding, Severity
from dbprobe.report.views import NOT_DRIVERS, is_rate, iter_distributions, num, pool_view

COMPARE_SCHEMA_ID = "dbprobe.compare/1"
ALPHA = 0.05
"""Family-wise error rate of the gate: the most a comparison of two runs of the same
code may fail by chance (Holm's correction over the gating checks)."""
GATE_MODES = ("headline", "all")


@dataclasses.dataclass(frozen=True)
class RunNoise:
    """How much two runs of the same code on the same machine differ beyond the
    sampling noise inside each run — the machine's load changing between runs, which
    one run per side cannot show. Used only when a side has a single run; with several
    runs a side it is measured instead (per-run summaries).

    coldstart, latency, throughput: standard deviation of log(NEW / BASE) for cold-start
    timings, other latencies and rates (0.4 ≈ "a factor of 1.5 either way is
    ordinary"); failed: standard deviation of the difference of failed shares (0.02 = 2
    points). Defaults measured between back-to-back runs on shared 2-core machines
    under other test suites' load (docs/reports.md: 0.33 for cold-start p95, 0.52–0.85
    for pool latency p95, 0.14–0.39 for pool throughput, none beyond the binomial for
    failed shares), rounded up; ``--run-noise`` sets them for a quieter machine.
    """

    coldstart: float = 0.35
    latency: float = 0.85
    throughput: float = 0.40
    failed: float = 0.02

    def for_check(self, path: str, stat: str) -> float:
        if stat == "failed":
            return self.failed
        if path.startswith("coldstart."):
            return self.coldstart
        if stat == "throughput":
            return self.throughput
        return self.latency

    @classmethod
    def parse(cls, specs: Sequence[str]) -> RunNoise:
        """``--run-noise`` values: ``10%`` (every timing kind: a factor of 1.1),
        ``coldstart=30%``, ``latency=50%``, ``throughput=15%``, ``failed=1%`` (points);
        :class:`UsageError` on anything else."""
        values: dict[str, float] = {}
        for spec in specs:
            kind, sep, pct = spec.rpartition("=")
            text = pct.strip()
            if not text.endswith("%"):
                raise UsageError(f"bad --run-noise {spec!r}: expected N% or KIND=N%")
            try:
                fraction = float(text[:-1]) / 100
            except ValueError:
                raise UsageError(f"bad --run-noise {spec!r}: expected N% or KIND=N%") from None
            if fraction < 0 or not math.isfinite(fraction):
                raise UsageError(f"bad --run-noise {spec!r}: must be 0% or more")
            kinds = [kind.strip()] if sep else ["coldstart", "latency", "throughput"]
            for k in kinds:
                if k not in ("coldstart", "latency", "throughput", "failed"):
                    raise UsageError(
                        f"bad --run-noise {spec!r}: unknown kind {k!r} "
                        "(coldstart, latency, throughput, failed)"
                    )
                values[k] = fraction if k == "failed" else math.log1p(fraction)
        return dataclasses.replace(cls(), **values)


# environment facts of the machine itself: timings from two of these do not compare
_MACHINE_FACTS = (
    ("hostname", "machine (hostname)"),
    ("machine", "CPU architecture"),
    ("cpus", "CPU count"),
)
# facts of the software around the probe: worth a warning, the timings still gate
_SOFTWARE_FACTS = (
    ("python", "Python version"),
    ("implementation", "Python implementation"),
)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Which report a side of the comparison is: where it came from and when it ran."""

    source: str
    command: str
    started_at: str
    version: str
    commit: str | None
    server_version: str | None

    @classmethod
    def of(cls, doc: Mapping[str, Any], source: str) -> RunInfo:
        env = doc.get("environment") or {}
        commit = env.get("commit")
        commit_id = commit.get("id") if isinstance(commit, Mapping) else commit
        return cls(
            source=source,
            command=str(doc.get("command") or ""),
            started_at=str(doc.get("started_at") or ""),
            version=str((doc.get("tool") or {}).get("version") or ""),
            commit=str(commit_id) if commit_id else None,
            server_version=(doc.get("target") or {}).get("server_version"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- what can be compared ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One comparable metric of a report.

    dist: the serialised distribution (``None`` for a failed share); qps: a pool step's
    ``throughput_qps`` (the figure its throughput check reads); failed/requests: a
    pool step's failed requests and all its requests (failed shares); headline: the
    statistics of this metric that gate by default.
    """

    path: str
    unit: str
    dist: Mapping[str, Any] | None = None
    qps: float | None = None
    failed: int = 0
    requests: int = 0
    headline: frozenset[str] = frozenset()

    @property
    def n(self) -> int:
        if self.unit == SHARE_UNIT:
            return self.requests
        return int((self.dist or {}).get("n") or 0)


def measurements(doc: Mapping[str, Any]) -> dict[str, Measurement]:
    """Every metric of a report ``dbprobe compare`` can check, by dotted path: each
    distribution, and each pool step's failed share (``pool.<pool>.steps[c=N].failed``).
    """
    metrics = doc.get("metrics") or {}
    steps: dict[str, tuple[bool, float]] = {}
    out: dict[str, Measurement] = {}
    for pool in pool_view(metrics):
        for step in pool.steps:
            prefix = f"pool.{pool.name}.steps{step.key}"
            steps[prefix] = (pool.within_capacity(step), step.throughput_qps)
            if step.requests:
                out[f"{prefix}.failed"] = Measurement(
                    f"{prefix}.failed",
                    SHARE_UNIT,
                    failed=step.error_count,
                    requests=step.requests,
                    headline=frozenset({"failed"}),
                )
    for path, dist in iter_distributions(metrics):
        unit = str(dist.get("unit") or "ms")
        headline: frozenset[str] = frozenset()
        qps: float | None = None
        parts = path.split(".")
        is_total = len(parts) == 3 and parts[0] == "coldstart" and parts[2] == "total"
        if is_total and parts[1] not in NOT_DRIVERS:
            headline = frozenset({"p95"})
        prefix, _, leaf = path.rpartition(".")
        if prefix in steps:
            within, step_qps = steps[prefix]
            if leaf == "query_latency" and within:
                headline = frozenset({"p95"})
            if leaf == "throughput":
                qps = step_qps if math.isfinite(step_qps) else None
                if within:
                    headline = frozenset({"throughput"})
        out[path] = Measurement(path, unit, dist=dist, qps=qps, headline=headline)
    return out


def _samples(dist: Mapping[str, Any] | None) -> list[float]:
    raw = (dist or {}).get("samples")
    if not isinstance(raw, list):
        return []
    return [float(v) for v in raw if isinstance(v, (int, float)) and math.isfinite(v)]


def _point(m: Measurement, stat: str, samples: Sequence[float]) -> float:
    """The figure a check compares: the distribution's own percentile (computed from
    every sample by the probe), the mean, or a pool step's throughput_qps."""
    dist = m.dist or {}
    if stat == "throughput":
        if m.qps is not None:
            return m.qps
        stat = "mean"
    value = dist.get(stat)
    if isinstance(value, (int, float)):
        return float(value)
    if samples and stat.startswith("p"):
        from dbprobe.compare.stats import percentile_sorted

        return percentile_sorted(sorted(samples), float(stat[1:]))
    if samples and stat == "mean":
        return sum(samples) / len(samples)
    return math.nan


# --- the comparison ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Task:
    path: str
    stat: str
    check: MetricCheck
    gate: bool
    base: Measurement
    new: Measurement
    base_runs: tuple[Measurement, ...] = ()
    new_runs: tuple[Measurement, ...] = ()
    run_noise: float = 0.0


def _summary(m: Measurement, stat: str) -> float:
    """One run's figure for a per-run comparison: the share, or the statistic."""
    if stat == "failed":
        return m.failed / m.requests if m.requests else math.nan
    return _point(m, stat, _samples(m.dist))


def _iterations(family: int, alpha: float) -> int:
    """Bootstrap replicates: enough that Holm's smallest threshold (alpha / family) is
    reachable with room to spare."""
    return max(2000, math.ceil(4 * family / alpha))


def _run(task: _Task, iterations: int) -> MetricChange:
    check = task.check
    limit = check.threshold or 0.0
    if len(task.base_runs) + len(task.new_runs) > 2:
        return _run_per_run(task)
    if task.stat == "failed":
        b, n = task.base, task.new
        t = proportion_test(
            b.failed, b.requests, n.failed, n.requests, margin=limit, run_noise=task.run_noise
        )
        ratio = (
            t.share_new / t.share_base if t.share_base else (1.0 if not t.share_new else math.inf)
        )
        return MetricChange(
            metric=task.path,
            stat="failed",
            unit=SHARE_UNIT,
            higher_is_better=False,
            base=t.share_base,
            new=t.share_new,
            ratio=ratio,
            ci_low=t.low,
            ci_high=t.high,
            p_value=math.nan,
            n_base=b.requests,
            n_new=n.requests,
            threshold=limit,
            check=check.spec,
            method="proportion",
            verdict="unchanged",
            gate=task.gate,
            p_worse=t.p_worse,
            p_better=t.p_better,
            counts=(b.failed, b.requests, n.failed, n.requests),
        )
    unit = task.new.unit or task.base.unit
    higher = is_rate(unit)
    a, b_ = _samples(task.base.dist), _samples(task.new.dist)
    va, vb = _point(task.base, task.stat, a), _point(task.new, task.stat, b_)
    ratio = vb / va if va else (1.0 if vb == va else math.inf)
    low = high = p_value = p_worse = p_better = math.nan
    method = "point"
    gate = task.gate
    if len(a) >= MIN_SAMPLES and len(b_) >= MIN_SAMPLES and task.stat != "max":
        q = None if task.stat in ("mean", "throughput") else float(task.stat[1:])
        scale = (1.0, 1.0)
        if task.stat == "throughput":
            mean_a, mean_b = sum(a) / len(a), sum(b_) / len(b_)
            if mean_a > 0 and mean_b > 0 and math.isfinite(va) and math.isfinite(vb):
                scale = (va / mean_a, vb / mean_b)
        test = ratio_test(
            a,
            b_,
            q=q,
            limit=limit,
            higher_is_better=higher,
            base_time_ordered=(task.base.dist or {}).get("order") == TIME_ORDER,
            new_time_ordered=(task.new.dist or {}).get("order") == TIME_ORDER,
            iterations=iterations,
            scale=scale,
            run_noise=task.run_noise,
        )
        low, high, p_worse, p_better = test.low, test.high, test.p_worse, test.p_better
        method = test.method
        p_value = mann_whitney_u(a, b_).p_value
    else:
        gate = False  # too few samples to tell noise from change: information only
    return MetricChange(
        metric=task.path,
        stat=task.stat,
        unit=unit,
        higher_is_better=higher,
        base=va,
        new=vb,
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        n_base=task.base.n,
        n_new=task.new.n,
        threshold=limit,
        check=check.spec,
        method=method,
        verdict="unchanged",
        gate=gate,
        p_worse=p_worse,
        p_better=p_better,
    )


def _run_per_run(task: _Task) -> MetricChange:
    """A check decided from one summary per run (several runs on a side)."""
    limit = task.check.threshold or 0.0
    share = task.stat == "failed"
    unit = SHARE_UNIT if share else (task.new.unit or task.base.unit)
    higher = False if share else is_rate(unit)
    xs = [_summary(m, task.stat) for m in task.base_runs]
    ys = [_summary(m, task.stat) for m in task.new_runs]
    xs = [x for x in xs if math.isfinite(x)]
    ys = [y for y in ys if math.isfinite(y)]
    mean_b = sum(xs) / len(xs) if xs else math.nan
    mean_n = sum(ys) / len(ys) if ys else math.nan
    nan = math.nan
    test = None
    if share:
        test = runs_test(xs, ys, worse=limit, better=-limit, higher_is_better=False)
    elif xs and ys and all(v > 0 for v in (*xs, *ys)):
        worse, better = log_bounds(limit, higher)
        logs_b = [math.log(x) for x in xs]
        logs_n = [math.log(y) for y in ys]
        test = runs_test(logs_b, logs_n, worse=worse, better=better, higher_is_better=higher)
        mean_b = math.exp(sum(logs_b) / len(logs_b))  # geometric means
        mean_n = math.exp(sum(logs_n) / len(logs_n))
    if share:
        ratio = mean_n / mean_b if mean_b else (1.0 if not mean_n else math.inf)
    else:
        ratio = mean_n / mean_b if mean_b else math.inf
    low = high = p_worse = p_better = nan
    if test is not None:
        p_worse, p_better = test.p_worse, test.p_better
        low, high = (test.low, test.high) if share else (math.exp(test.low), math.exp(test.high))
    counts = None
    if share:
        counts = (
            sum(m.failed for m in task.base_runs),
            sum(m.requests for m in task.base_runs),
            sum(m.failed for m in task.new_runs),
            sum(m.requests for m in task.new_runs),
        )
    return MetricChange(
        metric=task.path,
        stat=task.stat,
        unit=unit,
        higher_is_better=higher,
        base=mean_b,
        new=mean_n,
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        p_value=nan,
        n_base=len(xs),
        n_new=len(ys),
        threshold=limit,
        check=task.check.spec,
        method="runs" if test is not None else "point",
        verdict="unchanged",
        gate=task.gate and test is not None,
        p_worse=p_worse,
        p_better=p_better,
        counts=counts,
    )


def _verdicts(changes: list[MetricChange], alpha: float) -> list[MetricChange]:
    """Holm-adjust each family (gating, informational) and set every verdict."""
    out = list(changes)
    for family in (True, False):
        idx = [i for i, c in enumerate(out) if c.gate is family]
        worse = holm([out[i].p_worse for i in idx])
        better = holm([out[i].p_better for i in idx])
        for k, i in enumerate(idx):
            c = out[i]
            if c.method == "point":
                verdict = "inconclusive" if c.beyond_limit else "unchanged"
            elif worse[k] <= alpha:
                verdict = "regression" if c.gate else "worse"
            elif better[k] <= alpha:
                verdict = "improvement"
            elif c.beyond_limit:
                verdict = "inconclusive"
            else:
                verdict = "unchanged"
            out[i] = dataclasses.replace(c, verdict=verdict, p_adjusted=worse[k])
    return out


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of ``dbprobe compare``.

    new_findings: in NEW, not in BASE (matched by :meth:`Finding.identity`, as a
    multiset, ties paired by line); resolved: in BASE, not in NEW; changes: every check
    on every metric present in both; skipped: metrics present in both but empty on a
    side (n = 0); fail_on: the severity at or above which a new finding fails; alpha:
    the gate's family-wise error rate; gate: ``headline`` or ``all``.
    """

    base: RunInfo
    new: RunInfo
    new_findings: list[Finding]
    resolved: list[Finding]
    unchanged_findings: int
    changes: list[MetricChange]
    only_in_base: list[str]
    only_in_new: list[str]
    warnings: list[str]
    checks: list[str]
    fail_on: str
    skipped: list[str] = dataclasses.field(default_factory=list)
    alpha: float = ALPHA
    gate: str = "headline"
    runs: tuple[int, int] = (1, 1)
    run_noise: RunNoise = dataclasses.field(default_factory=RunNoise)

    @property
    def regressions(self) -> list[MetricChange]:
        return [c for c in self.changes if c.verdict == "regression"]

    @property
    def gating(self) -> list[MetricChange]:
        return [c for c in self.changes if c.gate]

    @property
    def failing_findings(self) -> list[Finding]:
        if self.fail_on == "never":
            return []
        limit = Severity.parse(self.fail_on).rank
        return [f for f in self.new_findings if f.severity.rank >= limit]

    @property
    def exit_code(self) -> int:
        """1 on any regression of a gating check or new finding at or above ``fail_on``,
        else 0."""
        return 1 if self.regressions or self.failing_findings else 0

    def to_dict(self) -> dict[str, Any]:
        verdicts = Counter(c.verdict for c in self.changes)
        return {
            "schema": COMPARE_SCHEMA_ID,
            "base": self.base.to_dict(),
            "new": self.new.to_dict(),
            "result": "fail" if self.exit_code else "pass",
            "fail_on": self.fail_on,
            "checks": list(self.checks),
            "gating": {
                "mode": self.gate,
                "alpha": self.alpha,
                "checks": len(self.gating),
                "correction": "holm",
                "runs": {"base": self.runs[0], "new": self.runs[1]},
                "run_noise": dataclasses.asdict(self.run_noise),
            },
            "findings": {
                "new": [f.to_dict() for f in self.new_findings],
                "resolved": [f.to_dict() for f in self.resolved],
                "unchanged": self.unchanged_findings,
                "failing": len(self.failing_findings),
            },
            "metrics": {
                "regressions": verdicts.get("regression", 0),
                "worse": verdicts.get("worse", 0),
                "improvements": verdicts.get("improvement", 0),
                "inconclusive": verdicts.get("inconclusive", 0),
                "unchanged": verdicts.get("unchanged", 0),
                "changes": [c.to_dict() for c in self.changes],
                "skipped": list(self.skipped),
                "only_in_base": list(self.only_in_base),
                "only_in_new": list(self.only_in_new),
            },
            "warnings": list(self.warnings),
        }


# --- findings ----------------------------------------------------------------------


def diff_findings(
    base: Sequence[Finding], new: Sequence[Finding]
) -> tuple[list[Finding], list[Finding], int]:
    """``(new, resolved, unchanged count)`` matched by identity (rule, test, file,
    table, fingerprint; never the message or the line), counting duplicates. Among
    findings of one identity, those at the same line pair first, then the rest in line
    order, so a finding that moved by a few lines stays the same finding and only a
    real extra one is new."""
    groups: dict[tuple[str, str], tuple[list[Finding], list[Finding]]] = {}
    for f in base:
        groups.setdefault(f.identity(), ([], []))[0].append(f)
    for f in new:
        groups.setdefault(f.identity(), ([], []))[1].append(f)
    fresh: list[Finding] = []
    resolved: list[Finding] = []
    matched = 0
    for olds, news in groups.values():
        left_old = list(olds)
        left_new: list[Finding] = []
        for f in news:  # the same line first
            same = next((o for o in left_old if o.location == f.location), None)
            if same is not None:
                left_old.remove(same)
                matched += 1
            else:
                left_new.append(f)
        left_old.sort(key=lambda f: f.line or 0)
        left_new.sort(key=lambda f: f.line or 0)
        pairs = min(len(left_old), len(left_new))
        matched += pairs
        if len(left_new) > pairs:  # which are extra: those farthest from the old lines
            fresh += _unpaired(left_new, left_old)
        elif len(left_old) > pairs:
            resolved += _unpaired(left_old, left_new)
    order = {id(f): i for i, f in enumerate(new)}
    fresh.sort(key=lambda f: order.get(id(f), 0))
    return fresh, resolved, matched


def _unpaired(more: list[Finding], fewer: list[Finding]) -> list[Finding]:
    """The findings of ``more`` left over when each of ``fewer`` takes its nearest by
    line (greedy, in line order)."""
    left = list(more)
    for f in fewer:
        nearest = min(left, key=lambda g: abs((g.line or 0) - (f.line or 0)))
        left.remove(nearest)
    return left


# --- warnings ----------------------------------------------------------------------


def machine_differs(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The machine facts (hostname, CPU architecture, CPU count) that differ."""
    eb, en = base.get("environment") or {}, new.get("environment") or {}
    out = []
    for key, label in _MACHINE_FACTS:
        a, b = eb.get(key), en.get(key)
        if a is not None and b is not None and a != b:
            out.append(f"{label} differs: {a} → {b}")
    return out


def environment_warnings(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per fact that differs between the runs and can make timings differ."""
    out = [f"{line}; timings may not be comparable" for line in machine_differs(base, new)]
    eb, en = base.get("environment") or {}, new.get("environment") or {}
    for key, label in _SOFTWARE_FACTS:
        a, b = eb.get(key), en.get(key)
        if a is not None and b is not None and a != b:
            out.append(f"{label} differs: {a} → {b}; timings may not be comparable")
    sa = (base.get("target") or {}).get("server_version")
    sb = (new.get("target") or {}).get("server_version")
    if sa and sb and sa != sb:
        out.append(f"PostgreSQL version differs: {sa} → {sb}")
    va = (base.get("tool") or {}).get("version")
    vb = (new.get("tool") or {}).get("version")
    if va and vb and va != vb:
        out.append(f"dbprobe version differs: {va} → {vb}")
    ca, cb = base.get("command"), new.get("command")
    if ca and cb and ca != cb:
        out.append(f"the reports come from different commands: {ca} → {cb}")
    return out


_POOL_PARAMETERS = (
    "class",
    "size",
    "overflow",
    "capacity",
    "timeout_s",
    "think_ms",
    "autocommit",
    "workload",
)
_COLDSTART_PARAMETERS = ("transport", "sslmode", "sslnegotiation", "auth_method", "address")


def probe_parameters(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a probe ran with, by name (``pool.sqlalchemy.timeout_s``,
    ``coldstart.samples``, ``coldstart.psycopg.sslmode``, ``fixture.size``): what must be
    the same for two runs' timings to compare."""
    metrics = doc.get("metrics") or {}
    out: dict[str, Any] = {}
    for pool in pool_view(metrics):
        for key in _POOL_PARAMETERS:
            value = pool.extra.get(key)
            if value is not None and not isinstance(value, (dict, list)):
                out[f"pool.{pool.name}.{key}"] = value
        if pool.steps:
            window = num(pool.steps[0].raw.get("window_s"))
            if math.isfinite(window):
                out[f"pool.{pool.name}.step_seconds"] = round(window, 2)
    cold = metrics.get("coldstart")
    if isinstance(cold, Mapping):
        meta = cold.get("_meta")
        sampling = meta.get("sampling") if isinstance(meta, Mapping) else None
        if isinstance(sampling, Mapping):
            for key in ("samples", "idle_ms", "warmup_rounds"):
                if sampling.get(key) is not None:
                    out[f"coldstart.{key}"] = sampling[key]
        for name, node in cold.items():
            if not isinstance(node, Mapping) or str(name).startswith("_"):
                continue
            dmeta = node.get("_meta")
            if not isinstance(dmeta, Mapping):
                continue
            for key in _COLDSTART_PARAMETERS:
                value = dmeta.get(key)
                if value is not None and not isinstance(value, (dict, list)):
                    out[f"coldstart.{name}.{key}"] = value
    fixture = metrics.get("fixture")
    if isinstance(fixture, Mapping) and fixture.get("size") is not None:
        out["fixture.size"] = fixture["size"]
    return out


def parameter_warnings(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per probe parameter that differs between the runs."""
    pb, pn = probe_parameters(base), probe_parameters(new)
    out = []
    for key in sorted(set(pb) & set(pn)):
        if key.endswith(".address"):
            continue  # every throwaway server listens on a new port
        if pb[key] != pn[key]:
            out.append(
                f"probe parameter {key} differs: {pb[key]!r} → {pn[key]!r}; "
                "the runs measured different things"
            )
    return out


# --- entry point -------------------------------------------------------------------


def compare_documents(
    base: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    checks: Sequence[MetricCheck] | None = None,
    fail_on: str = "error",
    base_source: str = "BASE",
    new_source: str = "NEW",
    gate: str = "headline",
    same_machine: bool = False,
    alpha: float = ALPHA,
    run_noise: RunNoise | None = None,
) -> Comparison:
    """Compare two parsed reports (``dbprobe.report/1`` dicts); see :func:`compare_runs`."""
    return compare_runs(
        [base],
        [new],
        checks=checks,
        fail_on=fail_on,
        base_sources=[base_source],
        new_sources=[new_source],
        gate=gate,
        same_machine=same_machine,
        alpha=alpha,
        run_noise=run_noise,
    )


def compare_runs(
    bases: Sequence[Mapping[str, Any]],
    news: Sequence[Mapping[str, Any]],
    *,
    checks: Sequence[MetricCheck] | None = None,
    fail_on: str = "error",
    base_sources: Sequence[str] = (),
    new_sources: Sequence[str] = (),
    gate: str = "headline",
    same_machine: bool = False,
    alpha: float = ALPHA,
    run_noise: RunNoise | None = None,
) -> Comparison:
    """Compare one or more runs of BASE with one or more runs of NEW.

    With one run a side, each check tests the two runs' samples (bootstrap within the
    runs, plus ``run_noise`` for the variation between runs they cannot show); with
    several runs on a side, it tests one summary per run (Student's t on the measured
    run-to-run variation). Findings and the run facts come from the last report of
    each side. checks: default :func:`build_checks` with no user specs; gate:
    ``headline`` (the headline checks and the user's GLOB checks gate) or ``all``
    (every check with enough samples, ``audit.*`` and ``max`` aside); same_machine:
    let timing checks gate even when the machine facts differ; alpha: the gate's
    family-wise error rate. Raises :class:`UsageError` when the reports have nothing
    to compare (different commands and no metric in common).
    """
    if gate not in GATE_MODES:
        raise UsageError(f"unknown gate {gate!r} (choose {', '.join(GATE_MODES)})")
    if not bases or not news:
        raise UsageError("nothing to compare: a side has no report")
    checks = list(checks) if checks is not None else build_checks(())
    noise = run_noise or RunNoise()
    base, new = bases[-1], news[-1]
    base_source = base_sources[-1] if base_sources else "BASE"
    new_source = new_sources[-1] if new_sources else "NEW"
    all_b = [measurements(d) for d in bases]
    all_n = [measurements(d) for d in news]
    mb, mn = all_b[-1], all_n[-1]
    common = [p for p in mn if p in mb]
    cb, cn = str(base.get("command") or ""), str(new.get("command") or "")
    if not common and cb != cn:
        raise UsageError(
            f"nothing to compare: BASE is a {cb or 'report'} report and NEW a "
            f"{cn or 'report'} report, with no metric in common"
        )
    fb = [Finding.from_dict(f) for f in base.get("findings") or []]
    fn = [Finding.from_dict(f) for f in new.get("findings") or []]
    fresh, resolved, unchanged = diff_findings(fb, fn)
    warnings = environment_warnings(base, new) + parameter_warnings(base, new)
    for label, docs in (("BASE", bases), ("NEW", news)):
        for other in docs[:-1]:
            warnings += [f"{label} runs differ: {w}" for w in parameter_warnings(other, docs[-1])]
    cross = any(machine_differs(x, y) for x in bases for y in news) and not same_machine
    tasks: list[_Task] = []
    skipped: list[str] = []
    for path in common:
        b, n = mb[path], mn[path]
        unit = n.unit or b.unit
        if b.n == 0 or n.n == 0:
            skipped.append(path)
            continue
        runs_b = tuple(m[path] for m in all_b if path in m and m[path].n)
        runs_n = tuple(m[path] for m in all_n if path in m and m[path].n)
        for stat, check in resolve_checks(path, unit, checks):
            gates = stat in b.headline or check.explicit or gate == "all"
            gates = gates and stat != "max" and not path.startswith("audit.") and not cross
            tasks.append(
                _Task(path, stat, check, gates, b, n, runs_b, runs_n, noise.for_check(path, stat))
            )
    family = sum(1 for t in tasks if t.gate)
    gated_iterations = _iterations(family, alpha)
    changes = [_run(t, gated_iterations if t.gate else 1000) for t in tasks]
    changes = _verdicts(changes, alpha)
    order = {v: i for i, v in enumerate(("regression", "worse", "inconclusive", "improvement"))}
    changes.sort(key=lambda c: (order.get(c.verdict, 4), not c.gate, c.metric, c.stat))
    if cross:
        worse = sum(1 for c in changes if c.verdict == "worse")
        warnings.append(
            "the reports come from different machines: metric checks do not gate "
            f"({worse} got worse beyond their limits; --same-machine makes them gate); "
            "new findings still do"
        )
    few = [c for c in changes if c.method == "point" and c.stat != "max"]
    if few:
        warnings.append(
            f"{len(few)} check(s) shown on point values only, never gating: raw samples "
            f"missing or fewer than {MIN_SAMPLES} a side, so noise could not be assessed"
        )
    if len(bases) == 1 and len(news) == 1 and changes:
        warnings.append(
            "one run a side: the variation between runs is assumed (--run-noise), not "
            "measured; give several runs a side (BASE and NEW as comma-separated lists) "
            "to measure it"
        )
    if not changes and not common:
        warnings.append("no metric present in both reports: only the findings were compared")
    return Comparison(
        base=RunInfo.of(base, base_source),
        new=RunInfo.of(new, new_source),
        new_findings=sorted(fresh, key=lambda f: (-f.severity.rank, f.rule)),
        resolved=sorted(resolved, key=lambda f: (-f.severity.rank, f.rule)),
        unchanged_findings=unchanged,
        changes=changes,
        only_in_base=sorted(set(mb) - set(mn)),
        only_in_new=sorted(set(mn) - set(mb)),
        warnings=warnings,
        checks=[c.spec for c in checks],
        fail_on=fail_on,
        skipped=sorted(skipped),
        alpha=alpha,
        gate=gate,
        runs=(len(bases), len(news)),
        run_noise=noise,
    )
