"""``dbprobe explain URL SQL``: plan analysis and index advice for one statement."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from dbprobe.commands.audit import DURATION, verification_options
from dbprobe.commands.common import finish, progress_from, report_options
from dbprobe.errors import UsageError


def _read_sql(sql: str) -> str:
    if sql == "-":
        return sys.stdin.read()
    if sql.startswith("@"):
        path = Path(sql[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return sql


@click.command()
@click.argument("url")
@click.argument("sql")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="VALUE",
    help="Value of $1, $2 … in order (repeatable). Without it, a statement with $n "
    "placeholders gets a generic plan.",
)
@click.option(
    "--analyze",
    is_flag=True,
    help="EXPLAIN ANALYZE: runs the statement (in a read-only transaction that is rolled "
    "back) to add row misestimates and sort/hash spills.",
)
@click.option(
    "--min-rows",
    type=click.IntRange(0),
    default=10_000,
    show_default=True,
    help="Relations with fewer rows are never flagged.",
)
@click.option(
    "--timeout",
    type=DURATION,
    default="5s",
    show_default=True,
    help="statement_timeout of the EXPLAIN (and of the statement with --analyze).",
)
@click.option(
    "--connect-timeout",
    type=DURATION,
    default="10s",
    show_default=True,
    help="How long to wait for the server to answer.",
)
@verification_options
@report_options()
@click.pass_context
def explain(
    ctx: click.Context,
    url: str,
    sql: str,
    params: tuple[str, ...],
    analyze: bool,
    min_rows: int,
    timeout: float,
    connect_timeout: float,
    verify: str,
    disposable: bool,
    min_cost_drop: float,
    fmt: str,
    output: str | None,
    fail_on: str,
) -> None:
    """Explain one statement and advise indexes for it.

    SQL is the statement text, '-' to read it from standard input, or @FILE. $1, $2 …
    placeholders (as pg_stat_statements prints them) get a generic plan unless --param
    gives their values.
    """
    from dbprobe.analysis.plans import summarize
    from dbprobe.analysis.sqltext import is_explainable, placeholder_style
    from dbprobe.audit.explain import AnalysisOptions, StatementAnalyzer
    from dbprobe.connect import connect
    from dbprobe.report.model import Report, Target
    from dbprobe.urls import parse_url

    text = _read_sql(sql).strip().rstrip(";").strip()
    if not text:
        raise UsageError("empty SQL statement")
    if not is_explainable(text):
        raise UsageError(
            "only queries and DML can be explained (SELECT, WITH, INSERT, UPDATE, DELETE, "
            "MERGE, VALUES, TABLE)"
        )
    style = placeholder_style(text)
    if params and style != "dollar":
        raise UsageError("--param fills $1, $2 … placeholders; the statement has none")
    if verify == "real" and not disposable:
        raise UsageError(
            "--verify real builds indexes (write-blocking locks) and is only allowed on a "
            "database you declare disposable: add --disposable"
        )
    target = parse_url(url)
    progress = progress_from(ctx)
    started = time.perf_counter()
    progress.step(f"connecting to {target.masked()}")
    timeout_ms = max(1, round(timeout * 1000))
    conn = connect(
        target,
        application_name="dbprobe-explain",
        read_only=True,
        statement_timeout_ms=timeout_ms,
        lock_timeout_ms=1000,
        connect_timeout=connect_timeout,
    )
    real_conn = None
    try:
        if disposable and verify in ("auto", "real"):
            real_conn = connect(
                target,
                application_name="dbprobe-explain-verify",
                statement_timeout_ms=max(timeout_ms, 60_000),
                lock_timeout_ms=1000,
                connect_timeout=connect_timeout,
            )
        analyzer = StatementAnalyzer(
            conn,
            AnalysisOptions(
                min_rows=min_rows,
                verify=verify,
                disposable=disposable,
                min_cost_drop=min_cost_drop / 100.0,
                analyze=analyze,
            ),
            real_conn=real_conn,
        )
        progress.step(
            "explaining" + (" (generic plan)" if style == "dollar" and not params else "")
        )
        result = analyzer.analyze(text, list(params) if params else None)
        if result.error is not None:
            raise UsageError(f"cannot explain the statement: {result.error}")
        version = str(conn.info.parameter_status("server_version") or "").split(" ")[0]
        report = Report(command="explain", target=Target(target.masked(), version or None))
        report.extend(result.findings)
        plan = result.plan
        assert plan is not None
        verifier = analyzer.verifier if result.candidates else None
        report.metrics["explain"] = {
            "cost": plan.total_cost,
            "generic_plan": result.generic,
            "analyzed": plan.analyzed,
            "execution_ms": plan.execution_time_ms,
            "explain_ms": round(result.explain_ms, 3),
            "candidates": result.candidates,
            "rejected": list(result.rejected),
            "served_by_existing_index": list(result.served),
            "verification": verifier.method if verifier is not None else None,
            "plan": summarize(plan, redacted=bool(params)),
        }
        report.notes.append(
            ("generic plan; " if result.generic else "")
            + f"plan cost {plan.total_cost:,.2f}"
            + (
                f", executed in {plan.execution_time_ms:,.2f} ms (rolled back)"
                if plan.analyzed
                else ""
            )
        )
        report.notes.extend("plan: " + line for line in summarize(plan, redacted=bool(params)))
        for rej in result.rejected:
            report.notes.append(
                f"an index on {rej['table']} {rej['index']} was checked and would cut the cost "
                f"by only {(rej.get('cost_drop') or 0):.0%}: not recommended"
            )
        if verifier is not None and verifier.method == "none":
            hint = getattr(verifier, "hint", None)
            report.notes.append(
                f"index advice not verified: {getattr(verifier, 'reason', '')}"
                + (f"; to verify it: {hint}" if hint else "")
            )
    finally:
        conn.close()
        if real_conn is not None:
            real_conn.close()
    report.duration_s = time.perf_counter() - started
    ctx.exit(finish(report, fmt, output, fail_on))
