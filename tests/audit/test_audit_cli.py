"""``dbprobe audit`` and ``dbprobe explain`` through the real CLI in a subprocess: every
bad-input class exits 2 with one line, no traceback and no password; the happy path
writes a valid report and exits per --fail-on."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_support import AuditedShop

from dbprobe.pg import PostgresServer, throwaway
from dbprobe.pg.local import free_port
from dbprobe.report.schema import validate_report

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-" + secrets.token_hex(4)


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        input=stdin,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert SECRET not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def scram_server() -> Iterator[PostgresServer]:
    """A server that asks for a password (the fixtures' servers trust loopback)."""
    with throwaway(auth="scram-sha-256", password=SECRET) as server:
        yield server


def scram_url(
    server: PostgresServer, database: str, *, user: str = "postgres", password: str = SECRET
) -> str:
    return f"postgresql://{user}:{password}@{server.host}:{server.port}/{database}"


# -- bad input ---------------------------------------------------------------------------------


def test_malformed_url() -> None:
    result = run_cli("-q", "audit", f"postgresql://app:{SECRET}@db:notaport/shop")
    assert_one_line_error(result, "dbprobe: error:", "malformed database URL")


def test_not_a_postgresql_url() -> None:
    result = run_cli("-q", "audit", f"mysql://app:{SECRET}@localhost/shop")
    assert_one_line_error(result, "not a PostgreSQL URL")
    result = run_cli("-q", "explain", f"sqlite:///{SECRET}.db", "SELECT 1")
    assert_one_line_error(result, "not a PostgreSQL URL")


def test_unreachable_host() -> None:
    port = free_port()  # nothing listens there
    result = run_cli("-q", "audit", f"postgresql://app:{SECRET}@127.0.0.1:{port}/shop")
    assert_one_line_error(result, "cannot reach 127.0.0.1", "connection refused")


def test_authentication_failure(scram_server: PostgresServer) -> None:
    url = scram_url(scram_server, "postgres", password="wrong-" + SECRET)
    result = run_cli("-q", "audit", url)
    assert_one_line_error(result, "authentication failed for user 'postgres'")


def test_unknown_database(scram_server: PostgresServer) -> None:
    result = run_cli("-q", "audit", scram_url(scram_server, "no_such_db"))
    assert_one_line_error(result, "no_such_db", "does not exist")


def test_missing_connect_privilege(scram_server: PostgresServer) -> None:
    db = scram_server.create_database()
    role = f"dbprobe_nocon_{secrets.token_hex(4)}"
    scram_server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
    scram_server.execute(f"REVOKE CONNECT ON DATABASE {db} FROM PUBLIC")
    try:
        result = run_cli("-q", "audit", scram_url(scram_server, db, user=role))
        assert_one_line_error(result, "permission denied for database")
    finally:
        scram_server.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["audit", "postgresql://x/y", "--verify", "real"], "--disposable"),
        (["audit", "postgresql://x/y", "--timeout", "soon"], "is not a duration"),
        (["audit", "postgresql://x/y", "--top", "-1"], "--top"),
        (["explain", "postgresql://x/y", "DROP TABLE t"], "only queries and DML"),
        (["explain", "postgresql://x/y", "SELECT 1", "--param", "1"], "no $1"),
        (["explain", "postgresql://x/y", "@/nonexistent/file.sql"], "cannot read"),
    ],
)
def test_bad_arguments(args: list[str], needle: str) -> None:
    result = run_cli("-q", *args)
    line = assert_one_line_error(result)
    assert needle.replace("no $1", "has none") in line


# -- happy paths --------------------------------------------------------------------------------


@pytest.fixture
def cli_shop(audited_shop: AuditedShop, pg: PostgresServer) -> AuditedShop:
    """The CLI layer is the same on every server: run it on the session's only (the
    library under it is tested on PostgreSQL 15 and 18)."""
    if audited_shop.server is not pg:
        pytest.skip("CLI paths run on the session server only")
    return audited_shop


