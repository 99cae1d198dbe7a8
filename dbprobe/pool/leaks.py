"""Connection leaks: checkouts not returned by the end of a scope, with where each was made.

::

    with track_leaks(engine) as scope:        # Engine, AsyncEngine, psycopg_pool pool,
        run_the_code(engine)                  # AsyncConnectionPool or asyncpg Pool
    for finding in scope.findings():          # connection-leak, location = file:line
        ...

Hooks: SQLAlchemy pool events ``checkout``/``checkin``; psycopg_pool ``getconn``/``putconn``
wrapped on the pool instance; asyncpg ``Pool._acquire``/``Pool.release`` wrapped on the
class for the scope (``Pool`` has ``__slots__``), counting only the tracked pool. Each
checkout records the call stack (frames only; source lines are read when reporting),
followed across SQLAlchemy's greenlet into the coroutine that awaited it.

At the end of the scope every checkout not returned is a leak. Its server session is
looked up in ``pg_stat_activity`` by backend pid (one short extra connection): a
session ``idle in transaction`` holds its snapshot and locks until someone ends it.
Tracking costs a stack walk per checkout (a few microseconds per frame): use it in tests
and investigations, not in the hot path of a benchmark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import linecache
import logging
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dbprobe.report.model import Finding
from dbprobe.rules import RULES

log = logging.getLogger("dbprobe.pool.leaks")

_FrameInfo = tuple[str, int, str]
_LIBRARY_DIRS = tuple(
    {
        str(Path(p).resolve())
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
)
_DBPROBE_DIR = str(Path(__file__).resolve().parent.parent)
_MAX_STACK = 16


def _is_library(filename: str) -> bool:
    if not filename or filename.startswith("<"):
        return True
    path = os.path.abspath(filename)
    if f"{os.sep}_bundled{os.sep}" in path:
        return False  # the fixture app shipped inside the wheel is application code
    if path.startswith(_DBPROBE_DIR + os.sep):
        return True
    if "site-packages" in path or "dist-packages" in path:
        return True
    return any(path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def capture_stack(skip: int = 1) -> list[_FrameInfo]:
    """Frames from the caller outwards (innermost first), continued into the parent
    greenlet when SQLAlchemy's async layer runs the checkout inside a greenlet."""
    frames: list[_FrameInfo] = []
    frame: Any = sys._getframe(skip + 1)
    while frame is not None:
        frames.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    greenlet_mod = sys.modules.get("greenlet")
    if greenlet_mod is not None:
        current = greenlet_mod.getcurrent()
        parent = current.parent
        while parent is not None:
            frame = parent.gr_frame
            while frame is not None:
                frames.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
                frame = frame.f_back
            parent = parent.parent
    return frames


_PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def _project_root(path: str) -> str | None:
    """The nearest directory above ``path`` holding a project marker (pyproject.toml,
    setup.py, setup.cfg, .git), or None."""
    parent = Path(path).parent
    for directory in (parent, *parent.parents):
        if any((directory / marker).exists() for marker in _PROJECT_MARKERS):
            return str(directory)
    return None


def _relative(filename: str) -> str:
    """A file relative to the current directory when below it, else to its own
    project's root (so a location and its fingerprint do not depend on where the
    project is checked out); absolute only when neither applies."""
    path = os.path.abspath(filename)
    cwd = os.getcwd()
    if path.startswith(cwd + os.sep):
        return Path(os.path.relpath(path, cwd)).as_posix()
    root = _project_root(path)
    if root is not None and root != os.sep:
        return Path(os.path.relpath(path, root)).as_posix()
    return path


@dataclasses.dataclass(frozen=True)
class CheckoutLeak:
    """A checkout not returned by the end of the scope.

    location: the innermost application frame (``file:line``, relative to the current
    directory or the file's project root) that checked it out; function: that frame's
    function; stack: the application frames from the outermost in,
    ``file:line in function`` (library and dbprobe frames left out); held_ms: how long
    it had been out; backend_pid: its server process; in_transaction: the driver's own
    view; server_state, xact_age_s, last_query: from ``pg_stat_activity`` (None when not
    looked up).
    """

    pool: str
    location: str | None
    function: str | None
    code: str | None
    stack: tuple[str, ...]
    held_ms: float
    backend_pid: int | None
    in_transaction: bool | None
    server_state: str | None = None
    xact_age_s: float | None = None
    last_query: str | None = None

    @property
    def idle_in_transaction(self) -> bool:
        if self.server_state is not None:
            return self.server_state.startswith("idle in transaction")
        return bool(self.in_transaction)


