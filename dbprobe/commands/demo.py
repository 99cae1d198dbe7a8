"""``dbprobe demo``: a throwaway server, the shop fixture app, and a report."""

from __future__ import annotations

import time
from typing import Any

import click

from dbprobe.commands.common import finish, progress_from, report_options
from dbprobe.report.model import Report, Target


@click.command()
@click.option(
    "--provider",
    type=click.Choice(["url", "docker", "local", "embedded"]),
    default=None,
    help="Force a throwaway-PostgreSQL provider "
    "(default: $DBPROBE_POSTGRES or the first that serves).",
)
@click.option(
    "--size",
    type=click.Choice(["small", "large"]),
    default="small",
    show_default=True,
    help="Seed size of the shop fixture.",
)
@report_options()
@click.pass_context
def demo(
    ctx: click.Context, provider: str | None, size: str, fmt: str, output: str | None, fail_on: str
) -> None:
    """Start a throwaway PostgreSQL, load the shop fixture app with planted problems,
    probe it and print the report."""
    from sqlalchemy import create_engine, text

    from dbprobe.demoapp import import_fixture
    from dbprobe.pg import throwaway

    progress = progress_from(ctx)
    report = Report(command="demo")
    t0 = time.perf_counter()
    progress.step("starting a throwaway PostgreSQL server")
    with throwaway(provider) as pg:
        report.target = Target(f"throwaway ({pg.provider})", pg.version)
        progress.step(f"PostgreSQL {pg.version} ready ({pg.provider}, port {pg.port})")
        db = pg.create_database("shop")
        shop_seed = import_fixture("fixtures.shop.seed")
        progress.step(f"building the shop fixture ({size} seed)")
        engine = create_engine(pg.url(db))
        try:
            t_seed = time.perf_counter()
            with engine.begin() as conn:
                shop_seed.build(conn, size)
            pg.settle(db)
            seed_s = time.perf_counter() - t_seed
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT c.relname, greatest(c.reltuples, 0)::bigint FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 1"
                    )
                ).all()
        finally:
            engine.dispose()
        metrics: dict[str, Any] = {
            "server": {
                "provider": pg.provider,
                "durable": pg.durable,
                "timings_s": {k: round(v, 4) for k, v in pg.timings.items()},
            },
            "fixture": {
                "size": size,
                "seed_s": round(seed_s, 3),
                "rows": {name: int(n) for name, n in rows},
            },
        }
        report.metrics = metrics
        total = sum(int(n) for _, n in rows)
        report.notes.append(
            f"throwaway PostgreSQL {pg.version} from provider {pg.provider}, ready in "
            f"{sum(v for k, v in pg.timings.items() if k != 'last_create_s'):.2f}s; "
            "not durable (fsync off)"
        )
        report.notes.append(
            f"shop fixture built ({size} seed): {len(rows)} tables, {total:,} rows in {seed_s:.2f}s"
        )
    report.duration_s = time.perf_counter() - t0
    progress.step("server stopped and removed")
    ctx.exit(finish(report, fmt, output, fail_on))
