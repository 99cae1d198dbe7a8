"""``dbprobe slo``: check reports against ``[tool.dbprobe.slo]`` and suggest objectives."""

from __future__ import annotations

import click

from dbprobe.commands.common import finish, report_options


@click.group()
def slo() -> None:
    """Service-level objectives from [tool.dbprobe.slo] in pyproject.toml."""


@slo.command()
@click.argument("report")
@click.option(
    "--headroom",
    type=click.FloatRange(min=1.0),
    default=1.5,
    show_default=True,
    help="Multiply each observed value by this before rounding up.",
)
@click.option(
    "--pool-concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Operating concurrency: suggest pool objectives from the steps up to this many "
    "workers (default: each pool's capacity). Written into the snippet.",
)
@click.option("--runs-dir", type=click.Path(file_okay=False), default=None, hidden=True)
def suggest(
    report: str, headroom: float, pool_concurrency: int | None, runs_dir: str | None
) -> None:
    """Propose SLOs from the distributions measured in REPORT (a JSON report or a
    saved-run id), printed as a [tool.dbprobe.slo] snippet to paste into pyproject.toml.

    Rule: the worst 95% upper confidence bound of each p95/p99 (pool steps beyond the
    operating concurrency left out, as `slo check` does; no p99 from fewer than 100
    samples) × headroom, rounded up to 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k. The
    report the suggestion comes from always meets it.
    """
    from dbprobe.runs import RunStore, load_document
    from dbprobe.slo import suggest_slos, suggestions_toml

    doc, source = load_document(report, RunStore(runs_dir))
    found = suggest_slos(doc, headroom=headroom, pool_concurrency=pool_concurrency)
    text = suggestions_toml(found, source)
    if pool_concurrency is not None:
        text += f"pool_concurrency = {pool_concurrency}  # operating load of the pool objectives\n"
    click.echo(text, nl=False)


@slo.command()
@click.argument("report")
@report_options()
@click.pass_context
def check(ctx: click.Context, report: str, fmt: str, output: str | None, fail_on: str) -> None:
    """Check an existing REPORT (file or saved-run id) against the SLOs and print it with
    the slo-violation findings added."""
    from dbprobe.errors import UsageError
    from dbprobe.report.model import Report
    from dbprobe.runs import load_document

    doc, _ = load_document(report)
    slos = ctx.meta.get("dbprobe.slos")
    if not slos:
        where = getattr(slos, "source", None) or "no pyproject.toml found"
        raise UsageError(f"no [tool.dbprobe.slo] table to check against ({where})")
    ctx.exit(finish(Report.from_dict(doc), fmt, output, fail_on))


@slo.command()
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="TOML file.")
def show(config: str | None) -> None:
    """Print the SLOs in force and the file they come from."""
    from dbprobe.slo import load_slos

    slos = load_slos(config)
    click.echo(f"# from {slos.source or 'no pyproject.toml found'}")
    click.echo("[tool.dbprobe.slo]")
    for kind, limit in slos.items():
        click.echo(f"{kind.key} = {limit:g}")
