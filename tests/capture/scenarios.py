"""Loops over the shop's data that a code review found mis-advised, as real application
code: the live tests run them under ``dbprobe.capture()`` and
``tests/data/querylogs/capture_shop_logs.py`` saves their logs (``review-<name>.json``)
for the pure detector tests. Each statement the tests look for carries a ``# at: <name>``
marker (see :func:`line`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import (
    DeclarativeBase,
    DynamicMapped,
    Session,
    WriteOnlyMapped,
    column_property,
    defer,
    relationship,
    selectinload,
)

from fixtures.shop.models import Category, Customer, Order, OrderItem, Product, Review

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def line(marker: str) -> str:
    """``path:line`` (relative to the repository) of the line ending in ``# at: marker``."""
    lines = HERE.read_text().splitlines()
    (number,) = [i for i, text in enumerate(lines, 1) if text.rstrip().endswith(f"# at: {marker}")]
    return f"{HERE.relative_to(ROOT).as_posix()}:{number}"


# -- other mappings of the shop's tables -------------------------------------------------


class OtherBase(DeclarativeBase):
    """A second registry: the same tables mapped with other loading strategies."""


class DynamicCustomer(OtherBase):
    __table__ = Customer.__table__
    orders: DynamicMapped[DynamicOrder] = relationship(lazy="dynamic", viewonly=True)
    order_log: WriteOnlyMapped[DynamicOrder] = relationship(viewonly=True)


class DynamicOrder(OtherBase):
    __table__ = Order.__table__


class DeferredProduct(OtherBase):
    """Products whose description is deferred by the mapping (a deferred group)."""

    __table__ = Product.__table__
    description = column_property(Product.__table__.c.description, deferred=True, group="details")


# -- item 1: the batched rewrite keeps every filter ----------------------------------------


def _products(session: Session, limit: int = 10) -> list[Product]:
    return list(session.scalars(select(Product).order_by(Product.id).limit(limit)))


def good_review_counts(session: Session) -> dict[int, int]:
    out = {}
    for product in _products(session):
        stmt = (
            select(func.count())
            .select_from(Review)
            .where(Review.product_id == product.id, Review.rating >= 4)
        )
        out[product.id] = session.scalar(stmt) or 0  # at: good-review-counts
    return out


def paid_totals(session: Session) -> dict[int, Decimal | None]:
    customers = session.scalars(select(Customer).order_by(Customer.id).limit(10)).all()
    out = {}
    for customer in customers:
        stmt = select(func.sum(Order.total_amount)).where(
            Order.customer_id == customer.id, Order.status == "paid"
        )
        out[customer.id] = session.scalar(stmt)  # at: paid-totals
    return out


def latest_reviews(session: Session) -> dict[int, int | None]:
    out = {}
    for product in _products(session):
        stmt = (
            select(Review)
            .where(Review.product_id == product.id)
            .order_by(Review.created_at.desc(), Review.id.desc())
            .limit(1)
        )
        review = session.scalars(stmt).first()  # at: latest-reviews
        out[product.id] = review.id if review is not None else None
    return out


def dynamic_paid_orders(session: Session) -> dict[int, int]:
    customers = session.scalars(select(DynamicCustomer).order_by(DynamicCustomer.id).limit(8))
    out = {}
    for customer in customers.all():
        paid = customer.orders.filter(DynamicOrder.status == "paid").all()  # at: dynamic
        out[customer.id] = len(paid)
    return out


def write_only_paid_orders(session: Session) -> dict[int, int]:
    customers = session.scalars(select(DynamicCustomer).order_by(DynamicCustomer.id).limit(8))
    out = {}
    for customer in customers.all():
        stmt = customer.order_log.select().where(DynamicOrder.status == "paid")
        out[customer.id] = len(session.scalars(stmt).all())  # at: write-only
    return out


# -- item 2: session.get keeps its lock, options and populate_existing -------------------

PRODUCT_IDS = tuple(range(101, 109))
ORDER_IDS = tuple(range(1, 9))


def get_for_update(session: Session) -> list[int]:
    out = []
    for product_id in PRODUCT_IDS:
        product = session.get(Product, product_id, with_for_update=True)  # at: get-for-update
        assert product is not None
        out.append(product.stock_on_hand)
    return out


def get_with_options(session: Session) -> dict[int, int]:
    out = {}
    for order_id in ORDER_IDS:
        order = session.get(Order, order_id, options=[selectinload(Order.items)])  # at: get-opts
        assert order is not None
        out[order_id] = len(order.items)
    return out


def get_populate_existing(session: Session) -> list[int]:
    out = []
    for product_id in PRODUCT_IDS:
        product = session.get(Product, product_id, populate_existing=True)  # at: get-populate
        assert product is not None
        out.append(product.stock_on_hand)
    return out


# -- item 4: one call per request is not a loop ------------------------------------------


