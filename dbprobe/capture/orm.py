"""ORM context of a captured statement, derived (lazily, off the hot path) from the
statement SQLAlchemy executed and its execution options.

These are the same facts :class:`sqlalchemy.orm.ORMExecuteState` exposes in the
``do_orm_execute`` event (``lazy_loaded_from``, ``loader_strategy_path``,
``is_column_load``, ``bind_mapper``), read from the executed statement so that the hot
path costs nothing for them. Works with SQLAlchemy 2.0 and 2.1; any attribute that is
missing in some release yields "unknown", never an error.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from dbprobe.capture.log import OrmContext, StatementShape

__all__ = [
    "eager_options",
    "loader_option",
    "orm_context",
    "orm_execution",
    "orm_key",
    "statement_shape",
]

log = logging.getLogger("dbprobe.capture")

_AGGREGATES = frozenset({"count", "sum", "avg", "min", "max", "bool_and", "bool_or", "array_agg"})


def _class_name(entity: Any) -> str | None:
    class_ = getattr(entity, "class_", None)
    return getattr(class_, "__name__", None) if class_ is not None else None


def _prop_name(prop: Any) -> str:
    parent = getattr(prop, "parent", None)
    owner = _class_name(parent) or "?"
    return f"{owner}.{getattr(prop, 'key', '?')}"


def _path_props(path: Any) -> list[Any]:
    """The relationship properties along a PathRegistry, root first."""
    natural = getattr(path, "natural_path", None) or getattr(path, "path", ()) or ()
    return [p for p in natural if hasattr(p, "uselist") and hasattr(p, "key")]


def _subject(stmt: Any) -> Any:
    attrs = getattr(stmt, "_propagate_attrs", None) or {}
    if attrs.get("compile_state_plugin") != "orm":
        return None
    return attrs.get("plugin_subject")


# Everything an OrmContext holds but the lazy-load parent is a function of the compiled
# statement (loader paths and options are part of SQLAlchemy's cache key): compute it
# once per compiled statement and parent class. Weak keys: SQLAlchemy owns the compiled
# objects, this cache never keeps one alive.
_context_cache: weakref.WeakKeyDictionary[Any, dict[Any, OrmContext | None]] = (
    weakref.WeakKeyDictionary()
)
_shape_cache: weakref.WeakKeyDictionary[Any, StatementShape | None] = weakref.WeakKeyDictionary()


OrmKey = tuple[type | None, str | None, bool]


def orm_execution(execution_options: Any) -> tuple[OrmKey | None, int | None]:
    """What an ORM context needs from one execution, read on the hot path without keeping
    the execution alive: ``((lazy-load parent class or None, reload kind or None,
    populate_existing), parent runid)``. The reload kind is ``"refresh"``
    (``Session.refresh()``), ``"expired"`` (attributes expired by commit / expire) or
    ``"deferred"`` (deferred columns read for the first time); the parent runid is the
    ORM load run of the object being lazy-loaded from or reloaded. ``(None, None)`` for
    non-ORM executions."""
    load_options = execution_options.get("_sa_orm_load_options")
    if load_options is None:
        return None, None
    lazy_from = load_options._lazy_loaded_from
    populate = bool(load_options._populate_existing)
    if lazy_from is not None:
        return (lazy_from.class_, None, populate), getattr(lazy_from, "runid", None)
    refresh_state = load_options._refresh_state
    if refresh_state is None:
        return (None, None, populate), None
    if getattr(load_options, "_is_user_refresh", False):
        kind = "refresh"
    elif refresh_state.expired or refresh_state.expired_attributes:
        kind = "expired"
    else:
        kind = "deferred"
    return (None, kind, populate), getattr(refresh_state, "runid", None)


def orm_key(execution_options: Any) -> OrmKey | None:
    """The first half of :func:`orm_execution` (kept for callers of earlier releases)."""
    return orm_execution(execution_options)[0]


def orm_context(compiled: Any, key: OrmKey | None) -> OrmContext | None:
    """The :class:`OrmContext` of an execution of ``compiled`` (``key`` from
    :func:`orm_execution`), or ``None`` for Core/raw SQL. Cached per compiled statement."""
    stmt = getattr(compiled, "statement", None)
    if stmt is None:
        return None
    cache_key: OrmKey = key or (None, None, False)
    per_compiled = None
    try:
        per_compiled = _context_cache.setdefault(compiled, {})
    except TypeError:  # not weak-referenceable
        per_compiled = None
    if per_compiled is not None and cache_key in per_compiled:
        return per_compiled[cache_key]
    try:
        context = _orm_context(stmt, *cache_key)
    except Exception:  # introspection of internals: never let it break a capture
        log.debug("could not read the ORM context of %r", stmt, exc_info=True)
        context = None
    if per_compiled is not None:
        per_compiled[cache_key] = context
    return context


def _orm_context(
    stmt: Any, lazy_parent: type | None, reload: str | None, populate_existing: bool = False
) -> OrmContext | None:
    subject = _subject(stmt)
    if subject is None:
        return None
    mapper = getattr(subject, "mapper", None)
    entity = _class_name(mapper)
    if getattr(stmt, "is_dml", False):
        return OrmContext(entity=entity, dml=True)
    compile_options = getattr(stmt, "_compile_options", None)
    current_path = getattr(compile_options, "_current_path", None)
    refresh = bool(getattr(compile_options, "_for_refresh_state", False)) or reload is not None

    relationship = parent = None
    path: tuple[str, ...] = ()
    collections: tuple[bool, ...] = ()
    props = _path_props(current_path) if current_path is not None else []
    if props:
        last = props[-1]
        relationship = _prop_name(last)
        collections = tuple(bool(p.uselist) for p in props)
        path = tuple(_prop_name(p) for p in props)
    if lazy_parent is not None:
        parent = lazy_parent.__name__
    pk_get = _is_pk_get(stmt, mapper)
    attributes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    deferred_in_mapping = False
    if reload is not None and mapper is not None:
        keys = getattr(compile_options, "_only_load_props", None) or ()
        props = [mapper.attrs[k] for k in sorted(keys) if k in mapper.attrs]
        attributes = tuple(f"{entity}.{p.key}" for p in props)
        groups = tuple(sorted({p.group for p in props if getattr(p, "group", None)}))
        deferred_in_mapping = any(getattr(p, "deferred", False) for p in props)
    eager, eager_collections, eager_mapped = _eager_details(stmt)
    return OrmContext(
        entity=entity,
        relationship=relationship,
        lazy=lazy_parent is not None,
        parent=parent,
        path=path,
        collections=collections,
        pk_get=pk_get,
        refresh=refresh,
        eager=eager,
        reload=reload or "",
        attributes=attributes,
        groups=groups,
        deferred_in_mapping=deferred_in_mapping,
        populate_existing=populate_existing,
        eager_collections=eager_collections,
        eager_mapped=eager_mapped,
    )


def _is_pk_get(stmt: Any, mapper: Any) -> bool:
    criteria: Any = getattr(stmt, "_where_criteria", ())
    if len(criteria) != 1 or mapper is None:
        return False
    get_clause: Any = getattr(mapper, "_get_clause", None)
    if not get_clause:
        return False
    clause = criteria[0]
    if clause is get_clause[0]:  # SQLAlchemy 2.1
        return True
    try:  # 2.0 annotates a copy of the mapper's get clause
        return bool(clause.compare(get_clause[0]))
    except Exception:
        return False


_EAGER = {"joined", "selectin", "subquery", "immediate"}


def eager_options(stmt: Any) -> tuple[tuple[tuple[str, ...], str], ...]:
    """Eager loaders of a statement as ``(path, strategy)``, e.g.
    ``(("Order.items", "OrderItem.product"), "joined")``: its loader options, then the
    root entity's relationships that are eager by mapping (``lazy="selectin"``)."""
    return _eager_details(stmt)[0]


