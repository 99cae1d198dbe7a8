"""Typed snapshots of the system catalog and the statistics views.

:mod:`dbprobe.audit.catalog` fills these from ``pg_class``, ``pg_index`` (its typed
arrays ``indkey``, ``indclass``, ``indoption``, ``indcollation``, ``indnkeyatts``, and
``indexprs``/``indpred`` deparsed per column), ``pg_constraint`` and
``pg_stat_all_tables``/``pg_stat_all_indexes``. The analysis modules only read them, so
they are tested on snapshots saved as JSON (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def quote_ident(name: str) -> str:
    """An SQL identifier, quoted only when PostgreSQL needs it (as ``quote_ident()``).

    Lower-case ASCII letters, digits and ``_`` (not a digit first) stay bare unless the
    word is a keyword that is not unreserved.
    """
    if (
        name
        and (name[0].islower() or name[0] == "_")
        and name.isascii()
        and all(c.islower() or c.isdigit() or c == "_" for c in name)
        and name not in NON_UNRESERVED_KEYWORDS
    ):
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``schema.name`` with each part quoted only when needed."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def display_name(schema: str, name: str) -> str:
    """How a relation is named in messages: bare in ``public``, qualified elsewhere."""
    return name if schema == "public" else f"{schema}.{name}"


@dataclasses.dataclass(frozen=True)
class ColumnInfo:
    """A table column: its type as ``format_type()`` prints it (``character varying(20)``),
    the base type of a domain (``base_type``, the type itself otherwise), its collation
    (``None`` for types without one) and, when ``pg_stats`` is readable, the planner's
    statistics: ``null_frac`` (share of NULLs) and ``n_distinct`` (distinct values;
    negative: minus that share of the rows)."""

    name: str
    type: str
    base_type: str = ""
    collation: str | None = None
    not_null: bool = False
    null_frac: float | None = None
    n_distinct: float | None = None

    def rows_per_value(self, table_rows: float) -> float | None:
        """Rows an equality on this column keeps on average (``None``: no statistics)."""
        if self.n_distinct is None or self.n_distinct == 0:
            return None
        distinct = self.n_distinct if self.n_distinct > 0 else -self.n_distinct * table_rows
        non_null = table_rows * (1.0 - (self.null_frac or 0.0))
        return non_null / max(distinct, 1.0)


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """A table (``r``), partitioned table (``p``) or materialized view (``m``).

    rows: the planner's estimate (``pg_class.reltuples``; the live-tuple count when the
    table was never analysed). Counters (``seq_scan`` ...) are ``None`` when the
    statistics are not readable. size_bytes: ``relpages × block_size`` (no lock taken).
    parent_oid: the partitioned table this one is a partition of; columns: in
    ``attnum`` order (empty in snapshots saved before they were read).
    """

    oid: int
    schema: str
    name: str
    kind: str = "r"
    rows: float = 0.0
    pages: int = 0
    size_bytes: int = 0
    seq_scan: int | None = None
    seq_tup_read: int | None = None
    idx_scan: int | None = None
    idx_tup_fetch: int | None = None
    n_live_tup: int | None = None
    n_tup_ins: int | None = None
    n_tup_upd: int | None = None
    n_tup_del: int | None = None
    last_seq_scan: _dt.datetime | None = None
    last_idx_scan: _dt.datetime | None = None
    replica_identity: str = "d"
    parent_oid: int | None = None
    columns: tuple[ColumnInfo, ...] = ()

    @property
    def qualified(self) -> str:
        return qualified(self.schema, self.name)

    @property
    def display(self) -> str:
        return display_name(self.schema, self.name)

    @property
    def partitioned(self) -> bool:
        return self.kind == "p"

    def column(self, name: str) -> ColumnInfo | None:
        """The column called ``name`` (``None`` when unknown)."""
        for c in self.columns:
            if c.name == name:
                return c
        return None


@dataclasses.dataclass(frozen=True)
class IndexColumn:
    """One column of an index, from ``pg_index``'s typed arrays.

    name: the table column, or ``None`` for an expression; definition: the column as
    ``pg_get_indexdef(index, k, true)`` deparses it (a name or an expression);
    opclass: operator class name, ``opclass_default`` whether it is the type's default;
    collation: collation name when it differs from the column's default (``None``
    otherwise); descending / nulls_first: ``indoption`` bits.
    """

    definition: str
    name: str | None = None
    opclass: str | None = None
    opclass_default: bool = True
    collation: str | None = None
    descending: bool = False
    nulls_first: bool = False

    @property
    def is_expression(self) -> bool:
        return self.name is None

    def decorated(self, text: str) -> str:
        """``text`` (the column as written) with what distinguishes this index column:
        a non-default collation or operator class, and a non-default order."""
        if self.collation:
            text += f" COLLATE {quote_ident(self.collation)}"
        if self.opclass and not self.opclass_default:
            text += f" {self.opclass}"
        if self.descending:
            text += " DESC" + ("" if self.nulls_first else " NULLS LAST")
        elif self.nulls_first:
            text += " NULLS FIRST"
        return text

    def equivalent(self, other: IndexColumn) -> bool:
        """Same column or expression, operator class, collation and ordering."""
        return (
            self.definition == other.definition
            and self.name == other.name
            and self.opclass == other.opclass
            and self.collation == other.collation
            and self.descending == other.descending
            and self.nulls_first == other.nulls_first
        )


@dataclasses.dataclass(frozen=True)
class IndexInfo:
    """An index with its key columns, INCLUDE columns, predicate and usage.

    constraint_type: ``p`` (primary key), ``u`` (unique), ``x`` (exclusion) when the
    index backs a constraint. idx_scan: scans since statistics were reset (``None``
    when unreadable; always ``None`` for a partitioned index, whose partitions' indexes
    are counted instead). nulls_not_distinct: a unique index that treats NULLs as equal
    (PostgreSQL 15+). referenced_by: foreign keys that use this unique index to check
    their references (``pg_constraint.conindid``): it cannot be dropped while they
    exist. partitioned: an index on a partitioned table (``relkind = 'I'``);
    parent_oid: the partitioned index this partition's index is attached to.
    """

    oid: int
    schema: str
    name: str
    table_oid: int
    table_schema: str
    table_name: str
    method: str = "btree"
    key_columns: tuple[IndexColumn, ...] = ()
    include_columns: tuple[str, ...] = ()
    predicate: str | None = None
    unique: bool = False
    primary: bool = False
    exclusion: bool = False
    valid: bool = True
    ready: bool = True
    replica_identity: bool = False
    constraint_name: str | None = None
    constraint_type: str | None = None
    size_bytes: int = 0
    idx_scan: int | None = None
    last_idx_scan: _dt.datetime | None = None
    definition: str = ""
    nulls_not_distinct: bool = False
    referenced_by: tuple[str, ...] = ()
    partitioned: bool = False
    parent_oid: int | None = None

    @property
    def qualified(self) -> str:
        return qualified(self.schema, self.name)

    @property
    def table_qualified(self) -> str:
        return qualified(self.table_schema, self.table_name)

    @property
    def table_display(self) -> str:
        return display_name(self.table_schema, self.table_name)

    @property
    def column_names(self) -> tuple[str | None, ...]:
        """Key column names in order (``None`` for an expression)."""
        return tuple(c.name for c in self.key_columns)

    @property
    def columns_text(self) -> str:
        """The key columns as written, with what distinguishes them: ``(customer_id,
        created_at DESC)``, ``(c COLLATE "C")``, ``(c text_pattern_ops) INCLUDE (b)``."""
        parts = []
        for c in self.key_columns:
            parts.append(c.decorated(c.definition))
        text = "(" + ", ".join(parts) + ")"
        if self.include_columns:
            text += " INCLUDE (" + ", ".join(quote_ident(c) for c in self.include_columns) + ")"
        if self.nulls_not_distinct:
            text += " NULLS NOT DISTINCT"
        return text

    @property
    def body_sql(self) -> str:
        """What follows ``ON table`` in a ``CREATE INDEX`` that rebuilds this index:
        ``USING gist (a, (lower(b)) text_pattern_ops) INCLUDE (c) WHERE (d > 0)`` (the
        method only when it is not a B-tree)."""
        parts = []
        for c in self.key_columns:
            parts.append(
                c.decorated(quote_ident(c.name) if c.name is not None else f"({c.definition})")
            )
        text = "USING " + self.method + " " if self.method != "btree" else ""
        text += "(" + ", ".join(parts) + ")"
        if self.include_columns:
            text += " INCLUDE (" + ", ".join(quote_ident(c) for c in self.include_columns) + ")"
        if self.nulls_not_distinct:
            text += " NULLS NOT DISTINCT"
        if self.predicate:
            text += f" WHERE ({self.predicate})"
        return text

    def same_definition(self, other: IndexInfo) -> bool:
        """Same method, uniqueness, key columns (with operator classes, collations and
        ordering), INCLUDE columns and predicate: what ``ATTACH PARTITION`` requires."""
        return (
            self.method == other.method
            and self.unique == other.unique
            and self.nulls_not_distinct == other.nulls_not_distinct
            and len(self.key_columns) == len(other.key_columns)
            and all(
                a.equivalent(b) for a, b in zip(self.key_columns, other.key_columns, strict=True)
            )
            and self.include_columns == other.include_columns
            and (self.predicate or None) == (other.predicate or None)
        )

    @property
    def enforces_constraint(self) -> bool:
        """Whether dropping it would drop or weaken a constraint (PK, unique, exclusion)
        or the table's replica identity."""
        return (
            self.unique
            or self.primary
            or self.exclusion
            or self.constraint_type is not None
            or self.replica_identity
            or bool(self.referenced_by)
        )


