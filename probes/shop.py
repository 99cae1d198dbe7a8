"""User flows of the shop fixture app, as probe scenarios (pool stress, demo load).

These are the well-written paths: every relationship they touch is loaded with the
query that needs it, so no flow triggers an N+1, whatever the data. Each flow takes a
``random.Random`` for its parameters, so a run is reproducible from its seed.

The async variants run the very same code through ``AsyncSession.run_sync``: one
source of truth, executed over the async driver (asyncpg) under a greenlet.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, joinedload, selectinload

from fixtures.shop.models import Category, Customer, Order, OrderItem, Payment, Product, Review

SyncFlow = Callable[[Session, random.Random], Any]
AsyncFlow = Callable[[AsyncSession, random.Random], Awaitable[Any]]


@dataclass(frozen=True)
class Scenario:
    """A named user flow. ``weight`` is its relative share of a mixed load."""

    name: str
    fn: SyncFlow
    async_fn: AsyncFlow | None = None
    weight: int = 1
    description: str = ""
    writes: bool = False
    """True when the flow commits data (the database changes as it runs)."""


def browse_catalogue(session: Session, rng: random.Random) -> dict[str, Any]:
    """Open a random leaf category, then one of its products with tags and reviews.

    Four to six statements, whatever the catalogue size. Read-only.
    """
    leaf_ids = session.scalars(
        select(Category.id).where(Category.parent_id.is_not(None)).order_by(Category.id)
    ).all()
    category_id = rng.choice(leaf_ids)
    listing = (
        select(Product)
        .where(Product.category_id == category_id, Product.active)
        .order_by(Product.name, Product.id)
        .limit(24)
        .options(selectinload(Product.tags))
    )
    products = session.scalars(listing).all()
    page: dict[str, Any] = {
        "category_id": category_id,
        "cards": [(p.sku, p.name, p.price, [t.name for t in p.tags]) for p in products],
    }
    if products:
        chosen = rng.choice(products)
        detail = (
            select(Product)
            .where(Product.id == chosen.id)
            .options(
                joinedload(Product.category),
                selectinload(Product.reviews).joinedload(Review.customer),
            )
        )
        product = session.scalars(detail).unique().one()
        page["product"] = {
            "sku": product.sku,
            "category": product.category.name,
            "reviews": [(r.rating, r.title, r.customer.full_name) for r in product.reviews],
        }
    session.rollback()
    return page


def view_order_history(session: Session, rng: random.Random) -> dict[str, Any]:
    """A random customer's ten latest orders with lines, products and payments.

    Five statements at most (customer, orders, lines with products, payments). Read-only.
    """
    max_id = session.scalar(select(func.max(Customer.id))) or 1
    customer = session.get(Customer, rng.randint(1, max_id))
    history: dict[str, Any] = {"customer": None, "orders": []}
    if customer is not None:
        orders = session.scalars(
            select(Order)
            .where(Order.customer_id == customer.id)
            .order_by(Order.created_at.desc())
            .limit(10)
            .options(
                selectinload(Order.items).joinedload(OrderItem.product),
                selectinload(Order.payments),
            )
        ).all()
        history["customer"] = customer.email
        history["orders"] = [
            {
                "number": order.number,
                "status": order.status,
                "total": order.total_amount,
                "lines": [(i.product.sku, i.quantity, i.unit_price) for i in order.items],
                "paid": sum((p.amount for p in order.payments), Decimal("0.00")),
            }
            for order in orders
        ]
    session.rollback()
    return history


def checkout(session: Session, rng: random.Random) -> int:
    """Place an order: one to four products, stock taken, a card payment; commits.

    Locks the chosen product rows (``FOR UPDATE``, in id order, so concurrent checkouts
    never deadlock). Returns the new order's id.
    """
    max_customer = session.scalar(select(func.max(Customer.id))) or 1
    max_product = session.scalar(select(func.max(Product.id))) or 1
    customer_id = rng.randint(1, max_customer)
    wanted = sorted({rng.randint(1, max_product) for _ in range(rng.randint(1, 4))})
    products = session.scalars(
        select(Product).where(Product.id.in_(wanted)).order_by(Product.id).with_for_update()
    ).all()
    order = Order(customer_id=customer_id, status="paid", currency="EUR")
    total = Decimal("0.00")
    for product in products:
        quantity = rng.randint(1, 3)
        # Sold out lines are back-ordered: stock never goes below zero.
        product.stock_on_hand = max(0, product.stock_on_hand - quantity)
        order.items.append(OrderItem(product=product, quantity=quantity, unit_price=product.price))
        total += product.price * quantity
    order.total_amount = total
    order.payments.append(
        Payment(
            method=rng.choice(("card", "card", "card", "paypal")),
            status="captured",
            amount=total,
            provider_ref=f"pay_{rng.getrandbits(96):024x}",
        )
    )
    session.add(order)
    session.flush()
    order_id = order.id  # read before commit expires the object
    session.commit()
    return order_id


def _async_variant(flow: SyncFlow) -> AsyncFlow:
    async def run(session: AsyncSession, rng: random.Random) -> Any:
        return await session.run_sync(flow, rng)

    run.__name__ = f"{flow.__name__}_async"
    run.__qualname__ = run.__name__
    run.__doc__ = f"Async variant of :func:`{flow.__name__}` (``AsyncSession.run_sync``)."
    return run


browse_catalogue_async = _async_variant(browse_catalogue)
view_order_history_async = _async_variant(view_order_history)
checkout_async = _async_variant(checkout)

SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {
        "browse_catalogue": Scenario(
            name="browse_catalogue",
            fn=browse_catalogue,
            async_fn=browse_catalogue_async,
            weight=6,
            description="category listing with tags, then a product page with its reviews",
        ),
        "view_order_history": Scenario(
            name="view_order_history",
            fn=view_order_history,
            async_fn=view_order_history_async,
            weight=3,
            description="a customer's ten latest orders with lines, products and payments",
        ),
        "checkout": Scenario(
            name="checkout",
            fn=checkout,
            async_fn=checkout_async,
            weight=1,
            description="place an order: lock products, take stock, record a payment, commit",
            writes=True,
        ),
    }
)
"""The shop's user flows by name."""


__all__ = [
    "SCENARIOS",
    "Scenario",
    "browse_catalogue",
    "browse_catalogue_async",
    "checkout",
    "checkout_async",
    "view_order_history",
    "view_order_history_async",
]
