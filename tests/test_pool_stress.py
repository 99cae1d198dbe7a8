"""``dbprobe.pool.stress`` on real servers: the five pools, exhaustion, open loop, soak."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from pool_helpers import checked, fast, pool_sessions, wait_no_sessions
from sqlalchemy import Engine, text

from dbprobe.pg import PostgresServer
from dbprobe.pool import POOL_KINDS, Workload, stress
from dbprobe.report.model import Severity
from dbprobe.urls import parse_url

TIMEOUT_KIND = {
    "sqlalchemy": "sqlalchemy-queuepool-timeout",
    "sqlalchemy-async": "sqlalchemy-queuepool-timeout",
    "psycopg": "psycopg-pool-timeout",
    "psycopg-async": "psycopg-pool-timeout",
    "asyncpg": "asyncpg-acquire-timeout",
}


@pytest.mark.parametrize("kind", POOL_KINDS)
def test_every_pool_runs_the_whole_plan_and_closes_every_connection(
    pg: PostgresServer, kind: str
) -> None:
    config = fast(rates=(100.0,), spike=6)
    report = stress(pg.dsn(), kind, config=config)
    doc = checked(report)
    assert doc["command"] == "pool"
    assert doc["target"]["server_version"] == pg.version
    tree = doc["metrics"]["pool"][kind]
    steps = tree["steps"]
    closed = [s for s in steps if s["offered_rate"] is None]
    assert [s["concurrency"] for s in closed] == list(config.concurrency_levels)
    assert max(config.concurrency_levels) >= 2 * config.capacity
    for step in steps:
        assert step["completed"] > 0
        assert step["acquire_wait"]["n"] == step["completed"]
        assert step["query_latency"]["n"] == step["completed"]
        assert step["throughput"]["unit"] == "q/s"
        assert step["throughput"]["samples"], "per-interval throughput samples are kept"
        assert step["throughput_qps"] > 0
        assert (
            step["acquire_wait"]["p50"]
            <= step["acquire_wait"]["p99"]
            <= step["acquire_wait"]["max"]
        )
        assert 0 < step["client_cpu"] < 4
        # never more sessions than the pool may open
        assert step["server_backends"] is not None
        assert step["server_backends"] <= config.capacity
    (open_step,) = [s for s in steps if s["offered_rate"] is not None]
    assert open_step["offered_rate"] == 100.0
    assert open_step["lag"]["n"] == open_step["completed"]
    # 100/s is far below what any pool serves: only the few requests falling due while
    # a loaded machine had the scheduler off the CPU at the window's end may be left
    # (an overloaded step leaves a backlog many times what it completed)
    assert open_step["backlog"] <= max(2, open_step["completed"] // 5), open_step
    assert open_step["lag"]["p99"] < config.timeout_s * 1000.0 + 250.0
    spike = tree["spike"]
    assert spike["requests"] == 6
    assert spike["completed"] + spike["timeouts"] + sum(spike["errors"].values()) == 6
    assert spike["recovered"]
    assert tree["warmup"]["opened"] == config.size
    assert tree["checked_out_at_end"] == 0
    assert tree["idle_in_transaction_at_end"] == 0
    assert tree["sessions_after_close"] == 0
    assert pool_sessions(pg) == 0
    assert tree["knee"]["reason"]
    assert set(tree["verdict"]) >= {"exhaustion", "degradation", "client_bound", "sizing"}
    if kind.startswith("psycopg"):
        assert "requests_num" in tree["stats"] or "pool_size" in tree["stats"]
        assert any("requests_num" in s["pool_stats"] for s in closed)
    assert not [f for f in doc["findings"] if f["rule"] == "connection-leak"]


@pytest.mark.parametrize("kind", POOL_KINDS)
def test_four_times_capacity_with_a_short_timeout_is_pool_exhaustion(
    pg: PostgresServer, kind: str
) -> None:
    # capacity 2, each request holds its connection 100 ms: at 8 workers a request waits
    # ~3 × 100 ms for a connection, far past the 100 ms timeout (at 4, ~100 ms: some do).
    config = fast(
        size=2, overflow=0, think_ms=100, timeout_s=0.1, max_concurrency=8, steps=(2, 4, 8),
        spike=0, step_seconds=0.5,
    )  # fmt: skip
    report = stress(pg.dsn(), kind, config=config)
    doc = checked(report)
    (finding,) = [f for f in doc["findings"] if f["rule"] == "pool-exhaustion"]
    # exhausted at or below twice the capacity: an error
    assert finding["severity"] == "error"
    assert finding["fingerprint"] == f"pool-exhaustion:{kind}"
    assert finding["evidence"]["first_concurrency"] in (4, 8)
    assert any(s["concurrency"] == 8 for s in finding["evidence"]["steps"])
    steps = doc["metrics"]["pool"][kind]["steps"]
    top = steps[-1]
    assert top["concurrency"] == 8
    assert top["timeouts"] > 0
    assert set(top["timeout_kinds"]) == {TIMEOUT_KIND[kind]}
    assert top["timeout_wait"]["n"] == top["timeouts"]
    # clean timeouts: they gave up close to the configured 100 ms, not much later
    assert top["timeout_wait"]["p50"] < 100 + 250
    # at capacity nobody needs to wait (a stall of the loaded machine may cost one)
    assert steps[0]["timeouts"] <= 1
    assert report.exit_code("error") == 1
    assert pool_sessions(pg) == 0


def test_open_loop_over_capacity_reports_the_queue(pg: PostgresServer) -> None:
    # capacity 2 × (1 request / 10 ms) = 200 requests/s at most; offer 50 and 2000.
    config = fast(
        size=2, overflow=0, think_ms=10, timeout_s=5.0, rates=(50.0, 2000.0), steps=(1,),
        spike=0, step_seconds=0.5,
    )  # fmt: skip
    doc = checked(stress(pg.dsn(), "psycopg-async", config=config))
    steps = doc["metrics"]["pool"]["psycopg-async"]["steps"]
    under, over = (s for s in steps if s["offered_rate"] is not None)
    # a stall of the loaded machine may leave a few due: a share of the arrivals
    assert under["backlog"] <= max(5.0, 0.4 * 50.0 * under["window_s"])
    assert 15 <= under["throughput_qps"] <= 90  # Poisson arrivals at 50/s for 0.5 s
    assert over["backlog"] > 100
    assert over["throughput_qps"] < 0.5 * 2000
    # latency counts from the scheduled start: the queue in front of the pool shows in
    # the response time and the lag, far beyond one request's 10 ms
    assert over["response_time"]["p99"] > 100
    assert over["lag"]["p99"] > 50
    exhaustion = [f for f in doc["findings"] if f["rule"] == "pool-exhaustion"]
    assert exhaustion and "2000 requests/s offered" in exhaustion[0]["message"]


LEAKED: list[Any] = []


def _leaky(engine: Engine) -> None:
    conn = engine.connect()
    LEAKED.append(conn)
    conn.execute(text("SELECT 1"))
    conn.commit()


def _clean(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def test_psycopg_pool_level_leak_is_counted_by_the_adapter(pg: PostgresServer) -> None:
    # The adapter counts checkouts itself (not pool_size - pool_available, which also
    # counts slots the pool is reconnecting): a workload handed the pool that checks out
    # with getconn() and never returns one is still seen.
    leaked: list[Any] = []

    def leak_once(pool: Any) -> None:
        conn = pool.getconn()
        if not leaked:
            leaked.append(conn)
            return
        try:
            conn.execute("SELECT 1")
            conn.commit()
        finally:
            pool.putconn(conn)

    config = fast(size=2, overflow=1, steps=(1, 2), spike=0, max_concurrency=None)
    try:
        report = stress(
            pg.dsn(), "psycopg", config=config,
            workload=Workload.from_callable(leak_once, ["psycopg"], level="pool"),
        )  # fmt: skip
    finally:
        for conn in leaked:
            conn.close()
    doc = checked(report)
    assert doc["metrics"]["pool"]["psycopg"]["checked_out_at_end"] == 1
    leak = [f for f in doc["findings"] if f["fingerprint"] == "connection-leak:psycopg:checked-out"]
    assert len(leak) == 1 and leak[0]["count"] == 1
    assert wait_no_sessions(pg) == 0


@pytest.mark.parametrize(("workload", "leaks"), [(_leaky, True), (_clean, False)])
def test_soak_finds_steady_growth_of_a_leak_and_not_of_its_clean_twin(
    pg: PostgresServer, workload: Any, leaks: bool
) -> None:
    config = fast(
        size=1, overflow=40, think_ms=60, timeout_s=0.5, steps=(1,), spike=0, max_concurrency=None,
        soak_s=3.0, sample_interval_s=0.05, soak_concurrency=1,
    )  # fmt: skip
    try:
        report = stress(
            pg.dsn(),
            "sqlalchemy",
            config=config,
            workload=Workload.from_callable(workload, ["sqlalchemy"], level="pool"),
        )
    finally:
        for conn in LEAKED:  # the pool is gone: close the sessions themselves
            conn.invalidate()
            conn.close()
        LEAKED.clear()
    doc = checked(report)
    soak = doc["metrics"]["pool"]["sqlalchemy"]["soak"]
    # 3 s of samples: the trend test discounts autocorrelated samples (a staircase
    # sampled with jitter on a loaded machine), so it needs a few dozen of them
    assert len(soak["series"]["t_s"]) >= 20
    assert soak["completed"] > 0
    growing = {
        name
        for name, verdict in doc["metrics"]["pool"]["sqlalchemy"]["verdict"]["soak"].items()
        if verdict["growing"]
    }
    rules = [f["rule"] for f in doc["findings"]]
    if leaks:
        verdicts = doc["metrics"]["pool"]["sqlalchemy"]["verdict"]["soak"]
        why = {name: (v["reason"], soak["series"][name]) for name, v in verdicts.items()}
        assert {"checked_out", "server_backends"} <= growing, why
        assert "soak-growth" in rules
        assert "connection-leak" in rules  # still checked out when the run ended
    else:
        assert not growing
        assert "soak-growth" not in rules
        assert "connection-leak" not in rules
    assert wait_no_sessions(pg) == 0


def test_callable_workloads_run_on_their_own_pools(pg: PostgresServer) -> None:
    calls = {"sync": 0, "async": 0}

    def sync_work(conn: Any) -> None:
        calls["sync"] += 1
        conn.execute("SELECT 2").fetchall()

    async def async_work(conn: Any) -> None:
        calls["async"] += 1
        await conn.fetchval("SELECT 2")
        await asyncio.sleep(0)

    workload = Workload(name="custom", sql="", calls={"psycopg": sync_work, "asyncpg": async_work})
    config = fast(steps=(1, 2), spike=0)
    doc = checked(stress(pg.dsn(), "psycopg,asyncpg", config=config, workload=workload))
    assert calls["sync"] > 0
    assert calls["async"] > 0
    assert "custom" in doc["metrics"]["pool"]["asyncpg"]["workload"]
    # psycopg commits each request (BEGIN, work, COMMIT), asyncpg runs in autocommit: the
    # report says their query latencies are not comparable as such
    assert any("not comparable across pools" in note for note in doc["notes"])


@pytest.mark.parametrize("kind", ["sqlalchemy", "sqlalchemy-async"])
def test_sqlalchemy_acquire_honours_a_per_call_timeout(pg: PostgresServer, kind: str) -> None:
    # The warm-up acquires with the connect timeout; SQLAlchemy's adapter ignored it and
    # waited the pool's own timeout (here 20 s) instead.
    from dbprobe.pool.runner import ADAPTERS

    config = fast(size=1, overflow=0, timeout_s=20.0)
    adapter = ADAPTERS[kind](parse_url(pg.dsn()), config, Workload(), "dbprobe-pool-timeout-test")

    async def attempt() -> float:
        await adapter.open()
        held = await adapter.acquire()
        clock = time.perf_counter()
        try:
            with pytest.raises(Exception, match="QueuePool limit"):
                await adapter.acquire(0.2)
            return time.perf_counter() - clock
        finally:
            await adapter.release(held)
            await adapter.close()

    if kind == "sqlalchemy":
        adapter.open()
        held = adapter.acquire()
        clock = time.perf_counter()
        try:
            with pytest.raises(Exception, match="QueuePool limit"):
                adapter.acquire(0.2)
            waited = time.perf_counter() - clock
        finally:
            adapter.release(held)
            adapter.close()
    else:
        waited = asyncio.run(attempt())
    assert waited < 10.0  # 0.2 s asked; the pool's own 20 s would fail this
    assert adapter.engine.pool.timeout() == 20.0  # the pool's timeout is restored


def test_scenario_workload_runs_a_shop_flow(pg: PostgresServer, shop_db: str) -> None:
    from probes.shop import SCENARIOS

    workload = Workload.from_scenario(SCENARIOS["browse_catalogue"], seed=1)
    config = fast(steps=(1, 2), spike=0, step_seconds=0.5, timeout_s=5.0)
    doc = checked(
        stress(pg.dsn(shop_db), "sqlalchemy,sqlalchemy-async", config=config, workload=workload)
    )
    for kind in ("sqlalchemy", "sqlalchemy-async"):
        steps = doc["metrics"]["pool"][kind]["steps"]
        seen = [(s["concurrency"], s["completed"], s["errors"], s["timeouts"]) for s in steps]
        assert all(s["completed"] > 0 and not s["errors"] for s in steps), seen
    with pytest.raises(Exception, match="no form for pool"):
        stress(pg.dsn(shop_db), "asyncpg", config=config, workload=workload)


def test_findings_severity_and_exit_codes(pg: PostgresServer) -> None:
    config = fast(size=1, overflow=0, think_ms=60, timeout_s=0.03, steps=(2,), spike=0)
    report = stress(pg.dsn(), "psycopg", config=config)
    assert any(f.severity is Severity.ERROR for f in report.findings)
    assert report.exit_code("never") == 0
    assert report.exit_code("error") == 1


def test_a_server_at_127_1_is_local(pg: PostgresServer) -> None:
    # 127.1 is 127.0.0.1: the server is on this machine, so its cores are this machine's
    # and a busy machine is client and server competing (the old check knew only the
    # literal "127.0.0.1" and "localhost", and called such a knee server-limited).
    dsn = pg.dsn()
    assert "@127.0.0.1:" in dsn
    config = fast(steps=(1,), spike=0, max_concurrency=None)
    doc = checked(stress(dsn.replace("@127.0.0.1:", "@127.1:"), "psycopg", config=config))
    assert doc["metrics"]["pool_run"]["server"]["local"] is True
    assert doc["metrics"]["pool_run"]["server_cores"] == os.cpu_count()
    assert wait_no_sessions(pg) == 0


@pytest.mark.parametrize("kind", ["psycopg", "asyncpg"])
def test_measured_waits_match_the_load_by_littles_law(pg: PostgresServer, kind: str) -> None:
    # A FIFO pool of 2 connections, each request holding one 40 ms, 8 workers: a request
    # waits for the 6 ahead of it to be served two at a time, (8/2 - 1) × 40 ms = 120 ms.
    # The measured acquire wait must show it (half of it, as a lower bound with margin).
    # A spike of 8 on the same pool drains in at least 4 rounds of 40 ms.
    config = fast(
        size=2, overflow=0, think_ms=40, timeout_s=5.0, steps=(8,), max_concurrency=8,
        step_seconds=0.6, spike=8,
    )  # fmt: skip
    doc = checked(stress(pg.dsn(), kind, config=config))
    tree = doc["metrics"]["pool"][kind]
    step = tree["steps"][-1]
    assert step["concurrency"] == 8
    assert step["timeouts"] == 0
    assert step["acquire_wait"]["p50"] >= 60.0, step["acquire_wait"]
    spike = tree["spike"]
    assert spike["drain_ms"] >= 120.0, spike
    assert spike["recover_ms"] >= spike["drain_ms"]
    # the probe queues behind the spike in a FIFO pool: it cannot be served without
    # waiting before two rounds of 40 ms have passed (with every step past the capacity,
    # the old no-wait threshold was twice that step's queueing wait: every probe passed)
    assert spike["probe_recover_ms"] >= 80.0, spike
    assert spike["recover_ms"] <= spike["drain_ms"] + 250.0
    assert wait_no_sessions(pg) == 0


@pytest.mark.parametrize("kind", POOL_KINDS)
def test_every_pool_sets_the_statement_timeout(pg: PostgresServer, kind: str) -> None:
    from dbprobe.pool.runner import ADAPTERS

    config = fast()
    adapter = ADAPTERS[kind](parse_url(pg.dsn()), config, Workload(), "dbprobe-pool-st-test")
    sql = "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"

    def read(conn: Any) -> Any:
        if kind == "sqlalchemy":
            return conn.execute(text(sql)).scalar()
        return conn.execute(sql).fetchone()[0]

    async def aread(conn: Any) -> Any:
        if kind == "asyncpg":
            return await conn.fetchval(sql)
        if kind == "sqlalchemy-async":
            return (await conn.execute(text(sql))).scalar()
        cursor = await conn.execute(sql)
        return (await cursor.fetchone())[0]

    async def arun() -> Any:
        await adapter.open()
        try:
            conn = await adapter.acquire()
            try:
                return await aread(conn)
            finally:
                await adapter.release(conn)
        finally:
            await adapter.close()

    if kind in ("sqlalchemy", "psycopg"):
        adapter.open()
        try:
            conn = adapter.acquire()
            try:
                value = read(conn)
            finally:
                adapter.release(conn)
        finally:
            adapter.close()
    else:
        value = asyncio.run(arun())
    assert int(value) == config.statement_timeout_ms


def test_closed_loop_steps_without_timeouts_are_never_exhausted(pg: PostgresServer) -> None:
    # The review's reproduction: size 2, no overflow, up to 8 workers, a 50 ms timeout
    # and 20 ms think time. Waits creep up within a closed-loop step but stay bounded by
    # (N/C - 1) hold times; the old verdict called a step with 0 timeouts "unbounded"
    # and raised a pool-exhaustion error.
    config = fast(size=2, overflow=0, max_concurrency=8, timeout_s=0.05, think_ms=20, spike=0)
    doc = checked(stress(pg.dsn(), "psycopg", config=config))
    tree = doc["metrics"]["pool"]["psycopg"]
    exhausted = tree["verdict"]["exhaustion"]["steps"]
    assert not [s for s in exhausted if s["unbounded"] and s["offered_rate"] is None]
    quiet = {s["concurrency"] for s in tree["steps"] if s["timeouts"] == 0}
    assert quiet, "no step without timeouts: nothing to check"
    assert not quiet & {s["concurrency"] for s in exhausted}
    assert wait_no_sessions(pg) == 0
