"""What a loop of look-ups varies, and the one query that replaces it (pure).

* :func:`value_slots` finds every value of a statement's text (bind placeholders of
  every paramstyle and inlined literals) with the role it plays: ``eq`` (``col = ?``),
  ``in`` (inside ``IN (...)`` / ``ANY(...)``), ``range`` (``<``, ``>=``, ``BETWEEN``),
  ``limit``, ``offset`` or ``other``. :func:`varying_roles` compares the values of a
  group of executions: a loop that only moves LIMIT/OFFSET or range bounds is paging
  or chunking, not an N+1.
* :func:`batched_rewrite` writes the single query for a loop whose statements differ
  only in one equality filter: every other condition, the loader options, the row
  lock, ``populate_existing`` are kept; values the user must copy from their code are
  ``...`` (bound values never go into a report). Where IN cannot give the same result
  (a LIMIT or OFFSET per value: "the latest review of each product"), or where a part
  of the statement cannot be spelled as Python, it says in words what to do instead —
  a window function, ``DISTINCT ON``, a LATERAL join — and gives no snippet.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

from dbprobe.analysis.sqltext import tokenize

__all__ = [
    "Rewrite",
    "batched_rewrite",
    "in_list_note",
    "value_slots",
    "varying_refs",
    "varying_roles",
]

Slot = tuple[str, tuple[str, Any]]
"""``(role, (kind, key))``: kind ``param`` (key: bind name or position) or ``literal``
(key: the literal's text)."""

_RANGE_OPS = frozenset({"<", ">", "<=", ">="})


@functools.lru_cache(maxsize=2048)
def value_slots(sql: str) -> tuple[Slot, ...]:
    """Every value of ``sql`` in order, with its role (see the module docstring)."""
    tokens = tokenize(sql)
    out: list[Slot] = []
    positional = 0
    in_depth: list[int] = []  # parenthesis depths at which an IN / ANY list is open
    depth = 0
    between = False
    prev = None  # the previous significant token
    prev2 = None
    named = False  # the previous token was the ":" of a :name placeholder
    for index, tok in enumerate(tokens):
        key: tuple[str, Any] | None = None
        if (
            tok.is_punct(":")
            and index + 1 < len(tokens)
            and tokens[index + 1].kind == "ident"
            and tokens[index + 1].start == tok.start + 1
        ):
            named = True
            continue
        if named:
            named = False
            key = ("param", tok.value)
        elif tok.kind == "pyformat":
            key = ("param", tok.value)
        elif tok.kind == "param":
            key = ("param", int(tok.value) - 1)
        elif tok.kind == "format" or (tok.kind == "op" and tok.value == "?"):
            key = ("param", positional)
            positional += 1
        elif tok.kind in ("number", "string"):
            key = ("literal", tok.text)
        if key is not None:
            out.append((_role(prev, prev2, in_depth, depth, between), key))
            if between and prev is not None and prev.is_word("AND"):
                between = False
        elif tok.is_punct("("):
            if prev is not None and (prev.is_word("IN", "ANY", "ALL") or prev.is_word("VALUES")):
                in_depth.append(depth)
            depth += 1
        elif tok.is_punct(")"):
            depth -= 1
            if in_depth and in_depth[-1] == depth:
                in_depth.pop()
        elif tok.is_word("BETWEEN"):
            between = True
        if not tok.is_punct("::") and tok.kind != "comment":
            prev2, prev = prev, tok
    return tuple(out)


def _role(prev: Any, prev2: Any, in_depth: list[int], depth: int, between: bool) -> str:
    if in_depth and depth > in_depth[-1]:
        return "in"
    if prev is None:
        return "other"
    if prev.is_word("LIMIT") or (prev.is_word("FIRST", "NEXT") and prev2 is not None):
        return "limit"
    if prev.is_word("OFFSET"):
        return "offset"
    if prev.kind == "op" and prev.value in _RANGE_OPS:
        return "range"
    if prev.is_word("BETWEEN") or (between and prev.is_word("AND")):
        return "range"
    if prev.kind == "op" and prev.value in ("=", "=="):
        return "eq"
    return "other"


class _Executed(Protocol):
    sql: str
    parameters: Any


_UNKNOWN = object()


def _value(rec: _Executed, key: tuple[str, Any]) -> Any:
    kind, ref = key
    if kind == "literal":
        return ref
    params = rec.parameters
    try:
        return repr(params[ref])
    except (KeyError, IndexError, TypeError):
        return _UNKNOWN


def _values(rec: _Executed) -> list[tuple[str, Any]] | None:
    """(role, value) per slot, the values of an IN list folded into one slot."""
    out: list[tuple[str, Any]] = []
    in_values: list[Any] = []
    for role, key in value_slots(rec.sql):
        value = _value(rec, key)
        if value is _UNKNOWN:
            return None
        if role == "in":
            in_values.append(value)
            continue
        if in_values:
            out.append(("in", tuple(in_values)))
            in_values = []
        out.append((role, value))
    if in_values:
        out.append(("in", tuple(in_values)))
    return out


def varying_roles(group: Sequence[_Executed]) -> frozenset[str] | None:
    """The roles of the values that differ between the executions of ``group``; ``None``
    when that cannot be told (parameters not kept, statements that do not line up)."""
    rows = [_values(rec) for rec in group]
    if not rows or any(r is None for r in rows):
        return None
    first = rows[0]
    assert first is not None
    if any(r is None or [x[0] for x in r] != [x[0] for x in first] for r in rows):
        return None
    varying = set()
    for index, (role, _value) in enumerate(first):
        if len({r[index][1] for r in rows if r is not None}) > 1:
            varying.add(role)
    return frozenset(varying)


def varying_refs(group: Sequence[_Executed], refs: Sequence[Any]) -> set[Any] | None:
    """Which of the bind ``refs`` have different values across ``group`` (``None``:
    parameters not kept)."""
    out = set()
    for ref in refs:
        values = set()
        for rec in group:
            try:
                values.add(repr(rec.parameters[ref]))
            except (KeyError, IndexError, TypeError):
                return None
        if len(values) > 1:
            out.add(ref)
    return out


class ShapeLike(Protocol):
    entity: str | None
    table: str | None
    columns: tuple[str, ...]
    filters: tuple[tuple[str, str | int], ...]
    aggregate: bool
    pk: tuple[str, ...]


Rewrite = tuple[str | None, str]
"""``(fix snippet or None, advice in words)``."""


def in_list_note(dialect: str, key: str, type_name: str | None) -> str:
    """What to do when the list of values is long (parameter limits per statement)."""
    if type_name in ("NoneType", "NullType"):
        type_name = None
    if dialect == "postgresql":
        spelled = (
            f'{key} == any_(bindparam("ids", ids, type_=ARRAY({type_name})))'
            if type_name
            else f"{key} == any_(...) with ids bound as one ARRAY of {key}'s type"
        )
        return (
            f"with many values, bind them as one array instead of one parameter each "
            f"({spelled}): psycopg sends at most 65,535 parameters per statement and "
            "asyncpg 32,767; or split ids into chunks"
        )
    return (
        "with many values, split ids into chunks of a few thousand (databases limit the "
        "parameters of one statement; SQLite allows 32,766, older versions 999)"
    )


def _aggregate_note(columns: Sequence[str]) -> str:
    names = {c[5:].partition("(")[0] for c in columns if c.startswith("func.")}
    parts = []
    if "count" in names:
        parts.append("a missing id counts 0")
    if names - {"count"}:
        parts.append("a missing id had no rows (sum, avg, min, max: None, as the loop got)")
    return "; ".join(parts) if parts else "a missing id had no rows"


def batched_rewrite(
    shape: Any, group: Sequence[_Executed], dialect: str, populate_existing: bool = False
) -> Rewrite | None:
    """The one query for a loop whose statements differ in one equality filter, or
    advice in words when no snippet would be right; ``None`` when the statement shape
    does not say enough (the caller falls back to generic advice)."""
    conditions: tuple[tuple[str | None, tuple[Any, ...]], ...] = getattr(shape, "conditions", ())
    filters = list(shape.filters)
    if not filters:
        return None
    refs = [ref for _expr, ref in filters]
    all_refs = [ref for _t, cond_refs in conditions for ref in cond_refs]
    varying = varying_refs(group, sorted(set(all_refs) | set(refs), key=str))
    if varying is None:
        return None
    keys = [(expr, ref) for expr, ref in filters if ref in varying]
    if len(keys) != 1 or varying - {keys[0][1]}:
        return None  # more than one thing varies: no single IN list replaces it
    key, key_ref = keys[0]
    types = getattr(shape, "filter_types", ()) or ()
    key_type = types[filters.index((key, key_ref))] if len(types) == len(filters) else None
    words_in = (
        f"run one query for every value: the same query with `{key} IN (...)` (or "
        f"`= ANY(:ids)`) instead of `{key} = :value`, keeping its other conditions, then "
        f"group the rows by {key} in Python"
    )
    note = in_list_note(dialect, key, key_type)
    # Top-N per value: IN would return every row of every value.
    if shape.limit or shape.offset:
        order = [o for o in getattr(shape, "order_by", ()) if o]
        over_order = f", order_by=[{', '.join(order)}]" if order else ""
        keep = "rank > offset and rank <= offset + limit" if shape.offset else "rank <= limit"
        return None, (
            f"each query keeps only its first rows for one {key} (LIMIT"
            + ("/OFFSET" if shape.offset else "")
            + f"): an IN list would return every row of every value instead. To get the same "
            f"rows in one query, number them per value with a window function — add "
            f'func.row_number().over(partition_by={key}{over_order}).label("rank") to the '
            f"query, replace the {key} filter with {key}.in_(ids) and the LIMIT with a filter "
            f"on the subquery's rank ({keep}) — or, on PostgreSQL, use "
            f".distinct({key}) with {key} first in order_by for the first row of each value, "
            f"or a LATERAL join of the ids to the same query"
        )
    if not conditions or any(template is None for template, _refs in conditions):
        return None, f"{words_in}; {note}"
    if shape.joins or getattr(shape, "having", False):
        return None, f"{words_in}; {note}"
    where: list[str] = []
    for template, cond_refs in conditions:
        assert template is not None
        if key_ref in cond_refs:
            if len(cond_refs) != 1 or not template.endswith("== {}"):
                return None, f"{words_in}; {note}"
            where.append(f"{key}.in_(ids)")
        else:
            where.append(template.format(*("..." for _ in cond_refs)))
    fixed = [w for w in where if "..." in w]
    columns = [c for c in shape.columns if c != key]
    group_by = list(getattr(shape, "group_by", ()))
    order_by = list(getattr(shape, "order_by", ()))
    if any(g is None for g in group_by) or any(o is None for o in order_by):
        return None, f"{words_in}; {note}"
    entity = shape.entity
    if shape.aggregate:
        stmt = f"select({', '.join([key, *columns])})"
    elif entity and columns == [entity]:
        stmt = f"select({entity})"
    else:
        stmt = f"select({', '.join([key, *columns])})"
    stmt += f".where({', '.join(where)})"
    if shape.aggregate or group_by:
        stmt += f".group_by({', '.join([key, *[g for g in group_by if g]])})"
    lock = getattr(shape, "lock", None)
    if order_by:
        stmt += f".order_by({', '.join([key, *[o for o in order_by if o]])})"
    elif lock:
        pk = [f"{entity}.{k}" for k in shape.pk] if entity and shape.pk else [key]
        stmt += f".order_by({', '.join(pk)})"
    if getattr(shape, "distinct", False):
        stmt += ".distinct()"
    options = list(getattr(shape, "options", ()))
    if options:
        stmt += f".options({', '.join(options)})"
    if lock:
        stmt += f".{lock}"
    if populate_existing:
        stmt += ".execution_options(populate_existing=True)"
    extra = []
    if fixed:
        extra.append(
            f"`...` stands for the value the loop used in {', '.join(fixed)} (values are "
            "not reported)"
        )
    if not getattr(shape, "options_complete", True):
        extra.append("keep the other loader options of the original query")
    if lock:
        extra.append("the rows are locked in primary-key order, as concurrent callers must")
    if shape.aggregate:
        advice = f"compute it for every {key} at once: {stmt}, then read the results from a "
        advice += f"dict ({_aggregate_note(shape.columns)})"
    else:
        advice = f"fetch the rows for every {key} in one query: {stmt}, then group them"
    if extra:
        advice += "; " + "; ".join(extra)
    return stmt, f"{advice}; {note}"


def pk_rewrite(shape: Any, orm: Any, dialect: str) -> Rewrite:
    """``Session.get()`` in a loop: one query by primary key that keeps the get's
    options, row lock and ``populate_existing``."""
    entity = shape.entity
    if len(shape.pk) == 1:
        key = f"{entity}.{shape.pk[0]}"
        stmt = f"select({entity}).where({key}.in_(ids))"
    else:
        key = f"tuple_({', '.join(f'{entity}.{k}' for k in shape.pk)})"
        stmt = f"select({entity}).where({key}.in_(keys))"
    lock = getattr(shape, "lock", None)
    options = list(getattr(shape, "options", ()))
    extra = []
    if lock:
        stmt += f".order_by({', '.join(f'{entity}.{k}' for k in shape.pk)})"
    if options:
        stmt += f".options({', '.join(options)})"
    if lock:
        stmt += f".{lock}"
        extra.append("the rows are locked in primary-key order, as concurrent callers must")
    if orm is not None and getattr(orm, "populate_existing", False):
        stmt += ".execution_options(populate_existing=True)"
    if not getattr(shape, "options_complete", True):
        extra.append("keep the other options the get() was given")
    advice = (
        f"load all {entity} rows in one query: session.scalars({stmt}), then look them "
        "up in a dict by primary key instead of calling session.get() per id"
    )
    if extra:
        advice += "; " + "; ".join(extra)
    types = getattr(shape, "pk_types", ()) or getattr(shape, "filter_types", ()) or ()
    key_type = types[0] if len(shape.pk) == 1 and types else None
    if len(shape.pk) == 1:
        advice += "; " + in_list_note(dialect, key, key_type)
    return stmt, advice
