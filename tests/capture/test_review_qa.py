"""Behaviour the first test suite left unchecked: failing statements, the capture
decorator called twice, redaction of redundant-query SQL, and the application's own
loader strategy kept in a chained fix (real PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, joinedload

import dbprobe
from dbprobe.config import DbprobeConfig
from fixtures.shop.models import Order


def test_a_failing_statement_is_recorded_with_its_error(shop_engine: Engine) -> None:
    with shop_engine.connect() as conn, dbprobe.capture() as log:
        with pytest.raises(DBAPIError):
            conn.execute(text("SELECT 1 / 0"))
        conn.rollback()
        conn.execute(text("SELECT 1"))
    failed, ok = log.statements
    assert failed.error is not None and "DivisionByZero" in failed.error
    assert failed.duration_ns > 0
    assert ok.error is None


def test_the_capture_decorator_gives_each_call_its_own_log(shop_engine: Engine) -> None:
    @dbprobe.capture()
    def lookups(n: int) -> int:
        with shop_engine.connect() as conn:
            for i in range(n):
                conn.execute(text("SELECT :i"), {"i": i})
        return n

    assert lookups(3) == 3
    first = lookups.dbprobe_log  # type: ignore[attr-defined]
    assert lookups(2) == 2
    second = lookups.dbprobe_log  # type: ignore[attr-defined]
    assert second is not first
    assert (len(first), len(second)) == (3, 2)


def test_redundant_query_sql_has_no_inlined_values(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    with shop_engine.connect() as conn, dbprobe.capture() as log:
        for _ in range(3):
            conn.execute(text("SELECT id FROM products WHERE sku = 'SKU-SECRET-8841'")).all()
    (finding,) = [f for f in log.findings(config) if f.rule == "redundant-query"]
    dumped = json.dumps(finding.to_dict())
    assert "SKU-SECRET-8841" not in dumped
    assert "8841" not in dumped
    assert "sku = ?" in (finding.sql or "")


def test_chained_fix_keeps_the_applications_strategy(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    stmt = select(Order).order_by(Order.id).limit(6).options(joinedload(Order.items))
    with Session(shop_engine) as session, dbprobe.capture() as log:
        orders = session.scalars(stmt).unique().all()
        names = [item.product.name for order in orders for item in order.items]
    assert names
    (finding,) = [f for f in log.findings(config) if f.rule == "n-plus-one"]
    # Order.items is joined by the application: the fix extends its option, it does
    # not switch the collection to selectinload.
    assert finding.evidence["fix"] == "joinedload(Order.items).joinedload(OrderItem.product)"


def test_verification_says_when_the_fix_leaves_the_n_plus_one(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    # Orders mapped from raw SQL: a joinedload cannot change that text, so the re-run
    # with the suggested option still lazy-loads every customer.
    raw = text("SELECT * FROM orders ORDER BY id LIMIT 8")

    @dbprobe.capture(verify_fixes=True)
    def customers_of_raw_orders() -> int:
        with Session(shop_engine) as session:
            orders = session.scalars(select(Order).from_statement(raw)).all()
            return len({order.customer.email for order in orders})

    assert customers_of_raw_orders() > 1
    log = customers_of_raw_orders.dbprobe_log  # type: ignore[attr-defined]
    (verified,) = log.verifications.values()
    assert verified["fix"] == "joinedload(Order.customer)"
    assert verified["n_plus_one_remaining"] is True
    assert verified["queries_after"] == verified["queries_before"]
