"""Database URLs: parse SQLAlchemy-style URLs and libpq URIs into one target.

Accepted forms::

    postgresql://user:pw@host:5432/db?sslmode=require
    postgres://...
    postgresql+psycopg://...  postgresql+psycopg2://...  postgresql+asyncpg://...
    host=... dbname=... user=...          (libpq keyword/value string)

Passwords never leave this module unmasked except through the explicit
``libpq_dsn()`` / ``sqlalchemy_url()`` / ``asyncpg_kwargs()`` builders used to connect.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from dbprobe.errors import BadUrlError

MASK = "***"
_PG_SCHEMES = {"postgresql", "postgres"}
_DRIVERS = {"", "psycopg", "psycopg2", "asyncpg", "pg8000", "psycopg_async", "psycopg2cffi"}
_KV_RE = re.compile(r"\s*(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


@dataclasses.dataclass(frozen=True)
class DatabaseTarget:
    """A PostgreSQL server and database to connect to.

    ``host`` may be a unix-socket directory (starts with ``/``). ``options`` holds the
    remaining libpq parameters (``sslmode``, ``connect_timeout``, ...).
    """

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    database: str | None = None
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    driver: str = ""

    # -- builders ---------------------------------------------------------------------
    def _netloc(self, password: str | None) -> str:
        userinfo = ""
        if self.user:
            userinfo = urllib.parse.quote(self.user, safe="")
            if password is not None:
                userinfo += ":" + (
                    MASK if password is MASK else urllib.parse.quote(password, safe="")
                )
            userinfo += "@"
        host = self.host or ""
        if host.startswith("/"):
            host = ""  # socket directory goes to the query string
        elif ":" in host:
            host = f"[{host}]"
        port = f":{self.port}" if self.port and host else ""
        return userinfo + host + port

    def _query(self, extra: Mapping[str, str] | None = None, *, mask: bool = False) -> str:
        params = dict(self.options)
        if mask:
            params = {k: (MASK if "password" in k.lower() else v) for k, v in params.items()}
        if self.host and self.host.startswith("/"):
            params["host"] = self.host
            if self.port:
                params["port"] = str(self.port)
        if extra:
            params.update(extra)
        return ("?" + urllib.parse.urlencode(params)) if params else ""

    def _url(
        self,
        scheme: str,
        password: str | None,
        extra: Mapping[str, str] | None,
        *,
        mask: bool = False,
    ) -> str:
        db = urllib.parse.quote(self.database or "", safe="")
        query = self._query(extra, mask=mask).replace("%2A%2A%2A", MASK)
        return f"{scheme}://{self._netloc(password)}/{db}{query}"

    def libpq_dsn(self, **extra: str) -> str:
        """A libpq URI with the password (for connecting only, never for output)."""
        return self._url("postgresql", self.password, extra)

    def sqlalchemy_url(self, driver: str = "psycopg", **extra: str) -> str:
        """A SQLAlchemy URL for ``driver`` (``psycopg`` or ``asyncpg``), with the password."""
        opts = dict(extra)
        if driver == "asyncpg":
            return _asyncpg_url(self, opts)
        return self._url(f"postgresql+{driver}", self.password, opts)

    def asyncpg_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect``."""
        kw: dict[str, Any] = {}
        if self.host:
            kw["host"] = self.host
        if self.port:
            kw["port"] = self.port
        if self.user:
            kw["user"] = self.user
        if self.password is not None:
            kw["password"] = self.password
        if self.database:
            kw["database"] = self.database
        ssl = self.options.get("sslmode")
        if ssl:
            kw["ssl"] = ssl
        if "connect_timeout" in self.options:
            kw["timeout"] = float(self.options["connect_timeout"])
        return kw

    def masked(self) -> str:
        """The URL for display: password replaced by ``***``, driver kept."""
        scheme = "postgresql" + (f"+{self.driver}" if self.driver else "")
        return self._url(scheme, MASK if self.password is not None else None, None, mask=True)

    def with_database(self, database: str) -> DatabaseTarget:
        return dataclasses.replace(self, database=database)

    def with_options(self, **options: str) -> DatabaseTarget:
        merged = dict(self.options)
        merged.update(options)
        return dataclasses.replace(self, options=merged)

    def __str__(self) -> str:
        return self.masked()


