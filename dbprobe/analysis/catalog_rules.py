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
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

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
from dbprobe.analysis.index_advice import (
    CONCURRENTLY_NOTE,
    PARTITIONED_INDEX_NOTE,
    IndexKey,
    foreign_key_advice,
    foreign_key_served,
    partitioned_index_statements,
)
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


def _taken(snapshot: CatalogSnapshot, names: dict[str, set[str]]) -> Callable[[str], set[str]]:
    """The names taken in a schema, read from the snapshot once and kept up to date."""

    def taken(schema: str) -> set[str]:
        return names.setdefault(schema, set(snapshot.relation_names(schema)))

    return taken


def _drop(index: IndexInfo) -> tuple[str, str]:
    """``DROP INDEX`` for ``index`` and what to know before running it."""
    if index.partitioned:
        return (
            f"DROP INDEX {index.qualified};",
            " A partitioned index cannot be dropped CONCURRENTLY: DROP INDEX drops it "
            f"with its partitions' indexes and holds an ACCESS EXCLUSIVE lock on "
            f"{index.table_display} and every partition until it commits (reads and writes "
            "wait): run it in a quiet moment, with a short lock_timeout "
            "(SET lock_timeout = '2s';) and retry if it times out.",
        )
    return (
        f"DROP INDEX CONCURRENTLY {index.qualified};",
        "",
    )


# -- fk-missing-index -------------------------------------------------------------------------


def _fk_served(
    fk: ForeignKeyInfo, table: TableInfo | None, snapshot: CatalogSnapshot
) -> bool | None:
    """Whether an index serves the foreign key's look-ups (``None``: unknown, some
    relation's indexes could not be read). On a partitioned table, a valid index on
    the table, or one on every partition."""
    if snapshot.is_skipped(fk.table_oid):
        return None
    if foreign_key_served(fk, snapshot.indexes_on(fk.table_oid)) is not None:
        return True
    if table is None or not table.partitioned:
        return False
    leaves = snapshot.leaf_partitions(table.oid)
    if not leaves:
        return False
    if any(snapshot.is_skipped(p.oid) for p in leaves):
        return None
    return all(foreign_key_served(fk, snapshot.indexes_on(p.oid)) is not None for p in leaves)


def fk_missing_index(
    snapshot: CatalogSnapshot, taken: dict[str, set[str]] | None = None
) -> list[Finding]:
    """Foreign keys whose columns lead no valid, non-partial index (on a partitioned
    table: neither on the table nor on each of its partitions)."""
    rule = RULES["fk-missing-index"]
    taken_in = _taken(snapshot, taken if taken is not None else {})
    out: list[Finding] = []
    for fk in snapshot.foreign_keys:
        child = snapshot.table_by_oid(fk.table_oid)
        if _fk_served(fk, child, snapshot) is not False:
            continue
        indexes = snapshot.indexes_on(fk.table_oid)
        used = taken_in(fk.schema)
        advice = foreign_key_advice(fk, used)
        used.add(advice.name)
        if child is not None and child.partitioned:
            statements = partitioned_index_statements(
                snapshot,
                child,
                advice.name,
                advice.columns_text,
                label_keys=advice.keys,
                taken=taken_in,
                reuse=functools.partial(_plain_index_on, columns=fk.columns),
            )
            recommendation = " ".join(statements) + " " + PARTITIONED_INDEX_NOTE
        else:
            statements = [advice.statement]
            recommendation = advice.statement + " " + CONCURRENTLY_NOTE
        parent = snapshot.table_by_oid(fk.ref_table_oid)
        cols = ", ".join(fk.columns)
        deletes = f"deleting a {fk.ref_display} row deletes its {fk.table_display} rows by "
        updates = f"deleting a {fk.ref_display} row updates its {fk.table_display} rows by "
        action = {"cascade": deletes, "set null": updates, "set default": updates}.get(
            fk.on_delete, f"deleting or re-keying a {fk.ref_display} row checks for references by "
        )
        size = f" (~{child.rows:,.0f} rows)" if child is not None and not child.partitioned else ""
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
            message += (
                f" ({', '.join(near)} start with it but are partial, invalid, not B-trees, "
                "or have another collation or operator class)"
            )
        out.append(
            rule.finding(
                message,
                recommendation,
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
                    "fix_sql": statements,
                },
            )
        )
    return out


