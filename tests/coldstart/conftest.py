"""Servers for the cold-start tests.

``auth_server``: one throwaway server (the session's provider) with a role per
authentication method and, where the build supports it, TLS with a self-signed
certificate. The embedded PostgreSQL 18 wheel is built without TLS: on it the TLS
cases are skipped (they run on PostgreSQL 15 in the other CI run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dbprobe.errors import DbprobeError
from dbprobe.pg import PostgresServer, throwaway
from dbprobe.urls import DatabaseTarget, parse_url

from .helpers import (
    CLEARTEXT_PASSWORD,
    MD5_PASSWORD,
    PASSWORD,
    TLS_ONLY_PASSWORD,
    DirectTlsProxy,
    NotPostgresServer,
    RefusingPort,
    dbprobe_sessions,
    hba_lines,
)
from .proxy import FaultProxy, client_sockets


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
    """Roles ``cs_trust`` (trust), ``cs_md5`` (md5), ``cs_cleartext`` (password),
    ``cs_rejected`` (pg_hba.conf rejects it) and ``postgres`` (scram-sha-256); TLS when
    the server build has it, with ``cs_tlsonly`` (scram-sha-256, TLS connections only)."""
    for tls in (True, False):
        try:
            with throwaway(ssl=tls, hba=hba_lines(tls), password=PASSWORD) as server:
                server.execute("CREATE ROLE cs_trust LOGIN")
                server.execute("CREATE ROLE cs_rejected LOGIN")
                if tls:
                    server.execute(f"CREATE ROLE cs_tlsonly LOGIN PASSWORD '{TLS_ONLY_PASSWORD}'")
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
    """Fails the test when it leaves a dbprobe session open on either server, or a TCP
    socket open in this process (a client socket to a server, a proxy or a scripted
    peer, whether or not its connection ever got past start-up)."""
    before = client_sockets()
    yield
    assert client_sockets() - before == set(), "TCP sockets left open"
    assert dbprobe_sessions(pg) == []
    assert dbprobe_sessions(auth_server.server) == []


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Makes :class:`FaultProxy` instances (``fault_proxy(server, delay_s=...)``), all
    closed when the test ends."""
    made: list[FaultProxy] = []

    def make(server: PostgresServer, **faults: Any) -> FaultProxy:
        proxy = FaultProxy((server.host, server.port), **faults)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for the whole test."""
    port = RefusingPort()
    yield port.port
    port.close()


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
