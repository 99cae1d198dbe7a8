"""Per-driver cold and warm connection measurements, timed from the driver's side.

For every driver one cold sample is: a fresh connection (a fresh engine for
SQLAlchemy), a ``SELECT 1``, and a close that is not timed. Three instants are taken
from the driver itself, through its public extension points:

- ``t0``: the call (``psycopg.connect``, ``asyncpg.connect``, ``engine.connect()``);
- ``ready``: the driver holds a connection the server has declared ready
  (ReadyForQuery): psycopg and asyncpg build their connection object at that moment
  (a ``Connection`` subclass records it in ``__init__``; asyncpg takes it as
  ``connection_class``); for SQLAlchemy, the pool's first ``connect`` listener
  (inserted ahead of the dialect's own) runs when the DBAPI connection exists;
- ``returned``: the call returns a usable connection;

then the ``SELECT 1`` round trip. ``connect`` = ready - t0 (the driver's DNS, TCP,
TLS and start-up together: drivers expose no boundary inside it),
``driver_init`` = returned - ready (what the driver or SQLAlchemy does after the
server is ready: dialect initialisation on an engine's first connect, type codec
set-up), ``first_query`` and ``total`` = connect + driver_init +
first_query.

Warm: a pool at its minimum size (time to become ready), then checkouts with a
``SELECT 1`` after every pooled connection has served once.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dbprobe.coldstart.params import ConnectParams

DRIVERS = ("psycopg", "asyncpg", "sqlalchemy", "sqlalchemy-async")
_NS_PER_MS = 1_000_000
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DriverTimings:
    """One cold connection as the driver saw it, in milliseconds."""

    connect: float
    driver_init: float
    first_query: float

    @property
    def total(self) -> float:
        return self.connect + self.driver_init + self.first_query


def _marks_to_timings(t0: int, ready: int | None, returned: int, done: int) -> DriverTimings:
    if ready is None or not t0 <= ready <= returned:
        # The hook did not fire inside the call: report the whole call as connect.
        ready = returned
    return DriverTimings(
        connect=(ready - t0) / _NS_PER_MS,
        driver_init=(returned - ready) / _NS_PER_MS,
        first_query=(done - returned) / _NS_PER_MS,
    )


class WarmPool(abc.ABC):
    """An open pool of one driver, ready at its minimum size."""

    @abc.abstractmethod
    def checkout_query(self) -> float:
        """Check out, ``SELECT 1``, in ms (the return to the pool is not timed)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the pool and every connection in it."""


class DriverProbe(abc.ABC):
    """Cold and warm measurements of one driver against one server."""

    name: str = ""
    #: the pool used for the warm measurements
    pool_kind: str = ""
    #: how that pool opens its minimum size (``pool_ready`` is not like for like)
    pool_opens: str = ""
    #: what ``driver_init`` and ``first_query`` cover for this driver
    covers: dict[str, str] = {}  # noqa: RUF012 - read-only class constant

    def __init__(self, params: ConnectParams, loop: asyncio.AbstractEventLoop) -> None:
        self.params = params
        self.loop = loop

    def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the probe's event loop (async drivers)."""
        return self.loop.run_until_complete(factory())

    @abc.abstractmethod
    def cold(self) -> DriverTimings:
        """One fresh connection and its first ``SELECT 1``."""

    @abc.abstractmethod
    def open_pool(self, size: int) -> tuple[float, WarmPool]:
        """A pool opened to ``size`` connections; the ms it took to be ready."""

    @abc.abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the libraries measured."""


# -- psycopg ----------------------------------------------------------------------------
class PsycopgProbe(DriverProbe):
    name = "psycopg"
    pool_kind = "psycopg_pool.ConnectionPool (min_size = max_size)"
    pool_opens = "concurrently: psycopg_pool's worker threads (3 by default) connect in parallel"
    covers = {  # noqa: RUF012
        "connect": "psycopg.connect() until libpq reports the connection ready "
        "(psycopg's own DNS lookup, libpq's TCP, TLS and start-up)",
        "driver_init": "psycopg building its Connection object after libpq is ready",
        "first_query": "conn.execute('SELECT 1').fetchone() in autocommit: one round trip",
    }

    def __init__(self, params: ConnectParams, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(params, loop)
        import psycopg

        class MarkedConnection(psycopg.Connection[Any]):
            ready_ns: int | None = None

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.ready_ns = time.perf_counter_ns()
                super().__init__(*args, **kwargs)

        self._cls = MarkedConnection
        self._conninfo = params.libpq_conninfo()

    def cold(self) -> DriverTimings:
        t0 = time.perf_counter_ns()
        conn = self._cls.connect(self._conninfo, autocommit=True)
        try:
            returned = time.perf_counter_ns()
            conn.execute("SELECT 1").fetchone()
            done = time.perf_counter_ns()
        finally:
            conn.close()
        return _marks_to_timings(t0, conn.ready_ns, returned, done)

    def open_pool(self, size: int) -> tuple[float, WarmPool]:
        """psycopg_pool opens its connections in worker threads and, when one fails,
        logs a warning and retries until ``reconnect_timeout``. Here the first failed
        connection ends the wait at once and is raised as it is (the real cause), the
        pool does not retry for longer than the connect timeout, and its warnings are
        left to the caller to silence (see ``runner.quiet_pool_loggers``)."""
        import psycopg
        from psycopg_pool import ConnectionPool

        watch = _PoolWatch(size)

        class WatchedConnection(psycopg.Connection[Any]):
            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    conn = super().connect(*args, **kwargs)
                except BaseException as exc:
                    watch.failed(exc)
                    raise
                watch.connected()
                return conn

        timeout = self.params.connect_timeout
        pool: ConnectionPool[Any] = ConnectionPool(
            self._conninfo,
            connection_class=WatchedConnection,
            min_size=size,
            max_size=size,
            open=False,
            kwargs={"autocommit": True},
            name="dbprobe-coldstart",
            timeout=timeout,
            reconnect_timeout=timeout,
        )
        t0 = time.perf_counter_ns()
        try:
            pool.open(wait=False)
            watch.wait(timeout * max(1, size))
            pool.wait(timeout)  # returns once the last connection is in the pool
        except BaseException:
            pool.close()
            raise
        ready = (time.perf_counter_ns() - t0) / _NS_PER_MS
        return ready, _PsycopgPool(pool)

    def versions(self) -> dict[str, str]:
        import psycopg
        import psycopg_pool

        return {
            "psycopg": psycopg.__version__,
            "libpq": _libpq_version(psycopg.pq.version()),
            "psycopg_impl": psycopg.pq.__impl__,
            "psycopg_pool": psycopg_pool.__version__,
        }


class _PoolWatch:
    """Wakes the thread opening a pool when the pool's connections are all made, or at
    the first one that fails (then :meth:`wait` raises that failure)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.made = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()

    def connected(self) -> None:
        with self.lock:
            self.made += 1
            if self.made >= self.size:
                self.done.set()

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.done.set()

    def wait(self, timeout_s: float) -> None:
        """Until every connection is made; raises the first failure, or
        ``TimeoutError`` after ``timeout_s`` seconds."""
        if not self.done.wait(timeout_s):
            raise TimeoutError(f"the pool was not ready within {timeout_s:g} s")
        if self.error is not None:
            raise self.error


