"""``dbprobe coldstart`` end to end: reports, exit codes, one-line failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dbprobe.cli import main
from dbprobe.pg import PostgresServer
from dbprobe.report.schema import validate_report

from .conftest import AuthServer
from .helpers import PASSWORD, NotPostgresServer, closed_port, url_with

pytestmark = pytest.mark.usefixtures("no_leftovers")


def test_json_report(
    auth_server: AuthServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "coldstart.json"
    url = url_with(auth_server.server.dsn(), sslmode="disable")
    rc = main(
        ["coldstart", url, "--driver", "psycopg", "--driver", "sqlalchemy-async",
         "--samples", "3", "--pool-size", "2", "--format", "json", "--output", str(out)]
    )  # fmt: skip
    assert rc == 0
    text = out.read_text()
    assert PASSWORD not in text
    doc = json.loads(text)
    validate_report(doc)
    assert doc["command"] == "coldstart"
    assert doc["target"]["url"].startswith("postgresql://postgres:***@127.0.0.1:")
    assert doc["target"]["server_version"] == auth_server.server.version
    cs = doc["metrics"]["coldstart"]
    assert set(cs) == {"tcp_floor", "protocol", "psycopg", "sqlalchemy-async", "_meta"}
    assert cs["psycopg"]["startup"]["n"] == 3
    assert cs["sqlalchemy-async"]["warm"]["checkout"]["n"] == 3
    assert any("protocol client" in note for note in doc["notes"])
    err = capsys.readouterr().err
    assert "cold connections" in err  # progress goes to stderr
    assert PASSWORD not in err


def test_threshold_and_fail_on(pg: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["-q", "coldstart", pg.dsn(), "--driver", "psycopg", "--samples", "2", "--no-warm",
            "--threshold-ms", "0.01", "--format", "markdown"]  # fmt: skip
    assert main(args) == 0  # a warning does not reach the default --fail-on error
    out = capsys.readouterr().out
    assert "slow-cold-start" in out
    assert "| psycopg |" in out  # the cold-start table
    # the table says which figures are the protocol client's
    assert "dns/tcp/tls/startup: protocol client" in out
    assert main([*args, "--fail-on", "warning"]) == 1


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong-password", "dbprobe: error: authentication failed for user 'postgres'"),
        ("refused", "connection refused"),
        ("tls-not-offered", "dbprobe: error: TLS was required but the server does not offer it"),
        ("not-postgresql-url", "not a PostgreSQL URL: scheme 'mysql'"),
        ("not-a-postgresql-server", "does not speak the PostgreSQL protocol"),
        ("unknown-host", "cannot resolve host 'no-such-host.invalid'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case: str,
    expected: str,
    pg: PostgresServer,
    auth_server: AuthServer,
    not_postgres: NotPostgresServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = {
        "wrong-password": auth_server.server.dsn().replace(PASSWORD, "Wr0ng-pass"),
        "refused": f"postgresql://u:pw@127.0.0.1:{closed_port()}/db",
        "tls-not-offered": url_with(pg.dsn(), sslmode="require"),
        "not-postgresql-url": "mysql://u:pw@127.0.0.1/db",
        "not-a-postgresql-server": f"postgresql://u@127.0.0.1:{not_postgres.port}/db",
        "unknown-host": "postgresql://u:pw@no-such-host.invalid:5432/db",
    }[case]
    rc = main(["-q", "coldstart", url, "--samples", "2", "--connect-timeout", "3"])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "Wr0ng-pass" not in captured.err
    assert "Traceback" not in captured.err


def test_bad_options_exit_2(pg: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coldstart", pg.dsn(), "--samples", "0"]) == 2
    assert "--samples" in capsys.readouterr().err
    assert main(["coldstart", pg.dsn(), "--import", "app"]) == 2
    assert "--import needs --process" in capsys.readouterr().err


def test_the_installed_command_runs_in_a_subprocess(pg: PostgresServer, tmp_path: Path) -> None:
    """The real entry point, in its own process (fresh imports, real exit code)."""
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", "coldstart", pg.dsn(), "--driver", "asyncpg",
         "--samples", "2", "--no-warm", "--format", "json", "-o", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    validate_report(json.loads(out.read_text()))
