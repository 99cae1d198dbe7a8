"""Read a :class:`~dbprobe.analysis.catalog.CatalogSnapshot` from a live database.

Index structure comes from ``pg_index``'s typed arrays (``indkey``, ``indclass``,
``indoption``, ``indcollation``, ``indnkeyatts``) and per-column deparsing
(``pg_get_indexdef(index, k, true)``), never from regular expressions over the index
definition, so INCLUDE columns, operator classes, collations, expressions and partial
indexes come out right. Sizes are ``relpages × block_size`` (``pg_relation_size()``
would lock).

Locks: the catalog queries take none, except the deparsing functions
(``pg_get_indexdef``, ``pg_get_expr``), which take ACCESS SHARE on the index's table
and so wait behind an ACCESS EXCLUSIVE lock held *or queued* (a migration's ``ALTER
TABLE`` waiting for its turn). Tables with such a lock in ``pg_locks`` are left out of
the deparsing and reported in ``CatalogSnapshot.skipped_tables``; a lock taken in
between costs at most the session's ``lock_timeout`` before the tables are deparsed one
by one, each locked one skipped the same way. Nothing waits longer than
``lock_timeout``, and one locked table never fails the whole read.

On a connection inside a transaction, every query runs in a savepoint, so a failure
never aborts the caller's transaction.

Every statement carries the ``/* dbprobe-audit */`` marker, so the audit can recognise
(and skip) its own statements in ``pg_stat_statements``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psycopg

from dbprobe.analysis.catalog import (
    CatalogSnapshot,
    ColumnInfo,
    ForeignKeyInfo,
    IndexColumn,
    IndexInfo,
    SkippedTable,
    StatsAge,
    TableInfo,
)

log = logging.getLogger("dbprobe.audit")

MARKER = "/* dbprobe-audit */"


def marked(sql: str) -> str:
    """``sql`` with :data:`MARKER` after its first word: ``SELECT /* dbprobe-audit */ …``.

    Not in front: pg_stat_statements on PostgreSQL 18 drops leading comments.
    """
    head, _, rest = sql.lstrip().partition(" ")
    return f"{head} {MARKER} {rest}"


# Schemas that are never the application's.
_SYSTEM_SCHEMAS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%'
    AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""
# Relations created by an extension (e.g. a monitoring extension's tables) are not
# the application's either.
_NOT_EXTENSION = """
    NOT EXISTS (
        SELECT 1 FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
    )
"""

_FK_ACTIONS = {
    "a": "no action",
    "r": "restrict",
    "c": "cascade",
    "n": "set null",
    "d": "set default",
}


def _tables_sql(version_num: int) -> str:
    last = (
        "s.last_seq_scan, s.last_idx_scan"
        if version_num >= 160000
        else "NULL::timestamptz, NULL::timestamptz"
    )
    return marked(
        f"""
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
       c.reltuples::float8, c.relpages::int8, c.relreplident::text,
       s.seq_scan, s.seq_tup_read, s.idx_scan, s.idx_tup_fetch, s.n_live_tup,
       s.n_tup_ins, s.n_tup_upd, s.n_tup_del, {last},
       (SELECT h.inhparent::int8 FROM pg_inherits h
         WHERE h.inhrelid = c.oid AND c.relispartition LIMIT 1)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'p', 'm') AND {_SYSTEM_SCHEMAS} AND {_NOT_EXTENSION}
ORDER BY n.nspname, c.relname
"""
    )


_COLUMNS_SQL = marked(
    f"""
SELECT a.attrelid::int8, a.attname::text, format_type(a.atttypid, a.atttypmod),
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
            ELSE format_type(a.atttypid, a.atttypmod) END,
       co.collname::text, a.attnotnull
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE c.relkind IN ('r', 'p', 'm') AND a.attnum > 0 AND NOT a.attisdropped
  AND {_SYSTEM_SCHEMAS} AND {_NOT_EXTENSION}
