"""``run_audit`` on the shop fixture app: every planted index problem found with the
right advice, nothing on the clean paths, and nothing written — on PostgreSQL 15
(hypopg) and the embedded PostgreSQL 18 (no hypopg: real indexes rolled back, or "not
verified")."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fixtures.shop.manifest", reason="the shop fixture app is not present")

from audit_support import AuditedShop

from dbprobe.audit import AuditOptions, run_audit
from dbprobe.pg import PostgresServer
from dbprobe.report.model import Finding, Report, Severity
from dbprobe.report.render import RENDERERS, render
from dbprobe.report.schema import validate_report
from fixtures.shop.manifest import Problem, load_manifest

MANIFEST = load_manifest()
AUDIT_RULES = (
    "fk-missing-index",
    "unindexed-lookup",
    "duplicate-index",
    "unused-index",
    "seq-scan-heavy-table",
)
PLANTED = [p for p in MANIFEST.problems if p.rule in AUDIT_RULES]


def normalize(sql: str) -> str:
    """``CREATE INDEX CONCURRENTLY x ON public.t (c);`` → ``CREATE INDEX x ON t (c);``."""
    out = sql.replace(" CONCURRENTLY", "").replace("public.", "")
    return re.sub(r"\s+", " ", out).strip()


def matches(finding: Finding, problem: Problem | Any) -> bool:
    if finding.rule != problem.rule:
        return False
    ev: dict[str, Any] = dict(finding.evidence)
    if problem.rule in ("duplicate-index", "unused-index"):
        return bool(ev.get("index") == problem.index)
    if finding.table != problem.table:
        return False
    if problem.rule == "fk-missing-index":
        return tuple(ev.get("columns", ())) == tuple(problem.columns)
    if problem.rule == "unindexed-lookup":
        return tuple(ev.get("index", {}).get("columns", ())) == tuple(problem.columns)
    return True


@pytest.fixture(scope="session")
def shop_report(audited_shop: AuditedShop) -> Report:
    # auto + disposable: hypopg where it is installed, real indexes rolled back elsewhere
    return run_audit(audited_shop.target, AuditOptions(coldstart=False, disposable=True))


@pytest.mark.parametrize("problem", PLANTED, ids=[p.id for p in PLANTED])
def test_planted_problem_found_with_the_right_advice(
    shop_report: Report, audited_shop: AuditedShop, problem: Problem
) -> None:
    found = [f for f in shop_report.findings if matches(f, problem)]
    assert len(found) == 1, [f.message for f in shop_report.findings if f.rule == problem.rule]
    finding = found[0]
    assert normalize(problem.expected_fix) in normalize(finding.recommendation)
    if problem.rule == "unindexed-lookup":
        verification = finding.evidence["verification"]
        expected = "hypopg" if audited_shop.has_hypopg else "real-index"
        assert verification["method"] == expected
        assert verification["index_used"] is True
        assert verification["cost_drop"] >= 0.5
        assert verification["cost_after"] < verification["cost_before"]
        assert finding.severity is Severity.ERROR
        assert finding.sql and "stock_movements.reference = $1" in finding.sql
        assert finding.evidence["statements"][0]["calls"] >= 5
    if problem.rule == "seq-scan-heavy-table":
        assert finding.evidence["idx_scan"] == 0
        assert finding.evidence["seq_scan"] >= 5


def test_no_finding_beyond_the_planted_and_tolerated(shop_report: Report) -> None:
    """Nothing on the clean paths: every finding is a planted problem or tolerated."""
    unexpected = []
    for f in shop_report.findings:
        if any(matches(f, p) for p in PLANTED):
            continue
        if f.rule == "unused-index" and any(
            t.rule == f.rule and t.index == f.evidence.get("index") for t in MANIFEST.tolerated
        ):
            continue
        unexpected.append(f"{f.rule}: {f.message}")
    assert unexpected == []


def test_clean_cases_do_not_trigger(shop_report: Report) -> None:
    lookups = [f for f in shop_report.findings if f.rule == "unindexed-lookup"]
    assert [(f.table, f.evidence["index"]["columns"]) for f in lookups] == [
        ("stock_movements", ["reference"])
    ]
    for clean in MANIFEST.clean:
        for rule in clean.must_not_trigger:
            for f in shop_report.findings:
                if f.rule != rule or clean.kind != "schema":
                    continue
                assert not (
                    f.table == clean.table
                    and tuple(f.evidence.get("columns", ())) == tuple(clean.columns)
                ), f"{clean.id}: {f.message}"
                assert f.evidence.get("index") != clean.index, f"{clean.id}: {f.message}"


def test_report_is_valid_and_carries_audit_metrics(shop_report: Report) -> None:
    doc = shop_report.to_dict()
    validate_report(doc)
    audit = doc["metrics"]["audit"]
    assert audit["statements"]["explained"] >= 10
    # pg_stat_statements texts with $n get generic plans
    assert 10 <= audit["statements"]["generic_plans"] <= audit["statements"]["explained"]
    assert audit["explain"]["n"] >= audit["statements"]["explained"]
    assert set(audit["timings_ms"]) >= {"connect", "catalog", "statements", "catalog_rules"}
    assert shop_report.target.server_version
    for fmt in RENDERERS:  # every format dbprobe renders (html, sarif … when present)
        assert "stock_movements" in render(shop_report, fmt), fmt


def test_unverified_without_hypopg(fresh_shop: AuditedShop) -> None:
    """On a database without hypopg and not declared disposable: advice is given, marked
    "not verified", with how to install hypopg."""
    if fresh_shop.has_hypopg:
        fresh_shop.server.execute("DROP EXTENSION hypopg", fresh_shop.database)
    report = run_audit(fresh_shop.target, AuditOptions(coldstart=False, min_seq_scans=1))
    (lookup,) = [f for f in report.findings if f.rule == "unindexed-lookup"]
    assert lookup.severity is Severity.WARNING
    assert "not verified: hypopg is not installed" in lookup.message
    assert lookup.recommendation.startswith(
        "CREATE INDEX CONCURRENTLY ix_stock_movements_reference ON public.stock_movements "
        "(reference);"
    )
    assert "CREATE EXTENSION hypopg" in lookup.recommendation
    assert lookup.evidence["verification"]["method"] == "none"
    assert any("not verified" in n for n in report.notes)
    validate_report(report.to_dict())


STATE = "/* audit-test-state */"


def _state(audit: AuditedShop, auditor: str | None = None) -> dict[str, Any]:
    """What an audit must not change: the catalog (every pg_class row with its options
    and privileges, indexes, comments, functions, extensions, constraints, triggers),
    the write, scan and maintenance counters of every table and index, and the calls of
    each statement the application ran. The test's own queries carry a marker so they
    can be told apart in pg_stat_statements."""
    db = audit.database

    def ex(sql: str) -> list[tuple[Any, ...]]:
        return sorted(audit.server.execute(marked(sql), db), key=repr)

    user_schemas = "NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
    return {
        "relations": ex(
            "SELECT c.oid::int8, c.relname::text, c.relkind::text, c.relfilenode::int8, "
            "c.relpages, c.reltuples, c.relhasindex, c.relowner::int8, c.relpersistence::text, "
            "c.reloptions::text, c.relacl::text, c.relnatts "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname {user_schemas}"
        ),
        "indexes": ex(
            "SELECT indexrelid::int8, indisvalid, indisready, indislive, indisclustered, "
            "indisreplident FROM pg_index"
        ),
        "comments": ex(
            "SELECT objoid::int8, classoid::int8, objsubid, description FROM pg_description"
        ),
        "functions": ex(
            "SELECT p.oid::int8, p.proname::text, md5(p.prosrc), p.proacl::text FROM pg_proc p "
            f"JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname {user_schemas}"
        ),
        "extensions": ex("SELECT extname::text, extversion FROM pg_extension"),
        "constraints": ex("SELECT oid::int8, conname::text, convalidated FROM pg_constraint"),
        "triggers": ex("SELECT oid::int8, tgname::text, tgenabled::text FROM pg_trigger"),
        "namespaces": ex("SELECT oid::int8, nspname::text, nspacl::text FROM pg_namespace"),
        "writes": ex(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, "
            "vacuum_count, analyze_count, autovacuum_count, autoanalyze_count "
            "FROM pg_stat_user_tables"
        ),
        "scans": ex(
            "SELECT relname::text, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch "
            "FROM pg_stat_user_tables"
        ),
        "index_scans": ex(
            "SELECT indexrelname::text, idx_scan, idx_tup_read, idx_tup_fetch "
            "FROM pg_stat_user_indexes"
        ),
        "statements": dict(
            ex(
                "SELECT query, sum(calls)::int8 FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "GROUP BY query"
            )
        ),
        "application_calls": dict(
            ex(
                "SELECT s.query, sum(s.calls)::int8 FROM pg_stat_statements s "
                "JOIN pg_roles r ON r.oid = s.userid "
                "WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                f"AND r.rolname <> '{auditor or ''}' AND s.query NOT LIKE '%audit-test-state%' "
                "AND s.query NOT LIKE '%dbprobe-%' GROUP BY s.query"
            )
        ),
        "xmax": audit.server.execute(
            marked("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8"), db
        )[0][0],
    }


def marked(sql: str) -> str:
    """``sql`` with the marker inside it (pg_stat_statements drops a leading comment)."""
    return sql.replace("SELECT ", f"SELECT {STATE} ", 1)


@contextlib.contextmanager
def autovacuum_off(server: PostgresServer) -> Iterator[None]:
    """No autovacuum worker on the (throwaway) server while the block runs: nothing but
    the audit could assign a transaction id."""
    server.execute("ALTER SYSTEM SET autovacuum = off")
    server.execute("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = server.execute(
                "SELECT current_setting('autovacuum'), (SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'autovacuum worker')"
            )
            if rows[0] == ("off", 0):
                break
            time.sleep(0.05)
        yield
    finally:
        server.execute("ALTER SYSTEM RESET autovacuum")
        server.execute("SELECT pg_reload_conf()")


def wait_for_audit_sessions_to_end(server: PostgresServer) -> None:
    """Backends flush their statistics when they exit: once the audit's sessions are
    gone from pg_stat_activity, every counter they touched is visible."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbprobe-audit%'"
        )
        if rows[0][0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("an audit session is still open")


TRANSACTION = {"BEGIN", "ROLLBACK", "COMMIT", "SAVEPOINT", "RELEASE"}
READ_ONLY_KINDS = {"SELECT", "EXPLAIN", "SET", "SHOW", "PREPARE", "DEALLOCATE", "BEGIN",
                   "ROLLBACK", "SAVEPOINT", "RELEASE"}  # fmt: skip


@pytest.mark.parametrize("mode", ["read-only", "disposable", "disposable-owner"])
def test_audit_writes_nothing(fresh_shop: AuditedShop, mode: str) -> None:
    """After an audit the catalog, the counters and pg_stat_statements show nothing
    written — also with real-index verification, which is rolled back.

    The read-only audit runs as a role that MAY write (every privilege on the tables,
    CREATE on the schema, not a superuser, so pg_stat_statements records it): nothing
    but the audit's own read-only session keeps it from writing. It assigns no
    transaction id, runs none of the application's statements and scans no table. The
    disposable one runs as a superuser, whose session keeps itself out of
    pg_stat_statements; disposable-owner as a plain role that owns the tables and builds
    real indexes (``--verify real``), recorded by pg_stat_statements: every index it
    built is gone."""
    from dbprobe.analysis.sqltext import leading_keyword

    server, db = fresh_shop.server, fresh_shop.database
    role = f"dbprobe_auditor_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    target = fresh_shop.target
    disposable = mode != "read-only"
    as_role = mode != "disposable"
    if as_role:
        server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE pg_read_all_stats")
        server.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}", db)
        server.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}", db)
        server.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}", db)
        server.execute(f"GRANT CREATE, TEMPORARY ON DATABASE {db} TO {role}")
        if mode == "disposable-owner":
            for (table,) in server.execute(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'", db
            ):
                server.execute(f'ALTER TABLE public."{table}" OWNER TO {role}', db)
        target = dataclasses.replace(target, user=role, password=password)
    seen: list[int] = []
    try:
        with autovacuum_off(server):
            before = _state(fresh_shop, role)
            watcher = threading.Thread(target=_watch_sessions, args=(server, seen), daemon=True)
            watcher.start()
            try:
                report = run_audit(
                    target,
                    AuditOptions(
                        coldstart=False,
                        disposable=disposable,
                        min_seq_scans=1,
                        verify="real" if mode == "disposable-owner" else "auto",
                    ),
                )
            finally:
                seen.append(-1)  # stop
                watcher.join(timeout=10)
            wait_for_audit_sessions_to_end(server)
            after = _state(fresh_shop, role)
        assert any(f.rule == "unindexed-lookup" for f in report.findings)
        own = [
            str(q)
            for (q,) in server.execute(
                "SELECT s.query FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
                f"WHERE r.rolname = '{role}' AND s.toplevel",
                db,
            )
        ]
    finally:
        if as_role:
            server.execute(f"DROP OWNED BY {role}", db)
            server.execute(f"DROP ROLE {role}")
    for key in ("relations", "indexes", "comments", "functions", "extensions", "constraints",
                "triggers", "namespaces", "writes", "application_calls"):  # fmt: skip
        assert after[key] == before[key], key
    ran = [q for q, n in after["statements"].items() if n > before["statements"].get(q, 0)]
    ran = [q for q in ran if "audit-test-state" not in q]
    built = [q for q in ran if leading_keyword(q) == "CREATE"]
    for query in ran:
        if query in built and mode == "disposable-owner":
            assert query.startswith("CREATE /* dbprobe-audit */ INDEX "), query
            continue
        assert leading_keyword(query) in READ_ONLY_KINDS, query
    if mode == "disposable-owner":
        # real indexes built (and recorded), all rolled back: the catalog is unchanged
        assert built, ran
        verified = [f for f in report.findings if f.rule == "unindexed-lookup"]
        assert verified[0].evidence["verification"]["method"] == "real-index"
        assert any("recorded in pg_stat_statements" in n for n in report.notes)
    elif disposable:
        assert any("not recorded in pg_stat_statements" in n for n in report.notes)
        assert not [q for q in ran if "dbprobe-audit" in q or q.startswith("EXPLAIN")]
    else:
        # no transaction id assigned (autovacuum is off, nothing else runs), no table or
        # index scanned: plain EXPLAIN and catalog reads only
        assert after["xmax"] == before["xmax"]
        # Planning a join or a range probes the ends of an index (get_actual_variable_range:
        # one index scan fetching a row or so); a statement that ran would scan a table.
        for (rel, seq, seq_read, idx, fetched), (rel0, seq0, seq_read0, idx0, fetched0) in zip(
            after["scans"], before["scans"], strict=True
        ):
            assert (rel, seq, seq_read) == (rel0, seq0, seq_read0)
            assert (fetched or 0) - (fetched0 or 0) <= (idx or 0) - (idx0 or 0), rel
        for (name, idx, _read, fetched), (name0, idx0, _read0, fetched0) in zip(
            after["index_scans"], before["index_scans"], strict=True
        ):
            assert name == name0
            assert fetched - fetched0 <= idx - idx0, name
        assert any("recorded in pg_stat_statements" in n for n in report.notes)
        assert sum(q.startswith("EXPLAIN") for q in ran) >= 10  # the audit's, all reads
        assert any("/* dbprobe-audit */" in q for q in ran)
        # every statement of the audit's own is marked (so later audits skip it), but
        # the transaction control psycopg sends
        unmarked = [
            q for q in own if "/* dbprobe-" not in q and leading_keyword(q) not in TRANSACTION
        ]
        assert own and not unmarked, unmarked
    # the audit's sessions were there while it ran, and are all closed now
    assert max(seen) >= 1
    sessions = server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbprobe-audit%'"
    )
    assert sessions[0][0] == 0


