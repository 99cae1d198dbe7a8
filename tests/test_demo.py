"""``dbprobe demo`` end to end, as the README runs it: a real subprocess, a real server,
every probe; the report finds every planted problem of the fixture's manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dbprobe.pg import PostgresServer
from dbprobe.report.model import Report
from dbprobe.report.render import render
from dbprobe.report.schema import validate_report
from fixtures.shop.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent
SARIF_SCHEMA = ROOT / "tests" / "data" / "sarif-schema-2.1.0.json"


@pytest.fixture(scope="module")
def demo_run(pg: PostgresServer) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    if pg.provider not in ("local", "embedded"):
        pytest.skip(f"the demo test runs the session's own provider (session: {pg.provider})")
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix="dbprobe-demo-test-", dir=base))
    os.chmod(tmp, 0o755)
    env = {**os.environ, "DBPROBE_POSTGRES": pg.provider, "DBPROBE_TMPDIR": str(tmp)}
    res = subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", "demo", "--format", "json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    try:
        yield res, tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_report(demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    res, _ = demo_run
    assert "Traceback" not in res.stderr
    document: dict[str, Any] = json.loads(res.stdout)
    return document


def test_demo_exits_1_because_it_finds_errors(
    demo_run: tuple[subprocess.CompletedProcess[str], Path], demo_report: dict[str, Any]
) -> None:
    res, _ = demo_run
    assert demo_report["summary"]["error"] > 0
    assert res.returncode == 1, res.stderr[-2000:]  # DESIGN.md: findings at --fail-on error
    assert "server stopped and removed" in res.stderr  # progress on stderr


def test_demo_report_is_valid_and_complete(demo_report: dict[str, Any]) -> None:
    validate_report(demo_report)
    assert demo_report["command"] == "demo"
    metrics = demo_report["metrics"]
    assert metrics["fixture"]["rows"]["stock_movements"] >= 10_000
    for section in ("capture", "audit", "coldstart", "pool"):
        assert section in metrics, section
    assert {"psycopg", "asyncpg", "sqlalchemy", "sqlalchemy-async"} <= set(metrics["coldstart"])
    assert metrics["pool"]["sqlalchemy"]["steps"]


def test_demo_finds_every_planted_problem(demo_report: dict[str, Any]) -> None:
    manifest = load_manifest()
    coverage = demo_report["metrics"]["demo"]["manifest"]
    assert coverage["missed"] == []
    assert sorted(coverage["found"]) == sorted(p.id for p in manifest.problems)
    findings = demo_report["findings"]
    # checked independently of the demo's own bookkeeping: each planted code problem
    # has a finding of its rule at its marker line, each schema problem one on its table
    for problem in manifest.problems:
        mine = [f for f in findings if f["rule"] == problem.rule]
        if problem.kind == "code":
            where = problem.resolve_location()
            assert any(f.get("location") == where for f in mine), (problem.id, where)
        else:
            assert any((f.get("table") or "").endswith(problem.table) for f in mine), problem.id
    fixes = {f["recommendation"] for f in findings if f["rule"] == "n-plus-one"}
    assert any("joinedload(Order.customer)" in fix for fix in fixes)
    assert any("selectinload(Customer.orders)" in fix for fix in fixes)


def test_demo_reports_nothing_on_the_clean_twins(demo_report: dict[str, Any]) -> None:
    manifest = load_manifest()
    located = {f.get("location") for f in demo_report["findings"] if f.get("location")}
    for case in manifest.clean:
        if case.marker:
            assert case.resolve_location() not in located, case.id


def test_demo_leaves_nothing_behind(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, tmp = demo_run
    assert list(tmp.iterdir()) == [], "the demo left files behind"
    left = subprocess.run(
        ["pgrep", "-f", f"postgres -D {tmp}"], capture_output=True, text=True, check=False
    ).stdout
    assert left.strip() == ""


def test_demo_report_as_sarif_validates(demo_report: dict[str, Any]) -> None:
    schema = json.loads(SARIF_SCHEMA.read_text())
    sarif = json.loads(render(Report.from_dict(demo_report), "sarif"))
    jsonschema.Draft4Validator(schema).validate(sarif)
    results = sarif["runs"][0]["results"]
    assert any(
        r["ruleId"] == "n-plus-one"
        and r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("fixtures/")
        for r in results
    )


def test_demo_report_as_html_renders_in_chromium(
    demo_report: dict[str, Any], tmp_path: Path
) -> None:
    from tests.reports.png import colour_stats
    from tests.reports.test_report_browser import CHROMIUM, chromium

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = tmp_path / "demo.html"
    page.write_text(render(Report.from_dict(demo_report), "html"), encoding="utf-8")
    dom, requests = chromium(page, "--dump-dom")
    assert "Cold start by phase" in dom
    assert "Throughput against concurrency" in dom
    assert dom.count("<svg") >= 6
    assert requests == []
    shot = tmp_path / "demo.png"
    chromium(page, f"--screenshot={shot}", "--window-size=1280,2000")
    colours, inked = colour_stats(shot.read_bytes())
    assert colours > 50 and inked > 0.01
