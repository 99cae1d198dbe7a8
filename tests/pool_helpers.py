"""Helpers shared by the pool tests: fast configurations and connection accounting."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dbprobe.pg import PostgresServer
from dbprobe.pool import StressConfig
from dbprobe.report.model import Report
from dbprobe.report.schema import validate_report

ROOT = Path(__file__).resolve().parent.parent


def fast(**overrides: Any) -> StressConfig:
    """A plan that runs in a couple of seconds: capacity 3, steps of 0.3 s."""
    values: dict[str, Any] = {
        "size": 2,
        "overflow": 1,
        "timeout_s": 1.0,
        "step_seconds": 0.3,
        "max_concurrency": 6,
    }
    values.update(overrides)
    return StressConfig(**values)


def pool_sessions(pg: PostgresServer, include_monitor: bool = False) -> int:
    """Sessions of pooled dbprobe connections on the server; with ``include_monitor``
    the run's monitor connection and the leak checker's too (everything a pool run
    opens)."""
    rows = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE (application_name LIKE 'dbprobe-pool-%'"
        " AND application_name <> 'dbprobe-pool-monitor')"
        + (
            " OR application_name IN ('dbprobe-pool-monitor', 'dbprobe-leak-check')"
            if include_monitor
            else ""
        )
    )
    return int(rows[0][0])


def wait_no_sessions(pg: PostgresServer, timeout_s: float = 5.0) -> int:
    """Wait until nothing a pool run opened (pools, monitor) is left on the server."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = pool_sessions(pg, include_monitor=True)
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def wait_sessions(pg: PostgresServer, timeout_s: float = 20.0) -> bool:
    """Wait until a probe running elsewhere has pooled sessions open."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pool_sessions(pg) > 0:
            return True
        time.sleep(0.05)
    return False


def open_sockets_to(port: int) -> int:
    """TCP sockets this process still has open to ``port`` (any state but closed)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].rsplit(":", 1)[1], 16)
            if remote_port == port and parts[9] in inodes:
                count += 1
    return count


def postmaster_pid(pg: PostgresServer) -> int:
    assert pg.data_dir is not None
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def checked(report: Report) -> dict[str, Any]:
    """The report as JSON, validated against the schema."""
    doc = report.to_dict()
    validate_report(doc)
    return doc


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    return env
