"""Safety of ``dbprobe pool``: the server's connection budget, a server that goes away
mid-run, Ctrl-C, and bad input — each ends cleanly with every connection closed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pool_helpers import (
    checked,
    fast,
    open_sockets_to,
    pool_sessions,
    postmaster_pid,
    subprocess_env,
    wait_no_sessions,
    wait_sessions,
)

from dbprobe.cli import main
from dbprobe.errors import ConnectError, UsageError
from dbprobe.pg import PostgresServer, throwaway
from dbprobe.pool import POOL_KINDS, stress
from dbprobe.report.schema import validate_report

CLI = [sys.executable, "-m", "dbprobe.cli"]


@pytest.fixture(scope="module")
def small_pg() -> Iterator[PostgresServer]:
    """A server with max_connections 8 (3 reserved for superusers)."""
    with throwaway(max_connections=8) as server:
        yield server


def test_plans_beyond_80_percent_of_the_free_slots_are_refused(small_pg: PostgresServer) -> None:
    with pytest.raises(UsageError, match="--allow-server-exhaustion") as err:
        stress(small_pg.dsn(), "sqlalchemy", config=fast(size=4, overflow=2, max_concurrency=None))
    assert "free connection slots" in str(err.value)
    assert pool_sessions(small_pg) == 0


def test_server_side_exhaustion_is_counted_and_judged(small_pg: PostgresServer) -> None:
    # Capacity 10 on a server that has 8 slots in all: SQLAlchemy opens overflow
    # connections on demand and the server refuses them ("too many clients already").
    config = fast(
        size=2, overflow=8, think_ms=10, timeout_s=0.5, max_concurrency=20, steps=(2, 10, 20),
        spike=0, allow_server_exhaustion=True,
    )  # fmt: skip
    doc = checked(stress(small_pg.dsn(), "sqlalchemy", config=config))
    steps = doc["metrics"]["pool"]["sqlalchemy"]["steps"]
    refused = sum(s["errors"].get("too-many-clients", 0) for s in steps)
    assert refused > 0
    assert all(s["server_backends"] <= config.capacity for s in steps)
    rules = {f["rule"] for f in doc["findings"]}
    assert "pool-degradation" in rules
    assert "pool-over-budget" in rules
    degradation = next(f for f in doc["findings"] if f["rule"] == "pool-degradation")
    assert "too-many-clients" in degradation["message"]
    assert wait_no_sessions(small_pg) == 0


def test_cli_refusal_is_one_line_and_exit_2(
    small_pg: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["-q", "pool", small_pg.dsn(), "--pool", "psycopg", "--size", "6"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dbprobe: error: pool capacity 11")
    assert "Traceback" not in err


def _run_in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["report"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("kind", POOL_KINDS)
def test_server_stopped_mid_run_is_reported_and_nothing_is_left_open(kind: str) -> None:
    with throwaway() as server:
        config = fast(step_seconds=1.0, timeout_s=0.5, spike=0)
        thread, result = _run_in_thread(lambda: stress(server.dsn(), kind, config=config))
        assert wait_sessions(server), "the probe never connected"
        time.sleep(0.3)
        started = time.monotonic()
        os.kill(postmaster_pid(server), signal.SIGINT)  # fast shutdown: sessions terminated
        thread.join(30)
        assert not thread.is_alive(), "the probe hung after the server stopped"
        assert time.monotonic() - started < 20
        error = result.get("error")
        assert isinstance(error, ConnectError), result
        assert "went away" in str(error)
        assert "\n" not in str(error)
        deadline = time.monotonic() + 5
        while open_sockets_to(server.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_sockets_to(server.port) == 0


def test_cli_server_stopped_mid_run_exits_2_with_one_line() -> None:
    with throwaway() as server:
        proc = subprocess.Popen(
            [*CLI, "pool", server.dsn(), "--pool", "sqlalchemy-async", "--size", "2",
             "--overflow", "1", "--step-seconds", "1", "--timeout", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )  # fmt: skip
        try:
            assert wait_sessions(server), "the probe never connected"
            time.sleep(0.3)
            os.kill(postmaster_pid(server), signal.SIGINT)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("dbprobe: error:")]
    assert len(errors) == 1
    assert "went away" in errors[0]


def _interrupt_after(pg: PostgresServer, args: list[str], marker: str) -> tuple[int, str]:
    """Run the CLI, wait until stderr shows ``marker`` (a progress line: the probe is
    measuring), send SIGINT; return the exit code and all of stderr."""
    proc = subprocess.Popen(
        [*CLI, "pool", pg.dsn(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), f"no {marker!r} on stderr: {''.join(lines)}"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines)


@pytest.mark.parametrize("kind", ["psycopg", "asyncpg"])
def test_ctrl_c_stops_cleanly_and_closes_every_connection(pg: PostgresServer, kind: str) -> None:
    code, err = _interrupt_after(
        pg,
        ["--pool", kind, "--size", "2", "--overflow", "1", "--step-seconds", "1",
         "--think-ms", "5"],
        f"{kind} concurrency 1: 1/1",  # measuring: the first step is done
    )  # fmt: skip
    assert code == 130, f"exit {code}: {err}"
    assert "interrupted" in err
    assert "Traceback" not in err
    assert wait_no_sessions(pg) == 0


@pytest.mark.parametrize("kind", ["sqlalchemy", "asyncpg"])
def test_ctrl_c_shows_the_steps_measured_before_it(pg: PostgresServer, kind: str) -> None:
    code, err = _interrupt_after(
        pg,
        ["--pool", kind, "--size", "2", "--overflow", "0", "--step-seconds", "0.3",
         "--max-concurrency", "64", "--spike", "0"],
        f"{kind} concurrency 2: 1/1",
    )  # fmt: skip
    assert code == 130, f"exit {code}: {err}"
    done = [line for line in err.splitlines() if "before the interrupt" in line]
    assert done, err
    assert f"{kind} concurrency 1:" in done[0]
    assert "q/s" in done[0] and "(n=" in done[0]
    assert "Traceback" not in err
    assert wait_no_sessions(pg) == 0


def test_cli_json_report(pg: PostgresServer, tmp_path: Path) -> None:
    out = tmp_path / "pool.json"
    proc = subprocess.run(
        [*CLI, "pool", pg.dsn(), "--pool", "psycopg,sqlalchemy-async", "--size", "1",
         "--overflow", "1", "--step-seconds", "0.3", "--think-ms", "20", "--timeout", "0.02",
         "--spike", "4", "--format", "json", "--output", str(out)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # pool-exhaustion is an error
    doc = json.loads(out.read_text())
    validate_report(doc)
    assert set(doc["metrics"]["pool"]) == {"psycopg", "sqlalchemy-async"}
    assert "pool-exhaustion" in {f["rule"] for f in doc["findings"]}
    assert doc["metrics"]["pool_run"]["config"]["concurrency_levels"] == [1, 2, 4]
    assert proc.stdout == ""
    assert "psycopg concurrency 4" in proc.stderr  # progress per step


def test_cli_options_reach_the_run(
    pg: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pool.json"
    code = main(["-q", "pool", pg.dsn(), "--pool", "psycopg", "--size", "1", "--overflow", "1",
                 "--step-seconds", "0.2", "--soak", "1", "--sample-interval", "0.1",
                 "--instances", "50", "--spike", "3", "--server-cores", "4", "--spindles", "1",
                 "--autocommit", "--format", "json", "--output", str(out)])  # fmt: skip
    assert code in (0, 1), capsys.readouterr().err
    doc = json.loads(out.read_text())
    validate_report(doc)
    config = doc["metrics"]["pool_run"]["config"]
    assert config["instances"] == 50
    assert config["spike"] == 3
    assert config["spindles"] == 1
    assert config["soak_s"] == 1.0
    assert config["sample_interval_s"] == 0.1
    assert config["autocommit"] is True
    assert doc["metrics"]["pool_run"]["server_cores"] == 4
    tree = doc["metrics"]["pool"]["psycopg"]
    assert tree["autocommit"] is True
    assert tree["spike"]["requests"] == 3
    assert len(tree["soak"]["series"]["t_s"]) >= 5
    sizing = tree["verdict"]["sizing"]
    assert sizing["formula_size"] == 9  # 4 cores × 2 + 1 spindle
    assert sizing["fleet_connections"] == 100  # 50 instances × capacity 2
    assert "pool-over-budget" in {f["rule"] for f in doc["findings"]}
    assert wait_no_sessions(pg) == 0


def test_cli_table_shows_the_steps(pg: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["pool", pg.dsn(), "--pool", "asyncpg", "--size", "1", "--overflow", "0",
         "--step-seconds", "0.2", "--spike", "0", "--rate", "100", "--fail-on", "never"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "POOL asyncpg (ms, capacity 1;" in out and "timed" in out
    assert "2 @100/s" in out  # the open-loop row names its rate
    assert "open loop 100/s:" in out and "from the scheduled start" in out
    assert "asyncpg: peak" in out
    assert out.rstrip().splitlines()[-1].startswith("summary:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool", "hikari"], "unknown pool 'hikari'"),
        (["--size", "0"], "--size must be at least 1"),
        (["--max-concurrency", "3"], "below twice the pool's capacity"),
        (["--timeout", "0"], "--timeout must be more than 0"),
        (["--rate", "-5"], "--rate values must be more than 0"),
        (["--sql", "SELEC 1", "--pool", "psycopg"], "the workload failed on the psycopg pool"),
        (["--sql", "SELECT 1", "--scenario", "checkout"], "exclude each other"),
        (["--scenario", "nope", "--pool", "sqlalchemy"], "unknown scenario 'nope'"),
        (["--format", "yaml"], "invalid value for '--format'"),
        (["--rate", "inf"], "--rate must be a finite number"),
        (["--rate", "1e12"], "at most 1,000,000 requests/s"),
        (["--rate", "500000", "--step-seconds", "10"], "arrivals in one step"),
        (["--timeout", "inf"], "--timeout must be a finite number"),
        (["--step-seconds", "nan"], "--step-seconds must be a finite number"),
        (["--think-ms", "1e9"], "--think-ms 1e+09 holds each connection longer"),
        (["--max-seconds", "inf"], "--max-seconds must be a finite number"),
        (["--sample-interval", "inf"], "--sample-interval must be a finite number"),
        (["--spike", "20000"], "over the ceiling of 1000"),
        (["--max-concurrency", "5000"], "over the ceiling of 1000"),
        (["--server-cores", "-3"], "--server-cores must be at least 1"),
        (["--spindles", "-5"], "--spindles must be 0 or more"),
        (["--max-seconds", "0.001", "--pool", "psycopg"], "before any pool ran"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    pg: PostgresServer, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sockets = open_sockets_to(pg.port)  # other tests' fixtures may hold some
    started = time.perf_counter()
    code = main(["-q", "pool", pg.dsn(), "--step-seconds", "0.2", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    (error,) = err.strip().splitlines()
    assert error.startswith("dbprobe")
    assert message.lower() in error.lower()
    assert time.perf_counter() - started < 30  # refused up front, not after a long run
    assert wait_no_sessions(pg) == 0  # the monitor too
    assert open_sockets_to(pg.port) <= sockets


def test_cli_unreachable_server_is_one_line(tmp_path: Path) -> None:
    import socket

    # a port held bound but not listening for the whole run: nobody else can take it,
    # and a connection to it is refused at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = subprocess.run(
            [*CLI, "pool", f"postgresql://app:secret@127.0.0.1:{port}/db", "--pool", "psycopg"],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
            check=False,
        )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("dbprobe: error: cannot reach")
    assert "secret" not in proc.stderr


def test_psycopg_pool_refused_by_the_server_is_no_leak_and_not_graceful() -> None:
    # The reproduction: a non-superuser role on a max_connections=12 server (9 slots for
    # it), 4 taken by other clients. psycopg_pool retries a refused connection in the
    # background and counts it in pool_size meanwhile: pool_size - pool_available said
    # "1 connection still checked out" (a false connection-leak error), and the refusal,
    # seen only as connections_errors in the pool's stats, was judged graceful.
    with throwaway(max_connections=12) as server:
        server.execute("CREATE ROLE pool_app LOGIN PASSWORD 'pool-app-secret'")
        server.execute(f'GRANT ALL ON DATABASE "{server.database}" TO pool_app')
        target = server.target(user="pool_app", password="pool-app-secret")
        held = [psycopg.connect(target.libpq_dsn(), application_name="other-client")
                for _ in range(4)]  # fmt: skip
        try:
            config = fast(
                size=3, overflow=2, timeout_s=1.0, max_concurrency=10, steps=(2, 5, 10),
                spike=0, allow_server_exhaustion=True,
            )  # fmt: skip
            doc = checked(stress(target, "psycopg", config=config))
        finally:
            for conn in held:
                conn.close()
        tree = doc["metrics"]["pool"]["psycopg"]
        refused = sum(int(s["pool_stats"].get("connections_errors", 0)) for s in tree["steps"])
        refused += int(tree["stats"].get("connections_errors", 0))
        assert refused > 0
        assert tree["checked_out_at_end"] == 0
        assert tree["sessions_after_close"] == 0
        rules = {f["rule"] for f in doc["findings"]}
        assert "connection-leak" not in rules
        assert "pool-degradation" in rules
        degradation = next(f for f in doc["findings"] if f["rule"] == "pool-degradation")
        assert "refused" in degradation["message"]
        assert not tree["verdict"]["degradation"]["graceful"]


@pytest.mark.parametrize("kind", ["psycopg", "asyncpg"])
def test_max_seconds_is_a_hard_cap_even_with_long_think_times(
    pg: PostgresServer, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Think time of 15 s per request (allowed: under 10 × the 2 s timeout): the old
    # drains waited max(5 s, 2 × timeout + 1 s + think) per phase whatever --max-seconds
    # said; think time and drains now stop at the cap.
    sockets = open_sockets_to(pg.port)  # other tests' fixtures may hold some
    started = time.perf_counter()
    code = main(["-q", "pool", pg.dsn(), "--pool", kind, "--size", "1", "--overflow", "0",
                 "--think-ms", "15000", "--max-seconds", "3"])  # fmt: skip
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code in (0, 1), err
    assert elapsed < 15.0, f"took {elapsed:.1f}s"
    assert wait_no_sessions(pg) == 0
    assert open_sockets_to(pg.port) <= sockets
