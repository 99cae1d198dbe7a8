"""The handle every provider yields: URLs, version, and database helpers."""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dbprobe.errors import DbprobeError
from dbprobe.pg.cleanup import REAPER
from dbprobe.urls import DatabaseTarget

log = logging.getLogger("dbprobe.pg")

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_FILE_COPY_ABOVE = 50 * 1024 * 1024  # bytes


@dataclasses.dataclass
class PostgresServer:
    """A running throwaway PostgreSQL server (or a fresh database on a given server).

    ``database`` is the database this handle hands out by default: on servers dbprobe
    started it is ``postgres``; with the ``url`` provider it is a fresh database that
    is dropped afterwards. ``socket_dir`` is set when a unix socket is available.
    Every URL derives from ``base`` (so connection options such as ``sslmode`` or
    ``sslrootcert`` given to the url provider are kept).
    """

    provider: str
    host: str
    port: int
    user: str
    password: str | None = dataclasses.field(repr=False)
    database: str
    version: str = ""
    version_num: int = 0
    socket_dir: str | None = None
    log_path: Path | None = None
    data_dir: Path | None = None
    durable: bool = False
    certificate: Path | None = None
    admin_database: str = "postgres"
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    # Databases this handle created; only these may be dropped.
    created: set[str] = dataclasses.field(default_factory=set)
    # False for the url provider: the server is someone else's.
    owns_server: bool = True
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # A random token marking databases this handle created (COMMENT ON DATABASE), so
    # crash cleanup never drops a database of the same name made by someone else.
    marker: str = dataclasses.field(default_factory=lambda: f"dbprobe:{secrets.token_hex(8)}")

    # -- addresses --------------------------------------------------------------------
    def target(
        self,
        database: str | None = None,
        *,
        socket: bool = False,
        user: str | None = None,
        password: str | None = None,
    ) -> DatabaseTarget:
        host = self.socket_dir if socket and self.socket_dir else self.host
        return DatabaseTarget(
            host=host,
            port=self.port,
            user=user or self.user,
            password=password if user else self.password,
            database=database or self.database,
            options=dict(self.options),
        )

    def url(self, database: str | None = None, driver: str = "psycopg") -> str:
        """SQLAlchemy URL over TCP, e.g. ``postgresql+psycopg://postgres:…@127.0.0.1:5xxxx/db``."""
        return self.target(database).sqlalchemy_url(driver)

    def async_url(self, database: str | None = None) -> str:
        """SQLAlchemy URL for the asyncpg driver."""
        return self.target(database).sqlalchemy_url("asyncpg")

    def dsn(self, database: str | None = None, *, socket: bool = False) -> str:
        """libpq URI (``postgresql://...``); over the unix socket when ``socket``."""
        return self.target(database, socket=socket).libpq_dsn()

    def socket_url(self, database: str | None = None, driver: str = "psycopg") -> str:
        """SQLAlchemy URL over the unix socket (falls back to TCP when there is none)."""
        return self.target(database, socket=True).sqlalchemy_url(driver)

    # -- connections ------------------------------------------------------------------
    def connect(self, database: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """An autocommit superuser psycopg connection (caller closes it); over the
        private unix socket on servers dbprobe started."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("application_name", "dbprobe-admin")
        kwargs.setdefault("connect_timeout", 10)
        socket = bool(self.socket_dir) and self.owns_server
        return psycopg.connect(self.dsn(database, socket=socket), **kwargs)

    def execute(self, statement: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit and return its rows (empty for commands)."""
        with self.connect(database) as conn:
            cur = conn.execute(statement.encode())
            return list(cur.fetchall()) if cur.description else []

    # -- databases --------------------------------------------------------------------
    def create_database(
        self, name: str | None = None, template: str | None = None, *, owner: str | None = None
    ) -> str:
        """Create a database (from ``template`` when given) and return its name.

        Names default to ``dbprobe_<random>``. Created databases are dropped when the
        server handle is torn down, even if the process dies. Templates over 50 MB are
        copied with ``STRATEGY FILE_COPY`` (PostgreSQL 15+), which is faster for them.
        """
        name = name or f"dbprobe_{secrets.token_hex(6)}"
        if not _NAME_RE.match(name):
            raise DbprobeError(f"invalid database name {name!r} (lowercase, digits, underscore)")
        if owner is not None and not _NAME_RE.match(owner):
            raise DbprobeError(f"invalid role name {owner!r}")
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        start = time.perf_counter()
        with self.connect(self.admin_database) as conn:
            if template:
                stmt += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                if self.version_num >= 150000 and self._size(conn, template) > _FILE_COPY_ABOVE:
                    stmt += sql.SQL(" STRATEGY FILE_COPY")
                if template in self.created:
                    # A pool that just released our own template may still hold a
                    # session; PostgreSQL would wait 5 s for it and then fail.
                    self._terminate(conn, template)
            if owner:
                stmt += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
            try:
                conn.execute(stmt)
            except psycopg.errors.ObjectInUse:
                raise DbprobeError(
                    f"cannot clone {template!r}: other sessions are connected to it"
                ) from None
            except psycopg.errors.DuplicateDatabase:
                raise DbprobeError(f"database {name!r} already exists") from None
            self.created.add(name)
            if not self.owns_server:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(name), sql.Literal(self.marker)
                    )
                )
                REAPER.watch_database(name, self.marker, self.dsn(self.admin_database))
        self.timings["last_create_s"] = time.perf_counter() - start
        return name

    def clone(self, template: str, name: str | None = None) -> str:
        """``CREATE DATABASE … TEMPLATE template``: a fresh copy of a seeded database."""
        return self.create_database(name, template=template)

    def settle(self, database: str) -> None:
        """``VACUUM (FREEZE, ANALYZE)`` a freshly loaded database, so its clones start
        with fresh statistics, set hint bits and visibility maps, and autovacuum does
        not wake up on it in the middle of a test session."""
        with self.connect(database) as conn:
            # The load committed asynchronously (synchronous_commit=off): until its
            # commit record is flushed, VACUUM may not mark pages all-visible.
            try:
                conn.execute("CHECKPOINT")
            except psycopg.errors.InsufficientPrivilege:
                time.sleep(0.3)  # a few wal_writer_delay periods
            conn.execute("VACUUM (FREEZE, ANALYZE)")

    def create_role(
        self, name: str, password: str | None = None, *, grants: tuple[str, ...] = ()
    ) -> DatabaseTarget:
        """A NOSUPERUSER login role (for probes that must see what an application
        sees, e.g. ``remaining connection slots are reserved``); returns its target.

        grants: predefined roles to grant, e.g. ``("pg_read_all_stats",)``.
        """
        if not _NAME_RE.match(name):
            raise DbprobeError(f"invalid role name {name!r}")
        with self.connect(self.admin_database) as conn:
            conn.execute("SET pg_stat_statements.track_utility = off")
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            for granted in grants:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(name))
                )
        return self.target(user=name, password=password)

    def drop_database(self, name: str) -> None:
        """Drop a database this handle created (``WITH (FORCE)`` ends its sessions)."""
        if name not in self.created:
            raise DbprobeError(f"refusing to drop database {name!r}: dbprobe did not create it")
        with self.connect(self.admin_database) as conn:
            if self.version_num >= 130000:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            else:
                self._terminate(conn, name)
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        self.created.discard(name)
        if not self.owns_server:
            REAPER.unwatch_database(name)

    @staticmethod
    def _size(conn: psycopg.Connection[Any], database: str) -> int:
        row = conn.execute(
            "SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _terminate(conn: psycopg.Connection[Any], database: str | None) -> None:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )

    def available_extensions(self, database: str | None = None) -> set[str]:
        rows = self.execute("SELECT name FROM pg_available_extensions", database)
        return {r[0] for r in rows}

    def settings(self, names: list[str], database: str | None = None) -> Mapping[str, str]:
        with self.connect(database) as conn:
            cur = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,)
            )
            return dict(cur.fetchall())

    def _drop_created(self) -> None:
        for name in sorted(self.created):
            try:
                self.drop_database(name)
            except Exception as exc:  # keep tearing down the rest
                log.warning("could not drop database %s: %r", name, exc)


def read_version(conn: psycopg.Connection[Any]) -> tuple[str, int]:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
    ).fetchone()
    assert row is not None
    return str(row[0]).split(" ")[0], int(row[1])
