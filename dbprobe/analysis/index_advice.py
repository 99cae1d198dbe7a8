"""Index advice: candidate columns, the exact ``CREATE INDEX CONCURRENTLY``, and the
``unindexed-lookup`` finding once the advice is verified (or could not be).

Column order follows how a B-tree is searched: equality columns first, then one range
column, then the sort order (only when a ``LIMIT`` lets the scan stop early). Advice
that the leading columns of an existing valid index already serve is dropped. Names
are deterministic (``ix_<table>_<columns>``), fit PostgreSQL's 63-byte limit and avoid
names already taken in the schema; identifiers are quoted only when needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dbprobe.analysis.catalog import (
    PATTERN_OPCLASSES,
    CatalogSnapshot,
    ForeignKeyInfo,
    IndexColumn,
    IndexInfo,
    TableInfo,
    display_name,
    qualified,
    quote_ident,
    serves_columns,
    serves_equality,
    serves_order,
)
from dbprobe.analysis.plans import (
    CastIssue,
    Operand,
    ScanCandidate,
    SortColumn,
    base_type_name,
    display_condition,
    redact,
)
from dbprobe.analysis.sqltext import tokenize
from dbprobe.report.model import Finding, Severity
from dbprobe.rules import RULES

MAX_IDENTIFIER_BYTES = 63
DEFAULT_MIN_COST_DROP = 0.5


@dataclasses.dataclass(frozen=True)
class IndexKey:
    """One key of a proposed index: a column or an expression, with its direction.

    opclass: a non-default operator class (``text_pattern_ops`` for ``LIKE 'abc%'`` on
    a column whose collation does not compare bytes); prefix: the key serves
    ``LIKE 'prefix%'``; kind: what the key searches, ``eq``, ``range`` or ``sort``
    (how an existing index column must match it).
    """

    column: str | None = None
    expression: str | None = None
    descending: bool = False
    nulls_first: bool = False
    opclass: str | None = None
    prefix: bool = False
    kind: str = "eq"

    @property
    def label(self) -> str:
        return self.column if self.column is not None else (self.expression or "?")

    def sql(self) -> str:
        text = quote_ident(self.column) if self.column is not None else f"({self.expression})"
        if self.opclass:
            text += f" {self.opclass}"
        if self.descending:
            text += " DESC"
            if not self.nulls_first:
                text += " NULLS LAST"
        elif self.nulls_first:
            text += " NULLS FIRST"
        return text

    @classmethod
    def of(cls, operand: Operand, sort: SortColumn | None = None, kind: str = "eq") -> IndexKey:
        column = operand.column.name if operand.column is not None else None
        return cls(
            column=column,
            expression=None if column is not None else operand.expression,
            descending=bool(sort and sort.descending),
            nulls_first=bool(sort and sort.nulls_first),
            kind="sort" if sort is not None else kind,
        )


@dataclasses.dataclass(frozen=True)
class IndexAdvice:
    """A proposed index on ``schema.table``.

    reason: what it serves (``equality on reference``); extends: an existing index
    whose key columns lead this one (it may become redundant once this one exists);
    predicate: the ``WHERE`` of a partial index (a constant-free condition of the
    statement, e.g. ``deleted_at IS NULL``).
    """

    schema: str
    table: str
    keys: tuple[IndexKey, ...]
    name: str
    method: str = "btree"
    reason: str = ""
    extends: str | None = None
    predicate: str | None = None

    @property
    def columns_text(self) -> str:
        """``(a, b DESC)``, with `` WHERE …`` for a partial index."""
        text = "(" + ", ".join(k.sql() for k in self.keys) + ")"
        if self.predicate:
            text += f" WHERE {self.predicate}"
        return text

    @property
    def table_sql(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def statement(self) -> str:
        """What to run on production: ``CREATE INDEX CONCURRENTLY … ;``."""
        using = "" if self.method == "btree" else f" USING {self.method}"
        return (
            f"CREATE INDEX CONCURRENTLY {quote_ident(self.name)} ON {self.table_sql}"
            f"{using} {self.columns_text};"
        )

    @property
    def plain_statement(self) -> str:
        """The same index without CONCURRENTLY and ``;`` (hypopg, or inside a transaction)."""
        using = "" if self.method == "btree" else f" USING {self.method}"
        return (
            f"CREATE INDEX {quote_ident(self.name)} ON {self.table_sql}{using} {self.columns_text}"
        )

    @property
    def fingerprint(self) -> str:
        return f"{self.schema}.{self.table}{self.columns_text}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "table": f"{self.schema}.{self.table}",
            "columns": [k.label for k in self.keys],
            "statement": self.statement,
            "reason": self.reason,
            "extends": self.extends,
            "predicate": self.predicate,
        }


# -- names ------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", text.lower())).strip("_") or "x"


def _fit(name: str, full: str) -> str:
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(full.encode()).hexdigest()[:8]
    head = name.encode()[: MAX_IDENTIFIER_BYTES - 9].decode("utf-8", "ignore").rstrip("_")
    return f"{head}_{digest}"


def index_name(table: str, keys: Sequence[IndexKey], taken: Iterable[str] = ()) -> str:
    """``ix_<table>_<col>_<col>``: lower-case, ASCII, at most 63 bytes (long names end in
    a hash of the full name), and not one of ``taken`` (``_2``, ``_3`` … appended)."""
    full = "ix_" + "_".join([_slug(table), *(_slug(k.label) for k in keys)])
    base = _fit(full, full)
    used = set(taken)
    if base not in used:
        return base
    for n in range(2, 1000):
        suffix = f"_{n}"
        head = base.encode()[: MAX_IDENTIFIER_BYTES - len(suffix)].decode("utf-8", "ignore")
        name = head + suffix
        if name not in used:
            return name
    raise ValueError(f"no free index name for {table}")  # pragma: no cover


# -- served by an existing index -------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text).strip("()")


def _key_matches(
    key: IndexKey, col: IndexColumn, need: str = "eq", *, collation_c: bool = False
) -> bool:
    """Whether an existing index column searches what ``key`` needs: the same column or
    expression, with a collation and operator class that serve ``need`` (``eq``uality,
    a ``range``, the ``sort`` order) or, for a prefix key, ``LIKE 'prefix%'``."""
    if key.column is not None:
        if col.name != key.column:
            return False
    elif col.name is not None or _norm(col.definition) != _norm(key.expression or ""):
        return False
    if key.prefix:
        if col.collation is not None:
            return col.collation in ("C", "POSIX") and col.opclass_default
        return col.opclass in PATTERN_OPCLASSES or (collation_c and col.opclass_default)
    if need == "eq":
        return serves_equality(col)
    return serves_order(col)


def served_by(
    keys: Sequence[IndexKey],
    equality_count: int,
    indexes: Iterable[IndexInfo],
    *,
    collation_c: bool = False,
) -> IndexInfo | None:
    """An existing index whose leading key columns already do this advice's work.

    The first ``equality_count`` keys may appear in any order (equality columns are
    interchangeable); the rest must follow in order and, unless they are range keys,
    with the same direction and NULLS order, or both reversed on every such key (a
    B-tree scans backwards). Each column needs the collation and operator class its
    search needs. Only valid, non-partial B-trees. collation_c: the key columns compare
    bytes (``C`` collation), so a plain B-tree serves ``LIKE 'abc%'``.
    """
    for index in indexes:
        if index.method != "btree" or not index.valid or index.predicate is not None:
            continue
        cols = index.key_columns
        if len(cols) < len(keys):
            continue
        eq_keys, rest = list(keys[:equality_count]), list(keys[equality_count:])
        lead = cols[: len(eq_keys)]
        if not all(
            any(_key_matches(k, c, "eq", collation_c=collation_c) for c in lead) for k in eq_keys
        ):
            continue
        tail = cols[len(eq_keys) : len(eq_keys) + len(rest)]
        pairs = list(zip(rest, tail, strict=True))
        if not all(
            _key_matches(k, c, "range" if k.kind == "range" else "sort", collation_c=collation_c)
            for k, c in pairs
        ):
            continue
        flips = {
            (k.descending != c.descending, k.nulls_first != c.nulls_first)
            for k, c in pairs
            if k.kind != "range" and not k.prefix
        }
        if flips - {(False, False), (True, True)} or len(flips) > 1:
            continue
        return index
    return None


def _extends(keys: Sequence[IndexKey], indexes: Iterable[IndexInfo]) -> str | None:
    """An existing index whose key columns are a leading prefix of ``keys`` and that
    the new one could replace (never a primary key's or a constraint's index)."""
    for index in indexes:
        cols = index.key_columns
        if (
            index.method == "btree"
            and index.valid
            and index.predicate is None
            and not index.enforces_constraint
            and 0 < len(cols) < len(keys)
            and all(_key_matches(k, c, k.kind) for k, c in zip(keys, cols, strict=False))
        ):
            return index.name
    return None


# -- advice for a scan --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdviceSet:
    """Alternatives to verify (narrowest first) and what was left out and why.

    hints: sentences for the recommendation about conditions no index can serve as
    written (a cast column, an expression no index can hold) and how to rewrite them;
    hint_sql: statements those hints recommend (an index on the column a rewrite
    compares directly).
    """

    alternatives: tuple[IndexAdvice, ...]
    served_by: str | None = None
    reason_none: str | None = None
    hints: tuple[str, ...] = ()
    hint_sql: tuple[str, ...] = ()


# Functions whose result changes from one call (or session) to the next: an index
# expression cannot use them.
_NOT_IMMUTABLE = frozenset(
    """
    now clock_timestamp statement_timestamp transaction_timestamp timeofday random
    nextval currval setseed current_setting pg_backend_pid txid_current age
    current_date current_time current_timestamp localtime localtimestamp
    """.split()  # noqa: SIM905
)
# Functions (and casts) that are STABLE on timestamptz: their result depends on the
# session's TimeZone.
_ZONE_DEPENDENT = frozenset({"date_trunc", "date_part", "extract", "to_char", "date", "age"})
_ZONE_CASTS = frozenset({"date", "time", "timestamp", "text", "character varying", "varchar"})


def expression_functions(operand: Operand) -> frozenset[str]:
    """Names of the functions ``operand``'s expression calls (lower case)."""
    if operand.expression is None:
        return frozenset()
    toks = tokenize(operand.expression)
    return frozenset(
        t.value.lower()
        for i, t in enumerate(toks)
        if t.kind in ("ident", "qident") and i + 1 < len(toks) and toks[i + 1].is_punct("(")
    )


