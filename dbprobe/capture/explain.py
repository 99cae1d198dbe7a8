"""EXPLAIN cost of N+1 statements (PostgreSQL only, opt-in).

For each ``n-plus-one`` finding, one sample of the repeated statement is explained with
its real parameters (``EXPLAIN (FORMAT JSON)``, never ANALYZE: nothing is executed),
on the engine that ran it, and the finding's evidence gets the planner's total cost of
one execution and ``count × cost``, the cost of the whole loop::

    "explain": {"total_cost": 8.3, "startup_cost": 0.29, "plan_rows": 1,
                "node": "Index Scan", "relation": "customers", "count_x_cost": 207.5}

The plan is parsed by the audit's :func:`dbprobe.analysis.plans.parse_plan`; only the
top node's costs and the relation and index it reads are kept here. A richer analysis
(unindexed look-ups, index advice for the repeated statement) can replace this step
through :func:`dbprobe.capture.analyzers.replace_enricher`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

from dbprobe.analysis.fingerprint import redact_literals
from dbprobe.capture.log import QueryLog, StatementRecord
from dbprobe.report.model import Finding

__all__ = ["PlanCost", "attach_explain_costs", "explain_record"]

log = logging.getLogger("dbprobe.capture")

STATEMENT_TIMEOUT_MS = 5000
"""EXPLAIN is bounded by this statement_timeout (milliseconds)."""


@dataclasses.dataclass(frozen=True)
class PlanCost:
    """The top plan node's estimate: costs in planner units, rows estimated, and the
    first relation (and index) the plan reads."""

    total_cost: float
    startup_cost: float
    plan_rows: float
    node: str
    relation: str | None = None
    index: str | None = None

    @classmethod
    def from_explain(cls, document: Any) -> PlanCost:
        """From ``EXPLAIN (FORMAT JSON)`` output (the list psycopg returns, or its text),
        parsed by :func:`dbprobe.analysis.plans.parse_plan`."""
        from dbprobe.analysis.plans import parse_plan

        plan = parse_plan(document)
        root = plan.root
        reading = next((n for n in plan.walk() if n.relation), None)
        return cls(
            total_cost=root.total_cost,
            startup_cost=root.startup_cost,
            plan_rows=root.plan_rows,
            node=root.node_type,
            relation=reading.relation if reading is not None else None,
            index=reading.index_name if reading is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DOLLAR = re.compile(r"\$(\d+)")


def _to_pyformat(sql: str, parameters: Any) -> tuple[str, Any]:
    """``$1`` placeholders (asyncpg) → ``%s`` with parameters reordered, for psycopg."""
    if isinstance(parameters, Mapping) or not _DOLLAR.search(sql):
        return sql, parameters
    values = list(parameters or ())
    ordered: list[Any] = []

    def sub(match: re.Match[str]) -> str:
        ordered.append(values[int(match.group(1)) - 1])
        return "%s"

    text = _DOLLAR.sub(sub, sql.replace("%", "%%"))
    return text, tuple(ordered)


def explain_record(record: StatementRecord) -> PlanCost:
    """EXPLAIN one captured statement with its parameters on its own engine (or, for an
    async engine, a short-lived psycopg engine to the same URL). Raises on failure."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from dbprobe.capture.scope import suspended

    engine = record.engine
    if engine is None:
        raise ValueError("the statement's engine is gone (a saved log)")
    if engine.dialect.name != "postgresql":
        raise ValueError(f"EXPLAIN costs need PostgreSQL, not {engine.dialect.name}")
    sql, params = record.sql, record.parameters
    owned = None
    if getattr(engine.dialect, "is_async", False):
        owned = create_engine(engine.url.set(drivername="postgresql+psycopg"), poolclass=NullPool)
        sql, params = _to_pyformat(sql, params)
        engine = owned
    try:
        with suspended(), engine.connect() as conn:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            row = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()
            conn.rollback()
        return PlanCost.from_explain(row)
    finally:
        if owned is not None:
            owned.dispose()


def _sample(query_log: QueryLog, finding: Finding, root: str | None) -> StatementRecord | None:
    for record in query_log.statements:
        if record.fingerprint == finding.fingerprint and record.location(root) == finding.location:
            return record
    return None


_QUOTED = re.compile(r'"(?:[^"]|"")*"')


def safe_error_text(exc: BaseException) -> str:
    """``Class: first line of the message`` with every quoted or numeric value in it
    replaced by ``?`` (PostgreSQL quotes the offending value: ``invalid input syntax
    for type integer: "4111111111111111"``), at most 300 characters."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = redact_literals(_QUOTED.sub('"?"', text))
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def attach_explain_costs(
    findings: list[Finding], query_log: QueryLog, root: str | None = None
) -> list[Finding]:
    """Add ``evidence["explain"]`` to each ``n-plus-one`` finding; a statement that
    cannot be explained gets ``{"error": "..."}`` instead (never raises)."""
    out = []
    for finding in findings:
        if finding.rule != "n-plus-one":
            out.append(finding)
            continue
        record = _sample(query_log, finding, root)
        evidence = dict(finding.evidence)
        if record is None:
            evidence["explain"] = {"error": "no sample statement in the log"}
        else:
            try:
                cost = explain_record(record)
            except Exception as exc:  # report why, keep the finding
                log.debug("EXPLAIN failed for %s", finding.fingerprint, exc_info=True)
                evidence["explain"] = {"error": safe_error_text(exc)}
            else:
                explain = cost.to_dict()
                explain["count_x_cost"] = round(cost.total_cost * (finding.count or 1), 2)
                evidence["explain"] = explain
        out.append(dataclasses.replace(finding, evidence=evidence))
    return out
