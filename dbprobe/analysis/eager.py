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


def _chain(path: Sequence[str], strategies: Mapping[tuple[str, ...], str]) -> str:
    """``selectinload(Order.items).joinedload(OrderItem.product)``: each step with the
    strategy the statement gives its prefix (``defaultload`` where it gives none)."""
    parts = []
    for index, step in enumerate(path):
        strategy = strategies.get(tuple(path[: index + 1]))
        parts.append(f"{_FUNCTIONS.get(strategy or '', 'defaultload')}({step})")
    return ".".join(parts)


_COSTS = {
    "joined": "a join, and the related columns in every row",
    "selectin": "an extra query",
    "subquery": "an extra query",
    "immediate": "one extra query per object",
}


def unused_eager_loads(
    records: Sequence[Any], touches: Mapping[str, int], root: str | None = None
) -> list[Finding]:
    """One finding per (relationship, query location) eager-loaded and never read: the
    first step of each eager chain that was not read (the steps after it were not read
    either: one finding says it)."""
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
        strategies = {tuple(p): s for p, s in orm.eager}
        mapped = {tuple(p) for p in getattr(orm, "eager_mapped", ()) or ()}
        for raw_path, strategy in orm.eager:
            path = tuple(raw_path)
            for index, label in enumerate(path):
                if touches.get(label, -1) != 0:
                    continue
                # Report the outermost unread step only.
                if any(touches.get(step, -1) == 0 for step in path[:index]):
                    break
                if (label, location) in seen:
                    break
                seen.add((label, location))
                prefix = path[: index + 1]
                step_strategy = strategies.get(prefix, strategy)
                function = _FUNCTIONS.get(step_strategy, step_strategy)
                cost = _COSTS.get(step_strategy, "work")
                chain = _chain(prefix, strategies)
                step_text = f"{function}({label})"
                if prefix in mapped:
                    advice = (
                        f"{label} is eager by the mapping (relationship(lazy="
                        f'"{step_strategy}")), not by an option of this query: add '
                        f".options(lazyload({label})) to this query, or make the relationship "
                        f"lazy in the mapping and load it eagerly where it is used; the eager "
                        f"load costs {cost} on every call"
                    )
                    option = f"relationship(lazy={step_strategy!r})"
                elif index == 0:
                    advice = (
                        f"drop {_chain_from(path, strategies, 0)} from this query's options, "
                        f"or move it to where {label} is used: it costs {cost} on every call"
                    )
                    option = chain
                else:
                    written = _longest_written(path, strategies)
                    advice = (
                        f"remove the .{step_text} step from {written} (and what follows it), "
                        f"keeping {_chain(path[:index], strategies)}, which is read: "
                        f"{label} costs {cost} on every call"
                    )
                    option = chain
                findings.append(
                    rule.finding(
                        f"{label} is eager-loaded ({function}) but never read",
                        advice,
                        location=location,
                        table=None,
                        sql=redact_literals(rec.sql),
                        fingerprint=rec.fingerprint,
                        evidence={
                            "relationship": label,
                            "strategy": step_strategy,
                            "path": list(prefix),
                            "option": option,
                            "by_mapping": prefix in mapped,
                            "function": rec.function,
                        },
                    )
                )
                break
    return findings


def _chain_from(path: Sequence[str], strategies: Mapping[tuple[str, ...], str], index: int) -> str:
    return _chain(path[: index + 1], strategies)


def _longest_written(path: Sequence[str], strategies: Mapping[tuple[str, ...], str]) -> str:
    """The whole option chain that contains ``path`` as written on the statement."""
    longest = tuple(path)
    for other in strategies:
        if other[: len(longest)] == longest and len(other) > len(longest):
            longest = other
    return _chain(longest, strategies)


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
        eager = [(tuple(p), s) for p, s in (orm.eager if orm is not None else ())]
        strategies = dict(eager)
        collections = {tuple(p) for p in getattr(orm, "eager_collections", ()) or ()}
        joined_paths = [list(path) for path, strategy in eager if strategy == "joined"]
        ratio = rows / parents
        advice = _selectin_advice(strategies, collections)
        findings.append(
            rule.finding(
                f"a joined eager load returned {rows} rows for {parents} {name} objects "
                f"({ratio:.0f} rows per {name})",
                advice,
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


def _selectin_advice(
    strategies: Mapping[tuple[str, ...], str], collections: set[tuple[str, ...]]
) -> str:
    """Turn the joined *collection* steps into selectinload, keep the rest as written (a
    joined many-to-one adds no rows)."""
    tail = (
        ": one extra query with an IN list per collection, and each parent row crosses "
        "the wire once"
    )
    if not collections:
        joined = [p for p, s in strategies.items() if s == "joined"]
        names = ", ".join(p[-1] for p in joined)
        return (
            "load the collections among the joined relationships ("
            + (names or "none known")
            + ") with selectinload instead of joinedload; keep joinedload for many-to-one"
            + tail
        )
    changes = []
    kept = []
    for path in sorted(strategies, key=len):
        if any(o[: len(path)] == path and o != path for o in strategies):
            continue  # a prefix of a longer chain: shown with it
        written = _chain(path, strategies)
        changed = dict(strategies)
        for index in range(len(path)):
            prefix = path[: index + 1]
            if strategies.get(prefix) == "joined" and prefix in collections:
                changed[prefix] = "selectin"
        suggested = _chain(path, changed)
        if suggested != written:
            changes.append(f"{written} -> {suggested}")
        elif "joined" in {strategies.get(path[: i + 1]) for i in range(len(path))}:
            kept.append(written)
    advice = "load the collections with selectinload instead of joinedload: " + "; ".join(changes)
    if kept:
        advice += f" (keep {', '.join(kept)}: a joined many-to-one adds no rows)"
    return advice + tail
