"""Recording requests cheaply in the hot path and summarising them per step.

Each worker owns a :class:`Recorder` (no locks, no sharing): four ``perf_counter``
timestamps per request appended to ``array('d')`` buffers. Summaries are computed after
the step from every sample (exact percentiles), so nothing is averaged away. Long soaks
record into fixed-size :class:`LatencyHistogram`s instead, so the probe's own memory
does not grow while it looks for growth.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dbprobe.report.model import Distribution

KEEP_SAMPLES = 1000
"""Latency distributions keep at most this many raw values (evenly spaced order
statistics of all of them); p50/p95/p99/max are computed from every sample."""


class Recorder:
    """One worker's requests: successes as timestamps, failures with their kind.

    ``ok(t0, t1, t2, t3)``: request started (closed loop) or was scheduled (open loop,
    see ``sched``) at ``t0``, got its connection at ``t1``, finished its work at ``t2``,
    returned the connection at ``t3`` (``perf_counter`` seconds).
    """

    __slots__ = ("fail_end", "fail_kind", "fail_start", "sched", "t0", "t1", "t2", "t3")

    def __init__(self) -> None:
        self.t0 = array("d")
        self.t1 = array("d")
        self.t2 = array("d")
        self.t3 = array("d")
        self.sched = array("d")
        self.fail_start = array("d")
        self.fail_end = array("d")
        self.fail_kind: list[str] = []

    def ok(self, t0: float, t1: float, t2: float, t3: float) -> None:
        self.t0.append(t0)
        self.t1.append(t1)
        self.t2.append(t2)
        self.t3.append(t3)

    def ok_scheduled(self, sched: float, t0: float, t1: float, t2: float, t3: float) -> None:
        self.sched.append(sched)
        self.t0.append(t0)
        self.t1.append(t1)
        self.t2.append(t2)
        self.t3.append(t3)

    def fail(self, t0: float, t1: float, kind: str) -> None:
        self.fail_start.append(t0)
        self.fail_end.append(t1)
        self.fail_kind.append(kind)

    @property
    def completed(self) -> int:
        return len(self.t3)


class LatencyHistogram:
    """An HDR-style log-linear histogram of microsecond values in constant memory.

    Values below 128 µs are exact; above, each power of two is split into 64 buckets
    (relative error under 1.6%). Range 0 µs to about 1.2 hours; larger values land in the
    last bucket, the exact maximum is kept apart.
    """

    SUB_BITS = 7
    SUB = 1 << SUB_BITS
    HALF = SUB >> 1
    MAX_SHIFT = 26

    __slots__ = ("count", "counts", "max_us", "min_us", "total_us")

    def __init__(self) -> None:
        self.counts = [0] * (self.SUB + self.MAX_SHIFT * self.HALF)
        self.count = 0
        self.total_us = 0
        self.max_us = 0
        self.min_us = -1

    def _index(self, v: int) -> int:
        if v < self.SUB:
            return v
        shift = v.bit_length() - self.SUB_BITS
        if shift > self.MAX_SHIFT:
            return len(self.counts) - 1
        return self.SUB + (shift - 1) * self.HALF + ((v >> shift) - self.HALF)

    def _value(self, index: int) -> float:
        if index < self.SUB:
            return float(index)
        shift = (index - self.SUB) // self.HALF + 1
        mantissa = (index - self.SUB) % self.HALF + self.HALF
        low = mantissa << shift
        return low + ((1 << shift) - 1) / 2.0

    def record(self, seconds: float) -> None:
        v = int(seconds * 1e6) if seconds > 0 else 0
        self.counts[self._index(v)] += 1
        self.count += 1
        self.total_us += v
        self.max_us = max(self.max_us, v)
        if self.min_us < 0 or v < self.min_us:
            self.min_us = v

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.count += other.count
        self.total_us += other.total_us
        self.max_us = max(self.max_us, other.max_us)
        if other.min_us >= 0 and (self.min_us < 0 or other.min_us < self.min_us):
            self.min_us = other.min_us

    def percentile_us(self, q: float) -> float:
        """The value at percentile ``q`` (0..100), in microseconds."""
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(self._value(i), float(self.max_us))
        return float(self.max_us)

    def distribution(self) -> Distribution:
        """p50/p95/p99/max in milliseconds (no raw samples: they were not kept)."""
        if self.count == 0:
            return Distribution.of([], keep=False)
        return Distribution(
            n=self.count,
            p50=self.percentile_us(50) / 1000.0,
            p95=self.percentile_us(95) / 1000.0,
            p99=self.percentile_us(99) / 1000.0,
            max=self.max_us / 1000.0,
            min=max(self.min_us, 0) / 1000.0,
            mean=self.total_us / self.count / 1000.0,
            unit="ms",
            samples=None,
        )


class SoakRecorder:
    """A worker's requests during a soak: counters and histograms, constant memory."""

    __slots__ = ("completed", "errors", "query", "response", "timeouts", "wait")

    def __init__(self) -> None:
        self.completed = 0
        self.timeouts = 0
        self.errors: dict[str, int] = {}
        self.wait = LatencyHistogram()
        self.query = LatencyHistogram()
        self.response = LatencyHistogram()

    def ok(self, t0: float, t1: float, t2: float, t3: float) -> None:
        self.wait.record(t1 - t0)
        self.query.record(t2 - t1)
        self.response.record(t3 - t0)
        self.completed += 1

    def ok_scheduled(self, sched: float, t0: float, t1: float, t2: float, t3: float) -> None:
        self.wait.record(t1 - t0)
        self.query.record(t2 - t1)
        self.response.record(t3 - sched)
        self.completed += 1

    def fail(self, t0: float, t1: float, kind: str) -> None:
        if kind in TIMEOUT_KINDS:
            self.timeouts += 1
        else:
            self.errors[kind] = self.errors.get(kind, 0) + 1


