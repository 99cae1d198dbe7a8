"""Connection failures become one clear line without the password (real servers)."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from dbprobe.connect import connect
from dbprobe.errors import ConnectError
from dbprobe.pg import PostgresServer, throwaway
from dbprobe.urls import parse_url


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_session_is_read_only_with_timeouts(pg: PostgresServer) -> None:
    target = parse_url(pg.dsn())
    with connect(
        target,
        application_name="dbprobe-test",
        read_only=True,
        statement_timeout_ms=1234,
        lock_timeout_ms=567,
    ) as conn:
        row = conn.execute(
            "SELECT current_setting('default_transaction_read_only'),"
            " current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_setting('application_name')"
        ).fetchone()
        assert row == ("on", "1234ms", "567ms", "dbprobe-test")
        with pytest.raises(Exception, match="read-only transaction"):
            conn.execute("CREATE TABLE nope (id int)")


@pytest.mark.parametrize(
    ("make_url", "expected"),
    [
        (
            lambda pg: f"postgresql://postgres:pw@127.0.0.1:{_closed_port()}/postgres",
            "connection refused",
        ),
        (lambda pg: pg.dsn("no_such_db"), 'database "no_such_db" does not exist'),
        # with password auth the server does not reveal whether the role exists
        (
            lambda pg: pg.target(user="ghost", password="pw").libpq_dsn(),
            "authentication failed for user 'ghost'",
        ),
        (lambda pg: "postgresql://u:pw@nonexistent.invalid:5432/x", "cannot resolve host"),
    ],
)
def test_failures_are_one_clear_line(pg: PostgresServer, make_url, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConnectError) as info:
        connect(parse_url(make_url(pg)), connect_timeout=3)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg
    assert "pw" not in msg.replace("password", "")


def test_wrong_password_and_tls_refused() -> None:
    with throwaway("local", auth="scram-sha-256", password="right-one") as server:
        bad = dataclasses.replace(parse_url(server.dsn()), password="wrong-one")
        with pytest.raises(ConnectError, match="authentication failed") as info:
            connect(bad, connect_timeout=3)
        assert "wrong-one" not in str(info.value)
        good = parse_url(server.dsn()).with_options(sslmode="require")
        with pytest.raises(ConnectError, match="TLS was required"):
            connect(good, connect_timeout=3)
