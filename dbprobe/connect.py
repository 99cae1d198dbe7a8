"""Connecting to a user's database, with failures turned into one clear line.

Every dbprobe session identifies itself (``application_name`` starting with
``dbprobe``) so its connections can be found in ``pg_stat_activity``; audit sessions
are read-only with statement and lock timeouts set at connection start (no extra
round trip).
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import psycopg
import psycopg.sql

from dbprobe.errors import ConnectError, DbprobeError, PrivilegeError
from dbprobe.urls import DatabaseTarget, mask_secrets

log = logging.getLogger("dbprobe.connect")

# (substring of the server or driver message, what to tell the user)
_PATTERNS: list[tuple[str, str]] = [
    ("password authentication failed", "authentication failed for user {user!r}"),
    ("authentication failed", "authentication failed for user {user!r}"),
    ("no password supplied", "the server asks for a password and none was given"),
    ("invalidpassword", "authentication failed for user {user!r}"),
    ("no pg_hba.conf entry", "the server's pg_hba.conf does not allow this connection"),
    ("does not exist", "{detail}"),
    ("too many clients", "the server has no free connection slots (too many clients already)"),
    ("remaining connection slots are reserved", "the server's free connection slots are reserved"),
    ("server does not support ssl", "TLS was required but the server does not offer it"),
    ("ssl negotiation", "TLS negotiation failed: {detail}"),
    ("certificate verify failed", "the server's TLS certificate could not be verified"),
    ("connection refused", "cannot reach {where}: connection refused"),
    ("could not translate host name", "cannot resolve host {host!r}"),
    ("failed to resolve host", "cannot resolve host {host!r}"),
    ("name or service not known", "cannot resolve host {host!r}"),
    ("timeout expired", "cannot reach {where}: connection timed out"),
    ("timed out", "cannot reach {where}: connection timed out"),
    ("no such file or directory", "cannot reach {where}: no server socket there"),
    ("the database system is starting up", "the server at {where} is starting up"),
    ("the database system is shutting down", "the server at {where} is shutting down"),
    ("terminating connection", "the server at {where} closed the connection"),
    ("server closed the connection", "the server at {where} closed the connection"),
    ("connection reset", "the server at {where} reset the connection"),
]


def _where(target: DatabaseTarget) -> str:
    host = target.host or "localhost"
    if host.startswith("/"):
        return f"unix socket {host}/.s.PGSQL.{target.port or 5432}"
    return f"{host}:{target.port or 5432}"


def _detail(exc: BaseException) -> str:
    text = str(exc).strip()
    # libpq puts the interesting part after the last "FATAL:" or on the first line
    if "FATAL:" in text:
        text = text.rsplit("FATAL:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    if first.startswith("connection failed:") and len(lines) > 0:
        first = first.split(" failed: ", 1)[-1]
    return mask_secrets(first)


def connect_error(exc: BaseException, target: DatabaseTarget) -> ConnectError:
    """A :class:`ConnectError` with one line that says what went wrong and where.

    Works for psycopg, asyncpg and socket/ssl errors.
    """
    text = f"{type(exc).__name__} {exc}".lower()
    detail = _detail(exc)
    fields = {
        "user": target.user or "(default)",
        "host": target.host or "localhost",
        "where": _where(target),
        "detail": detail,
    }
    for needle, template in _PATTERNS:
        if needle in text:
            return ConnectError(template.format(**fields))
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve host {fields['host']!r}")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return ConnectError(f"cannot reach {fields['where']}: connection timed out")
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"TLS failed with {fields['where']}: {detail}")
    if isinstance(exc, OSError):
        return ConnectError(f"cannot reach {fields['where']}: {detail}")
    return ConnectError(f"cannot connect to {fields['where']}: {detail}")


def session_options(
    *,
    read_only: bool = False,
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int | None = None,
    idle_in_transaction_timeout_ms: int | None = None,
) -> str:
    """The libpq ``options`` string that sets session parameters at startup."""
    parts = []
    if read_only:
        parts.append("-c default_transaction_read_only=on")
    if statement_timeout_ms is not None:
        parts.append(f"-c statement_timeout={int(statement_timeout_ms)}")
    if lock_timeout_ms is not None:
        parts.append(f"-c lock_timeout={int(lock_timeout_ms)}")
    if idle_in_transaction_timeout_ms is not None:
        parts.append(
            f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_ms)}"
        )
    return " ".join(parts)


def connect(
    target: DatabaseTarget,
    *,
    application_name: str = "dbprobe",
    read_only: bool = False,
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int | None = None,
    connect_timeout: float = 10.0,
    autocommit: bool = True,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """Open a psycopg connection or raise :class:`ConnectError` with one clear line.

    application_name: must start with ``dbprobe``; connect_timeout: seconds (default 10);
    statement_timeout_ms / lock_timeout_ms: milliseconds (default: server's).
    """
    if not application_name.startswith("dbprobe"):
        raise DbprobeError("dbprobe sessions must have an application_name starting with dbprobe")
    options = session_options(
        read_only=read_only,
        statement_timeout_ms=statement_timeout_ms,
        lock_timeout_ms=lock_timeout_ms,
    )
    params: dict[str, Any] = {
        "application_name": application_name,
        "connect_timeout": max(1, round(connect_timeout)),
        "autocommit": autocommit,
    }
    if options:
        existing = target.options.get("options", "")
        params["options"] = f"{existing} {options}".strip()
    params.update(kwargs)
    try:
        return psycopg.connect(target.libpq_dsn(), **params)
    except psycopg.Error as exc:
        if options and "unsupported startup parameter" in str(exc):
            # A pooler such as PgBouncer refuses startup options: set them with SET.
            return _connect_then_set(target, params, options)
        raise connect_error(exc, target) from None
    except OSError as exc:
        raise connect_error(exc, target) from None


def _connect_then_set(
    target: DatabaseTarget, params: dict[str, Any], options: str
) -> psycopg.Connection[Any]:
    params = dict(params)
    params.pop("options", None)
    try:
        conn = psycopg.connect(target.libpq_dsn(), **params)
    except (psycopg.Error, OSError) as exc:
        raise connect_error(exc, target) from None
    try:
        for item in options.split("-c ")[1:]:
            name, _, value = item.strip().partition("=")
            conn.execute(
                psycopg.sql.SQL("SELECT set_config({}, {}, false)").format(
                    psycopg.sql.Literal(name), psycopg.sql.Literal(value)
                )
            )
        if not conn.autocommit:
            conn.commit()
    except psycopg.Error as exc:
        conn.close()
        raise connect_error(exc, target) from None
    return conn


def require_privilege(conn: psycopg.Connection[Any], check_sql: str, what: str) -> None:
    """Raise :class:`PrivilegeError` unless ``check_sql`` returns true."""
    row = conn.execute(check_sql).fetchone()
    if not row or not row[0]:
        raise PrivilegeError(f"the connected role lacks a privilege: {what}")
