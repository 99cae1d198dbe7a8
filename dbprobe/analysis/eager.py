"""Eager-loading checks over a query log (pure): ``unused-eager-load`` and
``joinedload-row-explosion``, both ``info``.

* unused-eager-load: a relationship that a query loaded eagerly (``selectinload``,
  ``joinedload``, ``lazy="selectin"`` ...) was never read in the scope. The capture side
  counts reads of eager-loaded relationships (``QueryLog.eager_touches``; a relationship
  is listed with 0 as soon as it is watched), so a relationship absent from the counts
  was not watched and is never reported.
* joinedload-row-explosion: a query that joined-eager-loads a collection returned many
  rows per root object (rows ÷ distinct parents ≥ ``joinedload_row_ratio``, default 10,
  and ≥ ``joinedload_min_rows`` rows, default 100): every parent row is repeated once per
  child, over the wire and through the ORM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbprobe.analysis.fingerprint import redact_literals
from dbprobe.config import DbprobeConfig
from dbprobe.report.model import Finding
from dbprobe.rules import RULES

__all__ = ["joinedload_row_explosion", "unused_eager_loads"]

_FUNCTIONS = {
    "joined": "joinedload",
    "selectin": "selectinload",
    "subquery": "subqueryload",
    "immediate": "immediateload",
}


def _option(path: Sequence[str], strategy: str, upto: int) -> str:
    """``selectinload(Order.items).joinedload(OrderItem.product)`` up to step ``upto``
    (the strategy of earlier steps is not known here: the same one is shown)."""
    fn = _FUNCTIONS.get(strategy, strategy)
    return ".".join(f"{fn}({step})" for step in path[: upto + 1])


def unused_eager_loads(
    records: Sequence[Any], touches: Mapping[str, int], root: str | None = None
) -> list[Finding]:
    """One finding per (relationship, query location) eager-loaded and never read."""
    rule = RULES["unused-eager-load"]
    findings: list[Finding] = []
    seen: set[tuple[str, str | None]] = set()
    for rec in records:
        orm = rec.orm
        if orm is None or orm.relationship is not None or orm.dml or not orm.eager:
            continue
        if rec.error is not None:
            continue
        location = rec.location(root)
        for path, strategy in orm.eager:
            for index, label in enumerate(path):
                if touches.get(label, -1) != 0 or (label, location) in seen:
                    continue
                seen.add((label, location))
                option = _option(path, strategy, index)
                findings.append(
                    rule.finding(
                        f"{label} is eager-loaded ({_FUNCTIONS.get(strategy, strategy)}) "
                        f"but never read",
                        f"drop {option} from this query, or defer it to where "
                        f"{label} is used: the eager load costs "
                        + ("an extra query" if strategy in ("selectin", "subquery") else "a join")
                        + " on every call",
                        location=location,
                        table=None,
                        sql=redact_literals(rec.sql),
                        fingerprint=rec.fingerprint,
                        evidence={
                            "relationship": label,
                            "strategy": strategy,
                            "path": list(path),
                            "option": option,
                            "function": rec.function,
                        },
                    )
                )
    return findings


def joinedload_row_explosion(
    records: Sequence[Any], config: DbprobeConfig, root: str | None = None
) -> list[Finding]:
    """One finding per query whose joined collection load multiplied its rows."""
    rule = RULES["joinedload-row-explosion"]
    findings = []
    for rec in records:
        parents = getattr(rec, "loaded_parents", -1)
        joined = getattr(rec, "joined_root", None)
        if joined is None or parents is None or parents <= 0 or rec.rowcount is None:
            continue
        rows = rec.rowcount
        if rows < config.joinedload_min_rows or rows / parents < config.joinedload_row_ratio:
            continue
        name = joined if isinstance(joined, str) else getattr(joined, "__name__", str(joined))
        orm = rec.orm
        joined_paths = [
            list(path)
            for path, strategy in (orm.eager if orm is not None else ())
            if strategy == "joined"
        ]
        ratio = rows / parents
        suggestion = ", ".join(
            "selectinload(" + ").selectinload(".join(path) + ")" for path in joined_paths
        )
        findings.append(
            rule.finding(
                f"a joined eager load returned {rows} rows for {parents} {name} objects "
                f"({ratio:.0f} rows per {name})",
                "load collections with selectinload instead of joinedload"
                + (f" ({suggestion})" if suggestion else "")
                + ": one extra query with an IN list, and each parent row crosses the wire once",
                location=rec.location(root),
                sql=redact_literals(rec.sql),
                count=rows,
                fingerprint=rec.fingerprint,
                evidence={
                    "rows": rows,
                    "parents": parents,
                    "rows_per_parent": round(ratio, 2),
                    "joined": joined_paths,
                    "root": name,
                    "duration_ms": round(rec.duration_ns / 1e6, 3),
                },
            )
        )
    return findings