def _eager_details(
    stmt: Any,
) -> tuple[
    tuple[tuple[tuple[str, ...], str], ...],
    tuple[tuple[str, ...], ...],
    tuple[tuple[str, ...], ...],
]:
    """(eager loaders as in :func:`eager_options`, the paths among them whose last step
    is a collection, the paths that are eager by mapping)."""
    out: list[tuple[tuple[str, ...], str]] = []
    collections: list[tuple[str, ...]] = []
    mapped: list[tuple[str, ...]] = []
    mapper = getattr(_subject(stmt), "mapper", None)
    if mapper is not None:
        for rel in mapper.relationships:
            if rel.lazy in _EAGER:
                path: tuple[str, ...] = (_prop_name(rel),)
                out.append((path, str(rel.lazy)))
                mapped.append(path)
                if rel.uselist:
                    collections.append(path)
    for option in getattr(stmt, "_with_options", ()) or ():
        for element in getattr(option, "context", ()) or ():
            strategy = getattr(element, "strategy", None)
            name = dict(strategy).get("lazy") if strategy else None
            if name not in _EAGER:
                continue
            props = _path_props(getattr(element, "path", None))
            if props:
                path = tuple(_prop_name(p) for p in props)
                out.append((path, str(name)))
                if props[-1].uselist:
                    collections.append(path)
    return tuple(out), tuple(collections), tuple(mapped)


