"""IN lists and literal values as the drivers really see them (real PostgreSQL: psycopg
and asyncpg), and no literal value in a report, an assertion message or a repr."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import dbprobe
from dbprobe.capture.log import QueryLog
from dbprobe.config import DbprobeConfig
from dbprobe.pg import PostgresServer
from fixtures.shop.models import Order, OrderItem, Product

from .conftest import ASYNC_DRIVERS

LENGTHS = [2, 6, 1, 2, 2, 2, 5, 2, 4, 3]


def _items_per_order(session: Session) -> list[int]:
    orders = session.scalars(select(Order).order_by(Order.id).limit(len(LENGTHS))).all()
    found = []
    for order, length in zip(orders, LENGTHS, strict=True):
        ids = [order.id * 1000 + k for k in range(length)]
        stmt = select(OrderItem.id).where(OrderItem.order_id.in_([order.id, *ids]))
        found.append(len(session.scalars(stmt).all()))  # one IN query per order
    return found


def _check_in_lists(log: QueryLog, config: DbprobeConfig) -> None:
    in_queries = [r for r in log.statements if " IN (" in r.sql]
    assert len(in_queries) == len(LENGTHS)
    assert "::BIGINT" in in_queries[0].sql  # the dialect casts every expanded value
    assert len({r.fingerprint for r in in_queries}) == 1
    (finding,) = [f for f in log.findings(config) if f.rule == "n-plus-one"]
    assert finding.count == len(LENGTHS)


def test_in_lists_collapse_psycopg(shop_engine: Engine, config: DbprobeConfig) -> None:
    with Session(shop_engine) as session, dbprobe.capture() as log:
        _items_per_order(session)
    _check_in_lists(log, config)


@pytest.mark.parametrize("driver", sorted(ASYNC_DRIVERS))
def test_in_lists_collapse_async(
    driver: str, pg: PostgresServer, shop_module_db: str, config: DbprobeConfig
) -> None:
    async def main() -> QueryLog:
        engine = create_async_engine(ASYNC_DRIVERS[driver](pg, shop_module_db))
        try:
            async with AsyncSession(engine) as session, dbprobe.capture() as log:
                await session.run_sync(_items_per_order)
        finally:
            await engine.dispose()
        return log

    _check_in_lists(asyncio.run(main()), config)


SECRETS = ("4111111111111111", "987654321", "31337", "s3cr3t")


def test_inlined_literals_stay_out_of_findings_messages_and_reprs(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    with shop_engine.connect() as conn, dbprobe.capture() as log:
        for card in ("4111111111111111", "4111111111111112"):
            conn.execute(text(f"SELECT {card} AS n, abs(31337), E'it\\'s s3cr3t' AS t"))
        for product in (987654321, 987654322):
            conn.execute(text(f"SELECT id FROM products WHERE id IN ({product}, 1)"))
    findings = log.findings(config)
    assert {f.rule for f in findings} == {"n-plus-one"}
    dumped = json.dumps([f.to_dict() for f in findings])
    listing = log.format_statements()
    reprs = " ".join(repr(r) for r in log.statements)
    saved = json.dumps(log.to_dict())
    for secret in SECRETS:
        assert secret not in dumped
        assert secret not in listing
        assert secret not in reprs
        assert secret not in saved
    assert "987654322" in log.statements[-1].sql  # kept in memory, as executed


def test_products_in_list_from_many_lengths_one_statement_shape(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    # Same shape, several lengths, same parameters each time: one redundant statement
    # per length is not a repeat; the fingerprint (ignore keys, baselines) is one.
    with Session(shop_engine) as session, dbprobe.capture() as log:
        for length in (3, 5, 1):
            session.scalars(select(Product.id).where(Product.id.in_(range(1, length + 1)))).all()
    assert len({r.fingerprint for r in log.statements}) == 1
