"""Realistic reports built from real measurements against a throwaway server.

The probes write their metrics in the shared layout (DESIGN.md, shared conventions);
this module makes the same layout from measurements it takes itself — connection cold
start of psycopg over TCP and the unix socket, a psycopg_pool driven at a few
concurrency levels, a real N+1 loop and a real sequential-scan plan — so the renderers,
``dbprobe compare`` and the SLO checks are exercised on real numbers, never hard-coded
ones. ``docs/examples/generate.py`` uses it too.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dbprobe.pg import PostgresServer
from dbprobe.report.model import Distribution, Report, Target
from dbprobe.rules import RULES

INTERVAL_S = 0.025


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def measure_coldstart(pg: PostgresServer, db: str, rounds: int = 12) -> dict[str, Any]:
    """``metrics["coldstart"]``: per-driver phases and the raw TCP floor, in ms."""
    out: dict[str, Any] = {}
    floor: list[float] = []
    targets = [("psycopg", pg.dsn(db), True)]
    if pg.socket_dir:
        targets.append(("psycopg_unix", pg.dsn(db, socket=True), False))
    for name, dsn, tcp in targets:
        phases: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(rounds):
            t0 = time.perf_counter()
            if tcp:
                socket.getaddrinfo(pg.host, pg.port, type=socket.SOCK_STREAM)
                t1 = time.perf_counter()
                with socket.create_connection((pg.host, pg.port), timeout=5):
                    t2 = time.perf_counter()
                phases["dns"].append(_ms(t1 - t0))
                phases["tcp"].append(_ms(t2 - t1))
                floor.append(_ms(t2 - t1))
            t3 = time.perf_counter()
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
            t4 = time.perf_counter()
            try:
                conn.execute("SELECT 1").fetchone()
                t5 = time.perf_counter()
            finally:
                conn.close()
            t6 = time.perf_counter()
            phases["startup"].append(_ms(t4 - t3))
            phases["first_query"].append(_ms(t5 - t4))
            phases["total"].append(_ms(t6 - t3))
        node: dict[str, Any] = {k: Distribution.of(v) for k, v in phases.items()}
        node["_meta"] = {"transport": "tcp" if tcp else "unix", "measured_by": "psycopg"}
        out[name] = node
    out["tcp_floor"] = {"connect": Distribution.of(floor)}
    return out


def _worker(
    pool: ConnectionPool[Any],
    sql: str,
    deadline: float,
    acquire: list[float],
    latency: list[float],
    done_at: list[float],
    failures: collections.Counter[str],
) -> None:
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            with pool.connection(timeout=1.0) as conn:
                t1 = time.perf_counter()
                conn.execute(sql).fetchall()
                t2 = time.perf_counter()
        except PoolTimeout:
            failures["timeout"] += 1
            continue
        except psycopg.Error as exc:
            failures[type(exc).__name__] += 1
            continue
        acquire.append(_ms(t1 - t0))
        latency.append(_ms(t2 - t1))
        done_at.append(t2)


def measure_pool(
    pg: PostgresServer,
    db: str,
    *,
    levels: tuple[int, ...] = (1, 2, 4, 8),
    size: int = 3,
    step_s: float = 0.4,
    sql: str = "SELECT count(*) FROM generate_series(1, 200)",
) -> dict[str, Any]:
    """``metrics["pool"]["psycopg_pool"]``: a fixed-size psycopg_pool driven by threads
    at each concurrency level for ``step_s`` seconds."""
    steps: list[dict[str, Any]] = []
    with ConnectionPool(
        pg.dsn(db), min_size=size, max_size=size, open=True, kwargs={"autocommit": True}
    ) as pool:
        pool.wait(timeout=10)
        for level in levels:
            acquire: list[float] = []
            latency: list[float] = []
            done_at: list[float] = []
            failures: collections.Counter[str] = collections.Counter()
            cpu0, start = time.process_time(), time.perf_counter()
            deadline = start + step_s
            threads = [
                threading.Thread(
                    target=_worker,
                    args=(pool, sql, deadline, acquire, latency, done_at, failures),
                )
                for _ in range(level)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            elapsed = time.perf_counter() - start
            cpu = (time.process_time() - cpu0) / elapsed
            buckets = collections.Counter(int((t - start) / INTERVAL_S) for t in done_at)
            n_buckets = max(1, int(step_s / INTERVAL_S))
            rates = [buckets.get(i, 0) / INTERVAL_S for i in range(n_buckets)]
            timeouts = failures.pop("timeout", 0)
            steps.append(
                {
                    "concurrency": level,
                    "offered_rate": None,
                    "throughput": Distribution.of(rates, unit="q/s"),
                    "throughput_qps": len(done_at) / elapsed,
                    "acquire_wait": Distribution.of(acquire),
                    "query_latency": Distribution.of(latency),
                    "timeouts": timeouts,
                    "errors": dict(failures),
                    "client_cpu": round(cpu, 3),
                }
            )
        stats = pool.get_stats()
    return {"psycopg_pool": {"steps": steps, "stats": dict(stats), "size": size}}


def _n_plus_one(conn: psycopg.Connection[Any]) -> tuple[int, str, int]:
    """A real N+1 loop: one query per parent row. Returns (queries, sql, line)."""
    sql = "SELECT id, note FROM sample_child WHERE parent_id = %s"
    parents = [r[0] for r in conn.execute("SELECT id FROM sample_parent ORDER BY id")]
    import inspect

    line = inspect.currentframe().f_lineno + 2  # type: ignore[union-attr]
    for pid in parents:
        conn.execute(sql, (pid,)).fetchall()  # the N+1
    return len(parents), sql, line


def build_sample_report(
    pg: PostgresServer,
    *,
    levels: tuple[int, ...] = (1, 2, 4, 8),
    step_s: float = 0.4,
    coldstart_rounds: int = 12,
    pool_sql: str = "SELECT count(*) FROM generate_series(1, 200)",
) -> Report:
    """A ``demo``-like report: cold start, pool stress, an N+1 finding with its real
    call site, an unindexed lookup with its real plan, and an unused index."""
    t0 = time.perf_counter()
    db = pg.create_database()
    try:
        with pg.connect(db) as conn:
            conn.execute(
                "CREATE TABLE sample_parent (id int PRIMARY KEY);"
                "CREATE TABLE sample_child (id serial PRIMARY KEY, parent_id int NOT NULL"
                " REFERENCES sample_parent, note text, code int);"
                "CREATE INDEX sample_child_note_idx ON sample_child (note);"
                "INSERT INTO sample_parent SELECT g FROM generate_series(1, 20) g;"
                "INSERT INTO sample_child (parent_id, note, code)"
                " SELECT 1 + g % 20, 'n' || g, g FROM generate_series(1, 20000) g;"
                "ANALYZE sample_parent; ANALYZE sample_child;"
            )
            queries, n1_sql, n1_line = _n_plus_one(conn)
            lookup = "SELECT id FROM sample_child WHERE code = 4242"
            plan = conn.execute(f"EXPLAIN (FORMAT JSON) {lookup}").fetchone()[0]  # type: ignore[index]
            t_scan = time.perf_counter()
            conn.execute(lookup).fetchall()
            scan_ms = _ms(time.perf_counter() - t_scan)
        metrics: dict[str, Any] = {
            "coldstart": measure_coldstart(pg, db, coldstart_rounds),
            "pool": measure_pool(pg, db, levels=levels, step_s=step_s, sql=pool_sql),
        }
    finally:
        pg.drop_database(db)
    target = Target(f"postgresql://{pg.user}@{pg.host}:{pg.port}/sample", pg.version)
    report = Report(command="demo", target=target)
    rel = "tests/reports/samples.py"
    root = plan[0]["Plan"]
    report.add(
        RULES["n-plus-one"].finding(
            f"sample_child loaded once per parent row: {queries} queries from one call site",
            "load the children with the parents in one query: "
            "SELECT … FROM sample_child WHERE parent_id = ANY(%s), or joinedload/selectinload",
            location=f"{rel}:{n1_line}",
            table="sample_child",
            sql=n1_sql,
            count=queries,
            fingerprint="SELECT id, note FROM sample_child WHERE parent_id = $1",
        ),
        RULES["unindexed-lookup"].finding(
            f"{root['Node Type']} on sample_child ({root.get('Plan Rows')} estimated rows of "
            "20000) to find rows by code",
            "CREATE INDEX CONCURRENTLY sample_child_code_idx ON sample_child (code);",
            table="public.sample_child",
            sql=lookup,
            fingerprint="SELECT id FROM sample_child WHERE code = $1",
            evidence={"plan": plan, "duration_ms": round(scan_ms, 3), "table_rows": 20000},
        ),
        RULES["unused-index"].finding(
            "index sample_child_note_idx has never been scanned",
            "DROP INDEX CONCURRENTLY sample_child_note_idx; (after checking replicas use it "
            "neither)",
            table="public.sample_child",
            fingerprint="public.sample_child.sample_child_note_idx",
        ),
    )
    report.metrics = metrics
    report.duration_s = time.perf_counter() - t0
    report.notes.append("throwaway server; not durable (fsync off)")
    return report
