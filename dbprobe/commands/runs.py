"""``dbprobe runs``: numbered saved reports for ``dbprobe compare``."""

from __future__ import annotations

import click
from tabulate import tabulate

_DIR = click.option(
    "--dir",
    "--runs-dir",
    "folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Runs folder (default $DBPROBE_RUNS_DIR or .dbprobe/runs).",
)


@click.group()
def runs() -> None:
    """Saved runs: numbered JSON reports with machine, commit and version info."""


@runs.command("list")
@_DIR
def list_runs(folder: str | None) -> None:
    """List saved runs, oldest first."""
    import json

    from dbprobe.runs import RunStore

    store = RunStore(folder)
    rows = []
    for r in store.runs():
        try:
            doc = json.loads(r.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rows.append([r.number, r.command, r.started, r.commit or "-", "(unreadable)", "", ""])
            continue
        env = doc.get("environment") or {}
        s = doc.get("summary") or {}
        rows.append(
            [
                r.number,
                r.command,
                doc.get("started_at", r.started),
                (r.commit or "-") + ("+dirty" if (env.get("commit") or {}).get("dirty") else ""),
                f"{env.get('hostname', '?')} ({env.get('cpus', '?')} CPUs)",
                (doc.get("target") or {}).get("server_version") or "-",
                f"{s.get('error', 0)}/{s.get('warning', 0)}/{s.get('info', 0)}",
            ]
        )
    if not rows:
        click.echo(f"no saved runs in {store.root}")
        return
    click.echo(
        tabulate(
            rows,
            headers=["#", "command", "started", "commit", "machine", "PostgreSQL", "E/W/I"],
            tablefmt="simple",
        )
    )


@runs.command("save")
@click.argument("report", type=click.Path(dir_okay=False))
@_DIR
def save_run(report: str, folder: str | None) -> None:
    """Keep an existing JSON REPORT as the next numbered run."""
    from dbprobe.runs import RunStore, load_document

    doc, _ = load_document(report)
    saved = RunStore(folder).save(doc)
    click.echo(f"saved as run {saved.number}: {saved.path}")


@runs.command("show")
@click.argument("ref")
@_DIR
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "markdown", "html", "sarif"]),
    default="table",
    show_default=True,
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True))
def show_run(ref: str, folder: str | None, fmt: str, output: str | None) -> None:
    """Render saved run REF (N, latest, latest~K, or a file) in any report format."""
    from dbprobe.report.model import Report
    from dbprobe.report.render import write_report
    from dbprobe.runs import RunStore, load_document

    doc, _ = load_document(ref, RunStore(folder))
    write_report(Report.from_dict(doc), fmt, output)