@dataclasses.dataclass
class _Checkout:
    started: float
    frames: list[_FrameInfo]
    connection: Any


class LeakScope:
    """What a :func:`track_leaks` block saw: checkouts, returns, and the leaks."""

    def __init__(self, pool: str, dsn: str | None) -> None:
        self.pool = pool
        self.dsn = dsn
        self.checkouts = 0
        self.returned = 0
        self.detached = 0
        self.leaks: list[CheckoutLeak] = []
        self._open: dict[int, _Checkout] = {}
        self._lock = threading.Lock()
        self.server_checked = False

    # -- hooks -------------------------------------------------------------------------
    def checkout(self, key: int, connection: Any, skip: int = 1) -> None:
        frames = capture_stack(skip + 1)
        with self._lock:
            self.checkouts += 1
            self._open[key] = _Checkout(time.perf_counter(), frames, connection)

    def checkin(self, key: int) -> None:
        with self._lock:
            if self._open.pop(key, None) is not None:
                self.returned += 1

    def detach(self, key: int) -> None:
        """The checkout left the pool on purpose (detached): no longer tracked."""
        with self._lock:
            if self._open.pop(key, None) is not None:
                self.detached += 1

    # -- results -----------------------------------------------------------------------
    def _finish(self, server_check: bool) -> None:
        now = time.perf_counter()
        with self._lock:
            still_out = list(self._open.values())
            self._open.clear()
        leaks = [self._leak(c, now) for c in still_out]
        if server_check and leaks and self.dsn:
            leaks = self._with_server_state(leaks)
        self.leaks = leaks

    def _leak(self, c: _Checkout, now: float) -> CheckoutLeak:
        pid, in_tx = connection_state(c.connection)
        frames = [f for f in c.frames if not f[0].startswith("<")]
        application = [f for f in frames if not _is_library(f[0])]
        app = application[0] if application else None
        shown = application[:_MAX_STACK]
        location = f"{_relative(app[0])}:{app[1]}" if app else None
        code = (linecache.getline(app[0], app[1]).strip() or None) if app else None
        return CheckoutLeak(
            pool=self.pool,
            location=location,
            function=app[2] if app else None,
            code=code,
            stack=tuple(f"{_relative(f)}:{line} in {name}" for f, line, name in reversed(shown)),
            held_ms=(now - c.started) * 1000.0,
            backend_pid=pid,
            in_transaction=in_tx,
        )

    def _with_server_state(self, leaks: list[CheckoutLeak]) -> list[CheckoutLeak]:
        import psycopg

        pids = [lk.backend_pid for lk in leaks if lk.backend_pid]
        if not pids:
            return leaks
        try:
            with psycopg.connect(
                self.dsn or "",
                autocommit=True,
                connect_timeout=5,
                application_name="dbprobe-leak-check",
            ) as conn:
                rows = conn.execute(
                    "SELECT pid, state, extract(epoch FROM now() - xact_start)::float8,"
                    " left(query, 300) FROM pg_stat_activity WHERE pid = ANY(%s)",
                    (pids,),
                ).fetchall()
        except Exception as exc:
            log.warning("could not read the leaked sessions' state: %s", exc)
            return leaks
        self.server_checked = True
        by_pid = {int(r[0]): r for r in rows}
        out = []
        for lk in leaks:
            row = by_pid.get(lk.backend_pid or -1)
            if row is None:
                out.append(lk)
                continue
            out.append(
                dataclasses.replace(
                    lk, server_state=row[1], xact_age_s=row[2], last_query=row[3] or None
                )
            )
        return out

    def findings(self) -> list[Finding]:
        """One ``connection-leak`` finding per place that leaked (count = how many)."""
        groups: dict[tuple[str | None, bool], list[CheckoutLeak]] = {}
        for lk in self.leaks:
            groups.setdefault((lk.location, lk.idle_in_transaction), []).append(lk)
        out = []
        for (location, idle_tx), leaks in groups.items():
            first = leaks[0]
            where = location or "an unknown place (no application frame on the stack)"
            in_fn = f" (in {first.function})" if first.function else ""
            if idle_tx:
                age = f" for {first.xact_age_s:.2f}s" if first.xact_age_s is not None else ""
                state = f"; its server session is idle in transaction{age}"
                fix = (
                    "end the transaction and return the connection: "
                    "`with Session(engine) as session, session.begin(): ...` (or commit/"
                    "rollback then close); set idle_in_transaction_session_timeout on the "
                    "server as a safety net"
                )
            else:
                state = (
                    "" if first.server_state is None else f"; server session {first.server_state}"
                )
                fix = (
                    "return it whatever happens: `with engine.connect() as conn: ...` "
                    "(`with pool.connection()`, `async with pool.acquire()`) instead of a "
                    "bare checkout kept in a variable or a list"
                )
            out.append(
                RULES["connection-leak"].finding(
                    f"{len(leaks)} connection(s) checked out at {where}{in_fn} were not "
                    f"returned to the {self.pool} pool by the end of the scope{state}",
                    fix,
                    location=location,
                    count=len(leaks),
                    fingerprint=f"connection-leak:{location or 'unknown'}"
                    + (":idle-in-transaction" if idle_tx else ""),
                    evidence={
                        "pool": self.pool,
                        "code": first.code,
                        "stack": list(first.stack),
                        "held_ms": [round(lk.held_ms, 3) for lk in leaks],
                        "backend_pids": [lk.backend_pid for lk in leaks],
                        "server_state": first.server_state,
                        "in_transaction": first.in_transaction,
                        "xact_age_s": first.xact_age_s,
                        "last_query": first.last_query,
                    },
                )
            )
        return out


