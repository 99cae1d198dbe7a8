"""The effective connection parameters, resolved once so that every driver and the
protocol client connect with exactly the same settings.

libpq's defaults and environment variables (``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGDATABASE``, ``PGPASSWORD``, ``PGPASSFILE``, ``PGSSLMODE``, ``PGSSLNEGOTIATION``,
``PGSSLROOTCERT``, ``PGCONNECT_TIMEOUT``, ``PGREQUIREAUTH``) apply where the URL says
nothing; each driver then gets every value explicitly. Pure apart from reading the password file.
"""

from __future__ import annotations

import dataclasses
import getpass
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dbprobe.coldstart import wire
from dbprobe.errors import UsageError
from dbprobe.urls import DatabaseTarget

REQUIRE_AUTH_METHODS = ("password", "md5", "gss", "sspi", "scram-sha-256", "oauth", "none")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SSL_NEGOTIATIONS = ("postgres", "direct")
# libpq's compiled-in socket directories differ by build; these are searched in order.
SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql", "/tmp")
DEFAULT_CONNECT_TIMEOUT_S = 10.0
APPLICATION_NAME = "dbprobe-coldstart"

# URL options that are given to every driver. Anything else is passed to libpq only
# (psycopg and the protocol client) and listed in the report as not given to asyncpg.
_SSL_FILE_KEYS = ("sslrootcert", "sslcert", "sslkey")
_CONSUMED = {"sslmode", "sslnegotiation", "connect_timeout", "application_name", *_SSL_FILE_KEYS}


class AuthenticationRefused(wire.AuthenticationError):
    """The client refuses the authentication the server asked for (``require_auth``)."""


@dataclasses.dataclass(frozen=True)
class AuthRequirement:
    """libpq's ``require_auth``: the authentication methods the client accepts.

    methods: the listed names (``password``, ``md5``, ``gss``, ``sspi``,
    ``scram-sha-256``, ``oauth``, ``none``); negated: the list was given as ``!name,...``
    (every method except those). No list (the default) accepts anything.
    """

    methods: frozenset[str] = frozenset()
    negated: bool = False
    given: str = ""

    @classmethod
    def parse(cls, text: str | None) -> AuthRequirement:
        """Parse a ``require_auth`` value; raises :class:`UsageError` when malformed."""
        if not text:
            return cls()
        names = [part.strip() for part in text.split(",")]
        negated = {name.startswith("!") for name in names}
        if len(negated) != 1:
            raise UsageError(
                f"require_auth={text!r}: negative and positive methods cannot be mixed"
            )
        methods = frozenset(name.lstrip("!") for name in names)
        unknown = sorted(m for m in methods if m not in REQUIRE_AUTH_METHODS)
        if unknown:
            raise UsageError(
                f"require_auth={text!r}: unknown method {unknown[0]!r} "
                f"(choose from {', '.join(REQUIRE_AUTH_METHODS)})"
            )
        return cls(methods, negated.pop(), text)

    def allows(self, method: str) -> bool:
        if not self.given:
            return True
        return (method in self.methods) != self.negated

    def explicitly_allows(self, method: str) -> bool:
        """Whether the list names ``method`` (an explicit opt-in, not a mere
        "anything but ...")."""
        return bool(self.given) and not self.negated and method in self.methods

    def check_requested(self, method: str) -> None:
        """Raise when the server asks for ``method`` and the list refuses it."""
        if not self.allows(method):
            raise AuthenticationRefused(
                f"the server asked for {method} authentication, which "
                f"require_auth={self.given} does not allow"
            )

    def check_completed(self, method: str) -> None:
        """At AuthenticationOk: ``method`` is what the server asked for (``none`` when
        it asked for nothing)."""
        if method == "none" and not self.allows("none"):
            raise AuthenticationRefused(
                f"the server did not complete authentication (it asked for none), but "
                f"require_auth={self.given} requires it"
            )


