"""Run ``EXPLAIN`` safely: never executing the statement unless asked, never committing.

An EXPLAIN that could leave anything behind — ``setup`` statements (a real index on a
disposable database), ``ANALYZE``, ``SET LOCAL``, a ``PREPARE`` — runs inside a
transaction (a savepoint when the caller already has one) that is always rolled back.
A plain EXPLAIN on an autocommit session runs on its own: it writes nothing.

Parameters, in the forms applications send them:

* ``params`` a mapping → psycopg/SQLAlchemy ``%(name)s`` placeholders;
* ``params`` a sequence → ``$1`` placeholders (asyncpg, pg_stat_statements texts) or
  ``%s`` (psycopg/pg8000 ``format`` style), whichever the text uses;
* ``params is None`` and the text has ``$n`` → a *generic* plan: ``EXPLAIN
  (GENERIC_PLAN)`` on PostgreSQL 16+; on older servers ``PREPARE`` +
  ``plan_cache_mode = force_generic_plan`` + ``EXPLAIN EXECUTE`` with NULLs, then
  ``DEALLOCATE`` (a prepared statement outlives a rollback, so it is removed by hand).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql as psql

from dbprobe.analysis.sqltext import is_explainable, placeholder_style
from dbprobe.audit.catalog import MARKER
from dbprobe.errors import DbprobeError

log = logging.getLogger("dbprobe.audit")

# Every statement the runner sends carries the marker (after the first word:
# pg_stat_statements on PostgreSQL 18 drops leading comments), so the audit can
# recognise its own entries in pg_stat_statements when the role may not switch
# tracking off.
MARKER_SET = f"SET {MARKER}"


class ExplainError(DbprobeError):
    """EXPLAIN failed for one statement (syntax, privileges, timeout ...): one line.

    ``kind`` is ``privilege``, ``timeout``, ``unsupported``, ``generic`` (a ``$n`` text
    that cannot be planned without values, e.g. ``interval $1`` from pg_stat_statements'
    normalisation), ``missing-relation`` or ``error``.
    """

    def __init__(self, message: str, kind: str = "error", sqlstate: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.sqlstate = sqlstate


Params = Mapping[str, Any] | Sequence[Any] | None


class ExplainRunner:
    """EXPLAIN statements on one connection.

    conn: a psycopg connection (autocommit or not; read-only is fine unless ``setup``
    statements write). verbose: ``EXPLAIN (VERBOSE)`` (schema-qualified relations,
    alias-qualified expressions; default on). statement_timeout_ms: applied with
    ``SET LOCAL`` inside the transaction when given.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        verbose: bool = True,
        statement_timeout_ms: int | None = None,
    ) -> None:
        self.conn = conn
        self.verbose = verbose
        self.statement_timeout_ms = statement_timeout_ms
        self.version_num = int(conn.info.server_version)
        self.timings_ms: list[float] = []
        # One name for every PREPARE: pg_stat_statements then records one
        # "EXPLAIN … EXECUTE dbprobe_explain(…)" entry per arity, not one per statement.
        self._prepared_name = "dbprobe_explain"
        self._renames = 0

    @property
    def native_generic_plan(self) -> bool:
        """Whether the server has ``EXPLAIN (GENERIC_PLAN)`` (PostgreSQL 16+)."""
        return self.version_num >= 160000

    def explain(
        self,
        sql: str,
        params: Params = None,
        *,
        analyze: bool = False,
        setup: Sequence[str] = (),
    ) -> list[Any]:
        """The ``EXPLAIN (FORMAT JSON)`` document of ``sql`` (a list with one plan).

        analyze: run the statement too (``ANALYZE, BUFFERS``), still rolled back
        afterwards; setup: statements run first in the same rolled-back transaction.
        Raises :class:`ExplainError` with one line on failure.
        """
        if not is_explainable(sql):
            raise ExplainError(
                "not a query or DML statement; EXPLAIN does not apply", "unsupported"
            )
        style = placeholder_style(sql)
        options = ["FORMAT JSON"]
        if self.verbose:
            options.insert(0, "VERBOSE")
        if analyze:
            options[:0] = ["ANALYZE", "BUFFERS"]
        generic = params is None and style == "dollar"
        if generic and analyze:
            raise ExplainError(
                "EXPLAIN ANALYZE needs parameter values for $n placeholders", "unsupported"
            )
        start = time.perf_counter()
        prepared: list[str] = []
        if (
            self.conn.autocommit
            and not setup
            and not analyze
            and self.statement_timeout_ms is None
            and (not generic or self.native_generic_plan)
        ):
            # A plain EXPLAIN on an autocommit session: it runs and writes nothing on
            # its own, so it needs no transaction around it (two round trips saved).
            try:
                if generic:
                    doc = self._generic(sql, options, prepared)
                else:
                    doc = self._bound(sql, params, style, options)
            except psycopg.Error as exc:
                raise _explain_error(exc, generic=generic) from None
            finally:
                self.timings_ms.append((time.perf_counter() - start) * 1000.0)
            return _plans(doc)
        try:
            with self.conn.transaction(force_rollback=True):
                if self.statement_timeout_ms is not None:
                    self.conn.execute(
                        psql.SQL(MARKER_SET + " LOCAL statement_timeout = {}").format(
                            psql.Literal(int(self.statement_timeout_ms))
                        )
                    )
                for stmt in setup:
                    self.conn.execute(stmt.encode())
                if generic:
                    doc = self._generic(sql, options, prepared)
                else:
                    doc = self._bound(sql, params, style, options)
        except psycopg.Error as exc:
            raise _explain_error(exc, generic=generic) from None
        finally:
            for name in prepared:
                self._deallocate(name)
            self.timings_ms.append((time.perf_counter() - start) * 1000.0)
        return _plans(doc)

    # -- forms ----------------------------------------------------------------------------
    def _bound(self, sql: str, params: Params, style: str, options: list[str]) -> Any:
        text = f"EXPLAIN {MARKER} ({', '.join(options)}) {sql}"
        if params is None:
            row = self.conn.execute(text.encode()).fetchone()
        elif style == "dollar":
            if isinstance(params, Mapping):
                raise ExplainError("$n placeholders need a sequence of parameters", "unsupported")
            cur = psycopg.RawCursor(self.conn)
            row = cur.execute(text, list(params)).fetchone()
        else:
            row = self.conn.execute(text, params).fetchone()
        assert row is not None
        return row[0]

    def _generic(self, sql: str, options: list[str], prepared: list[str]) -> Any:
        if self.native_generic_plan:
            text = f"EXPLAIN {MARKER} ({', '.join(['GENERIC_PLAN', *options])}) {sql}"
            row = self.conn.execute(text.encode()).fetchone()
            assert row is not None
            return row[0]
        name = self._prepared_name
        self.conn.execute(f"{MARKER_SET} LOCAL plan_cache_mode = force_generic_plan")
        self.conn.execute(f"PREPARE {MARKER} {name} AS {sql}".encode())
        prepared.append(name)
        row = self.conn.execute(
            "SELECT /* dbprobe-audit */ cardinality(parameter_types) "
            "FROM pg_prepared_statements WHERE name = %s",
            (name,),
        ).fetchone()
        nparams = int(row[0]) if row and row[0] is not None else 0
        args = ", ".join(["NULL"] * nparams)
        call = f"EXECUTE {name}" + (f"({args})" if nparams else "")
        row = self.conn.execute(
            f"EXPLAIN {MARKER} ({', '.join(options)}) {call}".encode()
        ).fetchone()
        assert row is not None
        return row[0]

    def _deallocate(self, name: str) -> None:
        # PREPARE is not transactional: the statement outlives the rollback, so it is
        # removed here, after the (rolled-back) transaction block.
        try:
            self.conn.execute(f"DEALLOCATE {MARKER} {name}".encode())
        except psycopg.Error:
            log.debug("DEALLOCATE %s failed", name, exc_info=True)
            self._renames += 1
            self._prepared_name = f"dbprobe_explain_{self._renames}"