def _plain_index_on(index: IndexInfo, columns: Sequence[str]) -> bool:
    """A plain B-tree on exactly ``columns``, in order (one that can be attached to the
    index dbprobe proposes for them)."""
    return (
        index.method == "btree"
        and not index.unique
        and index.predicate is None
        and not index.include_columns
        and index.column_names == tuple(columns)
        and all(
            c.opclass_default and c.collation is None and not c.descending and not c.nulls_first
            for c in index.key_columns
        )
    )


# -- duplicate-index ----------------------------------------------------------------------------


def _covers(a: IndexInfo, b: IndexInfo) -> bool:
    """Whether ``b`` does all of ``a``'s work (see the module docstring)."""
    if a.oid == b.oid or a.method != b.method or not (b.valid and b.ready):
        return False
    if a.partitioned != b.partitioned:
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
        # A unique index is only redundant next to one enforcing the same uniqueness
        # (same columns, and NULLs distinct or not alike).
        return b.unique and len(ka) == len(kb) and a.nulls_not_distinct == b.nulls_not_distinct
    return True


def _droppable(index: IndexInfo) -> bool:
    """Not a primary key, a constraint's index, the replica identity, an index a
    foreign key checks its references with, or a partition's index attached to a
    partitioned index (that one goes with its parent)."""
    return not (
        index.primary
        or index.exclusion
        or index.constraint_type is not None
        or index.replica_identity
        or index.referenced_by
        or index.parent_oid is not None
    )


def _identical(a: IndexInfo, b: IndexInfo) -> bool:
    return _covers(a, b) and _covers(b, a)


def index_scans(index: IndexInfo, snapshot: CatalogSnapshot) -> int | None:
    """Scans of ``index`` since the statistics were reset; for a partitioned index,
    those of its partitions' indexes (``None`` when unknown)."""
    if not index.partitioned:
        return index.idx_scan
    children = snapshot.attached_indexes(index.oid)
    if not children:
        return None
    total = 0
    for child in children:
        n = index_scans(child, snapshot)
        if n is None:
            return None
        total += n
    return total


def _duplicates(snapshot: CatalogSnapshot) -> list[tuple[IndexInfo, IndexInfo]]:
    """``(redundant index, index that stays)`` pairs.

    When every index that covers a scanned index is droppable and never scanned
    itself, nothing is reported here: the wider index is the one unused (and
    ``unused-index`` reports it), so the scanned one stays.
    """
    by_table: dict[int, list[IndexInfo]] = {}
    for index in snapshot.indexes:
        by_table.setdefault(index.table_oid, []).append(index)
    scans = {i.oid: index_scans(i, snapshot) for i in snapshot.indexes}
    out: list[tuple[IndexInfo, IndexInfo]] = []
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
                a_stays = (scans[a.oid] or 0, -a.oid) > (scans[b.oid] or 0, -b.oid)
                if _identical(a, b) and _droppable(b) and a_stays:
                    continue
                keepers.append(b)
            if keepers:
                covering[a.oid] = keepers
        for a in sorted(indexes, key=lambda i: (len(i.key_columns), i.oid)):
            covered_by = covering.get(a.oid)
            if not covered_by:
                continue
            # Name an index that stays (not itself redundant) when there is one, and
            # prefer one that is needed (a constraint's) or used.
            staying = [b for b in covered_by if b.oid not in covering] or covered_by
            needed = [b for b in staying if not _droppable(b) or scans[b.oid] != 0]
            if not needed and scans[a.oid] != 0:
                continue  # a is the one in use: the unscanned wider index should go
            b = sorted(needed or staying, key=lambda i: (len(i.key_columns), i.oid))[0]
            out.append((a, b))
    return out