def _libpq_version(num: int) -> str:
    return f"{num // 10000}.{num % 10000}" if num >= 100000 else str(num)


class _PsycopgPool(WarmPool):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def checkout_query(self) -> float:
        t0 = time.perf_counter_ns()
        with self.pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()
            t1 = time.perf_counter_ns()
        return (t1 - t0) / _NS_PER_MS

    def close(self) -> None:
        self.pool.close()


# -- asyncpg ----------------------------------------------------------------------------
class AsyncpgProbe(DriverProbe):
    name = "asyncpg"
    pool_kind = "asyncpg.Pool (min_size = max_size)"
    pool_opens = "concurrently: asyncpg connects one, then the rest together"
    covers = {  # noqa: RUF012
        "connect": "asyncpg.connect() until the server's ReadyForQuery (the event loop's "
        "DNS lookup, TCP, TLS and start-up)",
        "driver_init": "asyncpg building its Connection and the rest of connect() "
        "(session checks for target_session_attrs)",
        "first_query": "conn.fetchval('SELECT 1'): asyncpg prepares the statement, then "
        "runs it (two round trips on a fresh connection)",
    }

    def __init__(self, params: ConnectParams, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(params, loop)
        import asyncpg

        class MarkedConnection(asyncpg.Connection):  # type: ignore[misc]
            __slots__ = ("ready_ns",)

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.ready_ns = time.perf_counter_ns()
                super().__init__(*args, **kwargs)

        self._cls = MarkedConnection
        self._kwargs = params.asyncpg_connect_kwargs()

    def cold(self) -> DriverTimings:
        return self.run(self._cold)

    async def _cold(self) -> DriverTimings:
        import asyncpg

        t0 = time.perf_counter_ns()
        conn = await asyncpg.connect(connection_class=self._cls, **self._kwargs)
        try:
            returned = time.perf_counter_ns()
            await conn.fetchval("SELECT 1")
            done = time.perf_counter_ns()
        finally:
            await conn.close(timeout=self.params.connect_timeout)
        return _marks_to_timings(t0, conn.ready_ns, returned, done)

    def open_pool(self, size: int) -> tuple[float, WarmPool]:
        return self.run(lambda: self._open_pool(size))

    async def _open_pool(self, size: int) -> tuple[float, WarmPool]:
        import asyncpg

        t0 = time.perf_counter_ns()
        pool = await asyncpg.create_pool(min_size=size, max_size=size, **self._kwargs)
        ready = (time.perf_counter_ns() - t0) / _NS_PER_MS
        return ready, _AsyncpgPool(self, pool)

    def versions(self) -> dict[str, str]:
        import asyncpg

        return {"asyncpg": asyncpg.__version__}


class _AsyncpgPool(WarmPool):
    def __init__(self, probe: AsyncpgProbe, pool: Any) -> None:
        self.probe = probe
        self.pool = pool

    def checkout_query(self) -> float:
        return self.probe.run(self._checkout_query)

    async def _checkout_query(self) -> float:
        t0 = time.perf_counter_ns()
        conn = await self.pool.acquire()
        try:
            await conn.fetchval("SELECT 1")
            t1 = time.perf_counter_ns()
        finally:
            await self.pool.release(conn)
        return (t1 - t0) / _NS_PER_MS

    def close(self) -> None:
        timeout = self.probe.params.connect_timeout
        self.probe.run(lambda: asyncio.wait_for(self.pool.close(), timeout))


# -- SQLAlchemy -------------------------------------------------------------------------
class _ReadyMark:
    """Records when a pool's DBAPI connection exists, before the dialect's own
    ``connect`` listeners (dialect initialisation, ``on_connect`` hooks) run."""

    def __init__(self, pool: Any) -> None:
        from sqlalchemy import event

        self.ready_ns: int | None = None
        event.listen(pool, "connect", self._on_connect, insert=True)

    def _on_connect(self, dbapi_connection: Any, connection_record: Any) -> None:
        if self.ready_ns is None:
            self.ready_ns = time.perf_counter_ns()


class _EngineProbe(DriverProbe):
    """SQLAlchemy engines, sync and async, from one source: the timed code is the sync
    ``Engine`` API; for the async engine it runs inside SQLAlchemy's greenlet bridge,
    which is exactly what ``AsyncEngine.connect()`` / ``AsyncConnection.execute()`` do.
    One engine per cold sample, so every sample pays an engine's first connect."""

    is_async = False

    def make_engine(self, **kwargs: Any) -> Any:
        """A sync ``Engine`` (for the async engine: its ``sync_engine``)."""
        from sqlalchemy import create_engine
        from sqlalchemy.ext.asyncio import create_async_engine

        if self.is_async:
            return create_async_engine(
                "postgresql+asyncpg://",
                connect_args=self.params.asyncpg_connect_kwargs(),
                **kwargs,
            ).sync_engine
        return create_engine(self.params.target().sqlalchemy_url("psycopg"), **kwargs)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run sync SQLAlchemy code: directly, or in the greenlet bridge (async engine)."""
        if self.is_async:
            from sqlalchemy.util import greenlet_spawn

            return self.run(lambda: greenlet_spawn(fn, *args))
        return fn(*args)

    def cold(self) -> DriverTimings:
        engine = self.make_engine()
        mark = _ReadyMark(engine.pool)
        return self.call(_cold_engine, engine, mark)

    def open_pool(self, size: int) -> tuple[float, WarmPool]:
        engine = self.make_engine(pool_size=size, max_overflow=0)
        pool = _EnginePool(self, engine)
        try:
            # SQLAlchemy's pool has no minimum size: pre-warm it the usual way, by
            # checking out ``size`` connections one after another and returning them.
            ready = self.call(_prewarm_engine, engine, size)
        except BaseException:
            pool.close()
            raise
        return ready, pool

    def versions(self) -> dict[str, str]:
        import sqlalchemy

        out = {"sqlalchemy": sqlalchemy.__version__}
        if self.is_async:
            import asyncpg

            out["asyncpg"] = asyncpg.__version__
        else:
            import psycopg

            out["psycopg"] = psycopg.__version__
        return out


def _cold_engine(engine: Any, mark: _ReadyMark) -> DriverTimings:
    from sqlalchemy import text

    select_1 = text("SELECT 1")
    try:
        t0 = time.perf_counter_ns()
        conn = engine.connect()
        try:
            returned = time.perf_counter_ns()
            conn.execute(select_1).scalar_one()
            done = time.perf_counter_ns()
        finally:
            conn.close()
    finally:
        engine.dispose()
    return _marks_to_timings(t0, mark.ready_ns, returned, done)


def _prewarm_engine(engine: Any, size: int) -> float:
    t0 = time.perf_counter_ns()
    conns = []
    try:
        for _ in range(size):
            conns.append(engine.connect())
    finally:
        for conn in conns:
            conn.close()
    return (time.perf_counter_ns() - t0) / _NS_PER_MS


def _checkout_engine(engine: Any) -> float:
    from sqlalchemy import text

    select_1 = text("SELECT 1")
    t0 = time.perf_counter_ns()
    with engine.connect() as conn:
        conn.execute(select_1).scalar_one()
        t1 = time.perf_counter_ns()
    return (t1 - t0) / _NS_PER_MS


class _EnginePool(WarmPool):
    def __init__(self, probe: _EngineProbe, engine: Any) -> None:
        self.probe = probe
        self.engine = engine

    def checkout_query(self) -> float:
        return self.probe.call(_checkout_engine, self.engine)

    def close(self) -> None:
        self.probe.call(self.engine.dispose)


_ENGINE_POOL_OPENS = (
    "one after another: SQLAlchemy's pool has no minimum size, so pool_size connections "
    "are checked out in turn"
)


class SqlalchemyProbe(_EngineProbe):
    name = "sqlalchemy"
    pool_opens = _ENGINE_POOL_OPENS
    pool_kind = "SQLAlchemy QueuePool, pre-warmed by checking out pool_size connections"
    covers = {  # noqa: RUF012
        "connect": "engine.connect() until psycopg's connection exists (pool checkout, "
        "psycopg.connect with its DNS lookup, TCP, TLS and start-up)",
        "driver_init": "the engine's first-connect work: dialect initialisation in a "
        "transaction (BEGIN, server version, current schema, isolation level, "
        "standard_conforming_strings, the hstore type lookup in a savepoint, ROLLBACK: "
        "each its own round trip), on_connect hooks, checkout",
        "first_query": "conn.execute(text('SELECT 1')): SQLAlchemy begins a transaction, "
        "so psycopg sends BEGIN, then the SELECT (two round trips)",
    }


class SqlalchemyAsyncProbe(_EngineProbe):
    name = "sqlalchemy-async"
    pool_opens = _ENGINE_POOL_OPENS
    is_async = True
    pool_kind = "SQLAlchemy AsyncAdaptedQueuePool, pre-warmed by checking out pool_size connections"
    covers = {  # noqa: RUF012
        "connect": "engine.connect() until asyncpg's connection exists (pool "
        "checkout, asyncpg.connect with its DNS lookup, TCP, TLS and start-up)",
        "driver_init": "the engine's first-connect work: the asyncpg dialect's on_connect "
        "(json and jsonb codecs; asyncpg needs no query for these built-in types) and "
        "dialect initialisation in a transaction (BEGIN, server version, current schema, "
        "isolation level, standard_conforming_strings, ROLLBACK: each query prepared, "
        "then run), checkout",
        "first_query": "conn.execute(text('SELECT 1')): BEGIN, then asyncpg prepares "
        "and runs the statement",
    }


PROBES: dict[str, type[DriverProbe]] = {
    "psycopg": PsycopgProbe,
    "asyncpg": AsyncpgProbe,
    "sqlalchemy": SqlalchemyProbe,
    "sqlalchemy-async": SqlalchemyAsyncProbe,
}
