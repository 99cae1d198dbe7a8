"""Verify index advice against the planner before recommending it.

* ``hypopg`` — ``hypopg_create_index()`` registers a *hypothetical* index in the
  session's memory, the statement is re-planned, ``hypopg_drop_index()`` forgets it.
  Nothing is written to any table or to disk, so it works in the read-only audit
  session (checked on hypopg 1.3 / PostgreSQL 15). ~1 ms per proposal.
* ``real-index`` — ``CREATE INDEX`` inside a transaction, re-plan, ``ROLLBACK``. It
  builds the whole index and holds a lock that blocks writes to the table while it
  does (~300 ms on a 1,000,000-row table), so it runs only when the user declares the
  database disposable (``--verify real --disposable``), on a separate session that is
  not read-only.
* ``none`` — the advice is reported as *not verified*, with how to install hypopg.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from psycopg import sql as psql

from dbprobe.analysis.index_advice import IndexAdvice, Verification
from dbprobe.analysis.plans import parse_plan, summarize
from dbprobe.audit.catalog import marked, statement_scope
from dbprobe.audit.runner import ExplainError, ExplainRunner, Params

log = logging.getLogger("dbprobe.audit")

VERIFY_MODES = ("auto", "hypopg", "real", "none")

BUILD_LOCK_TIMEOUT_MS = 100
"""How long a real-index verification waits for its SHARE lock on the table (ms)."""


class IndexVerifier(Protocol):
    """Re-plans a statement as if ``advice`` existed."""

    method: str

    def verify(
        self, sql: str, params: Params, advice: IndexAdvice, cost_before: float
    ) -> Verification: ...


class NoVerifier:
    """Reports advice as not verified, saying why and how to fix that."""

    method = "none"

    def __init__(self, reason: str, hint: str | None = None) -> None:
        self.reason = reason
        self.hint = hint

    def verify(
        self, sql: str, params: Params, advice: IndexAdvice, cost_before: float
    ) -> Verification:
        return Verification("none", cost_before, reason=self.reason, hint=self.hint)


class HypopgVerifier:
    """Hypothetical indexes (hypopg) on the audit's own, read-only session."""

    method = "hypopg"

    def __init__(self, runner: ExplainRunner, schema: str) -> None:
        self.runner = runner
        self.schema = schema

    def verify(
        self, sql: str, params: Params, advice: IndexAdvice, cost_before: float
    ) -> Verification:
        conn = self.runner.conn
        start = time.perf_counter()
        schema = psql.Identifier(self.schema)
        try:
            # A savepoint when the caller is inside a transaction: a refused index
            # must not abort (let alone roll back) the caller's work.
            with statement_scope(conn):
                row = conn.execute(
                    psql.SQL(marked("SELECT indexrelid FROM {}.hypopg_create_index(%s)")).format(
                        schema
                    ),
                    (advice.plain_statement,),
                ).fetchone()
        except psycopg.Error as exc:
            return Verification(
                "none",
                cost_before,
                reason=f"hypopg could not create the index: {_first_line(exc)}",
                rejected=refused_definition(getattr(exc, "sqlstate", None)),
            )
        assert row is not None
        oid = int(row[0])
        try:
            plan = parse_plan(self.runner.explain(sql, params))
        except ExplainError as exc:
            return Verification("none", cost_before, reason=f"re-planning failed: {exc}")
        finally:
            try:
                with statement_scope(conn):
                    conn.execute(
                        psql.SQL(marked("SELECT {}.hypopg_drop_index(%s)")).format(schema), (oid,)
                    )
            except psycopg.Error:
                log.debug("hypopg_drop_index(%s) failed", oid, exc_info=True)
        prefix = f"<{oid}>"
        return Verification(
            "hypopg",
            cost_before,
            cost_after=plan.total_cost,
            index_used=plan.uses_index(lambda name: str(name).startswith(prefix)),
            plan_after=tuple(summarize(plan)),
            elapsed_ms=(time.perf_counter() - start) * 1000.0,
        )


def refused_definition(sqlstate: str | None) -> bool:
    """Whether an error creating an index means the definition itself is impossible
    (an expression that is not IMMUTABLE, an operator class the type lacks, ...):
    SQLSTATE class 42 (syntax error or access rule violation) other than a missing
    privilege or relation."""
    return (
        bool(sqlstate)
        and str(sqlstate).startswith("42")
        and sqlstate
        not in (
            "42501",
            "42P01",
        )
    )


