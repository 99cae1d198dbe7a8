"""Capture and detection on the shop fixture app against real PostgreSQL: every planted
N+1 and redundant query is found at its marker line with the manifest's fix, and no
clean case triggers n-plus-one or redundant-query — sync, asyncpg and psycopg async."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import dbprobe
from dbprobe.capture.log import QueryLog
from dbprobe.config import DbprobeConfig, Matcher
from dbprobe.pg import PostgresServer
from dbprobe.report.model import Finding, Severity
from fixtures.shop.manifest import CleanCase, Problem, load_manifest

from .conftest import ASYNC_DRIVERS, ROOT

MANIFEST = load_manifest()
CAPTURE_RULES = ("n-plus-one", "redundant-query")
SYNC_PROBLEMS = [
    p for p in MANIFEST.problems if p.rule in CAPTURE_RULES and not p.is_async and p.kind == "code"
]
ASYNC_PROBLEMS = [p for p in MANIFEST.problems if p.rule in CAPTURE_RULES and p.is_async]
SYNC_CLEAN = [c for c in MANIFEST.clean if c.argument == "session" and not c.is_async]
ASYNC_CLEAN = [c for c in MANIFEST.clean if c.argument == "async_session"]
NO_SQL_AT_MARKER = {"identity-map-get"}


def _run_sync(entry: Problem | CleanCase, engine: Engine) -> QueryLog:
    with Session(engine) as session:
        with dbprobe.capture() as log:
            entry.call(session)
        session.rollback()
    return log


async def _run_async_flow(entry: Problem | CleanCase, url: str) -> QueryLog:
    engine = create_async_engine(url)
    try:
        async with AsyncSession(engine) as session, dbprobe.capture() as log:
            await entry.call(session)
    finally:
        await engine.dispose()
    return log


def _check_problem(problem: Problem, log: QueryLog, config: DbprobeConfig) -> Finding:
    found = [f for f in log.findings(config) if f.rule == problem.rule]
    expected_location = problem.resolve_location()
    at_marker = [f for f in found if f.location == expected_location]
    assert at_marker, (
        f"{problem.id}: no {problem.rule} at {expected_location}; got "
        f"{[(f.rule, f.location) for f in found]}\n{log.format_statements()}"
    )
    finding = at_marker[0]
    assert finding.count is not None
    assert problem.min_count is not None
    assert finding.count >= problem.min_count
    if problem.rule == "n-plus-one":
        assert finding.evidence["fix"] == problem.expected_fix
        assert problem.expected_fix in finding.recommendation
        assert finding.severity is Severity.ERROR
        if problem.relationship:
            assert finding.evidence["relationship"] == problem.relationship
            assert problem.relationship in finding.message
            # The parents were loaded by a statement of the same flow, before the loop.
            parents = finding.evidence["parents_loaded_at"]
            assert parents.startswith(expected_location.rpartition(":")[0] + ":")
            assert int(parents.rpartition(":")[2]) < problem.line
    assert finding.table == problem.table
    return finding


@pytest.mark.parametrize("problem", SYNC_PROBLEMS, ids=lambda p: p.id)
def test_planted_problem_found_sync(
    problem: Problem, shop_engine: Engine, config: DbprobeConfig
) -> None:
    _check_problem(problem, _run_sync(problem, shop_engine), config)


@pytest.mark.parametrize("driver", sorted(ASYNC_DRIVERS))
@pytest.mark.parametrize("problem", ASYNC_PROBLEMS, ids=lambda p: p.id)
def test_planted_problem_found_async(
    problem: Problem, driver: str, pg: PostgresServer, shop_module_db: str, config: DbprobeConfig
) -> None:
    url = ASYNC_DRIVERS[driver](pg, shop_module_db)
    log = asyncio.run(_run_async_flow(problem, url))
    finding = _check_problem(problem, log, config)
    assert finding.evidence["function"] == problem.load().__name__


@pytest.mark.parametrize("case", SYNC_CLEAN, ids=lambda c: c.id)
def test_clean_case_has_no_finding_sync(
    case: CleanCase, shop_engine: Engine, config: DbprobeConfig
) -> None:
    log = _run_sync(case, shop_engine)
    assert len(log) >= 1
    if case.max_queries is not None:
        assert len(log) <= case.max_queries
    # Clean twins load what they read: no eager-loading advice either.
    extra = ("unused-eager-load", "joinedload-row-explosion")
    bad = [f for f in log.findings(config) if f.rule in (*case.must_not_trigger, *extra)]
    assert bad == [], f"{case.id}: {[(f.rule, f.location, f.message) for f in bad]}"
    # The statement the marker points at was captured at that line (the identity-map
    # case marks the Session.get that must emit no SQL at all).
    locations = {r.location(str(ROOT)) for r in log.statements}
    if case.id in NO_SQL_AT_MARKER:
        assert case.resolve_location() not in locations
    else:
        assert case.resolve_location() in locations


@pytest.mark.parametrize("driver", sorted(ASYNC_DRIVERS))
@pytest.mark.parametrize("case", ASYNC_CLEAN, ids=lambda c: c.id)
def test_clean_case_has_no_finding_async(
    case: CleanCase, driver: str, pg: PostgresServer, shop_module_db: str, config: DbprobeConfig
) -> None:
    log = asyncio.run(_run_async_flow(case, ASYNC_DRIVERS[driver](pg, shop_module_db)))
    bad = [f for f in log.findings(config) if f.rule in case.must_not_trigger]
    assert bad == []
    assert case.resolve_location() in {r.location(str(ROOT)) for r in log.statements}


def test_record_fields_and_orm_context(shop_engine: Engine) -> None:
    problem = MANIFEST.problem("n1-order-customer")
    log = _run_sync(problem, shop_engine)
    first, lazy = log.statements[0], log.statements[1]
    assert first.kind == "select"
    assert first.orm is not None
    assert first.orm.entity == "Order"
    assert first.orm.relationship is None
    assert lazy.orm is not None
    assert (lazy.orm.relationship, lazy.orm.parent, lazy.orm.lazy) == (
        "Order.customer",
        "Order",
        True,
    )
    assert lazy.orm.pk_get and not lazy.orm.collection
    assert lazy.duration_ns > 0
    assert lazy.rowcount == 1
    assert lazy.connection == first.connection != 0
    assert lazy.dialect == "postgresql"
    assert isinstance(lazy.parameters, dict)
    assert lazy.call_site is not None
    assert lazy.call_site[2] == "recent_orders_report"
    assert lazy.location(str(ROOT)) == problem.resolve_location()
    assert lazy.fingerprint == log.statements[2].fingerprint != first.fingerprint


def test_nested_eager_path_context(shop_engine: Engine) -> None:
    log = _run_sync(MANIFEST.problem("n1-order-items-product"), shop_engine)
    selectin = [r for r in log if r.orm and r.orm.relationship == "Order.items"]
    assert len(selectin) == 1
    assert not selectin[0].orm.lazy  # type: ignore[union-attr]
    nested = [r for r in log if r.orm and r.orm.relationship == "OrderItem.product"]
    assert nested
    assert nested[0].orm.path == ("Order.items", "OrderItem.product")  # type: ignore[union-attr]
    assert log.statements[0].orm.eager == ((("Order.items",), "selectin"),)  # type: ignore[union-attr]


def test_capture_filters_by_engine_and_session(
    pg: PostgresServer, shop_engine: Engine, shop_module_db: str
) -> None:
    from sqlalchemy import create_engine

    other = create_engine(pg.url(shop_module_db))
    try:
        with (
            Session(shop_engine) as session,
            dbprobe.capture(session) as by_session,
            dbprobe.capture(other) as by_other,
        ):
            session.execute(text("SELECT 1"))
            with other.connect() as conn:
                conn.execute(text("SELECT 2"))
                conn.execute(text("SELECT 3"))
        assert [r.sql for r in by_session] == ["SELECT 1"]
        assert [r.sql for r in by_other] == ["SELECT 2", "SELECT 3"]
    finally:
        other.dispose()
    with pytest.raises(TypeError, match="takes an Engine"):
        dbprobe.capture(42)


def test_nested_scopes_and_ignore(shop_engine: Engine, config: DbprobeConfig) -> None:
    problem = MANIFEST.problem("n1-get-loop")
    with Session(shop_engine) as session, dbprobe.capture() as outer:
        session.execute(text("SELECT 1"))
        with dbprobe.capture() as inner:
            problem.call(session)
        session.expunge_all()
        with dbprobe.ignore():
            problem.call(session)
        session.expunge_all()
        with dbprobe.ignore("redundant-query"):
            problem.call(session)
    assert len(inner) == 20
    assert len(outer) == 1 + 20 + 20 + 20
    assert [f.rule for f in inner.findings(config)] == ["n-plus-one"]
    # The outer scope sees three loops from the same line; the one inside ignore() is
    # excluded from every rule, the one inside ignore("redundant-query") still counts
    # for n-plus-one. Repeats that belong to a reported N+1 are not reported again as
    # redundant-query.
    n1 = [f for f in outer.findings(config) if f.rule == "n-plus-one"]
    assert len(n1) == 1
    assert n1[0].count == 40
    assert all(r.is_ignored("n-plus-one") for r in outer.statements[21:41])
    assert [f for f in outer.findings(config) if f.rule == "redundant-query"] == []
    assert all(r.is_ignored("redundant-query") for r in outer.statements[41:])
    assert not any(r.is_ignored("redundant-query") for r in outer.statements[:21])
    with Session(shop_engine) as session, dbprobe.capture() as plain:
        for _ in range(3):
            problem.call(session)
            session.expunge_all()
    assert [(f.rule, f.count) for f in plain.findings(config)] == [("n-plus-one", 60)]


def test_concurrent_tasks_get_their_own_scopes(pg: PostgresServer, shop_module_db: str) -> None:
    problem = MANIFEST.problem("n1-async-get-loop")

    async def one(ids: tuple[int, ...]) -> QueryLog:
        engine = create_async_engine(pg.async_url(shop_module_db))
        try:
            async with AsyncSession(engine) as session, dbprobe.capture() as log:
                await problem.call(session, ids)
        finally:
            await engine.dispose()
        return log

    async def main() -> list[QueryLog]:
        return await asyncio.gather(one(tuple(range(1, 6))), one(tuple(range(50, 53))))

    logs = asyncio.run(main())
    assert [len(log) for log in logs] == [5, 3]
    assert {r.parameters[0] for r in logs[1]} == {50, 51, 52}


def test_threads_get_their_own_scopes_and_all_threads_sees_everything(
    shop_engine: Engine,
) -> None:
    results: dict[str, int] = {}

    def worker(name: str, count: int) -> None:
        with dbprobe.capture() as log, shop_engine.connect() as conn:
            for i in range(count):
                conn.execute(text("SELECT :x"), {"x": i})
        results[name] = len(log)

    with dbprobe.capture(all_threads=True) as everything, dbprobe.capture() as mine:
        threads = [threading.Thread(target=worker, args=(f"t{n}", n + 1)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {"t0": 1, "t1": 2, "t2": 3}
    assert len(mine) == 0
    assert len(everything) == 6


def test_config_ignore_and_allow(shop_engine: Engine) -> None:
    log = _run_sync(MANIFEST.problem("n1-order-customer"), shop_engine)
    base = DbprobeConfig(root=str(ROOT))
    assert [f.rule for f in log.findings(base)] == ["n-plus-one"]
    by_relationship = base.replace(ignore=(Matcher(relationship="Order.*"),))
    assert log.findings(by_relationship) == []
    by_location = base.replace(ignore=(Matcher(location="fixtures/shop/app/orders.py"),))
    assert log.findings(by_location) == []
    by_sql = base.replace(ignore=(Matcher(fingerprint="select customers.*"),))
    assert log.findings(by_sql) == []
    other_rule = base.replace(ignore=(Matcher(rule="redundant-query", location="*"),))
    assert len(log.findings(other_rule)) == 1
    allowed = base.replace(allow=(Matcher(relationship="Order.customer", reason="legacy"),))
    (finding,) = log.findings(allowed)
    assert finding.severity is Severity.INFO
    assert finding.evidence["allowed"] == "legacy"
    threshold = base.replace(n_plus_one_threshold=26)
    assert log.findings(threshold) == []


def test_redundant_needs_same_parameters_and_no_write_between(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    with shop_engine.connect() as conn, dbprobe.capture() as log:
        conn.execute(text("SELECT name FROM tags WHERE id = :id"), {"id": 1})
        conn.execute(text("UPDATE tags SET name = name WHERE id = :id"), {"id": 1})
        conn.execute(text("SELECT name FROM tags WHERE id = :id"), {"id": 1})
        conn.commit()
        conn.execute(text("SELECT name FROM tags WHERE id = :id"), {"id": 1})
    assert log.findings(config) == []
    with shop_engine.connect() as conn, dbprobe.capture() as log2:
        for _ in range(3):
            conn.execute(text("SELECT name FROM tags WHERE id = :id"), {"id": 2})
    (finding,) = log2.findings(config)
    assert finding.rule == "redundant-query"
    assert finding.count == 3
    assert finding.table == "tags"


def test_refresh_after_commit_loop_is_an_n_plus_one(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    from fixtures.shop.models import Tag

    with Session(shop_engine) as session:
        tags = session.scalars(select(Tag).order_by(Tag.id).limit(5)).all()
        session.commit()  # expires every loaded Tag
        with dbprobe.capture() as log:
            names = [tag.name for tag in tags]
    assert len(names) == 5
    (finding,) = log.findings(config)
    assert finding.evidence["lookup"] == "refresh"
    assert "expire_on_commit=False" in finding.recommendation


def test_decorator_records_last_log_and_verifies_fix(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    problem = MANIFEST.problem("n1-order-customer")

    @dbprobe.capture(verify_fixes=True)
    def report() -> Any:
        with Session(shop_engine) as session:
            return problem.call(session)

    rows = report()
    assert len(rows) == 25
    log = report.dbprobe_log  # type: ignore[attr-defined]
    assert len(log) == 26
    (finding,) = log.findings(config)
    verified = finding.evidence["verified"]
    assert verified == {
        "fix": "joinedload(Order.customer)",
        "queries_before": 26,
        "queries_after": 1,
        "n_plus_one_remaining": False,
    }


def test_async_decorator_verifies_nested_fix(
    pg: PostgresServer, shop_module_db: str, config: DbprobeConfig
) -> None:
    problem = MANIFEST.problem("n1-order-items-product")
    engine_url = pg.url(shop_module_db).replace("+psycopg://", "+psycopg_async://")

    @dbprobe.capture(verify_fixes=True)
    async def lines() -> Any:
        engine = create_async_engine(engine_url)
        try:
            async with AsyncSession(engine) as session:
                return await session.run_sync(problem.load())
        finally:
            await engine.dispose()

    asyncio.run(lines())
    log = lines.dbprobe_log  # type: ignore[attr-defined]
    (finding,) = [f for f in log.findings(config) if f.rule == "n-plus-one"]
    verified = finding.evidence["verified"]
    assert verified["fix"] == "selectinload(Order.items).joinedload(OrderItem.product)"
    assert verified["queries_after"] == 2 < verified["queries_before"]
    assert verified["n_plus_one_remaining"] is False


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_explain_cost_attached(
    driver: str, pg: PostgresServer, shop_module_db: str, shop_engine: Engine
) -> None:
    from dbprobe.capture.analyzers import CaptureContext, analyze

    problem = MANIFEST.problem("n1-order-customer")
    if driver == "psycopg":
        log = _run_sync(problem, shop_engine)
    else:
        log = asyncio.run(
            _run_async_flow(
                MANIFEST.problem("n1-async-order-customer"), pg.async_url(shop_module_db)
            )
        )
    ctx = CaptureContext(config=DbprobeConfig(root=str(ROOT)), root=str(ROOT), explain=True)
    with dbprobe.capture() as own:
        (finding,) = analyze(log, ctx)
    explain = finding.evidence["explain"]
    assert explain["relation"] == "customers", explain
    assert explain["total_cost"] > 0
    assert explain["count_x_cost"] == pytest.approx(explain["total_cost"] * finding.count, rel=1e-3)
    assert explain["node"] in ("Index Scan", "Seq Scan", "Index Only Scan", "Bitmap Heap Scan")
    assert len(own) == 0  # dbprobe's own EXPLAIN is never captured


def test_saved_log_round_trip_gives_same_findings(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    log = _run_sync(MANIFEST.problem("n1-review-count-scalar"), shop_engine)
    saved = log.to_dict(with_parameters=True)
    loaded = QueryLog.from_dict(saved)
    assert [f.to_dict() for f in loaded.findings(config)] == [
        f.to_dict() for f in log.findings(config)
    ]
    redacted = log.to_dict()
    assert all("parameters" not in r for r in redacted["statements"])


@pytest.fixture
def restore_call_sites() -> Iterator[None]:
    from dbprobe.capture import scope

    saved = scope._resolver
    yield
    scope._resolver = saved


def test_app_paths_make_library_code_application_code(
    shop_engine: Engine, tmp_path: Any, restore_call_sites: None
) -> None:
    import importlib.util
    import sys

    # A module that lives in a "site-packages" folder is library code unless configured.
    lib = tmp_path / "site-packages" / "vendored_app"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "queries.py").write_text(
        "from sqlalchemy import text\n"
        "def run(conn):\n"
        "    return conn.execute(text('SELECT 42')).scalar()\n"
    )
    spec = importlib.util.spec_from_file_location("vendored_app_queries", lib / "queries.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vendored_app_queries"] = module
    spec.loader.exec_module(module)
    with shop_engine.connect() as conn:
        with dbprobe.capture() as before:
            module.run(conn)
        with dbprobe.capture(app_paths=[str(lib)]) as after:
            module.run(conn)
    assert before.statements[0].call_site is not None
    assert before.statements[0].call_site[0] == __file__
    assert after.statements[0].call_site is not None
    assert after.statements[0].call_site[0] == str(lib / "queries.py")
    assert after.statements[0].call_site[1] == 3


def test_analyzer_and_enricher_hooks(shop_engine: Engine) -> None:
    from dbprobe.capture import analyzers
    from dbprobe.rules import RULES

    log = _run_sync(MANIFEST.problem("n1-order-customer"), shop_engine)
    ctx = analyzers.CaptureContext(config=DbprobeConfig(root=str(ROOT)), test="t::x")

    def count_statements(query_log: QueryLog, c: analyzers.CaptureContext) -> list[Finding]:
        return [
            RULES["unused-index"].finding(f"{len(query_log)} statements", "none", location="x:1")
        ]

    def tag(findings: list[Finding], query_log: QueryLog, c: analyzers.CaptureContext) -> list:
        return [f.with_test("tagged::" + (f.test or "")) for f in findings]

    analyzers.register_analyzer(count_statements)
    analyzers.replace_enricher(analyzers.explain_cost_enricher, tag)
    try:
        found = analyzers.analyze(log, ctx)
    finally:
        analyzers.ANALYZERS.remove(count_statements)
        analyzers.replace_enricher(tag, analyzers.explain_cost_enricher)
    assert sorted(f.rule for f in found) == ["n-plus-one", "unused-index"]
    assert {f.test for f in found} == {"tagged::t::x"}
    assert [analyzers.explain_cost_enricher] == analyzers.ENRICHERS


def test_capture_targets_async_engine_and_session(pg: PostgresServer, shop_module_db: str) -> None:
    async def main() -> tuple[int, int, int]:
        first = create_async_engine(pg.async_url(shop_module_db))
        second = create_async_engine(ASYNC_DRIVERS["psycopg_async"](pg, shop_module_db))
        try:
            async with AsyncSession(first) as session:
                with (
                    dbprobe.capture(first) as by_engine,
                    dbprobe.capture(session) as by_session,
                    dbprobe.capture(second) as other,
                ):
                    await session.execute(text("SELECT 1"))
                    async with second.connect() as conn:
                        await conn.execute(text("SELECT 2"))
                        await conn.execute(text("SELECT 3"))
            return len(by_engine), len(by_session), len(other)
        finally:
            await first.dispose()
            await second.dispose()

    assert asyncio.run(main()) == (1, 1, 2)


def test_inlined_literals_and_other_databases_are_not_repeats(
    pg: PostgresServer, shop_template: str, shop_engine: Engine, config: DbprobeConfig
) -> None:
    from sqlalchemy import create_engine

    with shop_engine.connect() as conn, dbprobe.capture() as literal_log:
        for table in ("orders", "customers"):
            conn.exec_driver_sql(f"SELECT pg_get_serial_sequence('{table}', 'id')").scalar_one()
    # One shape, two texts: not a repeat of the same statement (no redundant-query), but
    # the same shape from one line with different values: an N+1 of literal SQL.
    assert [f.rule for f in literal_log.findings(config)] == ["n-plus-one"]

    other = create_engine(pg.url(pg.clone(shop_template)))
    try:
        count = text("SELECT count(*) FROM tags")
        # Two connections open at once, no transaction end between the two reads.
        with shop_engine.connect() as a, other.connect() as b, dbprobe.capture() as two_dbs:
            a.execute(count).scalar_one()
            b.execute(count).scalar_one()
        assert two_dbs.findings(config) == []
        with shop_engine.connect() as a, shop_engine.connect() as b, dbprobe.capture() as one_db:
            a.execute(count).scalar_one()
            b.execute(count).scalar_one()
        assert [f.rule for f in one_db.findings(config)] == ["redundant-query"]
    finally:
        other.dispose()
        pg.drop_database(other.url.database)
