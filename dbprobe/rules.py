"""The rule registry: stable ids, default severities, titles and docs pages.

An id, once released, is never reused for something else. Every rule has
``docs/rules/<id>.md``; tests check that the page exists for every id here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from dbprobe.report.model import Finding, Severity


@dataclasses.dataclass(frozen=True)
class Rule:
    """A check with a stable kebab-case id."""

    id: str
    severity: Severity
    title: str

    @property
    def docs(self) -> str:
        """Path of the rule's page, relative to the repository root."""
        return f"docs/rules/{self.id}.md"

    @property
    def url(self) -> str:
        """Absolute link to the rule's page (see :func:`docs_url`)."""
        return docs_url(self.id)

    def finding(
        self,
        message: str,
        recommendation: str,
        *,
        severity: Severity | None = None,
        evidence: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Finding:
        """A finding of this rule; severity defaults to the rule's."""
        return Finding(
            rule=self.id,
            severity=severity or self.severity,
            message=message,
            recommendation=recommendation,
            evidence=dict(evidence or {}),
            **fields,
        )


_RULES = [
    Rule("n-plus-one", Severity.ERROR, "Same statement run once per parent row"),
    Rule("redundant-query", Severity.WARNING, "Same statement with the same parameters run again"),
    Rule("unindexed-lookup", Severity.ERROR, "A large relation scanned to find a few rows"),
    Rule("fk-missing-index", Severity.WARNING, "Foreign key columns lead no index"),
    Rule("duplicate-index", Severity.WARNING, "Index whose work another index already does"),
    Rule("unused-index", Severity.INFO, "Index never scanned since statistics were reset"),
    Rule("seq-scan-heavy-table", Severity.WARNING, "Large table read mostly by sequential scans"),
    Rule("pool-exhaustion", Severity.ERROR, "Pool cannot serve the load without timeouts"),
    Rule("connection-leak", Severity.ERROR, "Connections checked out and never returned"),
    Rule("slow-cold-start", Severity.WARNING, "Connection establishment slower than threshold"),
    Rule("invalid-index", Severity.WARNING, "Index left invalid by a failed build"),
    Rule("row-misestimate", Severity.INFO, "Planner row estimate off by ×10 or more"),
    Rule("sort-spill", Severity.INFO, "Sort spilled to disk"),
    Rule("hash-spill", Severity.INFO, "Hash table spilled to disk in batches"),
    Rule(
        "pg-stat-statements-missing",
        Severity.INFO,
        "pg_stat_statements unavailable: no top statements to explain",
    ),
    Rule("check-skipped", Severity.INFO, "An audit check could not run (privilege, timeout)"),
    Rule("slo-violation", Severity.ERROR, "A measured distribution breaks a declared SLO"),
    Rule("unused-eager-load", Severity.INFO, "Relationship loaded eagerly and never read"),
    Rule(
        "joinedload-row-explosion",
        Severity.INFO,
        "Joined eager load of a collection multiplies the rows returned",
    ),
    Rule("pool-degradation", Severity.ERROR, "Pool fails badly under overload (hangs, errors)"),
    Rule("client-bound", Severity.INFO, "The load generator, not the pool, was the bottleneck"),
    Rule(
        "pool-oversized", Severity.WARNING, "Pool larger than the connections that add throughput"
    ),
    Rule("pool-over-budget", Severity.WARNING, "Capacity × instances exceeds the server's slots"),
    Rule("soak-growth", Severity.WARNING, "Memory, descriptors or connections grow under load"),
]

RULES: dict[str, Rule] = {r.id: r for r in _RULES}


def register(rule: Rule) -> Rule:
    """Add a rule (idempotent for the same definition)."""
    existing = RULES.get(rule.id)
    if existing is not None and existing != rule:
        raise ValueError(f"rule id {rule.id!r} is already registered differently")
    RULES[rule.id] = rule
    return rule


def rule(rule_id: str) -> Rule:
    try:
        return RULES[rule_id]
    except KeyError:
        raise KeyError(f"unknown rule id {rule_id!r}") from None


DOCS_BASE_URL = "https://dbprobe.dev/docs/rules"
"""Where rule pages are published; ``$DBPROBE_DOCS_URL`` overrides it (a fork, a mirror,
``https://github.com/ORG/REPO/blob/main/docs/rules``)."""


def docs_url(rule_id: str) -> str:
    """Absolute link to ``docs/rules/<rule_id>.md`` under ``$DBPROBE_DOCS_URL``
    (default :data:`DOCS_BASE_URL`); reports (HTML, Markdown, SARIF) link here."""
    base = os.environ.get("DBPROBE_DOCS_URL") or DOCS_BASE_URL
    return f"{base.rstrip('/')}/{rule_id}.md"


def _docs_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here.parent / "docs" / "rules", here / "_bundled" / "docs" / "rules"]


@cache
def docs_text(rule_id: str) -> str | None:
    """The Markdown of ``docs/rules/<rule_id>.md`` from a source checkout or the copy
    bundled in the wheel; ``None`` when neither has it."""
    for folder in _docs_dirs():
        page = folder / f"{rule_id}.md"
        if page.is_file():
            return page.read_text(encoding="utf-8")
    return None
