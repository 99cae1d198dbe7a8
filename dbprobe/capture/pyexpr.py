"""The Python spelling of SQLAlchemy expressions, for advice the user can paste.

:func:`spell` turns a column expression or a condition of an executed statement back
into the code that builds it (``Review.rating >= {}``, ``Order.customer_id == {}``,
``Product.active``, ``func.count()``), with ``{}`` where a bound value goes and the
bind names in order, so the caller decides what each value becomes (``ids`` for the one
that varies in a loop, ``...`` for the ones the user must copy from their code: values
never go into a report). Columns are spelled through the mapped class when one maps
them (``Order.customer_id``, also for the bare ``orders.customer_id`` column of a
``lazy="dynamic"`` relationship query); a column of an unmapped table is
``<table>.c.<column>``. Anything else is ``None``: no advice snippet is better than a
wrong one.

Runs off the hot path (once per compiled statement, when a finding needs it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Spelled", "column_owner", "spell", "spell_loader_options", "spell_lock"]

Spelled = tuple[str, tuple[Any, ...]]
"""``(template, bind keys)``: the template has one ``{}`` per bind key, in order."""

_COMPARISONS = {
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
}
_FLIPPED = {"eq": "eq", "ne": "ne", "lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}
_METHODS = {
    "like_op": "like",
    "ilike_op": "ilike",
    "not_like_op": "not_like",
    "notlike_op": "not_like",
    "not_ilike_op": "not_ilike",
    "notilike_op": "not_ilike",
    "in_op": "in_",
    "not_in_op": "not_in",
    "startswith_op": "startswith",
    "endswith_op": "endswith",
    "contains_op": "contains",
}


def _operator_name(element: Any) -> str:
    return str(getattr(getattr(element, "operator", None), "__name__", ""))


def column_owner(column: Any, mappers: Sequence[Any] = ()) -> str | None:
    """``Owner.attribute`` for a table column that a mapper maps (the statement's own
    mappers first, then every mapper of their registries), else ``None``."""
    table = getattr(column, "table", None)
    if table is None:
        return None
    seen: list[Any] = []
    for mapper in mappers:
        if mapper is None:
            continue
        seen.append(mapper)
        registry = getattr(mapper, "registry", None)
        seen.extend(getattr(registry, "mappers", ()) or ())
    for mapper in seen:
        try:
            prop = mapper._columntoproperty[column]
        except (KeyError, AttributeError, TypeError):
            continue
        owner = getattr(getattr(mapper, "class_", None), "__name__", None)
        if owner:
            return f"{owner}.{prop.key}"
    return None


def _column(expr: Any, mappers: Sequence[Any]) -> str | None:
    annotations = getattr(expr, "_annotations", None) or {}
    parententity = annotations.get("parententity")
    if parententity is not None:
        owner = getattr(getattr(parententity, "class_", None), "__name__", None)
        key = annotations.get("proxy_key") or getattr(expr, "key", None)
        if owner and key:
            return f"{owner}.{key}"
    if type(expr).__name__ not in ("Column", "AnnotatedColumn"):
        return None
    owned = column_owner(expr, mappers)
    if owned is not None:
        return owned
    table = getattr(expr, "table", None)
    name = getattr(expr, "name", None)
    if name and table is not None and getattr(table, "name", None):
        return f"{table.name}.c.{name}"
    return None


def spell(expr: Any, mappers: Sequence[Any] = (), bind_key: Any = None) -> Spelled | None:
    """``(template, bind keys)`` for ``expr``, or ``None`` when it cannot be spelled.

    bind_key: ``BindParameter -> key`` used to name binds (the compiled statement's
    rendered names); default the bind's own key."""
    from sqlalchemy.sql import elements, functions

    def bind(element: Any) -> Spelled:
        key = bind_key(element) if bind_key is not None else None
        return "{}", (key if key is not None else element.key,)

    def go(element: Any) -> Spelled | None:
        kind = type(element).__name__
        if isinstance(element, elements.Label):
            return go(element.element)
        if isinstance(element, elements.Grouping):
            return go(element.element)
        if isinstance(element, elements.BindParameter):
            return bind(element)
        if isinstance(element, elements.Null):
            return "None", ()
        if isinstance(element, elements.True_):
            return "true()", ()
        if isinstance(element, elements.False_):
            return "false()", ()
        if isinstance(element, functions.FunctionElement):
            name = getattr(element, "name", None)
            if not name or not isinstance(name, str) or not name.isidentifier():
                return None
            parts: list[str] = []
            keys: list[Any] = []
            for arg in getattr(element, "clauses", ()):
                if getattr(arg, "name", None) == "*" or type(arg).__name__ == "_StarOrOne":
                    continue  # count(*) is spelled func.count()
                done = go(arg)
                if done is None:
                    return None
                parts.append(done[0])
                keys.extend(done[1])
            return f"func.{name}({', '.join(parts)})", tuple(keys)
        column = _column(element, mappers)
        if column is not None:
            return column, ()
        if kind == "BooleanClauseList":
            joiner = {"and_": "and_", "or_": "or_"}.get(_operator_name(element))
            if joiner is None:
                return None
            parts, keys = [], []
            for sub in element.clauses:
                done = go(sub)
                if done is None:
                    return None
                parts.append(done[0])
                keys.extend(done[1])
            return f"{joiner}({', '.join(parts)})", tuple(keys)
        if kind == "AsBoolean":  # a boolean column used as a condition: Product.active
            inner = go(element.element)
            if inner is None:
                return None
            negated = _operator_name(element) in ("is_false", "isfalse")
            return (f"~{inner[0]}" if negated else inner[0]), inner[1]
        if kind == "UnaryExpression":
            inner = go(element.element)
            if inner is None:
                return None
            op = _operator_name(element) or _operator_name_modifier(element)
            if op == "inv":
                return f"~{inner[0]}", inner[1]
            if op in ("desc_op", "asc_op"):
                return f"{inner[0]}.{op[:-3]}()", inner[1]
            if op in ("nulls_first_op", "nulls_last_op", "nullsfirst_op", "nullslast_op"):
                which = "nulls_first" if "first" in op else "nulls_last"
                return f"{inner[0]}.{which}()", inner[1]
            if op in ("distinct_op",):
                return f"{inner[0]}.distinct()", inner[1]
            return None
        if kind == "BinaryExpression":
            op = _operator_name(element)
            left, right = element.left, element.right
            if op in ("is_", "is_not") and isinstance(right, elements.Null):
                done = go(left)
                return None if done is None else (f"{done[0]}.{op}(None)", done[1])
            if op in ("between_op", "not_between_op"):
                clauses = list(getattr(right, "clauses", ()))
                done = go(left)
                ends = [go(c) for c in clauses]
                if done is None or len(ends) != 2 or any(e is None for e in ends):
                    return None
                low, high = ends[0], ends[1]
                assert low is not None
                assert high is not None
                method = "between" if op == "between_op" else "not_between"
                return (
                    f"{done[0]}.{method}({low[0]}, {high[0]})",
                    (*done[1], *low[1], *high[1]),
                )
            if (
                isinstance(left, elements.BindParameter)
                and not isinstance(right, elements.BindParameter)
                and op in _FLIPPED
            ):
                # ":param_1 = orders.customer_id" (a dynamic relationship's criterion)
                # reads as "Order.customer_id == {}".
                left, right, op = right, left, _FLIPPED[op]
            lhs = go(left)
            rhs = go(right)
            if lhs is None or rhs is None:
                return None
            if op in _COMPARISONS:
                return f"{lhs[0]} {_COMPARISONS[op]} {rhs[0]}", (*lhs[1], *rhs[1])
            if op in _METHODS:
                return f"{lhs[0]}.{_METHODS[op]}({rhs[0]})", (*lhs[1], *rhs[1])
            return None
        return None

    try:
        return go(expr)
    except Exception:  # introspection of internals: best effort
        return None