def unindexable_expression(
    operand: Operand,
    table: TableInfo | None = None,
    not_immutable: Iterable[str] = (),
) -> str | None:
    """Why no index can hold ``operand``'s expression (``None`` when one can, as far
    as the text shows; the server has the last word when the index is verified).
    not_immutable: function names the database has no IMMUTABLE version of."""
    if operand.expression is None:
        return None
    toks = tokenize(operand.expression)
    if any(t.kind == "param" for t in toks):
        return "its value depends on the statement's parameters ($n)"
    funcs = expression_functions(operand)
    volatile = sorted(funcs & (_NOT_IMMUTABLE | set(not_immutable)))
    if volatile:
        return f"{volatile[0]}() is not IMMUTABLE"
    zoned = [
        r.name
        for r in operand.refs
        if table is not None
        and (col := table.column(r.name)) is not None
        and base_type_name(col.base_type or col.type) == "timestamp with time zone"
    ]
    casts = {
        " ".join(t.value.lower() for t in toks[i + 1 : i + 2])
        for i, t in enumerate(toks)
        if t.is_punct("::") and i + 1 < len(toks)
    }
    if zoned and (funcs & _ZONE_DEPENDENT or casts & _ZONE_CASTS):
        return (
            f"on timestamptz ({', '.join(sorted(zoned))}) its result depends on the "
            "session's TimeZone (the function is STABLE, not IMMUTABLE)"
        )
    return None


