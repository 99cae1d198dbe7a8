"""Saved runs: numbered JSON reports kept for later comparison (``--save``,
``dbprobe runs``, ``dbprobe compare latest NEW.json``).

A saved run is an ordinary ``dbprobe.report/1`` document whose ``environment`` also
holds ``commit`` (``git rev-parse`` of the working directory, when it is a git
checkout: id, branch, dirty) next to the machine facts every report carries, so a
comparison across machines or commits warns instead of misleading. Files are named
``NNNN_<command>_<UTC time>[_<commit>].json`` in the runs folder (default
``.dbprobe/runs``, ``$DBPROBE_RUNS_DIR`` or ``--save DIR``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dbprobe.errors import UsageError
from dbprobe.report.model import SCHEMA_ID

log = logging.getLogger("dbprobe.runs")

DEFAULT_RUNS_DIR = ".dbprobe/runs"
_NAME = re.compile(r"^(\d{4,})_([A-Za-z0-9-]+)_(\d{8}T\d{6}Z)(?:_([0-9a-f]+))?\.json$")
_REF = re.compile(r"^(?:latest|last)(?:[~-](\d+))?$")


def runs_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The runs folder: ``path``, else ``$DBPROBE_RUNS_DIR``, else ``.dbprobe/runs``."""
    return Path(path or os.environ.get("DBPROBE_RUNS_DIR") or DEFAULT_RUNS_DIR)


def commit_info(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """``{"id", "branch", "dirty"}`` of the git checkout at ``cwd``; ``None`` outside
    one or without git. Bounded: each git call times out after 5 s."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"id": commit, "branch": branch, "dirty": bool(status)}


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """One saved report: its number, file, command, start time and commit (short)."""

    number: int
    path: Path
    command: str
    started: str
    commit: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "path": str(self.path),
            "command": self.command,
            "started": self.started,
            "commit": self.commit,
        }


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise numbering between processes saving into the same folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: numbering is best effort
        yield
        return
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunStore:
    """The numbered reports in one folder."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = runs_dir(root)

    def runs(self) -> list[SavedRun]:
        """Saved runs, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.iterdir():
            m = _NAME.match(path.name)
            if m:
                out.append(SavedRun(int(m.group(1)), path, m.group(2), m.group(3), m.group(4)))
        return sorted(out, key=lambda r: r.number)

    def save(
        self, document: Mapping[str, Any], *, commit: Mapping[str, Any] | None = None
    ) -> SavedRun:
        """Store a report document under the next number.

        commit: the git facts to record; default :func:`commit_info` of the current
        directory. The document is copied, never modified.
        """
        if document.get("schema") != SCHEMA_ID:
            raise UsageError(f"not a {SCHEMA_ID} document; only reports can be saved")
        doc = json.loads(json.dumps(document))
        env = dict(doc.get("environment") or {})
        info = dict(commit) if commit is not None else commit_info()
        if info is not None:
            env["commit"] = info
        doc["environment"] = env
        command = re.sub(r"[^A-Za-z0-9-]+", "-", str(doc.get("command") or "report")) or "report"
        stamp = re.sub(r"[-:]", "", str(doc.get("started_at") or "")).replace("+0000", "Z")
        if not re.fullmatch(r"\d{8}T\d{6}Z", stamp):
            stamp = "00000000T000000Z"
        short = str(info["id"])[:10] if info and info.get("id") else None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with _locked(self.root):
                number = max((r.number for r in self.runs()), default=0) + 1
                name = f"{number:04d}_{command}_{stamp}" + (f"_{short}" if short else "") + ".json"
                path = self.root / name
                tmp = path.with_name(f".{name}.tmp")
                tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", "utf-8")
                tmp.replace(path)
        except OSError as exc:
            raise UsageError(f"cannot save the run in {self.root}: {exc.strerror or exc}") from None
        log.debug("saved run %r", str(path))
        return SavedRun(number, path, command, stamp, short)

    def resolve(self, ref: str, command: str | None = None) -> Path:
        """A saved run's file from ``N``/``000N`` (its number), ``latest`` or ``latest~K``
        (the K-th before the latest). command: count only the runs of that command
        (``latest~1`` of a ``pool`` run is the ``pool`` run before it)."""
        runs = self.runs()
        m = _REF.match(ref)
        if m:
            mine = [r for r in runs if command is None or r.command == command]
            back = int(m.group(1) or 0)
            if len(mine) <= back:
                of = f" of command {command}" if command else ""
                raise UsageError(
                    f"no saved run {ref!r}{of} in {self.root} ({len(mine)} saved; "
                    "save one with --save or `dbprobe runs save REPORT.json`)"
                )
            return mine[-1 - back].path
        if ref.isdigit():
            for r in runs:
                if r.number == int(ref):
                    return r.path
            raise UsageError(f"no saved run number {int(ref)} in {self.root}")
        raise UsageError(f"{ref!r} is neither a file nor a saved-run id (N, latest, latest~K)")


def is_run_ref(ref: str) -> bool:
    """Whether ``ref`` names a saved run relative to the latest (``latest``,
    ``latest~K``) rather than a file or a run number."""
    return bool(_REF.match(ref)) and not Path(ref).exists()


def load_document(
    ref: str, store: RunStore | None = None, *, command: str | None = None
) -> tuple[dict[str, Any], str]:
    """Read a report from a file path or a saved-run id; ``(document, source label)``.

    command: resolve ``latest``/``latest~K`` among the runs of that command only.
    Raises :class:`UsageError` (one line) for a missing or unreadable file, bad JSON,
    or a document that is not ``dbprobe.report/1``.
    """
    path = Path(ref)
    if not path.exists() and os.sep not in ref and not ref.endswith(".json"):
        path = (store or RunStore()).resolve(ref, command)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{ref}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{ref}: cannot read it ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{ref}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise UsageError(f"{ref}: not a {SCHEMA_ID} report (schema={found!r})")
    from dbprobe.report.model import Report

    problem = distribution_problem(doc.get("metrics"), "metrics")
    if problem:
        raise UsageError(f"{ref}: {problem}")
    try:
        Report.from_dict(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(
            f"{ref}: malformed {SCHEMA_ID} report ({type(exc).__name__}: {exc})"
        ) from None
    return doc, str(path)


_DIST_NUMBERS = ("p50", "p95", "p99", "max", "min", "mean")


def distribution_problem(node: Any, where: str) -> str | None:
    """The first distribution under ``node`` whose fields have the wrong type, as
    ``metrics/…/p50 is not a number``; ``None`` when every one is sound. (The same rules
    as ``$defs/distribution`` in the report schema, without needing jsonschema.)"""
    if isinstance(node, dict):
        if "n" in node and "p50" in node and "p95" in node:
            n = node.get("n")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                return f"{where}/n is not a count"
            for key in _DIST_NUMBERS:
                value = node.get(key)
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float))
                ):
                    return f"{where}/{key} is not a number"
            samples = node.get("samples")
            if samples is not None and (
                not isinstance(samples, list)
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in samples)
            ):
                return f"{where}/samples is not a list of numbers"
            return None
        for key, value in node.items():
            if str(key).startswith("_"):
                continue
            found = distribution_problem(value, f"{where}/{key}")
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = distribution_problem(value, f"{where}/{i}")
            if found:
                return found
    return None
