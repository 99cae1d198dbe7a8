"""Verdicts on a pool stress run, from its measured steps: the saturation knee, pool
exhaustion, graceful degradation, a client-bound load generator, sizing and the fleet's
connection budget, soak growth; and the findings they raise.

Pure: plain data in (the ``metrics["pool"][<pool>]`` tree of a report, read through the
typed views below), verdicts and findings out. Thresholds are named constants, and each
verdict says why in words.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from dbprobe.analysis.trend import Growth, growth, mann_kendall
from dbprobe.compare.stats import MIN_SAMPLES, mann_whitney_u
from dbprobe.report.model import Distribution, Finding, Severity
from dbprobe.rules import RULES

KNEE_SHARE = 0.9
"""The knee is the lowest concurrency reaching this share of the peak throughput."""
STILL_RISING = 1.1
"""Throughput at the top step above this multiple of every lower step: not saturated."""
CLIENT_BOUND_CPU = 0.85
"""Client CPU (share of one core) at which the load generator is the bottleneck."""
HOST_BOUND_CPU = 0.9
"""Share of all the client machine's cores busy at which the machine itself is the
limit: the client (and a server on the same machine) compete for CPU."""
POOL_BUSY_SHARE = 0.8
"""Little's law: throughput × hold time at least this share of the capacity means the
pool's connections were all in use."""
HOLD_OUTSIDE_QUERY = 0.5
"""A connection held mostly outside its query (think time, application work): the query
is less than this share of the hold time."""
OVERSIZED_ALPHA = 0.05
"""Significance of the per-interval throughput drop from the knee to the capacity step
that ``pool-oversized`` needs (one-sided Mann–Whitney)."""
OPEN_LOOP_SHORTFALL = 0.9
"""An open-loop step completing less than this share of its offered rate fell behind."""
TREND_ALPHA = 0.01
EXHAUSTION_MULTIPLE = 2
"""Exhaustion at or below this multiple of the capacity is an error, above a warning."""
OVERSIZED_RATIO = 1.5
"""A pool this many times larger than its (server-limited) knee is oversized."""

SOAK_MIN_GROWTH: Mapping[str, float] = {
    "rss_bytes": 8 * 1024 * 1024,
    "open_fds": 3,
    "checked_out": 2,
    "server_backends": 2,
}
"""Least growth over a soak that counts: 8 MiB of memory, 3 descriptors, 2 connections."""


def _f(value: Any) -> float:
    return math.nan if value is None else float(value)


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _dist(d: Any, key: str) -> float:
    """A field of a distribution, whether a :class:`Distribution` or its JSON form."""
    if d is None:
        return math.nan
    if isinstance(d, Distribution):
        return float(getattr(d, key))
    return _f(d.get(key))


@dataclasses.dataclass(frozen=True)
class StepView:
    """The numbers of one step the verdicts use (milliseconds, requests/s)."""

    concurrency: int
    offered_rate: float | None
    throughput_qps: float
    completed: int
    wait_p50: float
    wait_p95: float
    wait_p99: float
    wait_max: float
    response_p50: float
    response_p99: float
    timeouts: int
    timeout_wait_max: float
    errors: Mapping[str, int]
    client_cpu: float
    interval_wait_p50: tuple[float, ...]
    interval_response_p50: tuple[float, ...]
    unfinished_workers: int = 0
    backlog: int = 0
    late: int = 0
    host_cpu_busy: float | None = None
    query_p50: float = math.nan
    throughput_samples: tuple[float, ...] = ()
    pool_refusals: int = 0
    censored: int = 0
    window_s: float = math.nan

    @property
    def hold_ms(self) -> float:
        """Median time a request held its connection (response minus acquire wait)."""
        return self.response_p50 - self.wait_p50

    @property
    def closed_loop(self) -> bool:
        return self.offered_rate is None

    @property
    def requests(self) -> int:
        return self.completed + self.timeouts + sum(self.errors.values())

    @classmethod
    def from_metrics(cls, step: Mapping[str, Any]) -> StepView:
        wait = step.get("acquire_wait")
        response = step.get("response_time")
        rate = step.get("offered_rate")
        return cls(
            concurrency=int(step["concurrency"]),
            offered_rate=None if rate is None else float(rate),
            throughput_qps=float(step.get("throughput_qps") or 0.0),
            completed=int(step.get("completed") or 0),
            wait_p50=_dist(wait, "p50"),
            wait_p95=_dist(wait, "p95"),
            wait_p99=_dist(wait, "p99"),
            wait_max=_dist(wait, "max"),
            response_p50=_dist(response, "p50"),
            response_p99=_dist(response, "p99"),
            timeouts=int(step.get("timeouts") or 0),
            timeout_wait_max=_dist(step.get("timeout_wait"), "max"),
            errors=dict(step.get("errors") or {}),
            client_cpu=float(step.get("client_cpu") or 0.0),
            interval_wait_p50=tuple(_f(v) for v in step.get("interval_wait_p50") or ()),
            interval_response_p50=tuple(_f(v) for v in step.get("interval_response_p50") or ()),
            unfinished_workers=int(step.get("unfinished_workers") or 0),
            backlog=int(step.get("backlog") or 0),
            late=int(step.get("late") or 0),
            host_cpu_busy=None
            if step.get("host_cpu_busy") is None
            else float(step["host_cpu_busy"]),
            query_p50=_dist(step.get("query_latency"), "p50"),
            throughput_samples=_samples(step.get("throughput")),
            pool_refusals=pool_refusals(step.get("pool_stats")),
            censored=int(step.get("censored") or 0),
            window_s=_f(step.get("window_s")),
        )