def _operator_name_modifier(element: Any) -> str:
    return str(getattr(getattr(element, "modifier", None), "__name__", ""))


def spell_lock(for_update: Any) -> str | None:
    """``with_for_update(...)`` for a statement's ``FOR UPDATE`` / ``FOR SHARE`` clause,
    ``None`` when there is none."""
    if for_update is None:
        return None
    args = []
    for name in ("read", "nowait", "skip_locked", "key_share"):
        if getattr(for_update, name, False):
            args.append(f"{name}=True")
    if getattr(for_update, "of", None):
        args.append("of=...")
    return f"with_for_update({', '.join(args)})"


_LOADERS = {
    "joined": "joinedload",
    "selectin": "selectinload",
    "subquery": "subqueryload",
    "immediate": "immediateload",
    "select": "lazyload",
    "raise": "raiseload",
    "raise_on_sql": "raiseload",
    "noload": "noload",
}


def _prop_label(prop: Any) -> str:
    owner = getattr(getattr(getattr(prop, "parent", None), "class_", None), "__name__", "?")
    return f"{owner}.{getattr(prop, 'key', '?')}"


def spell_loader_options(options: Sequence[Any]) -> tuple[tuple[str, ...], bool]:
    """The loader options of a statement as code (``selectinload(Order.items)``,
    ``selectinload(Order.items).joinedload(OrderItem.product)``, ``defer(Product.description)``)
    and whether every option could be spelled."""
    out: list[str] = []
    complete = True
    for option in options:
        elements = list(getattr(option, "context", ()) or ())
        if not elements:
            complete = False
            continue
        chains: list[tuple[tuple[str, ...], str]] = []
        raise_on_sql: dict[tuple[str, ...], bool] = {}
        for element in elements:
            strategy = dict(getattr(element, "strategy", None) or ())
            path = getattr(element, "path", None)
            natural = getattr(path, "natural_path", None) or getattr(path, "path", ()) or ()
            props = [p for p in natural if hasattr(p, "key") and hasattr(p, "parent")]
            if not props:
                complete = False
                continue
            labels = tuple(_prop_label(p) for p in props)
            if "lazy" in strategy:
                fn = _LOADERS.get(str(strategy["lazy"]))
                if fn is None:
                    complete = False
                    continue
                chains.append((labels, fn))
                raise_on_sql[labels] = strategy["lazy"] == "raise_on_sql"
            elif "deferred" in strategy and len(labels) == 1:
                chains.append((labels, "defer" if strategy["deferred"] else "undefer"))
            else:
                complete = False
        by_path = dict(chains)
        for labels, _fn in chains:
            if any(other[: len(labels)] == labels and other != labels for other in by_path):
                continue  # a prefix of a longer chain of the same option
            steps = []
            for index in range(len(labels)):
                prefix = labels[: index + 1]
                fn = by_path.get(prefix, "defaultload")
                extra = ", sql_only=True" if raise_on_sql.get(prefix) else ""
                steps.append(f"{fn}({labels[index]}{extra})")
            out.append(".".join(steps))
    return tuple(out), complete
