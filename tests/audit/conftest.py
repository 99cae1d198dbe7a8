"""Servers and audited databases for the audit tests.

``audit_server`` runs every audit test twice: on the session's server (PostgreSQL 15
locally, with hypopg) and on the embedded PostgreSQL 18 (no hypopg), skipped with a
reason when the embedded wheel is missing and not started twice when the session server
already is the embedded one. ``audited_shop`` is the shop fixture app with its workload
run ``WORKLOAD_ROUNDS`` times, so pg_stat_statements and the scan counters hold what a
production database would show.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from audit_support import WORKLOAD_ROUNDS, AuditedShop
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from dbprobe.errors import NoProviderError
from dbprobe.pg import PostgresServer, throwaway


@pytest.fixture(
    scope="session", params=["session", "embedded"], ids=["session-server", "pg18-embedded"]
)
def audit_server(request: pytest.FixtureRequest, pg: PostgresServer) -> Iterator[PostgresServer]:
    if request.param == "session":
        yield pg
        return
    if pg.provider == "embedded":
        pytest.skip("the session server already is the embedded PostgreSQL")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(throwaway("embedded"))
        except NoProviderError as exc:
            pytest.skip(f"embedded PostgreSQL 18 unavailable: {exc}")
        yield server


def build_shop(server: PostgresServer) -> str:
    from fixtures.shop import seed

    name = server.create_database()
    engine = create_engine(server.url(name))
    try:
        with engine.begin() as conn:
            seed.build(conn, "small")
    finally:
        engine.dispose()
    server.settle(name)  # as shop_template: fresh statistics, autovacuum stays quiet
    return name


def run_workload(server: PostgresServer, database: str, rounds: int = WORKLOAD_ROUNDS) -> None:
    """Run every shop flow ``rounds`` times and wait until the counters show it.

    Backends flush their statistics when they exit, before they leave pg_stat_activity:
    once the workload's sessions are gone, every counter they touched is visible.
    """
    from fixtures.shop import workload

    engine = create_engine(server.url(database))
    try:
        with Session(engine) as session:
            for _ in range(rounds):
                workload.run_all(session)
            session.execute(text("SELECT pg_stat_force_next_flush()"))
            session.commit()
    finally:
        engine.dispose()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sessions = server.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'",
            database,
        )
        rows = server.execute(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'stock_movements'",
            database,
        )
        if sessions[0][0] == 0 and rows and (rows[0][0] or 0) >= rounds:
            return
        time.sleep(0.05)
    raise AssertionError("the workload's scans never reached pg_stat_user_tables")


@pytest.fixture(scope="session")
def shop_template_for(
    request: pytest.FixtureRequest, audit_server: PostgresServer, pg: PostgresServer
) -> str:
    if audit_server is pg:
        name: str = request.getfixturevalue("shop_template")
        return name
    return build_shop(audit_server)


@pytest.fixture(scope="session")
def audited_shop(audit_server: PostgresServer, shop_template_for: str) -> AuditedShop:
    """The shop after its workload. Audits are read-only, so tests share it."""
    database = audit_server.clone(shop_template_for)
    run_workload(audit_server, database)
    return AuditedShop(audit_server, database)


@pytest.fixture
def fresh_shop(audit_server: PostgresServer, shop_template_for: str) -> Iterator[AuditedShop]:
    """A shop of its own (for tests that change privileges or extensions)."""
    database = audit_server.clone(shop_template_for)
    run_workload(audit_server, database, rounds=1)
    yield AuditedShop(audit_server, database)
    audit_server.drop_database(database)
