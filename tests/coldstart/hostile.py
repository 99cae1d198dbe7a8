"""Hostile and broken peers for the protocol client's tests.

A :class:`ScriptedPeer` is a real TCP server on 127.0.0.1 that plays one scripted
conversation per connection: a server that skips SCRAM's final signature, one that
refuses TLS and then asks for the password in cleartext, one that sends an SSH banner,
one that never answers. They stand in for a hostile or broken peer on the network —
what no real PostgreSQL server does — and record what the client sent them.
"""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
from collections.abc import Callable

from dbprobe.coldstart import wire

Script = Callable[["PeerConnection"], None]


class PeerConnection:
    """One accepted connection: read frontend messages, write backend messages."""

    def __init__(self, sock: socket.socket, received: list[tuple[bytes, bytes]]) -> None:
        self.sock = sock
        self.received = received
        self.sock.settimeout(5)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionResetError("client went away")
            data += chunk
        return data

    def read_untyped(self) -> bytes:
        """An SSLRequest or a StartupMessage (length-prefixed, no type byte)."""
        (length,) = struct.unpack("!i", self._exactly(4))
        body = self._exactly(length - 4)
        self.received.append((b"", body))
        return body

    def read_startup(self, *, tls_answer: bytes = b"N") -> dict[str, str]:
        """The StartupMessage, answering an SSLRequest before it with ``tls_answer``."""
        body = self.read_untyped()
        if struct.unpack("!i", body[:4])[0] == wire.SSL_REQUEST_CODE:
            self.sock.sendall(tls_answer)
            body = self.read_untyped()
        parts = body[4:].split(b"\0")
        return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 2, 2)}

    def read(self) -> tuple[bytes, bytes]:
        """One typed frontend message (``p`` password/SASL, ``Q`` query, ``X``...)."""
        kind = self._exactly(1)
        (length,) = struct.unpack("!i", self._exactly(4))
        payload = self._exactly(length - 4)
        self.received.append((kind, payload))
        return kind, payload

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)

    # -- backend messages -----------------------------------------------------------------
    def auth(self, code: int, data: bytes = b"") -> None:
        self.send(b"R", struct.pack("!i", code) + data)

    def notice(self, message: str) -> None:
        self.send(b"N", b"SNOTICE\0VNOTICE\0C00000\0M" + message.encode() + b"\0\0")

    def ready_session(self) -> None:
        """What follows AuthenticationOk: parameters, the backend key, ReadyForQuery."""
        self.send(b"S", b"server_version\x0015.99 (hostile)\0")
        self.send(b"K", struct.pack("!ii", 4242, 1))
        self.send(b"Z", b"I")

    def answer_select_1(self) -> None:
        kind, _ = self.read()
        assert kind == b"Q"
        field = b"?column?\0" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
        self.send(b"T", struct.pack("!h", 1) + field)
        self.send(b"D", struct.pack("!hi", 1, 1) + b"1")
        self.send(b"C", b"SELECT 1\0")
        self.send(b"Z", b"I")

    def scram_until_final(self) -> None:
        """SCRAM-SHA-256 up to the client's proof (which it does not check): the
        server-first-message extends the client's nonce, as a server must."""
        self.auth(wire.AUTH_SASL, wire.SCRAM_SHA_256.encode() + b"\0\0")
        _kind, payload = self.read()
        mechanism, _, rest = payload.partition(b"\0")
        assert mechanism == wire.SCRAM_SHA_256.encode()
        client_first = rest[4:].decode()
        client_nonce = client_first.split("r=", 1)[1]
        salt = base64.b64encode(b"0123456789abcdef").decode()
        server_first = f"r={client_nonce}server-part,s={salt},i=4096"
        self.auth(wire.AUTH_SASL_CONTINUE, server_first.encode())
        self.read()  # the client-final-message with the proof

    @property
    def passwords(self) -> list[bytes]:
        """Every password / SASL message the client sent on this peer."""
        return [payload for kind, payload in self.received if kind == b"p"]


class ScriptedPeer:
    """A TCP server on 127.0.0.1 that runs ``script`` for every connection it accepts.

    ``received`` collects every message clients sent; ``errors`` what went wrong on
    the server side (a client that hangs up early is not an error)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._open.append(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, conn: socket.socket) -> None:
        peer = PeerConnection(conn, self.received)
        try:
            self.script(peer)
        except (OSError, AssertionError):
            pass
        finally:
            if not getattr(self.script, "keep_open", False):
                conn.close()

    @property
    def passwords(self) -> list[bytes]:
        return [payload for kind, payload in self.received if kind == b"p"]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for conn in self._open:
            conn.close()
        for t in self._threads:
            t.join(5)
        self.sock.close()


def keep_open(script: Script) -> Script:
    """Mark a script whose connection stays open after it returns (until close())."""
    script.keep_open = True  # type: ignore[attr-defined]
    return script


# -- scripts --------------------------------------------------------------------------------
def scram_without_final(peer: PeerConnection) -> None:
    """SCRAM up to the client's proof, then AuthenticationOk without SASLFinal: the
    server never proves it knows the password."""
    peer.read_startup()
    peer.scram_until_final()
    peer.auth(wire.AUTH_OK)
    peer.ready_session()
    peer.answer_select_1()


def refuse_tls_then_ask_cleartext(peer: PeerConnection) -> None:
    """Answer the SSLRequest with 'N', then ask for the password in cleartext: a
    downgrade that collects the password."""
    peer.read_startup(tls_answer=b"N")
    peer.auth(wire.AUTH_CLEARTEXT)
    peer.read()
    peer.auth(wire.AUTH_OK)
    peer.ready_session()
    peer.answer_select_1()


def notice_before_auth_ok(peer: PeerConnection) -> None:
    """A NoticeResponse during authentication (the protocol allows one at any time)."""
    peer.read_startup()
    peer.notice("a notice before authentication completes")
    peer.auth(wire.AUTH_OK)
    peer.ready_session()
    peer.answer_select_1()


def ssh_banner(peer: PeerConnection) -> None:
    """An SSH server: its banner goes out as soon as the connection is accepted."""
    peer.sock.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    peer.sock.recv(1024)


def tls_yes_then_hang_up(peer: PeerConnection) -> None:
    """Answer the SSLRequest with 'S', then close instead of a TLS handshake."""
    body = peer.read_untyped()
    assert struct.unpack("!i", body[:4])[0] == wire.SSL_REQUEST_CODE
    peer.sock.sendall(b"S")
    peer.sock.recv(1024)  # the ClientHello


@keep_open
def never_answers(peer: PeerConnection) -> None:
    """Accept the connection, read what comes, answer nothing."""
    peer.sock.settimeout(30)
    peer.sock.recv(1024)


def close_after_200ms(peer: PeerConnection) -> None:
    """Accept, wait 200 ms, close (a backend that takes its time to exit)."""
    peer.sock.settimeout(1)
    time.sleep(0.2)
