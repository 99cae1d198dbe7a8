"""``analyze_statement``: statements in every placeholder style applications send,
verification (hypopg, real index rolled back, none), and nothing left behind."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

pytest.importorskip("fixtures.shop.models", reason="the shop fixture app is not present")

from audit_support import AuditedShop
from sqlalchemy import create_engine, event, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from dbprobe.audit.explain import ExplainError, StatementAnalyzer, analyze_statement
from dbprobe.connect import connect
from dbprobe.report.model import Severity

FIX = (
    "CREATE INDEX CONCURRENTLY ix_stock_movements_reference ON public.stock_movements (reference);"
)


@pytest.fixture
def ro_conn(audited_shop: AuditedShop) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(audited_shop.target, application_name="dbprobe-test", read_only=True)
    yield conn
    conn.close()


def captured_statement(audited_shop: AuditedShop) -> tuple[str, dict[str, Any]]:
    """What SQLAlchemy (psycopg) really sends for the planted look-up."""
    from fixtures.shop.app import inventory

    engine = create_engine(audited_shop.server.url(audited_shop.database))
    seen: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        seen.append((statement, params))

    try:
        with Session(engine) as session:
            inventory.movements_for_reference(session)
    finally:
        engine.dispose()
    (stmt,) = [(s, p) for s, p in seen if "stock_movements" in s]
    return stmt


def asyncpg_statement() -> tuple[str, list[Any]]:
    """The same look-up as the asyncpg dialect renders it: ``$1::VARCHAR``."""
    from fixtures.shop.models import StockMovement

    compiled = (
        select(StockMovement)
        .where(StockMovement.reference == "PO-000123")
        .compile(
            dialect=postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
        )
    )
    return str(compiled), [compiled.params[k] for k in compiled.positiontup or ()]


def test_sqlalchemy_psycopg_statement_with_real_parameters(
    audited_shop: AuditedShop, ro_conn: psycopg.Connection[Any]
) -> None:
    sql, params = captured_statement(audited_shop)
    assert "%(reference_1)s" in sql
    (finding,) = analyze_statement(ro_conn, sql, params)
    assert finding.rule == "unindexed-lookup"
    assert finding.recommendation.startswith(FIX)
    assert finding.sql == sql
    # the bound value stays out of the report
    assert "PO-000123" not in str(finding.to_dict())
    if audited_shop.has_hypopg:
        assert finding.severity is Severity.ERROR
        assert finding.evidence["verification"]["method"] == "hypopg"
    else:
        assert finding.severity is Severity.WARNING
        assert finding.evidence["verification"]["method"] == "none"


@pytest.mark.parametrize("style", ["asyncpg", "format", "generic"])
def test_other_placeholder_styles(
    ro_conn: psycopg.Connection[Any], audited_shop: AuditedShop, style: str
) -> None:
    if style == "asyncpg":
        sql, params = asyncpg_statement()
        assert "$1" in sql
        findings = analyze_statement(ro_conn, sql, params)
    elif style == "format":
        findings = analyze_statement(
            ro_conn, "SELECT id FROM stock_movements WHERE reference = %s", ["PO-000123"]
        )
    else:
        findings = analyze_statement(ro_conn, "SELECT id FROM stock_movements WHERE reference = $1")
    (finding,) = findings
    assert finding.recommendation.startswith(FIX)
    # nothing left in the session: no prepared statement (PG 15 path), no hypothetical index
    prepared = ro_conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert prepared is not None and prepared[0] == 0
    if audited_shop.has_hypopg:
        hypo = ro_conn.execute("SELECT count(*) FROM hypopg_list_indexes").fetchone()
        assert hypo is not None and hypo[0] == 0


def test_clean_statements_have_no_findings(ro_conn: psycopg.Connection[Any]) -> None:
    assert analyze_statement(ro_conn, "SELECT * FROM products WHERE sku = $1") == []
    assert analyze_statement(ro_conn, "SELECT * FROM stock_movements WHERE id = %s", [7]) == []
    # a whole-table read is not a look-up
    assert analyze_statement(ro_conn, "SELECT sum(quantity) FROM stock_movements") == []


def test_real_index_verification_is_rolled_back(fresh_shop: AuditedShop) -> None:
    conn = connect(fresh_shop.target, application_name="dbprobe-test")
    try:
        (finding,) = analyze_statement(
            conn, "SELECT id FROM stock_movements WHERE reference = $1", verify="real"
        )
        ver = finding.evidence["verification"]
        assert ver["method"] == "real-index" and ver["index_used"] is True
        assert ver["cost_drop"] >= 0.5 and finding.severity is Severity.ERROR
        left = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname = 'ix_stock_movements_reference'"
        ).fetchone()
        assert left is not None and left[0] == 0
    finally:
        conn.close()


def test_real_index_verification_on_a_read_only_session_is_refused(
    ro_conn: psycopg.Connection[Any],
) -> None:
    (finding,) = analyze_statement(
        ro_conn, "SELECT id FROM stock_movements WHERE reference = $1", verify="real"
    )
    ver = finding.evidence["verification"]
    assert ver["method"] == "none" and "read-only" in ver["reason"]
    assert finding.severity is Severity.WARNING


def test_analyze_runs_and_rolls_back(fresh_shop: AuditedShop) -> None:
    conn = connect(fresh_shop.target, application_name="dbprobe-test")
    try:
        total = conn.execute("SELECT sum(quantity) FROM stock_movements").fetchone()
        findings = analyze_statement(
            conn,
            "UPDATE stock_movements SET quantity = quantity + 1 WHERE reference = %(r)s",
            {"r": "PO-000123"},
            analyze=True,
            verify="none",
        )
        (lookup,) = [f for f in findings if f.rule == "unindexed-lookup"]
        assert lookup.evidence["analyzed"] is True
        assert lookup.evidence["rows_examined"] >= 10_000  # measured, not estimated
        after = conn.execute("SELECT sum(quantity) FROM stock_movements").fetchone()
        assert after == total
    finally:
        conn.close()


def test_explain_errors_are_one_line(
    ro_conn: psycopg.Connection[Any], fresh_shop: AuditedShop
) -> None:
    with pytest.raises(ExplainError) as syntax:
        analyze_statement(ro_conn, "SELECT FROM WHERE nonsense")
    assert "\n" not in str(syntax.value) and syntax.value.kind == "error"
    with pytest.raises(ExplainError) as utility:
        analyze_statement(ro_conn, "DROP TABLE stock_movements")
    assert utility.value.kind == "unsupported"
    with pytest.raises(ExplainError) as timeout:
        analyze_statement(ro_conn, "SELECT pg_sleep(2)", analyze=True, statement_timeout_ms=100)
    assert timeout.value.kind == "timeout"
    # the session is still usable after each failure
    assert ro_conn.execute("SELECT 1").fetchone() == (1,)

    role = f"dbprobe_noread_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    fresh_shop.server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        target = dataclasses.replace(fresh_shop.target, user=role, password=password)
        with connect(target, application_name="dbprobe-test", read_only=True) as conn:
            with pytest.raises(ExplainError) as denied:
                analyze_statement(conn, "SELECT * FROM stock_movements WHERE reference = $1")
            assert denied.value.kind == "privilege"
    finally:
        fresh_shop.server.execute(f"DROP ROLE {role}")


def test_one_analyzer_many_statements(ro_conn: psycopg.Connection[Any]) -> None:
    analyzer = StatementAnalyzer(ro_conn)
    first = analyzer.analyze("SELECT id FROM stock_movements WHERE reference = $1")
    second = analyzer.analyze("SELECT count(*) FROM stock_movements WHERE reference = $1")
    assert first.findings and second.findings
    # the same index for both statements: one name, one fingerprint
    assert first.findings[0].fingerprint == second.findings[0].fingerprint
    assert len(analyzer.runner.timings_ms) >= 2
    assert first.explain_ms > 0 and first.generic