def _expression_hint(operand: Operand, why: str, table: TableInfo | None) -> str:
    columns = sorted(r.name for r in operand.refs)
    expression = display_condition(operand.expression or "")
    text = f"No index can hold {expression}: {why}."
    col = columns[0] if len(columns) == 1 else None
    info = table.column(col) if table is not None and col is not None else None
    timely = (info is not None and base_type_name(info.type).startswith(("timestamp", "date"))) or (
        bool(expression_functions(operand) & {"date_trunc", "date_part", "extract"})
    )
    if col is not None and timely:
        text += (
            f" Compare {col} itself so an index on ({quote_ident(col)}) can serve the "
            f"statement: for a time bucket, a range ({col} >= ? AND {col} < ?, the "
            "bucket's start and the next one's)."
        )
    elif "parameter" in why:
        text += (
            " If those parameters are always the same, write them into the statement as "
            "constants: an index on that expression can then serve it."
        )
    return text


def _cast_hint(issue: CastIssue, indexes: Sequence[IndexInfo]) -> tuple[str, str, str | None]:
    """``(reason, rewrite, existing index name)`` for a condition that casts a column."""
    col = issue.column
    cast = issue.casts[-1]
    of_type = f" ({issue.column_type})" if issue.column_type else ""
    existing = next(
        (
            i.name
            for i in indexes
            if i.method == "btree"
            and i.valid
            and i.predicate is None
            and i.key_columns
            and i.key_columns[0].name == col
            and serves_equality(i.key_columns[0])
        ),
        None,
    )
    cond = display_condition(issue.condition)
    served = (
        f"{existing} ({col}) cannot serve it"
        if existing
        else f"an index on {col} would not serve it either"
    )
    reason = f"the condition casts {col}{of_type} to {cast} ({cond}), so {served}"
    base = base_type_name(issue.column_type or "")
    if cast == "date" and base.startswith("timestamp"):
        rewrite = (
            f"compare {col} with a range instead of casting it: {col} >= ? AND {col} < ? "
            "(the day's start and the next day's)"
        )
    else:
        target = issue.column_type or f"the type of {col}"
        op = "=" if issue.kind in ("eq", "in") else "<"
        example = {
            "smallint": ": an int, not a Decimal or a float",
            "integer": ": an int, not a Decimal or a float",
            "bigint": ": an int, not a Decimal or a float",
            "uuid": ": a uuid.UUID, not a str",
        }.get(base, "")
        rewrite = (
            f"compare {col} with a value of its own type instead of casting the column: "
            f"{col} {op} CAST(? AS {target}) (in the application, send the parameter as "
            f"{target}{example})"
        )
    return reason, rewrite, existing


