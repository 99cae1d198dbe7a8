"""Naming what went wrong in a request: the pool's own timeout, a server refusal, a lost
server, or the workload's error. Kinds are stable strings used as report keys."""

from __future__ import annotations

import asyncio

from dbprobe.pool.recording import TIMEOUT_KINDS

__all__ = ["FATAL_KINDS", "TIMEOUT_KINDS", "classify_acquire", "classify_run", "is_fatal"]

FATAL_KINDS = frozenset({"server-shutdown", "connection-refused", "connection-lost"})
"""Kinds that mean the server may be gone: the run checks it and stops if so."""

_SERVER_PATTERNS: tuple[tuple[str, str], ...] = (
    ("too many clients", "too-many-clients"),
    ("toomanyconnections", "too-many-clients"),
    ("remaining connection slots are reserved", "too-many-clients"),
    ("connection slots are reserved", "too-many-clients"),
    ("terminating connection", "server-shutdown"),
    ("adminshutdown", "server-shutdown"),
    ("the database system is shutting down", "server-shutdown"),
    ("the database system is starting up", "server-shutdown"),
    ("cannotconnectnow", "server-shutdown"),
    ("connection refused", "connection-refused"),
    ("connect call failed", "connection-refused"),
    ("server closed the connection", "connection-lost"),
    ("connection reset", "connection-lost"),
    ("connection was closed", "connection-lost"),
    ("connection is closed", "connection-lost"),
    ("connectiondoesnotexist", "connection-lost"),
    ("the connection is lost", "connection-lost"),
    ("cannot switch to state", "connection-lost"),
    ("broken pipe", "connection-lost"),
    ("no such file or directory", "connection-refused"),
    ("canceling statement due to statement timeout", "statement-timeout"),
    ("querycanceled", "statement-timeout"),
    ("password authentication failed", "authentication-failed"),
    ("does not exist", "does-not-exist"),
)


class ReleaseTimeout(Exception):
    """Returning a connection took longer than allowed (asyncpg applies the acquire
    timeout to its reset query on release, and terminates the connection when it
    expires)."""

    kind = "asyncpg-release-timeout"


def _text(exc: BaseException) -> str:
    parts = [type(exc).__name__, str(exc)]
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        parts += [type(cause).__name__, str(cause)]
    orig = getattr(exc, "orig", None)  # SQLAlchemy DBAPIError
    if orig is not None:
        parts += [type(orig).__name__, str(orig)]
    return " ".join(parts).lower()


def _server_kind(exc: BaseException) -> str | None:
    text = _text(exc)
    for needle, kind in _SERVER_PATTERNS:
        if needle in text:
            return kind
    if isinstance(exc, ConnectionRefusedError):
        return "connection-refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "connection-lost"
    return None


def classify_acquire(exc: BaseException) -> str:
    """The kind of a failure while waiting for a connection."""
    module = type(exc).__module__
    name = type(exc).__name__
    if module.startswith("sqlalchemy") and name == "TimeoutError":
        return "sqlalchemy-queuepool-timeout"
    if module.startswith("psycopg_pool") and name == "PoolTimeout":
        return "psycopg-pool-timeout"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not _server_kind(exc):
        return "asyncpg-acquire-timeout"
    return _server_kind(exc) or _generic(exc)


def classify_run(exc: BaseException) -> str:
    """The kind of a failure while the workload held its connection."""
    if isinstance(exc, ReleaseTimeout):
        return exc.kind
    return _server_kind(exc) or _generic(exc)


def _generic(exc: BaseException) -> str:
    name = type(exc).__name__
    orig = getattr(exc, "orig", None)
    if orig is not None:
        name = type(orig).__name__
    sqlstate = getattr(exc, "sqlstate", None) or getattr(orig, "sqlstate", None)
    if sqlstate:
        return f"sql-error-{sqlstate}"
    return f"error-{name}"


def is_fatal(kind: str) -> bool:
    return kind in FATAL_KINDS


def is_timeout(kind: str) -> bool:
    return kind in TIMEOUT_KINDS
