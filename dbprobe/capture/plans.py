"""Unindexed look-ups in captured statements (PostgreSQL only, opt-in with ``explain``).

Each distinct captured SELECT, UPDATE and DELETE is explained once per database with
the parameters it really ran with, by the audit's :class:`~dbprobe.audit.explain.
StatementAnalyzer` (plan analysis, index advice, verification with hypopg or, when
``explain_verify = "real"``, a real index built in a rolled-back transaction). The
session is read-only (``default_transaction_read_only``) except with
``explain_verify = "real"``. Its
``unindexed-lookup`` findings are reported against the test and the application line
that ran the statement. Results are cached per (database, statement fingerprint) for
the session, so a statement shared by many tests costs one EXPLAIN.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
from typing import Any

from dbprobe.analysis.fingerprint import redact_literals
from dbprobe.capture.log import QueryLog, StatementRecord
from dbprobe.report.model import Finding

log = logging.getLogger("dbprobe.capture")

_EXPLAINABLE = ("select", "with", "update", "delete")
STATEMENT_TIMEOUT_MS = 5000


@dataclasses.dataclass
class _Database:
    conn: Any  # psycopg.Connection
    analyzer: Any  # StatementAnalyzer


class CapturedPlanAnalysis:
    """One connection and analyzer per database URL, and the findings per statement."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._databases: dict[str, _Database | None] = {}
        self._results: dict[tuple[str, str], tuple[Finding, ...]] = {}

    def _database(self, url: str, verify: str, min_rows: float) -> _Database | None:
        if url in self._databases:
            return self._databases[url]
        from dbprobe.audit.explain import AnalysisOptions, StatementAnalyzer
        from dbprobe.connect import connect
        from dbprobe.urls import parse_url

        try:
            # read-only unless real-index verification must build (and roll back) indexes
            conn = connect(
                parse_url(url), application_name="dbprobe-explain", connect_timeout=10,
                statement_timeout_ms=STATEMENT_TIMEOUT_MS, lock_timeout_ms=1000,
                read_only=verify != "real",
            )  # fmt: skip
        except Exception as exc:
            log.warning(
                "cannot EXPLAIN captured statements on %s: %s", url.rsplit("@", maxsplit=1)[-1], exc
            )
            self._databases[url] = None
            return None
        options = AnalysisOptions(verify=verify, disposable=verify == "real", min_rows=min_rows)
        db = _Database(conn, StatementAnalyzer(conn, options))
        self._databases[url] = db
        return db

    def analyze(
        self,
        query_log: QueryLog,
        *,
        test: str | None,
        root: str | None,
        verify: str = "auto",
        min_rows: float = 10_000,
    ) -> list[Finding]:
        """``unindexed-lookup`` findings for the statements in ``query_log``."""
        firsts: dict[tuple[str, str], StatementRecord] = {}
        for record in query_log.statements:
            key = _key(record)
            if key is not None and key not in firsts:
                firsts[key] = record
        out: list[Finding] = []
        with self._lock:
            for key, record in firsts.items():
                if key not in self._results:
                    self._results[key] = self._analyze_one(key[0], record, verify, min_rows)
                for template in self._results[key]:
                    out.append(
                        dataclasses.replace(
                            template, test=test, location=record.location(root) or None
                        )
                    )
        return out

    def _analyze_one(
        self, url: str, record: StatementRecord, verify: str, min_rows: float
    ) -> tuple[Finding, ...]:
        db = self._database(url, verify, min_rows)
        if db is None:
            return ()
        try:
            params = record.parameters
            if record.executemany or isinstance(params, list):
                return ()
            result = db.analyzer.analyze(
                record.sql,
                params,
                fingerprint=record.fingerprint,
                report_sql=redact_literals(record.sql),  # inlined values stay out
            )
        except Exception as exc:  # never let a check break the test run
            log.debug("EXPLAIN of a captured statement failed: %r", exc)
            return ()
        if result.error is not None:
            log.debug("captured statement not explained: %s", result.error)
        return tuple(f for f in result.findings if f.rule == "unindexed-lookup")

    def close(self) -> None:
        with self._lock:
            for db in self._databases.values():
                if db is not None:
                    try:
                        db.conn.close()
                    except Exception:  # closing is best effort at exit
                        pass
            self._databases.clear()
            self._results.clear()


def _key(record: StatementRecord) -> tuple[str, str] | None:
    engine = record.engine
    if engine is None or record.dialect != "postgresql" or record.error:
        return None
    head = record.sql.lstrip().split(None, 1)
    if not head or head[0].lower() not in _EXPLAINABLE:
        return None
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return url, record.fingerprint


PLANS = CapturedPlanAnalysis()
atexit.register(PLANS.close)
