"""N+1 advice that is right and safe to paste, on real PostgreSQL: each loop a review
found mis-advised runs under ``dbprobe.capture()``; where dbprobe gives a snippet, the
snippet is executed and must return what the loop returned (or lock, or eager-load, what
the loop did)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Engine,
    any_,
    bindparam,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import (
    Session,
    joinedload,
    selectinload,
    undefer,
    undefer_group,
)

import dbprobe
from dbprobe.capture.log import QueryLog
from dbprobe.config import DbprobeConfig
from dbprobe.pg import PostgresServer
from dbprobe.report.model import Finding, Severity
from fixtures.shop.models import Category, Customer, Order, OrderItem, Product, Review

from . import scenarios as sc
from .conftest import ASYNC_DRIVERS


def _run(engine: Engine, flow: Callable[[Session], Any]) -> tuple[Any, QueryLog]:
    with Session(engine) as session, dbprobe.capture() as log:
        result = flow(session)
        session.rollback()
    return result, log


def _n1(log: QueryLog, config: DbprobeConfig) -> list[Finding]:
    return [f for f in log.findings(config) if f.rule == "n-plus-one"]


NAMESPACE: dict[str, Any] = {
    "select": select,
    "func": func,
    "tuple_": tuple_,
    "any_": any_,
    "bindparam": bindparam,
    "ARRAY": ARRAY,
    "BigInteger": BigInteger,
    "selectinload": selectinload,
    "joinedload": joinedload,
    "undefer": undefer,
    "undefer_group": undefer_group,
    **{m.__name__: m for m in (Category, Customer, Order, OrderItem, Product, Review)},
    **{m.__name__: m for m in (sc.DynamicOrder, sc.DeferredProduct)},
}


def _statement(fix: str, ids: Any, *values: str) -> Any:
    """The advice's snippet as a statement: each ``...`` replaced by the value the loop
    used (values are never in a report: the caller knows them)."""
    code = fix
    for value in values:
        code = code.replace("...", value, 1)
    assert "..." not in code
    return eval(code, {**NAMESPACE, "ids": list(ids)})


# -- item 1 --------------------------------------------------------------------------------


def test_count_with_a_second_filter_keeps_it(shop_engine: Engine, config: DbprobeConfig) -> None:
    counts, log = _run(shop_engine, sc.good_review_counts)
    (finding,) = _n1(log, config)
    assert finding.location == sc.line("good-review-counts")
    fix = finding.evidence["fix"]
    assert "Review.rating >= ..." in fix
    assert "a missing id counts 0" in finding.recommendation
    with Session(shop_engine) as session:
        rows = session.execute(_statement(fix, counts, "4")).all()
    batched = dict(rows)
    assert {k: batched.get(k, 0) for k in counts} == counts
    assert 0 in counts.values() or len(batched) == len(counts)


def test_sum_with_a_status_filter_keeps_it(shop_engine: Engine, config: DbprobeConfig) -> None:
    totals, log = _run(shop_engine, sc.paid_totals)
    (finding,) = _n1(log, config)
    fix = finding.evidence["fix"]
    assert "Order.status == ..." in fix
    with Session(shop_engine) as session:
        rows = session.execute(_statement(fix, totals, "'paid'")).all()
    batched = dict(rows)
    assert {k: batched.get(k) for k in totals} == totals
    assert "None" in finding.recommendation  # a customer with no paid order: no row


def test_latest_row_per_value_gets_no_in_snippet(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    latest, log = _run(shop_engine, sc.latest_reviews)
    (finding,) = _n1(log, config)
    assert finding.evidence["fix"] is None
    advice = finding.recommendation
    assert "row_number().over(partition_by=Review.product_id" in advice
    assert "DISTINCT ON" in advice.upper() or ".distinct(Review.product_id)" in advice
    assert "LATERAL" in advice
    # The advice's window function, written out, gives the loop's rows in one query.
    rank = (
        func.row_number()
        .over(partition_by=Review.product_id, order_by=[Review.created_at.desc(), Review.id.desc()])
        .label("rank")
    )
    inner = select(Review.id, Review.product_id, rank).where(Review.product_id.in_(list(latest)))
    sub = inner.subquery()
    with Session(shop_engine) as session:
        rows = session.execute(select(sub.c.product_id, sub.c.id).where(sub.c.rank <= 1)).all()
    assert dict(rows) == {p: i for p, i in latest.items() if i is not None}


@pytest.mark.parametrize(
    ("flow", "marker"),
    [(sc.dynamic_paid_orders, "dynamic"), (sc.write_only_paid_orders, "write-only")],
)
def test_dynamic_and_write_only_relationships_keep_the_filter_and_mapped_names(
    flow: Callable[[Session], dict[int, int]],
    marker: str,
    shop_engine: Engine,
    config: DbprobeConfig,
) -> None:
    counts, log = _run(shop_engine, flow)
    (finding,) = _n1(log, config)
    assert finding.location == sc.line(marker)
    fix = finding.evidence["fix"]
    assert fix == (
        "select(DynamicOrder).where(DynamicOrder.customer_id.in_(ids), DynamicOrder.status == ...)"
    )
    assert ".c." not in finding.recommendation
    with Session(shop_engine) as session:
        orders = session.scalars(_statement(fix, counts, "'paid'")).all()
    batched = {k: sum(1 for o in orders if o.customer_id == k) for k in counts}
    assert batched == counts


# -- item 2 --------------------------------------------------------------------------------


def test_get_with_for_update_keeps_the_lock_in_key_order(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    _, log = _run(shop_engine, sc.get_for_update)
    (finding,) = _n1(log, config)
    fix = finding.evidence["fix"]
    assert fix == (
        "select(Product).where(Product.id.in_(ids)).order_by(Product.id).with_for_update()"
    )
    with shop_engine.connect() as conn, Session(bind=conn) as session:
        products = session.scalars(_statement(fix, sc.PRODUCT_IDS)).all()
        assert [p.id for p in products] == list(sc.PRODUCT_IDS)
        locked = conn.execute(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE l.pid = pg_backend_pid() AND c.relname = 'products' "
                "AND l.mode = 'RowShareLock'"
            )
        ).scalar_one()
        assert locked >= 1
        session.rollback()


def test_get_with_options_keeps_them(shop_engine: Engine, config: DbprobeConfig) -> None:
    sizes, log = _run(shop_engine, sc.get_with_options)
    (finding,) = _n1(log, config)
    fix = finding.evidence["fix"]
    assert fix == "select(Order).where(Order.id.in_(ids)).options(selectinload(Order.items))"
    with Session(shop_engine) as session, dbprobe.capture() as after:
        orders = session.scalars(_statement(fix, sc.ORDER_IDS)).all()
        assert {o.id: len(o.items) for o in orders} == sizes
    assert len(after) == 2  # the orders and one IN query for their items: no new N+1


def test_get_with_populate_existing_keeps_it(shop_engine: Engine, config: DbprobeConfig) -> None:
    _, log = _run(shop_engine, sc.get_populate_existing)
    (finding,) = _n1(log, config)
    assert finding.evidence["fix"].endswith(".execution_options(populate_existing=True)")


# -- item 4 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def framework(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A web framework's dispatch as library code: 12 frames in a site-packages folder."""
    folder = tmp_path_factory.mktemp("fw") / "site-packages" / "webfw"
    folder.mkdir(parents=True)
    (folder / "dispatch.py").write_text(
        "import contextvars\n"
        "def _layer(depth, view, *args):\n"
        "    if depth == 0:\n"
        "        return view(*args)\n"
        "    return _layer(depth - 1, view, *args)\n"
        "def call(view, *args):\n"
        "    return _layer(11, view, *args)\n"
        "def call_in_worker(executor, view, *args):\n"
        "    # as anyio/Starlette run a sync endpoint: a worker thread, a copied context\n"
        "    ctx = contextvars.copy_context()\n"
        "    return executor.submit(ctx.run, call, view, *args).result()\n"
    )
    spec = importlib.util.spec_from_file_location("webfw_dispatch", folder / "dispatch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["webfw_dispatch"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("webfw_dispatch", None)


def test_two_calls_through_a_deep_framework_stack_are_not_a_loop(
    shop_engine: Engine, config: DbprobeConfig, framework: Any
) -> None:
    _, log = _run(shop_engine, lambda s: sc.order_detail_twice(s, framework.call))
    assert len(log) == 4
    assert {r.caller_location() for r in log if r.orm and r.orm.pk_get} >= {
        sc.line("detail-first"),
        sc.line("detail-second"),
    }
    assert _n1(log, config) == []


def test_two_requests_in_one_worker_thread_are_not_a_loop(
    shop_engine: Engine, config: DbprobeConfig, framework: Any
) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:

        def call(view: Any, *args: Any) -> Any:
            return framework.call_in_worker(pool, view, *args)

        with Session(shop_engine) as session, dbprobe.capture(all_threads=True) as log:
            session.execute(text("SELECT 1"))  # this context runs statements too
            sc.order_detail_twice(session, call)
            session.rollback()
    workers = [r for r in log if r.orm is not None]
    assert len(workers) == 4
    assert all(r.caller is None for r in workers)  # nothing above the view in its thread
    assert len({r.activation for r in workers}) == 2
    assert _n1(log, config) == []


def test_a_loop_inside_one_request_is_still_found(
    shop_engine: Engine, config: DbprobeConfig, framework: Any
) -> None:
    from fixtures.shop.app.orders import recent_orders_report

    with ThreadPoolExecutor(max_workers=1) as pool, Session(shop_engine) as session:
        with dbprobe.capture(all_threads=True) as log:
            framework.call_in_worker(pool, recent_orders_report, session)
            framework.call_in_worker(pool, recent_orders_report, session)
        session.rollback()
    (finding,) = _n1(log, config)
    assert finding.evidence["relationship"] == "Order.customer"
    # Each request looped: one finding for the line, counting both requests' loads.
    assert finding.evidence["activations"] == 2
    assert finding.count == sum(1 for r in log if r.orm and r.orm.lazy)


def test_gathered_tasks_are_separate_activations(
    pg: PostgresServer, shop_module_db: str, config: DbprobeConfig
) -> None:
    from fixtures.shop.app.orders import order_detail

    async def detail(engine: Any, order_id: int) -> Any:
        async with AsyncSession(engine) as session:
            return await session.run_sync(order_detail, order_id)

    async def main() -> QueryLog:
        engine = create_async_engine(ASYNC_DRIVERS["asyncpg"](pg, shop_module_db))
        try:
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
                with dbprobe.capture() as log:
                    await session.execute(text("SELECT 1"))
                    await asyncio.gather(detail(engine, 1), detail(engine, 2), detail(engine, 3))
        finally:
            await engine.dispose()
        return log

    log = asyncio.run(main())
    assert len({r.activation for r in log if r.orm is not None}) == 3
    assert _n1(log, config) == []


def test_unscoped_thread_statements_are_counted_and_warned(
    shop_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from dbprobe.capture import scope

    scope._warned_unscoped = False
    with dbprobe.capture() as log, ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_select_one, shop_engine) for _ in range(3)]
        assert [f.result() for f in futures] == [1, 1, 1]
    assert len(log) == 0
    assert log.unrecorded == 3
    assert "all_threads=True" in caplog.text


