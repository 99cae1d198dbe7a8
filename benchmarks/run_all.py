"""Run every benchmark in turn; write one combined JSON and a Markdown summary.

    python -m benchmarks.run_all [--quick] [--output DIR] [--only capture,pool]

Each benchmark runs as its own process (``python benchmarks/bench_<name>.py … --json``),
prints machine info, versions and its exact command into ``DIR/<name>.log``, and writes
its machine-readable results, which this script collects into ``DIR/benchmarks.json``
and summarises in ``DIR/summary.md``: the ratios against the peers measured in the same
run, and each budget (capture ≤ 1.05× bare, pool harness ≥ 0.9× bare, audit ≤ 30 s)
with met / missed. A budget missed while the load average exceeded the number of cores
is marked unconfirmed: on a shared machine the noise is then larger than the margin.

Bounded: the full set takes about 10–15 minutes on a loaded 2-core machine (each
benchmark has a time limit and is stopped past it); ``--quick`` (smaller corpora, one
or two rounds, the local provider only) about a minute, for a smoke test — its figures
are indicative only. Progress goes to stderr. Exit status: 0 when every benchmark
produced its results, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine_facts, machine_info  # noqa: E402

SCHEMA = "dbprobe.benchmarks/1"
CAPTURE_BUDGET = 1.05
POOL_BUDGET = 0.9
AUDIT_BUDGET_S = 30.0


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark script and its arguments for a full and a quick run.

    timeout_s / quick_timeout_s: seconds before the run is stopped (full / quick).
    """

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    timeout_s: float
    quick_timeout_s: float

    def command(self, quick: bool, json_path: Path) -> list[str]:
        args = self.quick if quick else self.full
        return [
            sys.executable,
            str(ROOT / "benchmarks" / self.script),
            *args,
            "--json",
            str(json_path),
        ]


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "throwaway", "bench_throwaway.py",
        ("--rounds", "5", "--providers", "local,embedded"),
        ("--rounds", "1", "--providers", "local"),
        240, 60,
    ),
    Benchmark(
        "fingerprint", "bench_fingerprint.py",
        ("--repeat", "5"),
        ("--repeat", "1", "--statements", "200"),
        180, 60,
    ),
    Benchmark(
        "capture", "bench_capture.py",
        ("--rounds", "11", "--iterations", "3"),
        ("--rounds", "3", "--iterations", "1", "--core-statements", "500"),
        300, 60,
    ),
    Benchmark(
        "pool", "bench_pool.py",
        ("--rounds", "4", "--seconds", "0.5"),
        ("--rounds", "1", "--seconds", "0.4", "--workers", "4", "--pools", "psycopg,asyncpg"),
        420, 60,
    ),
    Benchmark(
        "audit", "bench_audit.py",
        ("--rounds", "2", "--providers", "local,embedded"),
        ("--rounds", "1", "--providers", "local", "--tables", "100"),
        420, 60,
    ),
    Benchmark(
        "coldstart", "bench_coldstart.py",
        ("--rounds", "2", "--samples", "20", "--providers", "local,embedded",
         "--variants", "trust,scram-tls", "--pgbench-seconds", "3"),
        ("--rounds", "1", "--samples", "5", "--providers", "local", "--variants", "trust",
         "--pgbench-seconds", "1", "--no-process"),
        420, 60,
    ),
)  # fmt: skip


