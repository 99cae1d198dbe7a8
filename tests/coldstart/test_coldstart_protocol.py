"""dbprobe's protocol client against real servers: every authentication method, TLS
modes, and the failures that must become one clear line."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dbprobe.coldstart import params as cparams
from dbprobe.coldstart import protocol, wire
from dbprobe.coldstart.runner import explain_failure
from dbprobe.errors import ConnectError, UsageError
from dbprobe.pg import PostgresServer
from dbprobe.urls import parse_url

from .conftest import AuthServer
from .helpers import CLEARTEXT_PASSWORD, MD5_PASSWORD, PASSWORD, NotPostgresServer

pytestmark = pytest.mark.usefixtures("no_leftovers")

CONTIGUOUS = ("dns", "tcp", "tls", "startup", "first_query")


def _measure(
    target_params: cparams.ConnectParams,
) -> tuple[protocol.ProtocolTimings, protocol.HandshakeFacts]:
    return protocol.measure(target_params)


def _assert_adds_up(t: protocol.ProtocolTimings) -> None:
    """The phases are contiguous: their sum is the total (to float rounding)."""
    parts = sum(getattr(t, p) or 0.0 for p in CONTIGUOUS)
    assert math.isclose(parts, t.total, rel_tol=1e-9, abs_tol=1e-6)
    # AuthenticationOk is not flushed before ReadyForQuery: no split inside startup
    assert not hasattr(t, "server_init")
    assert not hasattr(t, "auth")
    if t.tls_request is not None and t.tls_handshake is not None:
        assert math.isclose(t.tls_request + t.tls_handshake, t.tls or 0.0, abs_tol=1e-6)
    assert all((getattr(t, p) or 0.0) >= 0 for p in CONTIGUOUS)


@pytest.mark.parametrize(
    ("user", "password", "method"),
    [
        ("cs_trust", None, "trust"),
        ("cs_md5", MD5_PASSWORD, "md5"),
        ("cs_cleartext", CLEARTEXT_PASSWORD, "password"),
        ("postgres", PASSWORD, "scram-sha-256"),
    ],
)
def test_each_auth_method_without_tls(
    auth_server: AuthServer, user: str, password: str | None, method: str
) -> None:
    # a cleartext password without TLS is sent only when the URL opts in
    opt_in = {"require_auth": "password"} if method == "password" else {}
    params = cparams.resolve(
        auth_server.target(user, password, sslmode="disable", **opt_in), environ={}
    )
    timings, facts = _measure(params)
    assert facts.auth_method == method
    assert facts.tls_negotiation == "none"
    assert timings.tls is None
    assert timings.dns is None  # 127.0.0.1 needs no lookup
    assert facts.server_version.startswith(auth_server.server.version)
    assert facts.backend_pid
    _assert_adds_up(timings)
    if method == "scram-sha-256":
        assert facts.scram_iterations == 4096
        assert timings.scram_client is not None
        assert 0 < timings.scram_client < timings.startup
    else:
        assert timings.scram_client is None


@pytest.mark.parametrize("user", ["cs_md5", "postgres"])
def test_wrong_password_is_refused_by_the_server(auth_server: AuthServer, user: str) -> None:
    params = cparams.resolve(
        auth_server.target(user, "not-the-password", sslmode="disable"), environ={}
    )
    with pytest.raises(wire.ServerError) as info:
        protocol.connect(params)
    assert info.value.code == "28P01"
    error = explain_failure(info.value, params)
    assert isinstance(error, ConnectError)
    assert str(error) == f"authentication failed for user {user!r}"


def test_missing_password_is_a_clear_error(auth_server: AuthServer) -> None:
    params = cparams.resolve(auth_server.target("postgres", None, sslmode="disable"), environ={})
    with pytest.raises(wire.AuthenticationError) as info:
        protocol.connect(params)
    assert "asks for a password and none was given" in str(explain_failure(info.value, params))


@pytest.mark.parametrize(
    ("user", "password"),
    [("cs_trust", None), ("postgres", PASSWORD), ("cs_md5", MD5_PASSWORD)],
)
def test_classic_tls_negotiation(tls_server: AuthServer, user: str, password: str | None) -> None:
    params = cparams.resolve(tls_server.target(user, password, sslmode="require"), environ={})
    timings, facts = _measure(params)
    assert facts.tls_negotiation == "sslrequest"
    assert facts.tls_version in ("TLSv1.2", "TLSv1.3")
    assert timings.tls is not None
    assert timings.tls_request is not None
    assert timings.tls_handshake is not None
    _assert_adds_up(timings)


def test_verify_full_with_the_servers_certificate_and_a_host_name(tls_server: AuthServer) -> None:
    cert = str(tls_server.server.certificate)
    target = dataclasses.replace(
        tls_server.target(sslmode="verify-full", sslrootcert=cert), host="localhost"
    )
    params = cparams.resolve(target, environ={})
    timings, facts = _measure(params)
    assert timings.dns is not None  # a host name: resolved, and timed
    assert facts.tls_negotiation == "sslrequest"
    _assert_adds_up(timings)
    with pytest.raises(UsageError, match="needs a root certificate"):
        protocol.tls_context(dataclasses.replace(params, sslrootcert=None), use_default_root=False)


def test_direct_tls_to_a_server_that_does_not_take_it(auth_server: AuthServer) -> None:
    """Direct TLS needs PostgreSQL 17+ with ssl=on; PG 15 (any) and the embedded PG 18
    build (no TLS) both close the connection: one clear line, nothing left open."""
    if auth_server.server.version_num >= 170000 and auth_server.tls:
        pytest.skip("this server accepts direct TLS")
    params = cparams.resolve(
        auth_server.target(sslmode="require", sslnegotiation="direct"), environ={}
    )
    with pytest.raises(protocol.TlsNegotiationError) as info:
        protocol.connect(params)
    line = str(explain_failure(info.value, params))
    assert "sslnegotiation=direct needs PostgreSQL 17 or later with ssl=on" in line
    assert "\n" not in line


def test_tls_required_but_not_offered(pg: PostgresServer) -> None:
    params = cparams.resolve(parse_url(pg.dsn()).with_options(sslmode="require"), environ={})
    with pytest.raises(protocol.TlsNegotiationError) as info:
        protocol.connect(params)
    assert str(explain_failure(info.value, params)) == (
        "TLS was required but the server does not offer it"
    )


def test_prefer_against_a_server_without_tls_pays_a_refused_request(pg: PostgresServer) -> None:
    params = cparams.resolve(parse_url(pg.dsn()), environ={})  # sslmode=prefer
    timings, facts = _measure(params)
    assert facts.tls_negotiation == "sslrequest-refused"
    assert timings.tls is not None
    assert timings.tls_handshake is None
    _assert_adds_up(timings)


def test_unix_socket(pg: PostgresServer) -> None:
    assert pg.socket_dir
    params = cparams.resolve(parse_url(pg.dsn(socket=True)), environ={})
    assert params.transport == "unix"
    timings, facts = _measure(params)
    assert facts.transport == "unix"
    assert facts.address.endswith(f".s.PGSQL.{pg.port}")
    assert timings.tls is None
    _assert_adds_up(timings)


def test_unreachable_and_not_postgres(not_postgres: NotPostgresServer, refusing_port: int) -> None:
    refused = cparams.resolve(parse_url(f"postgresql://u@127.0.0.1:{refusing_port}/d"), environ={})
    with pytest.raises(OSError) as info:
        protocol.connect(refused)
    assert "connection refused" in str(explain_failure(info.value, refused))
    http = cparams.resolve(
        parse_url(f"postgresql://u@127.0.0.1:{not_postgres.port}/d?sslmode=disable"), environ={}
    )
    with pytest.raises(wire.ProtocolViolation) as info2:
        protocol.connect(http)
    assert "does not speak the PostgreSQL protocol" in str(explain_failure(info2.value, http))
    tls_probe = dataclasses.replace(http, sslmode="prefer")
    with pytest.raises(protocol.NotPostgresError, match="answered the SSLRequest"):
        protocol.connect(tls_probe)


def test_cleartext_password_needs_tls_or_an_explicit_opt_in(auth_server: AuthServer) -> None:
    """pg_hba.conf says ``password``: without TLS the protocol client refuses to send it
    unless the URL opts in with libpq's ``require_auth=password``."""
    plain = cparams.resolve(
        auth_server.target("cs_cleartext", CLEARTEXT_PASSWORD, sslmode="disable"), environ={}
    )
    with pytest.raises(wire.AuthenticationError) as info:
        protocol.connect(plain)
    line = str(explain_failure(info.value, plain))
    assert "asked for the password in cleartext over a connection without TLS" in line
    assert CLEARTEXT_PASSWORD not in line
    opted_in = cparams.resolve(
        auth_server.target(
            "cs_cleartext", CLEARTEXT_PASSWORD, sslmode="disable", require_auth="password"
        ),
        environ={},
    )
    _timings, facts = _measure(opted_in)
    assert facts.auth_method == "password"