def _watch_sessions(server: PostgresServer, seen: list[int]) -> None:
    """Count the audit's sessions in pg_stat_activity until ``-1`` is appended."""
    with server.connect() as conn:
        while not seen or seen[-1] != -1:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbprobe-audit%'"
            ).fetchone()
            seen.insert(0, int(row[0]) if row else 0)
            time.sleep(0.01)


def test_pg_stat_statements_missing(fresh_shop: AuditedShop) -> None:
    fresh_shop.server.execute("DROP EXTENSION pg_stat_statements", fresh_shop.database)
    report = run_audit(fresh_shop.target, AuditOptions(coldstart=False))
    (missing,) = [f for f in report.findings if f.rule == "pg-stat-statements-missing"]
    assert missing.severity is Severity.INFO
    assert "CREATE EXTENSION pg_stat_statements" in missing.recommendation
    assert not any(f.rule == "unindexed-lookup" for f in report.findings)
    # the rest of the audit still ran
    assert sum(f.rule == "fk-missing-index" for f in report.findings) == 3
    validate_report(report.to_dict())


def test_missing_privileges_become_info_findings(fresh_shop: AuditedShop) -> None:
    server = fresh_shop.server
    stats_role = f"dbprobe_stats_{secrets.token_hex(4)}"
    plain_role = f"dbprobe_plain_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    server.execute(
        f"CREATE ROLE {stats_role} LOGIN PASSWORD '{password}' IN ROLE pg_read_all_stats"
    )
    server.execute(f"CREATE ROLE {plain_role} LOGIN PASSWORD '{password}'")
    try:
        # sees every statement but may not read the tables: EXPLAIN fails per statement
        report = run_audit(
            dataclasses.replace(fresh_shop.target, user=stats_role, password=password),
            AuditOptions(coldstart=False),
        )
        skipped = [f for f in report.findings if f.rule == "check-skipped"]
        assert len(skipped) == 1 and skipped[0].severity is Severity.INFO
        assert skipped[0].evidence["failures"].get("privilege", 0) >= 1
        assert sum(f.rule == "fk-missing-index" for f in report.findings) == 3
        validate_report(report.to_dict())

        # without pg_read_all_stats the application's statements are hidden: a note
        # that counts them (every hidden entry has the same text)
        def others() -> int:
            rows = server.execute(
                "SELECT count(*) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
                "WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                f"AND s.toplevel AND r.rolname <> '{plain_role}'",
                fresh_shop.database,
            )
            return int(rows[0][0])

        before = others()
        report = run_audit(
            dataclasses.replace(fresh_shop.target, user=plain_role, password=password),
            AuditOptions(coldstart=False),
        )
        after = others()
        hidden = report.metrics["audit"]["statements"]["hidden"]
        assert before > 1 and before <= hidden <= after
        assert any(f"{hidden} statements of other roles" in n for n in report.notes)
        assert any("pg_read_all_stats" in n for n in report.notes)
        assert sum(f.rule == "fk-missing-index" for f in report.findings) == 3
    finally:
        server.execute(f"DROP ROLE {stats_role}")
        server.execute(f"DROP ROLE {plain_role}")


