"""Query-count baselines for the pytest plugin (a ratchet).

``--dbprobe-baseline PATH`` stores, per test, the number of statements it ran and the
keys of its findings. Later runs fail a test only when it runs *more* statements than
recorded or has a finding the baseline does not list; ``--dbprobe-baseline-update``
rewrites the entries of the tests that ran (counts that dropped are tightened, and
accepted increases are recorded). Entries of tests that did not run are kept.

A finding's key is ``rule|path|fingerprint`` (the call site's file without the line
number, so editing code above a known problem does not make it "new").
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dbprobe.errors import UsageError

__all__ = ["SCHEMA", "Baseline", "BaselineEntry", "finding_key"]

SCHEMA = "dbprobe.baseline/1"


def finding_key(finding: Mapping[str, Any]) -> str:
    """``rule|path|fingerprint`` of a finding (as a dict from ``Finding.to_dict``)."""
    location = finding.get("location") or ""
    path = location.rpartition(":")[0] if ":" in location else location
    return f"{finding.get('rule')}|{path}|{finding.get('fingerprint') or ''}"


@dataclasses.dataclass(frozen=True)
class BaselineEntry:
    """One test's recorded statement count and finding keys."""

    statements: int
    findings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"statements": self.statements, "findings": sorted(self.findings)}


@dataclasses.dataclass
class Baseline:
    """Per-test entries keyed by pytest node id."""

    tests: dict[str, BaselineEntry] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Baseline:
        """Read a baseline; a missing file is an empty baseline."""
        file = Path(path)
        if not file.exists():
            return cls()
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the dbprobe baseline {file}: {exc}") from None
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise UsageError(f"{file} is not a dbprobe baseline (schema {SCHEMA})")
        tests = {}
        for node, raw in (data.get("tests") or {}).items():
            tests[str(node)] = BaselineEntry(
                int(raw.get("statements", 0)), tuple(raw.get("findings") or ())
            )
        return cls(tests)

    def save(self, path: str | os.PathLike[str]) -> None:
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "schema": SCHEMA,
            "tests": {node: self.tests[node].to_dict() for node in sorted(self.tests)},
        }
        tmp = file.with_suffix(file.suffix + ".tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, file)

    def allows(self, test: str) -> int | None:
        """The statement count recorded for ``test`` (``None``: not in the baseline)."""
        entry = self.tests.get(test)
        return None if entry is None else entry.statements

    def new_findings(
        self, test: str, findings: Iterable[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]]:
        """The findings whose key the baseline does not hold for ``test`` (all of them
        for a test absent from the baseline)."""
        entry = self.tests.get(test)
        known = set(entry.findings) if entry is not None else set()
        return [f for f in findings if finding_key(f) not in known]

    def improved(self, test: str, statements: int) -> bool:
        entry = self.tests.get(test)
        return entry is not None and statements < entry.statements

    def updated(self, results: Mapping[str, tuple[int, Iterable[Mapping[str, Any]]]]) -> Baseline:
        """A new baseline with the given tests' entries replaced."""
        tests = dict(self.tests)
        for test, (statements, findings) in results.items():
            tests[test] = BaselineEntry(
                statements, tuple(sorted({finding_key(f) for f in findings}))
            )
        return Baseline(tests)