def _expr_name(expr: Any) -> str | None:
    """Python spelling of a column expression: ``Review.product_id``,
    ``reviews.c.product_id``, ``func.count()``, ``func.sum(Review.stars)``; ``None``
    when unknown."""
    from sqlalchemy.sql.elements import Label
    from sqlalchemy.sql.functions import FunctionElement

    while isinstance(expr, Label):
        expr = expr.element
    if isinstance(expr, FunctionElement):
        args = [
            _expr_name(arg)
            for arg in getattr(expr, "clauses", ())
            if getattr(arg, "name", None) != "*"  # count(*) is spelled func.count()
        ]
        if any(a is None for a in args):
            return None
        return f"func.{getattr(expr, 'name', 'func')}({', '.join(str(a) for a in args)})"
    annotations = getattr(expr, "_annotations", None) or {}
    parententity = annotations.get("parententity")
    if parententity is not None:
        owner = _class_name(parententity)
        key = annotations.get("proxy_key") or getattr(expr, "key", None)
        if owner and key:
            return f"{owner}.{key}"
    name = getattr(expr, "name", None)
    table = getattr(expr, "table", None)
    if name and table is not None and getattr(table, "name", None):
        return f"{table.name}.c.{name}"
    return None


def statement_shape(compiled: Any) -> StatementShape | None:
    """Selected expressions and bound equality filters of a compiled SELECT, or ``None``."""
    stmt = getattr(compiled, "statement", None)
    if compiled is not None:
        try:
            if compiled in _shape_cache:
                return _shape_cache[compiled]
            shape = _uncached_shape(stmt, compiled)
            _shape_cache[compiled] = shape
            return shape
        except TypeError:  # not weak-referenceable
            pass
    return _uncached_shape(stmt, compiled)


def _uncached_shape(stmt: Any, compiled: Any) -> StatementShape | None:
    # The compiled form knows the rendered bind names of *its* statement's parameters.
    if stmt is None or not getattr(stmt, "is_select", False):
        return None
    try:
        return _statement_shape(stmt, compiled)
    except Exception:  # introspection of internals: best effort
        log.debug("could not read the shape of %r", stmt, exc_info=True)
        return None