ORDER BY a.attrelid, a.attnum
"""
)

# The planner's column statistics (rows only for the tables this role may read): a
# partitioned table's are those of its whole tree (``inherited``).
_COLUMN_STATS_SQL = marked(
    """
SELECT s.schemaname::text, s.tablename::text, s.attname::text, s.inherited,
       s.null_frac::float8, s.n_distinct::float8
FROM pg_stats s
WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema')
"""
)

# Other relations of the application's schemas (sequences, views, composite types,
# foreign tables): a new index cannot take their names.
_OTHER_RELATIONS_SQL = marked(
    f"""
SELECT n.nspname::text, c.relname::text
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind NOT IN ('r', 'p', 'm', 'i', 'I', 't') AND {_SYSTEM_SCHEMAS}
ORDER BY 1, 2
"""
)


def _indexes_sql(version_num: int) -> str:
    """Index structure, from catalog columns only (nothing here takes a lock)."""
    last = "st.last_idx_scan" if version_num >= 160000 else "NULL::timestamptz"
    nnd = "i.indnullsnotdistinct" if version_num >= 150000 else "false"
    return marked(
        f"""
SELECT i.indexrelid::int8, n.nspname::text, c.relname::text,
       i.indrelid::int8, tn.nspname::text, tc.relname::text, am.amname::text,
       i.indnkeyatts::int, i.indisunique, i.indisprimary, i.indisexclusion,
       i.indisvalid, i.indisready, i.indisreplident, {nnd},
       ARRAY(SELECT a.attname::text
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
             LEFT JOIN pg_attribute a
                    ON a.attrelid = i.indrelid AND a.attnum = u.attnum AND u.attnum > 0
             ORDER BY u.ord),
       ARRAY(SELECT oc.opcname::text
             FROM unnest(i.indclass::oid[]) WITH ORDINALITY AS u(opc, ord)
             LEFT JOIN pg_opclass oc ON oc.oid = u.opc
             ORDER BY u.ord),
       ARRAY(SELECT coalesce(oc.opcdefault, true)
             FROM unnest(i.indclass::oid[]) WITH ORDINALITY AS u(opc, ord)
             LEFT JOIN pg_opclass oc ON oc.oid = u.opc
             ORDER BY u.ord),
       ARRAY(SELECT CASE
                      WHEN u.coll = 0 THEN NULL
                      WHEN a.attcollation = u.coll THEN NULL
                      WHEN a.attnum IS NULL AND u.coll = 100 THEN NULL
                      ELSE co.collname::text
                    END
             FROM unnest(i.indcollation::oid[]) WITH ORDINALITY AS u(coll, ord)
             LEFT JOIN pg_collation co ON co.oid = u.coll
             LEFT JOIN pg_attribute a
                    ON a.attrelid = i.indrelid AND a.attnum = i.indkey[u.ord - 1]
                   AND i.indkey[u.ord - 1] > 0
             ORDER BY u.ord),
       ARRAY(SELECT u.opt::int
             FROM unnest(i.indoption::int2[]) WITH ORDINALITY AS u(opt, ord)
             ORDER BY u.ord),
       con.conname::text, con.contype::text,
       c.relpages::int8 * current_setting('block_size')::int8,
       st.idx_scan, {last},
       c.relkind = 'I',
       (SELECT h.inhparent::int8 FROM pg_inherits h
         WHERE h.inhrelid = i.indexrelid AND c.relispartition LIMIT 1),
       coalesce(fk.names, ARRAY[]::text[])
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class tc ON tc.oid = i.indrelid
JOIN pg_namespace tn ON tn.oid = tc.relnamespace
JOIN pg_am am ON am.oid = c.relam
LEFT JOIN pg_constraint con
       ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
      AND con.contype IN ('p', 'u', 'x')
LEFT JOIN pg_stat_all_indexes st ON st.indexrelid = i.indexrelid
LEFT JOIN (
    SELECT f.conindid, array_agg(f.conname::text ORDER BY f.conname) AS names
    FROM pg_constraint f WHERE f.contype = 'f' AND f.conparentid = 0
    GROUP BY f.conindid
) fk ON fk.conindid = i.indexrelid
WHERE tc.relkind IN ('r', 'p', 'm') AND {_SYSTEM_SCHEMAS.replace("n.", "tn.")}
  AND {_NOT_EXTENSION.replace("c.oid", "tc.oid")}
