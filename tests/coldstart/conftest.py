"""Servers for the cold-start tests.

``auth_server``: one throwaway server (the session's provider) with a role per
authentication method and, where the build supports it, TLS with a self-signed
certificate. The embedded PostgreSQL 18 wheel is built without TLS: on it the TLS
cases are skipped (they run on PostgreSQL 15 in the other CI run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from dbprobe.errors import DbprobeError
from dbprobe.pg import PostgresServer, throwaway
from dbprobe.urls import DatabaseTarget, parse_url

from .helpers import (
    CLEARTEXT_PASSWORD,
    HBA,
    MD5_PASSWORD,
    PASSWORD,
    DirectTlsProxy,
    NotPostgresServer,
    dbprobe_sessions,
)


@dataclasses.dataclass(frozen=True)
class AuthServer:
    server: PostgresServer
    tls: bool

    def target(
        self, user: str = "postgres", password: str | None = PASSWORD, **options: str
    ) -> DatabaseTarget:
        base = parse_url(self.server.dsn())
        return dataclasses.replace(base, user=user, password=password).with_options(**options)


@pytest.fixture(scope="session")
def auth_server() -> Iterator[AuthServer]:
    """Roles ``cs_trust`` (trust), ``cs_md5`` (md5), ``cs_cleartext`` (password) and
    ``postgres`` (scram-sha-256); TLS when the server build has it."""
    for tls in (True, False):
        try:
            with throwaway(ssl=tls, hba=HBA, password=PASSWORD) as server:
                server.execute("CREATE ROLE cs_trust LOGIN")
                server.execute(
                    f"SET password_encryption = 'md5'; "
                    f"CREATE ROLE cs_md5 LOGIN PASSWORD '{MD5_PASSWORD}'"
                )
                server.execute(f"CREATE ROLE cs_cleartext LOGIN PASSWORD '{CLEARTEXT_PASSWORD}'")
                yield AuthServer(server, tls)
                return
        except DbprobeError as exc:
            if tls and "SSL is not supported" in str(exc):
                continue
            raise


@pytest.fixture
def tls_server(auth_server: AuthServer) -> AuthServer:
    if not auth_server.tls:
        pytest.skip("this PostgreSQL build has no TLS (the embedded wheel); runs on PG 15")
    return auth_server


@pytest.fixture
def no_leftovers(pg: PostgresServer, auth_server: AuthServer) -> Iterator[None]:
    """Fails the test when it leaves a dbprobe session open on either server."""
    yield
    assert dbprobe_sessions(pg) == []
    assert dbprobe_sessions(auth_server.server) == []


@pytest.fixture
def not_postgres() -> Iterator[NotPostgresServer]:
    server = NotPostgresServer()
    yield server
    server.close()


@pytest.fixture
def direct_tls_proxy(tls_server: AuthServer) -> Iterator[DirectTlsProxy]:
    """Direct TLS with ALPN in front of the TLS server (see :class:`DirectTlsProxy`)."""
    cert = tls_server.server.certificate
    assert cert is not None
    proxy = DirectTlsProxy(
        (tls_server.server.host, tls_server.server.port),
        str(cert),
        str(cert.with_name("server.key")),
    )
    yield proxy
    proxy.close()