def _prefix_key(operand: Operand, table: TableInfo | None, collation_c: bool) -> IndexKey:
    """The key for ``col LIKE 'prefix%'``: plain when the column compares bytes (``C``
    collation), else with the pattern operator class of its type."""
    name = operand.column.name if operand.column is not None else operand.key
    col = table.column(name) if table is not None else None
    if _bytewise(col.collation if col else None, collation_c):
        return IndexKey(column=name, prefix=True, kind="range")
    base = base_type_name((col.base_type or col.type) if col else "text")
    opclass = {"character varying": "varchar_pattern_ops", "character": "bpchar_pattern_ops"}
    return IndexKey(
        column=name, prefix=True, kind="range", opclass=opclass.get(base, "text_pattern_ops")
    )


def _bytewise(collation: str | None, database_c: bool) -> bool:
    if collation in ("C", "POSIX", "ucs_basic"):
        return True
    return collation in (None, "default") and database_c


def _by_selectivity(
    operands: Sequence[Operand],
    table: TableInfo | None,
    rows: float,
    partial: Sequence[tuple[str, str]] = (),
) -> tuple[list[Operand], bool]:
    """Equality columns, the most selective first (rows the condition keeps, from
    ``pg_stats``: ``rows / n_distinct`` for an equality, ``null_frac × rows`` for ``IS
    NULL``), and whether every one had statistics to rank it. partial: the candidate's
    constant-free conditions ``(column, text)``, which say which columns are tested
    ``IS NULL`` or as booleans."""
    tests = {c: text.upper() for c, text in partial}
    ranked: list[tuple[float, int, Operand]] = []
    known = True
    for i, o in enumerate(operands):
        name = o.column.name if o.column is not None else None
        col = table.column(name) if table is not None and name is not None else None
        kept: float | None = None
        test = tests.get(name or "")
        if col is not None and test is None:
            kept = col.rows_per_value(rows)
        elif col is not None and test is not None and test.endswith(" IS NULL"):
            kept = None if col.null_frac is None else col.null_frac * rows
        if kept is None:
            known = False
            kept = float("inf")
        ranked.append((kept, i, o))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [o for _, _, o in ranked], known


