"""``run_audit`` over a workload on a 40,000-row table, on the session's server
(PostgreSQL 15, hypopg) and the embedded PostgreSQL 18 (no hypopg): paths an existing
index serves give no finding, paths an index cannot serve do (a partial index whose
predicate the query lacks), a proposal the planner would not use is rejected by the
verification, and hypopg's verdict matches a real index built and rolled back. The
audit's own session is checked to be read-only and bounded while it runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from catalog_support import Scratch

import dbprobe.audit.audit as audit_module
from dbprobe.audit import AuditOptions, run_audit
from dbprobe.audit.explain import AnalysisOptions, StatementAnalyzer
from dbprobe.pg import PostgresServer
from dbprobe.report.model import Finding, Report
from dbprobe.report.schema import validate_report

ROWS = 40_000
SCHEMA = f"""
CREATE TABLE events (
    id bigint PRIMARY KEY,
    account_id int NOT NULL,
    ref text NOT NULL,
    grp int NOT NULL,
    tag int NOT NULL,
    shard int NOT NULL,
    created_at timestamptz NOT NULL,
    deleted_at timestamptz,
    payload text NOT NULL
);
INSERT INTO events
SELECT g, g % 2000, 'r' || g, 1 + g % 50, abs(hashint4(g + 1)) % 1000, hashint4(g) & 15,
       timestamptz '2024-01-01' + g * interval '1 minute',
       CASE WHEN g % 10 = 0 THEN timestamptz '2025-01-01' END, repeat('x', 50)
FROM generate_series(1, {ROWS}) g;
CREATE INDEX ev_account_created ON events (account_id, created_at);
CREATE INDEX ev_ref_deleted ON events (ref) WHERE deleted_at IS NOT NULL;
"""

# statement → parameters of each run (psycopg binds on the server: pg_stat_statements
# records the text with $n, as it does for an application)
SERVED_TOP_N = "SELECT id FROM events WHERE account_id = %s ORDER BY created_at DESC LIMIT 10"
SERVED_RANGE = "SELECT id FROM events WHERE account_id = %s AND created_at > %s"
PARTIAL_UNUSABLE = "SELECT id FROM events WHERE ref = %s"
EQUALITY_AND_RANGE = "SELECT id FROM events WHERE created_at > %s AND tag = %s"
NOT_WORTH_AN_INDEX = "SELECT * FROM events WHERE grp = %s ORDER BY id LIMIT 10"
TOO_SMALL_A_GAIN = "SELECT * FROM events WHERE shard = %s"
WORKLOAD: list[tuple[str, tuple[Any, ...]]] = [
    (SERVED_TOP_N, (7,)),
    (SERVED_RANGE, (7, "2024-01-05")),
    (PARTIAL_UNUSABLE, ("r42",)),
    (EQUALITY_AND_RANGE, ("2024-01-05", 7)),
    (NOT_WORTH_AN_INDEX, (7,)),
    (TOO_SMALL_A_GAIN, (7,)),
]


def dollar(sql: str) -> str:
    """The text pg_stat_statements records for ``sql``."""
    out, n = sql, 0
    while "%s" in out:
        n += 1
        out = out.replace("%s", f"${n}", 1)
    return out


@pytest.fixture(scope="module")
def events(audit_server: PostgresServer) -> Iterator[Scratch]:
    name = audit_server.create_database()
    scratch = Scratch(audit_server, name)
    scratch.sql(SCHEMA)
    scratch.sql("VACUUM events")
    # a statistics sample of every row: the same estimates, and costs, on every run
    scratch.sql("SET default_statistics_target = 200; ANALYZE events")
    # this database's entries only: the other tests' databases keep their workload
    scratch.sql(
        "SELECT pg_stat_statements_reset(0, "
        "(SELECT oid FROM pg_database WHERE datname = current_database()), 0)"
    )
    with psycopg.connect(audit_server.dsn(name), autocommit=True) as conn:
        for _ in range(5):
            for sql, params in WORKLOAD:
                conn.execute(sql, params)  # type: ignore[arg-type]
    scratch.flush_stats()
    yield scratch
    audit_server.drop_database(name)


@dataclasses.dataclass
class Observed:
    """What the audit's own sessions looked like while it ran."""

    settings: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    seen_in_activity: list[str] = dataclasses.field(default_factory=list)


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch, events: Scratch) -> Observed:
    """Wrap the audit's ``connect`` (a real connection) to read, on each session it
    opens, the settings the server applies, and what pg_stat_activity shows of it."""
    seen = Observed()
    real_connect = audit_module.connect

    def observing(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = real_connect(*args, **kwargs)
        name = str(kwargs.get("application_name"))
        row = conn.execute(
            "SELECT current_setting('default_transaction_read_only'), "
            "current_setting('statement_timeout'), current_setting('lock_timeout'), "
            "current_setting('application_name'), pg_backend_pid()"
        ).fetchone()
        assert row is not None
        seen.settings[name] = {
            "default_transaction_read_only": row[0],
            "statement_timeout": row[1],
            "lock_timeout": row[2],
            "application_name": row[3],
        }
        activity = events.sql(f"SELECT application_name FROM pg_stat_activity WHERE pid = {row[4]}")
        seen.seen_in_activity += [str(r[0]) for r in activity]
        return conn

    monkeypatch.setattr(audit_module, "connect", observing)
    return seen


def lookups(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.rule == "unindexed-lookup"]


def statements_of(finding: Finding) -> list[str]:
    return [str(s["sql"]) for s in finding.evidence["statements"]]


def test_indexed_paths_stay_quiet_and_unusable_indexes_do_not(
    events: Scratch, observed: Observed
) -> None:
    report = run_audit(
        events.target,
        AuditOptions(coldstart=False, disposable=True, statement_timeout_ms=4000,
                     lock_timeout_ms=700),
    )  # fmt: skip
    validate_report(report.to_dict())
    audit = report.metrics["audit"]
    considered = {dollar(sql) for sql, _ in WORKLOAD}
    assert audit["statements"]["explained"] >= len(considered)

    by_sql = {sql: f for f in lookups(report) for sql in statements_of(f)}
    # served by ev_account_created (equality, then the order or the range): no finding
    assert dollar(SERVED_TOP_N) not in by_sql
    assert dollar(SERVED_RANGE) not in by_sql
    # the partial index on ref does not serve a query without its predicate
    partial = by_sql[dollar(PARTIAL_UNUSABLE)]
    assert partial.evidence["index"]["columns"] == ["ref"]
    # equality before range, whatever the order in the WHERE clause
    both = by_sql[dollar(EQUALITY_AND_RANGE)]
    assert both.evidence["index"]["columns"][0] == "tag"
    for finding in (partial, both):
        verification = finding.evidence["verification"]
        assert verification["method"] in ("hypopg", "real-index")
        assert verification["index_used"] is True
        assert verification["cost_after"] <= 0.5 * verification["cost_before"]

    # (grp, id) would not be used: the primary key's order finds 10 rows early enough;
    # (shard) would be, but one row in 16 read through a bitmap saves less than half
    assert dollar(NOT_WORTH_AN_INDEX) not in by_sql
    assert dollar(TOO_SMALL_A_GAIN) not in by_sql
    rejected = {r["index"]: r for r in audit["rejected"] if r["table"] == "events"}
    assert set(rejected) == {"(grp, id)", "(shard)"}, audit["rejected"]
    assert rejected["(grp, id)"]["index_used"] is False
    assert rejected["(grp, id)"]["cost_after"] >= 0.5 * rejected["(grp, id)"]["cost_before"]
    assert rejected["(shard)"]["index_used"] is True
    assert 0 < rejected["(shard)"]["cost_drop"] < 0.5

    # the audit's sessions: read-only and bounded as asked; the verifying one writable
    main = observed.settings["dbprobe-audit"]
    assert main == {
        "default_transaction_read_only": "on",
        "statement_timeout": "4s",
        "lock_timeout": "700ms",
        "application_name": "dbprobe-audit",
    }
    verify = observed.settings["dbprobe-audit-verify"]
    assert verify["default_transaction_read_only"] == "off"
    assert verify["lock_timeout"] == "700ms"
    assert observed.seen_in_activity == ["dbprobe-audit", "dbprobe-audit-verify"]
    left = events.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbprobe-audit%'"
    )
    assert left[0][0] == 0


