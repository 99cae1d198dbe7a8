"""``dbprobe audit`` at scale: 1,000 tables and 2,000 pg_stat_statements entries.

Builds a database with 1,000 tables (20 of them with 20,000 rows, the rest with 50),
999 foreign keys (half without an index), 100 duplicate indexes, then runs 2,000
distinct statements (two shapes per table) so pg_stat_statements holds 2,000 entries,
and times ``dbprobe audit URL --top 0`` (every statement explained once) through the
real CLI in a subprocess. Side by side, in the same run, the floor: the same 2,000
statements explained with bare psycopg (generic plans, no analysis, no verification).

    python benchmarks/bench_audit.py [--rounds 3] [--providers local,embedded]

Budget: the audit finishes within 30 s on our 2-core machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine_info, write_json  # noqa: E402
from dbprobe.analysis.sqltext import max_dollar_param  # noqa: E402
from dbprobe.pg import PostgresServer, throwaway  # noqa: E402

TABLES = 1000
LARGE_EVERY = 50  # tables 25, 75, 125 … have LARGE_ROWS rows (and no secondary index)
LARGE_ROWS = 20_000
SMALL_ROWS = 50
BUDGET_S = 30.0


def build(pg: PostgresServer) -> str:
    db = pg.create_database()
    with pg.connect(db) as conn:
        for i in range(1, TABLES + 1):
            rows = LARGE_ROWS if i % LARGE_EVERY == LARGE_EVERY // 2 else SMALL_ROWS
            fk = ", parent_id bigint"
            if i > 1:
                fk += f" REFERENCES t_{i - 1:04d} (id)"
            conn.execute(
                f"CREATE TABLE t_{i:04d} (id bigint PRIMARY KEY, ref text NOT NULL, grp int{fk});"
                f"INSERT INTO t_{i:04d} SELECT g, 'r' || g, g % 10, "
                f"{'1 + g % ' + str(SMALL_ROWS) if i > 1 else 'NULL'} "
                f"FROM generate_series(1, {rows}) g;"
            )
            if i % 2 == 0:
                conn.execute(f"CREATE INDEX ix_t_{i:04d}_parent_id ON t_{i:04d} (parent_id)")
            if i % 10 == 0:
                conn.execute(f"CREATE INDEX ix_t_{i:04d}_grp ON t_{i:04d} (grp)")
                conn.execute(f"CREATE INDEX ix_t_{i:04d}_grp_ref ON t_{i:04d} (grp, ref)")
        conn.execute("ANALYZE")
        conn.execute("SELECT pg_stat_statements_reset()")
    return db


def statements() -> list[str]:
    out = []
    for i in range(1, TABLES + 1):
        out.append(f"SELECT id, grp FROM t_{i:04d} WHERE ref = 'r42'")
        out.append(f"SELECT * FROM t_{i:04d} WHERE parent_id = 7 ORDER BY id LIMIT 10")
    return out


def run_workload(pg: PostgresServer, db: str) -> int:
    with pg.connect(db) as conn:
        for sql in statements():
            conn.execute(sql.encode())
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_statements WHERE dbid = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND query LIKE 'SELECT %FROM t\\_%'"
        ).fetchone()
    return int(row[0]) if row else 0


def floor_explain(pg: PostgresServer, db: str) -> float:
    """The same statements as pg_stat_statements stores them, explained with bare
    psycopg: the cost no analysis can avoid."""
    with pg.connect(db) as conn:
        # keep the floor's own EXPLAINs out of pg_stat_statements (they would evict the
        # 2,000 entries the audit reads)
        conn.execute("SET pg_stat_statements.track = 'none'")
        texts = [
            r[0]
            for r in conn.execute(
                "SELECT query FROM pg_stat_statements WHERE dbid = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND query LIKE 'SELECT %FROM t\\_%'"
            )
        ]
        generic = pg.version_num >= 160000
        t0 = time.perf_counter()
        for n, text in enumerate(texts):
            if generic:
                conn.execute(f"EXPLAIN (GENERIC_PLAN, VERBOSE, FORMAT JSON) {text}".encode())
            else:
                with conn.transaction(force_rollback=True):
                    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                    conn.execute(f"PREPARE p{n} AS {text}".encode())
                    nargs = max_dollar_param(text)
                    call = f"EXECUTE p{n}" + (f"({', '.join(['NULL'] * nargs)})" if nargs else "")
                    conn.execute(f"EXPLAIN (VERBOSE, FORMAT JSON) {call}".encode())
                conn.execute(f"DEALLOCATE p{n}".encode())
        return time.perf_counter() - t0


def audit_cli(pg: PostgresServer, db: str, top: int) -> tuple[float, dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "dbprobe.cli", "-q", "audit", pg.url(db), "--top", str(top),
             "--format", "json", "--output", str(out), "--fail-on", "never"],
            capture_output=True, text=True, env=env, cwd=ROOT, check=False,
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"audit failed ({proc.returncode}): {proc.stderr.strip()}")
        return elapsed, json.loads(out.read_text())


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f})"


def bench(provider: str, rounds: int) -> dict[str, Any]:
    with throwaway(provider) as pg:
        t0 = time.perf_counter()
        db = build(pg)
        build_s = time.perf_counter() - t0
        entries = run_workload(pg, db)
        result: dict[str, Any] = {
            "version": pg.version,
            "build_s": build_s,
            "entries": entries,
            "all": [],
            "top100": [],
            "floor": [],
        }
        for _ in range(rounds):
            result["floor"].append(floor_explain(pg, db))
            elapsed, doc = audit_cli(pg, db, 0)
            result["all"].append(elapsed)
            result["doc"] = doc
            elapsed, _ = audit_cli(pg, db, 100)
            result["top100"].append(elapsed)
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--providers", default="local,embedded")
    ap.add_argument(
        "--tables", type=int, default=1000, help="tables (two statements each); default 1000"
    )
    ap.add_argument("--json", default=None, help="write the results here (machine-readable)")
    args = ap.parse_args()
    globals()["TABLES"] = args.tables  # build() and statements() read the module's TABLES
    print(machine_info())
    print(
        f"command: python benchmarks/bench_audit.py --rounds {args.rounds} "
        f"--providers {args.providers}\n"
    )
    rows = []
    raw: dict[str, Any] = {}
    for provider in args.providers.split(","):
        try:
            r = bench(provider, args.rounds)
        except Exception as exc:  # a missing provider is reported, not fatal
            print(f"{provider}: skipped ({exc})")
            continue
        audit = r["doc"]["metrics"]["audit"]
        st = audit["statements"]
        raw[provider] = {
            **{k: v for k, v in r.items() if k != "doc"},
            "explained": st["explained"],
            "timings_ms": audit["timings_ms"],
            "budget_s": BUDGET_S,
        }
        rules: dict[str, int] = {}
        for f in r["doc"]["findings"]:
            rules[f["rule"]] = rules.get(f["rule"], 0) + 1
        print(
            f"{provider} (PostgreSQL {r['version']}): database built in {r['build_s']:.1f} s; "
            f"{r['entries']} pg_stat_statements entries; tables {audit['counts']['tables']}, "
            f"indexes {audit['counts']['indexes']}, foreign keys {audit['counts']['foreign_keys']}"
        )
        print(
            f"  last --top 0 run: explained {st['explained']} of {st['considered']}, "
            f"verification {audit['verification']}, phases (ms) {audit['timings_ms']}, "
            f"EXPLAIN p50 {audit['explain']['p50']:.3f} ms p99 {audit['explain']['p99']:.3f} ms "
            f"(n={audit['explain']['n']}); findings {rules}"
        )
        med_all = statistics.median(r["all"])
        rows.append(
            (
                provider,
                r["version"],
                _fmt(r["all"]),
                _fmt(r["top100"]),
                _fmt(r["floor"]),
                f"{med_all / statistics.median(r['floor']):.1f}×",
                "met" if max(r["all"]) <= BUDGET_S else "MISSED",
            )
        )
    print()
    print(
        "| provider | PostgreSQL | `audit --top 0` (2,000 statements) | `audit` (--top 100) | "
        "bare EXPLAIN of the 2,000 (floor) | audit / floor | ≤ 30 s |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    write_json(args.json, {"benchmark": "audit", "tables": args.tables, "providers": raw})


if __name__ == "__main__":
    main()
