"""A minimal PostgreSQL client that times every phase of connection start-up.

Drivers connect in one call and expose no phase boundaries; this client does the same
work step by step on a blocking socket and stamps each step:

``dns``
    ``getaddrinfo`` (only when the host is a name).
``tcp``
    socket connect (a unix-socket connect over a unix socket).
``tls``
    classic negotiation: SSLRequest and the server's one-byte answer
    (``tls_request``; the server accepts the socket and starts a backend process before
    it can answer, so that start lands here), then the TLS handshake
    (``tls_handshake``); direct negotiation (PostgreSQL 17+, ``sslnegotiation=direct``):
    the handshake straight away with ALPN ``postgresql``. Creating the TLS context is
    part of the handshake, as libpq creates one per connection. With
    ``sslmode=prefer`` against a server without TLS, ``tls`` is the refused
    SSLRequest's round trip.
``startup``
    StartupMessage to ReadyForQuery, including authentication (trust, cleartext,
    MD5, SCRAM-SHA-256 with the client proof and the server signature checked) and
    the backend's session set-up. Not split further: PostgreSQL queues
    AuthenticationOk without flushing it and sends it together with ReadyForQuery,
    so the client cannot see where authentication ends. Without TLS the backend
    process start lands here too. ``scram_client`` is the client's own PBKDF2 time
    inside ``startup``.
``first_query``
    a simple-protocol ``SELECT 1`` round trip.

Authentication is checked the way a careful client must: once SCRAM has started, the
connection is refused unless the server proves it knows the password (SASLFinal with
the right signature) before AuthenticationOk, and methods may not change halfway. A
cleartext password is sent over TCP only inside TLS, unless the URL opts in with
libpq's ``require_auth=password``; ``require_auth`` is enforced as libpq does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from pathlib import Path

from dbprobe.coldstart import wire
from dbprobe.coldstart.params import ConnectParams
from dbprobe.errors import UsageError

log = logging.getLogger("dbprobe.coldstart")

_NS_PER_MS = 1_000_000


class NotPostgresError(wire.ProtocolViolation):
    """Whatever answered does not speak the PostgreSQL protocol."""


class TlsNegotiationError(Exception):
    """TLS was wanted but could not be negotiated (message says why)."""


class NoAnswerError(TimeoutError):
    """The TCP connection was accepted, but the server did not answer (or stopped
    answering) within the connect timeout. The message is the one line to show."""


@dataclasses.dataclass(frozen=True)
class HandshakeFacts:
    """What one connection learned about the server and the negotiation."""

    address: str
    transport: str
    tls_negotiation: str  # none | sslrequest | sslrequest-refused | direct
    tls_version: str | None
    tls_cipher: str | None
    alpn: str | None
    tls_session_reused: bool | None
    auth_method: str
    scram_iterations: int | None
    server_version: str
    backend_pid: int | None


@dataclasses.dataclass(frozen=True)
class ProtocolTimings:
    """Phase durations of one connection, in milliseconds (``None``: does not apply)."""

    dns: float | None
    tcp: float
    tls: float | None
    tls_request: float | None
    tls_handshake: float | None
    startup: float
    scram_client: float | None
    first_query: float | None
    total: float

    def phases(self) -> dict[str, float]:
        """The phases that apply, by name."""
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if v is not None and isinstance(v, float)
        }


def _ms(start_ns: int, end_ns: int) -> float:
    return (end_ns - start_ns) / _NS_PER_MS


def tls_context(params: ConnectParams, *, use_default_root: bool = True) -> ssl.SSLContext:
    """A client TLS context with libpq's meaning of ``sslmode`` and ALPN ``postgresql``.

    ``require`` verifies nothing unless a root certificate is given (then it acts as
    ``verify-ca``, as libpq does); ``verify-full`` also checks the host name.
    use_default_root: fall back to ``~/.postgresql/root.crt`` as libpq does (default).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    root = params.sslrootcert
    default_root = _default_root_cert() if use_default_root else None
    if root is None and default_root is not None and default_root.exists():
        root = str(default_root)
    verify = params.sslmode in ("verify-ca", "verify-full") or (
        params.sslmode == "require" and root is not None
    )
    if verify:
        if root == "system":
            ctx.load_default_certs()
        elif root is None:
            raise UsageError(
                f"sslmode={params.sslmode} needs a root certificate: add sslrootcert=PATH"
            )
        else:
            try:
                ctx.load_verify_locations(root)
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(f"cannot load root certificate {root!r}: {exc}") from None
        ctx.check_hostname = params.sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if params.sslcert:
        try:
            ctx.load_cert_chain(params.sslcert, params.sslkey)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load client certificate {params.sslcert!r}: {exc}") from None
    ctx.set_alpn_protocols([wire.ALPN_POSTGRESQL])
    return ctx


