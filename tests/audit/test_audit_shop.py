"""``run_audit`` on the shop fixture app: every planted index problem found with the
right advice, nothing on the clean paths, and nothing written — on PostgreSQL 15
(hypopg) and the embedded PostgreSQL 18 (no hypopg: real indexes rolled back, or "not
verified")."""

from __future__ import annotations

import dataclasses
import re
import secrets
from typing import Any

import pytest

pytest.importorskip("fixtures.shop.manifest", reason="the shop fixture app is not present")

from audit_support import AuditedShop

from dbprobe.audit import AuditOptions, run_audit
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


def _state(audit: AuditedShop) -> dict[str, Any]:
    db = audit.database
    ex = audit.server.execute
    return {
        "relations": sorted(
            ex(
                "SELECT c.oid::int8, c.relname::text, c.relkind::text, c.relfilenode::int8 "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
                db,
            )
        ),
        "indexes": sorted(
            ex("SELECT indexrelid::int8, indisvalid, indisready, indislive FROM pg_index", db)
        ),
        "writes": sorted(
            ex(
                "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd "
                "FROM pg_stat_user_tables",
                db,
            )
        ),
        "statements": dict(
            ex(
                "SELECT query, sum(calls)::int8 FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "GROUP BY query",
                db,
            )
        ),
    }


TRANSACTION = {"BEGIN", "ROLLBACK", "COMMIT", "SAVEPOINT", "RELEASE"}
READ_ONLY_KINDS = {"SELECT", "EXPLAIN", "SET", "SHOW", "PREPARE", "DEALLOCATE", "BEGIN",
                   "ROLLBACK", "SAVEPOINT", "RELEASE"}  # fmt: skip


@pytest.mark.parametrize("disposable", [False, True], ids=["read-only", "disposable"])
def test_audit_writes_nothing(fresh_shop: AuditedShop, disposable: bool) -> None:
    """After an audit the catalog, the write counters and pg_stat_statements show
    nothing written — also with real-index verification, which is rolled back.

    The read-only audit runs as a plain auditor role (pg_read_all_stats, SELECT), whose
    statements pg_stat_statements records: they are all reads. The disposable one runs
    as the tables' owner, a superuser, whose session keeps itself out of
    pg_stat_statements."""
    from dbprobe.analysis.sqltext import leading_keyword

    server, db = fresh_shop.server, fresh_shop.database
    role = f"dbprobe_auditor_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    target = fresh_shop.target
    if not disposable:
        server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE pg_read_all_stats")
        server.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}", db)
        target = dataclasses.replace(target, user=role, password=password)
    try:
        before = _state(fresh_shop)
        report = run_audit(
            target, AuditOptions(coldstart=False, disposable=disposable, min_seq_scans=1)
        )
        assert any(f.rule == "unindexed-lookup" for f in report.findings)
        after = _state(fresh_shop)
        own = [
            str(q)
            for (q,) in server.execute(
                "SELECT s.query FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
                f"WHERE r.rolname = '{role}' AND s.toplevel",
                db,
            )
        ]
    finally:
        if not disposable:
            server.execute(f"DROP OWNED BY {role}", db)
            server.execute(f"DROP ROLE {role}")
    assert after["relations"] == before["relations"]
    assert after["indexes"] == before["indexes"]
    assert after["writes"] == before["writes"]
    ran = [q for q, n in after["statements"].items() if n > before["statements"].get(q, 0)]
    for query in ran:
        assert leading_keyword(query) in READ_ONLY_KINDS, query
    if disposable:
        assert any("not recorded in pg_stat_statements" in n for n in report.notes)
        assert not [q for q in ran if "dbprobe-audit" in q or q.startswith("EXPLAIN")]
    else:
        assert any("recorded in pg_stat_statements" in n for n in report.notes)
        assert sum(q.startswith("EXPLAIN") for q in ran) >= 10  # the audit's, all reads
        assert any("/* dbprobe-audit */" in q for q in ran)
        # every statement of the audit's own is marked (so later audits skip it), but
        # the transaction control psycopg sends
        unmarked = [
            q for q in own if "/* dbprobe-" not in q and leading_keyword(q) not in TRANSACTION
        ]
        assert own and not unmarked, unmarked
    sessions = server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbprobe-audit%'"
    )
    assert sessions[0][0] == 0  # every audit session closed


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
