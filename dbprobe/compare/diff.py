"""Compare two ``dbprobe.report/1`` documents: new and resolved findings, metric
regressions decided from the raw samples, and warnings when the runs are not comparable.

Pure: takes the two parsed JSON documents, returns a :class:`Comparison`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from dbprobe.compare.checks import MetricChange, MetricCheck, build_checks, resolve_checks
from dbprobe.report.model import Finding, Severity
from dbprobe.report.views import iter_distributions

COMPARE_SCHEMA_ID = "dbprobe.compare/1"

# environment facts that make timings incomparable when they differ
_MACHINE_FACTS = (
    ("hostname", "machine (hostname)"),
    ("machine", "CPU architecture"),
    ("cpus", "CPU count"),
    ("python", "Python version"),
    ("implementation", "Python implementation"),
)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Which report a side of the comparison is: where it came from and when it ran."""

    source: str
    command: str
    started_at: str
    version: str
    commit: str | None
    server_version: str | None

    @classmethod
    def of(cls, doc: Mapping[str, Any], source: str) -> RunInfo:
        env = doc.get("environment") or {}
        commit = env.get("commit")
        commit_id = commit.get("id") if isinstance(commit, Mapping) else commit
        return cls(
            source=source,
            command=str(doc.get("command") or ""),
            started_at=str(doc.get("started_at") or ""),
            version=str((doc.get("tool") or {}).get("version") or ""),
            commit=str(commit_id) if commit_id else None,
            server_version=(doc.get("target") or {}).get("server_version"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of ``dbprobe compare``.

    new_findings: in NEW, not in BASE (matched by :meth:`Finding.identity`, as a
    multiset); resolved: in BASE, not in NEW; changes: every check on every metric
    present in both; fail_on: the severity at or above which a new finding fails.
    """

    base: RunInfo
    new: RunInfo
    new_findings: list[Finding]
    resolved: list[Finding]
    unchanged_findings: int
    changes: list[MetricChange]
    only_in_base: list[str]
    only_in_new: list[str]
    warnings: list[str]
    checks: list[str]
    fail_on: str

    @property
    def regressions(self) -> list[MetricChange]:
        return [c for c in self.changes if c.verdict == "regression"]

    @property
    def failing_findings(self) -> list[Finding]:
        if self.fail_on == "never":
            return []
        limit = Severity.parse(self.fail_on).rank
        return [f for f in self.new_findings if f.severity.rank >= limit]

    @property
    def exit_code(self) -> int:
        """1 on any metric regression or new finding at or above ``fail_on``, else 0."""
        return 1 if self.regressions or self.failing_findings else 0

    def to_dict(self) -> dict[str, Any]:
        verdicts = Counter(c.verdict for c in self.changes)
        return {
            "schema": COMPARE_SCHEMA_ID,
            "base": self.base.to_dict(),
            "new": self.new.to_dict(),
            "result": "fail" if self.exit_code else "pass",
            "fail_on": self.fail_on,
            "checks": list(self.checks),
            "findings": {
                "new": [f.to_dict() for f in self.new_findings],
                "resolved": [f.to_dict() for f in self.resolved],
                "unchanged": self.unchanged_findings,
                "failing": len(self.failing_findings),
            },
            "metrics": {
                "regressions": verdicts.get("regression", 0),
                "improvements": verdicts.get("improvement", 0),
                "inconclusive": verdicts.get("inconclusive", 0),
                "unchanged": verdicts.get("unchanged", 0),
                "changes": [c.to_dict() for c in self.changes],
                "only_in_base": list(self.only_in_base),
                "only_in_new": list(self.only_in_new),
            },
            "warnings": list(self.warnings),
        }


def diff_findings(
    base: Sequence[Finding], new: Sequence[Finding]
) -> tuple[list[Finding], list[Finding], int]:
    """``(new, resolved, unchanged count)`` matched by identity, counting duplicates."""
    base_left = Counter(f.identity() for f in base)
    fresh: list[Finding] = []
    for f in new:
        key = f.identity()
        if base_left[key] > 0:
            base_left[key] -= 1
        else:
            fresh.append(f)
    new_left = Counter(f.identity() for f in new)
    resolved: list[Finding] = []
    for f in base:
        key = f.identity()
        if new_left[key] > 0:
            new_left[key] -= 1
        else:
            resolved.append(f)
    return fresh, resolved, len(new) - len(fresh)


def environment_warnings(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per fact that differs between the runs and makes timings incomparable."""
    out = []
    eb, en = base.get("environment") or {}, new.get("environment") or {}
    for key, label in _MACHINE_FACTS:
        a, b = eb.get(key), en.get(key)
        if a is not None and b is not None and a != b:
            out.append(f"{label} differs: {a} → {b}; timings may not be comparable")
    sa = (base.get("target") or {}).get("server_version")
    sb = (new.get("target") or {}).get("server_version")
    if sa and sb and sa != sb:
        out.append(f"PostgreSQL version differs: {sa} → {sb}")
    va = (base.get("tool") or {}).get("version")
    vb = (new.get("tool") or {}).get("version")
    if va and vb and va != vb:
        out.append(f"dbprobe version differs: {va} → {vb}")
    ca, cb = base.get("command"), new.get("command")
    if ca and cb and ca != cb:
        out.append(f"the reports come from different commands: {ca} → {cb}")
    return out


def compare_documents(
    base: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    checks: Sequence[MetricCheck] | None = None,
    fail_on: str = "error",
    base_source: str = "BASE",
    new_source: str = "NEW",
) -> Comparison:
    """Compare two parsed reports (``dbprobe.report/1`` dicts); ``checks`` default to
    :func:`build_checks` with no user specs (10% on p95/p99 and throughput)."""
    checks = list(checks) if checks is not None else build_checks(())
    fb = [Finding.from_dict(f) for f in base.get("findings") or []]
    fn = [Finding.from_dict(f) for f in new.get("findings") or []]
    fresh, resolved, unchanged = diff_findings(fb, fn)
    base_dists = dict(iter_distributions(base.get("metrics") or {}))
    new_dists = dict(iter_distributions(new.get("metrics") or {}))
    changes: list[MetricChange] = []
    for path, nd in new_dists.items():
        bd = base_dists.get(path)
        if bd is None:
            continue
        unit = str(nd.get("unit") or bd.get("unit") or "ms")
        for stat, check in resolve_checks(path, unit, checks):
            changes.append(check.compute(path, stat, bd, nd))
    order = {"regression": 0, "inconclusive": 1, "improvement": 2, "unchanged": 3}
    changes.sort(key=lambda c: (order[c.verdict], c.metric, c.stat))
    warnings = environment_warnings(base, new)
    few = [c for c in changes if c.method == "point" and c.stat != "max"]
    if few:
        warnings.append(
            f"{len(few)} check(s) decided on point values: raw samples missing or fewer "
            "than 10 a side, so noise could not be assessed"
        )
    return Comparison(
        base=RunInfo.of(base, base_source),
        new=RunInfo.of(new, new_source),
        new_findings=sorted(fresh, key=lambda f: (-f.severity.rank, f.rule)),
        resolved=sorted(resolved, key=lambda f: (-f.severity.rank, f.rule)),
        unchanged_findings=unchanged,
        changes=changes,
        only_in_base=sorted(set(base_dists) - set(new_dists)),
        only_in_new=sorted(set(new_dists) - set(base_dists)),
        warnings=warnings,
        checks=[c.spec for c in checks],
        fail_on=fail_on,
    )