def duplicate_indexes(snapshot: CatalogSnapshot) -> list[Finding]:
    """Indexes whose work another valid index already does (one finding each)."""
    rule = RULES["duplicate-index"]
    out: list[Finding] = []
    for a, b in _duplicates(snapshot):
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
        if a.partitioned:
            message += " (on every partition)"
        drop, caveat = _drop(a)
        out.append(
            rule.finding(
                message,
                drop + caveat,
                table=a.table_display,
                fingerprint=f"{a.schema}.{a.name}",
                evidence={
                    "index": a.name,
                    "definition": a.definition,
                    "covered_by": b.name,
                    "covered_by_definition": b.definition,
                    "size_bytes": a.size_bytes,
                    "idx_scan": index_scans(a, snapshot),
                    "covered_by_idx_scan": index_scans(b, snapshot),
                    "fix_sql": [drop],
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


def _prefix_in_use(index: IndexInfo, snapshot: CatalogSnapshot) -> IndexInfo | None:
    """A scanned index that ``index`` covers (its key columns lead ``index``'s)."""
    for other in snapshot.indexes_on(index.table_oid):
        if other.oid != index.oid and _covers(other, index) and index_scans(other, snapshot):
            return other
    return None


def unused_indexes(
    snapshot: CatalogSnapshot,
    options: CatalogRuleOptions | None = None,
    *,
    exclude: Iterable[str] = (),
) -> list[Finding]:
    """Droppable indexes with no scan since statistics were reset (``exclude``:
    ``schema.index`` names already reported, e.g. as duplicates, or named as the index
    that stays in their place, so one index gets one piece of advice and no two
    pieces of advice drop both an index and its replacement)."""
    opts = options or CatalogRuleOptions()
    rule = RULES["unused-index"]
    skip = set(exclude)
    stats = snapshot.stats
    age = stats.age if stats is not None else None
    age_text = stats.describe() if stats is not None else "statistics age unknown"
    young = age is None or age < opts.min_stats_age
    out: list[Finding] = []
    for index in snapshot.indexes:
        scans = index_scans(index, snapshot)
        if (
            scans != 0
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
        if index.partitioned:
            message += " (counting the indexes of every partition)"
        if writes:
            message += f"; meanwhile {writes:,} rows were written, each also updating it"
        prefix = _prefix_in_use(index, snapshot)
        if prefix is not None:
            message += (
                f"; {prefix.name} {prefix.columns_text}, which it covers, is the one in use "
                f"({index_scans(prefix, snapshot):,} scans)"
            )
        drop, caveat = _drop(index)
        replicas = (
            "idx_scan counts this server only: check pg_stat_user_indexes on every "
            "standby that serves reads first"
        )
        recent = (
            "an index created after the statistics were reset shows 0 scans too: make sure "
            "it is not new"
        )
        if young:
            wait = f"only {format_age(age)} old" if age is not None else "of unknown age"
            recommendation = (
                f"The statistics are {wait}: keep watching idx_scan in "
                "pg_stat_user_indexes over a full business cycle (month-end jobs, reports) "
                f"before dropping; then, if it is still 0 ({replicas}; {recent}): {drop}"
            )
        else:
            recommendation = (
                f"{drop} ({replicas}; {recent}; keep the definition to recreate it: "
                f"{index.definition})"
            )
        out.append(
            rule.finding(
                message,
                recommendation + caveat,
                table=index.table_display,
                fingerprint=f"{index.schema}.{index.name}",
                evidence={
                    "index": index.name,
                    "definition": index.definition,
                    "size_bytes": index.size_bytes,
                    "idx_scan": scans,
                    "table_writes": writes,
                    "stats_reset": stats.stats_reset if stats else None,
                    "stats_age_s": age.total_seconds() if age is not None else None,
                    "postmaster_start": stats.postmaster_start if stats else None,
                    "statistics_young": young,
                    "fix_sql": [drop],
                },
            )
        )
    return out


# -- invalid-index ------------------------------------------------------------------------------

_INDEX_KW = re.compile(r"^CREATE (UNIQUE )?INDEX ", re.IGNORECASE)
_REINDEX_LEFTOVER = re.compile(r"^(?P<base>.+)_cc(?P<kind>new|old)[0-9]*$")


def _reindex_leftover(index: IndexInfo, snapshot: CatalogSnapshot) -> tuple[str, IndexInfo] | None:
    """``("new"|"old", original index)`` when ``index`` is the transient copy (``_ccnew``)
    or the replaced original (``_ccold``) that an interrupted ``REINDEX CONCURRENTLY``
    left behind, and the index it was rebuilding is still on the table."""
    m = _REINDEX_LEFTOVER.match(index.name)
    if m is None:
        return None
    base = m.group("base")
    for other in snapshot.indexes_on(index.table_oid):
        if other.oid == index.oid or not other.valid:
            continue
        # the base name may have been cut to fit 63 bytes along with the suffix
        same_name = other.name == base or (
            len(index.name.encode()) >= 60 and other.name.startswith(base)
        )
        if (
            same_name
            and other.method == index.method
            and len(other.key_columns) == len(index.key_columns)
        ):
            return m.group("kind"), other
    return None


def invalid_indexes(snapshot: CatalogSnapshot) -> list[Finding]:
    """Indexes left invalid (or not ready) by a failed concurrent build, by what is
    left: the transient copy or the original of an interrupted ``REINDEX
    CONCURRENTLY``, a failed ``CREATE INDEX CONCURRENTLY``, or a partitioned index
    not attached to an index on every partition."""
    rule = RULES["invalid-index"]
    out: list[Finding] = []
    taken_in = _taken(snapshot, {})
    for index in snapshot.indexes:
        if index.valid and index.ready:
            continue
        drop = f"DROP INDEX CONCURRENTLY {index.qualified};"
        leftover = None if index.partitioned else _reindex_leftover(index, snapshot)
        if index.partitioned:
            message, recommendation, statements = _unattached(index, snapshot, taken_in)
        elif leftover is not None and leftover[0] == "new":
            original = leftover[1]
            message = (
                f"{index.name} on {index.table_display} is INVALID: it is the transient copy "
                f"an interrupted REINDEX INDEX CONCURRENTLY of {original.name} left behind "
                f"({original.name} itself is intact and in use); "
                + (
                    "writes still maintain it, so it costs every write"
                    if index.ready
                    else "writes do not maintain it, it only takes space"
                )
            )
            statements = [drop]
            recommendation = (
                f"{drop} (then, if {original.name} still needs its rebuild, run REINDEX "
                f"INDEX CONCURRENTLY {original.qualified}; again in a quieter moment)"
            )
        elif leftover is not None:
            original = leftover[1]
            message = (
                f"{index.name} on {index.table_display} is INVALID: it is the old version of "
                f"{original.name} that an interrupted REINDEX INDEX CONCURRENTLY could not "
                f"drop after swapping in the rebuilt {original.name}; the rebuild succeeded"
            )
            statements = [drop]
            recommendation = drop
        else:
            recreate = _INDEX_KW.sub(
                lambda m: f"CREATE {m.group(1) or ''}INDEX CONCURRENTLY ",
                index.definition,
                count=1,
            )
            statements = [drop, f"{recreate};"]
            if index.ready:
                state = (
                    "writes still maintain it, so it costs every write, but no query can "
                    "use it"
                    + (
                        " (it rejects new duplicates, but nothing checked the rows that were "
                        "there before)"
                        if index.unique
                        else ""
                    )
                )
            else:
                state = "writes do not maintain it and no query can use it; it only takes space" + (
                    " (and it does not enforce its uniqueness)" if index.unique else ""
                )
            message = (
                f"{index.name} on {index.table_display} is INVALID: a CREATE INDEX "
                f"CONCURRENTLY (or REINDEX CONCURRENTLY) failed or was interrupted; {state}"
            )
            recommendation = (
                f"{drop} {recreate}; (or rebuild it in place: REINDEX INDEX CONCURRENTLY "
                f"{index.qualified};)"
            )
            if index.unique:
                recommendation += (
                    " Remove the duplicate rows first (GROUP BY the indexed columns HAVING "
                    "count(*) > 1), or the build fails the same way."
                )
            recommendation += (
                " If a concurrent build of this index is running right now, it is invalid "
                "until it finishes: wait for it instead."
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
                    "valid": index.valid,
                    "ready": index.ready,
                    "size_bytes": index.size_bytes,
                    "reindex_leftover": leftover[1].name if leftover else None,
                    "fix_sql": statements,
                },
            )
        )
    return out


def _unattached(
    index: IndexInfo, snapshot: CatalogSnapshot, taken: Callable[[str], set[str]]
) -> tuple[str, str, list[str]]:
    """Message, recommendation and statements for an invalid partitioned index."""
    table = snapshot.table_by_oid(index.table_oid)
    attached = {i.table_oid for i in snapshot.attached_indexes(index.oid)}
    parts = snapshot.partitions_of(index.table_oid)
    missing = [p.display for p in parts if p.oid not in attached]
    message = (
        f"{index.name} {index.columns_text} on the partitioned table {index.table_display} is "
        f"INVALID: it is not attached to an index on every partition (created ON ONLY, or "
        f"a partition's index failed); missing: {', '.join(missing) or 'none (a partition'}"
        + ("" if missing else "'s own index is invalid)")
        + "; queries on the partitions use their own indexes, and new partitions get none"
    )
    if table is None:
        return (
            message,
            "Attach an index of each partition to it (ALTER INDEX … ATTACH PARTITION).",
            [],
        )
    keys = [
        IndexKey(column=c.name) if c.name is not None else IndexKey(expression=c.definition)
        for c in index.key_columns
    ]
    statements = partitioned_index_statements(
        snapshot,
        table,
        index.name,
        index.body_sql,
        label_keys=keys,
        taken=taken,
        unique=index.unique,
        existing=index,
        reuse=index.same_definition,
    )
    recommendation = " ".join(statements) + " " + PARTITIONED_INDEX_NOTE
    return message, recommendation, statements


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
        if t.kind not in ("r", "m") or t.seq_scan is None or snapshot.is_skipped(t.oid):
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
                    "fix_sql": found,
                },
            )
        )
    return out


def skipped_tables(snapshot: CatalogSnapshot) -> list[Finding]:
    """One ``check-skipped`` per table whose indexes could not be read (locked)."""
    rule = RULES["check-skipped"]
    return [
        rule.finding(
            f"index checks of {t.display} skipped: {t.reason}",
            "Rerun the audit once the lock is gone (a migration finished); pg_stat_activity "
            "shows the session holding or waiting for it.",
            table=t.display,
            fingerprint=f"check-skipped:catalog:{t.schema}.{t.name}",
            evidence={"check": "catalog", "table": f"{t.schema}.{t.name}", "pids": list(t.pids)},
        )
        for t in snapshot.skipped_tables
    ]


def check_catalog(
    snapshot: CatalogSnapshot,
    options: CatalogRuleOptions | None = None,
    *,
    advice: Mapping[str, Sequence[str]] | None = None,
) -> list[Finding]:
    """Every catalog rule. An index reported as a duplicate is not also reported
    unused, nor is the index named as the one that stays in its place."""
    pairs = _duplicates(snapshot)
    duplicates = duplicate_indexes(snapshot)
    exclude = {f"{a.schema}.{a.name}" for a, _ in pairs} | {
        f"{b.schema}.{b.name}" for _, b in pairs
    }
    return [
        *skipped_tables(snapshot),
        *fk_missing_index(snapshot),
        *duplicates,
        *unused_indexes(snapshot, options, exclude=exclude),
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
