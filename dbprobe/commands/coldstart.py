"""``dbprobe coldstart URL``: cold-start connection latency per driver, by phase."""

from __future__ import annotations

import time

import click

from dbprobe.commands.common import finish, progress_from, report_options

DRIVER_CHOICES = ("psycopg", "asyncpg", "sqlalchemy", "sqlalchemy-async", "all")


@click.command()
@click.argument("url")
@click.option(
    "--driver",
    "drivers",
    type=click.Choice(DRIVER_CHOICES),
    multiple=True,
    default=("all",),
    show_default=True,
    help="Driver to measure (repeatable); all = psycopg, asyncpg, sqlalchemy, sqlalchemy-async.",
)
@click.option(
    "--samples",
    type=click.IntRange(1, 100_000),
    default=30,
    show_default=True,
    help="Cold connections per driver (and warm checkouts per pool).",
)
@click.option(
    "--threshold-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="slow-cold-start when the p95 of connect + first query exceeds this.",
)
@click.option(
    "--process",
    "measure_process",
    is_flag=True,
    help="Also time fresh processes: interpreter start, --import modules, driver import, "
    "first connect and query.",
)
@click.option(
    "--import",
    "imports",
    metavar="MODULE",
    multiple=True,
    help="With --process: a module of yours each fresh process imports first (repeatable; "
    "importable from the current directory).",
)
@click.option(
    "--process-samples",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="Fresh processes per driver with --process.",
)
@click.option(
    "--process-threshold-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=1000.0,
    show_default=True,
    help="slow-cold-start when a fresh process's p95 to its first query exceeds this.",
)
@click.option(
    "--warm/--no-warm",
    default=True,
    show_default=True,
    help="Also measure pools: time to be ready at --pool-size, and warm checkouts.",
)
@click.option(
    "--pool-size",
    type=click.IntRange(1, 1000),
    default=4,
    show_default=True,
    help="Minimum pool size for the warm measurements.",
)
@click.option(
    "--idle-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Pause before every cold connection (0: back to back; try 50 for the first "
    "connection after a quiet spell).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds per connection attempt [default: the URL's connect_timeout, else 10].",
)
@report_options()
@click.pass_context
def coldstart(
    ctx: click.Context,
    url: str,
    drivers: tuple[str, ...],
    samples: int,
    threshold_ms: float,
    measure_process: bool,
    imports: tuple[str, ...],
    process_samples: int,
    process_threshold_ms: float,
    warm: bool,
    pool_size: int,
    idle_ms: float,
    connect_timeout: float | None,
    fmt: str,
    output: str | None,
    fail_on: str,
) -> None:
    """Cold-start connection latency of each driver, broken into phases.

    For psycopg, asyncpg, a SQLAlchemy engine (psycopg) and a SQLAlchemy async engine
    (asyncpg): DNS, TCP, TLS and start-up/authentication (timed by dbprobe's own
    protocol client), the driver's connect, its initialisation and first query (timed
    from the driver), the raw TCP floor, warm pooled checkouts and, with --process, a
    freshly started process. Samples are interleaved across drivers. Read-only: it runs
    SELECT 1 and nothing else.
    """
    from dbprobe.analysis.coldstart_verdicts import Thresholds
    from dbprobe.coldstart import DRIVERS, ColdStartOptions, run
    from dbprobe.report.model import Report, Target
    from dbprobe.urls import parse_url

    target = parse_url(url)
    chosen = DRIVERS if "all" in drivers else tuple(dict.fromkeys(drivers))
    options = ColdStartOptions(
        drivers=chosen,
        samples=samples,
        warm=warm,
        pool_size=pool_size,
        process=measure_process,
        process_samples=process_samples,
        imports=imports,
        idle_ms=idle_ms,
        connect_timeout=connect_timeout,
        thresholds=Thresholds(total_p95_ms=threshold_ms, process_total_p95_ms=process_threshold_ms),
    )
    progress = progress_from(ctx)
    progress.step(f"cold start of {', '.join(chosen)} against {target.masked()}")
    t0 = time.perf_counter()
    result = run(target, options, progress=progress.update)
    report = Report(
        command="coldstart",
        target=Target(target.masked(), result.server_version),
        metrics={"coldstart": result.metrics},
        findings=list(result.findings),
        notes=list(result.notes),
    )
    report.duration_s = time.perf_counter() - t0
    progress.step(f"done: {len(report.findings)} finding(s)")
    ctx.exit(finish(report, fmt, output, fail_on))
