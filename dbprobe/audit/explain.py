"""Plan analysis and verified index advice for one statement — the public API.

::

    import psycopg
    from dbprobe.audit.explain import analyze_statement

    with psycopg.connect(dsn) as conn:
        findings = analyze_statement(
            conn,
            "SELECT * FROM stock_movements WHERE reference = %(reference_1)s",
            {"reference_1": "PO-000123"},
        )

``sql`` may carry parameters the way applications send them: ``%(name)s`` with a
mapping (SQLAlchemy on psycopg/psycopg2), ``$1`` with a sequence (asyncpg), ``%s`` with
a sequence, or ``$1`` without parameters (pg_stat_statements texts: a generic plan).
From a SQLAlchemy engine, open the connection with
``dbprobe.connect.connect(parse_url(engine.url.render_as_string(hide_password=False)),
application_name="dbprobe-capture")`` and pass the statement and parameters captured
from ``before_cursor_execute``.

Nothing is executed (plain ``EXPLAIN``) unless ``analyze=True``; even then the
statement runs inside a transaction that is rolled back. On a connection inside a
transaction (psycopg's default), the caller's transaction is never committed or rolled
back: what could fail runs in a savepoint, and the catalog is read in the caller's
snapshot (so tables it created and has not committed are seen). With many statements,
keep one :class:`StatementAnalyzer` (it reads the catalog once and caches the verifier).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from dbprobe.analysis.catalog import CatalogSnapshot, schema_filter
from dbprobe.analysis.index_advice import (
    DEFAULT_MIN_COST_DROP,
    IndexAdvice,
    Verification,
    advise,
    expression_functions,
    lookup_finding,
)
from dbprobe.analysis.plans import (
    Plan,
    ScanCandidate,
    find_unindexed_scans,
    parse_plan,
    red_flags,
    summarize,
)
from dbprobe.analysis.sqltext import placeholder_style
from dbprobe.audit.catalog import marked, read_snapshot, statement_scope
from dbprobe.audit.runner import ExplainError, ExplainRunner, Params
from dbprobe.audit.verify import IndexVerifier, choose_verifier
from dbprobe.report.model import Finding

log = logging.getLogger("dbprobe.audit")

__all__ = [
    "AnalysisOptions",
    "ExplainError",
    "StatementAnalysis",
    "StatementAnalyzer",
    "analyze_statement",
]


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """How one statement is analysed.

    min_rows: relations smaller than this are never flagged (default 10,000 rows);
    max_fraction: a scan is a look-up when it keeps at most this share of the rows it
    reads (default 0.1); min_cost_drop: recommend an index only when the verified plan
    cost drops by at least this share (default 0.5 = 50 %); verify: ``auto`` (hypopg
    when installed; a real index too when ``disposable``), ``hypopg``, ``real``,
    ``none``; disposable: the database may get real indexes inside rolled-back
    transactions (write-blocking locks while they build); analyze: ``EXPLAIN ANALYZE``
    (runs the statement, rolled back) for misestimate and spill red flags;
    max_alternatives: index shapes verified per scan (default 4); schemas /
    exclude_schemas: shell globs; scans of relations outside them are not reported.
    """

    min_rows: float = 10_000
    max_fraction: float = 0.1
    min_cost_drop: float = DEFAULT_MIN_COST_DROP
    verify: str = "auto"
    disposable: bool = False
    analyze: bool = False
    max_alternatives: int = 4
    schemas: tuple[str, ...] = ()
    exclude_schemas: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class StatementAnalysis:
    """What the analysis of one statement found.

    rejected: verified proposals whose cost drop stayed under ``min_cost_drop`` (the
    scan is then the right plan); served: candidate scans an existing index already
    covers; explain_ms: time spent in EXPLAIN for the statement itself.
    """

    sql: str
    plan: Plan | None
    findings: tuple[Finding, ...] = ()
    candidates: int = 0
    rejected: tuple[dict[str, Any], ...] = ()
    served: tuple[str, ...] = ()
    error: ExplainError | None = None
    explain_ms: float = 0.0
    verify_ms: tuple[float, ...] = ()
    generic: bool = False


class StatementAnalyzer:
    """Analyses statements on one connection, reusing the catalog snapshot.

    conn: a psycopg connection (read-only is fine unless ``verify='real'`` uses it);
    real_conn: a separate writable connection for real-index verification (default:
    ``conn`` itself when ``verify='real'``); snapshot: a catalog snapshot already read
    (default: read on first use); statement_timeout_ms: per EXPLAIN, with SET LOCAL;
    catalog_error: the catalog could not be read (the caller tried): analyse without
    it and do not try again.

    The catalog is read at most once more, when a plan scans an application table the
    snapshot lacks (created since); system catalogs never trigger it. A failure to read
    it is kept in ``catalog_error`` and the statements are analysed without it (no
    index is then known to exist: advice stands on its verification).
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        options: AnalysisOptions | None = None,
        *,
        snapshot: CatalogSnapshot | None = None,
        real_conn: psycopg.Connection[Any] | None = None,
        statement_timeout_ms: int | None = None,
        catalog_error: str | None = None,
    ) -> None:
        self.options = options or AnalysisOptions()
        self.runner = ExplainRunner(conn, statement_timeout_ms=statement_timeout_ms)
        self.real_conn = real_conn
        self.statement_timeout_ms = statement_timeout_ms
        self._snapshot = snapshot
        self.catalog_error = catalog_error
        self._verifier: IndexVerifier | None = None
        self._proposed: dict[str, set[str]] = {}
        # One name per proposed index definition, for the analyzer's lifetime: two
        # statements that need the same index get the same advice, not ``…_2``.
        self._advised: dict[tuple[str, str, str, str], str] = {}
        self._refreshed_for: set[tuple[str | None, str]] = set()
        self._last_refusal: str | None = None
        self._volatility: dict[str, bool] = {}
        self._keep_schema = schema_filter(self.options.schemas, self.options.exclude_schemas)

    @property
    def snapshot(self) -> CatalogSnapshot:
        if self._snapshot is None:
            read = self._read_snapshot()
            self._snapshot = read or CatalogSnapshot(
                database=str(self.runner.conn.info.dbname),
                server_version_num=self.runner.version_num,
            )
        return self._snapshot

    def refresh_snapshot(self) -> None:
        """Read the catalog again (kept as it was when that fails)."""
        read = self._read_snapshot()
        if read is not None:
            self._snapshot = read

    def _read_snapshot(self) -> CatalogSnapshot | None:
        if self.catalog_error is not None:
            return None
        try:
            return read_snapshot(self.runner.conn)
        except psycopg.Error as exc:
            self.catalog_error = _first_line(exc)
            log.warning("cannot read the catalog, analysing without it: %s", self.catalog_error)
            return None

    @property
    def verifier(self) -> IndexVerifier:
        if self._verifier is None:
            opts = self.options
            allow_real = opts.verify == "real" or (opts.verify == "auto" and opts.disposable)
            self._verifier = choose_verifier(
                self.runner, opts.verify, real_runner=self._real_runner if allow_real else None
            )
        return self._verifier

    def _real_runner(self) -> ExplainRunner:
        """The session real indexes are built on: ``real_conn``, else ``conn``."""
        conn = self.real_conn or self.runner.conn
        return ExplainRunner(conn, statement_timeout_ms=self.statement_timeout_ms)

    def analyze(
        self,
        sql: str,
        params: Params = None,
        *,
        fingerprint: str | None = None,
        report_sql: str | None = None,
    ) -> StatementAnalysis:
        """EXPLAIN ``sql`` and return its findings (``unindexed-lookup`` with verified
        advice, and red flags when analysing with ANALYZE). EXPLAIN failures come back
        in ``error`` rather than raised."""
        opts = self.options
        before = len(self.runner.timings_ms)
        generic = params is None and placeholder_style(sql) == "dollar"
        try:
            doc = self.runner.explain(sql, params, analyze=opts.analyze)
        except ExplainError as exc:
            return StatementAnalysis(sql, None, error=exc, generic=generic)
        explain_ms = sum(self.runner.timings_ms[before:])
        plan = parse_plan(doc)
        self._ensure_tables(plan)
        snapshot = self.snapshot
        candidates = find_unindexed_scans(
            plan, snapshot, min_rows=opts.min_rows, max_fraction=opts.max_fraction
        )
        findings: list[Finding] = []
        rejected: list[dict[str, Any]] = []
        served: list[str] = []
        verify_ms: list[float] = []
        plan_lines = summarize(plan, redacted=params is not None)
        for cand in candidates:
            schema = cand.schema or "public"
            if not self._keep_schema(schema):
                continue
            table = snapshot.table(cand.schema, cand.relation)
            if table is not None and snapshot.is_skipped(table.oid):
                # its indexes could not be read (locked): nothing is known to serve it
                rejected.append({"table": cand.table_display, "reason": "catalog not read"})
                continue
            indexes = snapshot.indexes_on(table.oid) if table is not None else ()
            taken = self._proposed.get(schema)
            if taken is None:
                taken = self._proposed[schema] = set(snapshot.relation_names(schema))
            advice_set = advise(
                cand,
                indexes,
                taken=taken,
                table=table,
                collation_c=snapshot.default_collation_c,
                not_immutable=self._not_immutable(cand),
            )
            if advice_set.alternatives:
                advice_set = dataclasses.replace(
                    advice_set,
                    alternatives=tuple(self._same_name(a) for a in advice_set.alternatives),
                )
            chosen: IndexAdvice | None = None
            if advice_set.alternatives:
                picked = self._verify(
                    sql, params, advice_set.alternatives, plan.total_cost, verify_ms
                )
                if picked is not None:
                    chosen, verification, tried = picked
                else:
                    refusals = [
                        a.columns_text for a in advice_set.alternatives[: opts.max_alternatives]
                    ]
                    advice_set = dataclasses.replace(
                        advice_set,
                        alternatives=(),
                        reason_none="the server refuses every index that would serve it ("
                        + ", ".join(refusals)
                        + "): "
                        + str(self._last_refusal or "invalid index definition"),
                    )
            if chosen is None:
                if advice_set.served_by is not None and not advice_set.hints:
                    served.append(f"{cand.table_display}: {advice_set.served_by}")
                    continue
                finding = lookup_finding(
                    cand,
                    advice=None,
                    verification=None,
                    sql=report_sql or sql,
                    fingerprint=fingerprint,
                    plan_lines=plan_lines,
                    reason_none=advice_set.reason_none,
                    hints=advice_set.hints,
                    hint_sql=advice_set.hint_sql,
                )
                if finding is not None:
                    findings.append(finding)
                continue
            finding = lookup_finding(
                cand,
                advice=chosen,
                verification=verification,
                sql=report_sql or sql,
                fingerprint=fingerprint,
                min_cost_drop=opts.min_cost_drop,
                plan_lines=plan_lines,
                alternatives=tried,
                hints=advice_set.hints,
                hint_sql=advice_set.hint_sql,
            )
            if finding is None:
                rejected.append(
                    {
                        "table": cand.table_display,
                        "index": chosen.columns_text,
                        **verification.to_dict(),
                    }
                )
                continue
            taken.add(chosen.name)
            self._advised.setdefault(_definition(chosen), chosen.name)
            findings.append(finding)
        findings.extend(red_flags(plan))
        return StatementAnalysis(
            sql,
            plan,
            tuple(findings),
            candidates=len(candidates),
            rejected=tuple(rejected),
            served=tuple(served),
            explain_ms=explain_ms,
            verify_ms=tuple(verify_ms),
            generic=generic,
        )

    def _same_name(self, advice: IndexAdvice) -> IndexAdvice:
        """``advice`` under the name this analyzer already gave the same index."""
        name = self._advised.get(_definition(advice))
        return (
            advice
            if name is None or name == advice.name
            else dataclasses.replace(advice, name=name)
        )

    def _verify(
        self,
        sql: str,
        params: Params,
        alternatives: Sequence[IndexAdvice],
        cost_before: float,
        timings: list[float],
    ) -> tuple[IndexAdvice, Verification, list[dict[str, Any]]] | None:
        """Verify the alternatives; pick the cheapest plan, preferring fewer columns (and
        a full index over a partial one) when another is within 10 % of it. ``None``
        when the server refused every alternative's definition (no such index can
        exist)."""
        results: list[tuple[IndexAdvice, Verification]] = []
        self._last_refusal = None
        for advice in alternatives[: self.options.max_alternatives]:
            start = time.perf_counter()
            v = self.verifier.verify(sql, params, advice, cost_before)
            timings.append((time.perf_counter() - start) * 1000.0)
            if v.rejected:
                self._last_refusal = v.reason
                continue  # no such index can exist: try the next shape
            results.append((advice, v))
            if not v.verified:
                break  # unverifiable here: the narrowest proposal stands
        if not results:
            return None
        tried = [
            {"columns": a.columns_text, "cost_after": v.cost_after, "index_used": v.index_used}
            for a, v in results
        ]
        good = [(a, v) for a, v in results if v.passes(self.options.min_cost_drop)]
        if good:
            best = min(v.cost_after or 0.0 for _, v in good)
            near = [(a, v) for a, v in good if (v.cost_after or 0.0) <= best * 1.1 + 0.01]
            advice, verification = min(
                near,
                key=lambda av: (
                    len(av[0].keys),
                    av[0].predicate is not None,
                    av[1].cost_after or 0.0,
                ),
            )
            return advice, verification, tried
        verified = [(a, v) for a, v in results if v.verified]
        if verified:
            advice, verification = min(verified, key=lambda av: av[1].cost_after or 0.0)
            return advice, verification, tried
        return results[0][0], results[0][1], tried

    def _not_immutable(self, candidate: ScanCandidate) -> frozenset[str]:
        """Functions the candidate's expressions call that have no IMMUTABLE version
        in the database (``pg_proc``; an index expression cannot use them). Cached."""
        names: set[str] = set()
        for operand in (*candidate.equality, *candidate.ranges, *candidate.served_ranges):
            names |= expression_functions(operand)
        unknown = sorted(names - self._volatility.keys())
        if unknown:
            conn = self.runner.conn
            try:
                with statement_scope(conn):
                    rows = conn.execute(
                        marked(
                            "SELECT proname::text, bool_or(provolatile = 'i') FROM pg_proc "
                            "WHERE proname = ANY(%s) GROUP BY proname"
                        ),
                        (unknown,),
                    ).fetchall()
            except psycopg.Error:
                log.debug("cannot read function volatility", exc_info=True)
                rows = []
            found = {str(name): bool(immutable) for name, immutable in rows}
            for name in unknown:
                self._volatility[name] = found.get(name, True)
        return frozenset(n for n in names if not self._volatility.get(n, True))

    def _ensure_tables(self, plan: Plan) -> None:
        """Re-read the catalog once if the plan scans an application table the snapshot
        lacks (never for system catalogs or temporary tables, which it never holds, and
        never twice for the same table)."""
        if self._snapshot is None or self.catalog_error is not None:
            return
        missing: set[tuple[str | None, str]] = set()
        for node in plan.walk():
            if not node.is_scan or not node.relation or _system_schema(node.schema):
                continue
            key = (node.schema, node.relation)
            if key not in self._refreshed_for and self._snapshot.table(*key) is None:
                missing.add(key)
        if missing:
            self._refreshed_for |= missing
            self.refresh_snapshot()