@dataclasses.dataclass(frozen=True)
class ForeignKeyInfo:
    """A foreign key: ``table (columns) REFERENCES ref_table (ref_columns)``.

    on_delete / on_update: ``pg_constraint.confdeltype`` letters spelled out
    (``no action``, ``restrict``, ``cascade``, ``set null``, ``set default``).
    """

    oid: int
    name: str
    schema: str
    table: str
    table_oid: int
    columns: tuple[str, ...]
    ref_schema: str
    ref_table: str
    ref_table_oid: int
    ref_columns: tuple[str, ...]
    on_delete: str = "no action"
    on_update: str = "no action"

    @property
    def table_display(self) -> str:
        return display_name(self.schema, self.table)

    @property
    def ref_display(self) -> str:
        return display_name(self.ref_schema, self.ref_table)


@dataclasses.dataclass(frozen=True)
class StatsAge:
    """How old the cumulative statistics are.

    stats_reset: ``pg_stat_database.stats_reset`` (``None``: never reset, so the
    counters run since the cluster was initialised or last recovered from a crash);
    postmaster_start: ``pg_postmaster_start_time()``; now: the server's clock.
    """

    now: _dt.datetime
    stats_reset: _dt.datetime | None = None
    postmaster_start: _dt.datetime | None = None

    @property
    def age(self) -> _dt.timedelta | None:
        """How long the counters have been collecting: since the reset, or (never
        reset) at least since the server started; ``None`` when unknown."""
        if self.stats_reset is not None:
            return self.now - self.stats_reset
        if self.postmaster_start is not None:
            return self.now - self.postmaster_start
        return None

    def describe(self) -> str:
        """``statistics reset 3 days ago (2026-11-24 10:00 UTC)`` and the like."""
        if self.stats_reset is not None:
            return (
                f"statistics reset {format_age(self.now - self.stats_reset)} ago "
                f"({_utc(self.stats_reset)})"
            )
        if self.postmaster_start is not None:
            return (
                "statistics never reset: they cover at least the "
                f"{format_age(self.now - self.postmaster_start)} since the server started "
                f"({_utc(self.postmaster_start)})"
            )
        return "statistics age unknown"