def _asyncpg_url(target: DatabaseTarget, extra: dict[str, str]) -> str:
    # asyncpg's SQLAlchemy dialect takes ``ssl`` rather than libpq's ``sslmode``.
    opts = dict(target.options)
    opts.update(extra)
    if "sslmode" in opts:
        opts["ssl"] = opts.pop("sslmode")
    opts.pop("connect_timeout", None)
    t = dataclasses.replace(target, options=opts)
    return t._url("postgresql+asyncpg", t.password, None)


def parse_url(url: str) -> DatabaseTarget:
    """Parse a SQLAlchemy-style URL, a libpq URI or a libpq keyword/value string.

    Raises :class:`BadUrlError` (one clear line, no password) for anything else.
    """
    text = url.strip()
    if not text:
        raise BadUrlError("empty database URL")
    if "://" not in text:
        if "=" in text:
            return _parse_keyword_value(text)
        raise BadUrlError(
            f"not a database URL: {mask_secrets(text)!r} "
            "(expected postgresql://user@host:port/dbname)"
        )
    scheme, _, rest = text.partition("://")
    base, _, driver = scheme.lower().partition("+")
    if base not in _PG_SCHEMES:
        raise BadUrlError(
            f"not a PostgreSQL URL: scheme {scheme!r} (dbprobe supports postgresql:// only)"
        )
    if driver not in _DRIVERS:
        raise BadUrlError(f"unsupported PostgreSQL driver {driver!r} in URL scheme {scheme!r}")
    try:
        parts = urllib.parse.urlsplit("postgresql://" + rest)
        port = parts.port
    except ValueError:
        # urllib's message may quote part of the password: say it in our words
        raise BadUrlError(
            "malformed database URL: cannot read host and port "
            "(percent-encode '/', '#', '?', '@' and ':' inside a password)"
        ) from None
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    host: str | None = urllib.parse.unquote(parts.hostname) if parts.hostname else None
    if host is None and query.get("host"):
        host = query.pop("host")
    else:
        query.pop("host", None)
    if "port" in query:
        raw = query.pop("port")
        try:
            port = int(raw)
        except ValueError:
            raise BadUrlError(f"malformed database URL: port {raw!r} is not a number") from None
    if parts.password is not None and ("#" in rest.split("@")[0] or "?" in rest.split("@")[0]):
        raise BadUrlError(
            "malformed database URL: percent-encode '/', '#', '?', '@' and ':' inside a password"
        )
    if port is not None and not 0 < port < 65536:
        raise BadUrlError(f"malformed database URL: port {port} out of range")
    q_user, q_password, q_db = (
        query.pop("user", None),
        query.pop("password", None),
        query.pop("dbname", None),
    )
    user = urllib.parse.unquote(parts.username) if parts.username else q_user
    password = urllib.parse.unquote(parts.password) if parts.password is not None else q_password
    database = urllib.parse.unquote(parts.path.lstrip("/")) or q_db
    if "ssl" in query and "sslmode" not in query:  # asyncpg spelling
        query["sslmode"] = query.pop("ssl")
    return DatabaseTarget(
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        options=query,
        driver=driver,
    )


def _parse_keyword_value(text: str) -> DatabaseTarget:
    values: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _KV_RE.match(text, pos)
        if not m:
            if text[pos:].strip():
                raise BadUrlError("malformed libpq connection string")
            break
        key, value = m.group(1), m.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        values[key] = value
        pos = m.end()
    port_text = values.pop("port", None)
    try:
        port = int(port_text) if port_text else None
    except ValueError:
        raise BadUrlError(f"malformed libpq connection string: port {port_text!r}") from None
    host = values.pop("host", None) or values.pop("hostaddr", None)
    return DatabaseTarget(
        host=host,
        port=port,
        user=values.pop("user", None),
        password=values.pop("password", None),
        database=values.pop("dbname", None),
        options=values,
    )


_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Mask passwords in any text that may contain URLs or libpq strings."""
    text = _PASSWORD_IN_URL.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    return _PASSWORD_KV.sub(lambda m: m.group(1) + MASK, text)