def _default_root_cert() -> Path | None:
    try:
        return Path.home() / ".postgresql" / "root.crt"
    except RuntimeError:
        return None


class ProtocolConnection:
    """An open connection made by :func:`connect`; run ``simple_query`` and ``close``."""

    def __init__(self, sock: socket.socket, reader: wire.MessageReader, deadline_ns: int) -> None:
        self.sock = sock
        self.reader = reader
        self.deadline_ns = deadline_ns
        self.parameters: dict[str, str] = {}
        self.backend_pid: int | None = None
        self.bytes_received = 0
        self.closed = False

    # -- I/O --------------------------------------------------------------------------
    def _settimeout(self) -> None:
        left = (self.deadline_ns - time.perf_counter_ns()) / 1e9
        if left <= 0:
            raise TimeoutError("timeout expired")
        self.sock.settimeout(left)

    def send(self, data: bytes) -> None:
        self._settimeout()
        self.sock.sendall(data)

    def next_message(self) -> tuple[bytes, bytes]:
        """The next backend message (blocks; raises on EOF or timeout)."""
        while True:
            for message in self.reader.messages():
                return message
            self._settimeout()
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("timeout expired") from None
            if not data:
                raise ConnectionResetError("server closed the connection unexpectedly")
            self.bytes_received += len(data)
            self.reader.feed(data)

    def simple_query(self, sql: str, *, timeout_s: float | None = None) -> list[list[bytes | None]]:
        """Run ``sql`` with the simple protocol; the rows of its (last) result."""
        if timeout_s is not None:
            self.deadline_ns = time.perf_counter_ns() + int(timeout_s * 1e9)
        self.send(wire.query_message(sql))
        rows: list[list[bytes | None]] = []
        error: wire.ServerError | None = None
        while True:
            kind, payload = self.next_message()
            if kind == b"D":
                rows.append(wire.parse_data_row(payload))
            elif kind == b"T":
                rows = []
            elif kind == b"E":
                error = wire.ServerError.from_fields(wire.parse_error_fields(payload))
            elif kind == b"S":
                name, value = wire.parse_parameter_status(payload)
                self.parameters[name] = value
            elif kind == b"Z":
                break
        if error is not None:
            raise error
        return rows

    def close(self) -> None:
        """Send Terminate and close the socket (idempotent, never raises)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.settimeout(1.0)
            self.sock.sendall(wire.terminate_message())
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> ProtocolConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass
class ConnectResult:
    """An open connection with its timings (``first_query`` not yet run) and facts."""

    connection: ProtocolConnection
    timings: ProtocolTimings
    facts: HandshakeFacts
    tls_session: ssl.SSLSession | None
    #: the socket address the connection reached (the TCP floor connects to it)
    family: int
    sockaddr: object


def connect(
    params: ConnectParams,
    *,
    context: ssl.SSLContext | None = None,
    tls_session: ssl.SSLSession | None = None,
) -> ConnectResult:
    """Open a connection step by step, timing each phase.

    context: a TLS context to reuse (default: a new one per connection, created inside
    the ``tls`` phase as libpq does); tls_session: a session to offer for resumption.
    Raises ``OSError`` (DNS, TCP), :class:`TlsNegotiationError`,
    :class:`wire.ServerError` (the server refused us), :class:`wire.AuthenticationError`
    (including what the client refuses: a skipped SCRAM signature, a cleartext password
    without TLS, a method ``require_auth`` does not allow), :class:`NotPostgresError`,
    ``TimeoutError`` (TCP connect) or :class:`NoAnswerError` (connected, no answer);
    nothing stays open on failure.
    """
    t0 = time.perf_counter_ns()
    deadline = t0 + int(params.connect_timeout * 1e9)
    # -- dns ------------------------------------------------------------------------
    t_dns: int | None = None
    if params.transport == "unix":
        addresses: list[tuple[int, object]] = [(socket.AF_UNIX, params.socket_path)]
    elif params.host_is_name:
        infos = socket.getaddrinfo(params.host, params.port, type=socket.SOCK_STREAM)
        addresses = [(family, sockaddr) for family, _t, _p, _c, sockaddr in infos]
        t_dns = time.perf_counter_ns()
    else:
        literal_family = socket.AF_INET6 if ":" in params.host else socket.AF_INET
        addresses = [(literal_family, (params.host, params.port))]
    # -- tcp ------------------------------------------------------------------------
    sock, family, sockaddr = _connect_socket(addresses, deadline)
    t_tcp = time.perf_counter_ns()
    address = _describe(family, sockaddr)
    conn: ProtocolConnection | None = None
    answered = False
    try:
        reader = wire.MessageReader()
        negotiation = "none"
        tls_version = tls_cipher = alpn = None
        reused: bool | None = None
        session: ssl.SSLSession | None = None
        t_tls: int | None = None
        t_answer: int | None = None
        if params.tls_wanted:
            sock, negotiation, t_answer = _negotiate_tls(
                sock, params, context, tls_session, deadline
            )
            answered = True
            t_tls = time.perf_counter_ns()
            if isinstance(sock, ssl.SSLSocket):
                tls_version = sock.version()
                cipher = sock.cipher()
                tls_cipher = cipher[0] if cipher else None
                alpn = sock.selected_alpn_protocol()
                reused = sock.session_reused
        conn = ProtocolConnection(sock, reader, deadline)
        # -- startup --------------------------------------------------------------------
        t_start = t_tls if t_tls is not None else t_tcp
        startup_params = {
            "user": params.user,
            "database": params.database,
            "application_name": params.application_name,
        }
        if params.extra.get("options"):
            startup_params["options"] = params.extra["options"]
        conn.send(wire.startup_message(startup_params))
        auth_method, scram = _authenticate(conn, params)
        _wait_ready(conn)
        t_ready = time.perf_counter_ns()
        if isinstance(conn.sock, ssl.SSLSocket):
            session = conn.sock.session
    except BaseException as exc:
        if conn is not None:
            answered = answered or conn.bytes_received > 0
            conn.close()
        else:
            with contextlib.suppress(OSError):
                sock.close()
        if isinstance(exc, TimeoutError) and not isinstance(exc, NoAnswerError):
            raise _no_answer(params, answered) from None
        raise
    scram_ms = scram.salted_password_s * 1000 if scram and scram.salted_password_s else None
    timings = ProtocolTimings(
        dns=_ms(t0, t_dns) if t_dns is not None else None,
        tcp=_ms(t_dns if t_dns is not None else t0, t_tcp),
        tls=_ms(t_tcp, t_tls) if t_tls is not None else None,
        tls_request=_ms(t_tcp, t_answer) if t_answer is not None else None,
        tls_handshake=(
            _ms(t_answer if t_answer is not None else t_tcp, t_tls)
            if t_tls is not None and negotiation != "sslrequest-refused"
            else None
        ),
        startup=_ms(t_start, t_ready),
        scram_client=scram_ms,
        first_query=None,
        total=_ms(t0, t_ready),
    )
    facts = HandshakeFacts(
        address=address,
        transport=params.transport,
        tls_negotiation=negotiation,
        tls_version=tls_version,
        tls_cipher=tls_cipher,
        alpn=alpn,
        tls_session_reused=reused,
        auth_method=auth_method,
        scram_iterations=scram.iterations if scram else None,
        server_version=conn.parameters.get("server_version", ""),
        backend_pid=conn.backend_pid,
    )
    return ConnectResult(conn, timings, facts, session, family, sockaddr)


def _no_answer(params: ConnectParams, answered: bool) -> NoAnswerError:
    timeout = f"{params.connect_timeout:g} s"
    if answered:
        return NoAnswerError(
            f"{params.where} stopped answering during connection start-up "
            f"(nothing within {timeout})"
        )
    return NoAnswerError(
        f"{params.where} accepted the connection but did not answer within {timeout} "
        "(is it a PostgreSQL server?)"
    )


def measure(params: ConnectParams) -> tuple[ProtocolTimings, HandshakeFacts]:
    """One cold connection: connect, ``SELECT 1``, close (the close is not timed)."""
    result = connect(params)
    conn = result.connection
    try:
        t_q0 = time.perf_counter_ns()
        rows = conn.simple_query("SELECT 1", timeout_s=params.connect_timeout)
        t_q1 = time.perf_counter_ns()
    finally:
        conn.close()
    if rows != [[b"1"]]:
        raise NotPostgresError(f"SELECT 1 returned {rows!r}")
    first_query = _ms(t_q0, t_q1)
    timings = dataclasses.replace(
        result.timings, first_query=first_query, total=result.timings.total + first_query
    )
    return timings, result.facts


def tcp_floor_ms(family: int, sockaddr: object, timeout_s: float = 10.0) -> float:
    """The raw floor: one TCP (or unix-socket) connect to an already resolved address,
    in ms, timed exactly like the protocol client's ``tcp`` phase (socket creation,
    connect, ``TCP_NODELAY``).

    Untimed afterwards: the client half-closes and waits (up to ``timeout_s``) until
    the server closes its end. PostgreSQL starts a backend process for every accepted
    connection; this lets that backend see end-of-file and exit before the next timed
    connection, instead of competing with it for the CPU.
    """
    deadline = time.perf_counter_ns() + int(timeout_s * 1e9)
    t0 = time.perf_counter_ns()
    sock, _family, _sockaddr = _connect_socket([(family, sockaddr)], deadline)
    t1 = time.perf_counter_ns()
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(max(0.001, (deadline - time.perf_counter_ns()) / 1e9))
        while sock.recv(4096):
            pass
    except OSError:  # a timeout or a reset: the floor figure is already taken
        pass
    finally:
        sock.close()
    return _ms(t0, t1)


# -- steps ------------------------------------------------------------------------------
def _connect_socket(
    addresses: list[tuple[int, object]], deadline_ns: int
) -> tuple[socket.socket, int, object]:
    """Connect to the first address that accepts (libpq's order); the socket and the
    address it reached."""
    last: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            left = (deadline_ns - time.perf_counter_ns()) / 1e9
            if left <= 0:
                raise TimeoutError("timeout expired")
            sock.settimeout(left)
            sock.connect(sockaddr)  # type: ignore[arg-type]
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError:
            sock.close()
            last = TimeoutError("timeout expired")
            continue
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock, family, sockaddr
    assert last is not None
    raise last


def _describe(family: int, sockaddr: object) -> str:
    if family == socket.AF_UNIX:
        return str(sockaddr)
    assert isinstance(sockaddr, tuple)
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def _negotiate_tls(
    sock: socket.socket,
    params: ConnectParams,
    context: ssl.SSLContext | None,
    session: ssl.SSLSession | None,
    deadline_ns: int,
) -> tuple[socket.socket, str, int | None]:
    """TLS per ``params``: the socket to go on with, the negotiation used, and when the
    SSLRequest was answered (classic negotiation only). On failure the TLS socket is
    closed here: wrapping detaches ``sock``, so the caller's handle no longer owns it."""
    t_answer: int | None = None
    left = max(0.001, (deadline_ns - time.perf_counter_ns()) / 1e9)
    sock.settimeout(left)
    if params.sslnegotiation == "direct":
        negotiation = "direct"
    else:
        negotiation = "sslrequest"
        sock.sendall(wire.ssl_request())
        answer = sock.recv(1)
        t_answer = time.perf_counter_ns()
        if not answer:
            raise ConnectionResetError("server closed the connection unexpectedly")
        if answer == b"N":
            if params.tls_required:
                raise TlsNegotiationError("server does not support SSL, but SSL was required")
            return sock, "sslrequest-refused", t_answer
        if answer == b"E":
            raise TlsNegotiationError("the server answered the SSLRequest with an error")
        if answer != b"S":
            raise NotPostgresError(
                f"not a PostgreSQL server (answered the SSLRequest with {answer!r})"
            )
        if _unencrypted_bytes_waiting(sock):
            # as libpq: the server must say nothing more before the TLS handshake
            # (an SSH server's banner starts with 'S', for one)
            raise NotPostgresError(
                "received unencrypted data after the SSL response (not a PostgreSQL server?)"
            )
    ctx = context or tls_context(params)  # after the answer, as libpq does
    sock.settimeout(max(0.001, (deadline_ns - time.perf_counter_ns()) / 1e9))
    tls = ctx.wrap_socket(
        sock,
        server_hostname=params.host,
        do_handshake_on_connect=False,
        session=session,
    )
    try:
        tls.do_handshake()
        if negotiation == "direct" and tls.selected_alpn_protocol() != wire.ALPN_POSTGRESQL:
            raise TlsNegotiationError(
                "the server did not select ALPN protocol 'postgresql' for direct TLS"
            )
    except BaseException as exc:
        tls.close()
        if isinstance(exc, TimeoutError):
            # classic negotiation: the SSLRequest was answered, the handshake stalled
            raise _no_answer(params, answered=negotiation == "sslrequest") from None
        if (
            negotiation == "direct"
            and isinstance(exc, (ssl.SSLError, OSError))
            and not isinstance(exc, (ssl.SSLCertVerificationError, TimeoutError))
        ):
            raise TlsNegotiationError(
                "the server closed a direct TLS connection: sslnegotiation=direct needs "
                "PostgreSQL 17 or later with ssl=on (use sslnegotiation=postgres): "
                f"{type(exc).__name__}"
            ) from None
        raise
    return tls, negotiation, t_answer


def _unencrypted_bytes_waiting(sock: socket.socket) -> bool:
    """Whether bytes have already arrived after the one-byte SSLRequest answer."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # a socket with a timeout would wait for data to come
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except (BlockingIOError, InterruptedError):
        return False
    finally:
        sock.settimeout(timeout)


_METHOD_BY_CODE = {
    wire.AUTH_CLEARTEXT: "password",
    wire.AUTH_MD5: "md5",
    wire.AUTH_SASL: "scram-sha-256",
    wire.AUTH_GSS: "gss",
    wire.AUTH_SSPI: "sspi",
    wire.AUTH_KERBEROS_V5: "kerberos",
}


def _authenticate(
    conn: ProtocolConnection, params: ConnectParams
) -> tuple[str, wire.ScramClient | None]:
    """Run the authentication exchange up to AuthenticationOk; the method used.

    Refuses (:class:`wire.AuthenticationError`) what a careful client must: a method
    ``require_auth`` does not allow, a second method after one has started, a cleartext
    password over TCP without TLS (unless ``require_auth`` names ``password``), and
    AuthenticationOk after SCRAM has started but before the server's signature has
    been verified.
    """
    requirement = params.auth_requirement
    method = "none"  # what the server asked for ("none": trust, no request at all)
    scram: wire.ScramClient | None = None
    scram_verified = False
    while True:
        kind, payload = conn.next_message()
        if kind == b"E":
            raise wire.ServerError.from_fields(wire.parse_error_fields(payload))
        if kind in (b"v", b"N"):  # NegotiateProtocolVersion; a notice may come any time
            continue
        if kind != b"R":
            raise NotPostgresError(f"unexpected message {kind!r} during authentication")
        code, data = wire.parse_auth(payload)
        if code == wire.AUTH_OK:
            if scram is not None and not scram_verified:
                raise wire.AuthenticationError(
                    "the server ended SCRAM authentication without its server signature "
                    "(AuthenticationOk before SASLFinal): it did not prove it knows the "
                    "password"
                )
            requirement.check_completed(method)
            return ("trust" if method == "none" else method), scram
        if code == wire.AUTH_SASL_CONTINUE:
            if scram is None or scram.iterations is not None:
                raise NotPostgresError("SASLContinue out of turn in the SCRAM exchange")
            conn.send(wire.sasl_response(scram.client_final(data)))
            continue
        if code == wire.AUTH_SASL_FINAL:
            if scram is None:
                raise NotPostgresError("SASLFinal without a SASL exchange")
            scram.verify_server_final(data)
            scram_verified = True
            continue
        asked = _METHOD_BY_CODE.get(code, f"code {code}")
        if method != "none":
            during = "in the middle of SCRAM" if scram is not None else f"after {method}"
            raise wire.AuthenticationError(
                f"the server asked for {asked} authentication {during}: refused"
            )
        method = asked
        requirement.check_requested(asked)
        if code == wire.AUTH_CLEARTEXT:
            if (
                params.transport == "tcp"
                and not isinstance(conn.sock, ssl.SSLSocket)
                and not requirement.explicitly_allows("password")
            ):
                raise wire.AuthenticationError(
                    "the server asked for the password in cleartext over a connection "
                    "without TLS: not sent (add require_auth=password to the URL to allow "
                    "it; better: TLS with sslmode=verify-full and scram-sha-256 on the "
                    "server, require_auth=scram-sha-256 on the client)"
                )
            conn.send(wire.password_message(_password(params).encode()))
        elif code == wire.AUTH_MD5:
            digest = wire.md5_password(params.user, _password(params), data[:4])
            conn.send(wire.password_message(digest))
        elif code == wire.AUTH_SASL:
            mechanisms = wire.sasl_mechanisms(data)
            if wire.SCRAM_SHA_256 not in mechanisms:
                raise wire.AuthenticationError(
                    f"the server offers SASL mechanisms {mechanisms}, "
                    "the coldstart client speaks SCRAM-SHA-256 only"
                )
            scram = wire.ScramClient(_password(params))
            conn.send(wire.sasl_initial_response(wire.SCRAM_SHA_256, scram.client_first()))
        else:
            raise wire.AuthenticationError(
                f"authentication method {asked} is not supported by the coldstart client"
            )


def _password(params: ConnectParams) -> str:
    if params.password is None:
        raise wire.AuthenticationError("fe_sendauth: no password supplied")
    return params.password


def _wait_ready(conn: ProtocolConnection) -> None:
    while True:
        kind, payload = conn.next_message()
        if kind == b"S":
            name, value = wire.parse_parameter_status(payload)
            conn.parameters[name] = value
        elif kind == b"K":
            conn.backend_pid = int.from_bytes(payload[:4], "big")
        elif kind == b"E":
            raise wire.ServerError.from_fields(wire.parse_error_fields(payload))
        elif kind == b"Z":
            return
        # 'N' notices and anything else harmless are skipped
