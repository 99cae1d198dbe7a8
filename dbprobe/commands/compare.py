"""``dbprobe compare BASE NEW``: new and resolved findings and metric regressions."""

from __future__ import annotations

from pathlib import Path

import click

from dbprobe.commands.common import FAIL_ON
from dbprobe.report.render import write_text


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
@click.option(
    "--gate",
    type=click.Choice(["headline", "all"]),
    default="headline",
    show_default=True,
    help="Which metric checks can fail the comparison: the headline ones (cold-start total "
    "p95, pool query p95 and throughput within capacity, failed shares) and your GLOB "
    "thresholds, or every check with enough samples. The others are shown as information.",
)
@click.option(
    "--same-machine",
    is_flag=True,
    help="Let timing checks gate even when the reports come from different machines "
    "(by default they only warn there).",
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
    gate: str,
    same_machine: bool,
    show_all: bool,
) -> None:
    """Compare two JSON reports: new and resolved findings, and metric regressions
    decided from the raw samples.

    BASE and NEW are report files or saved-run ids (N, latest, latest~K; latest~K counts
    only the runs of the other side's command). Only the headline checks gate by
    default, each testing "worse by more than its limit" with a bootstrap (in blocks
    for samples in time order) or a proportion test, Holm-corrected together at 5%.
    Exit 1 on a regression or a new finding at or above --fail-on; 0 otherwise; 2 on
    bad input or when the reports have nothing to compare.
    """
    from dbprobe.compare import build_checks, compare_documents
    from dbprobe.compare.render import COMPARE_RENDERERS
    from dbprobe.runs import RunStore, is_run_ref, load_document

    checks = build_checks(thresholds)  # bad specs fail before any file is read
    store = RunStore(runs_dir)
    # a relative saved-run id (latest~1) counts only the runs of the other side's command
    if is_run_ref(base) and not is_run_ref(new):
        new_doc, new_src = load_document(new, store)
        base_doc, base_src = load_document(base, store, command=new_doc.get("command"))
    else:
        base_doc, base_src = load_document(base, store)
        command = base_doc.get("command") if not is_run_ref(base) else None
        new_doc, new_src = load_document(new, store, command=command)
        if is_run_ref(base):
            base_doc, base_src = load_document(base, store, command=new_doc.get("command"))
    result = compare_documents(
        base_doc,
        new_doc,
        checks=checks,
        fail_on=fail_on,
        base_source=base_src,
        new_source=new_src,
        gate=gate,
        same_machine=same_machine,
    )
    text = COMPARE_RENDERERS[fmt](result, show_all=show_all)
    if output in (None, "", "-"):
        click.echo(text, nl=False)
    else:
        write_text(Path(str(output)), text)
    ctx.exit(result.exit_code)
