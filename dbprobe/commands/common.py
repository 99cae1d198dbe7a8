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


def report_options(default_format: str = "table") -> Callable[[F], F]:
    """``--format``, ``--output`` and ``--fail-on``, identical on every command."""

    def deco(fn: F) -> F:
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
    """Write the report and return the exit code per DESIGN.md."""
    if fmt not in RENDERERS:
        raise UsageError(f"unknown format {fmt!r}")
    write_report(report, fmt, output)
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
