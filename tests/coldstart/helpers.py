"""Helpers for the cold-start tests: leftover-session checks and stand-in peers."""

from __future__ import annotations

import socket
import threading
import time

from dbprobe.pg import PostgresServer

PASSWORD = "s3cret-scram"
MD5_PASSWORD = "md5-pass"
CLEARTEXT_PASSWORD = "clear-pass"
TLS_ONLY_PASSWORD = "tls-only-pass"


def hba_lines(tls: bool) -> list[str]:
    """pg_hba.conf rules for the cold-start tests' server: a role per authentication
    method; ``cs_rejected`` is always rejected; with TLS, ``cs_tlsonly`` is admitted
    over TLS only (a ``hostssl`` rule), so a connection of that role proves TLS."""
    lines = [
        "host all cs_trust 127.0.0.1/32 trust",
        "host all cs_md5 127.0.0.1/32 md5",
        "host all cs_cleartext 127.0.0.1/32 password",
        "host all cs_rejected 127.0.0.1/32 reject",
    ]
    if tls:
        lines += [
            "hostssl all cs_tlsonly 127.0.0.1/32 scram-sha-256",
            "hostnossl all cs_tlsonly 127.0.0.1/32 reject",
        ]
    return [*lines, "host all all 127.0.0.1/32 scram-sha-256"]


def dbprobe_sessions(server: PostgresServer, wait_s: float = 3.0) -> list[tuple[str, str]]:
    """Sessions named dbprobe* other than our own, after waiting (bounded) for closed
    connections' backends to exit."""
    deadline = time.monotonic() + wait_s
    while True:
        rows = server.execute(
            "SELECT application_name, state FROM pg_stat_activity "
            "WHERE application_name LIKE 'dbprobe%' AND pid <> pg_backend_pid()"
        )
        if not rows or time.monotonic() > deadline:
            return [(str(a), str(s)) for a, s in rows]
        time.sleep(0.05)


class NotPostgresServer:
    """A real TCP server on loopback that answers like an HTTP server, for the
    'URL points at something that is not PostgreSQL' case."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


class RefusingPort:
    """A port on 127.0.0.1 bound but never listening, held until :meth:`close`:
    connecting to it is refused, and no other process can take it meanwhile."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


class DirectTlsProxy:
    """A TLS terminator on loopback that accepts direct TLS (no SSLRequest) with ALPN
    ``postgresql``, as PostgreSQL 17+ does, and relays the decrypted stream to a real
    server. PostgreSQL 17+ with TLS is not available on every test machine (the
    embedded PostgreSQL 18 build has no TLS); this exercises the client side of direct
    negotiation: the handshake without SSLRequest and the ALPN check."""

    def __init__(self, upstream: tuple[str, int], certfile: str, keyfile: str) -> None:
        import ssl

        self.upstream = upstream
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        self.context.set_alpn_protocols(["postgresql"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.alpn: list[str | None] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            t = threading.Thread(target=self._relay, args=(client,), daemon=True)
            t.start()
            self._threads.append(t)

    def _relay(self, client: socket.socket) -> None:
        import select

        try:
            client.settimeout(5)
            tls = self.context.wrap_socket(client, server_side=True)
            self.alpn.append(tls.selected_alpn_protocol())
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        tls.setblocking(True)
        with tls, upstream:
            while not self._stop.is_set():
                ready = [tls] if tls.pending() else select.select([tls, upstream], [], [], 0.2)[0]
                try:
                    for src in ready:
                        data = src.recv(65536)
                        if not data:
                            return
                        (upstream if src is tls else tls).sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for t in self._threads:
            t.join(5)
        self.sock.close()


def url_with(dsn: str, **options: str) -> str:
    """``dsn`` with extra libpq options (``sslmode=...``), whatever it already carries."""
    from dbprobe.urls import parse_url

    return parse_url(dsn).with_options(**options).libpq_dsn()