def advise(
    candidate: ScanCandidate,
    indexes: Sequence[IndexInfo] = (),
    *,
    taken: Iterable[str] = (),
    max_columns: int = 3,
    table: TableInfo | None = None,
    collation_c: bool = False,
    not_immutable: Iterable[str] = (),
) -> AdviceSet:
    """Index alternatives for a :class:`~dbprobe.analysis.plans.ScanCandidate`.

    Alternatives, narrowest first: the most selective equality column alone (by
    ``pg_stats`` when ``table`` carries them); all equality columns, most selective
    first; with the columns the current index already searches; plus one range column
    (or a ``LIKE 'prefix%'``); plus the sort order (with a LIMIT: listed first, since
    without verification the first alternative is the one recommended); a partial
    index ``WHERE`` a constant-free condition holds (``deleted_at IS NULL``). Each is at
    most ``max_columns`` keys. Alternatives an existing index already serves are dropped
    (``served_by`` names it when nothing is left). Never an index on a cast column or
    on an expression no index can hold: those conditions become ``hints`` (rewrite
    them). collation_c: the database's default collation compares bytes;
    not_immutable: function names with no IMMUTABLE version in the database.
    """
    schema = candidate.schema or "public"
    table_indexes = list(indexes)
    names = set(taken)
    volatile_functions = frozenset(not_immutable)
    hints: list[str] = []
    hint_sql: list[str] = []
    reasons: list[str] = []

    def keep(operand: Operand) -> bool:
        why = unindexable_expression(operand, table, volatile_functions)
        if why is None:
            return True
        reasons.append(f"no index can hold {display_condition(operand.expression or '')}: {why}")
        hints.append(_expression_hint(operand, why, table))
        return False

    for issue in candidate.casts:
        cast_reason, rewrite, cast_index = _cast_hint(issue, table_indexes)
        reasons.append(cast_reason)
        hint = rewrite[0].upper() + rewrite[1:] + "."
        if cast_index is not None:
            hint += f" {cast_index} then serves it."
        elif not any(issue.column in h for h in hint_sql):
            key = IndexKey(column=issue.column)
            name = index_name(candidate.relation, [key], names)
            names.add(name)
            adv = IndexAdvice(schema, candidate.relation, (key,), name)
            hint += f" Then an index on ({quote_ident(issue.column)}) serves it: {adv.statement}"
            hint_sql.append(adv.statement)
        hints.append(hint)

    eq_ops, ranked = _by_selectivity(
        [o for o in candidate.equality if keep(o)],
        table,
        candidate.relation_rows,
        candidate.partial,
    )
    eq = [IndexKey.of(o) for o in eq_ops]
    served = [IndexKey.of(o) for o in candidate.served]
    ranges = [
        IndexKey.of(o, kind="range")
        for o in (*candidate.ranges, *candidate.served_ranges)
        if keep(o)
    ]
    ranges += [_prefix_key(o, table, collation_c) for o in candidate.prefixes]
    sort = [IndexKey.of(s.operand, s) for s in candidate.sort] if candidate.has_limit else []
    if sort and all(k.descending and k.nulls_first for k in sort):
        # ORDER BY … DESC on every key: an ascending index scanned backwards serves it.
        sort = [dataclasses.replace(k, descending=False, nulls_first=False) for k in sort]

    # (keys, equality count, reason, partial predicate)
    options: list[tuple[list[IndexKey], int, str, str | None]] = []
    if eq:
        if len(eq) > 1:
            options.append(([eq[0]], 1, f"equality on {eq[0].label}", None))
            if not ranked:  # no statistics to rank them: try each column alone
                options += [([k], 1, f"equality on {k.label}", None) for k in eq[1:]]
        options.append((eq, len(eq), f"equality on {', '.join(k.label for k in eq)}", None))
        if served:
            both = served + eq
            label = ", ".join(k.label for k in both)
            options.append((both, len(both), f"equality on {label}", None))
    all_eq = served + eq
    if ranges:
        rng = ranges[0]
        what = f"LIKE prefix on {rng.label}" if rng.prefix else f"range on {rng.label}"
        options.append(([*all_eq, rng], len(all_eq), _reason(all_eq, what), None))
    if sort:
        first_sort = sort[0].label
        if not ranges or ranges[0].label == first_sort:
            keys = all_eq + [k for k in sort if k.label not in {e.label for e in all_eq}]
            order = ", ".join(
                s.operand.key + (" DESC" if s.descending else "") for s in candidate.sort
            )
            ordered = (keys, len(all_eq), _reason(all_eq, f"order by {order}"), None)
            if candidate.pattern == "top-n":
                # the filter alone keeps too many rows: only the order lets the scan stop
                options = [o for o in options if o[0][len(all_eq) :]]
            options.insert(0, ordered)
    for column, condition in candidate.partial:
        base = [k for k in (options[0][0] if options else []) if k.label != column]
        if not base:
            base = [IndexKey(column=column)]
        eq_count = sum(1 for k in base if k.kind == "eq")
        options.append((base, eq_count, f"partial index WHERE {condition}", condition))

    if not options and candidate.either and not reasons:
        for columns in candidate.either:
            missing = [
                c
                for c in columns
                if served_by([IndexKey(column=c)], 1, table_indexes, collation_c=collation_c)
                is None
            ]
            statements = []
            for c in missing:
                key = IndexKey(column=c)
                name = index_name(candidate.relation, [key], names)
                names.add(name)
                statements.append(IndexAdvice(schema, candidate.relation, (key,), name).statement)
            reasons.append(
                f"an OR across columns ({', '.join(columns)}): one index cannot serve it, "
                "one index per column can"
            )
            if statements:
                hints.append(
                    "PostgreSQL combines one index per column in a BitmapOr: "
                    + " ".join(statements)
                    + " (not verified: each index alone does not change the plan), or "
                    "rewrite the OR as a UNION of two indexed look-ups."
                )
                hint_sql.extend(statements)
    if not options:
        why = "no condition on this relation that a B-tree index can search"
        if reasons:
            why = "; ".join(reasons)
        elif candidate.unindexable:
            why = "its conditions cannot use a B-tree index: " + "; ".join(
                redact(t) or t for t in candidate.unindexable
            )
        return AdviceSet((), reason_none=why, hints=tuple(hints), hint_sql=tuple(hint_sql))

    out: list[IndexAdvice] = []
    seen: set[tuple[str, ...]] = set()
    served_name: str | None = None
    for option_keys, eq_count, reason, predicate in options:
        keys = option_keys[:max_columns]
        sig = (*(k.sql() for k in keys), predicate or "")
        if not keys or sig in seen:
            continue
        seen.add(sig)
        if predicate is None:
            existing = served_by(
                keys, min(eq_count, len(keys)), table_indexes, collation_c=collation_c
            )
            if existing is not None:
                served_name = served_name or existing.name
                continue
        name_keys = [*keys, IndexKey(expression=predicate)] if predicate else keys
        name = index_name(candidate.relation, name_keys, names)
        out.append(
            IndexAdvice(
                schema=schema,
                table=candidate.relation,
                keys=tuple(keys),
                name=name,
                reason=reason,
                extends=None if predicate else _extends(keys, table_indexes),
                predicate=predicate,
            )
        )
    if not out:
        return AdviceSet(
            (),
            served_by=served_name,
            reason_none=f"already served by {served_name}",
            hints=tuple(hints),
            hint_sql=tuple(hint_sql),
        )
    return AdviceSet(
        tuple(out), served_by=served_name, hints=tuple(hints), hint_sql=tuple(hint_sql)
    )


