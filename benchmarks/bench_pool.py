"""Pool harness overhead: dbprobe's load driver against a bare hand-written loop on the
same pool, at 1, 4 and 16 workers, with ``pgbench -S -M prepared`` at the same client
counts as the physical reference — all in one run, on one throwaway server.

    python benchmarks/bench_pool.py [--rounds 12] [--seconds 0.6] [--workers 1,4,16]
                                    [--pools all] [--provider local] [--json out.json]

Workload: ``SELECT abalance FROM pgbench_accounts WHERE aid = 42`` (select-only, like
``pgbench -S``) on a ``pgbench -i -s 1`` database over TCP; pool size = workers,
overflow 0, acquire timeout 30 s, one transaction per request (as ``pool.connection()``
/ ``engine.begin()`` do; asyncpg runs in autocommit). The bare loops configure their
pools exactly like the harness — same session settings (application_name,
statement_timeout) and timeouts (an asyncpg acquire with a timeout costs a task per
call: both pay it). Rounds interleave harness and bare (order alternating
per round) so drift on a shared machine hits both. Budget: harness ≥ 0.9 × bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._machine import command_line, machine_info
from dbprobe.pg import PostgresServer, throwaway
from dbprobe.pool import StressConfig, Workload
from dbprobe.pool import _async as async_driver
from dbprobe.pool import _sync as sync_driver
from dbprobe.pool._compat import (
    psycopg_connect_kwargs,
    sqlalchemy_async_connect_args,
    sqlalchemy_connect_args,
)
from dbprobe.pool.config import ASYNC_KINDS, parse_pools
from dbprobe.pool.control import RunControl
from dbprobe.pool.runner import ADAPTERS
from dbprobe.pool.server import ServerMonitor
from dbprobe.urls import DatabaseTarget, parse_url

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = 42"
BUDGET = 0.9
PGBENCH_CANDIDATES = ("/usr/lib/postgresql/15/bin/pgbench",)


def _config(workers: int, seconds: float) -> StressConfig:
    return StressConfig(
        size=workers,
        overflow=0,
        timeout_s=30.0,
        step_seconds=seconds,
        max_concurrency=max(2 * workers, 2),
        spike=0,
    )


# -- the harness ----------------------------------------------------------------------


def harness(kind: str, target: DatabaseTarget, workers: int, seconds: float) -> dict[str, float]:
    """One closed-loop step of dbprobe's driver; completed requests/s in its window."""
    config = _config(workers, seconds)
    adapter = ADAPTERS[kind](target, config, Workload.from_sql(SQL), f"dbprobe-bench-{kind}")
    with ServerMonitor(target) as monitor:
        control = RunControl()
        if kind in ASYNC_KINDS:
            driver: Any = async_driver.AsyncDriver(adapter, config, monitor, control)

            async def run() -> Any:
                await adapter.open()
                try:
                    await driver.warm_up()
                    return await driver.closed_step(workers)
                finally:
                    await adapter.close()

            step = asyncio.run(run())
        else:
            driver = sync_driver.Driver(adapter, config, monitor, control)
            adapter.open()
            try:
                driver.warm_up()
                step = driver.closed_step(workers)
            finally:
                adapter.close()
    return {"qps": step.throughput_qps, "cpu": step.client_cpu, "n": step.completed}


# -- bare loops: what one would write by hand -------------------------------------------


def _measure_threads(loop: Callable[[int, list[int], threading.Event], None], workers: int,
                     warmup: float, seconds: float) -> dict[str, float]:  # fmt: skip
    counts = [0] * workers
    stop = threading.Event()
    threads = [threading.Thread(target=loop, args=(i, counts, stop)) for i in range(workers)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    c0, w0, cpu0 = sum(counts), time.perf_counter(), time.process_time()
    time.sleep(seconds)
    c1, w1, cpu1 = sum(counts), time.perf_counter(), time.process_time()
    stop.set()
    for t in threads:
        t.join()
    return {"qps": (c1 - c0) / (w1 - w0), "cpu": (cpu1 - cpu0) / (w1 - w0), "n": c1 - c0}


async def _measure_tasks(make: Callable[[int, list[int], asyncio.Event], Any], workers: int,
                         warmup: float, seconds: float) -> dict[str, float]:  # fmt: skip
    counts = [0] * workers
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(make(i, counts, stop)) for i in range(workers)]
    await asyncio.sleep(warmup)
    c0, w0, cpu0 = sum(counts), time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    c1, w1, cpu1 = sum(counts), time.perf_counter(), time.process_time()
    stop.set()
    await asyncio.gather(*tasks)
    return {"qps": (c1 - c0) / (w1 - w0), "cpu": (cpu1 - cpu0) / (w1 - w0), "n": c1 - c0}


