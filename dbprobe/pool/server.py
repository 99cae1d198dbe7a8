"""The server side of a pool run: connection budget, the pool's sessions in
``pg_stat_activity``, and this process's own resources (for soak tests).

One monitor connection (``application_name = dbprobe-pool-monitor``) serves the whole
run; every pooled connection carries ``dbprobe-pool-<kind>-<token>`` so its sessions can
be counted, and proven gone at the end.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from dbprobe.connect import connect
from dbprobe.urls import DatabaseTarget

log = logging.getLogger("dbprobe.pool")

MONITOR_APPLICATION_NAME = "dbprobe-pool-monitor"
SAFE_FRACTION = 0.8
"""By default a run may use at most this share of the server's free connection slots."""


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    """Connection budget of the server, read at the start of a run.

    budget: ``max_connections − superuser_reserved_connections − reserved_connections``
    (what non-superuser applications can have at once); free: the budget minus the
    client sessions already open (ours included); safe_limit: 80% of ``free``.
    """

    version: str
    version_num: int
    max_connections: int
    superuser_reserved: int
    reserved: int
    client_backends: int
    is_superuser: bool
    local: bool

    @property
    def budget(self) -> int:
        return self.max_connections - self.superuser_reserved - self.reserved

    @property
    def free(self) -> int:
        return max(0, self.budget - self.client_backends)

    @property
    def safe_limit(self) -> int:
        return math.floor(SAFE_FRACTION * self.free)

    def to_metrics(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "max_connections": self.max_connections,
            "superuser_reserved_connections": self.superuser_reserved,
            "reserved_connections": self.reserved,
            "client_backends_at_start": self.client_backends,
            "budget": self.budget,
            "free": self.free,
            "safe_limit": self.safe_limit,
            "superuser": self.is_superuser,
            "local": self.local,
        }


def own_addresses() -> frozenset[str]:
    """This machine's own IP addresses: those of its host name, and on Linux every
    address assigned to an interface (``/proc/net/fib_trie`` local routes,
    ``/proc/net/if_inet6``)."""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    except OSError:
        pass
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for before, line in itertools.pairwise(lines):
        if "/32 host LOCAL" in line:
            found.add(before.strip().lstrip("|-+ ").strip())
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return frozenset(a.split("%", maxsplit=1)[0] for a in found)


def is_local_address(address: str, own: frozenset[str] = frozenset()) -> bool:
    """Whether an IP address is this machine: all of 127.0.0.0/8, ``::1``, IPv4-mapped
    loopback, unspecified (0.0.0.0, ``::``), or one of ``own``."""
    try:
        ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified or str(ip) in own


def is_local(target: DatabaseTarget) -> bool:
    """Whether the server runs on this machine: a unix socket, or a host whose
    addresses are all loopback (127.0.0.0/8, ``::1``) or this machine's own. A name
    is resolved; when it cannot be, it is taken as remote."""
    host = target.host or ""
    if host in ("", "localhost") or host.startswith("/") or host.startswith("@"):
        return True
    own = own_addresses()
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, target.port or 5432)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(is_local_address(a, own) for a in addresses)


@dataclasses.dataclass(frozen=True)
class ServerSession:
    """One row of ``pg_stat_activity``: pid, application, state, how long its
    transaction has been open (s), and its last statement (text, no parameters)."""

    pid: int
    application_name: str
    state: str | None
    xact_age_s: float | None
    state_age_s: float | None
    query: str | None


class ServerMonitor:
    """The run's one monitoring connection (autocommit, 5 s statement timeout)."""

    def __init__(self, target: DatabaseTarget, connect_timeout_s: float = 10.0) -> None:
        self.target = target
        self._lock = threading.Lock()
        self.conn = connect(
            target,
            application_name=MONITOR_APPLICATION_NAME,
            statement_timeout_ms=5000,
            connect_timeout=connect_timeout_s,
        )
        self.alive = True

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass
        self.alive = False

    def __enter__(self) -> ServerMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cur = self.conn.execute(sql.encode(), params)
            return list(cur.fetchall())

    def facts(self) -> ServerFacts:
        names = ["max_connections", "superuser_reserved_connections", "reserved_connections"]
        rows = self._rows("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,))
        settings = {name: int(value) for name, value in rows}
        (row,) = self._rows(
            "SELECT current_setting('server_version'),"
            " current_setting('server_version_num')::int,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        )
        return ServerFacts(
            version=str(row[0]).split(" ")[0],
            version_num=int(row[1]),
            max_connections=settings.get("max_connections", 100),
            superuser_reserved=settings.get("superuser_reserved_connections", 3),
            reserved=settings.get("reserved_connections", 0),
            client_backends=int(row[3]),
            is_superuser=bool(row[2]),
            local=is_local(self.target),
        )

    def ping(self) -> bool:
        """Whether the server still answers on the monitor connection."""
        if not self.alive:
            return False
        try:
            self._rows("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            log.debug("monitor ping failed: %r", exc)
            self.alive = False
            return False
        return True

    def backends(self, application_name: str) -> int | None:
        """Sessions of one pool on the server (None when the server does not answer)."""
        if not self.alive:
            return None
        try:
            (row,) = self._rows(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            )
        except (psycopg.Error, OSError) as exc:
            log.debug("monitor query failed: %r", exc)
            self.alive = False
            return None
        return int(row[0])

    def idle_in_transaction(self, application_name: str) -> int | None:
        """The pool's sessions left ``idle in transaction`` (None: no answer)."""
        if not self.alive:
            return None
        try:
            (row,) = self._rows(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND state LIKE 'idle in transaction%%'",
                (application_name,),
            )
        except (psycopg.Error, OSError) as exc:
            log.debug("monitor query failed: %r", exc)
            self.alive = False
            return None
        return int(row[0])

    def sessions(self, application_name: str) -> list[ServerSession]:
        """The pool's sessions with state and transaction age."""
        rows = self._rows(
            "SELECT pid, application_name, state,"
            " extract(epoch FROM now() - xact_start)::float8,"
            " extract(epoch FROM now() - state_change)::float8, query"
            " FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
            (application_name,),
        )
        return [ServerSession(*row) for row in rows]

    def wait_closed(self, application_name: str, timeout_s: float = 5.0) -> int | None:
        """Wait until the pool has no session left on the server; return how many are
        still there after ``timeout_s`` (a backend exits a moment after its client), or
        None when the server no longer answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.backends(application_name)
            if left is None or left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)


def process_rss_bytes() -> int | None:
    """Resident memory of this process in bytes (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return None
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int | None:
    """Open file descriptors of this process (Linux ``/proc``; None elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def host_cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (Linux
    ``/proc/stat``; None elsewhere). Two readings give the share of all cores busy."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    values = [float(v) for v in fields[:8]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    total = sum(values)
    return total - idle, total


def host_busy_share(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    """Share of all the machine's cores busy between two :func:`host_cpu_times`."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
