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
class TableInfo:
    """A table (``r``), partitioned table (``p``) or materialized view (``m``).

    rows: the planner's estimate (``pg_class.reltuples``; the live-tuple count when the
    table was never analysed). Counters (``seq_scan`` ...) are ``None`` when the
    statistics are not readable. size_bytes: ``relpages × block_size`` (no lock taken).
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

    @property
    def qualified(self) -> str:
        return qualified(self.schema, self.name)

    @property
    def display(self) -> str:
        return display_name(self.schema, self.name)


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
    when unreadable).
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

    @property
    def qualified(self) -> str:
        return qualified(self.schema, self.name)

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
            text = c.definition
            if c.collation:
                text += f" COLLATE {quote_ident(c.collation)}"
            if c.opclass and not c.opclass_default:
                text += f" {c.opclass}"
            if c.descending:
                text += " DESC" + ("" if c.nulls_first else " NULLS LAST")
            elif c.nulls_first:
                text += " NULLS FIRST"
            parts.append(text)
        text = "(" + ", ".join(parts) + ")"
        if self.include_columns:
            text += " INCLUDE (" + ", ".join(self.include_columns) + ")"
        return text

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
class CatalogSnapshot:
    """Everything the catalog rules and the plan analysis need about one database."""

    database: str
    server_version_num: int
    tables: tuple[TableInfo, ...] = ()
    indexes: tuple[IndexInfo, ...] = ()
    foreign_keys: tuple[ForeignKeyInfo, ...] = ()
    stats: StatsAge | None = None
    block_size: int = 8192

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
        """Every table and index name in ``schema`` (for picking a free index name)."""
        return frozenset(
            [t.name for t in self.tables if t.schema == schema]
            + [i.name for i in self.indexes if i.schema == schema]
        )

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
            tables=tuple(_build(TableInfo, t) for t in data.get("tables", ())),
            indexes=tuple(_index_from(i) for i in data.get("indexes", ())),
            foreign_keys=tuple(_build(ForeignKeyInfo, f) for f in data.get("foreign_keys", ())),
            stats=_build(StatsAge, stats) if stats else None,
            block_size=int(data.get("block_size", 8192)),
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


def _index_from(data: Mapping[str, Any]) -> IndexInfo:
    cols = tuple(_build(IndexColumn, c) for c in data.get("key_columns", ()))
    index: IndexInfo = _build(IndexInfo, {k: v for k, v in data.items() if k != "key_columns"})
    return dataclasses.replace(index, key_columns=cols)


def leading_columns(index: IndexInfo, n: int) -> tuple[str | None, ...]:
    """The first ``n`` key column names of ``index`` (``None`` for expressions)."""
    return index.column_names[:n]


def serves_columns(index: IndexInfo, columns: Iterable[str]) -> bool:
    """Whether ``index`` is usable for look-ups on exactly ``columns`` (in any order) as
    its leading key columns: valid, not partial, a B-tree (or a hash index on one column).
    """
    wanted = list(columns)
    if not index.valid or index.predicate is not None or not wanted:
        return False
    if index.method == "hash":
        return len(wanted) == 1 and index.column_names == (wanted[0],)
    if index.method != "btree":
        return False
    lead = index.column_names[: len(wanted)]
    return len(lead) == len(wanted) and set(lead) == set(wanted)


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
