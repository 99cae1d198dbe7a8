"""The ``dbprobe`` command line.

Exit codes (all commands): 0 ran and nothing at or above ``--fail-on``; 1 findings at
or above ``--fail-on`` (or a regression in ``compare``); 2 could not run (one line on
stderr, ``--debug`` for the traceback).
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from dbprobe import __version__
from dbprobe.errors import DbprobeError
from dbprobe.urls import mask_secrets

# name -> "module:attribute"; imported only when the command runs (or for --help).
COMMANDS: dict[str, str] = {
    "audit": "dbprobe.commands.audit:audit",
    "coldstart": "dbprobe.commands.coldstart:coldstart",
    "demo": "dbprobe.commands.demo:demo",
    "explain": "dbprobe.commands.explain:explain",
    "compare": "dbprobe.commands.compare:compare",
    "slo": "dbprobe.commands.slo:slo",
    "runs": "dbprobe.commands.runs:runs",
    "pool": "dbprobe.commands.pool:pool",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dbprobe")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Database and connection-pool performance probes for SQLAlchemy and PostgreSQL."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="dbprobe: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _one_line(text: str) -> str:
    return mask_secrets(" ".join(str(text).split()))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rv: Any = cli.main(args=args, prog_name="dbprobe", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        sys.stderr.write("dbprobe: interrupted\n")
        return 130
    except click.ClickException as exc:
        cctx: click.Context | None = getattr(exc, "ctx", None)
        where = "dbprobe"
        if cctx is not None and cctx.parent is not None:
            where = f"dbprobe {cctx.info_name}"
        sys.stderr.write(
            f"{where}: error: {_one_line(exc.format_message())} (see {where} --help)\n"
        )
        return 2
    except DbprobeError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"dbprobe: error: {_one_line(str(exc))}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("dbprobe: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(
            f"dbprobe: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(rerun with --debug for the traceback)\n"
        )
        return 2
    return int(rv or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