def _reason(eq: Sequence[IndexKey], tail: str) -> str:
    if not eq:
        return tail
    return f"equality on {', '.join(k.label for k in eq)}, then {tail}"


def foreign_key_advice(fk: ForeignKeyInfo, taken: Iterable[str] = ()) -> IndexAdvice:
    """The index that serves a foreign key: its columns, in the key's order."""
    keys = tuple(IndexKey(column=c) for c in fk.columns)
    return IndexAdvice(
        schema=fk.schema,
        table=fk.table,
        keys=keys,
        name=index_name(fk.table, keys, taken),
        reason=f"foreign key {fk.name} → {fk.ref_display}",
    )


CONCURRENTLY_NOTE = (
    "(CREATE INDEX CONCURRENTLY does not block writes, but it cannot run inside a "
    "transaction block, waits for the transactions already running on the table, and "
    "on failure leaves an INVALID index behind: drop it before retrying.)"
)

PARTITIONED_INDEX_NOTE = (
    "A partitioned table takes no CREATE INDEX CONCURRENTLY: the index is created ON ONLY "
    "the partitioned table (it builds nothing, but waits for a SHARE lock on it: set a "
    "lock_timeout and retry), each partition's index is built CONCURRENTLY (no "
    "write-blocking lock), then attached; the partitioned index becomes valid once every "
    "partition's index is attached."
)