def connection_state(conn: Any) -> tuple[int | None, bool | None]:
    """(backend pid, in a transaction?) read locally from a psycopg or asyncpg
    connection, a SQLAlchemy-adapted one, or an asyncpg pool proxy; no round trip."""
    raw = conn
    for attr in ("driver_connection", "_con"):
        inner = getattr(raw, attr, None)
        if inner is not None:
            raw = inner
    info = getattr(raw, "info", None)
    if info is not None and hasattr(info, "backend_pid"):
        try:
            from psycopg import pq

            status = info.transaction_status
            return int(info.backend_pid), status in (
                pq.TransactionStatus.INTRANS,
                pq.TransactionStatus.INERROR,
            )
        except Exception:
            return None, None
    if hasattr(raw, "get_server_pid"):
        try:
            return int(raw.get_server_pid()), bool(raw.is_in_transaction())
        except Exception:
            return None, None
    return None, None


# -- installing the hooks ----------------------------------------------------------------


def _sqlalchemy_dsn(engine: Any) -> str | None:
    from dbprobe.urls import parse_url

    try:
        url = engine.url.render_as_string(hide_password=False)
        return parse_url(url).with_options().libpq_dsn()
    except Exception:
        return None


@contextlib.contextmanager
def _track_sqlalchemy(obj: Any, scope: LeakScope) -> Iterator[None]:
    from sqlalchemy import event

    engine = getattr(obj, "sync_engine", obj)
    pool = engine.pool

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        scope.checkout(id(record), dbapi_connection, skip=2)

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        scope.checkin(id(record))

    def on_detach(dbapi_connection: Any, record: Any) -> None:
        # Connection.detach(): the connection leaves the pool for good, closed by its
        # owner; it will never be checked in and is not a leak.
        scope.detach(id(record))

    hooks = (("checkout", on_checkout), ("checkin", on_checkin), ("detach", on_detach))
    for name, fn in hooks:
        event.listen(pool, name, fn)
    try:
        yield
    finally:
        for name, fn in hooks:
            with contextlib.suppress(Exception):
                event.remove(engine.pool, name, fn)
            if engine.pool is not pool:
                with contextlib.suppress(Exception):
                    event.remove(pool, name, fn)


def _psycopg_dsn(pool: Any) -> str | None:
    try:
        from psycopg.conninfo import make_conninfo

        keep = {"host", "port", "user", "password", "dbname", "sslmode", "hostaddr"}
        extra = {k: v for k, v in (pool.kwargs or {}).items() if k in keep}
        return make_conninfo(pool.conninfo, **extra)
    except Exception:
        return None


@contextlib.contextmanager
def _track_psycopg(pool: Any, scope: LeakScope) -> Iterator[None]:
    original_get = pool.getconn
    original_put = pool.putconn
    wrapped_get: Callable[..., Any]
    wrapped_put: Callable[..., Any]
    if inspect.iscoroutinefunction(original_get):

        async def aget(timeout: float | None = None) -> Any:
            conn = await original_get(timeout)
            scope.checkout(id(conn), conn)
            return conn

        async def aput(conn: Any) -> None:
            scope.checkin(id(conn))
            await original_put(conn)

        wrapped_get, wrapped_put = aget, aput
    else:

        def get(timeout: float | None = None) -> Any:
            conn = original_get(timeout)
            scope.checkout(id(conn), conn)
            return conn

        def put(conn: Any) -> None:
            scope.checkin(id(conn))
            original_put(conn)

        wrapped_get, wrapped_put = get, put
    pool.getconn = wrapped_get
    pool.putconn = wrapped_put
    try:
        yield
    finally:
        del pool.getconn
        del pool.putconn