TIMEOUT_KINDS = frozenset(
    {"sqlalchemy-queuepool-timeout", "psycopg-pool-timeout", "asyncpg-acquire-timeout"}
)
"""Failure kinds that are the pool's own clean acquire timeouts."""


def distribution(values: Iterable[float], unit: str = "ms") -> Distribution:
    """Exact p50/p95/p99/max/min/mean over every value; at most :data:`KEEP_SAMPLES` raw
    values kept (evenly spaced order statistics, including min and max)."""
    data = sorted(values)
    dist = Distribution.of(data, unit=unit, keep=False)
    if len(data) <= KEEP_SAMPLES:
        kept = tuple(data)
    else:
        last = len(data) - 1
        kept = tuple(data[round(i * last / (KEEP_SAMPLES - 1))] for i in range(KEEP_SAMPLES))
    return dataclasses.replace(dist, samples=kept)


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One load step on one pool.

    concurrency: closed-loop workers (open loop: the cap on requests in flight);
    offered_rate: open-loop arrival rate in requests/s (None for closed loop);
    throughput: per-interval completion rates (q/s) and throughput_qps the whole
    window's; acquire_wait / query_latency / response_time in ms (response time from
    the request's start, or from its scheduled start in open loop); lag: open-loop start
    delay behind schedule (ms); timeouts: clean acquire timeouts, by the pool's error in
    timeout_kinds (``sqlalchemy-queuepool-timeout`` for "QueuePool limit … reached",
    ``psycopg-pool-timeout`` for ``PoolTimeout``, ``asyncpg-acquire-timeout``);
    timeout_wait: how long those waited (ms); errors: other failures by kind
    (``too-many-clients``, ``connection-lost``...); client_cpu: this process's CPU time
    over wall time (1.0 = one core); host_cpu_busy: share of all the machine's cores busy
    (this process, a local server, anything else); interval_*: per-interval medians (ms)
    for trend tests; late: open-loop requests that started more than one ``timeout``
    behind schedule; backlog: scheduled requests not started when the window closed;
    censored (open loop): requests due before the window closed and not finished by
    then (the backlog plus those in flight); each is in ``response_time`` at its wait so
    far (window end minus due time), a lower bound, so with ``censored`` > 0 the
    response percentiles are lower bounds too; ``response_time_served`` has the served
    requests alone; acquire_wait_with_timeouts: acquire waits of served and timed-out
    requests (a timed-out wait is a lower bound on the wait it would have had);
    timeout_share: timeouts over attempted requests (served + timed out + failed);
    unfinished_workers: workers still busy after the drain cap; server_backends: the
    pool's sessions on the server near the end of the window; pool_stats: the pool's own
    statistics for the step (psycopg_pool ``pop_stats()``; current sizes for the others).
    """

    concurrency: int
    offered_rate: float | None
    window_s: float
    completed: int
    throughput: Distribution
    throughput_qps: float
    acquire_wait: Distribution
    query_latency: Distribution
    response_time: Distribution
    timeouts: int
    timeout_wait: Distribution
    errors: Mapping[str, int]
    client_cpu: float
    interval_s: float
    interval_wait_p50: tuple[float, ...]
    interval_response_p50: tuple[float, ...]
    lag: Distribution | None = None
    late: int = 0
    backlog: int = 0
    unfinished_workers: int = 0
    server_backends: int | None = None
    pool_stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    host_cpu_busy: float | None = None
    timeout_kinds: Mapping[str, int] = dataclasses.field(default_factory=dict)
    censored: int = 0
    response_time_served: Distribution | None = None
    acquire_wait_with_timeouts: Distribution | None = None

    @property
    def attempted(self) -> int:
        """Requests that got an answer in the window: served, timed out or failed."""
        return self.completed + self.timeouts + sum(self.errors.values())

    @property
    def timeout_share(self) -> float:
        """Timeouts over attempted requests (0.0 when none were attempted)."""
        return self.timeouts / self.attempted if self.attempted else 0.0

    def to_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "offered_rate": self.offered_rate,
            "window_s": round(self.window_s, 4),
            "completed": self.completed,
            "throughput": self.throughput,
            "throughput_qps": round(self.throughput_qps, 3),
            "acquire_wait": self.acquire_wait,
            "query_latency": self.query_latency,
            "response_time": self.response_time,
            "timeouts": self.timeouts,
            "attempted": self.attempted,
            "timeout_share": round(self.timeout_share, 6),
            "acquire_wait_with_timeouts": self.acquire_wait_with_timeouts,
            "timeout_kinds": dict(self.timeout_kinds),
            "timeout_wait": self.timeout_wait,
            "errors": dict(self.errors),
            "client_cpu": round(self.client_cpu, 4),
            "host_cpu_busy": None if self.host_cpu_busy is None else round(self.host_cpu_busy, 4),
            "interval_s": round(self.interval_s, 4),
            "interval_wait_p50": [round(v, 4) for v in self.interval_wait_p50],
            "interval_response_p50": [round(v, 4) for v in self.interval_response_p50],
            "unfinished_workers": self.unfinished_workers,
            "server_backends": self.server_backends,
            "pool_stats": dict(self.pool_stats),
        }
        if self.offered_rate is not None:
            out["lag"] = self.lag
            out["late"] = self.late
            out["backlog"] = self.backlog
            out["censored"] = self.censored
            out["response_time_served"] = self.response_time_served
        return out


def interval_for(window_s: float) -> float:
    """Throughput interval: a twentieth of the window, between 25 ms and 1 s, so a step
    has enough per-interval rates for ``dbprobe compare`` to test (it wants 10 a side)."""
    return min(1.0, max(0.025, window_s / 20.0))


def _median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    data = sorted(values)
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2.0


def summarise(
    recorders: Sequence[Recorder],
    *,
    concurrency: int,
    window: tuple[float, float],
    client_cpu: float,
    offered_rate: float | None = None,
    late_after_s: float = math.inf,
    backlog: int = 0,
    unfinished_workers: int = 0,
    server_backends: int | None = None,
    pool_stats: Mapping[str, Any] | None = None,
    acquire_wait_measured: bool = True,
    host_cpu_busy: float | None = None,
    unstarted_due: Sequence[float] = (),
) -> StepResult:
    """Turn the workers' raw timestamps into a :class:`StepResult`.

    Only requests that finished inside ``window`` (``perf_counter`` seconds) count;
    failures count when they surfaced inside it. Open loop: requests due before the
    window's end and not finished by then (in flight, or never started:
    ``unstarted_due``, their due times) are censored samples of the response time, at
    their wait so far (window end minus due time). ``acquire_wait_measured`` is False for
    pool-level workloads, whose acquire wait is inside the call: the distribution is
    then empty rather than a column of zeros.
    """
    start, end = window
    window_s = max(end - start, 1e-9)
    interval_s = interval_for(window_s)
    n_intervals = max(1, round(window_s / interval_s))
    interval_s = window_s / n_intervals
    counts = [0] * n_intervals
    interval_waits: list[list[float]] = [[] for _ in range(n_intervals)]
    interval_responses: list[list[float]] = [[] for _ in range(n_intervals)]
    waits: list[float] = []
    queries: list[float] = []
    responses: list[float] = []
    lags: list[float] = []
    late = 0
    scheduled = offered_rate is not None
    censored = [(end - due) * 1000.0 for due in unstarted_due if due < end] if scheduled else []
    for rec in recorders:
        t0s, t1s, t2s, t3s = rec.t0, rec.t1, rec.t2, rec.t3
        scheds = rec.sched if scheduled else t0s
        for i in range(len(t3s)):
            t3 = t3s[i]
            if not start <= t3 < end:
                if scheduled and t3 >= end and scheds[i] < end:
                    censored.append((end - scheds[i]) * 1000.0)
                continue
            t0, t1 = t0s[i], t1s[i]
            wait = (t1 - t0) * 1000.0
            response = (t3 - scheds[i]) * 1000.0
            waits.append(wait)
            queries.append((t2s[i] - t1) * 1000.0)
            responses.append(response)
            if scheduled:
                lag = t0 - scheds[i]
                lags.append(lag * 1000.0)
                if lag > late_after_s:
                    late += 1
            b = min(n_intervals - 1, int((t3 - start) / interval_s))
            counts[b] += 1
            interval_waits[b].append(wait)
            interval_responses[b].append(response)
    timeouts = 0
    timeout_waits: list[float] = []
    timeout_kinds: dict[str, int] = {}
    errors: dict[str, int] = {}
    for rec in recorders:
        for f0, f1, kind in zip(rec.fail_start, rec.fail_end, rec.fail_kind, strict=True):
            if not start <= f1 < end:
                continue
            if kind in TIMEOUT_KINDS:
                timeouts += 1
                timeout_waits.append((f1 - f0) * 1000.0)
                timeout_kinds[kind] = timeout_kinds.get(kind, 0) + 1
            else:
                errors[kind] = errors.get(kind, 0) + 1
    completed = len(waits)
    with_timeouts = [*waits, *timeout_waits] if acquire_wait_measured else []
    return StepResult(
        concurrency=concurrency,
        offered_rate=offered_rate,
        window_s=window_s,
        completed=completed,
        throughput=Distribution.of([c / interval_s for c in counts], unit="q/s"),
        throughput_qps=completed / window_s,
        acquire_wait=distribution(waits if acquire_wait_measured else ()),
        query_latency=distribution(queries),
        response_time=distribution([*responses, *censored]),
        timeouts=timeouts,
        timeout_wait=distribution(timeout_waits),
        errors=errors,
        client_cpu=client_cpu,
        interval_s=interval_s,
        interval_wait_p50=tuple(_median(v) for v in interval_waits),
        interval_response_p50=tuple(_median(v) for v in interval_responses),
        lag=distribution(lags) if scheduled else None,
        late=late,
        backlog=backlog,
        unfinished_workers=unfinished_workers,
        server_backends=server_backends,
        pool_stats=dict(pool_stats or {}),
        host_cpu_busy=host_cpu_busy,
        timeout_kinds=timeout_kinds,
        censored=len(censored),
        response_time_served=distribution(responses) if scheduled else None,
        acquire_wait_with_timeouts=distribution(with_timeouts),
    )