def partitioned_index_statements(
    snapshot: CatalogSnapshot,
    table: TableInfo,
    name: str,
    body: str,
    *,
    label_keys: Sequence[IndexKey],
    taken: Callable[[str], set[str]],
    unique: bool = False,
    existing: IndexInfo | None = None,
    reuse: Callable[[IndexInfo], bool] | None = None,
) -> list[str]:
    """The statements that build an index on a partitioned table without blocking
    writes: ``CREATE INDEX name ON ONLY table body;``, then per partition ``CREATE INDEX
    CONCURRENTLY … ;`` (recursively ``ON ONLY`` for a partition that is partitioned
    itself) and ``ALTER INDEX name ATTACH PARTITION … ;``.

    body: what follows the table in ``CREATE INDEX`` (``(pid)``); label_keys: the keys
    partition index names are made of; taken: the names taken in a schema (updated);
    existing: the partitioned index when it exists already (no ``CREATE … ON ONLY``; its
    attached partitions are skipped); reuse: an unattached partition index that may be
    attached as it is (same definition).
    """
    uniq = "UNIQUE " if unique else ""
    parent_sql = qualified(table.schema, name)
    out: list[str] = []
    if existing is None:
        out.append(f"CREATE {uniq}INDEX {quote_ident(name)} ON ONLY {table.qualified} {body};")
    attached = {i.table_oid for i in snapshot.attached_indexes(existing.oid)} if existing else set()
    for part in snapshot.partitions_of(table.oid):
        if part.oid in attached:
            continue
        match = next(
            (
                i
                for i in snapshot.indexes_on(part.oid)
                if i.parent_oid is None and i.valid and reuse is not None and reuse(i)
            ),
            None,
        )
        if match is not None:
            out.append(f"ALTER INDEX {parent_sql} ATTACH PARTITION {match.qualified};")
            continue
        names = taken(part.schema)
        child = index_name(part.name, label_keys, names)
        names.add(child)
        if part.partitioned:
            out += partitioned_index_statements(
                snapshot, part, child, body, label_keys=label_keys, taken=taken,
                unique=unique, reuse=reuse,
            )  # fmt: skip
        else:
            out.append(
                f"CREATE {uniq}INDEX CONCURRENTLY {quote_ident(child)} ON {part.qualified} {body};"
            )
        out.append(f"ALTER INDEX {parent_sql} ATTACH PARTITION {qualified(part.schema, child)};")
    return out


def foreign_key_served(fk: ForeignKeyInfo, indexes: Iterable[IndexInfo]) -> IndexInfo | None:
    """An index whose leading columns are the foreign key's columns (in any order)."""
    for index in indexes:
        if serves_columns(index, fk.columns):
            return index
    return None


# -- verification and the finding ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verification:
    """How an index proposal was checked against the planner.

    method: ``hypopg`` (hypothetical index), ``real-index`` (built inside a transaction
    that was rolled back) or ``none`` (not verified; ``reason`` says why and what to do).
    Costs are the statement's total plan cost before and with the index; hint: how to
    make verification possible (installing hypopg ...).
    """

    method: str
    cost_before: float
    cost_after: float | None = None
    index_used: bool | None = None
    reason: str | None = None
    plan_after: tuple[str, ...] = ()
    elapsed_ms: float | None = None
    hint: str | None = None
    rejected: bool = False

    @property
    def verified(self) -> bool:
        return self.method != "none" and self.cost_after is not None

    @property
    def cost_drop(self) -> float | None:
        """Share of the cost the index removes (0.98 = 98 % cheaper)."""
        if self.cost_after is None or self.cost_before <= 0:
            return None
        return 1.0 - self.cost_after / self.cost_before

    def passes(self, min_cost_drop: float = DEFAULT_MIN_COST_DROP) -> bool:
        drop = self.cost_drop
        return bool(
            self.verified and self.index_used and drop is not None and drop >= min_cost_drop
        )

    @property
    def how(self) -> str:
        if self.method == "hypopg":
            return "verified with a hypopg hypothetical index"
        if self.method == "real-index":
            return "verified with a real index built in a transaction that was rolled back"
        return "not verified" + (f": {self.reason}" if self.reason else "")

    def to_dict(self) -> dict[str, Any]:
        drop = self.cost_drop
        return {
            "method": self.method,
            "cost_before": round(self.cost_before, 2),
            "cost_after": None if self.cost_after is None else round(self.cost_after, 2),
            "cost_drop": None if drop is None else round(drop, 4),
            "index_used": self.index_used,
            "reason": self.reason,
            "plan_after": list(self.plan_after),
            "elapsed_ms": None if self.elapsed_ms is None else round(self.elapsed_ms, 3),
            "hint": self.hint,
            "rejected": self.rejected,
        }