def _samples(d: Any) -> tuple[float, ...]:
    if d is None:
        return ()
    raw = d.samples if isinstance(d, Distribution) else d.get("samples")
    return tuple(float(v) for v in raw or ())


def pool_refusals(stats: Mapping[str, Any] | None) -> int:
    """Connection attempts the pool made on its own that failed (psycopg_pool's
    ``connections_errors``: the server refused them, e.g. too many clients); 0 for pools
    that do not count them."""
    if not stats:
        return 0
    try:
        return int(stats.get("connections_errors") or 0)
    except (TypeError, ValueError):
        return 0


@dataclasses.dataclass(frozen=True)
class SpikeView:
    requests: int
    completed: int
    timeouts: int
    errors: Mapping[str, int]
    wait_max: float
    timeout_wait_max: float
    drain_ms: float
    recover_ms: float | None
    unfinished_workers: int

    @classmethod
    def from_metrics(cls, spike: Mapping[str, Any]) -> SpikeView:
        recover = spike.get("recover_ms")
        return cls(
            requests=int(spike.get("requests") or 0),
            completed=int(spike.get("completed") or 0),
            timeouts=int(spike.get("timeouts") or 0),
            errors=dict(spike.get("errors") or {}),
            wait_max=_dist(spike.get("acquire_wait"), "max"),
            timeout_wait_max=_dist(spike.get("timeout_wait"), "max"),
            drain_ms=_f(spike.get("drain_ms")),
            recover_ms=None if recover is None else float(recover),
            unfinished_workers=int(spike.get("unfinished_workers") or 0),
        )


