"""Pure analysis: plain data in, findings out. Nothing here opens a connection.

Fingerprints, N+1 grouping, plan and statistics analysis. For the audit:

* :mod:`dbprobe.analysis.catalog` — typed snapshots of the system catalog and the
  statistics views (what :mod:`dbprobe.audit.catalog` reads).
* :mod:`dbprobe.analysis.plans` — ``EXPLAIN (FORMAT JSON)`` parsed into
  :class:`~dbprobe.analysis.plans.PlanNode` trees, unindexed look-ups and red flags.
* :mod:`dbprobe.analysis.index_advice` — candidate index columns and the exact
  ``CREATE INDEX CONCURRENTLY`` statement.
* :mod:`dbprobe.analysis.catalog_rules` — fk-missing-index, duplicate-index,
  unused-index, invalid-index and seq-scan-heavy-table over a snapshot.
"""

from __future__ import annotations
