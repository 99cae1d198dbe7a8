"""Capture overhead: the same loops bare, with a plain listener, under dbprobe.capture(),
and (on SQLAlchemy 2.0, where it still imports) under nplusone.

    PYTHONPATH=. python benchmarks/bench_capture.py [--rounds 9] [--iterations 5]

Two workloads against a throwaway PostgreSQL (shop fixture, small seed) over its unix
socket (TCP when the server has none; the header says which), psycopg driver:

* ``orm-n+1``: load 200 orders, read ``order.customer`` on each (one lazy-load SELECT
  per distinct customer), expunge, repeat — an N+1-heavy ORM loop;
* ``core``: 2,000 point SELECTs of one Core statement on one connection.

Modes run interleaved in every round (their order rotates), so machine noise hits all of
them alike. ``bare`` runs on an engine of its own on which SQLAlchemy's event dispatch is
off (``_has_events = False``): registering and removing a class-level listener leaves
``Engine._has_events`` set, so an engine that ever saw one is not bare any more. Reported
per mode, in wall time and in this process's CPU time: median time per statement,
min–max over rounds, the ratio of medians, and the *paired* ratio (each run against the
bare run of the same round) as median [min–max] over rounds. The CPU-time ratio is the
stricter one (the server's share of each statement is not in the denominator) and the
steadier one on a loaded machine. The last line checks dbprobe's paired ratio on the ORM
loop against the 1.05× budget.

nplusone patches SQLAlchemy for good, so it is measured in child processes: every round
runs one child bare and one child with nplusone (their order alternates), each warming
up, then timing the same loops; the ratio is paired per round like the others.
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
from typing import Any

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


BUDGET = 1.05
"""dbprobe.capture() against bare on the ORM N+1 loop (paired, CPU and wall)."""


def _workloads(engine: Any, iterations: int, core_statements: int) -> dict[str, Any]:
    from sqlalchemy import bindparam, select
    from sqlalchemy.orm import Session

    from fixtures.shop.models import Customer, Order

    orders_stmt = select(Order).order_by(Order.id).limit(200)
    point = select(Customer.__table__.c.email).where(Customer.__table__.c.id == bindparam("id"))

    def orm_loop() -> int:
        count = 0
        with Session(engine) as session:
            for _ in range(iterations):
                orders = session.scalars(orders_stmt).all()
                for order in orders:
                    count += len(order.customer.full_name)
                session.expunge_all()
        return count

    def core_loop() -> int:
        total = 0
        with engine.connect() as conn:
            for i in range(core_statements):
                total += len(conn.execute(point, {"id": 1 + i % 500}).scalar_one())
        return total

    return {"orm-n+1": orm_loop, "core": core_loop}


def _bare_engine(url: str) -> Any:
    """An engine on which SQLAlchemy skips its event dispatch (see the module doc)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    engine._has_events = False  # shadows the class attribute a class-level listener set
    return engine


def child(mode: str, url: str, iterations: int, core_statements: int) -> None:
    """One nplusone-comparison run in a fresh process: warm up, time each workload once,
    print ``{"wall": {...}, "cpu": {...}, "problems": n}`` as JSON on stdout."""
    import json

    seen: list[str] = []
    if mode == "nplusone":
        import nplusone.ext.sqlalchemy  # noqa: F401  (patches SQLAlchemy on import)
        from nplusone.core import profiler

        class Recording(profiler.Profiler):  # type: ignore[misc]
            def notify(self, message: Any) -> None:
                seen.append(message.message)

    engine = _bare_engine(url)
    workloads = _workloads(engine, iterations, core_statements)
    for fn in workloads.values():
        fn()  # warm up
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name, fn in workloads.items():
        c0, t0 = time.process_time(), time.perf_counter()
        if mode == "nplusone":
            with Recording():
                fn()
        else:
            fn()
        wall[name] = time.perf_counter() - t0
        cpu[name] = time.process_time() - c0
    engine.dispose()
    print(json.dumps({"wall": wall, "cpu": cpu, "problems": len(seen)}))