# -- the knee --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Knee:
    """Where throughput stops growing with concurrency.

    concurrency: the knee (None when there is none in the tested range); limited_by:
    ``pool`` (throughput grew until the pool was full: throughput ≈ capacity ÷ hold
    time), ``client`` (the load generator ran out of CPU somewhere on the plateau),
    ``host`` (the client machine's cores were all busy on the plateau: client and a
    local server compete, or the client's machine is saturated), ``server`` (throughput
    flattened with free connections and CPU to spare: the database, its locks or the
    network is the limit); wait_growth_ms: how much the median response time grew from
    the knee to the top step; plateau_client_cpu / plateau_host_busy: the largest client
    CPU (share of a core) and machine busy share over the steps at and above the knee.
    """

    concurrency: int | None
    throughput_qps: float
    peak_qps: float
    peak_concurrency: int | None
    limited_by: str | None
    wait_growth_ms: float
    reason: str
    plateau_client_cpu: float = math.nan
    plateau_host_busy: float | None = None

    def to_metrics(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _pool_plateau(knee: StepView, capacity: int) -> float | None:
    """Busy connections by Little's law (throughput × hold time) at a knee at or past
    the capacity, when the connections were held mostly outside their query (think
    time, application work): the pool, not the server, caps throughput there. None
    otherwise."""
    if knee.concurrency < capacity:
        return None
    hold = knee.hold_ms
    if not hold > 0 or math.isnan(knee.query_p50):
        return None
    busy = knee.throughput_qps * hold / 1000.0
    if busy >= POOL_BUSY_SHARE * capacity and knee.query_p50 < HOLD_OUTSIDE_QUERY * hold:
        return busy
    return None


def find_knee(steps: Sequence[StepView], capacity: int, local_server: bool = False) -> Knee:
    """The saturation knee of the closed-loop steps.

    ``local_server``: the server runs on this machine; it changes only the words: the
    busy-machine check always applies, since the machine measured is the client's.
    What limited the knee is judged over the plateau (every step at and above it), with
    the largest client CPU and machine busy share seen there.
    """
    closed = sorted(
        (s for s in steps if s.closed_loop and s.completed), key=lambda s: s.concurrency
    )
    nan = math.nan
    if len(closed) < 3:
        return Knee(None, nan, nan, None, None, nan, "fewer than three closed-loop steps")
    peak = max(closed, key=lambda s: s.throughput_qps)
    top = closed[-1]
    below = max(s.throughput_qps for s in closed[:-1])
    if peak is top and top.throughput_qps > STILL_RISING * below:
        return Knee(
            None, nan, peak.throughput_qps, peak.concurrency, None, nan,
            f"throughput still rising at concurrency {top.concurrency} "
            f"({top.throughput_qps:.0f} q/s vs {below:.0f} below): not saturated",
        )  # fmt: skip
    knee = next(s for s in closed if s.throughput_qps >= KNEE_SHARE * peak.throughput_qps)
    plateau = [s for s in closed if s.concurrency >= knee.concurrency]
    cpu = max(s.client_cpu for s in plateau)
    hosts = [s.host_cpu_busy for s in plateau if s.host_cpu_busy is not None]
    host = max(hosts) if hosts else None
    busy = _pool_plateau(knee, capacity)
    if busy is not None:
        limited_by = "pool"
    elif cpu >= CLIENT_BOUND_CPU:
        limited_by = "client"
    elif host is not None and host >= HOST_BOUND_CPU:
        limited_by = "host"
    elif knee.concurrency >= capacity:
        limited_by = "pool"
    else:
        limited_by = "server"
    growth_ms = top.response_p50 - knee.response_p50
    if limited_by == "pool" and busy is not None:
        why = (
            f"the pool's {capacity} connections were all busy: each was held "
            f"{knee.hold_ms:.1f} ms (query {knee.query_p50:.1f} ms), and "
            f"{capacity} ÷ {knee.hold_ms:.1f} ms ≈ {capacity / knee.hold_ms * 1000.0:.0f} q/s "
            "(Little's law)"
        )
    elif limited_by == "host":
        where = (
            "client and local server"
            if local_server
            else "the client's machine; the server is elsewhere"
        )
        why = f"{(host or 0.0):.0%} of the machine's CPU was busy on the plateau ({where})"
    else:
        why = {
            "client": f"the load generator used up to {cpu:.2f} of a core on the plateau",
            "pool": f"the pool's {capacity} connections were all busy",
            "server": "connections and client CPU were to spare: the server is the limit",
        }[limited_by]
    return Knee(
        concurrency=knee.concurrency,
        throughput_qps=knee.throughput_qps,
        peak_qps=peak.throughput_qps,
        peak_concurrency=peak.concurrency,
        limited_by=limited_by,
        wait_growth_ms=growth_ms,
        reason=(
            f"throughput reaches {KNEE_SHARE:.0%} of its peak ({peak.throughput_qps:.0f} q/s) "
            f"at concurrency {knee.concurrency} and grows no further while the median "
            f"response time grows {growth_ms:.2f} ms up to concurrency {top.concurrency}; "
            f"{why}"
        ),
        plateau_client_cpu=cpu,
        plateau_host_busy=host,
    )


@dataclasses.dataclass(frozen=True)
class Contention:
    """Whether more connections than the knee cost throughput: the per-interval
    throughput of the knee step against the capacity step (the step at the pool's
    capacity, or the top step below it), one-sided Mann–Whitney.

    significant: the capacity step is lower, at :data:`OVERSIZED_ALPHA`; drop: its
    median throughput as a share below the knee's; None fields when there are too few
    samples or no capacity step past the knee.
    """

    knee_concurrency: int | None
    capacity_concurrency: int | None
    p_value: float
    drop: float
    significant: bool
    reason: str

    def to_metrics(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _median_of(values: Sequence[float]) -> float:
    data = sorted(values)
    if not data:
        return math.nan
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2.0


def judge_contention(steps: Sequence[StepView], knee: Knee, capacity: int) -> Contention:
    """Did the steps past the knee, up to the capacity, serve significantly less?"""
    nan = math.nan
    if knee.concurrency is None:
        return Contention(None, None, nan, nan, False, "no knee")
    closed = sorted(
        (s for s in steps if s.closed_loop and s.completed), key=lambda s: s.concurrency
    )
    at_knee = next((s for s in closed if s.concurrency == knee.concurrency), None)
    candidates = [s for s in closed if knee.concurrency < s.concurrency <= capacity]
    if at_knee is None or not candidates:
        return Contention(knee.concurrency, None, nan, nan, False, "no step past the knee")
    cap = candidates[-1]
    a, b = at_knee.throughput_samples, cap.throughput_samples
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES:
        return Contention(
            knee.concurrency, cap.concurrency, nan, nan, False,
            f"too few per-interval samples ({len(a)} and {len(b)}; {MIN_SAMPLES} needed)",
        )  # fmt: skip
    test = mann_whitney_u(a, b)
    lower = test.prob_new_greater < 0.5
    p = test.p_value / 2.0 if lower else 1.0 - test.p_value / 2.0
    m_knee, m_cap = _median_of(a), _median_of(b)
    drop = (m_knee - m_cap) / m_knee if m_knee > 0 else nan
    significant = p < OVERSIZED_ALPHA
    reason = (
        f"median per-interval throughput {m_knee:.0f} q/s at concurrency {knee.concurrency}, "
        f"{m_cap:.0f} q/s at {cap.concurrency} (one-sided Mann-Whitney p={p:.3g})"
    )
    return Contention(knee.concurrency, cap.concurrency, p, drop, significant, reason)


# -- exhaustion ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepExhaustion:
    concurrency: int
    offered_rate: float | None
    timeouts: int
    requests: int
    unbounded: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class Exhaustion:
    """Whether the pool ran out: requests timed out waiting, or (open loop only) the
    queue grew without bound. first_concurrency (first_offered_rate for an open-loop
    step): the lightest step where it happened, closed-loop steps first; steps: every
    such step; severity: error when it happened at or below twice the capacity, or in
    open loop with the client and its machine not saturated; warning otherwise. The
    reason gives the first step's figures and, when they differ, the total."""

    exhausted: bool
    first_concurrency: int | None
    first_offered_rate: float | None
    severity: Severity | None
    timeouts: int
    steps: tuple[StepExhaustion, ...]
    reason: str

    def to_metrics(self) -> dict[str, Any]:
        return {
            "exhausted": self.exhausted,
            "first_concurrency": self.first_concurrency,
            "first_offered_rate": self.first_offered_rate,
            "severity": self.severity.value if self.severity else None,
            "timeouts": self.timeouts,
            "steps": [dataclasses.asdict(s) for s in self.steps],
            "reason": self.reason,
        }


def _rising(series: Sequence[float], alpha: float = TREND_ALPHA) -> bool:
    values = [v for v in series if not math.isnan(v)]
    if len(values) < 5:
        return False
    return mann_kendall(values).p_increasing < alpha


def _unbounded(step: StepView) -> str:
    """An open-loop step whose queue grew without bound. A closed loop cannot grow one:
    with N workers on C connections a wait is bounded by about (N/C − 1) hold times, so
    there timeouts are the only sign of exhaustion."""
    if step.offered_rate is None:
        return ""
    shortfall = step.throughput_qps < OPEN_LOOP_SHORTFALL * step.offered_rate
    if shortfall and step.window_s > 0:
        # Poisson arrivals: a short window at a low rate sees fewer arrivals than the
        # rate by chance (25 expected, 22 seen is one standard deviation). A shortfall
        # must exceed three standard deviations of the arrival count.
        expected = step.offered_rate * step.window_s
        shortfall = step.completed < OPEN_LOOP_SHORTFALL * expected - 3.0 * math.sqrt(expected)
    if shortfall and (step.backlog > 0 or _rising(step.interval_response_p50, 0.05)):
        return (
            f"completed {step.throughput_qps:.0f} of {step.offered_rate:.0f} requests/s "
            f"offered; the queue grew (backlog {step.backlog}, response time rising "
            "through the step)"
        )
    return ""


def _client_limited(step: StepView) -> str:
    """Why this step's client, or the machine it runs on, may be the limit ("" if not)."""
    if step.client_cpu >= CLIENT_BOUND_CPU:
        return f"the load generator used {step.client_cpu:.2f} of a core"
    if step.host_cpu_busy is not None and step.host_cpu_busy >= HOST_BOUND_CPU:
        return f"{step.host_cpu_busy:.0%} of the client machine's CPU was busy"
    return ""


def judge_exhaustion(steps: Sequence[StepView], capacity: int, timeout_s: float) -> Exhaustion:
    """Pool exhaustion across the steps (closed loop by concurrency, then open loop)."""
    found: list[StepExhaustion] = []
    client_limited: list[bool] = []
    for step in steps:
        unbounded = _unbounded(step)
        if not step.timeouts and not unbounded:
            continue
        parts = []
        if step.timeouts:
            parts.append(
                f"{step.timeouts} of {step.requests} requests timed out after waiting "
                f"{timeout_s:g}s for a connection"
            )
        if unbounded:
            parts.append(unbounded)
        limited = (
            _client_limited(step)
            if step.offered_rate is not None
            else (
                f"the load generator used {step.client_cpu:.2f} of a core"
                if step.client_cpu >= CLIENT_BOUND_CPU
                else ""
            )
        )
        if limited:
            parts.append(f"{limited} in this step, so part of it may be the client falling behind")
        client_limited.append(bool(limited) and not step.timeouts)
        found.append(
            StepExhaustion(
                concurrency=step.concurrency,
                offered_rate=step.offered_rate,
                timeouts=step.timeouts,
                requests=step.requests,
                unbounded=bool(unbounded),
                reason="; ".join(parts),
            )
        )
    if not found:
        return Exhaustion(False, None, None, None, 0, (), "no timeouts and no unbounded waits")
    closed = [s for s in found if s.offered_rate is None]
    first = min(closed, key=lambda s: s.concurrency) if closed else found[0]
    # An open-loop shortfall while the client (or its machine) was the limit may be the
    # client falling behind, not the pool: a warning that names the client.
    severe = any(
        (s.offered_rate is not None and not limited)
        or (s.offered_rate is None and s.concurrency <= EXHAUSTION_MULTIPLE * capacity)
        for s, limited in zip(found, client_limited, strict=True)
    )
    where = (
        f"at concurrency {first.concurrency} ({first.concurrency / capacity:.1f}× its "
        f"capacity of {capacity})"
        if first.offered_rate is None
        else f"at {first.offered_rate:g} requests/s offered"
    )
    total = sum(s.timeouts for s in found)
    overall = (
        f"; {total} timeouts in all over {len(found)} steps"
        if total != first.timeouts or len(found) > 1
        else ""
    )
    return Exhaustion(
        exhausted=True,
        first_concurrency=first.concurrency,
        first_offered_rate=first.offered_rate,
        severity=Severity.ERROR if severe else Severity.WARNING,
        timeouts=total,
        steps=tuple(found),
        reason=f"{where}: {first.reason}{overall}",
    )


# -- degradation -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Degradation:
    """Graceful degradation: waits bounded by the timeout, failures that are clean pool
    timeouts (no server errors, no crashes), no worker hung, recovery after the spike."""

    graceful: bool
    reasons: tuple[str, ...]
    errors: Mapping[str, int]

    def to_metrics(self) -> dict[str, Any]:
        return {"graceful": self.graceful, "reasons": list(self.reasons), "errors": self.errors}


def hang_slack_ms(timeout_s: float) -> float:
    """How far past its timeout a wait may run before it counts as a hang: half the
    timeout, at least 250 ms (scheduling on a loaded machine)."""
    return max(250.0, 500.0 * timeout_s)


def judge_degradation(
    steps: Sequence[StepView],
    spike: SpikeView | None,
    timeout_s: float,
    background_refusals: int = 0,
) -> Degradation:
    """``background_refusals``: connection attempts the pool made on its own outside the
    steps (its end-of-run statistics) that failed; each step's own are in its
    ``pool_refusals``."""
    timeout_ms = timeout_s * 1000.0
    limit = timeout_ms + hang_slack_ms(timeout_s)
    reasons: list[str] = []
    errors: dict[str, int] = {}
    for step in steps:
        for kind, n in step.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    if spike is not None:
        for kind, n in spike.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    waits = [s.wait_max for s in steps if not math.isnan(s.wait_max)]
    fails = [s.timeout_wait_max for s in steps if not math.isnan(s.timeout_wait_max)]
    if spike is not None:
        waits += [] if math.isnan(spike.wait_max) else [spike.wait_max]
        fails += [] if math.isnan(spike.timeout_wait_max) else [spike.timeout_wait_max]
    if waits and max(waits) > limit:
        reasons.append(
            f"a request waited {max(waits):.0f} ms for a connection, past the "
            f"{timeout_ms:.0f} ms timeout"
        )
    if fails and max(fails) > limit:
        reasons.append(
            f"a timed-out request gave up only after {max(fails):.0f} ms "
            f"(timeout {timeout_ms:.0f} ms)"
        )
    if errors:
        listed = ", ".join(f"{k} ×{n}" for k, n in sorted(errors.items()))
        reasons.append(f"requests failed with errors other than clean pool timeouts: {listed}")
    refused = sum(s.pool_refusals for s in steps) + background_refusals
    if refused:
        errors["pool-connect-failed"] = errors.get("pool-connect-failed", 0) + refused
        timeouts = sum(s.timeouts for s in steps) + (spike.timeouts if spike else 0)
        reasons.append(
            f"the pool's own connection attempts failed {refused} time(s) (the server "
            "refused them, e.g. too many clients: connections_errors in the pool's stats)"
            + (
                f"; the {timeouts} timeout(s) may be these refusals rather than a busy pool"
                if timeouts
                else ""
            )
        )
    hung = sum(s.unfinished_workers for s in steps) + (spike.unfinished_workers if spike else 0)
    if hung:
        reasons.append(f"{hung} workers were still stuck in a request after the drain cap")
    if spike is not None and spike.recover_ms is None and spike.requests:
        reasons.append(f"after a spike of {spike.requests} the pool did not recover")
    return Degradation(graceful=not reasons, reasons=tuple(reasons), errors=errors)


# -- client-bound ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClientLoad:
    """Whether the load generator (this process) was the bottleneck: its CPU at the
    step of peak throughput reached :data:`CLIENT_BOUND_CPU` of a core."""

    bound: bool
    peak_concurrency: int | None
    cpu_at_peak: float
    max_cpu: float
    bound_steps: tuple[int, ...]

    def to_metrics(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def judge_client(steps: Sequence[StepView], threshold: float = CLIENT_BOUND_CPU) -> ClientLoad:
    measured = [s for s in steps if s.completed]
    if not measured:
        return ClientLoad(False, None, math.nan, math.nan, ())
    closed = [s for s in measured if s.closed_loop] or measured
    peak = max(closed, key=lambda s: s.throughput_qps)
    return ClientLoad(
        bound=peak.client_cpu >= threshold,
        peak_concurrency=peak.concurrency,
        cpu_at_peak=peak.client_cpu,
        max_cpu=max(s.client_cpu for s in measured),
        bound_steps=tuple(s.concurrency for s in measured if s.client_cpu >= threshold),
    )


# -- sizing ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizing:
    """Sizing advice: the measured knee against ``cores × 2 + spindles`` and the fleet's
    connection budget (capacity × instances against max_connections minus reserved).

    recommended_size: connections worth having per instance (None when this run cannot
    tell, e.g. client-bound); max_instances: instances of this capacity the budget holds.
    """

    capacity: int
    knee_concurrency: int | None
    limited_by: str | None
    server_cores: int | None
    spindles: int
    formula_size: int | None
    recommended_size: int | None
    advice: str
    instances: int
    fleet_connections: int
    budget: int | None
    fits_budget: bool | None
    max_instances: int | None

    def to_metrics(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def advise_sizing(
    knee: Knee,
    capacity: int,
    *,
    server_cores: int | None,
    spindles: int,
    instances: int,
    budget: int | None,
    contention: Contention | None = None,
) -> Sizing:
    """``contention``: whether more connections than a server-limited knee served
    measurably less (:func:`judge_contention`); without that evidence the advice does
    not ask for a smaller pool."""
    formula = server_cores * 2 + spindles if server_cores else None
    formula_text = (
        f"the usual formula (cores × 2 + spindles = {server_cores} × 2 + {spindles}) gives "
        f"{formula} ACTIVE connections on the database server (busy in a query), for the "
        "whole fleet; a connection held while the application thinks or waits on other "
        "I/O is not active there, so the pool must hold throughput × hold time "
        "connections (Little's law)"
        if formula
        else "the server's core count is unknown (pass --server-cores for the formula)"
    )
    recommended: int | None
    if knee.concurrency is None:
        recommended = None
        advice = f"no knee in the tested range; {formula_text}"
    elif knee.limited_by == "host":
        recommended = None
        advice = (
            "the machine's CPU, shared by this client and the local server, saturated "
            "first, so this run cannot size the pool for a dedicated server: run the load "
            f"from another machine; {formula_text}"
        )
    elif knee.limited_by == "client":
        recommended = None
        advice = (
            "the load generator saturated before the pool or the server did, so this run "
            "cannot size the pool: run the load from more processes or machines; "
            f"{formula_text}"
        )
    elif knee.limited_by == "server" and (contention is None or not contention.significant):
        recommended = None
        tested = f" ({contention.reason})" if contention is not None and contention.reason else ""
        advice = (
            f"throughput flattens from about {knee.concurrency} connections with the server "
            f"the limit, but more connections did not serve measurably less{tested}: this "
            f"run gives no reason to change the capacity of {capacity}; {formula_text}"
        )
    elif knee.limited_by == "server":
        recommended = knee.concurrency
        advice = (
            f"throughput peaks at {knee.concurrency} connections; more only add waiting "
            f"inside the server: size the pool near {knee.concurrency} "
            f"(capacity now {capacity}); {formula_text}"
        )
    else:
        recommended = capacity
        if formula and formula > capacity:
            advice = (
                f"throughput grew until all {capacity} connections were busy; {formula_text}: "
                f"try a larger pool (up to {formula}) and rerun to find the server's knee"
            )
        else:
            advice = f"throughput grew until all {capacity} connections were busy; {formula_text}"
    fleet = capacity * instances
    fits = None if budget is None else fleet <= budget
    max_instances = None if budget is None else budget // capacity
    return Sizing(
        capacity=capacity,
        knee_concurrency=knee.concurrency,
        limited_by=knee.limited_by,
        server_cores=server_cores,
        spindles=spindles,
        formula_size=formula,
        recommended_size=recommended,
        advice=advice,
        instances=instances,
        fleet_connections=fleet,
        budget=budget,
        fits_budget=fits,
        max_instances=max_instances,
    )


# -- soak ------------------------------------------------------------------------------


def judge_soak(series: Mapping[str, Sequence[float | None]]) -> list[Growth]:
    """Growth verdicts for the soak's series (``t_s`` plus the :data:`SOAK_MIN_GROWTH`
    series)."""
    times = [float(t or 0.0) for t in series.get("t_s") or ()]
    out = []
    for name, minimum in SOAK_MIN_GROWTH.items():
        values = series.get(name)
        if values is None or all(v is None for v in values):
            continue
        out.append(growth(name, times, values, min_growth=minimum, alpha=TREND_ALPHA))
    return out


# -- findings --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolVerdicts:
    """Every verdict on one pool's run."""

    pool: str
    capacity: int
    timeout_s: float
    knee: Knee
    exhaustion: Exhaustion
    degradation: Degradation
    client: ClientLoad
    sizing: Sizing
    soak: tuple[Growth, ...] = ()
    contention: Contention | None = None

    @property
    def oversized(self) -> bool:
        """``pool-oversized``: a server-limited knee well below the capacity, the client
        and its machine not saturated, and the capacity step measurably slower than the
        knee step (contention, not noise)."""
        knee = self.knee
        return (
            knee.concurrency is not None
            and knee.limited_by == "server"
            and not self.client.bound
            and self.capacity >= OVERSIZED_RATIO * knee.concurrency
            and self.capacity - knee.concurrency >= 2
            and self.contention is not None
            and self.contention.significant
        )

    def to_metrics(self) -> dict[str, Any]:
        return {
            "exhaustion": self.exhaustion.to_metrics(),
            "degradation": self.degradation.to_metrics(),
            "client_bound": self.client.to_metrics(),
            "sizing": self.sizing.to_metrics(),
            "contention": self.contention.to_metrics() if self.contention else None,
            "soak": {g.series: g.to_metrics() for g in self.soak},
        }


def judge_pool(
    pool: str,
    metrics: Mapping[str, Any],
    *,
    capacity: int,
    timeout_s: float,
    server_cores: int | None,
    spindles: int,
    instances: int,
    budget: int | None,
    local_server: bool = False,
) -> PoolVerdicts:
    """All verdicts from one pool's ``metrics["pool"][<pool>]`` tree."""
    steps = [StepView.from_metrics(s) for s in metrics.get("steps") or ()]
    spike = SpikeView.from_metrics(metrics["spike"]) if metrics.get("spike") else None
    knee = find_knee(steps, capacity, local_server)
    soak = metrics.get("soak")
    run_stats = metrics.get("stats")
    contention = judge_contention(steps, knee, capacity)
    return PoolVerdicts(
        pool=pool,
        capacity=capacity,
        timeout_s=timeout_s,
        knee=knee,
        exhaustion=judge_exhaustion(steps, capacity, timeout_s),
        degradation=judge_degradation(
            steps,
            spike,
            timeout_s,
            background_refusals=pool_refusals(run_stats if isinstance(run_stats, dict) else None),
        ),
        client=judge_client(steps),
        sizing=advise_sizing(
            knee,
            capacity,
            server_cores=server_cores,
            spindles=spindles,
            instances=instances,
            budget=budget,
            contention=contention,
        ),
        soak=tuple(judge_soak(soak["series"])) if soak and soak.get("series") else (),
        contention=contention,
    )


_SOAK_WORDS = {
    "rss_bytes": ("memory (RSS)", "a cache or list that only grows, or objects kept alive"),
    "open_fds": ("open file descriptors", "sockets or files opened and never closed"),
    "checked_out": ("checked-out connections", "connections checked out and never returned"),
    "server_backends": ("server sessions", "connections opened and never closed"),
}


def _human(series: str, value: float) -> str:
    if series == "rss_bytes":
        return f"{value / 1048576:.1f} MiB"
    return f"{value:.1f}"


def pool_findings(v: PoolVerdicts) -> list[Finding]:
    """The findings the verdicts raise, each with its evidence and a concrete fix."""
    out: list[Finding] = []
    pool = v.pool
    if v.exhaustion.exhausted:
        out.append(
            RULES["pool-exhaustion"].finding(
                f"{pool} pool (capacity {v.capacity}) exhausted {v.exhaustion.reason}",
                "keep connections for less time (no network calls or heavy work while one "
                "is checked out), size the pool to the measured knee, and bound the "
                "concurrency in front of it (worker count, a queue) rather than letting "
                "requests pile onto the pool; see docs/rules/pool-exhaustion.md",
                severity=v.exhaustion.severity,
                count=v.exhaustion.timeouts or None,
                fingerprint=f"pool-exhaustion:{pool}",
                evidence={
                    "capacity": v.capacity,
                    "timeout_s": v.timeout_s,
                    **v.exhaustion.to_metrics(),
                },
            )
        )
    if not v.degradation.graceful:
        out.append(
            RULES["pool-degradation"].finding(
                f"{pool} pool degraded badly under overload: " + "; ".join(v.degradation.reasons),
                "make overload fail fast and cleanly: set the pool's timeout, keep "
                "capacity × instances within the server's max_connections minus reserved "
                "slots (or put PgBouncer in front), and set statement_timeout so a stuck "
                "request cannot hold a connection forever",
                fingerprint=f"pool-degradation:{pool}",
                evidence=v.degradation.to_metrics(),
            )
        )
    if v.client.bound:
        out.append(
            RULES["client-bound"].finding(
                f"the load generator was the bottleneck on {pool}: it used "
                f"{v.client.cpu_at_peak:.2f} of a CPU core at peak throughput "
                f"(concurrency {v.client.peak_concurrency}); throughput and the knee reflect "
                "this Python process, not the pool or the server",
                "read the throughput figures as the client's ceiling; to load the server "
                "harder, run the probe from several processes or machines (or use an "
                "asyncio pool), and compare with pgbench at the same client count",
                fingerprint=f"client-bound:{pool}",
                evidence=v.client.to_metrics(),
            )
        )
    knee = v.knee
    if v.oversized and knee.concurrency is not None and v.contention is not None:
        out.append(
            RULES["pool-oversized"].finding(
                f"{pool} pool has {v.capacity} connections but throughput peaks at "
                f"{knee.concurrency} ({knee.throughput_qps:.0f} q/s); more connections "
                f"served less: {v.contention.reason}",
                f"size the pool near {knee.concurrency} (pool_size/max_size) and let "
                "requests queue for a connection; " + v.sizing.advice,
                fingerprint=f"pool-oversized:{pool}",
                evidence={
                    "knee": knee.to_metrics(),
                    "sizing": v.sizing.to_metrics(),
                    "contention": v.contention.to_metrics(),
                },
            )
        )
    sizing = v.sizing
    if sizing.fits_budget is False and sizing.budget is not None:
        out.append(
            RULES["pool-over-budget"].finding(
                f"{sizing.instances} instance(s) × capacity {sizing.capacity} = "
                f"{sizing.fleet_connections} connections, over the server's budget of "
                f"{sizing.budget} (max_connections minus reserved slots)",
                f"at this capacity the server holds {sizing.max_instances} instance(s): "
                "prefer a connection pooler (PgBouncer, transaction mode) between the fleet "
                "and the server, or lower size + overflow per instance. Raising "
                "max_connections needs a restart and costs memory: a few MB per backend "
                "plus work_mem for every sort or hash node of every running query "
                "(× connections); and more active backends than about 2-4 × the server's "
                "cores only add contention",
                fingerprint=f"pool-over-budget:{pool}",
                evidence=sizing.to_metrics(),
            )
        )
    for g in v.soak:
        if not g.growing:
            continue
        what, cause = _SOAK_WORDS[g.series]
        out.append(
            RULES["soak-growth"].finding(
                f"{what} grew steadily during the {pool} soak: {_human(g.series, g.start_value)}"
                f" → {_human(g.series, g.end_value)} over {g.span_s:.0f}s ({g.reason})",
                f"look for {cause}; run dbprobe.pool.track_leaks around the workload to see "
                "where connections are checked out and not returned",
                fingerprint=f"soak-growth:{pool}:{g.series}",
                evidence=g.to_metrics(),
            )
        )
    return out
