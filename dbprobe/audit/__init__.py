"""``dbprobe audit``: what it reads, what it never does, and the public API.

* :func:`run_audit` — ``run_audit(target, options) -> Report``: catalog checks, the
  heaviest statements of pg_stat_statements explained once each, verified index advice.
* :func:`dbprobe.audit.explain.analyze_statement` — findings for one statement (used
  by ``dbprobe explain`` and the pytest plugin's EXPLAIN step).

See ``docs/audit.md`` for privileges and safety guarantees.
"""

from __future__ import annotations

from dbprobe.audit.audit import AuditOptions, run_audit
from dbprobe.audit.explain import AnalysisOptions, StatementAnalyzer, analyze_statement

__all__ = ["AnalysisOptions", "AuditOptions", "StatementAnalyzer", "analyze_statement", "run_audit"]
