"""Fixtures for the capture tests: one clone of the seeded shop per module (the flows
under test only read, or roll back what they write), sync and async engines on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from dbprobe.config import DbprobeConfig
from dbprobe.pg import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: locations in findings are relative to it."""


@pytest.fixture(scope="module")
def shop_module_db(pg: PostgresServer, shop_template: str) -> Iterator[str]:
    name = pg.clone(shop_template)
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="module")
def shop_engine(pg: PostgresServer, shop_module_db: str) -> Iterator[Engine]:
    engine = create_engine(pg.url(shop_module_db))
    yield engine
    engine.dispose()


@pytest.fixture
def session(shop_engine: Engine) -> Iterator[Session]:
    with Session(shop_engine) as s:
        yield s
        s.rollback()


@pytest.fixture
def config() -> DbprobeConfig:
    return DbprobeConfig(root=str(ROOT))


ASYNC_DRIVERS = {
    "asyncpg": lambda pg, db: pg.async_url(db),
    "psycopg_async": lambda pg, db: pg.url(db).replace("+psycopg://", "+psycopg_async://"),
}


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
