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

For statement capture (the pytest plugin, ``dbprobe.capture()``):

* :mod:`dbprobe.analysis.fingerprint` — statement shapes (literals and placeholders
  removed, lists collapsed), cached by text; any dialect.
* :mod:`dbprobe.analysis.nplusone` — n-plus-one and redundant-query over a query log,
  with the exact loader option or batched query as the fix.
* :mod:`dbprobe.analysis.eager` — unused-eager-load and joinedload-row-explosion.
"""

from __future__ import annotations