def bare(kind: str, target: DatabaseTarget, workers: int, seconds: float) -> dict[str, float]:
    warmup = _config(workers, seconds).warmup_s
    # The same session settings as the harness's pools (application_name, statement
    # timeout, connect timeout): only the driving loop differs.
    config = _config(workers, seconds)
    app_name = f"dbprobe-bench-bare-{kind}"
    if kind == "sqlalchemy":
        from sqlalchemy import create_engine, text

        engine = create_engine(
            target.sqlalchemy_url("psycopg"),
            pool_size=workers,
            max_overflow=0,
            connect_args=sqlalchemy_connect_args(target, app_name, config),
        )
        stmt = text(SQL)

        def loop(i: int, counts: list[int], stop: threading.Event) -> None:
            while not stop.is_set():
                with engine.begin() as conn:
                    conn.execute(stmt).all()
                counts[i] += 1

        try:
            return _measure_threads(loop, workers, warmup, seconds)
        finally:
            engine.dispose()
    if kind == "psycopg":
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(
            target.libpq_dsn(),
            min_size=workers,
            max_size=workers,
            kwargs=psycopg_connect_kwargs(target, app_name, config),
            open=True,
        )
        pool.wait()

        def ploop(i: int, counts: list[int], stop: threading.Event) -> None:
            while not stop.is_set():
                with pool.connection() as conn:
                    conn.execute(SQL).fetchall()
                counts[i] += 1

        try:
            return _measure_threads(ploop, workers, warmup, seconds)
        finally:
            pool.close()
    return asyncio.run(_bare_async(kind, target, workers, warmup, seconds))


async def _bare_async(
    kind: str, target: DatabaseTarget, workers: int, warmup: float, seconds: float
) -> dict[str, float]:
    config = _config(workers, seconds)
    if kind == "sqlalchemy-async":
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(
            target.sqlalchemy_url("asyncpg"),
            pool_size=workers,
            max_overflow=0,
            connect_args=sqlalchemy_async_connect_args(target, "dbprobe-bench-bare", config),
        )
        stmt = text(SQL)

        async def sa_loop(i: int, counts: list[int], stop: asyncio.Event) -> None:
            while not stop.is_set():
                async with engine.begin() as conn:
                    (await conn.execute(stmt)).all()
                counts[i] += 1

        try:
            return await _measure_tasks(sa_loop, workers, warmup, seconds)
        finally:
            await engine.dispose()
    if kind == "psycopg-async":
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(
            target.libpq_dsn(),
            min_size=workers,
            max_size=workers,
            kwargs=psycopg_connect_kwargs(target, "dbprobe-bench-bare", config),
            open=False,
        )
        await pool.open(wait=True)

        async def pa_loop(i: int, counts: list[int], stop: asyncio.Event) -> None:
            while not stop.is_set():
                async with pool.connection() as conn:
                    await (await conn.execute(SQL)).fetchall()
                counts[i] += 1

        try:
            return await _measure_tasks(pa_loop, workers, warmup, seconds)
        finally:
            await pool.close()
    import asyncpg

    apool = await asyncpg.create_pool(
        **target.asyncpg_kwargs(),
        min_size=workers,
        max_size=workers,
        server_settings={
            "application_name": "dbprobe-bench-bare",
            "statement_timeout": str(config.statement_timeout_ms),
        },
    )

    timeout = _config(workers, seconds).timeout_s  # the harness's pools have a timeout too

    async def ap_loop(i: int, counts: list[int], stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with apool.acquire(timeout=timeout) as conn:
                await conn.fetch(SQL)
            counts[i] += 1

    try:
        return await _measure_tasks(ap_loop, workers, warmup, seconds)
    finally:
        await apool.close()


# -- pgbench --------------------------------------------------------------------------


def pgbench_path() -> str:
    for candidate in (shutil.which("pgbench"), *PGBENCH_CANDIDATES):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("pgbench not found (apt install postgresql-client)")


def _pgbench_env(pg: PostgresServer) -> dict[str, str]:
    env = dict(os.environ)
    if pg.password is not None:
        env["PGPASSWORD"] = pg.password
    return env


def pgbench_init(pg: PostgresServer, db: str) -> None:
    address = ["-h", pg.host, "-p", str(pg.port), "-U", pg.user]
    proc = subprocess.run(
        [pgbench_path(), "-i", "-s", "1", "-q", *address, db],
        capture_output=True,
        text=True,
        env=_pgbench_env(pg),
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"pgbench -i failed: {proc.stderr.strip()}")


def pgbench(pg: PostgresServer, db: str, clients: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [pgbench_path(), "-S", "-M", "prepared", "-n", "-c", str(clients),
         "-j", str(min(clients, os.cpu_count() or 1)), "-T", str(max(1, round(seconds))),
         "-h", pg.host, "-p", str(pg.port), "-U", pg.user, db],
        check=True,
        capture_output=True,
        text=True,
        env=_pgbench_env(pg),
    ).stdout  # fmt: skip
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if not match:
        raise SystemExit(f"cannot read pgbench output:\n{out}")
    return {"qps": float(match.group(1))}


# -- the run --------------------------------------------------------------------------


def _median_range(values: list[float], fmt: str = "{:,.0f}") -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(low)}–{fmt.format(high)})"


