"""The analysis pipeline run over a capture scope: detectors, then enrichers.

* An **analyzer** ``(QueryLog, CaptureContext) -> Sequence[Finding]`` produces findings
  from a log (the built-in one is :func:`dbprobe.analysis.nplusone.detect`; plan analysis
  of captured statements can be added the same way).
* An **enricher** ``(list[Finding], QueryLog, CaptureContext) -> list[Finding]`` adds
  evidence to findings already made (the built-in one attaches the EXPLAIN cost of an
  N+1's statement when ``CaptureContext.explain`` is set; see :mod:`.explain`).

The pytest plugin runs :func:`analyze` after each test; ``QueryLog.findings`` runs only
the built-in detectors. Register more with :func:`register_analyzer` /
:func:`register_enricher`; a richer plan analysis replaces the built-in EXPLAIN step with
``replace_enricher(explain_cost_enricher, richer)`` (same signature; it should act only
when ``ctx.explain`` is set and keep ``evidence["explain"]["total_cost"]`` and
``["count_x_cost"]``, which the terminal summary prints).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from dbprobe.capture.log import QueryLog
from dbprobe.config import DbprobeConfig
from dbprobe.report.model import Finding

__all__ = [
    "ANALYZERS",
    "ENRICHERS",
    "Analyzer",
    "CaptureContext",
    "Enricher",
    "analyze",
    "explain_cost_enricher",
    "register_analyzer",
    "register_enricher",
    "replace_enricher",
    "unindexed_lookup_analyzer",
]

log = logging.getLogger("dbprobe.capture")


@dataclasses.dataclass(frozen=True)
class CaptureContext:
    """What an analyzer knows about the scope besides its log.

    config: thresholds and ignore/allow lists; test: the pytest node id (or ``None``);
    root: directory locations are relative to; explain: EXPLAIN the statements of N+1
    findings (PostgreSQL only, opt-in: it runs one extra statement per finding).
    """

    config: DbprobeConfig
    test: str | None = None
    root: str | None = None
    explain: bool = False


Analyzer = Callable[[QueryLog, CaptureContext], Sequence[Finding]]
Enricher = Callable[[list[Finding], QueryLog, CaptureContext], list[Finding]]


def _builtin_detectors(query_log: QueryLog, ctx: CaptureContext) -> list[Finding]:
    from dbprobe.analysis.nplusone import detect

    return detect(query_log, ctx.config, test=ctx.test, root=ctx.root)


def explain_cost_enricher(
    findings: list[Finding], query_log: QueryLog, ctx: CaptureContext
) -> list[Finding]:
    """Attach the EXPLAIN cost of each N+1's statement (only when ``ctx.explain``)."""
    if not ctx.explain:
        return findings
    from dbprobe.capture.explain import attach_explain_costs

    return attach_explain_costs(findings, query_log, ctx.root)


def unindexed_lookup_analyzer(query_log: QueryLog, ctx: CaptureContext) -> list[Finding]:
    """``unindexed-lookup`` from the plans of the captured statements (only when
    ``ctx.explain``; PostgreSQL only; see :mod:`.plans`)."""
    if not ctx.explain:
        return []
    from dbprobe.capture.plans import PLANS

    return PLANS.analyze(
        query_log, test=ctx.test, root=ctx.root, verify=ctx.config.explain_verify,
        min_rows=ctx.config.explain_min_rows,
    )  # fmt: skip


ANALYZERS: list[Analyzer] = [_builtin_detectors, unindexed_lookup_analyzer]
ENRICHERS: list[Enricher] = [explain_cost_enricher]


def register_analyzer(analyzer: Analyzer) -> Analyzer:
    """Add an analyzer to the pipeline (idempotent); usable as a decorator."""
    if analyzer not in ANALYZERS:
        ANALYZERS.append(analyzer)
    return analyzer


def register_enricher(enricher: Enricher) -> Enricher:
    """Add an enricher to the pipeline (idempotent); usable as a decorator."""
    if enricher not in ENRICHERS:
        ENRICHERS.append(enricher)
    return enricher


def replace_enricher(old: Enricher, new: Enricher) -> None:
    """Put ``new`` where ``old`` runs (or at the end when ``old`` is not registered)."""
    if old in ENRICHERS:
        ENRICHERS[ENRICHERS.index(old)] = new
    else:
        register_enricher(new)


def analyze(query_log: QueryLog, ctx: CaptureContext) -> list[Finding]:
    """Run every analyzer, then every enricher. An analyzer or enricher that raises is
    logged and skipped: one broken check never hides the others' findings."""
    from dbprobe.analysis.nplusone import apply_config

    findings: list[Finding] = []
    for analyzer in ANALYZERS:
        try:
            produced = list(analyzer(query_log, ctx))
        except Exception:
            log.exception("analyzer %r failed", analyzer)
            continue
        if analyzer is not _builtin_detectors:  # built-ins apply the config themselves
            produced = apply_config(produced, ctx.config, ctx.test)
        findings.extend(produced)
    for enricher in ENRICHERS:
        try:
            findings = enricher(findings, query_log, ctx)
        except Exception:
            log.exception("enricher %r failed", enricher)
    return findings
