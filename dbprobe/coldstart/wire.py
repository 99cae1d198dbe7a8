"""The PostgreSQL frontend/backend protocol (v3.0) as far as connection start-up needs it.

Pure: message encoders, an incremental message reader, and the client side of the
password exchanges (cleartext, MD5, SCRAM-SHA-256 per RFC 5802 / RFC 7677). No
sockets here; :mod:`dbprobe.coldstart.protocol` does the I/O and the timing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import stringprep
import struct
import time
import unicodedata
from collections.abc import Iterator, Mapping

PROTOCOL_3_0 = 196608  # (3 << 16) | 0
SSL_REQUEST_CODE = 80877103
ALPN_POSTGRESQL = "postgresql"

# Authentication request codes (the int32 after an 'R' message type).
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

AUTH_NAMES = {
    AUTH_OK: "trust",
    AUTH_KERBEROS_V5: "kerberos",
    AUTH_CLEARTEXT: "password",
    AUTH_MD5: "md5",
    AUTH_GSS: "gss",
    AUTH_SSPI: "sspi",
    AUTH_SASL: "scram-sha-256",
}

SCRAM_SHA_256 = "SCRAM-SHA-256"


class ProtocolViolation(Exception):
    """The peer sent something that is not the PostgreSQL protocol (or not what we
    asked for)."""


class AuthenticationError(Exception):
    """Client-side authentication failure (e.g. the server's SCRAM signature is wrong)."""


@dataclasses.dataclass
class ServerError(Exception):
    """An ``ErrorResponse`` from the server: severity, SQLSTATE code and message.

    Not frozen: Python sets ``__traceback__`` on an exception as it propagates (through
    a ``contextlib.contextmanager`` among others), which a frozen dataclass refuses."""

    severity: str
    code: str
    message: str
    detail: str | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> ServerError:
        return cls(
            severity=fields.get("V") or fields.get("S") or "ERROR",
            code=fields.get("C", ""),
            message=fields.get("M", "(no message)"),
            detail=fields.get("D"),
        )


# -- frontend messages ------------------------------------------------------------------
def ssl_request() -> bytes:
    """The 8-byte SSLRequest packet (classic TLS negotiation)."""
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def startup_message(parameters: Mapping[str, str]) -> bytes:
    """StartupMessage for protocol 3.0 with ``parameters`` (user, database, ...)."""
    body = struct.pack("!i", PROTOCOL_3_0)
    for key, value in parameters.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def password_message(password: bytes) -> bytes:
    """PasswordMessage: a cleartext password or an MD5 digest (NUL-terminated)."""
    return _message(b"p", password + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """SASLInitialResponse: mechanism name and the client-first-message."""
    return _message(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """SASLResponse: the client-final-message."""
    return _message(b"p", data)


def query_message(sql: str) -> bytes:
    """A simple-protocol Query."""
    return _message(b"Q", sql.encode() + b"\0")


def terminate_message() -> bytes:
    return _message(b"X", b"")


# -- backend messages -------------------------------------------------------------------
class MessageReader:
    """Incremental reader: feed bytes, take complete ``(type, payload)`` messages."""

    MAX_MESSAGE = 1 << 26  # 64 MiB: anything larger is not a start-up exchange

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def messages(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield every complete message buffered so far."""
        while len(self._buf) >= 5:
            kind = bytes(self._buf[:1])
            (length,) = struct.unpack_from("!i", self._buf, 1)
            if length < 4 or length > self.MAX_MESSAGE or not kind.isalpha():
                raise ProtocolViolation(
                    f"not a PostgreSQL message (type {kind!r}, length {length})"
                )
            if len(self._buf) < 1 + length:
                return
            payload = bytes(self._buf[5 : 1 + length])
            del self._buf[: 1 + length]
            yield kind, payload

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole message."""
        return len(self._buf)


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse / NoticeResponse (``{'S': 'FATAL', 'C': '28P01', ...}``)."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def parse_auth(payload: bytes) -> tuple[int, bytes]:
    """An 'R' message: the authentication code and the rest."""
    if len(payload) < 4:
        raise ProtocolViolation("short authentication message")
    (code,) = struct.unpack_from("!i", payload)
    return code, payload[4:]


def parse_parameter_status(payload: bytes) -> tuple[str, str]:
    name, value, *_ = payload.split(b"\0")
    return name.decode(), value.decode("utf-8", "replace")


def parse_data_row(payload: bytes) -> list[bytes | None]:
    (count,) = struct.unpack_from("!h", payload)
    pos = 2
    values: list[bytes | None] = []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", payload, pos)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(payload[pos : pos + length])
            pos += length
    return values


def sasl_mechanisms(data: bytes) -> list[str]:
    """The mechanism names of an AuthenticationSASL message."""
    return [m.decode() for m in data.split(b"\0") if m]


# -- password exchanges -----------------------------------------------------------------
def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """``'md5' + md5(md5(password + user) + salt)`` as PostgreSQL expects it."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


def saslprep(password: str) -> str:
    """SASLprep (RFC 4013) the way PostgreSQL applies it to SCRAM passwords
    (``pg_saslprep``): an ASCII password is used as is; otherwise map (non-ASCII spaces
    to a space, "commonly mapped to nothing" characters removed), then check the mapped
    characters for prohibited ones, unassigned code points and bad bidi, and return the
    NFKC form. When the password cannot be prepared (empty once mapped, a prohibited
    character, bad bidi), PostgreSQL uses it as is, and so does this function."""
    if password.isascii():
        return password
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    if not mapped:
        return password
    # PostgreSQL checks the mapped characters, before normalisation (RFC 3454 orders
    # normalisation first; the difference shows only for characters that NFKC turns
    # from prohibited into allowed, or back).
    if any(check(ch) for ch in mapped for check in _PROHIBITED):
        return password
    if any(stringprep.in_table_d1(ch) for ch in mapped) and (
        any(stringprep.in_table_d2(ch) for ch in mapped)
        or not stringprep.in_table_d1(mapped[0])
        or not stringprep.in_table_d1(mapped[-1])
    ):
        return password
    return unicodedata.normalize("NFKC", mapped)


_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,  # unassigned code points (Unicode 3.2)
)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclasses.dataclass
class ScramClient:
    """The client side of SCRAM-SHA-256 (no channel binding, as libpq with
    ``channel_binding=disable``/``prefer`` over a connection without it).

    PostgreSQL ignores the SCRAM user name (it uses the startup ``user``), so it is
    empty by default. ``iterations`` and ``salted_password_s`` (seconds spent in
    PBKDF2, the client-side cost of the server's iteration count) are set once the
    server-first-message has been processed.
    """

    password: str
    username: str = ""
    nonce: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(18))
    iterations: int | None = None
    salted_password_s: float | None = None
    _client_first_bare: str = ""
    _auth_message: bytes = b""
    _server_key: bytes = b""

    def client_first(self) -> bytes:
        """``n,,n=<user>,r=<client nonce>``."""
        user = self.username.replace("=", "=3D").replace(",", "=2C")
        self._client_first_bare = f"n={user},r={self.nonce}"
        return ("n,," + self._client_first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        """Check the server-first-message and return the client-final-message with
        the client proof."""
        text = server_first.decode()
        attrs = _scram_attributes(text)
        nonce, salt_b64, iterations = attrs.get("r"), attrs.get("s"), attrs.get("i")
        if not nonce or not salt_b64 or not iterations:
            raise ProtocolViolation(f"malformed SCRAM server-first-message: {text!r}")
        if not nonce.startswith(self.nonce) or len(nonce) <= len(self.nonce):
            raise AuthenticationError("SCRAM server nonce does not extend the client nonce")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            self.iterations = int(iterations)
        except ValueError:
            raise ProtocolViolation(f"malformed SCRAM server-first-message: {text!r}") from None
        if self.iterations < 1:
            raise ProtocolViolation(f"SCRAM iteration count {self.iterations} is not positive")
        start = time.perf_counter()
        salted = hashlib.pbkdf2_hmac(
            "sha256", saslprep(self.password).encode(), salt, self.iterations
        )
        self.salted_password_s = time.perf_counter() - start
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_key = _hmac(salted, b"Server Key")
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server's signature: the server proves it knows the password too."""
        attrs = _scram_attributes(server_final.decode())
        if "e" in attrs:
            raise AuthenticationError(f"SCRAM server error: {attrs['e']}")
        if not self._auth_message:
            raise ProtocolViolation("SCRAM server-final-message before the client proof")
        expected = _b64(_hmac(self._server_key, self._auth_message))
        if not hmac.compare_digest(attrs.get("v", ""), expected):
            raise AuthenticationError("SCRAM server signature does not match")


def _scram_attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            out[key] = value
    return out
