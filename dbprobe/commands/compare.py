"""``dbprobe compare BASE NEW``: new and resolved findings and metric regressions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dbprobe.commands.common import FAIL_ON
from dbprobe.errors import UsageError
from dbprobe.report.render import write_text

if TYPE_CHECKING:
    from dbprobe.runs import RunStore


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
    "(p95:10%, throughput:5%, failed:2%, pool.*.throughput:5%). Defaults: headline checks "
    "coldstart.*.total:p95:25%, pool.*.query_latency:p95:25%, "
    "pool.*.throughput:throughput:15%, failed:5% (points); 10% on the rest (information).",
)
@click.option(
    "--run-noise",
    "run_noise",
    multiple=True,
    metavar="[KIND=]N%",
    help="Run-to-run variation to allow for when a side has one run, repeatable: N% for "
    "every timing kind or coldstart=N%, latency=N%, throughput=N%, failed=N% (points). "
    "Defaults measured on a shared 2-core machine: coldstart 42%, latency 134%, "
    "throughput 49%, failed 2 points. Several runs a side measure it instead.",
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
    run_noise: tuple[str, ...],
    show_all: bool,
) -> None:
    """Compare two JSON reports: new and resolved findings, and metric regressions
    decided from the raw samples.

    BASE and NEW are report files or saved-run ids (N, latest, latest~K; latest~K counts
    only the runs of the other side's command), or comma-separated lists of them: several
    runs a side are compared through one summary per run, which measures the variation
    between runs instead of assuming it. Only the headline checks gate by
    default, each testing "worse by more than its limit" with a bootstrap (in blocks
    for samples in time order) or a proportion test, Holm-corrected together at 5%.
    Exit 1 on a regression or a new finding at or above --fail-on; 0 otherwise; 2 on
    bad input or when the reports have nothing to compare.
    """
    from dbprobe.compare import build_checks
    from dbprobe.compare.diff import RunNoise, compare_runs
    from dbprobe.compare.render import COMPARE_RENDERERS
    from dbprobe.runs import RunStore

    checks = build_checks(thresholds)  # bad specs fail before any file is read
    noise = RunNoise.parse(run_noise)
    store = RunStore(runs_dir)
    (base_docs, base_srcs), (new_docs, new_srcs) = load_sides(base, new, store)
    result = compare_runs(
        base_docs,
        new_docs,
        checks=checks,
        fail_on=fail_on,
        base_sources=base_srcs,
        new_sources=new_srcs,
        gate=gate,
        same_machine=same_machine,
        run_noise=noise,
    )
    text = COMPARE_RENDERERS[fmt](result, show_all=show_all)
    if output in (None, "", "-"):
        click.echo(text, nl=False)
    else:
        write_text(Path(str(output)), text)
    ctx.exit(result.exit_code)


Side = tuple[list[dict[str, Any]], list[str]]


def load_sides(base: str, new: str, store: RunStore) -> tuple[Side, Side]:
    """Read both sides: each a report file, a saved-run id or a comma-separated list of
    them. A relative saved-run id (``latest``, ``latest~1``) counts only the runs of the
    command the other side's files name, so ``compare latest~1 latest`` after a pool
    run compares two pool runs."""
    from dbprobe.runs import is_run_ref, load_document

    def refs(side: str) -> list[str]:
        if Path(side).exists():
            return [side]
        items = [r.strip() for r in side.split(",") if r.strip()]
        if not items:
            raise UsageError(f"no report given in {side!r}")
        return items

    b_refs, n_refs = refs(base), refs(new)
    loaded: dict[str, tuple[dict[str, Any], str]] = {}
    for ref in (*b_refs, *n_refs):
        if not is_run_ref(ref) and ref not in loaded:
            loaded[ref] = load_document(ref, store)
    commands = {str(doc.get("command")) for doc, _ in loaded.values()}
    command = next(iter(commands)) if len(commands) == 1 else None
    if command is None and not loaded:
        # both sides relative: the newest run's command decides
        first = load_document(n_refs[-1], store)
        command = str(first[0].get("command"))
    for ref in (*b_refs, *n_refs):
        if ref not in loaded:
            loaded[ref] = load_document(ref, store, command=command)

    def side(items: list[str]) -> Side:
        return [loaded[r][0] for r in items], [loaded[r][1] for r in items]

    return side(b_refs), side(n_refs)
