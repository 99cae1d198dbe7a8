"""Options and helpers shared by every command, so a flag means the same everywhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from dbprobe.errors import UsageError
from dbprobe.report.model import Report
from dbprobe.report.render import RENDERERS, write_report

F = TypeVar("F", bound=Callable[..., Any])
FAIL_ON = ("error", "warning", "info", "never")


SAVE_KEY = "dbprobe.save"
SLOS_KEY = "dbprobe.slos"
SARIF_KEY = "dbprobe.sarif_unlocated"


def _remember_save(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        # --save takes an optional DIR: written before the database URL, it would take
        # the URL for its directory (and maybe leave a password in a folder name)
        if "://" in value or "=" in value or value.startswith("postgres"):
            raise click.BadParameter(
                "that looks like a database URL, not a directory: write --save after "
                "the URL, or --save=DIR",
                ctx=ctx,
                param=param,
            )
        ctx.meta[SAVE_KEY] = value


def _remember_sarif(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[SARIF_KEY] = value


def _load_slos(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Read the SLOs before the probe runs, so a bad configuration fails in a second."""
    from dbprobe.slo import load_slos

    ctx.meta[SLOS_KEY] = load_slos(value)


def report_options(default_format: str = "table") -> Callable[[F], F]:
    """``--format``, ``--output``, ``--fail-on``, ``--save``, ``--config`` and
    ``--sarif-unlocated``, identical on every command. The last three are handled by
    :func:`finish` (they add no parameter to the command function)."""

    def deco(fn: F) -> F:
        fn = click.option(
            "--sarif-unlocated",
            type=click.Choice(["anchor", "drop"]),
            default=None,
            expose_value=False,
            callback=_remember_sarif,
            help="SARIF: pin findings without a code location to a project file "
            "(anchor, the default; GitHub code scanning needs a file on every result) "
            "or leave them out (drop).",
        )(fn)
        fn = click.option(
            "--config",
            type=click.Path(dir_okay=False),
            expose_value=False,
            is_eager=True,
            callback=_load_slos,
            help="TOML file with [tool.dbprobe.slo] (default: the nearest pyproject.toml).",
        )(fn)
        fn = click.option(
            "--save",
            is_flag=False,
            flag_value=".dbprobe/runs",
            default=None,
            metavar="[DIR]",
            expose_value=False,
            callback=_remember_save,
            help="Also keep the JSON report as the next numbered run in DIR "
            "(default .dbprobe/runs), for dbprobe compare.",
        )(fn)
        fn = click.option(
            "--fail-on",
            type=click.Choice(FAIL_ON),
            default="error",
            show_default=True,
            help="Exit 1 when a finding is at or above this severity.",
        )(fn)
        fn = click.option(
            "--output",
            "-o",
            type=click.Path(dir_okay=False, writable=True),
            help="Write the report to this file instead of standard output.",
        )(fn)
        return click.option(
            "--format",
            "fmt",
            type=click.Choice(sorted(RENDERERS)),
            default=default_format,
            show_default=True,
            help="Report format.",
        )(fn)

    return deco


def finish(report: Report, fmt: str, output: str | None, fail_on: str) -> int:
    """Check the SLOs (``slo-violation`` findings), write the report, save it when
    ``--save`` asked, and return the exit code per DESIGN.md."""
    from dbprobe.slo import Slos, apply_slos

    if fmt not in RENDERERS:
        raise UsageError(f"unknown format {fmt!r}")
    ctx = click.get_current_context(silent=True)
    meta: dict[str, Any] = ctx.meta if ctx is not None else {}
    slos = meta.get(SLOS_KEY)
    apply_slos(report, slos if isinstance(slos, Slos) else None)
    write_report(report, fmt, output, sarif_unlocated=meta.get(SARIF_KEY))
    save = meta.get(SAVE_KEY)
    if save:
        from dbprobe.runs import RunStore

        saved = RunStore(save).save(report.to_dict())
        if ctx is not None:
            progress_from(ctx).step(f"saved as run {saved.number} ({saved.path})")
    return report.exit_code(fail_on)


class Progress:
    """Progress on stderr: a live line on a terminal, one line per step otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._live = False

    def step(self, message: str) -> None:
        if self.quiet:
            return
        self._clear()
        sys.stderr.write(f"[{time.monotonic() - self.t0:5.1f}s] {message}\n")
        sys.stderr.flush()

    def update(self, message: str, done: int, total: int) -> None:
        """A progress bar for ``done`` of ``total``."""
        if self.quiet:
            return
        if not self.tty:
            if done == total:
                self.step(f"{message}: {done}/{total}")
            return
        width = 24
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{time.monotonic() - self.t0:5.1f}s] {message} [{bar}] {done}/{total}")
        sys.stderr.flush()
        self._live = done < total
        if done >= total:
            sys.stderr.write("\n")

    def _clear(self) -> None:
        if self._live:
            sys.stderr.write("\n")
            self._live = False


def progress_from(ctx: click.Context) -> Progress:
    root = ctx.find_root()
    return Progress(quiet=bool(root.obj and root.obj.get("quiet")))
