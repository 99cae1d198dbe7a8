"""The local and embedded providers: ``initdb`` into a temp dir and start ``postgres``.

The server is a child of this process (in its own session, so a terminal Ctrl-C
reaches us, not it), listens on a free loopback port and on a unix socket in a
private directory, and is ready when a real connection succeeds. A watchdog
process stops it and removes the directory if this process dies.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psycopg

from dbprobe.errors import ServerStartError
from dbprobe.pg.accounts import ServerAccount, readable_binaries, server_account
from dbprobe.pg.binaries import PgBinaries
from dbprobe.pg.cleanup import REAPER
from dbprobe.pg.server import PostgresServer, read_version

log = logging.getLogger("dbprobe.pg")

SUPERUSER = "postgres"
# Settings for a fast, disposable server. Durability is off on purpose.
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_wal_size": "1GB",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "checkpoint_timeout": "30min",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "track_io_timing": "on",
    "jit": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
}
_TMPFS_MIN_FREE = 1 << 30  # 1 GiB
_PORT_TAKEN = ("already in use", "could not bind", "could not create listen socket")
# One freshly initdb'ed data directory per (binaries, account, scratch root), copied for
# every further server of this process; removed at exit (or by the watchdog).
_PRISTINE: dict[tuple[str, int, str], Path] = {}


def release_pristine() -> None:
    """Remove this process's pristine clusters (runs at exit; call it from a forked
    child that leaves with ``os._exit``)."""
    while _PRISTINE:
        _, data = _PRISTINE.popitem()
        shutil.rmtree(data.parent, ignore_errors=True)
        if not data.parent.exists():
            REAPER.unwatch_dir(data.parent)


atexit.register(release_pristine)


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """How to set up a throwaway server.

    max_connections: server ``max_connections`` (default 100; small values let pool
        tests exhaust the server).
    settings: extra ``postgresql.conf`` settings, applied after the defaults.
    auth: ``scram-sha-256`` (default), ``md5`` or ``trust`` for TCP connections; the
        private unix socket (mode 700) always trusts: dbprobe's own admin path.
    password: the ``postgres`` role's password; default a random one (the handle's
        URLs carry it), so other local users cannot use the server.
    ssl: enable TLS with a self-signed certificate generated for this server.
    hba: complete ``pg_hba.conf`` lines replacing the generated TCP rules.
    listen: loopback addresses to listen on (default ``127.0.0.1``).
    extensions: extensions installed in ``template1`` and ``postgres`` when available.
    """

    max_connections: int = 100
    settings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    auth: str = "scram-sha-256"
    password: str | None = None
    ssl: bool = False
    hba: Sequence[str] | None = None
    listen: Sequence[str] = ("127.0.0.1",)
    extensions: Sequence[str] = ("pg_stat_statements", "hypopg")


def scratch_root() -> Path:
    """Where data directories go: ``$DBPROBE_TMPDIR``, else a tmpfs, else the temp dir."""
    env = os.environ.get("DBPROBE_TMPDIR")
    if env:
        return Path(env)
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize >= _TMPFS_MIN_FREE:
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def on_tmpfs(path: Path) -> bool:
    """Whether ``path`` lives on a tmpfs (by the longest matching mount point)."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, fstype = parts[1], parts[2]
    except OSError:
        return False
    return fstype == "tmpfs"