def test_read_only_audit_opens_one_bounded_session(events: Scratch, observed: Observed) -> None:
    run_audit(events.target, AuditOptions(coldstart=False, verify="none", top=1))
    assert list(observed.settings) == ["dbprobe-audit"]
    assert observed.settings["dbprobe-audit"]["default_transaction_read_only"] == "on"
    assert observed.settings["dbprobe-audit"]["statement_timeout"] == "5s"
    assert observed.settings["dbprobe-audit"]["lock_timeout"] == "1s"


def _verification(conn: psycopg.Connection[Any], sql: str, verify: str) -> dict[str, Any]:
    analyzer = StatementAnalyzer(conn, AnalysisOptions(verify=verify, disposable=verify == "real"))
    result = analyzer.analyze(sql)
    assert result.error is None, result.error
    found = [f for f in result.findings if f.rule == "unindexed-lookup"]
    if found:
        index = found[0].evidence["index"]
        return dict(found[0].evidence["verification"], index=f"({', '.join(index['columns'])})")
    assert len(result.rejected) == 1, result.rejected
    return dict(result.rejected[0])


@pytest.mark.parametrize(
    "sql", [EQUALITY_AND_RANGE, NOT_WORTH_AN_INDEX, TOO_SMALL_A_GAIN, PARTIAL_UNUSABLE]
)
def test_hypopg_agrees_with_a_real_index(events: Scratch, sql: str) -> None:
    """The hypothetical index's plan is the plan a real one gets: same use, and a cost
    within 10 % (hypopg estimates the index size; the real build measures it)."""
    if not events.sql("SELECT 1 FROM pg_extension WHERE extname = 'hypopg'"):
        pytest.skip("hypopg is not installed on this server")
    with events.connect() as conn:
        hypo = _verification(conn, dollar(sql), "hypopg")
        real = _verification(conn, dollar(sql), "real")
        # nothing left behind by either
        assert not conn.execute(
            "SELECT 1 FROM pg_indexes WHERE tablename = 'events' AND indexname LIKE 'ix_%'"
        ).fetchall()
    assert hypo["method"] == "hypopg" and real["method"] == "real-index"
    assert hypo["index"] == real["index"]
    assert hypo["index_used"] == real["index_used"]
    assert hypo["cost_before"] == pytest.approx(real["cost_before"])
    assert hypo["cost_after"] == pytest.approx(real["cost_after"], rel=0.1)