class RealIndexVerifier:
    """``CREATE INDEX`` in a transaction that is always rolled back (disposable
    databases only: it takes a write-blocking lock while the index builds)."""

    method = "real-index"

    def __init__(self, runner: ExplainRunner) -> None:
        self.runner = runner

    def verify(
        self, sql: str, params: Params, advice: IndexAdvice, cost_before: float
    ) -> Verification:
        start = time.perf_counter()
        try:
            plan = parse_plan(
                self.runner.explain(
                    sql,
                    params,
                    setup=[
                        # CREATE INDEX needs a SHARE lock: give up at once when an open
                        # transaction wrote to the table (a test's own, in the pytest
                        # plugin) rather than wait the session's lock_timeout for each
                        # proposal
                        marked(f"SET LOCAL lock_timeout = {BUILD_LOCK_TIMEOUT_MS}"),
                        marked(advice.plain_statement),
                    ],
                )
            )
        except ExplainError as exc:
            reason = f"building the index to verify it failed: {exc}"
            if exc.sqlstate == "55P03":
                reason = (
                    "the index could not be built to verify it: another session holds a "
                    "lock on the table (an open transaction that wrote to it)"
                )
            return Verification(
                "none",
                cost_before,
                reason=reason,
                rejected=refused_definition(exc.sqlstate),
            )
        return Verification(
            "real-index",
            cost_before,
            cost_after=plan.total_cost,
            index_used=plan.uses_index(lambda name: name == advice.name),
            plan_after=tuple(summarize(plan)),
            elapsed_ms=(time.perf_counter() - start) * 1000.0,
        )


def _first_line(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def hypopg_schema(conn: psycopg.Connection[Any]) -> str | None:
    """The schema hypopg is installed in, in the connected database (``None``: not)."""
    row = conn.execute(
        marked(
            "SELECT n.nspname FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'hypopg'"
        )
    ).fetchone()
    return str(row[0]) if row else None


def hypopg_missing_reason(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """Why hypopg cannot verify here (short), and how to fix it."""
    major = int(conn.info.server_version) // 10000
    row = conn.execute(
        marked("SELECT 1 FROM pg_available_extensions WHERE name = 'hypopg'")
    ).fetchone()
    alternative = "or rerun with --verify real --disposable on a disposable copy of the database"
    if row:
        return (
            f"hypopg is not installed in database {conn.info.dbname!r}",
            f"run CREATE EXTENSION hypopg; in {conn.info.dbname!r} (it only adds functions; "
            f"hypothetical indexes live in session memory), {alternative}",
        )
    return (
        "hypopg is not installed on this server",
        f"install hypopg (Debian/Ubuntu: apt install postgresql-{major}-hypopg; "
        f"RHEL/Fedora: dnf install hypopg_{major}; or build "
        "https://github.com/HypoPG/hypopg), then CREATE EXTENSION hypopg; in this "
        f"database, {alternative}",
    )


def choose_verifier(
    runner: ExplainRunner,
    mode: str = "auto",
    *,
    real_runner: Callable[[], ExplainRunner] | None = None,
) -> IndexVerifier:
    """The verifier for ``mode``: ``auto`` (hypopg when installed, else a real index
    when ``real_runner`` is given, else none), ``hypopg``, ``real``, ``none``.

    real_runner: opens the session for real-index verification; pass it only when the
    user declared the database disposable. ``real`` without it raises ``ValueError``.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"unknown verification mode {mode!r} (choose {', '.join(VERIFY_MODES)})")
    if mode == "none":
        return NoVerifier("verification switched off (--verify none)")
    if mode == "real":
        if real_runner is None:
            raise ValueError("real-index verification needs a database declared disposable")
        return RealIndexVerifier(real_runner())
    schema = hypopg_schema(runner.conn)
    if schema is not None:
        return HypopgVerifier(runner, schema)
    if mode == "auto" and real_runner is not None:
        return RealIndexVerifier(real_runner())
    reason, hint = hypopg_missing_reason(runner.conn)
    return NoVerifier(reason, hint)
