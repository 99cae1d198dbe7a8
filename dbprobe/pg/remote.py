"""The url provider: a fresh database on a server the user names, dropped afterwards.

Only databases this handle creates are ever dropped; nothing else on the server is
touched. A crash leaves the watchdog to drop them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import psycopg

from dbprobe.errors import ServerStartError
from dbprobe.pg.local import ServerOptions
from dbprobe.pg.server import PostgresServer, read_version
from dbprobe.urls import parse_url

log = logging.getLogger("dbprobe.pg")


@contextlib.contextmanager
def run_url(url: str, options: ServerOptions) -> Iterator[PostgresServer]:
    target = parse_url(url)
    admin_db = target.database or "postgres"
    try:
        with psycopg.connect(
            target.with_database(admin_db).libpq_dsn(),
            autocommit=True,
            connect_timeout=10,
            application_name="dbprobe-admin",
        ) as conn:
            version, version_num = read_version(conn)
            can_create = conn.execute(
                "SELECT rolcreatedb OR rolsuper, current_user FROM pg_roles "
                "WHERE rolname = current_user"
            ).fetchone()
    except psycopg.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServerStartError(f"cannot connect to {target.masked()}: {msg}") from None
    if not can_create or not can_create[0]:
        raise ServerStartError(f"role {target.user!r} may not create databases (CREATEDB)")
    server = PostgresServer(
        provider="url",
        host=target.host or "localhost",
        port=target.port or 5432,
        user=target.user or str(can_create[1]),
        password=target.password,
        options=dict(target.options),
        database=admin_db,
        version=version,
        version_num=version_num,
        durable=True,
        admin_database=admin_db,
        owns_server=False,
    )
    try:
        server.database = server.create_database()
        for ext in options.extensions:
            with contextlib.suppress(psycopg.Error):
                server.execute(f'CREATE EXTENSION IF NOT EXISTS "{ext}"', server.database)
        yield server
    finally:
        server._drop_created()
