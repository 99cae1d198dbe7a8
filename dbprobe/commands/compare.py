"""``dbprobe compare BASE NEW``: new and resolved findings and metric regressions."""

from __future__ import annotations

from pathlib import Path

import click

from dbprobe.commands.common import FAIL_ON


@click.command()
@click.argument("base")
@click.argument("new")
@click.option(
    "-t",
    "--threshold",
    "thresholds",
    multiple=True,
    metavar="SPEC",
    help="Regression limit, repeatable: STAT:N%, GLOB:N%, GLOB:STAT:N% or ...:off "
    "(p95:10%, throughput:5%, pool.*.throughput:5%). Defaults: p95:10%, p99:10%, "
    "throughput:10%.",
)
@click.option(
    "--fail-on",
    type=click.Choice(FAIL_ON),
    default="error",
    show_default=True,
    help="Exit 1 when a NEW finding is at or above this severity.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "markdown"]),
    default="table",
    show_default=True,
    help="Output format (json: the dbprobe.compare/1 document).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the comparison to this file instead of standard output.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where saved runs live (default $DBPROBE_RUNS_DIR or .dbprobe/runs).",
)
@click.option("--all", "show_all", is_flag=True, help="List unchanged metrics too.")
@click.pass_context
def compare(
    ctx: click.Context,
    base: str,
    new: str,
    thresholds: tuple[str, ...],
    fail_on: str,
    fmt: str,
    output: str | None,
    runs_dir: str | None,
    show_all: bool,
) -> None:
    """Compare two JSON reports: new and resolved findings, and metric regressions
    decided from the raw samples (bootstrap CI and Mann–Whitney).

    BASE and NEW are report files or saved-run ids (N, latest, latest~1). Exit 1 on a
    regression or a new finding at or above --fail-on; 0 otherwise; 2 on bad input.
    """
    from dbprobe.compare import build_checks, compare_documents
    from dbprobe.compare.render import COMPARE_RENDERERS
    from dbprobe.runs import RunStore, load_document

    checks = build_checks(thresholds)  # bad specs fail before any file is read
    store = RunStore(runs_dir)
    base_doc, base_src = load_document(base, store)
    new_doc, new_src = load_document(new, store)
    result = compare_documents(
        base_doc,
        new_doc,
        checks=checks,
        fail_on=fail_on,
        base_source=base_src,
        new_source=new_src,
    )
    text = COMPARE_RENDERERS[fmt](result, show_all=show_all)
    if output in (None, "", "-"):
        click.echo(text, nl=False)
    else:
        path = Path(str(output))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    ctx.exit(result.exit_code)
