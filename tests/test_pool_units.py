"""Pure parts of the pool harness: plans, workloads, recording, schedules, recovery."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbprobe.errors import UsageError
from dbprobe.pool import StressConfig, Workload, concurrency_steps, parse_pools
from dbprobe.pool.control import Schedule
from dbprobe.pool.failures import classify_acquire, classify_run
from dbprobe.pool.recording import KEEP_SAMPLES, LatencyHistogram, Recorder, distribution, summarise
from dbprobe.pool.results import summarise_spike


def test_parse_pools() -> None:
    assert parse_pools("all") == (
        "sqlalchemy",
        "sqlalchemy-async",
        "psycopg",
        "psycopg-async",
        "asyncpg",
    )
    assert parse_pools("asyncpg, sqlalchemy") == ("sqlalchemy", "asyncpg")
    assert parse_pools(["psycopg", "psycopg"]) == ("psycopg",)
    with pytest.raises(UsageError, match="unknown pool 'hikari'"):
        parse_pools("hikari")
    with pytest.raises(UsageError, match="no pool"):
        parse_pools(" , ")


def test_concurrency_steps_reach_twice_the_capacity() -> None:
    assert concurrency_steps(10, 20) == (1, 2, 4, 8, 10, 16, 20)
    assert concurrency_steps(3, 12) == (1, 2, 3, 4, 6, 8, 12)
    assert concurrency_steps(1, 2) == (1, 2)
    for capacity in range(1, 40):
        levels = concurrency_steps(capacity, 2 * capacity)
        assert levels[0] == 1
        assert capacity in levels
        assert levels[-1] == 2 * capacity
        assert list(levels) == sorted(set(levels))


def test_config_rejects_plans_that_would_not_pass_the_pool() -> None:
    assert StressConfig().capacity == 10
    assert StressConfig().top_concurrency == 20
    with pytest.raises(UsageError, match="below twice"):
        StressConfig(size=5, overflow=5, max_concurrency=19)
    for bad in (
        {"size": 0},
        {"overflow": -1},
        {"timeout_s": 0},
        {"step_seconds": 0},
        {"rates": (0.0,)},
        {"think_ms": -1},
        {"spike": -1},
        {"soak_s": -1},
        {"instances": 0},
    ):
        with pytest.raises(UsageError):
            StressConfig(**bad)  # type: ignore[arg-type]


def test_config_caps_are_derived_from_the_plan() -> None:
    cfg = StressConfig(step_seconds=2.0, timeout_s=3.0, think_ms=500)
    assert cfg.warmup_s == 0.4
    assert cfg.drain_cap_s == pytest.approx(7.5)
    assert cfg.statement_timeout_ms == int(1000 * (0.4 + 2.0 + 7.5))
    assert cfg.spike_requests == cfg.top_concurrency
    assert StressConfig(spike=0).spike_requests == 0


def test_workload_forms() -> None:
    assert Workload.from_sql(" SELECT 2; ").sql == "SELECT 2"
    with pytest.raises(UsageError):
        Workload.from_sql(" ; ")

    async def coro(conn: object) -> None:
        return None

    def plain(conn: object) -> None:
        return None

    w = Workload.from_callable(plain, ["sqlalchemy", "psycopg"])
    assert w.supports("psycopg") and not w.supports("asyncpg")
    with pytest.raises(UsageError, match="coroutine function"):
        Workload.from_callable(plain, ["asyncpg"])
    with pytest.raises(UsageError, match="plain function"):
        Workload.from_callable(coro, ["psycopg"])
    with pytest.raises(UsageError, match="level"):
        Workload(level="engine")
    assert Workload().supports("asyncpg")


def _recorder(starts: list[float], wait: float, query: float) -> Recorder:
    rec = Recorder()
    for t0 in starts:
        rec.ok(t0, t0 + wait, t0 + wait + query, t0 + wait + query + 0.0001)
    return rec


def test_summarise_counts_only_the_window_and_keeps_every_percentile_exact() -> None:
    starts = [i * 0.001 for i in range(3000)]  # one request per ms for 3 s
    rec = _recorder(starts, wait=0.002, query=0.001)
    rec.fail(1.0, 1.05, "psycopg-pool-timeout")
    rec.fail(1.1, 1.2, "too-many-clients")
    rec.fail(2.9, 3.5, "psycopg-pool-timeout")  # surfaces after the window
    step = summarise([rec], concurrency=4, window=(0.5, 2.5), client_cpu=0.5)
    assert step.completed == pytest.approx(2000, abs=2)
    assert step.throughput_qps == pytest.approx(1000, rel=0.01)
    assert step.throughput.unit == "q/s"
    assert step.throughput.n == 20  # intervals of 0.1 s
    assert all(v == pytest.approx(1000, rel=0.02) for v in step.throughput.samples or ())
    assert step.acquire_wait.p50 == pytest.approx(2.0)
    assert step.query_latency.p99 == pytest.approx(1.0)
    assert step.timeouts == 1
    assert step.timeout_kinds == {"psycopg-pool-timeout": 1}
    assert step.timeout_wait.max == pytest.approx(50.0)
    assert step.errors == {"too-many-clients": 1}
    assert len(step.interval_wait_p50) == 20
    metrics = step.to_metrics()
    assert "lag" not in metrics


def test_summarise_open_loop_measures_from_the_schedule() -> None:
    rec = Recorder()
    for i in range(100):
        sched = i * 0.01
        start = sched + 0.005 * i  # the client falls further and further behind
        rec.ok_scheduled(sched, start, start, start + 0.001, start + 0.001)
    step = summarise(
        [rec], concurrency=1, window=(0.0, 2.0), client_cpu=0.1, offered_rate=100.0,
        late_after_s=0.2025,
    )  # fmt: skip
    assert step.lag is not None
    assert step.lag.max == pytest.approx(495.0)
    assert step.response_time.max == pytest.approx(496.0)
    assert step.acquire_wait.max == pytest.approx(0.0)
    assert step.late == sum(1 for i in range(100) if 0.005 * i > 0.2025)
    assert step.to_metrics()["lag"] is step.lag


def test_distribution_keeps_a_bounded_evenly_spaced_sample() -> None:
    values = [float(i) for i in range(10_000)]
    random.Random(1).shuffle(values)
    d = distribution(values)
    assert d.n == 10_000
    assert d.p99 == pytest.approx(9899.01)
    assert d.samples is not None
    assert len(d.samples) == KEEP_SAMPLES
    assert d.samples[0] == 0.0 and d.samples[-1] == 9999.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=30.0), min_size=50, max_size=2000))
def test_histogram_percentiles_are_within_its_precision(values: list[float]) -> None:
    hist = LatencyHistogram()
    for v in values:
        hist.record(v)
    data = sorted(int(v * 1e6) for v in values)
    for q in (50, 95, 99):
        exact = data[max(0, math.ceil(q / 100 * len(data)) - 1)]
        got = hist.percentile_us(q)
        # a bucket spans at most 1/64 of its values; reported at its midpoint, the error
        # is at most half of that (+1 µs for the integer microseconds)
        assert abs(got - exact) <= 1.0 + exact / 128, (q, got, exact)
    assert hist.max_us == data[-1]
    assert hist.count == len(values)


def test_histogram_percentiles_have_no_bias() -> None:
    # Uniform values: reported at the bucket's midpoint, the errors cancel out; a bucket
    # reported at an edge would be off by about 1/256 on average.
    rng = random.Random(4)
    values = [rng.uniform(0.001, 0.03) for _ in range(100_000)]
    hist = LatencyHistogram()
    for v in values:
        hist.record(v)
    data = sorted(int(v * 1e6) for v in values)
    errors = []
    for q in range(1, 100):
        exact = data[max(0, math.ceil(q / 100 * len(data)) - 1)]
        errors.append((hist.percentile_us(q) - exact) / exact)
    assert abs(sum(errors) / len(errors)) < 1 / 1000
    assert max(abs(e) for e in errors) <= 1 / 128 + 1e-6


def test_histogram_memory_is_constant() -> None:
    hist = LatencyHistogram()
    size = len(hist.counts)
    for v in (1e-6, 0.5, 10.0, 7200.0):
        hist.record(v)
    assert len(hist.counts) == size
    assert hist.max_us == 7_200_000_000


def test_schedule_is_a_poisson_process_at_the_rate() -> None:
    schedule = Schedule(rate=1000.0, start=10.0, end=12.0, seed=3)
    times = list(schedule.times)
    assert len(times) == pytest.approx(2000, rel=0.1)
    assert times == sorted(times)
    assert times[0] > 10.0 and times[-1] < 12.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.001, rel=0.1)
    assert schedule.take() == 0
    assert schedule.take() == 1
    assert schedule.backlog(at=11.0) == pytest.approx(1000, rel=0.15)


def test_spike_recovery_is_the_first_fast_probe_after_the_last_slow_one() -> None:
    spike = [_recorder([0.0], wait=0.050, query=0.001) for _ in range(5)]
    probe = Recorder()
    for t0, wait in ((0.000, 0.040), (0.041, 0.010), (0.052, 0.0001), (0.053, 0.0001),
                     (0.054, 0.0001), (0.055, 0.0001)):  # fmt: skip
        probe.ok(t0, t0 + wait, t0 + wait, t0 + wait + 0.0002)
    result = summarise_spike(
        spike, probe, fired_at=0.0, threshold_s=0.001, unfinished_workers=0, server_backends=3
    )
    assert result.completed == 5
    assert result.recover_ms == pytest.approx(52.1)
    assert result.recovered
    never = Recorder()
    never.ok(0.0, 0.5, 0.5, 0.5)
    stuck = summarise_spike(
        spike, never, fired_at=0.0, threshold_s=0.001, unfinished_workers=0, server_backends=3
    )
    assert stuck.recover_ms is None


class _TimeoutError(Exception):
    pass


def test_failure_kinds() -> None:
    import psycopg_pool
    from sqlalchemy import exc as sa_exc

    assert classify_acquire(
        sa_exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached")
    ) == ("sqlalchemy-queuepool-timeout")
    assert classify_acquire(psycopg_pool.PoolTimeout("couldn't get a connection")) == (
        "psycopg-pool-timeout"
    )
    assert classify_acquire(TimeoutError()) == "asyncpg-acquire-timeout"
    assert classify_acquire(OSError("FATAL:  sorry, too many clients already")) == (
        "too-many-clients"
    )
    assert classify_run(ConnectionRefusedError()) == "connection-refused"
    assert classify_run(RuntimeError("terminating connection due to administrator command")) == (
        "server-shutdown"
    )
    assert classify_run(_TimeoutError("x")) == "error-_TimeoutError"


def test_a_worker_that_dies_of_a_bug_is_not_silently_lost() -> None:
    import asyncio

    from dbprobe.pool._compat import AWorkers, Workers

    def broken() -> None:
        raise ZeroDivisionError("bug in a worker")

    def fine() -> None:
        return None

    threads = Workers()
    threads.spawn(fine)
    threads.spawn(broken)
    with pytest.raises(ZeroDivisionError, match="bug in a worker"):
        threads.join(5.0)
    ok = Workers()
    ok.spawn(fine)
    assert ok.join(5.0) == 0

    async def abroken() -> None:
        raise ZeroDivisionError("bug in a task")

    async def scenario() -> None:
        tasks = AWorkers()
        tasks.spawn(abroken)
        await tasks.join(5.0)

    with pytest.raises(ZeroDivisionError, match="bug in a task"):
        asyncio.run(scenario())


def test_every_loopback_and_own_address_is_local() -> None:
    # 127.1 is 127.0.0.1 (the old check knew only the literal "127.0.0.1"); all of
    # 127.0.0.0/8, ::1 and the machine's own addresses are this machine.
    from dbprobe.pool.server import is_local, is_local_address, own_addresses
    from dbprobe.urls import parse_url

    for url in (
        "postgresql://app@127.1/shop",
        "postgresql://app@127.0.0.5:5433/shop",
        "postgresql://app@[::1]/shop",
        "postgresql://app@localhost/shop",
        "postgresql:///shop?host=/tmp",
    ):
        assert is_local(parse_url(url)), url
    assert not is_local(parse_url("postgresql://app@192.0.2.250/shop"))  # TEST-NET-1
    assert is_local_address("::ffff:127.0.0.2")
    assert not is_local_address("10.1.2.3")
    own = own_addresses()
    assert "127.0.0.1" in own or "::1" in own
    for address in own:
        assert is_local_address(address, own)


def test_open_loop_requests_unserved_at_the_window_end_are_censored_not_dropped() -> None:
    # 1000 requests/s due for half a second, served at 100/s: by the window's end 99
    # were served, two are in flight (finish after the end) and 399 were never started.
    # The old summary kept only the served ones and hid the queue; each unserved request
    # now counts at its wait so far (end - due time), a lower bound.
    rec = Recorder()
    for i in range(100):
        due = i * 0.001
        start = i * 0.01
        rec.ok_scheduled(due, start, start, start + 0.009, start + 0.01)
    rec.ok_scheduled(0.1, 1.0, 1.0, 1.005, 1.01)  # in flight at the window's end
    unstarted = [i * 0.001 for i in range(101, 500)]
    step = summarise(
        [rec], concurrency=1, window=(0.0, 1.0), client_cpu=0.1, offered_rate=1000.0,
        unstarted_due=unstarted,
    )  # fmt: skip
    assert step.completed == 99  # the 100th ends exactly at the window's end
    assert step.censored == 1 + 1 + len(unstarted)
    served = step.response_time_served
    assert served is not None and served.n == 99
    assert step.response_time.n == 99 + step.censored
    # the served p99 is under the window; the censored view puts p50 deep in the backlog
    assert served.p99 < 1000.0
    assert step.response_time.p50 > served.p50
    # the request due at 99 ms, still being served at the end, waited 901 ms so far
    assert step.response_time.max == pytest.approx(901.0)
    metrics = step.to_metrics()
    assert metrics["censored"] == step.censored
    assert metrics["response_time_served"] is served


def test_timed_out_waits_are_counted_beside_the_served_ones() -> None:
    rec = _recorder([i * 0.001 for i in range(100)], wait=0.0001, query=0.001)
    for i in range(10):
        rec.fail(0.01 * i, 0.01 * i + 0.1, "sqlalchemy-queuepool-timeout")
    step = summarise([rec], concurrency=4, window=(0.0, 1.0), client_cpu=0.1)
    assert step.acquire_wait.p99 < 1.0  # served requests barely waited...
    assert step.timeout_share == pytest.approx(10 / 110)
    with_timeouts = step.acquire_wait_with_timeouts
    assert with_timeouts is not None and with_timeouts.n == 110
    assert with_timeouts.p99 == pytest.approx(100.0)  # ...the ones that gave up did
    assert step.to_metrics()["timeout_share"] == pytest.approx(10 / 110, abs=1e-6)


def test_spike_recovery_waits_for_the_spike_to_drain() -> None:
    # QueuePool is not a FIFO queue: the probe can get a connection ahead of the spike's
    # waiters. The review's run: a fast probe sustained from 8.6 ms, the spike drained at
    # 75.9 ms; the old verdict said "recovered in 8.6 ms".
    spike = [_recorder([0.0], wait=0.0529, query=0.0229) for _ in range(3)]
    probe = Recorder()
    for t0 in (0.0085, 0.0095, 0.0105, 0.0115):
        probe.ok(t0, t0 + 0.0001, t0 + 0.0001, t0 + 0.0003)
    result = summarise_spike(
        spike, probe, fired_at=0.0, threshold_s=0.001, unfinished_workers=0, server_backends=3
    )
    assert result.probe_recover_ms == pytest.approx(8.6)
    assert result.drain_ms == pytest.approx(75.9)
    assert result.recover_ms == pytest.approx(75.9)
    metrics = result.to_metrics()
    assert metrics["recover_ms"] == pytest.approx(75.9)
    assert metrics["probe_recover_ms"] == pytest.approx(8.6)


def test_a_connection_lost_mid_run_is_not_called_a_connect_failure() -> None:
    import asyncpg

    from dbprobe.pool.runner import lost_cause
    from dbprobe.urls import parse_url

    target = parse_url("postgresql://app:secret@127.0.0.1:5432/shop")
    busy = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    line = lost_cause(busy, target)
    assert line.startswith("connection to postgresql://app:***@127.0.0.1:5432/shop lost")
    assert "cannot connect" not in line and "secret" not in line
    refused = ConnectionRefusedError(111, "Connection refused")
    assert "connection lost" not in lost_cause(refused, target)
