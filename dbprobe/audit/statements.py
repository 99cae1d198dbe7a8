"""The heaviest statements from ``pg_stat_statements``.

Statements are those of the connected database, top-level only (PostgreSQL 14+),
merged across roles by query text, ordered by total execution time. Texts of other
roles' statements read ``<insufficient privilege>`` unless the audit role has
``pg_read_all_stats``; they are counted, not explained. dbprobe's own statements (the
``/* dbprobe-…`` marker) and utility commands are left out.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import psycopg
from psycopg import sql as psql

from dbprobe.analysis.sqltext import is_explainable
from dbprobe.audit.catalog import marked

log = logging.getLogger("dbprobe.audit")

HIDDEN_TEXT = "<insufficient privilege>"


@dataclasses.dataclass(frozen=True)
class TopStatement:
    """One normalised statement (``$n`` placeholders) and its cumulative cost.

    total_ms / mean_ms: execution time in milliseconds since pg_stat_statements was
    reset; calls and rows: totals.
    """

    queryid: int | None
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    shared_blks_hit: int = 0
    shared_blks_read: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "queryid": self.queryid,
            "calls": self.calls,
            "total_ms": round(self.total_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "rows": self.rows,
        }


@dataclasses.dataclass(frozen=True)
class PgssStatus:
    """Whether pg_stat_statements can be read here; ``problem`` and ``fix`` when not."""

    available: bool
    schema: str | None = None
    problem: str | None = None
    fix: str | None = None
    can_read_all: bool = False


def pgss_status(conn: psycopg.Connection[Any]) -> PgssStatus:
    """Check the extension is installed in this database and its library loaded.

    Needs no special privilege: ``shared_preload_libraries`` is read through
    ``pg_settings`` (hidden from ordinary roles, then treated as unknown) and a loaded
    library is proven by reading the view.
    """
    row = conn.execute(
        marked(
            "SELECT n.nspname FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'"
        )
    ).fetchone()
    setting = conn.execute(
        marked("SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'")
    ).fetchone()
    loaded: bool | None = None if setting is None else "pg_stat_statements" in str(setting[0])
    row_all = conn.execute(
        marked(
            "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') "
            "OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        )
    ).fetchone()
    can_read_all = bool(row_all and row_all[0])
    enable = (
        "add pg_stat_statements to shared_preload_libraries in postgresql.conf "
        "(ALTER SYSTEM SET shared_preload_libraries = '…, pg_stat_statements'), restart "
        "the server, then CREATE EXTENSION pg_stat_statements; in this database"
    )
    if row is None:
        if loaded:
            return PgssStatus(
                False,
                problem="the pg_stat_statements library is loaded but the extension is not "
                "created in this database",
                fix="CREATE EXTENSION pg_stat_statements; in this database",
                can_read_all=can_read_all,
            )
        return PgssStatus(
            False,
            problem="pg_stat_statements is not installed in this database",
            fix=enable if loaded is False else f"{enable} (skip the first steps if it is loaded)",
            can_read_all=can_read_all,
        )
    schema = str(row[0])
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                psql.SQL(marked("SELECT 1 FROM {}.pg_stat_statements LIMIT 1")).format(
                    psql.Identifier(schema)
                )
            )
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return PgssStatus(
            False,
            schema=schema,
            problem="the pg_stat_statements extension exists but its library is not in "
            "shared_preload_libraries",
            fix=enable,
            can_read_all=can_read_all,
        )
    return PgssStatus(True, schema=schema, can_read_all=can_read_all)


def top_statements(
    conn: psycopg.Connection[Any], schema: str, limit: int
) -> tuple[list[TopStatement], int]:
    """Up to ``limit`` explainable statements by total execution time, and how many
    of the database's statements were hidden by missing ``pg_read_all_stats``."""
    version = int(conn.info.server_version)
    total = "total_exec_time" if version >= 130000 else "total_time"
    toplevel = "AND s.toplevel" if version >= 140000 else ""
    query = psql.SQL(
        marked(
            """SELECT max(s.queryid), s.query, sum(s.calls)::int8, sum(s.{total})::float8,
       sum(s.rows)::int8, sum(s.shared_blks_hit)::int8, sum(s.shared_blks_read)::int8,
       count(*)::int8
FROM {schema}.pg_stat_statements s
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) {toplevel}
  AND s.query NOT LIKE '%/* dbprobe-%'
GROUP BY s.query
ORDER BY sum(s.{total}) DESC
"""
        )
    ).format(
        total=psql.Identifier(total),
        schema=psql.Identifier(schema),
        toplevel=psql.SQL(toplevel),
    )
    out: list[TopStatement] = []
    hidden = 0
    with conn.cursor() as cur:
        cur.execute(query)
        for queryid, text, n_calls, total_ms, rows, hit, read, entries in cur:
            if text == HIDDEN_TEXT:
                # every hidden entry reads the same text: they are merged into one row
                hidden += int(entries or 0)
                continue
            if len(out) >= limit or not is_explainable(text):
                continue
            calls = int(n_calls or 0)
            out.append(
                TopStatement(
                    queryid=queryid,
                    query=text,
                    calls=calls,
                    total_ms=float(total_ms or 0.0),
                    mean_ms=float(total_ms or 0.0) / calls if calls else 0.0,
                    rows=int(rows or 0),
                    shared_blks_hit=int(hit or 0),
                    shared_blks_read=int(read or 0),
                )
            )
    return out, hidden
