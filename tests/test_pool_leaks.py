"""``track_leaks``: checkouts not returned by the end of a scope, found where they were made
(the shop fixture's planted leaks, and one per pool kind), never their clean twins."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg_pool
import pytest
from pool_helpers import checked
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from dbprobe.pg import PostgresServer
from dbprobe.pool import track_leaks
from dbprobe.report.model import Report, Target


@pytest.fixture
def shop_engine(pg: PostgresServer, shop_db: str) -> Iterator[Engine]:
    engine = create_engine(pg.url(shop_db), pool_size=5, max_overflow=0)
    try:
        yield engine
    finally:
        from fixtures.shop.app.leaks import release_leaks

        release_leaks()
        engine.dispose()


def _line_of(fn: object, needle: str) -> int:
    lines, start = inspect.getsourcelines(fn)  # type: ignore[arg-type]
    return start + next(i for i, line in enumerate(lines) if needle in line)


def test_the_shop_fixture_planted_leaks_are_found_and_their_twins_are_not(
    shop_engine: Engine,
) -> None:
    from fixtures.shop import workload
    from fixtures.shop.manifest import load_manifest

    manifest = load_manifest()
    with track_leaks(shop_engine) as scope:
        ran = workload.run_leaks(shop_engine)
    planted = manifest.problems_for("connection-leak")
    assert {p.id for p in planted} <= set(ran)
    findings = scope.findings()
    locations = {f.location for f in findings}
    assert locations == {p.resolve_location() for p in planted}
    twins = [manifest.twin(p.id) for p in planted]
    assert all(t is not None and t.id in ran for t in twins)
    assert not locations & {t.resolve_location() for t in twins if t is not None}
    assert scope.checkouts == 4
    assert scope.returned == 2
    by_location = {f.location: f for f in findings}
    idle_tx = by_location[manifest.problem("leak-idle-in-transaction").resolve_location()]
    assert "idle in transaction" in idle_tx.message
    assert idle_tx.evidence["server_state"] == "idle in transaction"
    assert idle_tx.evidence["xact_age_s"] >= 0
    unreturned = by_location[manifest.problem("leak-unreturned-connection").resolve_location()]
    assert unreturned.evidence["server_state"] == "idle"
    assert "engine.connect()" in unreturned.evidence["code"]
    assert any("count_open_orders_leaky" in frame for frame in unreturned.evidence["stack"])
    assert all(f.rule == "connection-leak" and f.severity.value == "error" for f in findings)
    report = Report(command="pool", target=Target("postgresql://app@127.0.0.1/shop"))
    report.extend(findings)
    checked(report)


def test_clean_code_leaves_no_leak(shop_engine: Engine) -> None:
    from fixtures.shop.app.leaks import count_open_orders, quote_price

    with track_leaks(shop_engine) as scope:
        count_open_orders(shop_engine)
        quote_price(shop_engine)
    assert scope.checkouts == 2
    assert scope.returned == 2
    assert scope.leaks == []
    assert scope.findings() == []


def test_sqlalchemy_async_leak_is_traced_through_the_greenlet(pg: PostgresServer) -> None:
    async def scenario() -> list[str | None]:
        engine = create_async_engine(pg.async_url(), pool_size=2, max_overflow=0)
        try:
            with track_leaks(engine) as scope:
                leaked = await engine.connect()  # the leak
                await leaked.execute(text("SELECT 1"))
                async with engine.connect() as fine:
                    await fine.execute(text("SELECT 1"))
            await leaked.close()
            return [lk.location for lk in scope.leaks] + [lk.server_state for lk in scope.leaks]
        finally:
            await engine.dispose()

    locations = asyncio.run(scenario())
    line = _line_of(test_sqlalchemy_async_leak_is_traced_through_the_greenlet, "# the leak")
    assert locations == [f"tests/test_pool_leaks.py:{line}", "idle in transaction"]


def test_psycopg_pool_leaks(pg: PostgresServer) -> None:
    pool = psycopg_pool.ConnectionPool(pg.dsn(), min_size=1, max_size=2, open=True)
    try:
        with track_leaks(pool) as scope:
            leaked = pool.getconn()  # the leak
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        assert [lk.location for lk in scope.leaks] == [
            f"tests/test_pool_leaks.py:{_line_of(test_psycopg_pool_leaks, '# the leak')}"
        ]
        assert scope.leaks[0].server_state == "idle"
        pool.putconn(leaked)
        assert "getconn" not in vars(pool)  # hooks removed
        with track_leaks(pool) as again, pool.connection() as conn:
            conn.execute("SELECT 1")
        assert again.leaks == []
    finally:
        pool.close()


def test_psycopg_async_pool_leak_in_transaction(pg: PostgresServer) -> None:
    async def scenario() -> tuple[list[str | None], list[bool]]:
        pool = psycopg_pool.AsyncConnectionPool(pg.dsn(), min_size=1, max_size=2, open=False)
        await pool.open()
        try:
            with track_leaks(pool) as scope:
                leaked = await pool.getconn()  # the leak
                await leaked.execute("SELECT 1")  # opens a transaction
            await leaked.rollback()
            await pool.putconn(leaked)
            return [lk.location for lk in scope.leaks], [
                lk.idle_in_transaction for lk in scope.leaks
            ]
        finally:
            await pool.close()

    locations, idle_tx = asyncio.run(scenario())
    line = _line_of(test_psycopg_async_pool_leak_in_transaction, "# the leak")
    assert locations == [f"tests/test_pool_leaks.py:{line}"]
    assert idle_tx == [True]


def test_asyncpg_pool_leak_with_an_acquire_timeout(pg: PostgresServer) -> None:
    async def scenario() -> list[str | None]:
        pool = await asyncpg.create_pool(**pg.target().asyncpg_kwargs(), min_size=1, max_size=3)
        try:
            with track_leaks(pool) as scope:
                leaked = await pool.acquire(timeout=2)  # the leak
                async with pool.acquire() as conn:
                    await conn.fetch("SELECT 1")
            await pool.release(leaked)
            return [lk.location for lk in scope.leaks]
        finally:
            await pool.close()

    locations = asyncio.run(scenario())
    line = _line_of(test_asyncpg_pool_leak_with_an_acquire_timeout, "# the leak")
    assert locations == [f"tests/test_pool_leaks.py:{line}"]
    # the class-level hooks are gone once no scope is open
    assert asyncpg.pool.Pool._acquire.__module__ == "asyncpg.pool"


def test_track_leaks_rejects_what_it_cannot_track() -> None:
    with pytest.raises(TypeError, match="track_leaks needs"), track_leaks(object()):
        pass


def test_detached_sqlalchemy_connection_is_not_a_leak(pg: PostgresServer) -> None:
    # Connection.detach() takes the connection out of the pool for good (its owner
    # closes it): it is never checked in, and was reported as a leak.
    engine = create_engine(pg.url(), pool_size=2, max_overflow=0)
    try:
        with track_leaks(engine) as scope:
            conn = engine.connect()
            conn.detach()
            conn.execute(text("SELECT 1"))
            conn.close()
            leaked = engine.connect()  # the leak
        assert scope.detached == 1
        assert [lk.location for lk in scope.leaks] == [
            f"tests/test_pool_leaks.py:{_line_of(test_detached_sqlalchemy_connection_is_not_a_leak, '# the leak')}"  # noqa: E501
        ]
        leaked.close()
    finally:
        engine.dispose()


def test_leak_location_is_relative_from_any_directory(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run from outside the project: the location, the fingerprint and the stack are
    # relative to the file's project root (not /abs/path/...), and the stack holds the
    # application's frames only (no pytest, pluggy or SQLAlchemy internals).
    monkeypatch.chdir(tmp_path)
    engine = create_engine(pg.url(), pool_size=2, max_overflow=0)
    try:
        with track_leaks(engine) as scope:
            leaked = engine.connect()  # the leak
        (finding,) = scope.findings()
        line = _line_of(test_leak_location_is_relative_from_any_directory, "# the leak")
        assert finding.location == f"tests/test_pool_leaks.py:{line}"
        assert finding.fingerprint == f"connection-leak:tests/test_pool_leaks.py:{line}"
        stack = finding.evidence["stack"]
        assert stack and all(frame.startswith("tests/") for frame in stack)
        leaked.close()
    finally:
        engine.dispose()