def _select_one(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT 1")).scalar_one())


# -- item 7, 8, 9 ----------------------------------------------------------------------------


def test_parents_are_the_rows_the_loop_iterates(shop_engine: Engine, config: DbprobeConfig) -> None:
    _, log = _run(shop_engine, sc.recent_orders_with_detour)
    (finding,) = _n1(log, config)
    assert finding.evidence["parents_loaded_at"] == sc.line("parents")
    assert sc.line("parents") in finding.recommendation


def _apply(engine: Engine, root_stmt: Any, fix: str, walk: Callable[[list[Any]], Any]) -> Any:
    option = eval(fix, NAMESPACE)
    with Session(engine) as session, dbprobe.capture() as log:
        result = walk(session.scalars(root_stmt.options(option)).all())
    return result, log


def test_lazy_under_lazy_gets_the_whole_chain(shop_engine: Engine, config: DbprobeConfig) -> None:
    lines, log = _run(shop_engine, sc.customer_order_lines)
    found = {f.evidence["relationship"]: f for f in _n1(log, config)}
    assert found["Customer.orders"].evidence["fix"] == "selectinload(Customer.orders)"
    items = found["Order.items"]
    assert items.evidence["fix"] == "selectinload(Customer.orders).selectinload(Order.items)"
    assert items.evidence["parents_loaded_at"] == sc.line("c")
    # Pasted on the Customer query, the option loads everything: no lazy load is left.
    stmt = select(Customer).order_by(Customer.id).limit(5)
    again, after = _apply(
        shop_engine,
        stmt,
        items.evidence["fix"],
        lambda cs: sum(len(o.items) for c in cs for o in c.orders),
    )
    assert again == lines
    assert len(after) == 3
    assert _n1(after, config) == []


def test_many_to_one_then_collection_chain(shop_engine: Engine, config: DbprobeConfig) -> None:
    tags, log = _run(shop_engine, sc.item_product_tags)
    found = {f.evidence["relationship"]: f for f in _n1(log, config)}
    fix = found["Product.tags"].evidence["fix"]
    assert fix == "joinedload(OrderItem.product).selectinload(Product.tags)"
    assert found["Product.tags"].evidence["parents_loaded_at"] == sc.line("i")
    stmt = select(OrderItem).order_by(OrderItem.id).limit(15)
    again, after = _apply(
        shop_engine, stmt, fix, lambda items: sum(len(i.product.tags) for i in items)
    )
    assert again == tags
    assert _n1(after, config) == []


def test_recursive_walk_is_one_finding_with_recursion_depth(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    names, log = _run(shop_engine, sc.category_walk)
    (finding,) = _n1(log, config)
    assert finding.location == sc.line("walk")
    assert finding.count == len(names)  # one lazy load per category
    assert finding.evidence["fix"] == "selectinload(Category.children, recursion_depth=1)"
    assert finding.evidence["levels"] == 2
    roots = select(Category).where(Category.parent_id.is_(None))

    def walk(categories: list[Category]) -> list[str]:
        out: list[str] = []
        for category in categories:
            out.append(category.name)
            out.extend(walk(list(category.children)))
        return out

    again, after = _apply(shop_engine, roots, finding.evidence["fix"], walk)
    assert sorted(again) == sorted(names)
    assert len(after) == 3  # the roots, then one IN query per level
    verified = _verified(shop_engine, sc.category_walk, config)
    assert verified["n_plus_one_remaining"] is False
    assert verified["queries_after"] == 3


def _verified(engine: Engine, flow: Callable[[Session], Any], config: DbprobeConfig) -> Any:
    @dbprobe.capture(verify_fixes=True)
    def run() -> Any:
        with Session(engine) as session:
            return flow(session)

    run()
    (finding,) = _n1(run.dbprobe_log, config)  # type: ignore[attr-defined]
    return finding.evidence["verified"]


# -- item 10 ---------------------------------------------------------------------------------


def test_column_deferred_by_an_option_gets_that_option_dropped(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    _, log = _run(shop_engine, sc.deferred_descriptions)
    (finding,) = _n1(log, config)
    assert finding.location == sc.line("deferred-read")
    assert finding.evidence["reload"] == "deferred"
    assert finding.evidence["parents_loaded_at"] == sc.line("deferred-query")
    # undefer() on a query that has defer() for the same column is an error: the advice
    # is to drop the defer() (nothing to paste).
    assert finding.evidence["fix"] is None
    assert "drop that option" in finding.recommendation
    assert "defer(Product.description)" in finding.recommendation
    assert "expire_on_commit" not in finding.recommendation


def test_column_deferred_by_the_mapping_gets_undefer_group(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    total, log = _run(shop_engine, sc.mapped_deferred_descriptions)
    (finding,) = _n1(log, config)
    assert finding.evidence["fix"] == 'undefer_group("details")'
    assert "mapping defers it" in finding.recommendation
    stmt = select(sc.DeferredProduct).order_by(sc.DeferredProduct.id).limit(10)
    again, after = _apply(
        shop_engine,
        stmt,
        finding.evidence["fix"],
        lambda ps: sum(len(p.description or "") for p in ps),
    )
    assert again == total
    assert len(after) == 1


def test_refresh_loop_gets_one_query_with_populate_existing(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    _, log = _run(shop_engine, sc.refresh_loop)
    (finding,) = _n1(log, config)
    assert finding.evidence["reload"] == "refresh"
    assert "populate_existing=True" in finding.recommendation
    assert "expire_on_commit" not in finding.recommendation


def test_expired_objects_advice_warns_about_stale_values(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    with Session(shop_engine) as session:
        tags = session.scalars(select(Product).order_by(Product.id).limit(5)).all()
        session.commit()
        with dbprobe.capture() as log:
            names = [t.name for t in tags]
    assert len(names) == 5
    (finding,) = _n1(log, config)
    assert finding.evidence["reload"] == "expired"
    assert "expire_on_commit=False" in finding.recommendation
    assert "stale" in finding.recommendation


# -- item 11 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", [sc.offset_pages, sc.keyset_pages, sc.daily_counts])
def test_paging_and_range_chunks_are_not_n_plus_one(
    flow: Callable[[Session], Any], shop_engine: Engine, config: DbprobeConfig
) -> None:
    _, log = _run(shop_engine, flow)
    assert len(log) >= 4
    assert log.findings(config) == []


# -- item 12 ---------------------------------------------------------------------------------


def test_verify_fixes_skips_aggregates_and_keeps_the_return_value(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    @dbprobe.capture(verify_fixes=True)
    def report() -> Any:
        with Session(shop_engine) as session:
            return sc.order_count_and_customers(session)

    count, names = report()
    assert count > 0
    assert len(names) == 6
    (finding,) = _n1(report.dbprobe_log, config)  # type: ignore[attr-defined]
    verified = finding.evidence["verified"]
    assert verified["queries_after"] == 2  # the count, and the orders with their customers
    assert verified["n_plus_one_remaining"] is False


def test_a_failing_rerun_is_recorded_not_raised(shop_engine: Engine, config: DbprobeConfig) -> None:
    calls = {"n": 0}

    @dbprobe.capture(verify_fixes=True)
    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("the second run fails")
        with Session(shop_engine) as session:
            from fixtures.shop.app.orders import recent_orders_report

            recent_orders_report(session)
        return "done"

    assert flaky() == "done"
    (finding,) = _n1(flaky.dbprobe_log, config)  # type: ignore[attr-defined]
    assert finding.evidence["verified"]["error"].startswith("RuntimeError")


def test_no_verification_after_a_failing_call(shop_engine: Engine) -> None:
    calls = {"n": 0}

    @dbprobe.capture(verify_fixes=True)
    def broken() -> None:
        calls["n"] += 1
        with Session(shop_engine) as session:
            from fixtures.shop.app.orders import recent_orders_report

            recent_orders_report(session)
        raise LookupError("nope")

    with pytest.raises(LookupError):
        broken()
    assert calls["n"] == 1


# -- item 15 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("driver", "count"), [("psycopg", 70_000), ("asyncpg", 40_000)])
def test_array_advice_works_beyond_the_driver_parameter_limit(
    driver: str,
    count: int,
    pg: PostgresServer,
    shop_module_db: str,
    shop_engine: Engine,
    config: DbprobeConfig,
) -> None:
    _, log = _run(shop_engine, sc.get_for_update)
    (finding,) = _n1(log, config)
    advice = finding.recommendation
    assert "65,535" in advice and "32,767" in advice and "chunks" in advice
    start = advice.index("Product.id == any_(")
    expression = advice[start : advice.index(")))", start) + 3]
    ids = list(range(1, count + 1))
    stmt = (
        select(func.count()).select_from(Product).where(eval(expression, {**NAMESPACE, "ids": ids}))
    )
    if driver == "psycopg":
        with Session(shop_engine) as session:
            found = session.scalar(stmt)
    else:

        async def main() -> int:
            engine = create_async_engine(ASYNC_DRIVERS["asyncpg"](pg, shop_module_db))
            try:
                async with AsyncSession(engine) as session:
                    return int(await session.scalar(stmt) or 0)
            finally:
                await engine.dispose()

        found = asyncio.run(main())
    with Session(shop_engine) as session:
        assert found == session.scalar(select(func.count()).select_from(Product))


def test_severity_stays_error_for_real_loops(shop_engine: Engine, config: DbprobeConfig) -> None:
    _, log = _run(shop_engine, sc.good_review_counts)
    assert [f.severity for f in _n1(log, config)] == [Severity.ERROR]