def test_schema_filters(audited_shop: AuditedShop) -> None:
    report = run_audit(
        audited_shop.target, AuditOptions(coldstart=False, exclude_schemas=("pub*",))
    )
    assert not [f for f in report.findings if f.rule != "check-skipped"]
    report = run_audit(
        audited_shop.target, AuditOptions(coldstart=False, schemas=("public",), verify="none")
    )
    assert any(f.rule == "unindexed-lookup" for f in report.findings)


def test_cold_start_sample_when_the_probe_is_installed(audited_shop: AuditedShop) -> None:
    report = run_audit(audited_shop.target, AuditOptions(verify="none", top=1))
    try:
        import dbprobe.coldstart  # noqa: F401
    except ImportError:
        assert any("cold-start sample not included" in n for n in report.notes)
        assert "coldstart" not in report.metrics
    else:
        assert report.metrics["coldstart"], "the audit hook ran the cold-start sample"
        validate_report(report.to_dict())
    skipped = run_audit(audited_shop.target, AuditOptions(verify="none", top=1, coldstart=False))
    assert "coldstart" not in skipped.metrics
    assert "coldstart" not in skipped.metrics["audit"]["timings_ms"]


def test_pg_stat_statements_library_not_loaded(audit_server: PostgresServer) -> None:
    """The extension is created but the library is not in shared_preload_libraries:
    an info finding that says to preload it and restart; the catalog checks still run."""
    from dbprobe.pg import throwaway

    with throwaway(audit_server.provider, settings={"shared_preload_libraries": ""}) as server:
        db = server.create_database()
        server.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", db)
        server.execute(
            "CREATE TABLE p (id int PRIMARY KEY); "
            "CREATE TABLE c (id int PRIMARY KEY, p_id int REFERENCES p); "
            "INSERT INTO p SELECT generate_series(1, 100)",
            db,
        )
        report = run_audit(server.target(db), AuditOptions(coldstart=False))
    validate_report(report.to_dict())
    (missing,) = [f for f in report.findings if f.rule == "pg-stat-statements-missing"]
    assert missing.severity is Severity.INFO
    assert "shared_preload_libraries" in missing.recommendation
    assert "restart" in missing.recommendation
    assert not any(f.rule == "check-skipped" for f in report.findings)
    assert [f.table for f in report.findings if f.rule == "fk-missing-index"] == ["c"]