def _plans(doc: Any) -> list[Any]:
    if isinstance(doc, str):
        doc = json.loads(doc)
    if not isinstance(doc, list) or not doc:
        raise ExplainError("EXPLAIN returned no plan")
    return doc


# syntax error, indeterminate datatype, ambiguous function, undefined function/operator
_GENERIC_TEXT_ERRORS = frozenset({"42601", "42P18", "42725", "42883"})


def _explain_error(exc: psycopg.Error, *, generic: bool = False) -> ExplainError:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    diag = getattr(exc, "diag", None)
    first = (getattr(diag, "message_primary", None) or str(exc)).strip().splitlines()[0]
    if sqlstate == "42501":
        return ExplainError(f"missing privilege: {first}", "privilege", sqlstate)
    if sqlstate == "57014":
        return ExplainError(f"cancelled by statement_timeout: {first}", "timeout", sqlstate)
    if sqlstate == "55P03":
        return ExplainError(f"lock not available within lock_timeout: {first}", "timeout", sqlstate)
    if sqlstate == "25006":
        return ExplainError(f"the session is read-only: {first}", "privilege", sqlstate)
    if sqlstate == "42P01":
        return ExplainError(first, "missing-relation", sqlstate)
    if generic and sqlstate in _GENERIC_TEXT_ERRORS:
        return ExplainError(
            f"cannot be planned without parameter values: {first}", "generic", sqlstate
        )
    return ExplainError(first, sqlstate=sqlstate)