def write_as(path: Path, text: str, account: ServerAccount, mode: int) -> None:
    """Write a file inside a directory the account owns, without following a symlink
    the account may have planted there, and give the file to the account."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode())
        if account.switch:
            os.fchown(fd, account.uid, account.gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """One initdb'ed data directory and its running postmaster."""

    def __init__(self, bins: PgBinaries, options: ServerOptions, provider: str) -> None:
        self.account: ServerAccount = server_account()
        self.bins = readable_binaries(bins, self.account)
        self.options = options
        self.provider = provider
        # Layout: base/ stays ours (mode 711: the account may traverse, not write);
        # base/data and base/sock belong to the account, mode 700; base/postgresql.log
        # is ours, mode 600, written by the server through an inherited descriptor. So
        # no path root writes to or chowns can be swapped by the account.
        root = scratch_root()
        self.base = Path(tempfile.mkdtemp(prefix="dbprobe-pg-", dir=root))
        REAPER.watch_dir(self.base)
        os.chmod(self.base, 0o711)
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log_path = self.base / "postgresql.log"
        for d in (self.data, self.sock):
            d.mkdir(mode=0o700)
            self.account.give(d)
        self.tmpfs = on_tmpfs(root)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}

    # -- lifecycle --------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bins.bindir}:/usr/bin:/bin",
            "LANG": "C",
            "LC_ALL": "C",
            "TZ": "UTC",
            "PGTZ": "UTC",
        }

    def _run(self, args: Sequence[str], what: str) -> None:
        try:
            res = subprocess.run(
                list(args),
                capture_output=True,
                text=True,
                env=self._env(),
                cwd=self.base,
                timeout=120,
                check=False,
                user=self.account.run_uid,
                group=self.account.run_gid,
                extra_groups=self.account.run_groups,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServerStartError(f"{what} failed: {exc}") from None
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise ServerStartError(f"{what} failed ({self.bins.bindir}): {' | '.join(tail)}")

    def initdb(self) -> None:
        """Initialise the data directory: a copy of this process's pristine cluster
        when there is one (~60 ms on tmpfs), else ``initdb`` (~0.35 s) plus a pristine
        copy for the next server."""
        start = time.perf_counter()
        key = (str(self.bins.bindir), self.account.uid, str(self.base.parent))
        pristine = _PRISTINE.get(key)
        if pristine is not None and (pristine / "PG_VERSION").exists():
            self._run(["cp", "-a", f"{pristine}/.", str(self.data)], "copying the pristine cluster")
            self.timings["copy_s"] = time.perf_counter() - start
        else:
            self._run(
                [
                    str(self.bins.tool("initdb")),
                    "-D", str(self.data),
                    "-U", SUPERUSER,
                    "-A", "trust",
                    "-E", "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                "initdb",
            )  # fmt: skip
            self.timings["initdb_s"] = time.perf_counter() - start
            self._keep_pristine(key)
        self._write_hba()
        if self.options.ssl:
            self._make_certificate()

    def _keep_pristine(self, key: tuple[str, int, str]) -> None:
        holder = Path(tempfile.mkdtemp(prefix="dbprobe-pg-pristine-", dir=self.base.parent))
        REAPER.watch_dir(holder)
        os.chmod(holder, 0o711)
        (holder / "data").mkdir(mode=0o700)
        self.account.give(holder / "data")
        try:
            self._run(
                ["cp", "-a", f"{self.data}/.", str(holder / "data")], "keeping a pristine copy"
            )
        except ServerStartError as exc:  # an optimisation only
            log.debug("no pristine cluster kept: %s", exc)
            shutil.rmtree(holder, ignore_errors=True)
            return
        _PRISTINE[key] = holder / "data"

    def _write_hba(self) -> None:
        lines = ["local all all trust"]
        if self.options.hba is not None:
            lines += list(self.options.hba)
        else:
            method = self.options.auth
            for cidr in ("127.0.0.1/32", "::1/128"):
                lines.append(f"host all all {cidr} {method}")
        write_as(self.data / "pg_hba.conf", "\n".join(lines) + "\n", self.account, 0o600)

    def _make_certificate(self) -> None:
        key, crt = self.data / "server.key", self.data / "server.crt"
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ServerStartError("ssl=True needs the openssl command (apt install openssl)")
        res = subprocess.run(
            [
                openssl,
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
                "-keyout", str(key), "-out", str(crt),
            ],
            capture_output=True, text=True, timeout=60, check=False, cwd=self.data,
            user=self.account.run_uid, group=self.account.run_gid,
            extra_groups=self.account.run_groups, umask=0o077,
        )  # fmt: skip
        if res.returncode != 0:
            raise ServerStartError(f"openssl could not make a certificate: {res.stderr.strip()}")

    @property
    def certificate(self) -> Path | None:
        crt = self.data / "server.crt"
        return crt if self.options.ssl else None

    def _settings(self, port: int) -> dict[str, str]:
        settings = dict(FAST_SETTINGS)
        settings.update(
            {
                "listen_addresses": ",".join(self.options.listen),
                "port": str(port),
                "unix_socket_directories": str(self.sock),
                "max_connections": str(self.options.max_connections),
            }
        )
        if self.options.ssl:
            settings.update(
                {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}
            )
        # Dynamic shared memory in the data directory when that is on tmpfs: a killed
        # server then leaves no orphaned segment in /dev/shm.
        settings["dynamic_shared_memory_type"] = "mmap" if self.tmpfs else "posix"
        if self.options.auth == "md5":
            settings["password_encryption"] = "md5"
        settings.update(self.options.settings)
        return settings

    def start(self, timeout: float = 30.0) -> None:
        last_error = ""
        for _attempt in range(5):
            self.port = free_port(self.options.listen[0] if self.options.listen else "127.0.0.1")
            if self._start_once(self.port, timeout):
                return
            last_error = self._log_tail()
            if not any(m in last_error for m in _PORT_TAKEN):
                break  # not a port collision: retrying would not help
            log.debug("port %s was taken, retrying on another", self.port)
        raise ServerStartError(f"postgres did not start: {last_error}")

    def _start_once(self, port: int, timeout: float) -> bool:
        args = [str(self.bins.tool("postgres")), "-D", str(self.data)]
        for k, v in self._settings(port).items():
            args += ["-c", f"{k}={v}"]
        start = time.perf_counter()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        logf = os.fdopen(fd, "ab")
        try:
            self.proc = subprocess.Popen(
                args,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                cwd=self.base,
                start_new_session=True,
                close_fds=True,
                user=self.account.run_uid,
                group=self.account.run_gid,
                extra_groups=self.account.run_groups,
            )
        finally:
            logf.close()
        REAPER.watch_pid(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                REAPER.unwatch_pid(self.proc.pid)
                self.proc = None
                return False
            try:
                with psycopg.connect(
                    host=str(self.sock), port=port, user=SUPERUSER, dbname="postgres",
                    connect_timeout=2, application_name="dbprobe-admin",
                ):  # fmt: skip
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerStartError(
                        f"postgres did not accept connections within {timeout:.0f}s: "
                        f"{self._log_tail()}"
                    ) from None
                time.sleep(0.005)
        self.timings["start_s"] = time.perf_counter() - start
        return True

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no server log)"
        return " | ".join(text[-lines:]) or "(empty server log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the postmaster (immediate shutdown: the data is thrown away anyway)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        start = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        REAPER.unwatch_pid(proc.pid)
        self.timings["stop_s"] = time.perf_counter() - start

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        if not self.base.exists():
            REAPER.unwatch_dir(self.base)

    def bootstrap(self) -> tuple[str, int]:
        """Install extensions, set the password; return the server version."""
        with psycopg.connect(
            host=str(self.sock), port=self.port, user=SUPERUSER, dbname="postgres",
            autocommit=True, application_name="dbprobe-admin",
        ) as conn:  # fmt: skip
            version = read_version(conn)
            available = {
                r[0] for r in conn.execute("SELECT name FROM pg_available_extensions").fetchall()
            }
            wanted = [e for e in self.options.extensions if e in available]
            if self.options.password is not None:
                # keep the password out of pg_stat_statements
                conn.execute("SET pg_stat_statements.track_utility = off")
                conn.execute(
                    psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        psycopg.sql.Identifier(SUPERUSER),
                        psycopg.sql.Literal(self.options.password),
                    )
                )
        for db in ("template1", "postgres"):
            if not wanted:
                break
            with psycopg.connect(
                host=str(self.sock), port=self.port, user=SUPERUSER, dbname=db, autocommit=True
            ) as conn:
                for ext in wanted:
                    conn.execute(
                        psycopg.sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(
                            psycopg.sql.Identifier(ext)
                        )
                    )
        return version


@contextlib.contextmanager
def run_local(bins: PgBinaries, options: ServerOptions, provider: str) -> Iterator[PostgresServer]:
    """Start a throwaway server from ``bins``; stop it and remove everything after."""
    if options.auth not in ("trust", "scram-sha-256", "md5"):
        raise ServerStartError(f"unknown auth method {options.auth!r}")
    if options.auth != "trust" and options.password is None:
        options = dataclasses.replace(options, password=secrets.token_urlsafe(18))
    cluster = LocalCluster(bins, options, provider)
    try:
        cluster.initdb()
        cluster.start()
        version, version_num = cluster.bootstrap()
        server = PostgresServer(
            provider=provider,
            host=options.listen[0] if options.listen else "127.0.0.1",
            port=cluster.port,
            user=SUPERUSER,
            password=options.password,
            database="postgres",
            version=version,
            version_num=version_num,
            socket_dir=str(cluster.sock),
            log_path=cluster.log_path,
            data_dir=cluster.data,
            durable=False,
            timings=cluster.timings,
            certificate=cluster.certificate,
        )
        yield server
    finally:
        cluster.stop()
        cluster.remove()