def test_audit_json_report(cli_shop: AuditedShop, tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    url = cli_shop.server.url(cli_shop.database)
    result = run_cli("audit", url, "--format", "json", "--output", str(out), "--top", "50")
    assert "Traceback" not in result.stderr
    assert cli_shop.server.password and cli_shop.server.password not in result.stderr
    doc = json.loads(out.read_text())
    validate_report(doc)
    errors = doc["summary"]["error"]
    assert result.returncode == (1 if errors else 0), result.stderr
    assert doc["command"] == "audit"
    rules = {f["rule"] for f in doc["findings"]}
    assert {"fk-missing-index", "duplicate-index", "unindexed-lookup"} <= rules
    # progress went to stderr, the report to the file
    assert "explaining top statements" in result.stderr and result.stdout == ""

    never = run_cli("-q", "audit", url, "--format", "markdown", "--fail-on", "never")
    assert never.returncode == 0 and "| severity | rule |" in never.stdout
    warn = run_cli("-q", "audit", url, "--format", "table", "--fail-on", "warning")
    assert warn.returncode == 1 and "fk-missing-index" in warn.stdout


def test_audit_never_prints_the_password(scram_server: PostgresServer) -> None:
    db = scram_server.create_database()
    result = run_cli("audit", scram_url(scram_server, db), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["target"]["url"].startswith("postgresql://postgres:***@")
    validate_report(doc)


def test_explain_command(cli_shop: AuditedShop) -> None:
    url = cli_shop.server.url(cli_shop.database)
    sql = "SELECT * FROM stock_movements WHERE reference = $1"
    generic = run_cli("-q", "explain", url, sql, "--format", "json", "--fail-on", "never")
    assert generic.returncode == 0, generic.stderr
    doc = json.loads(generic.stdout)
    validate_report(doc)
    (finding,) = doc["findings"]
    assert finding["recommendation"].startswith(
        "CREATE INDEX CONCURRENTLY ix_stock_movements_reference ON public.stock_movements"
    )
    assert doc["metrics"]["explain"]["generic_plan"] is True
    assert doc["metrics"]["explain"]["plan"][0].startswith(("Seq Scan", "Sort", "Gather"))

    bound = run_cli(
        "-q", "explain", url, sql, "--param", "PO-000123", "--format", "json", "--analyze",
        "--fail-on", "never",
    )  # fmt: skip
    assert bound.returncode == 0, bound.stderr
    doc = json.loads(bound.stdout)
    assert doc["metrics"]["explain"]["analyzed"] is True
    assert doc["metrics"]["explain"]["generic_plan"] is False
    assert "PO-000123" not in bound.stdout  # bound values stay out of the report

    piped = run_cli("-q", "explain", url, "-", "--fail-on", "never", stdin=sql + ";\n")
    assert piped.returncode == 0 and "ix_stock_movements_reference" in piped.stdout

    clean = run_cli(
        "-q", "explain", url, "SELECT * FROM products WHERE sku = 'SKU-000001'", "--format", "json"
    )
    assert clean.returncode == 0 and json.loads(clean.stdout)["findings"] == []


def test_explain_analyze_refuses_to_write(cli_shop: AuditedShop) -> None:
    url = cli_shop.server.url(cli_shop.database)
    result = run_cli(
        "-q", "explain", url, "UPDATE stock_movements SET quantity = 0 WHERE id = $1",
        "--param", "1", "--analyze",
    )  # fmt: skip
    assert_one_line_error(result, "read-only")


# -- options take effect ------------------------------------------------------------------------


def audit_json(url: str, *args: str) -> dict[str, Any]:
    result = run_cli("-q", "audit", url, "--format", "json", "--fail-on", "never", *args)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    validate_report(doc)
    return doc


def rules_of(doc: dict[str, Any]) -> set[str]:
    return {str(f["rule"]) for f in doc["findings"]}


def test_top_and_min_rows_take_effect(cli_shop: AuditedShop) -> None:
    url = cli_shop.server.url(cli_shop.database)
    everything = audit_json(url, "--no-coldstart")
    assert everything["metrics"]["audit"]["statements"]["considered"] > 1
    assert "unindexed-lookup" in rules_of(everything)
    one = audit_json(url, "--no-coldstart", "--top", "1")
    assert one["metrics"]["audit"]["statements"]["considered"] == 1
    # stock_movements (20,000 rows) is the only table over the default 10,000
    big = audit_json(url, "--no-coldstart", "--min-rows", "30000")
    assert not rules_of(big) & {"unindexed-lookup", "seq-scan-heavy-table"}
    assert "fk-missing-index" in rules_of(big)  # not a size rule


def test_schema_options_take_effect(cli_shop: AuditedShop) -> None:
    url = cli_shop.server.url(cli_shop.database)
    for args in (["--schema", "other"], ["--exclude-schema", "public"]):
        doc = audit_json(url, "--no-coldstart", *args)
        assert doc["findings"] == [], (args, doc["findings"])
        assert doc["metrics"]["audit"]["statements"]["explained"] >= 1  # statements still ran
    only_public = audit_json(url, "--no-coldstart", "--schema", "pub*")
    assert {"fk-missing-index", "unindexed-lookup"} <= rules_of(only_public)


def test_timeouts_take_effect(cli_shop: AuditedShop) -> None:
    url = cli_shop.server.url(cli_shop.database)
    doc = audit_json(url, "--no-coldstart", "--timeout", "1ms")
    skipped = [f for f in doc["findings"] if f["rule"] == "check-skipped"]
    assert skipped, doc["findings"]
    assert all(f["severity"] == "info" for f in skipped)
    assert any(
        f["evidence"].get("sqlstate") == "57014" or "timeout" in f["evidence"].get("failures", {})
        for f in skipped
    ), skipped
    assert "statement_timeout=1 ms" in " ".join(doc["notes"])
    bounded = audit_json(url, "--no-coldstart", "--timeout", "3s", "--lock-timeout", "250ms")
    assert "statement_timeout=3000 ms, lock_timeout=250 ms" in " ".join(
        doc["notes"] + bounded["notes"]
    )


def test_html_and_sarif_formats(cli_shop: AuditedShop, tmp_path: Path) -> None:
    import jsonschema

    url = cli_shop.server.url(cli_shop.database)
    html = run_cli("-q", "audit", url, "--no-coldstart", "--format", "html", "--fail-on", "never")
    assert html.returncode == 0, html.stderr
    assert html.stdout.lstrip().lower().startswith("<!doctype html")
    assert "ix_stock_movements_reference" in html.stdout
    out = tmp_path / "audit.sarif"
    sarif = run_cli(
        "-q", "audit", url, "--no-coldstart", "--format", "sarif", "--output", str(out),
        "--fail-on", "never",
    )  # fmt: skip
    assert sarif.returncode == 0, sarif.stderr
    doc = json.loads(out.read_text())
    schema = json.loads((REPO / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.Draft4Validator(schema).validate(doc)
    rule_ids = {r["ruleId"] for run in doc["runs"] for r in run["results"]}
    assert {"fk-missing-index", "unindexed-lookup"} <= rule_ids