def _utc(moment: _dt.datetime) -> str:
    return f"{moment.astimezone(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


def format_age(delta: _dt.timedelta) -> str:
    """A short human duration: ``42 s``, ``17 min``, ``5.2 h``, ``12 days``."""
    seconds = max(0.0, delta.total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


@dataclasses.dataclass(frozen=True)
class SkippedTable:
    """A table whose indexes could not be read: reading index definitions
    (``pg_get_indexdef``) waits for a lock that someone holds or waits for in
    ACCESS EXCLUSIVE mode (a migration). reason: one line; pids: the sessions involved."""

    oid: int
    schema: str
    name: str
    reason: str
    pids: tuple[int, ...] = ()

    @property
    def display(self) -> str:
        return display_name(self.schema, self.name)


@dataclasses.dataclass(frozen=True)
class CatalogSnapshot:
    """Everything the catalog rules and the plan analysis need about one database.

    skipped_tables: tables whose indexes are missing from ``indexes`` (locked while the
    catalog was read): no rule may conclude anything about their indexes.
    other_relations: ``(schema, name)`` of relations that are neither tables nor
    indexes (sequences, views, ...), whose names an index cannot take either.
    default_collation_c: the database's default collation compares bytes (``C`` or
    ``POSIX``), so a plain B-tree serves ``LIKE 'prefix%'``.
    """

    database: str
    server_version_num: int
    tables: tuple[TableInfo, ...] = ()
    indexes: tuple[IndexInfo, ...] = ()
    foreign_keys: tuple[ForeignKeyInfo, ...] = ()
    stats: StatsAge | None = None
    block_size: int = 8192
    skipped_tables: tuple[SkippedTable, ...] = ()
    other_relations: tuple[tuple[str, str], ...] = ()
    default_collation_c: bool = False

    def table(self, schema: str | None, name: str) -> TableInfo | None:
        """The table called ``name`` (in ``schema``; any schema when ``None`` and unique)."""
        by_name: dict[str, list[TableInfo]] | None = self.__dict__.get("_by_name")
        if by_name is None:
            by_name = {}
            for t in self.tables:
                by_name.setdefault(t.name, []).append(t)
            object.__setattr__(self, "_by_name", by_name)
        found = [t for t in by_name.get(name, ()) if schema is None or t.schema == schema]
        return found[0] if len(found) == 1 else None

    def table_by_oid(self, oid: int) -> TableInfo | None:
        return self._tables_by_oid().get(oid)

    def indexes_on(self, table_oid: int) -> tuple[IndexInfo, ...]:
        return self._indexes_by_table().get(table_oid, ())

    def relation_names(self, schema: str) -> frozenset[str]:
        """Every relation name in ``schema``: tables, indexes, sequences, views ...
        (for picking a free index name)."""
        return frozenset(
            [t.name for t in self.tables if t.schema == schema]
            + [i.name for i in self.indexes if i.schema == schema]
            + [name for s, name in self.other_relations if s == schema]
        )

    def index_by_oid(self, oid: int) -> IndexInfo | None:
        cache: dict[int, IndexInfo] | None = self.__dict__.get("_idx_by_oid")
        if cache is None:
            cache = {i.oid: i for i in self.indexes}
            object.__setattr__(self, "_idx_by_oid", cache)
        return cache.get(oid)

    def partitions_of(self, table_oid: int) -> tuple[TableInfo, ...]:
        """The direct partitions of a partitioned table, by name."""
        return tuple(
            sorted(
                (t for t in self.tables if t.parent_oid == table_oid),
                key=lambda t: (t.schema, t.name),
            )
        )

    def leaf_partitions(self, table_oid: int) -> tuple[TableInfo, ...]:
        """Every partition that holds rows (partitions of partitions, recursively)."""
        out: list[TableInfo] = []
        for part in self.partitions_of(table_oid):
            out.extend(self.leaf_partitions(part.oid) if part.partitioned else [part])
        return tuple(out)

    def attached_indexes(self, index_oid: int) -> tuple[IndexInfo, ...]:
        """Indexes of partitions attached to the partitioned index ``index_oid``."""
        return tuple(i for i in self.indexes if i.parent_oid == index_oid)

    def is_skipped(self, table_oid: int) -> bool:
        """Whether the indexes of this table could not be read (see ``skipped_tables``)."""
        return any(s.oid == table_oid for s in self.skipped_tables)

    # Lookup tables, built lazily and cached on the frozen instance.
    def _tables_by_oid(self) -> dict[int, TableInfo]:
        cache: dict[int, TableInfo] | None = self.__dict__.get("_by_oid")
        if cache is None:
            cache = {t.oid: t for t in self.tables}
            object.__setattr__(self, "_by_oid", cache)
        return cache

    def _indexes_by_table(self) -> dict[int, tuple[IndexInfo, ...]]:
        cache: dict[int, tuple[IndexInfo, ...]] | None = self.__dict__.get("_idx_by_table")
        if cache is None:
            grouped: dict[int, list[IndexInfo]] = {}
            for index in self.indexes:
                grouped.setdefault(index.table_oid, []).append(index)
            cache = {k: tuple(v) for k, v in grouped.items()}
            object.__setattr__(self, "_idx_by_table", cache)
        return cache

    def filtered(self, keep_schema: Callable[[str], bool]) -> CatalogSnapshot:
        """A snapshot with only the relations whose schema ``keep_schema(schema)`` keeps."""
        return dataclasses.replace(
            self,
            tables=tuple(t for t in self.tables if keep_schema(t.schema)),
            indexes=tuple(i for i in self.indexes if keep_schema(i.table_schema)),
            foreign_keys=tuple(f for f in self.foreign_keys if keep_schema(f.schema)),
            skipped_tables=tuple(t for t in self.skipped_tables if keep_schema(t.schema)),
        )

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        encoded: dict[str, Any] = _encode(dataclasses.asdict(self))
        return encoded

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CatalogSnapshot:
        stats = data.get("stats")
        return cls(
            database=str(data.get("database", "")),
            server_version_num=int(data.get("server_version_num", 0)),
            tables=tuple(_table_from(t) for t in data.get("tables", ())),
            indexes=tuple(_index_from(i) for i in data.get("indexes", ())),
            foreign_keys=tuple(_build(ForeignKeyInfo, f) for f in data.get("foreign_keys", ())),
            stats=_build(StatsAge, stats) if stats else None,
            block_size=int(data.get("block_size", 8192)),
            skipped_tables=tuple(_build(SkippedTable, t) for t in data.get("skipped_tables", ())),
            other_relations=tuple((str(s), str(n)) for s, n in data.get("other_relations", ())),
            default_collation_c=bool(data.get("default_collation_c", False)),
        )


def _encode(obj: Any) -> Any:
    if isinstance(obj, _dt.datetime):
        return obj.isoformat()
    if isinstance(obj, Mapping):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return obj


def _build(cls: Any, data: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in fields:
            continue
        value = raw
        if isinstance(raw, list):
            value = tuple(raw)
        elif isinstance(raw, str) and "datetime" in str(fields[key].type):
            value = _dt.datetime.fromisoformat(raw)
        kwargs[key] = value
    return cls(**kwargs)


def _table_from(data: Mapping[str, Any]) -> TableInfo:
    cols = tuple(_build(ColumnInfo, c) for c in data.get("columns", ()))
    table: TableInfo = _build(TableInfo, {k: v for k, v in data.items() if k != "columns"})
    return dataclasses.replace(table, columns=cols)


def _index_from(data: Mapping[str, Any]) -> IndexInfo:
    cols = tuple(_build(IndexColumn, c) for c in data.get("key_columns", ()))
    index: IndexInfo = _build(IndexInfo, {k: v for k, v in data.items() if k != "key_columns"})
    return dataclasses.replace(index, key_columns=cols)


def leading_columns(index: IndexInfo, n: int) -> tuple[str | None, ...]:
    """The first ``n`` key column names of ``index`` (``None`` for expressions)."""
    return index.column_names[:n]


# Operator classes that are not their type's default but still hold the type's ``=``:
# a B-tree with them serves equality (and ``LIKE 'prefix%'``), never ranges or ORDER BY.
PATTERN_OPCLASSES = frozenset({"text_pattern_ops", "varchar_pattern_ops", "bpchar_pattern_ops"})


def serves_equality(column: IndexColumn) -> bool:
    """Whether an index column can search ``column = value`` as a query writes it: the
    column's own collation (an index ``COLLATE "C"`` on a column of another collation
    serves only comparisons made in ``"C"``) and an operator class with the type's
    ``=`` (the default one, or a ``*_pattern_ops``)."""
    return column.collation is None and (
        column.opclass_default or column.opclass in PATTERN_OPCLASSES
    )


def serves_order(column: IndexColumn) -> bool:
    """Whether an index column can search ranges and return rows in the column's
    order: the column's own collation and the type's default operator class."""
    return column.collation is None and column.opclass_default


def serves_columns(index: IndexInfo, columns: Iterable[str]) -> bool:
    """Whether ``index`` is usable for look-ups on exactly ``columns`` (in any order) as
    its leading key columns: valid, not partial, a B-tree (or a hash index on one column),
    each of those key columns with the column's collation and an operator class that has
    the type's ``=``.
    """
    wanted = list(columns)
    if not index.valid or index.predicate is not None or not wanted:
        return False
    if index.method == "hash":
        return (
            len(wanted) == 1
            and index.column_names == (wanted[0],)
            and serves_equality(index.key_columns[0])
        )
    if index.method != "btree":
        return False
    lead = index.key_columns[: len(wanted)]
    return (
        len(lead) == len(wanted)
        and {c.name for c in lead} == set(wanted)
        and all(serves_equality(c) for c in lead)
    )


# Keywords PostgreSQL quotes in quote_ident(): every category but "unreserved"
# (``SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'`` on PostgreSQL 18).
NON_UNRESERVED_KEYWORDS: frozenset[str] = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization between bigint
    binary bit boolean both case cast char character check coalesce collate
    collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp
    current_user dec decimal default deferrable desc distinct do else end except
    exists extract false fetch float for foreign freeze from full grant greatest
    group grouping having ilike in initially inner inout int integer intersect
    interval into is isnull join json json_array json_arrayagg json_exists
    json_object json_objectagg json_query json_scalar json_serialize json_table
    json_value lateral leading least left like limit localtime localtimestamp
    merge_action national natural nchar none normalize not notnull null nullif
    numeric offset on only or order out outer overlaps overlay placing position
    precision primary real references returning right row select session_user setof
    similar smallint some substring symmetric system_user table tablesample then
    time timestamp to trailing treat trim true union unique user using values
    varchar variadic verbose when where window with xmlattributes xmlconcat
    xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize
    xmltable
    """.split()  # noqa: SIM905
)


def schema_filter(
    include: Iterable[str] = (), exclude: Iterable[str] = ()
) -> Callable[[str], bool]:
    """A predicate over schema names: kept when it matches one of ``include`` (all when
    empty) and none of ``exclude``; patterns are shell globs (``app_*``)."""
    inc = tuple(include)
    exc = tuple(exclude)

    def keep(schema: str) -> bool:
        if inc and not any(fnmatch.fnmatchcase(schema, p) for p in inc):
            return False
        return not any(fnmatch.fnmatchcase(schema, p) for p in exc)

    return keep
