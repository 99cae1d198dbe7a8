"""The protocol client against hostile and broken peers (scripted servers on loopback,
see ``hostile.py``): what a real PostgreSQL server never does, the client must refuse
or report in one clear line, leaving nothing open."""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from dbprobe.cli import main
from dbprobe.coldstart import ColdStartOptions, protocol, run, wire
from dbprobe.coldstart import params as cparams
from dbprobe.coldstart.runner import explain_failure
from dbprobe.pg import PostgresServer
from dbprobe.urls import parse_url

from . import hostile
from .hostile import ScriptedPeer

pytestmark = pytest.mark.usefixtures("no_leftovers")


@pytest.fixture
def peer(request: pytest.FixtureRequest) -> Iterator[ScriptedPeer]:
    server = ScriptedPeer(request.param)
    yield server
    server.close()


def _params(port: int, **options: str) -> cparams.ConnectParams:
    url = f"postgresql://app:pw-on-the-wire@127.0.0.1:{port}/db"
    return cparams.resolve(parse_url(url).with_options(connect_timeout="2", **options), environ={})


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("peer", [hostile.scram_without_final], indirect=True)
def test_scram_without_the_servers_signature_is_refused(
    peer: ScriptedPeer, capsys: pytest.CaptureFixture[str]
) -> None:
    params = _params(peer.port, sslmode="disable")
    with pytest.raises(wire.AuthenticationError, match="server signature") as info:
        protocol.connect(params)
    line = str(explain_failure(info.value, params))
    assert line.startswith(f"authentication with 127.0.0.1:{peer.port} failed:")
    assert "did not prove it knows the password" in line
    url = f"postgresql://app:pw-on-the-wire@127.0.0.1:{peer.port}/db?sslmode=disable"
    assert main(["-q", "coldstart", url, "--samples", "1", "--no-warm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "did not prove it knows the password" in err[0]
    assert "pw-on-the-wire" not in err[0]


def _scram_then_cleartext(peer: hostile.PeerConnection) -> None:
    peer.read_startup()
    peer.scram_until_final()
    peer.auth(wire.AUTH_CLEARTEXT)  # switch methods halfway: collect the password
    peer.read()


@pytest.mark.parametrize("peer", [_scram_then_cleartext], indirect=True)
def test_switching_methods_during_scram_is_refused(peer: ScriptedPeer) -> None:
    params = _params(peer.port, sslmode="disable", require_auth="password,scram-sha-256")
    with pytest.raises(wire.AuthenticationError, match="in the middle of SCRAM"):
        protocol.connect(params)
    assert b"pw-on-the-wire\0" not in peer.passwords


@pytest.mark.parametrize("peer", [hostile.refuse_tls_then_ask_cleartext], indirect=True)
@pytest.mark.parametrize("sslmode", ["prefer", "disable"])
def test_cleartext_password_without_tls_is_not_sent(peer: ScriptedPeer, sslmode: str) -> None:
    """sslmode=prefer, the server answers 'N' and asks for the password in cleartext:
    an active downgrade. The password must never reach the peer."""
    params = _params(peer.port, sslmode=sslmode)
    with pytest.raises(wire.AuthenticationError) as info:
        protocol.connect(params)
    assert peer.passwords == []
    line = str(explain_failure(info.value, params))
    assert "in cleartext over a connection without TLS" in line
    assert "require_auth=password" in line  # the explicit opt-in
    assert "sslmode=verify-full" in line


@pytest.mark.parametrize("peer", [hostile.refuse_tls_then_ask_cleartext], indirect=True)
def test_cleartext_is_sent_only_when_the_url_asks_for_it(peer: ScriptedPeer) -> None:
    params = _params(peer.port, sslmode="prefer", require_auth="password")
    timings, facts = protocol.measure(params)
    assert facts.auth_method == "password"
    assert facts.tls_negotiation == "sslrequest-refused"
    assert peer.passwords == [b"pw-on-the-wire\0"]
    assert timings.total > 0


@pytest.mark.parametrize("peer", [hostile.notice_before_auth_ok], indirect=True)
def test_a_notice_during_authentication_is_skipped(peer: ScriptedPeer) -> None:
    timings, facts = protocol.measure(_params(peer.port, sslmode="disable"))
    assert facts.auth_method == "trust"
    assert facts.backend_pid == 4242
    assert timings.first_query is not None


@pytest.mark.parametrize("peer", [hostile.ssh_banner], indirect=True)
def test_unencrypted_bytes_after_the_ssl_answer_are_not_postgresql(peer: ScriptedPeer) -> None:
    """An SSH server's banner starts with 'S': libpq reports "received unencrypted data
    after SSL response"; so does the protocol client, instead of a TLS failure."""
    params = _params(peer.port, sslmode="prefer")
    with pytest.raises(protocol.NotPostgresError, match="unencrypted data after the SSL"):
        protocol.connect(params)
    line = str(explain_failure(protocol.NotPostgresError("x"), params))
    assert "does not speak the PostgreSQL protocol" in line


@pytest.mark.parametrize("peer", [hostile.tls_yes_then_hang_up], indirect=True)
def test_a_failed_tls_handshake_leaves_no_socket_open(peer: ScriptedPeer) -> None:
    params = _params(peer.port, sslmode="require")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        before = _open_fds()
        with pytest.raises((OSError, protocol.TlsNegotiationError)) as info:
            protocol.connect(params)
        # the exception (and the frames it holds) is still alive: a socket it refers to
        # would still be open here
        assert _open_fds() == before
        assert "\n" not in str(explain_failure(info.value, params))
        del info
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


@pytest.mark.parametrize("peer", [hostile.never_answers], indirect=True)
def test_a_server_that_accepts_and_never_answers(peer: ScriptedPeer) -> None:
    params = _params(peer.port, sslmode="prefer")
    params = dataclasses.replace(params, connect_timeout=1.0)
    with pytest.raises(TimeoutError) as info:
        protocol.connect(params)
    line = str(explain_failure(info.value, params))
    assert line == (
        f"127.0.0.1:{peer.port} accepted the connection but did not answer within 1 s "
        "(is it a PostgreSQL server?)"
    )


def test_the_tcp_floor_uses_the_address_the_connection_used(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host name whose first address has no server (a dual-stack ``localhost`` that
    resolves to ::1 first, the server listening on 127.0.0.1 only). This machine's
    hosts file maps localhost to 127.0.0.1 only, so the resolver's answer is
    reproduced by a stand-in that puts ::1 first."""
    real_getaddrinfo = socket.getaddrinfo

    def dual_stack(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        infos = real_getaddrinfo(host, port, *args, **kwargs)
        if host == "localhost":
            v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", int(port), 0, 0))
            return [v6, *infos]
        return infos

    monkeypatch.setattr(socket, "getaddrinfo", dual_stack)
    target = parse_url(pg.dsn().replace("127.0.0.1", "localhost")).with_options(sslmode="disable")
    result = run(target, ColdStartOptions(drivers=("psycopg",), samples=2, warm=False))
    floor = result.metrics["tcp_floor"]
    assert floor["connect"].n == 2
    assert floor["_meta"]["address"] == f"127.0.0.1:{pg.port}"
    assert result.metrics["protocol"]["_meta"]["address"] == f"127.0.0.1:{pg.port}"


@pytest.mark.parametrize("peer", [hostile.close_after_200ms], indirect=True)
def test_the_floor_waits_for_the_server_to_close_its_end(peer: ScriptedPeer) -> None:
    """Untimed: the floor's connection is over only when the server has closed it (a
    PostgreSQL backend exits on end-of-file), so that backend does not compete with the
    next timed connection. The connect figure itself is not the wait."""
    t0 = time.perf_counter()
    connect_ms = protocol.tcp_floor_ms(socket.AF_INET, ("127.0.0.1", peer.port), 5.0)
    waited = time.perf_counter() - t0
    assert waited >= 0.2  # the peer's sleep is a lower bound
    assert connect_ms < waited * 1000
    assert peer.connections == 1


def test_the_floor_against_a_real_server(pg: PostgresServer) -> None:
    """A real backend sees end-of-file and exits, so the wait ends long before the 5 s
    timeout (which would otherwise end it)."""
    t0 = time.perf_counter()
    connect_ms = protocol.tcp_floor_ms(socket.AF_INET, ("127.0.0.1", pg.port), 5.0)
    assert connect_ms > 0
    assert time.perf_counter() - t0 < 4.0