@dataclasses.dataclass(frozen=True)
class ConnectParams:
    """One server and database, with every setting a connection needs made explicit.

    host: a host name, an IP literal, or a unix-socket directory (starts with ``/``).
    sslmode / sslnegotiation: libpq's meaning (``prefer`` / ``postgres`` by default).
    connect_timeout: seconds (default 10). ``extra`` holds other libpq options from the
    URL (``options``, ``target_session_attrs``, ...).
    """

    host: str
    port: int
    user: str
    database: str
    password: str | None = dataclasses.field(default=None, repr=False)
    sslmode: str = "prefer"
    sslnegotiation: str = "postgres"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    application_name: str = APPLICATION_NAME
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)

    # -- facts ------------------------------------------------------------------------
    @property
    def transport(self) -> str:
        """``unix`` or ``tcp``."""
        return "unix" if self.host.startswith("/") else "tcp"

    @property
    def host_is_name(self) -> bool:
        """Whether connecting needs a name lookup (not an IP literal, not a socket)."""
        if self.transport == "unix":
            return False
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return True
        return False

    @property
    def socket_path(self) -> str:
        return f"{self.host}/.s.PGSQL.{self.port}"

    @property
    def tls_wanted(self) -> bool:
        """Whether the first attempt negotiates TLS (libpq: not over unix sockets)."""
        return self.transport == "tcp" and self.sslmode not in ("disable", "allow")

    @property
    def tls_required(self) -> bool:
        return self.sslmode in ("require", "verify-ca", "verify-full")

    @property
    def auth_requirement(self) -> AuthRequirement:
        """The URL's ``require_auth`` (libpq 16+), enforced by the protocol client and
        passed to libpq."""
        return AuthRequirement.parse(self.extra.get("require_auth"))

    @property
    def where(self) -> str:
        return self.socket_path if self.transport == "unix" else f"{self.host}:{self.port}"

    def target(self) -> DatabaseTarget:
        """A :class:`DatabaseTarget` with every value explicit (for URLs and DSNs)."""
        return DatabaseTarget(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            options=self.libpq_options(),
        )

    def libpq_options(self, *, with_timeout: bool = True) -> dict[str, str]:
        opts: dict[str, str] = dict(self.extra)
        if self.transport == "tcp":
            opts["sslmode"] = self.sslmode
            if self.sslnegotiation != "postgres":
                opts["sslnegotiation"] = self.sslnegotiation
            for key in _SSL_FILE_KEYS:
                value = getattr(self, key)
                if value:
                    opts[key] = value
        if with_timeout:
            opts["connect_timeout"] = str(max(1, round(self.connect_timeout)))
        opts["application_name"] = self.application_name
        return opts

    # -- per-driver arguments ---------------------------------------------------------
    def libpq_conninfo(self) -> str:
        """A libpq URI for psycopg (and SQLAlchemy's psycopg dialect)."""
        return self.target().libpq_dsn()

    def asyncpg_dsn(self) -> str:
        """A DSN asyncpg parses itself (it understands ``sslmode``, ``sslnegotiation``,
        ``sslrootcert``...; the connect timeout goes in ``asyncpg_connect_kwargs``)."""
        opts = self.libpq_options(with_timeout=False)
        for key in self.asyncpg_ignored():
            opts.pop(key, None)
        return dataclasses.replace(self.target(), options=opts).libpq_dsn()

    def asyncpg_connect_kwargs(self) -> dict[str, Any]:
        return {"dsn": self.asyncpg_dsn(), "timeout": self.connect_timeout}

    def asyncpg_ignored(self) -> list[str]:
        """URL options asyncpg does not take (it would send them as server settings)."""
        return sorted(k for k in self.extra if k not in ("target_session_attrs",))

    def with_sslmode(self, sslmode: str) -> ConnectParams:
        return dataclasses.replace(self, sslmode=sslmode)


