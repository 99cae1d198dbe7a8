"""Machine, version and load facts printed at the top of every benchmark."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "-"
    except OSError:
        return "-"


def machine_info() -> str:
    load = os.getloadavg()
    pkgs = ", ".join(
        f"{name} {_version(name)}"
        for name in ("dbprobe", "sqlalchemy", "psycopg", "psycopg-pool", "asyncpg")
    )
    return (
        f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; host {platform.node()}; "
        f"{_cpu_model()} × {os.cpu_count()} cores; {platform.platform()}\n"
        f"python {platform.python_version()}; {pkgs}; commit {_commit()}\n"
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def command_line() -> str:
    """The command that reproduces this run, as typed from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), Path(__file__).resolve().parent.parent)
    return f"command: python {' '.join([script, *sys.argv[1:]])}"


def machine_facts() -> dict[str, Any]:
    """The facts of :func:`machine_info` as a JSON-ready dict."""
    load = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {
            name: _version(name)
            for name in ("dbprobe", "sqlalchemy", "psycopg", "psycopg-pool", "asyncpg")
        },
        "commit": _commit(),
        "load_average": [round(x, 2) for x in load],
    }


def write_json(path: str | None, results: dict[str, Any]) -> None:
    """Write a benchmark's machine-readable results (``--json PATH``), with the machine
    facts and the command line; does nothing when ``path`` is None."""
    if not path:
        return
    doc = {"machine": machine_facts(), "command": command_line()[len("command: ") :], **results}
    Path(path).write_text(json.dumps(doc, indent=1, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    for attr in ("to_dict", "as_dict"):
        if hasattr(value, attr):
            return getattr(value, attr)()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
