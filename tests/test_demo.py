"""``dbprobe demo`` end to end, as the README runs it: a real subprocess, a real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dbprobe.pg import PostgresServer
from dbprobe.report.schema import validate_report

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_leaves_nothing_behind(pg: PostgresServer) -> None:
    if pg.provider not in ("local", "embedded"):
        pytest.skip(f"demo test runs the session's own provider (session: {pg.provider})")
    tmp = Path(
        tempfile.mkdtemp(
            prefix="dbprobe-demo-test-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        )
    )
    os.chmod(tmp, 0o755)
    try:
        env = {**os.environ, "DBPROBE_POSTGRES": pg.provider, "DBPROBE_TMPDIR": str(tmp)}
        res = subprocess.run(
            [sys.executable, "-m", "dbprobe.cli", "demo", "--format", "json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
            check=False,
        )
        assert res.returncode in (0, 1), res.stderr
        doc = json.loads(res.stdout)
        validate_report(doc)
        assert doc["command"] == "demo"
        assert doc["target"]["server_version"]
        rows = doc["metrics"]["fixture"]["rows"]
        assert rows["stock_movements"] >= 10_000 and rows["orders"] > 0
        assert list(tmp.iterdir()) == [], "the demo left files behind"
        left = subprocess.run(
            ["pgrep", "-f", f"postgres -D {tmp}"], capture_output=True, text=True, check=False
        ).stdout
        assert left.strip() == ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