def test_require_auth_is_enforced_like_libpq(auth_server: AuthServer) -> None:
    trust_only = auth_server.target(
        "cs_trust", None, sslmode="disable", require_auth="scram-sha-256"
    )
    with pytest.raises(wire.AuthenticationError, match="did not complete authentication"):
        protocol.connect(cparams.resolve(trust_only, environ={}))
    no_md5 = auth_server.target("cs_md5", MD5_PASSWORD, sslmode="disable", require_auth="!md5")
    with pytest.raises(wire.AuthenticationError, match="md5"):
        protocol.connect(cparams.resolve(no_md5, environ={}))
    scram = auth_server.target(
        "postgres", PASSWORD, sslmode="disable", require_auth="scram-sha-256"
    )
    _timings, facts = _measure(cparams.resolve(scram, environ={}))
    assert facts.auth_method == "scram-sha-256"
    with pytest.raises(UsageError, match="require_auth"):
        cparams.resolve(auth_server.target(require_auth="scram-sha-256,!md5"), environ={})


def test_cleartext_inside_tls_is_allowed(tls_server: AuthServer) -> None:
    params = cparams.resolve(
        tls_server.target("cs_cleartext", CLEARTEXT_PASSWORD, sslmode="require"), environ={}
    )
    _timings, facts = _measure(params)
    assert facts.auth_method == "password"
    assert facts.tls_negotiation == "sslrequest"


def test_scram_password_prepared_as_postgresql_does(auth_server: AuthServer) -> None:
    """U+0340 is prohibited by SASLprep (RFC 3454 C.8) but its NFKC form U+0300 is
    not: PostgreSQL checks the characters before normalising, finds one prohibited and
    uses the password as it is, so the client must too."""
    password = "pw\u0340x"
    auth_server.server.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cs_saslprep') "
        f"THEN CREATE ROLE cs_saslprep LOGIN PASSWORD '{password}'; END IF; END $$"
    )
    params = cparams.resolve(
        auth_server.target("cs_saslprep", password, sslmode="disable"), environ={}
    )
    _timings, facts = _measure(params)
    assert facts.auth_method == "scram-sha-256"
