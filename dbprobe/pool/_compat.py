"""The few primitives that really differ between the asyncio and the threaded harness.

``_async.py`` is the one source of the load driver and the pool adapters; ``_sync.py`` is
generated from it by ``tools/async_to_sync.py``, which drops ``await``, turns ``async
def`` into ``def`` and renames through a map (``asleep`` → ``sleep``, ``AWorkers`` →
``Workers``, ``AsyncConnectionPool`` → ``ConnectionPool``...). Every name on the left of
that map lives here with its twin on the right, so both forms read the same.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from dbprobe.pool.config import StressConfig
    from dbprobe.urls import DatabaseTarget

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# SQLAlchemy dialect driver of each form: asyncpg is what async SQLAlchemy
# applications use most; the threaded engine uses psycopg 3.
ASYNC_SQLALCHEMY_DRIVER = "asyncpg"
SQLALCHEMY_DRIVER = "psycopg"


def async_only(obj: F) -> F:
    """Mark a class or function of ``_async.py`` that has no threaded twin (asyncpg).

    The generator leaves it out of ``_sync.py``.
    """
    return obj


# -- sleeping --------------------------------------------------------------------------


async def asleep(seconds: float) -> None:
    """Sleep ``seconds`` without blocking the event loop."""
    await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Sleep ``seconds`` (the calling thread only)."""
    time.sleep(seconds)


# -- running blocking work (monitor queries) ----------------------------------------


async def arun_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a worker thread so the event loop keeps serving."""
    return await asyncio.to_thread(fn, *args)


def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call here (the threaded harness has no loop to protect)."""
    return fn(*args)


# -- events ----------------------------------------------------------------------------


class AEvent:
    """An asyncio event whose ``wait`` takes a timeout, like :class:`threading.Event`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until set or ``timeout`` seconds; return whether it is set."""
        if timeout is None:
            await self._event.wait()
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class Event:
    """A thread event (the twin of :class:`AEvent`)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set or ``timeout`` seconds; return whether it is set."""
        return self._event.wait(timeout)


# -- workers ---------------------------------------------------------------------------


class AWorkers:
    """Concurrent workers as asyncio tasks. A worker that dies of an unexpected error
    (a bug: pool and server failures are caught and recorded inside the workers) makes
    :meth:`join` raise it, rather than the step quietly running with fewer workers."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._tasks.append(asyncio.ensure_future(fn(*args)))

    def __len__(self) -> int:
        return len(self._tasks)

    async def join(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every worker; return how many are still
        running (those are cancelled, which returns their connections)."""
        if not self._tasks:
            return 0
        _done, pending = await asyncio.wait(self._tasks, timeout=max(timeout, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        failure: BaseException | None = None
        for task in self._tasks:
            if task.done() and not task.cancelled():
                failure = failure or task.exception()
        self._tasks = []
        if failure is not None:
            raise failure
        return len(pending)

    async def cancel(self) -> None:
        """Stop every worker now (Ctrl-C, abort)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: reported by join, or moot after an abort
        self._tasks = []


class Workers:
    """Concurrent workers as daemon threads (the twin of :class:`AWorkers`)."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._failure: BaseException | None = None

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # surfaced by join(), not printed by the thread
            if self._failure is None:
                self._failure = exc

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        thread = threading.Thread(
            target=self._run, args=(fn, args), daemon=True, name="dbprobe-pool-worker"
        )
        thread.start()
        self._threads.append(thread)

    def __len__(self) -> int:
        return len(self._threads)

    def join(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every worker; return how many are still
        running (threads cannot be cancelled: they are abandoned, as daemons)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = sum(1 for t in self._threads if t.is_alive())
        self._threads = []
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        return alive

    def cancel(self) -> None:
        """Threads stop at their next check of the stop flag; wait briefly for them."""
        deadline = time.monotonic() + 2.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []


# -- the names of each form, and what its driver wants at connect time -----------------

SQLALCHEMY_ASYNC_KIND = "sqlalchemy-async"
SQLALCHEMY_KIND = "sqlalchemy"
PSYCOPG_ASYNC_KIND = "psycopg-async"
PSYCOPG_KIND = "psycopg"


def _libpq_options(target: DatabaseTarget, statement_timeout_ms: int) -> str:
    existing = target.options.get("options", "")
    return f"{existing} -c statement_timeout={int(statement_timeout_ms)}".strip()


def psycopg_connect_kwargs(
    target: DatabaseTarget, application_name: str, config: StressConfig
) -> dict[str, Any]:
    """psycopg connection keywords of every pooled connection (both forms)."""
    return {
        "application_name": application_name,
        "autocommit": config.autocommit,
        "connect_timeout": max(2, round(config.connect_timeout_s)),
        "options": _libpq_options(target, config.statement_timeout_ms),
    }


def sqlalchemy_async_connect_args(
    target: DatabaseTarget, application_name: str, config: StressConfig
) -> dict[str, Any]:
    """``connect_args`` of the async engine (asyncpg driver)."""
    return {
        "server_settings": {
            "application_name": application_name,
            "statement_timeout": str(config.statement_timeout_ms),
        },
        "timeout": config.connect_timeout_s,
    }


def sqlalchemy_connect_args(
    target: DatabaseTarget, application_name: str, config: StressConfig
) -> dict[str, Any]:
    """``connect_args`` of the threaded engine (psycopg driver)."""
    return {
        "application_name": application_name,
        "connect_timeout": max(2, round(config.connect_timeout_s)),
        "options": _libpq_options(target, config.statement_timeout_ms),
    }