def resolve(
    target: DatabaseTarget,
    *,
    environ: Mapping[str, str] | None = None,
    connect_timeout: float | None = None,
    application_name: str = APPLICATION_NAME,
    socket_dirs: tuple[str, ...] = SOCKET_DIRS,
) -> ConnectParams:
    """Resolve ``target`` with libpq's environment variables and defaults.

    connect_timeout: seconds; default the URL's ``connect_timeout``, then
    ``$PGCONNECT_TIMEOUT``, then 10. Raises :class:`UsageError` for settings the
    cold-start probe cannot measure (several hosts, unknown ``sslmode``).
    """
    env = os.environ if environ is None else environ
    opts = dict(target.options)
    host = target.host or env.get("PGHOST") or ""
    if "," in host:
        raise UsageError("coldstart measures one server: give one host, not a list")
    port_text = str(target.port or env.get("PGPORT") or 5432)
    if "," in port_text:
        raise UsageError("coldstart measures one server: give one port, not a list")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"port {port_text!r} is not a number") from None
    if not host:
        host = _default_host(port, socket_dirs)
    user = target.user or env.get("PGUSER") or _os_user()
    database = target.database or env.get("PGDATABASE") or user
    sslmode = (opts.pop("sslmode", None) or env.get("PGSSLMODE") or "prefer").lower()
    if sslmode not in SSLMODES:
        raise UsageError(f"unknown sslmode {sslmode!r} (choose one of {', '.join(SSLMODES)})")
    negotiation = (
        opts.pop("sslnegotiation", None) or env.get("PGSSLNEGOTIATION") or "postgres"
    ).lower()
    if negotiation not in SSL_NEGOTIATIONS:
        raise UsageError(f"unknown sslnegotiation {negotiation!r} (choose postgres or direct)")
    if negotiation == "direct" and sslmode not in ("require", "verify-ca", "verify-full"):
        raise UsageError(
            f"sslnegotiation=direct needs sslmode=require, verify-ca or verify-full "
            f"(got sslmode={sslmode})"
        )
    timeout_text = opts.pop("connect_timeout", None) or env.get("PGCONNECT_TIMEOUT")
    timeout = connect_timeout
    if timeout is None:
        try:
            timeout = float(timeout_text) if timeout_text else DEFAULT_CONNECT_TIMEOUT_S
        except ValueError:
            raise UsageError(f"connect_timeout {timeout_text!r} is not a number") from None
    if timeout <= 0:
        timeout = DEFAULT_CONNECT_TIMEOUT_S  # libpq: 0 means wait forever; we bound it
    if not opts.get("require_auth") and env.get("PGREQUIREAUTH"):
        opts["require_auth"] = env["PGREQUIREAUTH"]
    AuthRequirement.parse(opts.get("require_auth"))  # fail early on a malformed list
    files = {key: opts.pop(key, None) for key in _SSL_FILE_KEYS}
    if not files["sslrootcert"]:
        files["sslrootcert"] = env.get("PGSSLROOTCERT")
    opts.pop("application_name", None)
    password = target.password
    if password is None:
        password = env.get("PGPASSWORD")
    if password is None:
        password = pgpass_lookup(
            _pgpass_file(env), host=host, port=port, database=database, user=user
        )
    return ConnectParams(
        host=host,
        port=port,
        user=user,
        database=database,
        password=password,
        sslmode=sslmode,
        sslnegotiation=negotiation,
        sslrootcert=files["sslrootcert"],
        sslcert=files["sslcert"],
        sslkey=files["sslkey"],
        connect_timeout=timeout,
        application_name=application_name,
        extra={k: v for k, v in opts.items() if k not in _CONSUMED},
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return "postgres"


def _default_host(port: int, socket_dirs: tuple[str, ...]) -> str:
    for directory in socket_dirs:
        if os.path.exists(f"{directory}/.s.PGSQL.{port}"):
            return directory
    return "localhost"


def _pgpass_file(env: Mapping[str, str]) -> Path | None:
    if env.get("PGPASSFILE"):
        return Path(env["PGPASSFILE"])
    try:
        return Path.home() / ".pgpass"
    except RuntimeError:
        return None


def pgpass_lookup(
    path: Path | None, *, host: str, port: int, database: str, user: str
) -> str | None:
    """The password for these parameters from a libpq password file, or ``None``.

    Lines are ``hostname:port:database:username:password``; ``*`` matches anything,
    ``\\:`` and ``\\\\`` escape; a unix-socket host matches ``localhost`` as in libpq.
    """
    if path is None:
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return pgpass_match(text, host=host, port=port, database=database, user=user)


def pgpass_match(text: str, *, host: str, port: int, database: str, user: str) -> str | None:
    """Match the first line of a password file's ``text`` (see :func:`pgpass_lookup`)."""
    wanted_host = "localhost" if host.startswith("/") else host
    wanted = (wanted_host, str(port), database, user)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _split_pgpass(line)
        if len(fields) < 5:
            continue
        if all(f in ("*", w) for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4]
    return None


def _split_pgpass(line: str) -> list[str]:
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields
