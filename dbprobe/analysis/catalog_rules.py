"""Catalog and statistics rules over a :class:`~dbprobe.analysis.catalog.CatalogSnapshot`.

* ``fk-missing-index`` — a foreign key whose columns lead no valid, non-partial index;
* ``duplicate-index`` — an index another valid index already does the work of (same
  method, predicate, operator classes, collations and ordering; its key columns a
  leading prefix of the other's, its INCLUDE columns covered); never a primary key,
  a unique or exclusion constraint's index, or the replica identity;
* ``unused-index`` — never scanned since the statistics were reset, with their age;
  never a constraint's index, the replica identity, or the only index serving a
  foreign key;
* ``invalid-index`` — left invalid by a failed concurrent build;
* ``seq-scan-heavy-table`` — a large table read mostly by sequential scans, including
  tables never read through an index at all.

Pure: no I/O, tested on snapshots saved as JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from collections.abc import Iterable, Mapping, Sequence

from dbprobe.analysis.catalog import (
    CatalogSnapshot,
    ForeignKeyInfo,
    IndexInfo,
    StatsAge,
    TableInfo,
    format_age,
    quote_ident,
    serves_columns,
)
from dbprobe.analysis.index_advice import foreign_key_advice, foreign_key_served
from dbprobe.report.model import Finding
from dbprobe.rules import RULES


@dataclasses.dataclass(frozen=True)
class CatalogRuleOptions:
    """Thresholds of the catalog rules.

    min_rows: a table is large from this many rows (default 10,000);
    min_seq_scans: sequential scans before a table can be seq-scan heavy (default 5);
    min_seq_share: share of scans that are sequential (default 0.5);
    min_stats_age: statistics younger than this make ``unused-index`` advise waiting
    (default 7 days).
    """

    min_rows: float = 10_000
    min_seq_scans: int = 5
    min_seq_share: float = 0.5
    min_stats_age: _dt.timedelta = _dt.timedelta(days=7)


def _mb(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MB"
    return f"{n / 1024:.0f} kB"


# -- fk-missing-index -------------------------------------------------------------------------


def fk_missing_index(
    snapshot: CatalogSnapshot, taken: dict[str, set[str]] | None = None
) -> list[Finding]:
    """Foreign keys whose columns lead no valid, non-partial index."""
    rule = RULES["fk-missing-index"]
    names = taken if taken is not None else {}
    out: list[Finding] = []
    for fk in snapshot.foreign_keys:
        indexes = snapshot.indexes_on(fk.table_oid)
        if foreign_key_served(fk, indexes) is not None:
            continue
        used = names.setdefault(fk.schema, set(snapshot.relation_names(fk.schema)))
        advice = foreign_key_advice(fk, used)
        used.add(advice.name)
        child = snapshot.table_by_oid(fk.table_oid)
        parent = snapshot.table_by_oid(fk.ref_table_oid)
        cols = ", ".join(fk.columns)
        deletes = f"deleting a {fk.ref_display} row deletes its {fk.table_display} rows by "
        updates = f"deleting a {fk.ref_display} row updates its {fk.table_display} rows by "
        action = {"cascade": deletes, "set null": updates, "set default": updates}.get(
            fk.on_delete, f"deleting or re-keying a {fk.ref_display} row checks for references by "
        )
        size = f" (~{child.rows:,.0f} rows)" if child is not None else ""
        near = [
            i.name
            for i in indexes
            if i.column_names[:1] == (fk.columns[0],) and not serves_columns(i, fk.columns)
        ]
        message = (
            f"Foreign key {fk.name} on {fk.table_display} ({cols}) → {fk.ref_display} "
            f"({', '.join(fk.ref_columns)}) has no index leading with ({cols}): "
            f"{action}scanning {fk.table_display}{size}, and joins from {fk.ref_display} "
            "cannot look its rows up"
        )
        if near:
            message += f" ({', '.join(near)} start with it but are partial, invalid or not B-trees)"
        out.append(
            rule.finding(
                message,
                advice.statement,
                table=fk.table_display,
                fingerprint=f"{fk.schema}.{fk.table}.{fk.name}",
                evidence={
                    "constraint": fk.name,
                    "columns": list(fk.columns),
                    "references": f"{fk.ref_schema}.{fk.ref_table}({', '.join(fk.ref_columns)})",
                    "on_delete": fk.on_delete,
                    "on_update": fk.on_update,
                    "table_rows": child.rows if child else None,
                    "referenced_rows": parent.rows if parent else None,
                    "index": advice.to_dict(),
                    "indexes_on_table": [f"{i.name} {i.columns_text}" for i in indexes],
                },
            )
        )
    return out


# -- duplicate-index ----------------------------------------------------------------------------


def _covers(a: IndexInfo, b: IndexInfo) -> bool:
    """Whether ``b`` does all of ``a``'s work (see the module docstring)."""
    if a.oid == b.oid or a.method != b.method or not (b.valid and b.ready):
        return False
    if (a.predicate or None) != (b.predicate or None):
        return False
    ka, kb = a.key_columns, b.key_columns
    if not ka:
        return False
    if a.method == "btree":
        if len(ka) > len(kb):
            return False
    elif len(ka) != len(kb):
        return False
    if not all(x.equivalent(y) for x, y in zip(ka, kb, strict=False)):
        return False
    b_cols = {c.name for c in kb if c.name} | set(b.include_columns)
    if not set(a.include_columns) <= b_cols:
        return False
    if a.unique:
        # A unique index is only redundant next to one enforcing the same uniqueness.
        return b.unique and len(ka) == len(kb)
    return True