def _system_schema(schema: str | None) -> bool:
    return schema in ("pg_catalog", "information_schema") or (schema or "").startswith(
        ("pg_toast", "pg_temp_")
    )


def _first_line(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    text = str(getattr(diag, "message_primary", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _definition(advice: IndexAdvice) -> tuple[str, str, str, str]:
    return (advice.schema, advice.table, advice.method, advice.columns_text)


def analyze_statement(
    conn: psycopg.Connection[Any],
    sql: str,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    min_rows: int = 10_000,
    verify: str = "auto",
    min_cost_drop: float = DEFAULT_MIN_COST_DROP,
    analyze: bool = False,
    statement_timeout_ms: int | None = 5000,
) -> list[Finding]:
    """Findings for one statement: ``unindexed-lookup`` with the exact, verified
    ``CREATE INDEX CONCURRENTLY`` (and ``row-misestimate``/``sort-spill``/``hash-spill``
    when ``analyze``).

    conn: psycopg connection to the database the statement runs on. params: see the
    module docstring. min_rows: rows below which a relation is never flagged (default
    10,000). verify: ``auto`` (hypopg when installed in the database, else not
    verified), ``hypopg``, ``real`` (a real index in a rolled-back transaction on
    ``conn``: only for disposable databases, it blocks writes while it builds), or
    ``none``. min_cost_drop: the least share of plan cost the index must remove to be
    recommended (default 0.5). analyze: run ``EXPLAIN ANALYZE`` (executes the statement,
    rolled back). statement_timeout_ms: per EXPLAIN (default 5,000 ms; ``None``: the
    session's).

    Raises :class:`ExplainError` (a ``DbprobeError``, one line) when the statement
    cannot be explained.
    """
    analyzer = StatementAnalyzer(
        conn,
        AnalysisOptions(
            min_rows=min_rows,
            verify=verify,
            min_cost_drop=min_cost_drop,
            analyze=analyze,
            disposable=verify == "real",
        ),
        statement_timeout_ms=statement_timeout_ms,
    )
    result = analyzer.analyze(sql, params)
    if result.error is not None:
        raise result.error
    return list(result.findings)
