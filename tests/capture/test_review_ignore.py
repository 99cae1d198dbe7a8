"""``dbprobe.ignore()`` as a decorator: on ``async def`` and from two threads at once
(real PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import create_async_engine

import dbprobe
from dbprobe.config import DbprobeConfig
from dbprobe.pg import PostgresServer

from .conftest import ASYNC_DRIVERS


def test_ignore_decorates_a_coroutine(
    pg: PostgresServer, shop_module_db: str, config: DbprobeConfig
) -> None:
    @dbprobe.ignore("n-plus-one")
    async def product_names(conn: object) -> list[str]:
        names = []
        for pid in range(101, 106):
            result = await conn.execute(  # type: ignore[attr-defined]
                text("SELECT name FROM products WHERE id = :id"), {"id": pid}
            )
            names.append(result.scalar_one())
        return names

    async def main() -> tuple[list[str], object]:
        engine = create_async_engine(ASYNC_DRIVERS["asyncpg"](pg, shop_module_db))
        try:
            async with engine.connect() as conn:
                with dbprobe.capture() as log:
                    names = await product_names(conn)
                    # The same loop outside the decorated function is reported.
                    for pid in range(101, 106):
                        await conn.execute(
                            text("SELECT sku FROM products WHERE id = :id"), {"id": pid}
                        )
            return names, log
        finally:
            await engine.dispose()

    names, log = asyncio.run(main())
    assert len(names) == 5
    assert len(log) == 10  # type: ignore[arg-type]
    ignored = [r for r in log.statements if r.is_ignored("n-plus-one")]  # type: ignore[attr-defined]
    assert len(ignored) == 5 and all("name" in r.sql for r in ignored)
    findings = [f for f in log.findings(config) if f.rule == "n-plus-one"]  # type: ignore[attr-defined]
    assert len(findings) == 1 and "sku" in (findings[0].sql or "")


def test_ignore_decorator_from_two_threads_at_once(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    barrier = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    @dbprobe.ignore()
    def lookups() -> None:
        with shop_engine.connect() as conn:
            barrier.wait()  # both threads are inside the decorated function
            for pid in range(101, 104):
                conn.execute(text("SELECT name FROM products WHERE id = :id"), {"id": pid})
            barrier.wait()  # and both leave after the other entered

    def worker() -> None:
        try:
            lookups()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    with dbprobe.capture(all_threads=True) as log:
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
    assert len(log) == 6
    assert all(r.is_ignored("n-plus-one") for r in log.statements)
    assert log.findings(config) == []
