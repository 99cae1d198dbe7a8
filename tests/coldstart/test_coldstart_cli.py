"""``dbprobe coldstart`` end to end: reports, exit codes, one-line failures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dbprobe.cli import main
from dbprobe.coldstart.schema import validate_coldstart_metrics
from dbprobe.pg import PostgresServer
from dbprobe.report.schema import validate_report

from . import hostile
from .conftest import AuthServer
from .helpers import PASSWORD, NotPostgresServer, url_with
from .proxy import FaultProxy

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


#: cases that need a server with TLS (skipped on the embedded PostgreSQL 18 build)
NEEDS_TLS = {"certificate-not-verified"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong-password", "dbprobe: error: authentication failed for user 'postgres'"),
        ("refused", "connection refused"),
        ("tls-not-offered", "dbprobe: error: TLS was required but the server does not offer it"),
        ("not-postgresql-url", "not a PostgreSQL URL: scheme 'mysql'"),
        ("not-a-postgresql-server", "does not speak the PostgreSQL protocol"),
        ("unknown-host", "cannot resolve host 'no-such-host.invalid'"),
        ("never-answers", "accepted the connection but did not answer within 1 s"),
        ("no-such-database", 'database "no_such_db" does not exist'),
        ("no-password", "the server asks for a password and none was given"),
        (
            "pg-hba-reject",
            'pg_hba.conf rejects connection for host "127.0.0.1", user "cs_rejected"',
        ),
        ("direct-tls-unsupported", "sslnegotiation=direct needs PostgreSQL 17 or later"),
        ("certificate-not-verified", "the server's TLS certificate could not be verified"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case: str,
    expected: str,
    pg: PostgresServer,
    auth_server: AuthServer,
    not_postgres: NotPostgresServer,
    refusing_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case in NEEDS_TLS and not auth_server.tls:
        pytest.skip("this PostgreSQL build has no TLS (the embedded wheel); runs on PG 15")
    direct_tls_server = auth_server.server.version_num >= 170000 and auth_server.tls
    if case == "direct-tls-unsupported" and direct_tls_server:
        pytest.skip("this server accepts direct TLS")
    for var in ("PGPASSWORD", "PGPASSFILE", "PGSSLROOTCERT", "PGREQUIREAUTH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent/pgpass")
    dsn = auth_server.server.dsn()
    never = hostile.ScriptedPeer(hostile.never_answers) if case == "never-answers" else None
    url = {
        "wrong-password": dsn.replace(PASSWORD, "Wr0ng-pass"),
        "refused": f"postgresql://u:pw@127.0.0.1:{refusing_port}/db",
        "tls-not-offered": url_with(pg.dsn(), sslmode="require"),
        "not-postgresql-url": "mysql://u:pw@127.0.0.1/db",
        "not-a-postgresql-server": f"postgresql://u@127.0.0.1:{not_postgres.port}/db",
        "unknown-host": "postgresql://u:pw@no-such-host.invalid:5432/db",
        "never-answers": f"postgresql://u:pw@127.0.0.1:{never.port if never else 0}/db",
        "no-such-database": url_with(dsn.rsplit("/", 1)[0] + "/no_such_db", sslmode="disable"),
        "no-password": url_with(dsn.replace(f":{PASSWORD}@", "@"), sslmode="disable"),
        "pg-hba-reject": url_with(dsn.replace(f"postgres:{PASSWORD}@", "cs_rejected:x@")),
        "direct-tls-unsupported": url_with(dsn, sslmode="require", sslnegotiation="direct"),
        # the self-signed certificate is in no system trust store
        "certificate-not-verified": url_with(dsn, sslmode="verify-full", sslrootcert="system"),
    }[case]
    try:
        rc = main(["-q", "coldstart", url, "--samples", "2", "--connect-timeout", "1"])
    finally:
        if never is not None:
            never.close()
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dbprobe: error: ")
    assert expected in lines[0]
    for secret in ("Wr0ng-pass", PASSWORD):
        assert secret not in captured.err
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


def _recording_interpreter(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A wrapper around this interpreter that records the command line and the
    environment of every process started through it, then runs the real one."""
    argv_log, env_log = tmp_path / "argv.log", tmp_path / "env.log"
    wrapper = tmp_path / "python-recording"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf \'%s\\n\' "$0" "$@" >> {argv_log}\n'
        f"env >> {env_log}\n"
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, argv_log, env_log


def test_fresh_processes_through_the_cli(
    auth_server: AuthServer,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--process and --import reach the run; every process phase is measured; the
    connection string, password included, reaches each child on stdin, never on its
    command line or in its environment. Through a proxy that delays every server
    message by D, the child's SCRAM connect takes three round trips (>= 3 D) and its
    first query one (>= D): lower bounds, whatever the load."""
    delay_s = 0.02
    proxy = fault_proxy(auth_server.server, delay_s=delay_s)
    (tmp_path / "user_app.py").write_text("import time\ntime.sleep(0.03)\n")
    monkeypatch.chdir(tmp_path)
    wrapper, argv_log, env_log = _recording_interpreter(tmp_path)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = url_with(auth_server.server.dsn(), sslmode="disable").replace(
        f":{auth_server.server.port}/", f":{proxy.port}/"
    )
    out = tmp_path / "r.json"
    rc = main(
        ["-q", "coldstart", url, "--driver", "psycopg", "--samples", "1", "--no-warm",
         "--process", "--process-samples", "2", "--import", "user_app",
         "--process-threshold-ms", "1", "--format", "json", "-o", str(out)]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    validate_report(doc)
    validate_coldstart_metrics(doc["metrics"]["coldstart"])
    proc = doc["metrics"]["coldstart"]["psycopg"]["process"]
    assert proc["_meta"]["imports"] == ["user_app"]
    for phase in ("interpreter", "imports", "driver_import", "connect", "first_query", "total"):
        assert proc[phase]["n"] == 2
        assert proc[phase]["min"] > 0, phase
    d_ms = delay_s * 1000
    assert proc["imports"]["min"] >= 30.0  # the module's sleep
    assert proc["connect"]["min"] >= 3 * d_ms
    assert proc["first_query"]["min"] >= d_ms
    assert [f for f in doc["findings"] if f["fingerprint"] == "coldstart:psycopg:process"]
    # the import check, the untimed warm-up process and two timed ones
    started = argv_log.read_text().count(f"{wrapper}\n-c\n")
    assert started == 4
    assert PASSWORD not in argv_log.read_text()
    assert PASSWORD not in env_log.read_text()


def test_a_module_that_cannot_be_imported_is_reported_before_any_measurement(
    auth_server: AuthServer,
    fault_proxy: Callable[..., FaultProxy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only the preflight connection reaches the server: the import check comes
    before the cold, warm and process rounds."""
    proxy = fault_proxy(auth_server.server)
    url = url_with(auth_server.server.dsn(), sslmode="disable").replace(
        f":{auth_server.server.port}/", f":{proxy.port}/"
    )
    rc = main(["-q", "coldstart", url, "--samples", "3", "--process", "--import", "no_such_app"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "dbprobe: error: cannot import module 'no_such_app' in a fresh process: "
        "ModuleNotFoundError: No module named 'no_such_app'"
    ]
    assert proxy.accepted == 1