_ASYNCPG_SCOPES: dict[int, LeakScope] = {}
_ASYNCPG_SAVED: dict[str, Any] = {}
_ASYNCPG_LOCK = threading.Lock()


def _asyncpg_dsn(pool: Any) -> str | None:
    try:
        from psycopg.conninfo import make_conninfo

        kw = dict(getattr(pool, "_connect_kwargs", {}) or {})
        args = getattr(pool, "_connect_args", ()) or ()
        base = args[0] if args and isinstance(args[0], str) else ""
        params = {
            "host": kw.get("host"),
            "port": kw.get("port"),
            "user": kw.get("user"),
            "password": kw.get("password"),
            "dbname": kw.get("database"),
        }
        return make_conninfo(base, **{k: str(v) for k, v in params.items() if v is not None})
    except Exception:
        return None


def _install_asyncpg_hooks() -> None:
    from asyncpg.pool import Pool

    if _ASYNCPG_SAVED:
        return
    original_acquire = Pool._acquire
    original_release = Pool.release

    async def _acquire(self: Any, timeout: Any) -> Any:
        proxy = await original_acquire(self, timeout)
        scope = _ASYNCPG_SCOPES.get(id(self))
        if scope is not None:
            scope.checkout(id(proxy), proxy)
        return proxy

    async def release(self: Any, connection: Any, *, timeout: Any = None) -> Any:
        scope = _ASYNCPG_SCOPES.get(id(self))
        if scope is not None:
            scope.checkin(id(connection))
        return await original_release(self, connection, timeout=timeout)

    _ASYNCPG_SAVED.update(_acquire=original_acquire, release=original_release)
    Pool._acquire = _acquire
    Pool.release = release


def _remove_asyncpg_hooks() -> None:
    from asyncpg.pool import Pool

    if _ASYNCPG_SCOPES or not _ASYNCPG_SAVED:
        return
    Pool._acquire = _ASYNCPG_SAVED.pop("_acquire")
    Pool.release = _ASYNCPG_SAVED.pop("release")


@contextlib.contextmanager
def _track_asyncpg(pool: Any, scope: LeakScope) -> Iterator[None]:
    with _ASYNCPG_LOCK:
        _install_asyncpg_hooks()
        _ASYNCPG_SCOPES[id(pool)] = scope
    try:
        yield
    finally:
        with _ASYNCPG_LOCK:
            _ASYNCPG_SCOPES.pop(id(pool), None)
            _remove_asyncpg_hooks()


def _kind_of(obj: Any) -> str:
    module = type(obj).__module__
    name = type(obj).__name__
    if module.startswith("sqlalchemy"):
        return "sqlalchemy-async" if hasattr(obj, "sync_engine") else "sqlalchemy"
    if module.startswith("psycopg_pool"):
        return "psycopg-async" if name.startswith("Async") else "psycopg"
    if module.startswith("asyncpg"):
        return "asyncpg"
    raise TypeError(
        f"track_leaks needs a SQLAlchemy Engine/AsyncEngine, a psycopg_pool pool or an "
        f"asyncpg Pool, not {module}.{name}"
    )


@contextlib.contextmanager
def track_leaks(
    pool: Any, *, dsn: str | None = None, server_check: bool = True
) -> Iterator[LeakScope]:
    """Track checkouts of ``pool`` during the block; at its end ``scope.leaks`` lists
    those not returned, with their stacks and server session state.

    pool: a SQLAlchemy ``Engine``/``AsyncEngine``, a psycopg_pool ``ConnectionPool``/
    ``AsyncConnectionPool`` or an asyncpg ``Pool``. dsn: libpq connection string for the
    server check (derived from the pool when omitted). server_check: look the leaked
    sessions up in ``pg_stat_activity`` (default on).
    """
    kind = _kind_of(pool)
    hooks: Callable[[Any, LeakScope], contextlib.AbstractContextManager[None]]
    if kind.startswith("sqlalchemy"):
        hooks = _track_sqlalchemy
        derived = _sqlalchemy_dsn(getattr(pool, "sync_engine", pool))
    elif kind.startswith("psycopg"):
        hooks = _track_psycopg
        derived = _psycopg_dsn(pool)
    else:
        hooks = _track_asyncpg
        derived = _asyncpg_dsn(pool)
    scope = LeakScope(kind, dsn or derived)
    with hooks(pool, scope):
        try:
            yield scope
        finally:
            scope._finish(server_check)