def _statement_shape(stmt: Any, compiled: Any) -> StatementShape:
    from dbprobe.capture.pyexpr import spell, spell_loader_options, spell_lock

    subject = _subject(stmt)
    mapper = getattr(subject, "mapper", None)
    entity = _class_name(mapper)
    mappers = [mapper] if mapper is not None else []
    columns: list[str] = []
    aggregate = True
    any_column = False
    for desc in getattr(stmt, "column_descriptions", ()) or ():
        expr = desc.get("expr")
        ent = desc.get("entity")
        if desc.get("type") is not None and getattr(expr, "__mapper__", None) is not None:
            columns.append(expr.__name__)
            aggregate = False
            any_column = True
            continue
        spelled = spell(expr, mappers)
        name = spelled[0] if spelled is not None and not spelled[1] else _expr_name(expr)
        if name and name.startswith("func."):
            fname = name[5:].partition("(")[0]
            columns.append(name)
            if fname not in _AGGREGATES:
                aggregate = False
        else:
            columns.append(name or str(desc.get("name")))
            aggregate = False
            any_column = True
        if entity is None and ent is not None:
            entity = _class_name(getattr(ent, "__mapper__", None) or ent)
            ent_mapper = getattr(ent, "__mapper__", None)
            if ent_mapper is not None:
                mappers.append(ent_mapper)
    if not any_column and not columns:
        aggregate = False
    positions: dict[str, int] = {}
    positiontup = getattr(compiled, "positiontup", None)
    if positiontup:
        positions = {name: index for index, name in enumerate(positiontup)}
    bind_names = getattr(compiled, "bind_names", None) or {}

    def ref_of(bind: Any) -> str | int:
        key = str(bind_names.get(bind) or getattr(bind, "key", ""))
        return positions.get(key, key) if positions else key

    filters: list[tuple[str, str | int]] = []
    filter_types: list[str | None] = []
    conditions: list[tuple[str | None, tuple[str | int, ...]]] = []
    where = getattr(stmt, "whereclause", None)
    for clause in _conjuncts(where):
        spelled = spell(clause, mappers, ref_of)
        conditions.append((spelled[0], spelled[1]) if spelled is not None else (None, ()))
        left = getattr(clause, "left", None)
        right = getattr(clause, "right", None)
        operator = getattr(getattr(clause, "operator", None), "__name__", "")
        if operator != "eq" or left is None or right is None:
            continue
        if type(right).__name__ != "BindParameter":
            left, right = right, left
        if type(right).__name__ != "BindParameter":
            continue
        column = spell(left, mappers)
        name = column[0] if column is not None and not column[1] else _expr_name(left)
        if name is None:
            continue
        filters.append((name, ref_of(right)))
        filter_types.append(type(getattr(left, "type", None)).__name__ or None)
    table = None
    froms = getattr(stmt, "get_final_froms", None)
    final_froms = list(froms()) if callable(froms) else []
    for from_ in final_froms:
        table = getattr(from_, "name", None)
        if table:
            break
    joins = len(final_froms) > 1 or any(type(f).__name__ == "Join" for f in final_froms)
    pk: tuple[str, ...] = ()
    pk_types: tuple[str | None, ...] = ()
    if mapper is not None:
        pk = tuple(
            getattr(mapper.get_property_by_column(col), "key", col.key)
            for col in mapper.primary_key
        )
        pk_types = tuple(
            type(getattr(col, "type", None)).__name__ or None for col in mapper.primary_key
        )

    def spelled_list(clauses: Any) -> tuple[str | None, ...]:
        out: list[str | None] = []
        for clause in clauses or ():
            done = spell(clause, mappers)
            out.append(done[0] if done is not None and not done[1] else None)
        return tuple(out)

    options, complete = spell_loader_options(getattr(stmt, "_with_options", ()) or ())
    return StatementShape(
        entity=entity,
        table=table,
        columns=tuple(columns),
        filters=tuple(filters),
        aggregate=aggregate and bool(columns),
        pk=pk,
        filter_types=tuple(filter_types),
        conditions=tuple(conditions),
        order_by=spelled_list(getattr(stmt, "_order_by_clauses", ())),
        group_by=spelled_list(getattr(stmt, "_group_by_clauses", ())),
        limit=getattr(stmt, "_limit_clause", None) is not None
        or getattr(stmt, "_fetch_clause", None) is not None,
        offset=getattr(stmt, "_offset_clause", None) is not None,
        having=bool(getattr(stmt, "_having_criteria", ())),
        distinct=bool(getattr(stmt, "_distinct", False)),
        joins=joins,
        lock=spell_lock(getattr(stmt, "_for_update_arg", None)),
        options=options,
        options_complete=complete,
        pk_types=pk_types,
    )


def _conjuncts(clause: Any) -> list[Any]:
    if clause is None:
        return []
    operator = getattr(getattr(clause, "operator", None), "__name__", "")
    if operator == "and_" and hasattr(clause, "clauses"):
        out: list[Any] = []
        for sub in clause.clauses:
            out.extend(_conjuncts(sub))
        return out
    return [clause]