def _droppable(index: IndexInfo) -> bool:
    return not (
        index.primary
        or index.exclusion
        or index.constraint_type is not None
        or index.replica_identity
    )


def _identical(a: IndexInfo, b: IndexInfo) -> bool:
    return _covers(a, b) and _covers(b, a)


def duplicate_indexes(snapshot: CatalogSnapshot) -> list[Finding]:
    """Indexes whose work another valid index already does (one finding each)."""
    rule = RULES["duplicate-index"]
    out: list[Finding] = []
    by_table: dict[int, list[IndexInfo]] = {}
    for index in snapshot.indexes:
        by_table.setdefault(index.table_oid, []).append(index)
    for indexes in by_table.values():
        covering: dict[int, list[IndexInfo]] = {}
        for a in indexes:
            if not a.valid or not _droppable(a):
                continue
            keepers = []
            for b in indexes:
                if not _covers(a, b):
                    continue
                # Of two identical droppable indexes, keep the one scanned more (then the
                # older): the other one is the duplicate.
                a_stays = (a.idx_scan or 0, -a.oid) > (b.idx_scan or 0, -b.oid)
                if _identical(a, b) and _droppable(b) and a_stays:
                    continue
                keepers.append(b)
            if keepers:
                covering[a.oid] = keepers
        for a in sorted(indexes, key=lambda i: (len(i.key_columns), i.oid)):
            covered_by = covering.get(a.oid)
            if not covered_by:
                continue
            # Name an index that stays (not itself redundant) when there is one.
            staying = [b for b in covered_by if b.oid not in covering] or covered_by
            b = sorted(staying, key=lambda i: (len(i.key_columns), i.oid))[0]
            same = len(a.key_columns) == len(b.key_columns)
            relation = "has the same definition as" if same else "is a leading prefix of"
            note = "same method" + (
                f", same predicate (WHERE {a.predicate})" if a.predicate else ", no predicate"
            )
            if b.unique or b.primary:
                note += f"; {b.name} also enforces uniqueness"
            message = (
                f"{a.name} {a.columns_text} on {a.table_display} {relation} {b.name} "
                f"{b.columns_text} ({note}): {b.name} serves every query {a.name} does, "
                f"so {a.name} only costs writes and {_mb(a.size_bytes)}"
            )
            out.append(
                rule.finding(
                    message,
                    f"DROP INDEX CONCURRENTLY {a.qualified};",
                    table=a.table_display,
                    fingerprint=f"{a.schema}.{a.name}",
                    evidence={
                        "index": a.name,
                        "definition": a.definition,
                        "covered_by": b.name,
                        "covered_by_definition": b.definition,
                        "size_bytes": a.size_bytes,
                        "idx_scan": a.idx_scan,
                        "covered_by_idx_scan": b.idx_scan,
                    },
                )
            )
    return out


# -- unused-index -------------------------------------------------------------------------------