def describe_scan(candidate: ScanCandidate) -> str:
    """What the plan does, in one clause, with literals redacted."""
    node = candidate.node
    table = f"{candidate.schema}.{candidate.relation}" if candidate.schema else candidate.relation
    cond = "; ".join(display_condition(c) for c in candidate.conditions if c)
    cond_text = f" ({cond})" if cond else ""
    if candidate.pattern == "join":
        per = f" for each of ~{candidate.loops:,.0f} outer rows" if candidate.loops > 1 else ""
        return (
            f"{node.label} reads all ~{candidate.relation_rows:,.0f} rows of {table}{per} "
            f"to join ~{candidate.rows_returned:,.0f}{cond_text}"
        )
    if candidate.pattern == "top-n":
        return (
            f"{node.label} sorts all ~{candidate.relation_rows:,.0f} rows of {table} "
            f"to return the first {candidate.rows_returned:,.0f}{cond_text}"
        )
    return (
        f"{node.label} reads ~{candidate.rows_examined:,.0f} rows to keep "
        f"~{candidate.rows_returned:,.0f}{cond_text}"
    )


def lookup_finding(
    candidate: ScanCandidate,
    *,
    advice: IndexAdvice | None,
    verification: Verification | None,
    sql: str | None = None,
    fingerprint: str | None = None,
    min_cost_drop: float = DEFAULT_MIN_COST_DROP,
    plan_lines: Sequence[str] = (),
    alternatives: Sequence[dict[str, Any]] = (),
    reason_none: str | None = None,
    hints: Sequence[str] = (),
    hint_sql: Sequence[str] = (),
) -> Finding | None:
    """The ``unindexed-lookup`` finding, or ``None`` when verification showed the index
    would not cut the cost by ``min_cost_drop`` (the scan is then the right plan).

    Severity: the rule's (error) when verified; warning when it could not be verified
    or no index can be proposed. hints / hint_sql: how to rewrite conditions no index
    can serve as written (:class:`AdviceSet`), added to the recommendation.
    """
    rule = RULES["unindexed-lookup"]
    what = describe_scan(candidate)
    evidence: dict[str, Any] = {
        "pattern": candidate.pattern,
        "node": candidate.node.label,
        "relation_rows": candidate.relation_rows,
        "rows_examined": candidate.rows_examined,
        "rows_returned": candidate.rows_returned,
        "loops": candidate.loops,
        "conditions": [redact(c) for c in candidate.conditions],
        "analyzed": candidate.analyzed,
        "plan": list(plan_lines),
    }
    table = display_name(candidate.schema or "public", candidate.relation)
    if advice is None:
        evidence["verification"] = {"method": "none", "reason": reason_none}
        evidence["fix_sql"] = list(hint_sql)
        recommendation = " ".join(hints) or (
            "Rewrite the condition so an index can search it, or accept the scan if it is "
            "rare: an OR across columns can use one index per column (PostgreSQL combines "
            "them in a BitmapOr) or become a UNION of two indexed look-ups; a LIKE '%…%' "
            "needs a pg_trgm GIN index."
        )
        return rule.finding(
            f"{what}; no index proposal: {reason_none}",
            recommendation,
            severity=Severity.WARNING,
            table=table,
            sql=sql,
            fingerprint=fingerprint
            or f"{candidate.schema}.{candidate.relation}:{candidate.pattern}"
            + (
                ":cast(" + ",".join(sorted({c.column for c in candidate.casts})) + ")"
                if candidate.casts
                else ""
            ),
            evidence=evidence,
        )
    evidence["index"] = advice.to_dict()
    evidence["alternatives"] = list(alternatives)
    evidence["fix_sql"] = [advice.statement]
    if verification is not None:
        evidence["verification"] = verification.to_dict()
    if verification is not None and verification.verified:
        if not verification.passes(min_cost_drop):
            return None
        drop = verification.cost_drop or 0.0
        message = (
            f"{what}; an index on {advice.columns_text} cuts the plan cost by {drop:.0%} "
            f"({verification.how}: {verification.cost_before:,.2f} → "
            f"{verification.cost_after:,.2f})"
        )
        severity = rule.severity
    else:
        how = verification.how if verification is not None else "not verified"
        message = f"{what}; an index on {advice.columns_text} should serve it ({how})"
        severity = Severity.WARNING
    recommendation = advice.statement
    if verification is not None and not verification.verified and verification.hint:
        recommendation += f" To verify it first: {verification.hint}."
    if advice.extends:
        recommendation += (
            f" It extends {advice.extends}, which may then be redundant (check with "
            "dbprobe audit once the new index is in use)."
        )
    if hints:
        recommendation += " Also: " + " ".join(hints)
    return rule.finding(
        message,
        recommendation,
        severity=severity,
        table=table,
        sql=sql,
        fingerprint=fingerprint or advice.fingerprint,
        evidence=evidence,
    )