def loader_option(path: tuple[str, ...], strategies: tuple[str, ...], registry: Any) -> Any:
    """Build the loader option for ``path`` (``("Order.items", "OrderItem.product")``)
    with one strategy per step (``selectin``, ``joined``, ...), resolving class names
    through ``registry`` (a mapping of class name to mapped class)."""
    from sqlalchemy import orm

    functions = {
        "joined": orm.joinedload,
        "selectin": orm.selectinload,
        "subquery": orm.subqueryload,
        "immediate": orm.immediateload,
    }
    option: Any = None
    for step, strategy in zip(path, strategies, strict=False):
        owner, _, attr = step.partition(".")
        attribute = getattr(registry[owner], attr)
        if option is None:
            option = functions[strategy](attribute)
        else:
            option = getattr(option, functions[strategy].__name__)(attribute)
    return option


class StatementInfo:
    """What the hot path needs to know about one compiled statement (computed once per
    compiled statement): whether it is an ORM SELECT (its loaded objects tell which load
    run it was), the root entity whose objects to count when a joined eager load of a
    collection multiplies rows, and the eager-loaded relationships whose reads to track
    (``(class, attribute key, "Class.key")``)."""

    __slots__ = ("eager_attributes", "joined_root", "orm_select", "root_mapper", "watch")

    def __init__(
        self,
        joined_root: type | None,
        root_mapper: Any,
        eager_attributes: tuple[tuple[type, str, str], ...],
        orm_select: bool = True,
    ) -> None:
        self.joined_root = joined_root
        self.root_mapper = root_mapper
        self.eager_attributes = eager_attributes
        self.orm_select = orm_select
        self.watch = joined_root is not None or bool(eager_attributes)


NO_INFO = StatementInfo(None, None, (), orm_select=False)
ORM_SELECT = StatementInfo(None, None, ())
"""An ORM SELECT with no eager load to watch (relationship loads included)."""


def statement_info(compiled: Any) -> StatementInfo:
    """:class:`StatementInfo` of a compiled statement (``NO_INFO`` for Core and raw SQL,
    relationship loads, and anything that cannot be read)."""
    stmt = getattr(compiled, "statement", None)
    if stmt is None:
        return NO_INFO
    try:
        return _statement_info(stmt)
    except Exception:
        log.debug("could not read eager loaders of %r", stmt, exc_info=True)
        return NO_INFO


def _statement_info(stmt: Any) -> StatementInfo:
    subject = _subject(stmt)
    mapper = getattr(subject, "mapper", None)
    if mapper is None or not getattr(stmt, "is_select", False):
        return NO_INFO
    compile_options = getattr(stmt, "_compile_options", None)
    current_path = getattr(compile_options, "_current_path", None)
    if current_path is not None and _path_props(current_path):
        return ORM_SELECT  # a relationship load: its own statement is not the user's query
    attributes: dict[tuple[type, str], str] = {}
    joined_root: type | None = None
    for option in getattr(stmt, "_with_options", ()) or ():
        for element in getattr(option, "context", ()) or ():
            strategy = getattr(element, "strategy", None)
            name = dict(strategy).get("lazy") if strategy else None
            if name not in _EAGER:
                continue
            props = _path_props(getattr(element, "path", None))
            for prop in props:
                attributes[(prop.parent.class_, prop.key)] = _prop_name(prop)
            if props and name == "joined" and props[-1].uselist:
                joined_root = props[0].parent.class_
    for rel in mapper.relationships:  # eager by mapping (relationship(lazy="joined"), ...)
        if rel.lazy in _EAGER:
            attributes[(rel.parent.class_, rel.key)] = _prop_name(rel)
            if rel.lazy == "joined" and rel.uselist:
                joined_root = mapper.class_
    eager = tuple((cls, key, label) for (cls, key), label in attributes.items())
    if joined_root is None and not eager:
        return ORM_SELECT
    return StatementInfo(joined_root, mapper, eager)
