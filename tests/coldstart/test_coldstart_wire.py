"""The protocol encoding, SCRAM and parameter resolution (pure, no server)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbprobe.coldstart import wire
from dbprobe.coldstart.params import pgpass_lookup, pgpass_match, resolve
from dbprobe.errors import UsageError
from dbprobe.urls import parse_url

# RFC 7677, section 3: the SCRAM-SHA-256 example exchange (user "user", password "pencil").
RFC_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_matches_the_rfc_7677_example() -> None:
    client = wire.ScramClient("pencil", username="user", nonce=RFC_NONCE)
    assert client.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert client.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert client.iterations == 4096
    assert client.salted_password_s is not None
    assert client.salted_password_s > 0
    client.verify_server_final(RFC_SERVER_FINAL)  # does not raise


def test_scram_rejects_a_wrong_server_signature() -> None:
    client = wire.ScramClient("pencil", username="user", nonce=RFC_NONCE)
    client.client_first()
    client.client_final(RFC_SERVER_FIRST)
    forged = b"v=" + base64.b64encode(b"\0" * 32)
    with pytest.raises(wire.AuthenticationError, match="signature does not match"):
        client.verify_server_final(forged)
    with pytest.raises(wire.AuthenticationError, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_scram_rejects_a_nonce_the_client_did_not_start() -> None:
    client = wire.ScramClient("pencil", nonce="abc")
    client.client_first()
    with pytest.raises(wire.AuthenticationError, match="nonce"):
        client.client_final(b"r=xyz123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    with pytest.raises(wire.ProtocolViolation):
        client.client_final(b"r=abc123,i=4096")


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("I\u00adX", "IX"),  # RFC 4013 example: soft hyphen mapped to nothing
        ("\u2168", "IX"),  # NFKC: Roman numeral nine
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to space
        ("\u0007bell", "\u0007bell"),  # prohibited: used as is, as PostgreSQL does
        ("plain", "plain"),
        # checked before normalising, as PostgreSQL does: U+0340 is prohibited (C.8),
        # its NFKC form U+0300 is not; U+03F9 is unassigned in Unicode 3.2 (A.1)
        ("a\u0340", "a\u0340"),
        ("\u03f9x", "\u03f9x"),
    ],
)
def test_saslprep(password: str, prepared: str) -> None:
    assert wire.saslprep(password) == prepared


def test_startup_message_layout() -> None:
    msg = wire.startup_message({"user": "u", "database": "d"})
    (length, version) = struct.unpack("!ii", msg[:8])
    assert length == len(msg)
    assert version == wire.PROTOCOL_3_0
    assert msg[8:] == b"user\0u\0database\0d\0\0"
    assert wire.ssl_request() == struct.pack("!ii", 8, 80877103)


def test_reader_assembles_split_messages_and_rejects_garbage() -> None:
    reader = wire.MessageReader()
    ready = b"Z" + struct.pack("!i", 5) + b"I"
    auth_ok = b"R" + struct.pack("!ii", 8, 0)
    data = auth_ok + ready
    reader.feed(data[:3])
    assert list(reader.messages()) == []
    reader.feed(data[3:])
    assert list(reader.messages()) == [(b"R", struct.pack("!i", 0)), (b"Z", b"I")]
    assert reader.pending == 0
    bad = wire.MessageReader()
    bad.feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(wire.ProtocolViolation, match="not a PostgreSQL message"):
        list(bad.messages())


def test_a_server_error_propagates_through_a_context_manager() -> None:
    @contextlib.contextmanager
    def scope() -> Iterator[None]:
        yield

    error = wire.ServerError("FATAL", "28P01", "password authentication failed")
    with pytest.raises(wire.ServerError) as info, scope():
        raise error
    assert info.value is error
    assert info.value.__traceback__ is not None


def test_error_fields_and_data_rows() -> None:
    payload = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "x"\0\0'
    error = wire.ServerError.from_fields(wire.parse_error_fields(payload))
    assert error.code == "28P01"
    assert str(error) == 'FATAL: password authentication failed for user "x"'
    row = struct.pack("!h", 2) + struct.pack("!i", 1) + b"1" + struct.pack("!i", -1)
    assert wire.parse_data_row(row) == [b"1", None]


def test_pgpass_matching(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "# comment",
            "db.example:5432:shop:app:first",
            r"*:5432:*:we\:ird:colon",
            "localhost:*:*:sock:from-socket",
            "*:*:*:*:fallback",
        ]
    )
    kw = {"port": 5432, "database": "shop"}
    assert pgpass_match(text, host="db.example", user="app", **kw) == "first"
    assert pgpass_match(text, host="other", user="we:ird", **kw) == "colon"
    assert pgpass_match(text, host="/run/postgresql", user="sock", **kw) == "from-socket"
    assert pgpass_match(text, host="x", user="y", **kw) == "fallback"
    path = tmp_path / "pgpass"
    path.write_text(text)
    assert pgpass_lookup(path, host="db.example", user="app", **kw) == "first"
    assert pgpass_lookup(tmp_path / "missing", host="h", user="u", **kw) is None


def test_resolve_applies_libpq_environment_and_defaults(tmp_path: Path) -> None:
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("db.example:6543:appdb:app:from-file\n")
    env = {
        "PGHOST": "db.example",
        "PGPORT": "6543",
        "PGUSER": "app",
        "PGDATABASE": "appdb",
        "PGSSLMODE": "require",
        "PGPASSFILE": str(pgpass),
    }
    params = resolve(parse_url("postgresql://"), environ=env)
    assert (params.host, params.port, params.user, params.database) == (
        "db.example", 6543, "app", "appdb",
    )  # fmt: skip
    assert params.password == "from-file"
    assert params.sslmode == "require"
    assert params.host_is_name
    assert params.tls_required
    explicit = resolve(parse_url("postgresql://u:pw@127.0.0.1:5/d?sslmode=disable"), environ=env)
    assert (explicit.host, explicit.password, explicit.sslmode) == ("127.0.0.1", "pw", "disable")
    assert not explicit.host_is_name
    assert not explicit.tls_wanted
    assert "application_name=dbprobe-coldstart" in explicit.libpq_conninfo()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@h1,h2/d", "one host"),
        ("postgresql://u@h/d?sslmode=sometimes", "unknown sslmode"),
        ("postgresql://u@h/d?sslnegotiation=direct", "needs sslmode=require"),
        ("postgresql://u@h/d?sslnegotiation=fast", "unknown sslnegotiation"),
        ("postgresql://u@h/d?connect_timeout=soon", "not a number"),
    ],
)
def test_resolve_rejects_what_cannot_be_measured(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve(parse_url(url), environ={})


def test_asyncpg_gets_only_what_it_understands() -> None:
    params = resolve(
        parse_url(
            "postgresql://u:pw@10.0.0.1:5432/d?sslmode=require&sslnegotiation=direct"
            "&options=-c%20jit%3Doff&connect_timeout=3"
        ),
        environ={},
    )
    dsn = params.asyncpg_dsn()
    assert "sslnegotiation=direct" in dsn
    assert "options" not in dsn  # asyncpg would send it as a server setting
    assert "connect_timeout" not in dsn
    assert params.asyncpg_connect_kwargs()["timeout"] == 3.0
    assert params.asyncpg_ignored() == ["options"]
    assert "options=-c+jit%3Doff" in params.libpq_conninfo()
    unix = dataclasses.replace(params, host="/run/postgresql")
    assert unix.transport == "unix"
    assert not unix.tls_wanted
