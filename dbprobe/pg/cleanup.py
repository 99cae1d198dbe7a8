"""Cleanup that survives the death of the process: the parent side of ``_reaper.py``.

One watchdog process per dbprobe process, started on first use. Directories are
registered before they are filled, postmasters right after they are spawned,
databases right after they are created (and marked); each is deregistered after
in-process cleanup succeeds. A crash between spawn and registration of a postmaster
is the one window not covered (the postmaster then stops by itself within a minute,
when its data directory has been removed).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("dbprobe.pg")

_SCRIPT = Path(__file__).with_name("_reaper.py")


class Reaper:
    """Registers postmasters, directories and databases with the watchdog process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._owner_pid = 0

    def _python(self) -> str:
        exe = sys.executable
        if exe and os.access(exe, os.X_OK):
            return exe
        return "/usr/bin/python3"

    def _ensure(self) -> subprocess.Popen[str] | None:
        if self._proc is not None and self._owner_pid == os.getpid() and self._proc.poll() is None:
            return self._proc
        try:
            self._proc = subprocess.Popen(
                [self._python(), str(_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=None,
                text=True,
                start_new_session=True,  # a Ctrl-C on the terminal is not its to see
                close_fds=True,
            )
            self._owner_pid = os.getpid()
        except OSError as exc:  # cleanup still runs in-process; only crashes are uncovered
            log.warning("could not start the cleanup watchdog: %r", exc)
            self._proc = None
        return self._proc

    def _send(self, line: str) -> None:
        with self._lock:
            proc = self._ensure()
            if proc is None or proc.stdin is None:
                return
            try:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                log.warning("cleanup watchdog is gone; crash cleanup is not covered")

    def watch_pid(self, pid: int) -> None:
        start = _starttime(pid)
        if start is not None:
            self._send(f"pid {pid} {start}")

    def unwatch_pid(self, pid: int) -> None:
        self._send(f"unpid {pid}")

    def watch_dir(self, path: Path) -> None:
        self._send(f"dir {path}")

    def unwatch_dir(self, path: Path) -> None:
        self._send(f"undir {path}")

    def watch_database(self, name: str, marker: str, admin_dsn: str) -> None:
        """Drop ``name`` at a crash, if its COMMENT still says ``marker``."""
        self._send(f"dropdb {name} {marker} {admin_dsn}")

    def unwatch_database(self, name: str) -> None:
        self._send(f"undropdb {name}")


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


REAPER = Reaper()
