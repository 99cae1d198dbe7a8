"""Watchdog that cleans up throwaway servers when the process that started them dies.

Run as a separate process (standard library only, no dbprobe imports) with its stdin
connected to a pipe held by the parent. The parent registers resources line by line:

    pid <pid> <starttime>     a postmaster to stop (starttime from /proc/<pid>/stat)
    dir <path>                a directory to remove
    dropdb <name> <marker> <dsn>
                              a database to drop on a user-supplied server, only if
                              its COMMENT still equals <marker> (ours, not a namesake)
    un<kind> <key>            the parent cleaned it up itself

When stdin reaches end of file (normal exit, crash, SIGKILL of the parent), anything
still registered is cleaned up: postmasters get SIGQUIT (immediate shutdown), then
SIGKILL on their process group; directories are removed; databases dropped.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time


def _starttime(pid: int) -> str | None:
    """The process's start time, or None when it is gone or a zombie (dead, not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # fields after the parenthesised command name: state is 3rd, starttime 22nd
    fields = data.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _alive(pid: int, start: str) -> bool:
    return _starttime(pid) == start


def _stop(pid: int, start: str) -> None:
    if not _alive(pid, start):
        return
    try:
        os.kill(pid, signal.SIGQUIT)
    except OSError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid, start):
        time.sleep(0.02)
    if _alive(pid, start):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def _dropdb(name: str, marker: str, dsn: str) -> None:
    try:
        import psycopg

        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                (name,),
            ).fetchone()
            if row is None or row[0] != marker:
                return  # gone already, or not the database we created
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:
        print(
            f"dbprobe watchdog: could not drop database {name}: {type(exc).__name__}",
            file=sys.stderr,
        )


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle
    pids: dict[str, str] = {}
    dirs: dict[str, None] = {}
    dbs: dict[str, tuple[str, str]] = {}
    for raw in sys.stdin:
        kind, _, rest = raw.rstrip("\n").partition(" ")
        if kind == "pid":
            pid, _, start = rest.partition(" ")
            pids[pid] = start
        elif kind == "unpid":
            pids.pop(rest, None)
        elif kind == "dir":
            dirs[rest] = None
        elif kind == "undir":
            dirs.pop(rest, None)
        elif kind == "dropdb":
            name, marker, dsn = rest.split(" ", 2)
            dbs[name] = (marker, dsn)
        elif kind == "undropdb":
            dbs.pop(rest, None)
    for pid, start in pids.items():
        _stop(int(pid), start)
    for name, (marker, dsn) in dbs.items():
        _dropdb(name, marker, dsn)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