ORDER BY tn.nspname, tc.relname, c.relname
"""
    )


# The deparsed texts: these functions lock the index's table (ACCESS SHARE).
_DEPARSE_SQL = marked(
    """
SELECT i.indexrelid::int8,
       pg_get_expr(i.indpred, i.indrelid, true),
       ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
             FROM generate_series(1, i.indnatts::int) AS k ORDER BY k),
       pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indexrelid::int8 = ANY(%s::int8[])
"""
)

# Tables an ACCESS SHARE lock would wait for: ACCESS EXCLUSIVE held or queued on the
# table or on one of its indexes, by another session.
_LOCKED_SQL = marked(
    """
SELECT coalesce(x.indrelid, l.relation)::int8, array_agg(DISTINCT l.pid)
FROM pg_locks l
LEFT JOIN pg_index x ON x.indexrelid = l.relation
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid IS DISTINCT FROM pg_backend_pid()
GROUP BY 1
"""
)

_FKS_SQL = marked(
    f"""
SELECT con.oid::int8, con.conname::text, n.nspname::text, c.relname::text, c.oid::int8,
       ARRAY(SELECT a.attname::text
             FROM unnest(con.conkey) WITH ORDINALITY AS u(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = u.attnum
             ORDER BY u.ord),
       rn.nspname::text, rc.relname::text, rc.oid::int8,
       ARRAY(SELECT a.attname::text
             FROM unnest(con.confkey) WITH ORDINALITY AS u(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = u.attnum
             ORDER BY u.ord),
       con.confdeltype::text, con.confupdtype::text
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class rc ON rc.oid = con.confrelid
JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.contype = 'f' AND con.conparentid = 0 AND {_SYSTEM_SCHEMAS}
  AND {_NOT_EXTENSION}
ORDER BY n.nspname, c.relname, con.conname
"""
)

_STATS_SQL = marked(
    """
SELECT now(), pg_postmaster_start_time(),
       (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
       current_setting('block_size')::int, current_database()::text,
       current_setting('server_version_num')::int,
       (SELECT datcollate FROM pg_database WHERE datname = current_database())::text
"""
)

# Errors that mean "a lock was not granted in time" (lock_timeout, or statement_timeout
# while waiting): the table is skipped, not the whole read.
_LOCK_SQLSTATES = frozenset({"55P03", "57014"})


@contextlib.contextmanager
def statement_scope(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A savepoint around a statement when the connection is inside a transaction (so
    a failure leaves the caller's transaction usable); nothing in autocommit, where
    each statement ends on its own and releases its locks at once."""
    if conn.autocommit:
        yield
        return
    with conn.transaction():
        yield


def _fetch(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with statement_scope(conn):
        return list(conn.execute(sql.encode() if params is None else sql, params).fetchall())


def read_snapshot(conn: psycopg.Connection[Any]) -> CatalogSnapshot:
    """Read tables, columns, indexes, foreign keys and statistics age of the connected
    database.

    Nine catalog queries whatever the number of relations (1,000 tables: ~0.5 s), plus
    one per table only when a lock appears while the index definitions are read.
    System schemas and extension-owned relations are left out. Tables locked in ACCESS
    EXCLUSIVE mode are listed in ``skipped_tables`` without their indexes (see the
    module docstring). Raises ``psycopg.Error`` only for failures that are not locks.
    """
    row = _fetch(conn, _STATS_SQL)[0]
    now, started, reset, block_size, database, version_num, collate = row
    stats = StatsAge(now=now, stats_reset=reset, postmaster_start=started)
    column_rows: dict[int, list[tuple[Any, ...]]] = {}
    for r in _fetch(conn, _COLUMNS_SQL):
        column_rows.setdefault(r[0], []).append(r[1:])
    column_stats = {
        (schema, table, column, bool(inherited)): (null_frac, n_distinct)
        for schema, table, column, inherited, null_frac, n_distinct in _fetch(
            conn, _COLUMN_STATS_SQL
        )
    }
    tables = []
    for r in _fetch(conn, _tables_sql(version_num)):
        (oid, schema, name, kind) = r[:4]
        columns = tuple(
            _column(c, column_stats.get((schema, name, c[0], kind == "p")))
            for c in column_rows.get(oid, ())
        )
        tables.append(_table(r, block_size, columns))
    structure = _fetch(conn, _indexes_sql(version_num))
    fks = tuple(_foreign_key(r) for r in _fetch(conn, _FKS_SQL))
    others = tuple((str(s), str(n)) for s, n in _fetch(conn, _OTHER_RELATIONS_SQL))

    by_oid = {t.oid: t for t in tables}
    locked = {int(oid): tuple(int(p) for p in pids) for oid, pids in _fetch(conn, _LOCKED_SQL)}
    skipped: dict[int, SkippedTable] = {}
    for oid, pids in locked.items():
        table = by_oid.get(oid)
        if table is not None:
            skipped[oid] = _skipped(table, pids, "an ACCESS EXCLUSIVE lock is held or queued")
    wanted = [r for r in structure if r[3] not in skipped]
    texts = _deparse(conn, wanted, by_oid, skipped)
    indexes = tuple(_index(r, texts[r[0]]) for r in structure if r[0] in texts)
    log.debug(
        "catalog snapshot: %d tables, %d indexes, %d foreign keys, %d tables skipped",
        len(tables),
        len(indexes),
        len(fks),
        len(skipped),
    )
    return CatalogSnapshot(
        database=database,
        server_version_num=version_num,
        tables=tuple(tables),
        indexes=indexes,
        foreign_keys=fks,
        stats=stats,
        block_size=block_size,
        skipped_tables=tuple(skipped.values()),
        other_relations=others,
        default_collation_c=str(collate) in ("C", "POSIX"),
    )


_Texts = tuple[str | None, list[str], str]


def _deparse(
    conn: psycopg.Connection[Any],
    rows: list[tuple[Any, ...]],
    tables: dict[int, TableInfo],
    skipped: dict[int, SkippedTable],
) -> dict[int, _Texts]:
    """Deparsed predicate, columns and definition of each index, by index oid: all at
    once, or, when a lock gets in the way, table by table (locked tables are added to
    ``skipped``)."""
    if not rows:
        return {}
    try:
        found = _fetch(conn, _DEPARSE_SQL, ([r[0] for r in rows],))
    except psycopg.Error as exc:
        if getattr(exc, "sqlstate", None) not in _LOCK_SQLSTATES:
            raise
        log.debug("deparsing index definitions waited for a lock; going table by table")
    else:
        return {int(r[0]): (r[1], list(r[2]), str(r[3])) for r in found}
    by_table: dict[int, list[int]] = {}
    for r in rows:
        by_table.setdefault(int(r[3]), []).append(int(r[0]))
    out: dict[int, _Texts] = {}
    for table_oid, oids in by_table.items():
        try:
            found = _fetch(conn, _DEPARSE_SQL, (oids,))
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) not in _LOCK_SQLSTATES:
                raise
            table = tables.get(table_oid)
            if table is not None:
                skipped[table_oid] = _skipped(table, (), _first_line(exc))
            continue
        out.update({int(r[0]): (r[1], list(r[2]), str(r[3])) for r in found})
    return out


def _skipped(table: TableInfo, pids: tuple[int, ...], why: str) -> SkippedTable:
    who = f" (pid {', '.join(str(p) for p in pids)})" if pids else ""
    return SkippedTable(
        oid=table.oid,
        schema=table.schema,
        name=table.name,
        reason=f"{why}{who}; reading its index definitions would wait for it",
        pids=pids,
    )


def _first_line(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    text = str(getattr(diag, "message_primary", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _column(r: tuple[Any, ...], stats: tuple[Any, Any] | None) -> ColumnInfo:
    name, type_, base, collation, not_null = r
    null_frac, n_distinct = stats or (None, None)
    return ColumnInfo(
        name=name,
        type=type_,
        base_type=base,
        collation=collation,
        not_null=bool(not_null),
        null_frac=null_frac,
        n_distinct=n_distinct,
    )


def _table(r: tuple[Any, ...], block_size: int, columns: tuple[ColumnInfo, ...]) -> TableInfo:
    (oid, schema, name, kind, reltuples, relpages, replident) = r[:7]
    (seq_scan, seq_tup_read, idx_scan, idx_tup_fetch, n_live) = r[7:12]
    (ins, upd, dele, last_seq, last_idx, parent) = r[12:18]
    rows = float(reltuples)
    if rows < 0:  # never vacuumed or analysed (PostgreSQL 14+ says -1)
        rows = float(n_live or 0)
    return TableInfo(
        oid=oid,
        schema=schema,
        name=name,
        kind=kind,
        rows=rows,
        pages=relpages,
        size_bytes=relpages * block_size,
        seq_scan=seq_scan,
        seq_tup_read=seq_tup_read,
        idx_scan=idx_scan,
        idx_tup_fetch=idx_tup_fetch,
        n_live_tup=n_live,
        n_tup_ins=ins,
        n_tup_upd=upd,
        n_tup_del=dele,
        last_seq_scan=last_seq,
        last_idx_scan=last_idx,
        replica_identity=replident,
        parent_oid=parent,
        columns=columns,
    )


def _index(r: tuple[Any, ...], texts: _Texts) -> IndexInfo:
    (oid, schema, name, table_oid, table_schema, table_name, method, nkey) = r[:8]
    (unique, primary, exclusion, valid, ready, replident, nnd) = r[8:15]
    (names, opclasses, opc_defaults, collations, options) = r[15:20]
    (conname, contype, size, idx_scan, last_idx) = r[20:25]
    (partitioned, parent, referenced_by) = r[25:28]
    predicate, defs, definition = texts
    keys = []
    for k in range(nkey):
        opt = options[k] if k < len(options) else 0
        keys.append(
            IndexColumn(
                definition=defs[k],
                name=names[k],
                opclass=opclasses[k] if k < len(opclasses) else None,
                opclass_default=bool(opc_defaults[k]) if k < len(opc_defaults) else True,
                collation=collations[k] if k < len(collations) else None,
                descending=bool(opt & 1),
                nulls_first=bool(opt & 2),
            )
        )
    include = tuple(str(n) for n in names[nkey:])
    return IndexInfo(
        oid=oid,
        schema=schema,
        name=name,
        table_oid=table_oid,
        table_schema=table_schema,
        table_name=table_name,
        method=method,
        key_columns=tuple(keys),
        include_columns=include,
        predicate=predicate,
        unique=unique,
        primary=primary,
        exclusion=exclusion,
        valid=valid,
        ready=ready,
        replica_identity=replident,
        constraint_name=conname,
        constraint_type=contype,
        size_bytes=size or 0,
        idx_scan=idx_scan,
        last_idx_scan=last_idx,
        definition=definition,
        nulls_not_distinct=bool(nnd),
        referenced_by=tuple(referenced_by or ()),
        partitioned=bool(partitioned),
        parent_oid=parent,
    )


def _foreign_key(r: tuple[Any, ...]) -> ForeignKeyInfo:
    (oid, name, schema, table, table_oid, cols, rschema, rtable, rtable_oid, rcols) = r[:10]
    deltype, updtype = r[10:12]
    return ForeignKeyInfo(
        oid=oid,
        name=name,
        schema=schema,
        table=table,
        table_oid=table_oid,
        columns=tuple(cols),
        ref_schema=rschema,
        ref_table=rtable,
        ref_table_oid=rtable_oid,
        ref_columns=tuple(rcols),
        on_delete=_FK_ACTIONS.get(deltype, deltype),
        on_update=_FK_ACTIONS.get(updtype, updtype),
    )
