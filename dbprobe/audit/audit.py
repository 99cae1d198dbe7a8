"""``dbprobe audit``: catalog checks, the heaviest statements explained, index advice.

Safe on production by default: one session, read-only
(``default_transaction_read_only``), bounded by ``statement_timeout`` and
``lock_timeout``, named ``dbprobe-audit``; plain EXPLAIN (never ANALYZE); no DDL or
DML. The only exception is real-index verification, which needs both ``verify="real"``
(or ``"auto"``) and ``disposable=True``: it opens a second, writable session
(``dbprobe-audit-verify``) that builds each proposed index inside a transaction and
rolls it back.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg

from dbprobe.analysis.catalog import CatalogSnapshot, schema_filter
from dbprobe.analysis.catalog_rules import CatalogRuleOptions, check_catalog
from dbprobe.analysis.index_advice import DEFAULT_MIN_COST_DROP
from dbprobe.audit.catalog import marked, read_snapshot
from dbprobe.audit.explain import AnalysisOptions, StatementAnalysis, StatementAnalyzer
from dbprobe.audit.statements import TopStatement, pgss_status, top_statements
from dbprobe.audit.verify import VERIFY_MODES
from dbprobe.connect import connect
from dbprobe.errors import DbprobeError, UsageError
from dbprobe.report.model import Distribution, Finding, Report, Target
from dbprobe.rules import RULES
from dbprobe.urls import DatabaseTarget, parse_url

log = logging.getLogger("dbprobe.audit")

MIN_SERVER_VERSION = 120000


@dataclasses.dataclass(frozen=True)
class AuditOptions:
    """What ``run_audit`` checks and how far it may go.

    min_rows: relations below this many rows are never flagged (default 10,000);
    top: statements from pg_stat_statements to explain, by total time (default 100;
    0 = all); schemas / exclude_schemas: shell globs over schema names (default: every
    schema except the system ones); statement_timeout_ms / lock_timeout_ms: per
    statement of the audit session (defaults 5,000 / 1,000 ms); connect_timeout_s:
    default 10 s; verify: ``auto`` | ``hypopg`` | ``real`` | ``none`` (see
    :mod:`dbprobe.audit.verify`); disposable: the user declares the database
    disposable, allowing real indexes in rolled-back transactions; min_cost_drop:
    recommend an index only when it cuts the plan cost by this share (default 0.5);
    min_seq_scans: sequential scans before a table counts as seq-scan heavy (default 5);
    coldstart: include a short cold-start sample when ``dbprobe.coldstart`` provides one.
    """

    min_rows: int = 10_000
    top: int = 100
    schemas: tuple[str, ...] = ()
    exclude_schemas: tuple[str, ...] = ()
    statement_timeout_ms: int = 5000
    lock_timeout_ms: int = 1000
    connect_timeout_s: float = 10.0
    verify: str = "auto"
    disposable: bool = False
    min_cost_drop: float = DEFAULT_MIN_COST_DROP
    max_fraction: float = 0.1
    min_seq_scans: int = 5
    coldstart: bool = True
    coldstart_samples: int = 5

    def validate(self) -> None:
        """Raise :class:`UsageError` for contradictory or out-of-range options."""
        if self.verify not in VERIFY_MODES:
            raise UsageError(f"unknown --verify {self.verify!r} (choose {', '.join(VERIFY_MODES)})")
        if self.verify == "real" and not self.disposable:
            raise UsageError(
                "--verify real builds indexes (write-blocking locks) and is only allowed on a "
                "database you declare disposable: add --disposable"
            )
        if self.min_rows < 0 or self.top < 0:
            raise UsageError("--min-rows and --top must not be negative")
        if not 0 < self.min_cost_drop <= 1:
            raise UsageError("--min-cost-drop must be a share between 0 and 1 (e.g. 0.5)")
        if self.statement_timeout_ms <= 0:
            raise UsageError("--timeout must be positive")


class ProgressSink(Protocol):
    """Where progress goes (``dbprobe.commands.common.Progress`` fits)."""

    def step(self, message: str) -> None: ...

    def update(self, message: str, done: int, total: int) -> None: ...


class _Silent:
    def step(self, message: str) -> None:
        log.debug("%s", message)

    def update(self, message: str, done: int, total: int) -> None:
        return None


def run_audit(
    target: DatabaseTarget | str,
    options: AuditOptions | None = None,
    *,
    progress: ProgressSink | None = None,
) -> Report:
    """Audit one database and return the report (``command="audit"``).

    Raises :class:`~dbprobe.errors.DbprobeError` (one line) when the audit cannot run
    at all: bad URL, unreachable server, authentication, unknown database, no CONNECT
    privilege, unsupported server. A check that lacks a privilege becomes an info
    finding (``check-skipped``) and the audit goes on.
    """
    opts = options or AuditOptions()
    opts.validate()
    tgt = parse_url(target) if isinstance(target, str) else target
    sink: ProgressSink = progress or _Silent()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    report = Report(command="audit", target=Target(tgt.masked()))

    t0 = time.perf_counter()
    sink.step(f"connecting to {tgt.masked()}")
    conn = connect(
        tgt,
        application_name="dbprobe-audit",
        read_only=True,
        statement_timeout_ms=opts.statement_timeout_ms,
        lock_timeout_ms=opts.lock_timeout_ms,
        connect_timeout=opts.connect_timeout_s,
    )
    real_conn: psycopg.Connection[Any] | None = None
    try:
        timings["connect"] = _ms(t0)
        quiet = silence_pg_stat_statements(conn)
        version_num = int(conn.info.server_version)
        row = conn.execute(marked("SELECT current_setting('server_version')")).fetchone()
        version = str(row[0]).split(" ")[0] if row else str(version_num)
        report.target = Target(tgt.masked(), version)
        if version_num < MIN_SERVER_VERSION:
            raise DbprobeError(
                f"dbprobe audit needs PostgreSQL 12 or newer; the server runs {version}"
            )
        keep = schema_filter(opts.schemas, opts.exclude_schemas)
        if opts.disposable and opts.verify in ("auto", "real"):
            real_conn = connect(
                tgt,
                application_name="dbprobe-audit-verify",
                read_only=False,
                statement_timeout_ms=max(opts.statement_timeout_ms, 60_000),
                lock_timeout_ms=opts.lock_timeout_ms,
                connect_timeout=opts.connect_timeout_s,
            )
            silence_pg_stat_statements(real_conn)
        report.notes.append(
            "the audit's own statements are not recorded in pg_stat_statements"
            if quiet
            else "the audit's EXPLAIN statements are recorded in pg_stat_statements (this role "
            "may not SET pg_stat_statements.track; on PostgreSQL 15+: GRANT SET ON PARAMETER "
            "pg_stat_statements.track TO <role>)"
        )
        report.notes.append(
            "read-only session (default_transaction_read_only=on, "
            f"statement_timeout={opts.statement_timeout_ms} ms, lock_timeout="
            f"{opts.lock_timeout_ms} ms); EXPLAIN without ANALYZE"
            + (
                "; index advice verified with hypopg where the database has it, otherwise "
                "with real indexes built and rolled back on a separate session (--disposable); "
                "each finding says which"
                if real_conn is not None
                else "; no DDL or DML"
            )
        )

        # 1. catalog snapshot
        t0 = time.perf_counter()
        sink.step("reading the catalog and statistics")
        snapshot: CatalogSnapshot | None = None
        catalog_error: str | None = None
        try:
            snapshot = read_snapshot(conn)
        except psycopg.Error as exc:
            _recover(conn)
            report.add(_skipped("catalog checks", exc))
            catalog_error = _first_line(exc)
        timings["catalog"] = _ms(t0)

        # 2. the heaviest statements, explained once each
        t0 = time.perf_counter()
        analyzer = StatementAnalyzer(
            conn,
            AnalysisOptions(
                min_rows=opts.min_rows,
                max_fraction=opts.max_fraction,
                min_cost_drop=opts.min_cost_drop,
                verify=opts.verify,
                disposable=opts.disposable,
                schemas=opts.schemas,
                exclude_schemas=opts.exclude_schemas,
            ),
            snapshot=snapshot,
            real_conn=real_conn,
            catalog_error=catalog_error,
        )
        statement_metrics = _explain_top_statements(conn, analyzer, opts, report, sink)
        timings["statements"] = _ms(t0)

        # 3. catalog rules (seq-scan-heavy tables quote the advice found in plans)
        t0 = time.perf_counter()
        if snapshot is not None:
            advice = _advice_by_table(report.findings)
            report.extend(
                check_catalog(
                    snapshot.filtered(keep),
                    CatalogRuleOptions(min_rows=opts.min_rows, min_seq_scans=opts.min_seq_scans),
                    advice=advice,
                )
            )
            if snapshot.stats is not None:
                report.notes.append(snapshot.stats.describe())
        timings["catalog_rules"] = _ms(t0)

        # 4. optional cold-start sample
        if opts.coldstart:
            t0 = time.perf_counter()
            _coldstart_sample(report, tgt, opts, sink)
            timings["coldstart"] = _ms(t0)

        verifier = analyzer.verifier if statement_metrics.get("candidates") else None
        report.metrics["audit"] = {
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "explain": Distribution.of(analyzer.runner.timings_ms),
            **statement_metrics,
            "verification": verifier.method if verifier is not None else None,
            "counts": {
                "tables": len(snapshot.tables) if snapshot else None,
                "indexes": len(snapshot.indexes) if snapshot else None,
                "foreign_keys": len(snapshot.foreign_keys) if snapshot else None,
            },
        }
        if verifier is not None and verifier.method == "none":
            hint = getattr(verifier, "hint", None)
            report.notes.append(
                "index advice is not verified: "
                + str(getattr(verifier, "reason", ""))
                + (f"; to verify it: {hint}" if hint else "")
            )
    finally:
        conn.close()
        if real_conn is not None:
            real_conn.close()
    report.duration_s = time.perf_counter() - started
    sink.step(f"audit done in {report.duration_s:.1f}s: {len(report.findings)} findings")
    return report


def silence_pg_stat_statements(conn: psycopg.Connection[Any]) -> bool:
    """Keep this session's statements out of pg_stat_statements when the role may.

    An audit explains up to thousands of distinct statements; recorded, they could push
    the application's own entries out of ``pg_stat_statements.max``. Setting
    ``pg_stat_statements.track = none`` for the session needs superuser or, on
    PostgreSQL 15+, ``GRANT SET ON PARAMETER``. Returns whether it worked.
    """
    try:
        # In autocommit (the audit sessions are): a setting made inside a transaction
        # that is rolled back would not stick.
        conn.execute(marked("SELECT set_config('pg_stat_statements.track', 'none', false)"))
    except psycopg.Error:
        log.debug("cannot SET pg_stat_statements.track", exc_info=True)
        return False
    return True


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _recover(conn: psycopg.Connection[Any]) -> None:
    if not conn.autocommit and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()


def _first_line(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    text = str(getattr(diag, "message_primary", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _skipped(check: str, exc: BaseException, fix: str | None = None) -> Finding:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    why = _first_line(exc)
    if sqlstate == "42501":
        fix = fix or (
            "grant the audit role the privilege (e.g. GRANT pg_read_all_stats TO <role>; "
            "SELECT on the tables involved)"
        )
    elif sqlstate == "57014":
        fix = fix or "raise --timeout, or run the audit when the server is less busy"
    return RULES["check-skipped"].finding(
        f"{check} skipped: {why}",
        fix or "see the error; the rest of the audit ran",
        fingerprint=f"check-skipped:{check}",
        evidence={"check": check, "sqlstate": sqlstate, "error": why},
    )


def _explain_top_statements(
    conn: psycopg.Connection[Any],
    analyzer: StatementAnalyzer,
    opts: AuditOptions,
    report: Report,
    sink: ProgressSink,
) -> dict[str, Any]:
    """Explain the top statements once each; merge advice shared by several."""
    metrics: dict[str, Any] = {"statements": {}}
    try:
        status = pgss_status(conn)
    except psycopg.Error as exc:
        _recover(conn)
        report.add(_skipped("pg_stat_statements", exc))
        return metrics
    if not status.available:
        report.add(
            RULES["pg-stat-statements-missing"].finding(
                f"{status.problem}: the audit cannot list the heaviest statements, so no "
                "plans were analysed (catalog checks still ran)",
                f"To enable it: {status.fix}. To analyse one statement now: dbprobe explain "
                'URL "<statement>".',
                fingerprint="pg-stat-statements-missing",
                evidence={"problem": status.problem},
            )
        )
        return metrics
    assert status.schema is not None
    sink.step("reading pg_stat_statements")
    try:
        statements, hidden = top_statements(conn, status.schema, opts.top or 1_000_000)
    except psycopg.Error as exc:
        _recover(conn)
        report.add(_skipped("pg_stat_statements", exc))
        return metrics
    if hidden:
        report.notes.append(
            f"{hidden} statements of other roles are hidden from this role "
            "(GRANT pg_read_all_stats TO <role> to include them)"
        )
    results: list[tuple[TopStatement, StatementAnalysis]] = []
    failures: dict[str, int] = {}
    examples: list[str] = []
    verify_ms: list[float] = []
    total = len(statements)
    for i, st in enumerate(statements, 1):
        result = analyzer.analyze(st.query)
        verify_ms.extend(result.verify_ms)
        if result.error is not None:
            kind = result.error.kind
            failures[kind] = failures.get(kind, 0) + 1
            if len(examples) < 5:
                examples.append(f"queryid {st.queryid}: {result.error}")
        results.append((st, result))
        sink.update("explaining top statements", i, total)
    report.extend(_merge_lookup_findings(results))
    explained = sum(1 for _, r in results if r.error is None)
    if failures:
        report.add(
            RULES["check-skipped"].finding(
                f"{sum(failures.values())} of {total} top statements could not be explained "
                f"({', '.join(f'{n} {k}' for k, n in sorted(failures.items()))})",
                "privilege: grant the audit role SELECT on the tables involved; generic: "
                "pg_stat_statements replaced a typed literal by $n (interval $1), analyse it "
                "with values (dbprobe explain URL SQL --param …); missing-relation: a "
                "temporary or dropped table; error: often a text truncated by "
                "track_activity_query_size.",
                fingerprint="check-skipped:explain",
                evidence={"failures": failures, "examples": examples},
            )
        )
    metrics["statements"] = {
        "considered": total,
        "explained": explained,
        "failed": failures,
        "hidden": hidden,
        "generic_plans": sum(1 for _, r in results if r.generic and r.error is None),
    }
    metrics["candidates"] = sum(r.candidates for _, r in results)
    metrics["rejected"] = [rej for _, r in results for rej in r.rejected][:50]
    metrics["served_by_existing_index"] = sorted({s for _, r in results for s in r.served})
    if verify_ms:
        metrics["verify"] = Distribution.of(verify_ms)
    return metrics


def _merge_lookup_findings(
    results: Sequence[tuple[TopStatement, StatementAnalysis]],
) -> list[Finding]:
    """One finding per proposed index (several statements may need the same one); the
    heaviest statement is shown, the others are listed in the evidence."""
    groups: dict[tuple[str, str], list[tuple[TopStatement, Finding]]] = {}
    order: list[tuple[str, str]] = []
    for st, result in results:
        for f in result.findings:
            key = (f.rule, f.fingerprint or f.message)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append((st, f))
    out: list[Finding] = []
    for key in order:
        members = sorted(groups[key], key=lambda sf: -sf[0].total_ms)
        st, first = members[0]
        evidence = dict(first.evidence)
        evidence["statements"] = [
            {**s.to_dict(), "sql": s.query if len(s.query) <= 500 else s.query[:500] + "…"}
            for s, _ in members[:20]
        ]
        calls = sum(s.calls for s, _ in members)
        total_ms = sum(s.total_ms for s, _ in members)
        message = first.message
        if first.rule == "unindexed-lookup":
            message += (
                f" — {len(members)} statement{'s' if len(members) > 1 else ''}, "
                f"{calls:,} calls, {total_ms:,.1f} ms in total since pg_stat_statements was reset"
            )
        out.append(
            dataclasses.replace(
                first, message=message, evidence=evidence, count=len(members), sql=st.query
            )
        )
    return out


def _advice_by_table(findings: Sequence[Finding]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in findings:
        if f.rule != "unindexed-lookup":
            continue
        index = f.evidence.get("index") if isinstance(f.evidence, dict) else None
        if isinstance(index, dict) and index.get("table") and index.get("statement"):
            out.setdefault(str(index["table"]), []).append(str(index["statement"]))
    return out


# -- cold start ------------------------------------------------------------------------------

ColdstartSample = Callable[..., tuple[dict[str, Any], list[Finding]]]


def _coldstart_sample(
    report: Report, target: DatabaseTarget, opts: AuditOptions, sink: ProgressSink
) -> None:
    """Hook for the cold-start probe: runs ``dbprobe.coldstart.audit_sample`` when that
    module provides it.

    Expected signature: ``audit_sample(target: DatabaseTarget, *, samples: int,
    connect_timeout_s: float) -> tuple[dict, list[Finding]]`` returning the metrics
    subtree for ``report.metrics["coldstart"]`` and its findings (``slow-cold-start``).
    """
    try:
        module = importlib.import_module("dbprobe.coldstart")
    except ImportError:
        report.notes.append("cold-start sample not included (dbprobe.coldstart is not available)")
        return
    sample: ColdstartSample | None = getattr(module, "audit_sample", None)
    if sample is None:
        report.notes.append("cold-start sample not included (no dbprobe.coldstart.audit_sample)")
        return
    sink.step(f"sampling connection cold start ({opts.coldstart_samples} connections)")
    try:
        metrics, findings = sample(
            target, samples=opts.coldstart_samples, connect_timeout_s=opts.connect_timeout_s
        )
    except DbprobeError as exc:
        report.add(_skipped("cold-start sample", exc))
        return
    report.metrics["coldstart"] = metrics
    report.extend(findings)