# -- running --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What one benchmark process did: exit code (None when stopped at its time limit),
    wall seconds, the 1-minute load average before and after, and its results."""

    name: str
    command: list[str]
    exit_code: int | None
    seconds: float
    load_before: float
    load_after: float
    log: str
    results: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _pump(stream: TextIO, log: TextIO, lock: threading.Lock, prefix: str, echo_all: bool) -> None:
    for line in stream:
        with lock:
            log.write(line)
            log.flush()
        if echo_all or line.lstrip().lower().startswith(("round", "load average")):
            print(f"{prefix}{line.rstrip()}", file=sys.stderr, flush=True)


def run_one(bench: Benchmark, quick: bool, out_dir: Path, index: str) -> RunOutcome:
    """Run one benchmark, its stdout and stderr into ``out_dir/<name>.log``; progress
    lines (its stderr and its ``round …`` lines) echoed to stderr."""
    json_path = out_dir / f"{bench.name}.json"
    log_path = out_dir / f"{bench.name}.log"
    json_path.unlink(missing_ok=True)
    command = bench.command(quick, json_path)
    limit = bench.quick_timeout_s if quick else bench.timeout_s
    print(f"{index} {bench.name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    lock = threading.Lock()
    with log_path.open("w") as log:
        log.write(f"$ {' '.join(command)}\n")
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        prefix = f"    [{bench.name}] "
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, log, lock, prefix, False)),
            threading.Thread(target=_pump, args=(proc.stderr, log, lock, prefix, True)),
        ]
        for p in pumps:
            p.start()
        exit_code: int | None
        try:
            exit_code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            exit_code = None
            _stop(proc)
            with lock:
                log.write(f"\nstopped after the {limit:.0f} s limit\n")
        except BaseException:  # Ctrl-C: its own session does not get the SIGINT
            _stop(proc)
            raise
        for p in pumps:
            p.join()
    seconds = time.perf_counter() - t0
    results = None
    if json_path.exists():
        try:
            results = json.loads(json_path.read_text())
        except ValueError:
            results = None
    status = (
        "stopped at the time limit"
        if exit_code is None
        else ("done" if results is not None else f"failed (exit {exit_code})")
    )
    print(f"{index} {bench.name}: {status} in {seconds:.0f} s (log {log_path})", file=sys.stderr)
    return RunOutcome(
        bench.name,
        command,
        exit_code,
        seconds,
        load_before,
        os.getloadavg()[0],
        str(log_path),
        results,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the benchmark's process group (its throwaway servers included), then
    SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- summarising (pure: results in, rows out) ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the summary: what dbprobe measured against which peer."""

    benchmark: str
    measure: str
    dbprobe: str
    peer: str
    ratio: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A budget and how the run did against it.

    value: the measured figure (a ratio, or seconds for the audit); limit: the budget;
    verdict: ``met``, ``missed by N%``, ``missed … (unconfirmed under load …)`` or
    ``not measured``; load: the highest 1-minute load average seen during the benchmark.
    """

    name: str
    limit: str
    value: float | None
    measured: str
    verdict: str
    load: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verdict(
    value: float,
    limit: float,
    *,
    higher_is_better: bool,
    load: float,
    cores: int,
    spread: tuple[float, float] | None = None,
) -> str:
    """``met``, ``missed by N%``, or — when the load average was above the number of
    cores and the rounds' min–max ``spread`` straddles the limit (or the budget was
    missed) — marked unconfirmed: the noise is then larger than the margin."""
    met = value >= limit if higher_is_better else value <= limit
    # the shortfall relative to the limit: 0.45 against ≥ 0.9 is 50% short, 1.10 against
    # ≤ 1.05 is 4.8% over
    by = (1 - value / limit) if higher_is_better else (value / limit - 1)
    overloaded = load > cores
    straddles = spread is not None and min(spread) <= limit <= max(spread)
    text = "met" if met else f"missed by {by * 100:.1f}%"
    if overloaded and (straddles or not met):
        rounds = f"; rounds {min(spread):.3f}–{max(spread):.3f}" if spread else ""
        return f"unconfirmed under load {load:.1f} on {cores} cores (median {text}{rounds})"
    return text


def _spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    mid, low, high = (fmt.format(v) for v in (statistics.median(values), min(values), max(values)))
    return f"{mid} ({low}–{high})"


def _ms(values: Sequence[float]) -> str:
    return _spread([v * 1000 for v in values], "{:.1f}") + " ms"


def rows_throwaway(res: dict[str, Any]) -> list[Row]:
    rows = []
    for provider, r in res.get("seconds", {}).items():
        for ours, theirs, what in (
            ("start_ready", "pg_ctl_start", "start → ready"),
            ("stop", "pg_ctl_stop", "stop"),
        ):
            if r.get(ours) and r.get(theirs):
                ratio = statistics.median(r[ours]) / statistics.median(r[theirs])
                how = "start -w" if "start" in theirs else "stop -m fast"
                peer = f"`pg_ctl {how}` {_ms(r[theirs])}"
                rows.append(
                    Row("throwaway", f"{what} ({provider})", _ms(r[ours]), peer, f"{ratio:.2f}×")
                )
        if r.get("clone_small") and r.get("clone_small_file_copy"):
            ratio = statistics.median(r["clone_small"]) / statistics.median(
                r["clone_small_file_copy"]
            )
            rows.append(
                Row(
                    "throwaway",
                    f"clone 2k-row db ({provider})",
                    _ms(r["clone_small"]),
                    f"STRATEGY FILE_COPY {_ms(r['clone_small_file_copy'])}",
                    f"{ratio:.2f}×",
                )
            )
    return rows


def _times(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:,.0f}×"


def rows_fingerprint(res: dict[str, Any]) -> list[Row]:
    methods = res.get("methods", {})
    ours = methods.get("dbprobe normalize (no cache)")
    rows: list[Row] = []
    if not ours:
        return rows
    for name, peer in methods.items():
        if name.startswith("dbprobe"):
            continue
        if peer is None:
            rows.append(
                Row("fingerprint", "uncached rate, literal SQL", "", f"{name}: not installed", "–")
            )
            continue
        rows.append(
            Row(
                "fingerprint",
                "uncached rate, literal SQL (distinct keys)",
                f"{ours['literal_rate']:,.0f}/s ({ours['literal_keys']})",
                f"{name} {peer['literal_rate']:,.0f}/s ({peer['literal_keys']})",
                _times(ours["literal_rate"] / peer["literal_rate"]) + " the rate",
            )
        )
    if "cached_rate" in res:
        rows.append(
            Row(
                "fingerprint",
                "cached rate (SQLAlchemy-like stream)",
                f"{res['cached_rate']:,.0f}/s",
                f"uncached {ours['bound_rate']:,.0f}/s",
                _times(res["cached_rate"] / ours["bound_rate"]),
            )
        )
    return rows


def rows_capture(res: dict[str, Any]) -> list[Row]:
    rows = []
    for workload, modes in res.get("summary", {}).items():
        for mode, label in (
            ("dbprobe", "dbprobe.capture()"),
            ("listener", "plain listener"),
            ("nplusone", "nplusone"),
        ):
            m = modes.get(mode)
            if not m or "wall" not in m:
                continue
            wall, cpu = m["wall"], m.get("cpu", {})
            spread = (
                f" ({wall['paired_min']:.3f}–{wall['paired_max']:.3f})"
                if wall.get("paired_min") is not None
                else ""
            )
            rows.append(
                Row(
                    "capture",
                    f"{workload}: {label}, wall paired{spread}; CPU paired",
                    f"{wall['us_per_statement']:.1f} µs/stmt",
                    f"bare {modes['bare']['wall']['us_per_statement']:.1f} µs/stmt",
                    f"{wall['paired']:.3f}×; CPU {cpu.get('paired', float('nan')):.3f}×",
                )
            )
        lt = modes.get("listener_time")
        if lt:
            rows.append(
                Row(
                    "capture",
                    f"{workload}: time inside dbprobe's listeners (p50, n={lt['n']})",
                    f"{lt['p50_us']:.1f} µs",
                    f"bare {lt['bare_us_per_statement']:.1f} µs/stmt",
                    f"{lt['ratio']:.3f}×",
                )
            )
    return rows


def pool_ratios(res: dict[str, Any]) -> dict[tuple[str, str], list[float]]:
    """Per (pool, workers): the per-round harness/bare throughput ratios."""
    out = {}
    for kind, per_workers in res.get("harness", {}).items():
        for workers, runs in per_workers.items():
            bare = res["bare"][kind][workers]
            out[(kind, workers)] = [
                h["qps"] / b["qps"] for h, b in zip(runs, bare, strict=False) if b["qps"]
            ]
    return out


def rows_pool(res: dict[str, Any]) -> list[Row]:
    rows = []
    for (kind, workers), ratios in pool_ratios(res).items():
        h = [r["qps"] for r in res["harness"][kind][workers]]
        b = [r["qps"] for r in res["bare"][kind][workers]]
        ref = [r["qps"] for r in res.get("pgbench", {}).get(workers, [])]
        peer = f"bare {statistics.median(b):,.0f} q/s"
        if ref:
            peer += f"; pgbench -S {statistics.median(ref):,.0f} tps"
        rows.append(
            Row(
                "pool",
                f"{kind}, workers={workers}: harness / bare (per round)",
                f"{statistics.median(h):,.0f} q/s",
                peer,
                _spread(ratios),
            )
        )
    return rows


def rows_audit(res: dict[str, Any]) -> list[Row]:
    rows = []
    tables = res.get("tables", 1000)
    for provider, r in res.get("providers", {}).items():
        ratio = statistics.median(r["all"]) / statistics.median(r["floor"])
        rows.append(
            Row(
                "audit",
                f"`audit --top 0`, {tables} tables, {r['entries']} statements ({provider})",
                _spread(r["all"], "{:.2f}") + " s",
                f"bare EXPLAIN floor {_spread(r['floor'], '{:.2f}')} s",
                f"{ratio:.1f}×",
            )
        )
    return rows


def rows_coldstart(res: dict[str, Any]) -> list[Row]:
    rows = []
    for variant, v in res.get("variants", {}).items():
        pgb = [p["connection_ms"] for p in v.get("pgbench", [])]
        psy = v.get("psycopg_connect_mean_ms") or []
        if pgb and psy:
            rows.append(
                Row(
                    "coldstart",
                    f"{variant}: psycopg connect (mean) vs `pgbench -C` connection time",
                    _spread(psy, "{:.2f}") + " ms",
                    _spread(pgb, "{:.2f}") + " ms",
                    f"{statistics.median(psy) / statistics.median(pgb):.2f}×",
                )
            )
        floor = v.get("tcp_floor_p50_ms")
        for driver, phases in v.get("p50_ms", {}).items():
            if "total" in phases and floor:
                rows.append(
                    Row(
                        "coldstart",
                        f"{variant}: {driver} total p50 vs raw TCP connect p50",
                        _spread(phases["total"], "{:.2f}") + " ms",
                        _spread(floor, "{:.2f}") + " ms",
                        f"{statistics.median(phases['total']) / statistics.median(floor):.0f}×",
                    )
                )
    return rows


SUMMARISERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "throwaway": rows_throwaway,
    "fingerprint": rows_fingerprint,
    "capture": rows_capture,
    "pool": rows_pool,
    "audit": rows_audit,
    "coldstart": rows_coldstart,
}


def budgets(outcomes: dict[str, RunOutcome], cores: int, quick: bool) -> list[Budget]:
    """Each budget against what the run measured."""
    out: list[Budget] = []

    def load_of(name: str) -> float:
        o = outcomes[name]
        return max(o.load_before, o.load_after)

    note = " (quick run: indicative only)" if quick else ""
    cap = outcomes.get("capture")
    cap_res = cap.results if cap else None
    if cap and cap_res and "orm-n+1" in cap_res.get("summary", {}):
        wall = cap_res["summary"]["orm-n+1"]["dbprobe"]["wall"]
        cpu = cap_res["summary"]["orm-n+1"]["dbprobe"].get("cpu", {})
        value = float(wall["paired"])
        out.append(
            Budget(
                "capture ≤ 1.05× bare (N+1 ORM loop, wall, paired median)",
                "≤ 1.05×",
                value,
                f"{value:.3f}× ({wall['paired_min']:.3f}–{wall['paired_max']:.3f}); "
                f"CPU {cpu.get('paired', float('nan')):.3f}×",
                verdict(
                    value,
                    CAPTURE_BUDGET,
                    higher_is_better=False,
                    load=load_of("capture"),
                    cores=cores,
                    spread=(wall["paired_min"], wall["paired_max"]),
                )
                + note,
                load_of("capture"),
            )
        )
    else:
        out.append(Budget("capture ≤ 1.05× bare", "≤ 1.05×", None, "–", "not measured", None))
    pool = outcomes.get("pool")
    if pool and pool.results:
        ratios = pool_ratios(pool.results)
        medians = {k: statistics.median(v) for k, v in ratios.items() if v}
        if medians:
            worst_key = min(medians, key=lambda k: medians[k])
            worst = medians[worst_key]
            below = sum(1 for v in medians.values() if v < POOL_BUDGET)
            out.append(
                Budget(
                    "pool harness ≥ 0.9× bare (lowest row's per-round median)",
                    "≥ 0.9×",
                    worst,
                    f"{worst:.3f}× ({worst_key[0]}, workers={worst_key[1]}); "
                    f"{below} of {len(medians)} rows below; "
                    f"all rows {min(medians.values()):.3f}–{max(medians.values()):.3f}×",
                    verdict(
                        worst,
                        POOL_BUDGET,
                        higher_is_better=True,
                        load=load_of("pool"),
                        cores=cores,
                        spread=(min(ratios[worst_key]), max(ratios[worst_key])),
                    )
                    + note,
                    load_of("pool"),
                )
            )
    else:
        out.append(Budget("pool harness ≥ 0.9× bare", "≥ 0.9×", None, "–", "not measured", None))
    audit = outcomes.get("audit")
    if audit and audit.results and audit.results.get("providers"):
        tables = audit.results.get("tables", 1000)
        worst_s = max(max(r["all"]) for r in audit.results["providers"].values())
        scale = "" if tables >= 1000 else f"; only {tables} tables: not the budget's scale"
        out.append(
            Budget(
                "audit ≤ 30 s (1,000 tables, 2,000 statements; slowest round)",
                "≤ 30 s",
                worst_s,
                f"{worst_s:.1f} s ({', '.join(audit.results['providers'])}){scale}",
                (
                    verdict(
                        worst_s,
                        AUDIT_BUDGET_S,
                        higher_is_better=False,
                        load=load_of("audit"),
                        cores=cores,
                        spread=(
                            min(min(r["all"]) for r in audit.results["providers"].values()),
                            worst_s,
                        ),
                    )
                    if tables >= 1000
                    else "not measured at scale"
                )
                + note,
                load_of("audit"),
            )
        )
    else:
        out.append(Budget("audit ≤ 30 s", "≤ 30 s", None, "–", "not measured", None))
    return out


def markdown(doc: dict[str, Any]) -> str:
    """The summary page: the budgets first, then every ratio against a peer."""
    m = doc["machine"]
    lines = [
        f"# dbprobe benchmarks ({doc['mode']} run)",
        "",
        f"{doc['started_at']} → {doc['finished_at']}; {m['cpu']} × {m['cores']} cores; "
        f"Python {m['python']}; commit {m['commit']}; load average {doc['load_start']:.1f} at "
        f"the start, {doc['load_end']:.1f} at the end.",
        "",
        "| budget | measured | verdict | load average |",
        "|---|---|---|---|",
    ]
    for b in doc["budgets"]:
        load = f"{b['load']:.1f}" if b["load"] is not None else "–"
        lines.append(f"| {b['name']} | {b['measured']} | {b['verdict']} | {load} |")
    lines += [
        "",
        "| benchmark | measure | dbprobe | peer | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['benchmark']} | {r['measure']} | {r['dbprobe']} | {r['peer']} | {r['ratio']} |"
        )
    lines += [
        "",
        "| benchmark | status | seconds | load before → after | command |",
        "|---|---|---:|---|---|",
    ]
    for name, o in doc["benchmarks"].items():
        status = (
            "stopped at the time limit"
            if o["exit_code"] is None
            else ("ran" if o["results"] is not None else f"failed (exit {o['exit_code']})")
        )
        cmd = " ".join(
            [
                "python",
                *(
                    Path(c).relative_to(ROOT).as_posix() if c.startswith(str(ROOT)) else c
                    for c in o["command"][1:-2]
                ),
            ]
        )
        lines.append(
            f"| {name} | {status} | {o['seconds']:.0f} | {o['load_before']:.1f} → "
            f"{o['load_after']:.1f} | `{cmd}` |"
        )
    return "\n".join(lines) + "\n"


def summarise(
    outcomes: dict[str, RunOutcome],
    quick: bool,
    started: str,
    load_start: float,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The combined document written to ``benchmarks.json`` (``previous``: the document
    being re-summarised, whose times, load and machine are kept)."""
    rows: list[Row] = []
    for name, o in outcomes.items():
        if o.results is not None:
            try:
                found = SUMMARISERS[name](o.results)
                rows += found or [Row(name, "no figures: see its log", "", "", "–")]
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                rows.append(
                    Row(name, "summary unavailable", "", "", f"{type(exc).__name__}: {exc}")
                )
    kept = previous or {}
    machine = kept.get("machine") or machine_facts()
    cores = int(machine.get("cores") or os.cpu_count() or 1)
    return {
        "schema": SCHEMA,
        "mode": "quick" if quick else "full",
        "started_at": started,
        "finished_at": kept.get("finished_at")
        or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_start": load_start,
        "load_end": kept.get("load_end", os.getloadavg()[0]),
        "machine": machine,
        "budgets": [b.to_dict() for b in budgets(outcomes, cores, quick)],
        "rows": [r.to_dict() for r in rows],
        "benchmarks": {name: o.to_dict() for name, o in outcomes.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    ap.add_argument("--output", default="bench-results", help="directory (default bench-results)")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names")
    ap.add_argument(
        "--resummarise",
        metavar="DIR",
        help="rewrite DIR/summary.md from DIR/benchmarks.json without running anything",
    )
    args = ap.parse_args(argv)
    if args.resummarise:
        return resummarise(Path(args.resummarise))
    names = [b.name for b in BENCHMARKS]
    chosen = args.only.split(",") if args.only else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        print(
            f"run_all: error: unknown benchmark {', '.join(unknown)} (known: {', '.join(names)})",
            file=sys.stderr,
        )
        return 2
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(machine_info(), file=sys.stderr)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()[0]
    selected = [b for b in BENCHMARKS if b.name in chosen]
    outcomes: dict[str, RunOutcome] = {}
    for i, bench in enumerate(selected, 1):
        outcomes[bench.name] = run_one(bench, args.quick, out_dir, f"[{i}/{len(selected)}]")
    doc = summarise(outcomes, args.quick, started, load_start)
    (out_dir / "benchmarks.json").write_text(json.dumps(doc, indent=1) + "\n")
    summary = markdown(doc)
    (out_dir / "summary.md").write_text(summary)
    print(summary)
    print(f"results: {out_dir / 'benchmarks.json'}, {out_dir / 'summary.md'}", file=sys.stderr)
    return 0 if all(o.results is not None for o in outcomes.values()) else 1


def resummarise(out_dir: Path) -> int:
    """Summarise a finished run again (after a change to the summary code)."""
    try:
        old = json.loads((out_dir / "benchmarks.json").read_text())
        outcomes = {name: RunOutcome(**o) for name, o in old["benchmarks"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"run_all: error: cannot read {out_dir / 'benchmarks.json'}: {exc}", file=sys.stderr)
        return 2
    doc = summarise(outcomes, old["mode"] == "quick", old["started_at"], old["load_start"], old)
    (out_dir / "benchmarks.json").write_text(json.dumps(doc, indent=1) + "\n")
    summary = markdown(doc)
    (out_dir / "summary.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
