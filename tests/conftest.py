"""Shared fixtures: one throwaway PostgreSQL per test session (per xdist worker),
the shop fixture app seeded once into a template, and a fresh clone per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

from dbprobe.pg import PostgresServer, throwaway

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """The session's throwaway server (provider chain, or ``$DBPROBE_POSTGRES``)."""
    with throwaway() as server:
        yield server


@pytest.fixture(scope="session")
def shop_template(pg: PostgresServer) -> str:
    """A database with the shop fixture built and seeded (small), used as a template."""
    from fixtures.shop import seed

    name = pg.create_database()
    engine = create_engine(pg.url(name))
    try:
        with engine.begin() as conn:
            seed.build(conn, "small")
    finally:
        engine.dispose()
    pg.settle(name)  # fresh statistics and visibility maps; autovacuum stays quiet
    return name


@pytest.fixture
def shop_db(pg: PostgresServer, shop_template: str) -> Iterator[str]:
    """A fresh clone of the seeded shop database for one test."""
    name = pg.clone(shop_template)
    yield name
    pg.drop_database(name)
