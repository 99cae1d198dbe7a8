"""Cold-start latency by phase per driver, side by side with the raw TCP floor and
``pgbench -C`` (a new connection per transaction), in one run.

    python benchmarks/bench_coldstart.py [--rounds 3] [--samples 30]
        [--providers local,embedded] [--variants trust,scram,scram-tls]
        [--pgbench-seconds 5] [--no-process]

Each round runs ``dbprobe coldstart`` (all four drivers, interleaved, with the warm
pool and, for ``trust``, fresh processes) and ``pgbench -C -S -c 1`` on a database
initialised with ``pgbench -i``; the two alternate which goes first. A figure is the
median over rounds of that round's p50 (or p95), with the min–max of the per-round
p50s. Prints machine info, versions and the load average, then Markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._machine import command_line, machine_info, write_json
from dbprobe.coldstart import DRIVERS, ColdStartOptions, run
from dbprobe.pg import throwaway
from dbprobe.urls import parse_url

PASSWORD = "bench-pw"
VARIANTS: dict[str, dict[str, Any]] = {
    "trust": {"server": {"auth": "trust"}, "sslmode": "disable"},
    "scram": {"server": {"auth": "scram-sha-256", "password": PASSWORD}, "sslmode": "disable"},
    "scram-tls": {
        "server": {"auth": "scram-sha-256", "password": PASSWORD, "ssl": True},
        "sslmode": "require",
    },
}
PHASE_ROWS = ("dns", "tcp", "tls", "startup", "connect", "driver_init", "first_query", "total")
DETAIL_ROWS = (
    ("tls_request", "detail: SSLRequest answer"),
    ("tls_handshake", "detail: TLS handshake"),
    ("scram_client", "detail: client PBKDF2"),
    ("connect_gap", "connect − establishment, per pair"),
)
PROCESS_ROWS = ("interpreter", "imports", "driver_import", "connect", "first_query", "total")


def pgbench_binary() -> str:
    for candidate in (
        shutil.which("pgbench"),
        *sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True),
    ):
        if candidate:
            return str(candidate)
    raise SystemExit("pgbench not found (apt install postgresql-client)")


def run_pgbench(binary: str, dsn: str, seconds: int, password: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    out = subprocess.run(
        [binary, "-C", "-S", "-n", "-c", "1", "-T", str(seconds), dsn],
        capture_output=True, text=True, env=env, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    conn = re.search(r"average connection time = ([\d.]+) ms", out)
    tps = re.search(r"tps = ([\d.]+)", out)
    if not conn or not tps:
        raise SystemExit(f"unexpected pgbench output:\n{out}")
    return {"connection_ms": float(conn.group(1)), "per_transaction_ms": 1000 / float(tps.group(1))}


def bench_variant(
    provider: str, variant: str, rounds: int, samples: int, pgbench_s: int, process: bool
) -> dict[str, Any]:
    spec = VARIANTS[variant]
    out: dict[str, Any] = {"rounds": [], "pgbench": [], "version": ""}
    binary = pgbench_binary()
    with throwaway(provider, **spec["server"]) as pg:
        out["version"] = pg.version
        db = pg.create_database("bench")
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        target = parse_url(pg.dsn(db)).with_options(sslmode=spec["sslmode"])
        url = target.libpq_dsn()
        # pgbench gets the password from PGPASSWORD, never on its command line (ps shows it)
        pgbench_dsn = dataclasses.replace(target, password=None).libpq_dsn()
        subprocess.run(
            [binary, "-i", "-q", "-s", "1", pgbench_dsn],
            capture_output=True, env=env, timeout=300, check=True,
        )  # fmt: skip
        options = ColdStartOptions(
            samples=samples, process=process, process_samples=3, pool_rounds=3
        )
        for r in range(rounds):
            steps = ["coldstart", "pgbench"] if r % 2 == 0 else ["pgbench", "coldstart"]
            for step in steps:
                if step == "coldstart":
                    t0 = time.perf_counter()
                    result = run(parse_url(url), options)
                    out["rounds"].append(result.metrics)
                    print(
                        f"  {provider}/{variant} round {r + 1}: coldstart "
                        f"{time.perf_counter() - t0:.1f}s",
                        file=sys.stderr,
                    )
                else:
                    out["pgbench"].append(
                        run_pgbench(binary, pgbench_dsn, pgbench_s, spec["server"].get("password"))
                    )
    return out


def _agg(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def _cell(rounds: list[dict[str, Any]], path: tuple[str, ...]) -> str:
    p50s, p95s = [], []
    for metrics in rounds:
        node: Any = metrics
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return "–"
        p50s.append(node.p50)
        p95s.append(node.p95)
    med, lo, hi = _agg(p50s)
    return f"{med:.2f} / {statistics.median(p95s):.2f} ({lo:.2f}–{hi:.2f})"


def report(provider: str, variant: str, data: dict[str, Any]) -> str:
    rounds = data["rounds"]
    meta = rounds[0]["_meta"]
    lines = [
        f"### PostgreSQL {data['version']} ({provider}), {variant}: "
        f"{meta['auth_method']}, TLS {meta['tls_negotiation']}"
        + (f" {meta['tls_version']}" if meta.get("tls_version") else ""),
        "",
        "p50 / p95 in ms, median over rounds (min–max of the per-round p50). "
        "dns/tcp/tls/startup: protocol client, paired with each driver's samples; "
        "connect/driver_init/first_query/total: the driver.",
        "",
        "| phase | protocol client | " + " | ".join(DRIVERS) + " |",
        "|---|" + "---|" * (len(DRIVERS) + 1),
    ]
    for phase in PHASE_ROWS:
        cells = [_cell(rounds, ("protocol", phase)) if phase != "connect" else "–"]
        if phase == "total":
            cells = [_cell(rounds, ("protocol", "total"))]
        cells += [_cell(rounds, (d, phase)) for d in DRIVERS]
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    for key, label in DETAIL_ROWS:
        cells = [_cell(rounds, ("protocol", "detail", key))]
        cells += [_cell(rounds, (d, "detail", key)) for d in DRIVERS]
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| warm checkout + SELECT 1 | – | "
        + " | ".join(_cell(rounds, (d, "warm", "checkout")) for d in DRIVERS)
        + " |"
    )
    size = rounds[0][DRIVERS[0]]["warm"]["min_size"]
    lines.append(
        f"| pool ready at {size} (see note) | – | "
        + " | ".join(_cell(rounds, (d, "warm", "pool_ready")) for d in DRIVERS)
        + " |"
    )
    floor = _cell(rounds, ("tcp_floor", "connect"))
    pgb = data["pgbench"]
    conn, clo, chi = _agg([p["connection_ms"] for p in pgb])
    txn, _, _ = _agg([p["per_transaction_ms"] for p in pgb])
    proto_mean = statistics.median(
        [m["protocol"]["total"].mean - m["protocol"]["first_query"].mean for m in rounds]
    )
    psy_mean = statistics.median([m["psycopg"]["connect"].mean for m in rounds])
    verdicts = {
        d: sum(1 for m in rounds if m[d]["_meta"]["phase_sum"]["within_noise"]) for d in DRIVERS
    }
    lines += [
        "",
        "- pool ready: psycopg_pool and asyncpg open the pool's connections concurrently, "
        "SQLAlchemy one after another (not like for like)",
        "- phases add up within noise (the confidence interval of the per-pair gap's median "
        "holds 0), rounds "
        "out of " + str(len(rounds)) + ": " + ", ".join(f"{d} {n}" for d, n in verdicts.items()),
        f"- raw TCP connect (floor): {floor} ms",
        f"- `pgbench -C -S -c 1`: average connection time {conn:.2f} ms ({clo:.2f}–{chi:.2f}), "
        f"{txn:.2f} ms per transaction including the reconnect; the same mean for "
        f"psycopg's connect: {psy_mean:.2f} ms, for the protocol client's establishment "
        f"(total − first query): {proto_mean:.2f} ms",
    ]
    gaps = [m["_meta"]["sampling"]["idle_gaps"]["over_10ms"] for m in rounds]
    loads = [
        m["_meta"]["load_average"]["before"][0]
        for m in rounds
        if m["_meta"]["load_average"]["before"]
    ]
    lines.append(
        f"- load average during the rounds: {min(loads):.2f}–{max(loads):.2f}; gaps ≥ 10 ms "
        f"between timed connections per round: {gaps}"
    )
    if "process" in rounds[0][DRIVERS[0]]:
        lines += [
            "",
            "Fresh process (python -c: interpreter, driver import, first connect and query), "
            "p50 / p95 ms:",
            "",
            "| phase | " + " | ".join(DRIVERS) + " |",
            "|---|" + "---|" * len(DRIVERS),
        ]
        for phase in PROCESS_ROWS:
            if phase == "imports":
                continue  # no --import in the benchmark
            lines.append(
                f"| {phase} | "
                + " | ".join(_cell(rounds, (d, "process", phase)) for d in DRIVERS)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--providers", default="local,embedded")
    ap.add_argument("--variants", default="trust,scram,scram-tls")
    ap.add_argument("--pgbench-seconds", type=int, default=5)
    ap.add_argument("--no-process", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here (machine-readable)")
    args = ap.parse_args()
    print(machine_info())
    print(command_line())
    print(f"pgbench: {pgbench_binary()}")
    results: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for provider in args.providers.split(","):
        for variant in args.variants.split(","):
            if variant == "scram-tls" and provider == "embedded":
                print(
                    "  embedded/scram-tls skipped: the wheel is built without TLS", file=sys.stderr
                )
                continue
            results[(provider, variant)] = bench_variant(
                provider, variant, args.rounds, args.samples, args.pgbench_seconds,
                process=(variant == "trust" and not args.no_process),
            )  # fmt: skip
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    for (provider, variant), data in results.items():
        print(report(provider, variant, data))
    write_json(
        args.json,
        {
            "benchmark": "coldstart",
            "variants": {f"{p}/{v}": summary(data) for (p, v), data in results.items()},
        },
    )


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """Per-round p50s (ms) of each driver's phases, the TCP floor and pgbench -C."""
    rounds = data["rounds"]

    def p50s(*path: str) -> list[float] | None:
        values = []
        for metrics in rounds:
            node: Any = metrics
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                return None
            values.append(node.p50)
        return values

    drivers = {
        d: {ph: v for ph in PHASE_ROWS if (v := p50s(d, ph)) is not None}
        for d in ("protocol", *DRIVERS)
    }
    return {
        "version": data["version"],
        "p50_ms": drivers,
        "tcp_floor_p50_ms": p50s("tcp_floor", "connect"),
        "psycopg_connect_mean_ms": [m["psycopg"]["connect"].mean for m in rounds],
        "pgbench": data["pgbench"],
    }


if __name__ == "__main__":
    main()
