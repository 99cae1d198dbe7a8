"""Cold-start runs through a real TCP proxy the test controls (``proxy.py``): injected
latency that every phase must carry, a server that goes away in the middle of a run,
a tampered SCRAM signature. The delay makes lower bounds hold whatever the load of
the machine: a phase that waits for k server messages takes at least k x D."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from dbprobe.analysis.coldstart_verdicts import additivity
from dbprobe.cli import main
from dbprobe.coldstart import ColdStartOptions, protocol, run, wire
from dbprobe.coldstart.params import resolve
from dbprobe.coldstart.schema import validate_coldstart_metrics
from dbprobe.errors import ConnectError
from dbprobe.report.model import Distribution
from dbprobe.urls import DatabaseTarget

from .conftest import AuthServer
from .helpers import PASSWORD, TLS_ONLY_PASSWORD
from .proxy import FaultProxy, client_sockets

pytestmark = pytest.mark.usefixtures("no_leftovers")

DELAY_S = 0.04
D = DELAY_S * 1000  # ms

#: round trips (server messages waited for) of each driver's first query on a fresh
#: connection: psycopg one; asyncpg prepares, then runs; SQLAlchemy sends BEGIN first
FIRST_QUERY_TRIPS = {"psycopg": 1, "asyncpg": 2, "sqlalchemy": 2, "sqlalchemy-async": 3}
#: a warm checkout + SELECT 1 (SQLAlchemy: BEGIN, then the query)
CHECKOUT_TRIPS = {"psycopg": 1, "asyncpg": 1, "sqlalchemy": 2, "sqlalchemy-async": 2}


def _through(proxy: FaultProxy, target: DatabaseTarget) -> DatabaseTarget:
    return dataclasses.replace(target, host="127.0.0.1", port=proxy.port)


def _min(node: dict[str, Any], phase: str) -> float:
    d = node[phase]
    assert isinstance(d, Distribution), phase
    return d.min


def _connections(drivers: int, samples: int, pool_size: int, tls: bool) -> int:
    """What one run opens: the preflight (and, with TLS, the two connections of the
    session-resumption probe), one untimed warm-up round (the protocol client and the
    driver each once per driver), per timed round the floor and a pair per driver,
    and one pool per driver."""
    preflight = 3 if tls else 1
    return preflight + 2 * drivers + samples * (1 + 2 * drivers) + drivers * pool_size


@pytest.mark.parametrize("drivers", [("psycopg", "sqlalchemy-async"), ("asyncpg", "sqlalchemy")])
def test_injected_latency_is_a_lower_bound_of_every_phase(
    drivers: tuple[str, ...],
    auth_server: AuthServer,
    fault_proxy: Callable[..., FaultProxy],
) -> None:
    """Every server message reaches the client D = 40 ms late. With TLS the role is one
    only a ``hostssl`` rule admits, so every driver connection that succeeded used
    TLS. Then: the SSLRequest answer waits one message, the TLS handshake at least
    one, SCRAM's start-up three (SASL, SASLContinue, SASLFinal with ReadyForQuery),
    the first query one per round trip; the driver's connect holds them all, a fresh
    SQLAlchemy engine's dialect initialisation several round trips. The phases add up:
    the paired gap between the driver's connect and the protocol client's
    establishment is small next to the injected delay."""
    tls = auth_server.tls
    proxy = fault_proxy(auth_server.server, delay_s=DELAY_S)
    if tls:
        target = auth_server.target("cs_tlsonly", TLS_ONLY_PASSWORD, sslmode="require")
    else:
        target = auth_server.target(sslmode="disable")
    samples, pool_size = 5, 2
    result = run(
        _through(proxy, target),
        ColdStartOptions(drivers=drivers, samples=samples, pool_size=pool_size, pool_rounds=1),
    )
    cs = result.metrics
    validate_coldstart_metrics(cs)
    # the plan, counted by the proxy: warm-up round, floor and pairs, pools
    assert proxy.accepted == _connections(len(drivers), samples, pool_size, tls), proxy.accepted
    collections = cs["_meta"]["sampling"]["gc_collections"]
    assert collections == {"planned": 0, "unplanned": 0}, collections

    establish = 3 * D  # SCRAM: three server messages waited for
    proto = cs["protocol"]
    if tls:
        assert proto["_meta"]["tls_negotiation"] == "sslrequest"
        assert _min(proto["detail"], "tls_request") >= D
        assert _min(proto["detail"], "tls_handshake") >= D
        assert _min(proto, "tls") >= 2 * D
        assert proto["tcp"].min < D <= 2 * D <= proto["tls"].min  # TCP connect: no delay
        establish += 2 * D
    else:
        assert "tls" not in proto
    assert _min(proto, "startup") >= 3 * D
    assert _min(proto, "first_query") >= D
    assert _min(proto, "total") >= establish + D
    # the floor times the connect only, not the close that follows it (the proxy
    # delays the server's end-of-file by D, so a timed close would be >= D every time)
    assert cs["tcp_floor"]["connect"].min < D, cs["tcp_floor"]["connect"].samples

    for name in drivers:
        node = cs[name]
        assert node["_meta"]["auth_method"] == "scram-sha-256"
        assert _min(node, "startup") >= 3 * D
        assert _min(node, "connect") >= establish
        assert _min(node, "first_query") >= FIRST_QUERY_TRIPS[name] * D
        if name.startswith("sqlalchemy"):
            # dialect initialisation: several queries, each at least a round trip
            assert _min(node, "driver_init") >= 3 * D
        assert _min(node, "total") >= establish + FIRST_QUERY_TRIPS[name] * D
        # the phases add up: the per-pair gap is small next to what was injected
        add = additivity(node)
        assert add is not None
        assert abs(add.gap_ms) <= 0.25 * node["total"].p50, (name, add, node["total"].samples)
        gap = node["detail"]["connect_gap"]
        assert gap.n == samples
        assert any(g != 0.0 for g in gap.samples)  # two connections, two measurements
        warm = node["warm"]
        assert _min(warm, "checkout") >= CHECKOUT_TRIPS[name] * D
        assert _min(warm, "pool_ready") >= establish
    assert proxy.wait_closed() == 0
    assert client_sockets(proxy.port) == set()


def test_the_tls_only_role_is_refused_without_tls(tls_server: AuthServer) -> None:
    """The control for the test above: without TLS the ``hostssl`` role gets in
    nowhere, so its successful runs prove every driver negotiated TLS."""
    target = tls_server.target("cs_tlsonly", TLS_ONLY_PASSWORD, sslmode="disable")
    with pytest.raises(ConnectError, match=r'user "cs_tlsonly".*no encryption'):
        run(target, ColdStartOptions(drivers=("psycopg",), samples=1, warm=False))


def _corrupt_scram_signature(kind: bytes, payload: bytes) -> tuple[bytes, bytes]:
    """AuthenticationSASLFinal (R, code 12) carries ``v=<base64 signature>``: flip one
    bit of the signature, as an attacker in the middle without the password would
    have to guess it."""
    if kind == b"R" and int.from_bytes(payload[:4], "big") == wire.AUTH_SASL_FINAL:
        import base64

        signature = bytearray(base64.b64decode(payload[6:]))
        signature[0] ^= 0x01
        payload = payload[:6] + base64.b64encode(bytes(signature))
    return kind, payload


def test_a_tampered_scram_signature_is_refused(
    auth_server: AuthServer,
    fault_proxy: Callable[..., FaultProxy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real server's SASLFinal, altered on the wire: the client checks the server's
    signature on the real connection path and refuses to go on."""
    proxy = fault_proxy(auth_server.server, tamper=_corrupt_scram_signature)
    target = _through(proxy, auth_server.target(sslmode="disable"))
    params = resolve(target, environ={})
    with pytest.raises(wire.AuthenticationError, match="signature"):
        protocol.connect(params)
    # the same server without the tampering: the signature checks out
    clean = resolve(auth_server.target(sslmode="disable"), environ={})
    protocol.connect(clean).connection.close()
    rc = main(["-q", "coldstart", target.libpq_dsn(), "--samples", "1", "--no-warm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1
    assert err[0].startswith(f"dbprobe: error: authentication with 127.0.0.1:{proxy.port} failed")
    assert "signature" in err[0]
    assert PASSWORD not in err[0]
    assert proxy.wait_closed() == 0
    assert client_sockets(proxy.port) == set()


#: connections before the cut, and who fails first, for one driver, one sample and
#: pools of 2: preflight (1), warm-up protocol client (2) and driver (3), the round's
#: floor (4), protocol client (5) and driver (6), then the pool (7, 8)
CUTS = [
    ("psycopg", 2, "psycopg: "),  # the warm-up sample
    ("psycopg", 4, "protocol client: "),  # a timed protocol-client sample
    ("psycopg", 5, "psycopg: "),  # a timed driver sample
    ("psycopg", 6, "psycopg pool: "),  # psycopg_pool: both pool connections fail
    ("psycopg", 7, "psycopg pool: "),  # one pool connection made, the next one fails
    ("asyncpg", 7, "asyncpg pool: "),
    ("sqlalchemy", 7, "sqlalchemy pool: "),
    ("sqlalchemy-async", 7, "sqlalchemy-async pool: "),
]


#: how a server that went away is explained: the proxy closes an accepted connection;
#: when the client's start-up message arrived first, the close is a reset (RST)
GONE = ("closed the connection", "connection was closed", "reset the connection")


@pytest.mark.parametrize(("driver", "limit", "who"), CUTS)
def test_a_server_going_away_mid_run(
    driver: str,
    limit: int,
    who: str,
    auth_server: AuthServer,
    fault_proxy: Callable[..., FaultProxy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The proxy closes every connection after the first ``limit``: the run stops at
    once with one line naming who failed and why (the server closed the connection:
    not a pool's "initialization incomplete" after its timeout), no pool warning on
    stderr, and no socket or session left open."""
    proxy = fault_proxy(auth_server.server, accept_limit=limit)
    url = _through(proxy, auth_server.target(sslmode="disable")).libpq_dsn()
    timeout_s, pool_size = 5, 2
    t0 = time.monotonic()
    rc = main(
        ["-q", "coldstart", url, "--driver", driver, "--samples", "1",
         "--pool-size", str(pool_size), "--connect-timeout", str(timeout_s)]
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"dbprobe: error: {who}")
    assert any(cause in err[0] for cause in GONE), err[0]
    assert "sqlalchemy.dialects" not in err[0]  # the driver's error, not its wrapper's
    assert proxy.cut >= 1
    # stopped at the first failure: a pool that waits for its connections until its
    # timeout (psycopg_pool's own open(wait=True)) would take at least timeout_s
    assert elapsed < timeout_s, elapsed
    assert proxy.wait_closed() == 0
    assert client_sockets(proxy.port) == set()


@pytest.mark.parametrize(("driver", "limit"), [("psycopg", 6), ("psycopg", 7), ("asyncpg", 7)])
def test_a_pool_failure_in_the_installed_command_is_one_line(
    driver: str,
    limit: int,
    auth_server: AuthServer,
    fault_proxy: Callable[..., FaultProxy],
) -> None:
    """The real entry point in its own process, where logging goes to stderr (in-process
    tests cannot see that: pytest's log capture holds the records): the pool's own
    warnings (psycopg_pool logs every failed connection) stay off stderr; the one line
    names the pool and the cause. How fast it stops: test_a_server_going_away_mid_run."""
    proxy = fault_proxy(auth_server.server, accept_limit=limit)
    url = _through(proxy, auth_server.target(sslmode="disable")).libpq_dsn()
    proc = subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", "-q", "coldstart", url, "--driver", driver,
         "--samples", "1", "--pool-size", "2", "--connect-timeout", "5"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"dbprobe: error: {driver} pool: ")
    assert any(cause in lines[0] for cause in GONE), lines[0]
    assert PASSWORD not in proc.stderr
    assert proxy.wait_closed() == 0
