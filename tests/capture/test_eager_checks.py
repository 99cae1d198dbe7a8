"""unused-eager-load and joinedload-row-explosion on the shop (real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, joinedload, selectinload
from sqlalchemy.orm.attributes import InstrumentedAttribute

import dbprobe
from dbprobe.config import DbprobeConfig
from dbprobe.report.model import Severity
from fixtures.shop.models import Order, OrderItem, Product

from .conftest import ROOT

HERE = Path(__file__).resolve().relative_to(ROOT).as_posix()


def _line(marker: str) -> str:
    lines = Path(__file__).read_text().splitlines()
    (number,) = [i for i, text in enumerate(lines, 1) if text.rstrip().endswith(marker)]
    return f"{HERE}:{number}"


def test_unused_eager_load_reported_and_read_one_not(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    stmt = select(Order).order_by(Order.id).limit(5)
    # Reads are counted per relationship over the scope: one scope per case.
    with Session(shop_engine) as session, dbprobe.capture() as log:
        unused = session.scalars(stmt.options(selectinload(Order.items))).all()  # m: unused
        assert len(unused) == 5
    with Session(shop_engine) as session, dbprobe.capture() as log2:
        nested = stmt.options(selectinload(Order.items).joinedload(OrderItem.product))
        orders = session.scalars(nested).all()  # m: nested
        quantities = [item.quantity for order in orders for item in order.items]
    assert quantities
    found = {(f.location, f.evidence["relationship"]) for f in log2.findings(config)}
    assert found == {(_line("# m: nested"), "OrderItem.product")}
    (finding,) = log.findings(config)
    assert finding.location == _line("# m: unused")
    assert finding.rule == "unused-eager-load"
    assert finding.severity is Severity.INFO
    assert finding.evidence["option"] == "selectinload(Order.items)"
    # The tracking descriptors are gone once the capture is over.
    assert isinstance(Order.__dict__["items"], InstrumentedAttribute)
    assert isinstance(OrderItem.__dict__["product"], InstrumentedAttribute)


def test_eager_loads_that_are_read_are_fine(shop_engine: Engine, config: DbprobeConfig) -> None:
    with Session(shop_engine) as session, dbprobe.capture() as log:
        stmt = select(Order).options(joinedload(Order.customer)).limit(5)
        names = [order.customer.full_name for order in session.scalars(stmt)]
    assert len(names) == 5
    assert log.findings(config) == []
    assert log.eager_touches == {"Order.customer": 5}


def test_joinedload_row_explosion(shop_engine: Engine, config: DbprobeConfig) -> None:
    products = select(Product).where(Product.id <= 20).order_by(Product.id)
    with Session(shop_engine) as session, dbprobe.capture() as joined:
        stmt = products.options(joinedload(Product.stock_movements))
        loaded = session.scalars(stmt).unique()  # m: joined
        movements = sum(len(p.stock_movements) for p in loaded.all())
    (finding,) = [f for f in joined.findings(config) if f.rule == "joinedload-row-explosion"]
    assert finding.location == _line("# m: joined")
    assert finding.evidence["parents"] == 20
    assert finding.evidence["rows"] == movements
    assert finding.evidence["rows_per_parent"] >= config.joinedload_row_ratio
    assert "selectinload(Product.stock_movements)" in finding.recommendation
    with Session(shop_engine) as session, dbprobe.capture() as selectin:
        loaded = session.scalars(products.options(selectinload(Product.stock_movements)))
        assert sum(len(p.stock_movements) for p in loaded.all()) == movements
    assert selectin.findings(config) == []
    lenient = config.replace(joinedload_row_ratio=10_000.0)
    assert [f for f in joined.findings(lenient) if f.rule == "joinedload-row-explosion"] == []


def test_row_explosion_keeps_joinedload_for_a_many_to_one(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    stmt = (
        select(Product)
        .where(Product.id <= 20)
        .options(joinedload(Product.supplier), joinedload(Product.stock_movements))
    )
    with Session(shop_engine) as session, dbprobe.capture() as log:
        loaded = session.scalars(stmt).unique().all()
        assert sum(len(p.stock_movements) for p in loaded) > 0
        assert {p.supplier.id for p in loaded}
    (finding,) = [f for f in log.findings(config) if f.rule == "joinedload-row-explosion"]
    advice = finding.recommendation
    assert "joinedload(Product.stock_movements) -> selectinload(Product.stock_movements)" in advice
    assert "selectinload(Product.supplier)" not in advice
    assert "keep joinedload(Product.supplier)" in advice


def test_unused_step_of_a_chain_is_named_as_written(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    stmt = (
        select(Order)
        .order_by(Order.id)
        .limit(5)
        .options(selectinload(Order.items).joinedload(OrderItem.product))
    )
    with Session(shop_engine) as session, dbprobe.capture() as log:
        orders = session.scalars(stmt).all()
        assert [item.quantity for order in orders for item in order.items]
    (finding,) = [f for f in log.findings(config) if f.rule == "unused-eager-load"]
    advice = finding.recommendation
    assert finding.evidence["relationship"] == "OrderItem.product"
    assert "remove the .joinedload(OrderItem.product) step" in advice
    assert "selectinload(Order.items).joinedload(OrderItem.product)" in advice
    assert "keeping selectinload(Order.items)" in advice
    assert "joinedload(Order.items)" not in advice  # the option as written, not re-spelled


def test_unused_immediateload_does_not_claim_a_join(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    from sqlalchemy.orm import immediateload

    stmt = select(Order).order_by(Order.id).limit(3).options(immediateload(Order.items))
    with Session(shop_engine) as session, dbprobe.capture() as log:
        assert len(session.scalars(stmt).all()) == 3
    (finding,) = [f for f in log.findings(config) if f.rule == "unused-eager-load"]
    assert "immediateload(Order.items)" in finding.recommendation
    assert "join" not in finding.recommendation
    assert "one extra query per object" in finding.recommendation