def order_detail_twice(session: Session, call: Callable[..., Any]) -> list[Any]:
    """``order_detail`` called twice through ``call`` (a framework-like dispatcher)."""
    from fixtures.shop.app.orders import order_detail

    first = call(order_detail, session, 1)  # at: detail-first
    second = call(order_detail, session, 2)  # at: detail-second
    return [first, second]


# -- item 7: the parent query is the one that returned the parents -----------------------


def recent_orders_with_detour(session: Session) -> list[str]:
    orders = session.scalars(select(Order).order_by(Order.id).limit(12)).all()  # at: parents
    session.get(Order, 500)  # an unrelated look-up between the query and the loop
    return [order.customer.full_name for order in orders]  # at: detour-loop


# -- item 8: a lazy load nested under another lazy load ---------------------------------


def customer_order_lines(session: Session) -> int:
    customers = session.scalars(select(Customer).order_by(Customer.id).limit(5)).all()  # at: c
    lines = 0
    for customer in customers:
        for order in customer.orders:  # at: nested-orders
            lines += len(order.items)  # at: nested-items
    return lines


def item_product_tags(session: Session) -> int:
    items = session.scalars(select(OrderItem).order_by(OrderItem.id).limit(15)).all()  # at: i
    tags = 0
    for item in items:
        tags += len(item.product.tags)  # at: nested-tags
    return tags


# -- item 9: a recursive walk of a self-referential relationship -------------------------


def category_walk(session: Session) -> list[str]:
    roots = session.scalars(select(Category).where(Category.parent_id.is_(None))).all()

    def walk(category: Category) -> list[str]:
        names = [category.name]
        for child in category.children:  # at: walk
            names.extend(walk(child))
        return names

    out: list[str] = []
    for root in roots:
        out.extend(walk(root))
    return out


# -- item 10: deferred columns and refresh loops -----------------------------------------


def deferred_descriptions(session: Session) -> int:
    stmt = select(Product).options(defer(Product.description)).order_by(Product.id).limit(10)
    products = session.scalars(stmt).all()  # at: deferred-query
    return sum(len(p.description or "") for p in products)  # at: deferred-read


def mapped_deferred_descriptions(session: Session) -> int:
    stmt = select(DeferredProduct).order_by(DeferredProduct.id).limit(10)
    products = session.scalars(stmt).all()  # at: mapped-deferred-query
    return sum(len(p.description or "") for p in products)  # at: mapped-deferred-read


def refresh_loop(session: Session) -> int:
    products = session.scalars(select(Product).order_by(Product.id).limit(6)).all()
    for product in products:
        session.refresh(product)  # at: refresh
    return len(products)


# -- item 11: paging is not an N+1 -------------------------------------------------------


def offset_pages(session: Session) -> int:
    seen = 0
    for page in range(4):
        stmt = select(Product).order_by(Product.id).limit(25).offset(page * 25)
        seen += len(session.scalars(stmt).all())  # at: offset-pages
    return seen


def keyset_pages(session: Session) -> int:
    last, seen = 0, 0
    while seen < 100:
        stmt = select(Product).where(Product.id > last).order_by(Product.id).limit(25)
        page = session.scalars(stmt).all()  # at: keyset-pages
        if not page:
            break
        last, seen = page[-1].id, seen + len(page)
    return seen


def daily_counts(session: Session) -> list[int]:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    out = []
    for day in range(4):
        lo, hi = start + dt.timedelta(days=day), start + dt.timedelta(days=day + 1)
        stmt = select(func.count()).select_from(Order).where(Order.created_at >= lo)
        stmt = stmt.where(Order.created_at < hi)
        out.append(session.scalar(stmt) or 0)  # at: daily-counts
    return out


# -- item 12: verification of a function with an aggregate query -------------------------


def order_count_and_customers(session: Session) -> tuple[int, list[str]]:
    count = session.scalar(select(func.count()).select_from(Order)) or 0
    orders = session.scalars(select(Order).order_by(Order.id).limit(6)).all()
    return count, [order.customer.full_name for order in orders]


SAVED = {
    "review-good-review-counts": good_review_counts,
    "review-paid-totals": paid_totals,
    "review-latest-reviews": latest_reviews,
    "review-dynamic-paid-orders": dynamic_paid_orders,
    "review-write-only-paid-orders": write_only_paid_orders,
    "review-get-for-update": get_for_update,
    "review-get-with-options": get_with_options,
    "review-get-populate-existing": get_populate_existing,
    "review-recent-orders-with-detour": recent_orders_with_detour,
    "review-customer-order-lines": customer_order_lines,
    "review-item-product-tags": item_product_tags,
    "review-category-walk": category_walk,
    "review-deferred-descriptions": deferred_descriptions,
    "review-mapped-deferred-descriptions": mapped_deferred_descriptions,
    "review-refresh-loop": refresh_loop,
    "review-offset-pages": offset_pages,
    "review-keyset-pages": keyset_pages,
    "review-daily-counts": daily_counts,
}
"""Flows whose captured logs are saved for the pure detector tests."""
