"""``dbprobe demo``: a throwaway server, the shop fixture app, every probe, one report."""

from __future__ import annotations

import click

from dbprobe.commands.common import finish, progress_from, report_options


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
    help="Seed size of the shop fixture (large: ~1.5 million rows, realistic plans).",
)
@click.option(
    "--skip",
    type=click.Choice(["capture", "leaks", "audit", "coldstart", "pool"]),
    multiple=True,
    help="Leave a probe out (repeatable).",
)
@report_options()
@click.pass_context
def demo(
    ctx: click.Context,
    provider: str | None,
    size: str,
    skip: tuple[str, ...],
    fmt: str,
    output: str | None,
    fail_on: str,
) -> None:
    """Start a throwaway PostgreSQL, build the shop fixture app with its planted problems,
    run every probe on it (capture, leaks, audit, cold start, pool stress) and print the
    report. Nothing is left running afterwards."""
    from dbprobe.demo import DemoOptions, run_demo

    progress = progress_from(ctx)
    report = run_demo(DemoOptions(provider=provider, size=size, skip=skip), progress.step)
    ctx.exit(finish(report, fmt, output, fail_on))