def _only_fk_index(index: IndexInfo, snapshot: CatalogSnapshot) -> ForeignKeyInfo | None:
    """A foreign key this index alone serves (dropping it would create fk-missing-index)."""
    for fk in snapshot.foreign_keys:
        if fk.table_oid != index.table_oid or not serves_columns(index, fk.columns):
            continue
        others = [
            i
            for i in snapshot.indexes_on(index.table_oid)
            if i.oid != index.oid and serves_columns(i, fk.columns)
        ]
        if not others:
            return fk
    return None


def unused_indexes(
    snapshot: CatalogSnapshot,
    options: CatalogRuleOptions | None = None,
    *,
    exclude: Iterable[str] = (),
) -> list[Finding]:
    """Droppable indexes with no scan since statistics were reset (``exclude``: index
    names already reported, e.g. as duplicates, so one index gets one drop advice)."""
    opts = options or CatalogRuleOptions()
    rule = RULES["unused-index"]
    skip = set(exclude)
    stats = snapshot.stats
    age = stats.age if stats is not None else None
    age_text = stats.describe() if stats is not None else "statistics age unknown"
    young = age is None or age < opts.min_stats_age
    out: list[Finding] = []
    for index in snapshot.indexes:
        if (
            index.idx_scan != 0
            or not index.valid
            or not _droppable(index)
            or index.unique
            or f"{index.schema}.{index.name}" in skip
        ):
            continue
        fk = _only_fk_index(index, snapshot)
        if fk is not None:
            continue
        table = snapshot.table_by_oid(index.table_oid)
        writes = None
        if table is not None and table.n_tup_ins is not None:
            writes = (table.n_tup_ins or 0) + (table.n_tup_upd or 0) + (table.n_tup_del or 0)
        message = (
            f"{index.name} {index.columns_text} on {index.table_display} has not been "
            f"scanned once; {age_text}"
        )
        if writes:
            message += f"; meanwhile {writes:,} rows were written, each also updating it"
        drop = f"DROP INDEX CONCURRENTLY {index.qualified};"
        replicas = (
            "idx_scan counts this server only: check pg_stat_user_indexes on every "
            "standby that serves reads first"
        )
        if young:
            wait = f"only {format_age(age)} old" if age is not None else "of unknown age"
            recommendation = (
                f"The statistics are {wait}: keep watching idx_scan in "
                "pg_stat_user_indexes over a full business cycle (month-end jobs, reports) "
                f"before dropping; then, if it is still 0 ({replicas}): {drop}"
            )
        else:
            recommendation = (
                f"{drop} ({replicas}; keep the definition to recreate it: {index.definition})"
            )
        out.append(
            rule.finding(
                message,
                recommendation,
                table=index.table_display,
                fingerprint=f"{index.schema}.{index.name}",
                evidence={
                    "index": index.name,
                    "definition": index.definition,
                    "size_bytes": index.size_bytes,
                    "idx_scan": index.idx_scan,
                    "table_writes": writes,
                    "stats_reset": stats.stats_reset if stats else None,
                    "stats_age_s": age.total_seconds() if age is not None else None,
                    "postmaster_start": stats.postmaster_start if stats else None,
                    "statistics_young": young,
                },
            )
        )
    return out


# -- invalid-index ------------------------------------------------------------------------------

_INDEX_KW = re.compile(r"^CREATE (UNIQUE )?INDEX ", re.IGNORECASE)


def invalid_indexes(snapshot: CatalogSnapshot) -> list[Finding]:
    """Indexes left invalid (or not ready) by a failed concurrent build."""
    rule = RULES["invalid-index"]
    out: list[Finding] = []
    for index in snapshot.indexes:
        if index.valid and index.ready:
            continue
        recreate = _INDEX_KW.sub(
            lambda m: f"CREATE {m.group(1) or ''}INDEX CONCURRENTLY ", index.definition, count=1
        )
        out.append(
            rule.finding(
                f"{index.name} on {index.table_display} is INVALID: a CREATE INDEX "
                "CONCURRENTLY or REINDEX CONCURRENTLY failed or was interrupted; writes still "
                "maintain it but no query can use it"
                + (" (and it does not enforce its uniqueness)" if index.unique else ""),
                f"REINDEX INDEX CONCURRENTLY {index.qualified}; or drop and rebuild it: "
                f"DROP INDEX CONCURRENTLY {index.qualified}; {recreate}; (if a concurrent "
                "build of it is running right now, wait for it instead)",
                table=index.table_display,
                fingerprint=f"{index.schema}.{index.name}",
                evidence={
                    "index": index.name,
                    "definition": index.definition,
                    "valid": index.valid,
                    "ready": index.ready,
                    "size_bytes": index.size_bytes,
                },
            )
        )
    return out


