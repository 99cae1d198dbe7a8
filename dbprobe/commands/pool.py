"""``dbprobe pool URL``: drive connection pools to and past exhaustion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from dbprobe.commands.common import finish, progress_from, report_options
from dbprobe.errors import UsageError
from dbprobe.report.render import RENDERERS

if TYPE_CHECKING:
    from dbprobe.pool.config import Workload

POOL_HELP = "sqlalchemy|sqlalchemy-async|psycopg|psycopg-async|asyncpg|all"


@click.command()
@click.argument("url")
@click.option(
    "--pool", "pools", default="all", show_default=True, help=f"{POOL_HELP}, or a comma list."
)
@click.option("--size", type=int, default=5, show_default=True, help="Connections the pool keeps.")
@click.option(
    "--overflow",
    type=int,
    default=5,
    show_default=True,
    help="Extra connections under load (SQLAlchemy max_overflow; psycopg_pool and asyncpg "
    "max_size = size + overflow).",
)
@click.option(
    "--timeout",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds a request waits for a connection before the pool gives up.",
)
@click.option(
    "--max-concurrency",
    type=int,
    default=None,
    help="Highest closed-loop concurrency (default and minimum: 2 × (size + overflow)).",
)
@click.option(
    "--step-seconds",
    type=float,
    default=1.0,
    show_default=True,
    help="Measured length of each step.",
)
@click.option(
    "--rate",
    "rates",
    type=float,
    multiple=True,
    help="Open-loop arrival rate in requests/s (repeatable), like pgbench -R; latency "
    "counts from each request's scheduled start.",
)
@click.option("--sql", default=None, help="Statement each request runs (default SELECT 1).")
@click.option(
    "--scenario",
    default=None,
    help="A user flow of probes/shop.py (SQLAlchemy pools; the database must hold the shop).",
)
@click.option(
    "--think-ms",
    type=float,
    default=0.0,
    show_default=True,
    help="Milliseconds each request keeps its connection after its work.",
)
@click.option(
    "--spike",
    type=int,
    default=None,
    help="Requests fired at once after the steps (default: the top concurrency; 0: no spike).",
)
@click.option(
    "--soak",
    "soak_s",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds of sustained load at half the capacity, sampled for growth (0: off).",
)
@click.option(
    "--sample-interval", type=float, default=1.0, show_default=True, help="Soak sampling period, s."
)
@click.option(
    "--instances",
    type=int,
    default=1,
    show_default=True,
    help="Application instances sharing the server (fleet connection budget).",
)
@click.option(
    "--server-cores",
    type=int,
    default=None,
    help="Server CPU cores for the sizing formula (default: this machine's when local).",
)
@click.option(
    "--spindles", type=int, default=0, show_default=True, help="Effective spindles (formula)."
)
@click.option(
    "--allow-server-exhaustion",
    is_flag=True,
    help="Allow more than 80% of the server's free connection slots.",
)
@click.option(
    "--max-seconds",
    type=float,
    default=900.0,
    show_default=True,
    help="Hard cap on the whole run.",
)
@click.option("--autocommit", is_flag=True, help="Run requests without a transaction.")
@report_options()
@click.pass_context
def pool(
    ctx: click.Context,
    url: str,
    pools: str,
    size: int,
    overflow: int,
    timeout: float,
    max_concurrency: int | None,
    step_seconds: float,
    rates: tuple[float, ...],
    sql: str | None,
    scenario: str | None,
    think_ms: float,
    spike: int | None,
    soak_s: float,
    sample_interval: float,
    instances: int,
    server_cores: int | None,
    spindles: int,
    allow_server_exhaustion: bool,
    max_seconds: float,
    autocommit: bool,
    fmt: str,
    output: str | None,
    fail_on: str,
) -> None:
    """Stress connection pools to and past exhaustion: throughput, acquire wait and query
    latency per concurrency step, open-loop queueing, a spike and its recovery, an
    optional soak, with verdicts (knee, exhaustion, degradation, client-bound, sizing)."""
    from dbprobe.pool.config import StressConfig, Workload, parse_pools
    from dbprobe.pool.runner import Interrupted, stress
    from dbprobe.urls import parse_url

    if fmt not in RENDERERS:
        raise UsageError(f"unknown format {fmt!r}")
    target = parse_url(url)
    kinds = parse_pools(pools)
    if sql and scenario:
        raise UsageError("--sql and --scenario exclude each other")
    workload = Workload()
    if sql:
        workload = Workload.from_sql(sql)
    elif scenario:
        workload = _scenario(scenario)
        kinds = tuple(k for k in kinds if workload.supports(k)) if pools == "all" else kinds
    config = StressConfig(
        size=size,
        overflow=overflow,
        timeout_s=timeout,
        max_concurrency=max_concurrency,
        step_seconds=step_seconds,
        rates=tuple(rates),
        think_ms=think_ms,
        spike=spike,
        soak_s=soak_s,
        sample_interval_s=sample_interval,
        instances=instances,
        server_cores=server_cores,
        spindles=spindles,
        allow_server_exhaustion=allow_server_exhaustion,
        max_total_s=max_seconds,
        autocommit=autocommit,
    )
    progress = progress_from(ctx)
    progress.step(
        f"pool stress on {', '.join(kinds)}: capacity {config.capacity}, concurrency "
        f"{', '.join(map(str, config.concurrency_levels))}"
        + (f", rates {', '.join(f'{r:g}' for r in config.rates)}/s" if config.rates else "")
        + f" (about {config.estimated_seconds(len(kinds)):.0f}s)"
    )
    try:
        report = stress(target, kinds, config=config, workload=workload, progress=progress.update)
    except Interrupted as exc:
        # every pool is closed by now; show what was measured before Ctrl-C
        for line in exc.done:
            click.echo(f"dbprobe pool: before the interrupt: {line}", err=True)
        raise
    ctx.exit(finish(report, fmt, output, fail_on))


def _scenario(name: str) -> Workload:
    from dbprobe.demoapp import import_fixture
    from dbprobe.errors import DbprobeError
    from dbprobe.pool.config import Workload

    try:
        module = import_fixture("probes.shop")
    except (DbprobeError, ImportError) as exc:
        raise UsageError(f"--scenario needs the shop probes (probes/shop.py): {exc}") from None
    scenarios = module.SCENARIOS
    if name not in scenarios:
        raise UsageError(f"unknown scenario {name!r} (choose from {', '.join(sorted(scenarios))})")
    return Workload.from_scenario(scenarios[name])