def _nplusone_rounds(
    url: str, args: argparse.Namespace
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]], str]:
    """Paired child-process runs, bare and nplusone alternating (empty when nplusone
    does not import here)."""
    import json
    import subprocess

    probe = subprocess.run(
        [sys.executable, "-c", "import nplusone.ext.sqlalchemy"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return {}, {}, f"nplusone skipped: {last}"
    wall: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    problems = 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), *sys.path])}
    for round_no in range(args.rounds):
        order = ["bare", "nplusone"] if round_no % 2 == 0 else ["nplusone", "bare"]
        for mode in order:
            out = subprocess.run(
                [
                    sys.executable, os.path.abspath(__file__), "--child", mode, "--url", url,
                    "--iterations", str(args.iterations),
                    "--core-statements", str(args.core_statements),
                ],
                capture_output=True, text=True, check=True, env=env, timeout=600,
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            problems += int(result["problems"])
            for workload, value in result["wall"].items():
                wall.setdefault(workload, {}).setdefault(mode, []).append(value)
            for workload, value in result["cpu"].items():
                cpu.setdefault(workload, {}).setdefault(mode, []).append(value)
        print(f"nplusone round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    note = (
        f"nplusone reported {problems} problems over all its runs (child processes, "
        f"paired with a bare child in each round)"
    )
    return wall, cpu, note


def _paired(samples: list[float], bare_runs: list[float]) -> list[float]:
    return sorted(m / b for m, b in zip(samples, bare_runs, strict=False))


def _print_table(
    title: str, per_workload: dict[str, dict[str, list[float]]], statements: dict[str, int],
    rounds: int,
) -> None:  # fmt: skip
    for workload, per_mode in per_workload.items():
        n = statements[workload]
        bare_runs = per_mode["bare"]
        bare = statistics.median(bare_runs)
        print(f"\n{workload}, {title}: {n} statements per run, {rounds} rounds")
        header = f"  {'mode':<9} {'median µs/stmt':>15} {'min–max ms/run':>18}"
        print(header + f" {'ratio':>7} {'paired [min–max]':>22} {'+µs/stmt':>9}")
        for mode, samples in per_mode.items():
            med = statistics.median(samples)
            pairs = _paired(samples, bare_runs)
            print(
                f"  {mode:<9} {med / n * 1e6:>15.1f} "
                f"{min(samples) * 1e3:>8.1f}–{max(samples) * 1e3:<8.1f} "
                f"{med / bare:>7.3f} {statistics.median(pairs):>7.3f} "
                f"[{pairs[0]:.3f}–{pairs[-1]:.3f}] {(med - bare) / n * 1e6:>+9.2f}"
            )


def _summarise(
    summary: dict[str, Any],
    key: str,
    per_workload: dict[str, dict[str, list[float]]],
    statements: dict[str, int],
    modes: tuple[str, ...] | None = None,
) -> None:
    """Fill ``summary[workload][mode][key]`` (``key`` is ``wall`` or ``cpu``): µs per
    statement, the ratio of medians and the paired median with its min–max, each run
    against the bare run of the same round."""
    for workload, per_mode in per_workload.items():
        n = statements[workload]
        bare_runs = per_mode["bare"]
        bare = statistics.median(bare_runs)
        for mode, samples in per_mode.items():
            if modes is not None and mode not in modes:
                continue
            med = statistics.median(samples)
            pairs = _paired(samples, bare_runs)
            summary.setdefault(workload, {}).setdefault(mode, {})[key] = {
                "us_per_statement": med / n * 1e6,
                "ratio": med / bare,
                "paired": statistics.median(pairs),
                "paired_min": pairs[0],
                "paired_max": pairs[-1],
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=5, help="ORM loop repeats per run")
    parser.add_argument("--core-statements", type=int, default=2000)
    parser.add_argument("--no-nplusone", action="store_true", help="skip the nplusone runs")
    parser.add_argument("--child", choices=("bare", "nplusone"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="write the results here (machine-readable)")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.iterations, args.core_statements)
        return

    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import Engine

    import dbprobe
    from dbprobe.pg import throwaway
    from fixtures.shop import seed

    print(machine_info())
    with throwaway() as pg:
        db = pg.create_database()
        setup = create_engine(pg.url(db))
        with setup.begin() as conn:
            seed.build(conn, "small")
        setup.dispose()
        url = pg.socket_url(db)
        engine = create_engine(url)
        bare_engine = _bare_engine(url)
        host = str(engine.url.query.get("host") or engine.url.host or "")
        via = "unix socket" if host.startswith("/") else f"TCP {host}"
        print(f"server: PostgreSQL {pg.version} ({pg.provider}), {via}\n")

        workloads = _workloads(engine, args.iterations, args.core_statements)
        bare_workloads = _workloads(bare_engine, args.iterations, args.core_statements)

        recorded: list[tuple[str, int]] = []

        def before(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            conn.info["_t0"] = time.perf_counter_ns()

        def after(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            recorded.append((statement, time.perf_counter_ns() - conn.info.pop("_t0")))

        def count_statements(fn: Callable[[], int]) -> int:
            with dbprobe.capture() as log:
                fn()
            return len(log)

        def run_bare(name: str) -> None:
            bare_workloads[name]()

        def run_listener(name: str) -> None:
            event.listen(Engine, "before_cursor_execute", before)
            event.listen(Engine, "after_cursor_execute", after)
            try:
                workloads[name]()
            finally:
                event.remove(Engine, "before_cursor_execute", before)
                event.remove(Engine, "after_cursor_execute", after)
                recorded.clear()

        last_logs: dict[str, Any] = {}

        def run_dbprobe(name: str) -> None:
            with dbprobe.capture() as log:
                workloads[name]()
            last_logs[name] = log

        modes: dict[str, Callable[[str], None]] = {
            "bare": run_bare,
            "listener": run_listener,
            "dbprobe": run_dbprobe,
        }
        statements = {name: count_statements(fn) for name, fn in workloads.items()}
        for name in workloads:  # warm up caches, pools, statement caches
            workloads[name]()
            bare_workloads[name]()

        results: dict[str, dict[str, list[float]]] = {w: {m: [] for m in modes} for w in workloads}
        cpu: dict[str, dict[str, list[float]]] = {w: {m: [] for m in modes} for w in workloads}
        names = list(modes)
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for workload in workloads:
                for mode in order:
                    c0, t0 = time.process_time(), time.perf_counter()
                    modes[mode](workload)
                    results[workload][mode].append(time.perf_counter() - t0)
                    cpu[workload][mode].append(time.process_time() - c0)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

        _print_table("wall time", results, statements, args.rounds)
        _print_table("client CPU time", cpu, statements, args.rounds)

        summary: dict[str, Any] = {}
        _summarise(summary, "wall", results, statements)
        _summarise(summary, "cpu", cpu, statements)
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
        engine.dispose()
        bare_engine.dispose()

        if args.no_nplusone:
            note = "nplusone skipped (--no-nplusone)"
        else:
            np_wall, np_cpu, note = _nplusone_rounds(url, args)
            if np_wall:
                _summarise(summary, "wall", np_wall, statements, modes=("nplusone",))
                _summarise(summary, "cpu", np_cpu, statements, modes=("nplusone",))
                _print_table("wall time, child processes", np_wall, statements, args.rounds)
                _print_table("client CPU time, child processes", np_cpu, statements, args.rounds)
        print(f"\n{note}")

        wall_pairs = _paired(results["orm-n+1"]["dbprobe"], results["orm-n+1"]["bare"])
        cpu_pairs = _paired(cpu["orm-n+1"]["dbprobe"], cpu["orm-n+1"]["bare"])
        wall_p, cpu_p = statistics.median(wall_pairs), statistics.median(cpu_pairs)
        verdict = "met" if max(wall_p, cpu_p) <= BUDGET else "NOT met"
        if max(wall_pairs[-1], cpu_pairs[-1]) > BUDGET >= min(wall_pairs[0], cpu_pairs[0]):
            verdict += " (the per-round ratios straddle the budget: not conclusive)"
        print(
            f"\nbudget <= {BUDGET:.2f}x on orm-n+1 (dbprobe vs bare, paired median): wall "
            f"{wall_p:.3f}x [{wall_pairs[0]:.3f}–{wall_pairs[-1]:.3f}], CPU {cpu_p:.3f}x "
            f"[{cpu_pairs[0]:.3f}–{cpu_pairs[-1]:.3f}]: {verdict} in this run "
            f"(load {os.getloadavg()[0]:.1f} at the end)"
        )
        write_json(
            args.json,
            {
                "benchmark": "capture",
                "server": f"PostgreSQL {pg.version} ({pg.provider})",
                "rounds": args.rounds,
                "statements": statements,
                "summary": summary,
                "nplusone": note,
                "seconds": {"wall": results, "cpu": cpu},
            },
        )


if __name__ == "__main__":
    main()
