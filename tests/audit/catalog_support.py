"""A scratch database per test for the live catalog and advice tests, and helpers that
run what dbprobe recommends (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import psycopg

from dbprobe.analysis.catalog import CatalogSnapshot
from dbprobe.analysis.catalog_rules import CatalogRuleOptions, check_catalog
from dbprobe.audit.catalog import read_snapshot
from dbprobe.connect import connect
from dbprobe.pg import PostgresServer
from dbprobe.report.model import Finding
from dbprobe.urls import DatabaseTarget


@dataclasses.dataclass(frozen=True)
class Scratch:
    """A database of its own on ``server``."""

    server: PostgresServer
    database: str

    @property
    def target(self) -> DatabaseTarget:
        return self.server.target(self.database)

    def sql(self, text: str) -> list[tuple[Any, ...]]:
        """Run ``text`` (one or more statements) as superuser, in autocommit."""
        return self.server.execute(text, self.database)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return self.server.connect(self.database, **kwargs)

    def snapshot(self) -> CatalogSnapshot:
        """The snapshot the audit reads: a read-only session with its timeouts."""
        conn = connect(
            self.target,
            application_name="dbprobe-test",
            read_only=True,
            statement_timeout_ms=5000,
            lock_timeout_ms=1000,
        )
        try:
            return read_snapshot(conn)
        finally:
            conn.close()

    def findings(self, options: CatalogRuleOptions | None = None) -> list[Finding]:
        return check_catalog(self.snapshot(), options)

    def flush_stats(self, *statements: str) -> None:
        """Run ``statements`` in a session of their own and wait until the cumulative
        statistics show them (PostgreSQL 15+ flushes them when the session ends)."""
        with self.connect() as conn:
            for stmt in statements:
                conn.execute(stmt.encode())
            conn.execute("SELECT pg_stat_force_next_flush()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = self.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            if rows[0][0] == 0:
                return
            time.sleep(0.05)


def fix_statements(finding: Finding) -> list[str]:
    """The SQL statements a finding recommends (``evidence["fix_sql"]``), each checked
    to appear, word for word, in the recommendation text."""
    statements = [str(s) for s in finding.evidence.get("fix_sql", ())]
    assert statements, f"no fix_sql in {finding.rule}: {finding.recommendation}"
    for stmt in statements:
        assert stmt in finding.recommendation, (stmt, finding.recommendation)
    return statements


def apply_fix(scratch: Scratch, finding: Finding) -> None:
    """Run every statement a finding recommends, one by one, in autocommit (as an
    operator would paste them into psql)."""
    with scratch.connect() as conn:
        for stmt in fix_statements(finding):
            conn.execute(stmt.encode())


def by_rule(findings: list[Finding], rule: str) -> dict[str, Finding]:
    return {str(f.fingerprint): f for f in findings if f.rule == rule}


def drops(findings: list[Finding]) -> list[str]:
    """Index names that some finding proposes to drop."""
    out = []
    for f in findings:
        out += re.findall(
            r"DROP INDEX (?:CONCURRENTLY )?(?:[\w\"]+\.)?\"?([\w ]+)\"?;", f.recommendation
        )
    return out
