"""``dbprobe audit URL``: catalog checks, top statements explained, verified index advice."""

from __future__ import annotations

import re
from typing import Any

import click

from dbprobe.commands.common import finish, progress_from, report_options

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min)?\s*$")


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A duration: ``5`` or ``5s`` (seconds), ``500ms``, ``2m``; converted to seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        m = _DURATION.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a duration (e.g. 5, 5s, 500ms, 2m)", param, ctx)
        number = float(m.group(1))
        unit = m.group(2) or "s"
        seconds = (
            number / 1000.0 if unit == "ms" else number * 60.0 if unit in ("m", "min") else number
        )
        if seconds <= 0:
            self.fail("must be positive", param, ctx)
        return seconds


DURATION = Duration()


def verification_options(fn: Any) -> Any:
    """``--verify``, ``--disposable``, ``--min-cost-drop``: shared by audit and explain."""
    fn = click.option(
        "--min-cost-drop",
        type=click.FloatRange(1, 100),
        default=50.0,
        show_default=True,
        help="Recommend an index only when the verified plan cost drops by this many percent.",
    )(fn)
    fn = click.option(
        "--disposable",
        is_flag=True,
        help="Declare the database disposable: dbprobe may build each proposed index for "
        "real inside a transaction it rolls back (blocks writes to the table while it "
        "builds). Needed by --verify real; lets --verify auto fall back to it.",
    )(fn)
    return click.option(
        "--verify",
        type=click.Choice(["auto", "hypopg", "real", "none"]),
        default="auto",
        show_default=True,
        help="How index advice is verified: hypopg hypothetical indexes (read-only), real "
        "indexes in rolled-back transactions (--disposable only), or not at all. auto: "
        "hypopg when installed, else real with --disposable, else not verified.",
    )(fn)


@click.command()
@click.argument("url")
@click.option(
    "--min-rows",
    type=click.IntRange(0),
    default=10_000,
    show_default=True,
    help="Relations with fewer rows are never flagged.",
)
@click.option(
    "--top",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Explain this many statements from pg_stat_statements, heaviest total time "
    "first (0: all).",
)
@click.option(
    "--schema",
    "schemas",
    multiple=True,
    metavar="PATTERN",
    help="Only these schemas (shell glob; repeatable). Default: all but system schemas.",
)
@click.option(
    "--exclude-schema",
    "exclude_schemas",
    multiple=True,
    metavar="PATTERN",
    help="Leave these schemas out (shell glob; repeatable).",
)
@click.option(
    "--timeout",
    type=DURATION,
    default="5s",
    show_default=True,
    help="statement_timeout of every audit statement (e.g. 5s, 500ms).",
)
@click.option(
    "--lock-timeout",
    type=DURATION,
    default="1s",
    show_default=True,
    help="lock_timeout of the audit session.",
)
@click.option(
    "--connect-timeout",
    type=DURATION,
    default="10s",
    show_default=True,
    help="How long to wait for the server to answer.",
)
@verification_options
@click.option(
    "--min-seq-scans",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Sequential scans since the statistics reset before a table can be seq-scan heavy.",
)
@click.option(
    "--coldstart/--no-coldstart",
    default=True,
    show_default=True,
    help="Include a short connection cold-start sample when that probe is installed.",
)
@report_options()
@click.pass_context
def audit(
    ctx: click.Context,
    url: str,
    min_rows: int,
    top: int,
    schemas: tuple[str, ...],
    exclude_schemas: tuple[str, ...],
    timeout: float,
    lock_timeout: float,
    connect_timeout: float,
    verify: str,
    disposable: bool,
    min_cost_drop: float,
    min_seq_scans: int,
    coldstart: bool,
    fmt: str,
    output: str | None,
    fail_on: str,
) -> None:
    """Audit a live PostgreSQL database, read-only: missing and redundant indexes,
    unused and invalid indexes, tables read by sequential scans, and the heaviest
    statements of pg_stat_statements explained, with verified CREATE INDEX advice.

    Safe on production: one read-only session with statement and lock timeouts,
    EXPLAIN without ANALYZE, no DDL or DML (unless --verify real --disposable).
    """
    from dbprobe.audit import AuditOptions, run_audit
    from dbprobe.urls import parse_url

    target = parse_url(url)
    options = AuditOptions(
        min_rows=min_rows,
        top=top,
        schemas=schemas,
        exclude_schemas=exclude_schemas,
        statement_timeout_ms=max(1, round(timeout * 1000)),
        lock_timeout_ms=max(1, round(lock_timeout * 1000)),
        connect_timeout_s=connect_timeout,
        verify=verify,
        disposable=disposable,
        min_cost_drop=min_cost_drop / 100.0,
        min_seq_scans=min_seq_scans,
        coldstart=coldstart,
    )
    report = run_audit(target, options, progress=progress_from(ctx))
    ctx.exit(finish(report, fmt, output, fail_on))
