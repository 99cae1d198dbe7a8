"""A real TCP proxy on 127.0.0.1 for network faults the test controls.

:class:`FaultProxy` sits in front of a real PostgreSQL server and relays bytes both
ways, with the faults a test asks for:

- ``delay_s``: every chunk the server sends reaches the client that much later (a
  one-way latency on the return path; chunks are pipelined, not queued behind each
  other's delays). Every round trip the client waits for then takes at least
  ``delay_s``: a lower bound each measured phase must respect.
- ``accept_limit``: connections after the first ``accept_limit`` are closed as soon as
  they are accepted (the server "goes away" in the middle of a run).
- ``tamper``: a function applied to each backend message (type byte, payload) on
  the way to the client, for plaintext connections.

It counts the connections it accepted and those still open from the client's side.
Also here: :func:`client_sockets`, the TCP sockets this process holds to a port.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable

Tamper = Callable[[bytes, bytes], tuple[bytes, bytes]]


class _MessageRewriter:
    """Splits a backend byte stream into messages and rewrites each with ``tamper``."""

    def __init__(self, tamper: Tamper) -> None:
        self.tamper = tamper
        self.buffer = b""

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while len(self.buffer) >= 5:
            kind = self.buffer[:1]
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                break
            payload = self.buffer[5 : 1 + length]
            self.buffer = self.buffer[1 + length :]
            kind, payload = self.tamper(kind, payload)
            out.append(kind + struct.pack("!i", len(payload) + 4) + payload)
        return b"".join(out)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (see the module docstring)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        delay_s: float = 0.0,
        accept_limit: int | None = None,
        tamper: Tamper | None = None,
    ) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.accept_limit = accept_limit
        self.tamper = tamper
        self.accepted = 0
        self.cut = 0
        self._open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self._acceptor = threading.Thread(target=self._serve, daemon=True)
        self._acceptor.start()

    @property
    def open_connections(self) -> int:
        """Client connections the proxy still holds open (it has not seen their end)."""
        with self._lock:
            return self._open

    def wait_closed(self, timeout_s: float = 5.0) -> int:
        """Wait (bounded) until every client connection has ended; the number still open."""
        deadline = time.monotonic() + timeout_s
        while self.open_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.open_connections

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        with self._lock:
            self._threads.append(t)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                self.accepted += 1
                over = self.accept_limit is not None and self.accepted > self.accept_limit
                if over:
                    self.cut += 1
            if over:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._open += 1
                self._sockets += [client, server]
            self._spawn(self._connection, client, server)

    def _connection(self, client: socket.socket, server: socket.socket) -> None:
        outbox: queue.Queue[tuple[float, bytes | None]] = queue.Queue()
        upstream_done = threading.Event()
        rewriter = _MessageRewriter(self.tamper) if self.tamper else None

        def client_to_server() -> None:
            try:
                while data := client.recv(65536):
                    server.sendall(data)
            except OSError:
                pass
            with self._lock:
                self._open -= 1
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_WR)
            upstream_done.set()

        def server_to_client_read() -> None:
            try:
                while data := server.recv(65536):
                    if rewriter is not None:
                        data = rewriter.feed(data)
                    outbox.put((time.monotonic() + self.delay_s, data))
            except OSError:
                pass
            outbox.put((time.monotonic() + self.delay_s, None))

        self._spawn(client_to_server)
        self._spawn(server_to_client_read)
        try:
            while True:
                due, data = outbox.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if data is None:
                    break
                client.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)
        upstream_done.wait(10)
        for s in (client, server):
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self.sock.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in threads:
            t.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_sockets(port: int | None = None) -> set[int]:
    """The TCP sockets this process holds open towards ``port`` (default: any port) on
    any address, by inode: every state but LISTEN, so a connection the peer has closed
    and this process has not (CLOSE_WAIT) counts too."""
    mine: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                mine.add(int(link[8:-1]))
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote, state, inode = fields[2], fields[3], int(fields[9])
            remote_port = int(remote.rsplit(":", 1)[1], 16)
            if state != "0A" and inode in mine and port in (None, remote_port):
                found.add(inode)
    return found