def _cpu_us(result: dict[str, float], seconds: float) -> float:
    """Client CPU time per request, in microseconds (less sensitive than throughput to
    other processes taking the cores)."""
    return result["cpu"] * seconds / max(result["n"], 1) * 1e6


def recording_cost_ns(iterations: int = 200_000) -> float:
    """What the harness adds per request without any database: four perf_counter calls
    and one ``Recorder.ok`` (four array appends), in nanoseconds."""
    from dbprobe.pool.recording import Recorder

    rec = Recorder()
    ok = rec.ok
    clock = time.perf_counter
    t0 = time.perf_counter()
    for _ in range(iterations):
        a = clock()
        b = clock()
        c = clock()
        ok(a, b, c, clock())
    with_recording = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iterations):
        pass
    empty = time.perf_counter() - t0
    return (with_recording - empty) / iterations * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=0.6)
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--pools", default="all")
    parser.add_argument("--provider", default=None)
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()
    kinds = parse_pools(args.pools)
    counts = [int(w) for w in args.workers.split(",")]
    print(machine_info())
    print(command_line())
    results: dict[str, Any] = {"harness": {}, "bare": {}, "pgbench": {}}
    with throwaway(args.provider, max_connections=100) as pg:
        db = pg.create_database()
        pgbench_init(pg, db)
        target = parse_url(pg.dsn(db))
        print(f"PostgreSQL {pg.version} ({pg.provider}), TCP {pg.host}:{pg.port}; "
              f"{args.rounds} rounds of {args.seconds:g}s; workload: {SQL}")  # fmt: skip
        for rnd in range(args.rounds):
            for workers in counts:
                results["pgbench"].setdefault(str(workers), []).append(
                    pgbench(pg, db, workers, args.seconds)
                )
                for kind in kinds:
                    order = (harness, bare) if rnd % 2 == 0 else (bare, harness)
                    for fn in order:
                        measured = fn(kind, target, workers, args.seconds)
                        side = "harness" if fn is harness else "bare"
                        results[side].setdefault(kind, {}).setdefault(str(workers), []).append(
                            measured
                        )
                    h = results["harness"][kind][str(workers)][-1]["qps"]
                    b = results["bare"][kind][str(workers)][-1]["qps"]
                    line = f"harness {h:8,.0f}  bare {b:8,.0f}  ratio {h / b:.3f}"
                    print(f"round {rnd + 1} {kind:17s} {workers:3d} workers: {line}", flush=True)
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(f"recording cost per request (no database): {recording_cost_ns():.0f} ns\n")
    print(
        "| pool | workers | harness q/s | bare q/s | harness / bare | CPU µs/request "
        "harness / bare | client CPU | pgbench -S -M prepared tps | harness / pgbench |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    failures = 0
    for kind in kinds:
        for workers in counts:
            h = [r["qps"] for r in results["harness"][kind][str(workers)]]
            b = [r["qps"] for r in results["bare"][kind][str(workers)]]
            cpu = [r["cpu"] for r in results["harness"][kind][str(workers)]]
            ratios = [x / y for x, y in zip(h, b, strict=True)]
            cpu_h = [_cpu_us(r, args.seconds) for r in results["harness"][kind][str(workers)]]
            cpu_b = [_cpu_us(r, args.seconds) for r in results["bare"][kind][str(workers)]]
            ref = [r["qps"] for r in results["pgbench"][str(workers)]]
            ok = statistics.median(ratios) >= BUDGET
            failures += not ok
            print(
                f"| {kind} | {workers} | {_median_range(h)} | {_median_range(b)} | "
                f"{_median_range(ratios, '{:.3f}')}{'' if ok else ' **below budget**'} | "
                f"{statistics.median(cpu_h):.0f} / {statistics.median(cpu_b):.0f} | "
                f"{statistics.median(cpu):.2f} | {_median_range(ref)} | "
                f"{statistics.median(h) / statistics.median(ref):.3f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nbudget harness ≥ {BUDGET} × bare (median of per-round ratios): "
          f"{'met' if not failures else f'missed in {failures} rows'}")  # fmt: skip
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
