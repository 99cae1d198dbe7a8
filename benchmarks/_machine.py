"""Machine, version and load facts printed at the top of every benchmark."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path


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