# -- seq-scan-heavy-table -----------------------------------------------------------------------


def seq_scan_heavy_tables(
    snapshot: CatalogSnapshot,
    options: CatalogRuleOptions | None = None,
    *,
    advice: Mapping[str, Sequence[str]] | None = None,
) -> list[Finding]:
    """Large tables read mostly by sequential scans (also those never index-scanned).

    advice: ``schema.table`` → ``CREATE INDEX`` statements found for it by the plan
    analysis, quoted in the recommendation.
    """
    opts = options or CatalogRuleOptions()
    rule = RULES["seq-scan-heavy-table"]
    stats = snapshot.stats
    out: list[Finding] = []
    for t in snapshot.tables:
        if t.kind not in ("r", "m") or t.seq_scan is None:
            continue
        rows = max(t.rows, float(t.n_live_tup or 0))
        if rows < opts.min_rows or t.seq_scan < opts.min_seq_scans:
            continue
        idx = t.idx_scan or 0
        share = t.seq_scan / (t.seq_scan + idx)
        if share < opts.min_seq_share:
            continue
        per_scan = (t.seq_tup_read or 0) / t.seq_scan
        if per_scan < 0.1 * rows:
            continue  # the scans stop early (LIMIT): not full-table reads
        n_indexes = len(snapshot.indexes_on(t.oid))
        if idx == 0:
            how = "and never through an index" + (" (it has no index)" if n_indexes == 0 else "")
        else:
            how = f"and {idx:,} times through an index ({share:.0%} sequential)"
        since = stats.describe() if stats is not None else "since statistics were reset"
        message = (
            f"{t.display} (~{rows:,.0f} rows, {_mb(t.size_bytes)}) was read {t.seq_scan:,} "
            f"times by sequential scans {how}: {t.seq_tup_read or 0:,} rows read "
            f"sequentially, ~{per_scan:,.0f} per scan; {since}"
        )
        found = list((advice or {}).get(f"{t.schema}.{t.name}", ()))
        if found:
            recommendation = " ".join(found) + (
                " (from the plans of the statements that scan it; see unindexed-lookup)"
            )
        else:
            recommendation = (
                f"Find the statements that read {t.display} (pg_stat_statements; rerun dbprobe "
                "audit with a larger --top) and index the columns they filter, join or sort "
                f'on; dbprobe explain URL "<statement>" gives the exact CREATE INDEX for one.'
            )
        out.append(
            rule.finding(
                message,
                recommendation,
                table=t.display,
                fingerprint=f"{t.schema}.{t.name}",
                evidence={
                    "rows": rows,
                    "size_bytes": t.size_bytes,
                    "seq_scan": t.seq_scan,
                    "seq_tup_read": t.seq_tup_read,
                    "idx_scan": t.idx_scan,
                    "seq_share": round(share, 4),
                    "rows_per_seq_scan": round(per_scan, 1),
                    "indexes": n_indexes,
                    "last_seq_scan": t.last_seq_scan,
                    "stats_reset": stats.stats_reset if stats else None,
                },
            )
        )
    return out


def check_catalog(
    snapshot: CatalogSnapshot,
    options: CatalogRuleOptions | None = None,
    *,
    advice: Mapping[str, Sequence[str]] | None = None,
) -> list[Finding]:
    """Every catalog rule; an index reported as a duplicate is not also reported unused."""
    duplicates = duplicate_indexes(snapshot)
    dup_names = {str(f.fingerprint) for f in duplicates}
    return [
        *fk_missing_index(snapshot),
        *duplicates,
        *unused_indexes(snapshot, options, exclude=dup_names),
        *invalid_indexes(snapshot),
        *seq_scan_heavy_tables(snapshot, options, advice=advice),
    ]


__all__ = [
    "CatalogRuleOptions",
    "StatsAge",
    "TableInfo",
    "check_catalog",
    "duplicate_indexes",
    "fk_missing_index",
    "invalid_indexes",
    "quote_ident",
    "seq_scan_heavy_tables",
    "unused_indexes",
]
