"""Capture overhead: the same loops bare, with a plain listener, under dbprobe.capture(),
and (on SQLAlchemy 2.0, where it still imports) under nplusone.

    PYTHONPATH=. python benchmarks/bench_capture.py [--rounds 9] [--iterations 5]

Two workloads against a throwaway PostgreSQL (shop fixture, small seed) over its unix
socket, psycopg driver:

* ``orm-n+1``: load 200 orders, read ``order.customer`` on each (one lazy-load SELECT
  per distinct customer), expunge, repeat — an N+1-heavy ORM loop;
* ``core``: 2,000 point SELECTs of one Core statement on one connection.

Modes run interleaved in every round (their order rotates), so machine noise hits all of
them alike. Reported per mode, in wall time and in this process's CPU time: median time
per statement, min–max over rounds, and the ratio to the bare median. The CPU-time ratio
is the stricter one (the server's share of each statement is not in the denominator) and
the steadier one on a loaded machine. nplusone patches SQLAlchemy globally and cannot be
undone, so it runs after the interleaved rounds and is compared with the bare median
measured before.
The analysis cost (``log.findings()`` after the loop) is reported apart.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks._machine import write_json  # noqa: E402


def machine_info() -> str:
    import sqlalchemy

    versions = [f"python {platform.python_version()}", f"sqlalchemy {sqlalchemy.__version__}"]
    for name in ("psycopg", "nplusone"):
        try:
            module = __import__(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
        except Exception:
            versions.append(f"{name} (not importable)")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"{platform.platform()}, load {tuple(round(x, 2) for x in load)}\n"
        f"versions: {', '.join(versions)}\n"
        f"command: PYTHONPATH=. {os.path.basename(sys.executable)} "
        f"benchmarks/bench_capture.py {' '.join(sys.argv[1:])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=5, help="ORM loop repeats per run")
    parser.add_argument("--core-statements", type=int, default=2000)
    parser.add_argument("--json", default=None, help="write the results here (machine-readable)")
    args = parser.parse_args()

    from sqlalchemy import bindparam, create_engine, event, select
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    import dbprobe
    from dbprobe.pg import throwaway
    from fixtures.shop import seed
    from fixtures.shop.models import Customer, Order

    print(machine_info())
    with throwaway() as pg:
        db = pg.create_database()
        setup = create_engine(pg.url(db))
        with setup.begin() as conn:
            seed.build(conn, "small")
        setup.dispose()
        engine = create_engine(pg.socket_url(db))
        print(f"server: PostgreSQL {pg.version} ({pg.provider}), unix socket\n")

        orders_stmt = select(Order).order_by(Order.id).limit(200)
        point = select(Customer.__table__.c.email).where(Customer.__table__.c.id == bindparam("id"))

        def orm_loop() -> int:
            count = 0
            with Session(engine) as session:
                for _ in range(args.iterations):
                    orders = session.scalars(orders_stmt).all()
                    for order in orders:
                        count += len(order.customer.full_name)
                    session.expunge_all()
            return count

        def core_loop() -> int:
            total = 0
            with engine.connect() as conn:
                for i in range(args.core_statements):
                    total += len(conn.execute(point, {"id": 1 + i % 500}).scalar_one())
            return total

        recorded: list[tuple[str, int]] = []

        def before(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            conn.info["_t0"] = time.perf_counter_ns()

        def after(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            recorded.append((statement, time.perf_counter_ns() - conn.info.pop("_t0")))

        def count_statements(fn: Callable[[], int]) -> int:
            with dbprobe.capture() as log:
                fn()
            return len(log)

        def run_bare(fn: Callable[[], int]) -> None:
            fn()

        def run_listener(fn: Callable[[], int]) -> None:
            event.listen(Engine, "before_cursor_execute", before)
            event.listen(Engine, "after_cursor_execute", after)
            try:
                fn()
            finally:
                event.remove(Engine, "before_cursor_execute", before)
                event.remove(Engine, "after_cursor_execute", after)
                recorded.clear()

        last_logs: dict[str, Any] = {}

        def run_dbprobe(fn: Callable[[], int]) -> None:
            with dbprobe.capture() as log:
                fn()
            last_logs[fn.__name__] = log

        modes: dict[str, Callable[[Callable[[], int]], None]] = {
            "bare": run_bare,
            "listener": run_listener,
            "dbprobe": run_dbprobe,
        }
        workloads = {"orm-n+1": orm_loop, "core": core_loop}
        statements = {name: count_statements(fn) for name, fn in workloads.items()}
        for fn in workloads.values():  # warm up caches, pool, statement cache
            fn()

        results: dict[str, dict[str, list[float]]] = {w: {m: [] for m in modes} for w in workloads}
        cpu: dict[str, dict[str, list[float]]] = {w: {m: [] for m in modes} for w in workloads}
        names = list(modes)
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for workload, fn in workloads.items():
                for mode in order:
                    c0, t0 = time.process_time(), time.perf_counter()
                    modes[mode](fn)
                    results[workload][mode].append(time.perf_counter() - t0)
                    cpu[workload][mode].append(time.process_time() - c0)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

        nplusone_note = ""
        try:
            import nplusone.ext.sqlalchemy  # noqa: F401  (patches SQLAlchemy on import)
            from nplusone.core import profiler

            class Recording(profiler.Profiler):  # type: ignore[misc]
                seen: ClassVar[list[str]] = []

                def notify(self, message: Any) -> None:
                    self.seen.append(message.message)

            for workload, fn in workloads.items():
                results[workload]["nplusone"] = []
                cpu[workload]["nplusone"] = []
                for _ in range(args.rounds):
                    c0, t0 = time.process_time(), time.perf_counter()
                    with Recording():
                        fn()
                    results[workload]["nplusone"].append(time.perf_counter() - t0)
                    cpu[workload]["nplusone"].append(time.process_time() - c0)
            nplusone_note = (
                f"nplusone reported {len(Recording.seen)} problems over all its runs "
                f"(measured after the interleaved rounds; it patches SQLAlchemy for good)"
            )
        except Exception as exc:  # it does not import on SQLAlchemy 2.1
            nplusone_note = f"nplusone skipped: {type(exc).__name__}: {exc}".splitlines()[0]

        summary: dict[str, Any] = {}
        for title, table in (("wall time", results), ("client CPU time", cpu)):
            for workload, per_mode in table.items():
                n = statements[workload]
                bare_runs = per_mode["bare"]
                bare = statistics.median(bare_runs)
                print(f"\n{workload}, {title}: {n} statements per run, {args.rounds} rounds")
                header = f"  {'mode':<9} {'median µs/stmt':>15} {'min–max ms/run':>18}"
                print(header + f" {'ratio':>7} {'paired':>7} {'+µs/stmt':>9}")
                for mode, samples in per_mode.items():
                    med = statistics.median(samples)
                    per_round = [m / b for m, b in zip(samples, bare_runs, strict=False)]
                    # Paired: each run against the bare run of the same round (same noise).
                    paired = (
                        statistics.median(m / b for m, b in zip(samples, bare_runs, strict=False))
                        if mode != "nplusone"
                        else med / bare
                    )
                    print(
                        f"  {mode:<9} {med / n * 1e6:>15.1f} "
                        f"{min(samples) * 1e3:>8.1f}–{max(samples) * 1e3:<8.1f} "
                        f"{med / bare:>7.3f} {paired:>7.3f} {(med - bare) / n * 1e6:>+9.2f}"
                    )
                    key = "wall" if title == "wall time" else "cpu"
                    summary.setdefault(workload, {}).setdefault(mode, {})[key] = {
                        "us_per_statement": med / n * 1e6,
                        "ratio": med / bare,
                        "paired": paired,
                        "paired_min": min(per_round) if mode != "nplusone" else None,
                        "paired_max": max(per_round) if mode != "nplusone" else None,
                    }
        # The cost inside dbprobe's listeners, timed directly (robust on a noisy machine).
        from dbprobe.capture import scope as capture_scope

        spent: list[int] = []
        before_fn, after_fn = (
            capture_scope._before_cursor_execute,
            capture_scope._after_cursor_execute,
        )

        def timed_before(*a: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return before_fn(*a)
            finally:
                spent.append(time.perf_counter_ns() - t0)

        def timed_after(*a: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return after_fn(*a)
            finally:
                spent[-1] += time.perf_counter_ns() - t0

        for workload, fn in workloads.items():
            spent.clear()
            with dbprobe.capture():
                event.remove(Engine, "before_cursor_execute", before_fn)
                event.remove(Engine, "after_cursor_execute", after_fn)
                event.listen(Engine, "before_cursor_execute", timed_before, retval=True)
                event.listen(Engine, "after_cursor_execute", timed_after)
                try:
                    fn()
                finally:
                    event.remove(Engine, "before_cursor_execute", timed_before)
                    event.remove(Engine, "after_cursor_execute", timed_after)
                    event.listen(Engine, "before_cursor_execute", before_fn, retval=True)
                    event.listen(Engine, "after_cursor_execute", after_fn)
            spent.sort()
            n = len(spent)
            bare_stmt = statistics.median(results[workload]["bare"]) / statements[workload] * 1e9
            p50, p95 = spent[n // 2], spent[int(n * 0.95)]
            summary.setdefault(workload, {})["listener_time"] = {
                "p50_us": p50 / 1e3,
                "p95_us": p95 / 1e3,
                "n": n,
                "bare_us_per_statement": bare_stmt / 1e3,
                "ratio": 1 + p50 / bare_stmt,
            }
            print(
                f"\n{workload}: time inside dbprobe's listeners per statement: p50 "
                f"{p50 / 1e3:.2f} µs, p95 {p95 / 1e3:.2f} µs (n={n}); against the bare "
                f"median of {bare_stmt / 1e3:.1f} µs per statement: {1 + p50 / bare_stmt:.3f}x"
            )
        for name, log in last_logs.items():
            t0 = time.perf_counter()
            findings = log.findings()
            took = time.perf_counter() - t0
            print(
                f"\nanalysis of one {name} log ({len(log)} statements): {took * 1e3:.1f} ms, "
                f"{len(findings)} findings ({', '.join(sorted({f.rule for f in findings}))})"
            )
        print(f"\n{nplusone_note}")
        engine.dispose()
        write_json(
            args.json,
            {
                "benchmark": "capture",
                "server": f"PostgreSQL {pg.version} ({pg.provider})",
                "rounds": args.rounds,
                "statements": statements,
                "summary": summary,
                "nplusone": nplusone_note,
                "seconds": {"wall": results, "cpu": cpu},
            },
        )


if __name__ == "__main__":
    main()
