"""The query log: every statement of a capture scope, with timings, call sites and the
ORM context, plus the plain-data views the pure detectors work on.

A :class:`StatementRecord` is filled on the hot path with raw references only (the SQL
text, the parameters, the SQLAlchemy statement and execution options); everything
derived from them (fingerprint, ORM context, statement shape) is computed on first use
and cached. A log can be saved with :meth:`QueryLog.to_dict` and loaded back with
:meth:`QueryLog.from_dict` (without a database), which is how the detectors are tested
on real captured logs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dbprobe.analysis.fingerprint import fingerprint, normalize, redact_literals, statement_kind
from dbprobe.capture.callsite import CallSite, relative_path

if TYPE_CHECKING:
    from dbprobe.config import DbprobeConfig
    from dbprobe.report.model import Finding

__all__ = ["OrmContext", "QueryLog", "StatementRecord", "StatementShape"]


@dataclasses.dataclass(frozen=True)
class OrmContext:
    """What the ORM was doing when it emitted a statement (plain data).

    entity: the mapped class the statement selects/changes (``"Customer"``);
    relationship: ``"Order.customer"`` when the statement loads a relationship;
    lazy: loaded on attribute access (a lazy load) rather than by an eager loader;
    parent: the class of the object whose attribute was loaded;
    path: the relationship chain from the query's root entity to this load
    (``("Order.items", "OrderItem.product")``); collections: for each step of the path,
    whether that relationship holds a list; pk_get: a primary-key look-up
    (``Session.get`` or a many-to-one lazy load); refresh: a reload of expired or
    deferred columns; dml: an ORM-enabled INSERT/UPDATE/DELETE; eager: the eager
    loader options on the statement, as ``(path, strategy)`` with strategies
    ``joined``, ``selectin``, ``subquery``, ``immediate``.

    reload: why a reload ran: ``expired`` (attributes expired by ``commit()`` or
    ``expire()``), ``deferred`` (deferred columns read for the first time) or
    ``refresh`` (``Session.refresh()``), ``""`` otherwise; attributes: the attributes it
    loaded (``"Product.description"``), groups their ``deferred(group=...)`` names and
    deferred_in_mapping whether the mapping defers them (not a ``defer()`` option);
    populate_existing: the statement overwrites objects already loaded;
    eager_collections: the eager paths whose last step is a collection; eager_mapped:
    the eager paths that come from the mapping (``relationship(lazy="selectin")``), not
    from options on the statement.
    """

    entity: str | None = None
    relationship: str | None = None
    lazy: bool = False
    parent: str | None = None
    path: tuple[str, ...] = ()
    collections: tuple[bool, ...] = ()
    pk_get: bool = False
    refresh: bool = False
    dml: bool = False
    eager: tuple[tuple[tuple[str, ...], str], ...] = ()
    reload: str = ""
    attributes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    deferred_in_mapping: bool = False
    populate_existing: bool = False
    eager_collections: tuple[tuple[str, ...], ...] = ()
    eager_mapped: tuple[tuple[str, ...], ...] = ()

    @property
    def collection(self) -> bool:
        """The loaded relationship holds a list (one-to-many, many-to-many)."""
        return bool(self.collections) and self.collections[-1]

    @property
    def relationship_load(self) -> bool:
        return self.relationship is not None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = list(self.path)
        out["collections"] = list(self.collections)
        out["eager"] = [[list(p), s] for p, s in self.eager]
        out["attributes"] = list(self.attributes)
        out["groups"] = list(self.groups)
        out["eager_collections"] = [list(p) for p in self.eager_collections]
        out["eager_mapped"] = [list(p) for p in self.eager_mapped]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrmContext:
        return cls(
            entity=data.get("entity"),
            relationship=data.get("relationship"),
            lazy=bool(data.get("lazy", False)),
            parent=data.get("parent"),
            path=tuple(data.get("path") or ()),
            collections=tuple(bool(c) for c in data.get("collections") or ()),
            pk_get=bool(data.get("pk_get", False)),
            refresh=bool(data.get("refresh", False)),
            dml=bool(data.get("dml", False)),
            eager=tuple((tuple(p), str(s)) for p, s in data.get("eager") or ()),
            reload=str(data.get("reload") or ""),
            attributes=tuple(data.get("attributes") or ()),
            groups=tuple(data.get("groups") or ()),
            deferred_in_mapping=bool(data.get("deferred_in_mapping", False)),
            populate_existing=bool(data.get("populate_existing", False)),
            eager_collections=tuple(tuple(p) for p in data.get("eager_collections") or ()),
            eager_mapped=tuple(tuple(p) for p in data.get("eager_mapped") or ()),
        )


@dataclasses.dataclass(frozen=True)
class StatementShape:
    """The parts of a SELECT that a batched rewrite needs (plain data).

    entity/table: what it reads; columns: the selected expressions as Python
    (``"Review.product_id"``, ``"func.count()"``, ``"Product"``); filters: equality
    filters against a bound value, as ``(expression, parameter)`` where parameter is the
    bind name (dict parameters) or position (tuple parameters), and filter_types the
    SQL type of each filter's column (``"BigInteger"``); aggregate: the select list is
    aggregates only; pk: the primary-key attributes of ``entity``.

    conditions: every conjunct of the WHERE clause as ``(template, parameters)``: the
    Python that builds it with ``{}`` for each bound value (``"Review.rating >= {}"``)
    and the parameters in order, or ``(None, ())`` when it cannot be spelled; order_by
    / group_by: the expressions as Python (``None`` for one that cannot be spelled);
    limit / offset / having / distinct / joins: whether the statement has them (joins:
    it reads more than one table); lock: ``with_for_update(...)`` when it locks rows;
    options: its loader options as Python, options_complete: all of them could be
    spelled; pk_types: the SQL type of each primary-key column (``"BigInteger"``).
    """

    entity: str | None = None
    table: str | None = None
    columns: tuple[str, ...] = ()
    filters: tuple[tuple[str, str | int], ...] = ()
    aggregate: bool = False
    pk: tuple[str, ...] = ()
    filter_types: tuple[str | None, ...] = ()
    conditions: tuple[tuple[str | None, tuple[str | int, ...]], ...] = ()
    order_by: tuple[str | None, ...] = ()
    group_by: tuple[str | None, ...] = ()
    limit: bool = False
    offset: bool = False
    having: bool = False
    distinct: bool = False
    joins: bool = False
    lock: str | None = None
    options: tuple[str, ...] = ()
    options_complete: bool = True
    pk_types: tuple[str | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "table": self.table,
            "columns": list(self.columns),
            "filters": [list(f) for f in self.filters],
            "aggregate": self.aggregate,
            "pk": list(self.pk),
            "filter_types": list(self.filter_types),
            "conditions": [[t, list(refs)] for t, refs in self.conditions],
            "order_by": list(self.order_by),
            "group_by": list(self.group_by),
            "limit": self.limit,
            "offset": self.offset,
            "having": self.having,
            "distinct": self.distinct,
            "joins": self.joins,
            "lock": self.lock,
            "options": list(self.options),
            "options_complete": self.options_complete,
            "pk_types": list(self.pk_types),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatementShape:
        return cls(
            entity=data.get("entity"),
            table=data.get("table"),
            columns=tuple(data.get("columns") or ()),
            filters=tuple((str(e), p) for e, p in data.get("filters") or ()),
            aggregate=bool(data.get("aggregate", False)),
            pk=tuple(data.get("pk") or ()),
            filter_types=tuple(data.get("filter_types") or ()),
            conditions=tuple((t, tuple(refs)) for t, refs in data.get("conditions") or ()),
            order_by=tuple(data.get("order_by") or ()),
            group_by=tuple(data.get("group_by") or ()),
            limit=bool(data.get("limit", False)),
            offset=bool(data.get("offset", False)),
            having=bool(data.get("having", False)),
            distinct=bool(data.get("distinct", False)),
            joins=bool(data.get("joins", False)),
            lock=data.get("lock"),
            options=tuple(data.get("options") or ()),
            options_complete=bool(data.get("options_complete", True)),
            pk_types=tuple(data.get("pk_types") or ()),
        )


_UNSET: Any = object()


class StatementRecord:
    """One executed statement (one cursor execution).

    sql: the text sent to the driver; parameters: as sent (dict, tuple, or a list of
    them for executemany) — kept in memory only, out of reports unless asked;
    start_ns/duration_ns: ``time.perf_counter_ns`` start and duration; rowcount: the
    driver's row count (-1 when it does not say); connection: an id of the DB-API
    connection; call_site: the first application frame; caller: the application frame
    that called it, ``(file, line, function)``, when one is found (N+1 grouping uses
    both, so one helper called from two places is not a loop); activation: a number
    that identifies the thread or asyncio task (more exactly: the context) the statement
    ran in, so executions from two requests served by two tasks or worker threads are
    never one loop; runid / parent_runid: the ORM's load run of the objects this
    statement loaded / of the object whose attribute it loaded (lazy loads, reloads),
    which ties a lazy load to the statement that loaded its parent; error: the exception
    class name when the statement failed; ignored: rule ids silenced by
    ``dbprobe.ignore()`` (``"*"`` for all).
    """

    __slots__ = (
        "_database",
        "_dialect",
        "_fingerprint",
        "_live",
        "_location",
        "_orm",
        "_orm_key",
        "_shape",
        "activation",
        "call_site",
        "caller",
        "connection",
        "duration_ns",
        "engine",
        "error",
        "executemany",
        "ignored",
        "joined_root",
        "loaded_parents",
        "parameters",
        "parent_runid",
        "rowcount",
        "runid",
        "seq",
        "sql",
        "start_ns",
    )

    def __init__(
        self,
        seq: int,
        sql: str,
        parameters: Any,
        executemany: bool,
        call_site: tuple[str, int, str] | None,
        connection: int,
        engine: Any,
        dialect: str | None,
        orm_key: Any,
        live: Any,
        ignored: frozenset[str] | None,
        activation: int = 0,
        parent_runid: int | None = None,
    ) -> None:
        self.seq = seq
        self.sql = sql
        self.parameters = parameters
        self.executemany = executemany
        self.call_site = call_site
        self.connection = connection
        self.engine = engine
        self._dialect = dialect
        self._orm_key = orm_key
        self._live = live
        self.ignored = ignored
        self.activation = activation
        self.parent_runid = parent_runid
        self.runid: int | None = None
        self.start_ns = 0
        self.duration_ns = 0
        self.rowcount = -1
        self.error: str | None = None
        self.caller: tuple[str, int, str] | None = None
        self._database: str | None = None
        self.joined_root: type | str | None = None
        self.loaded_parents = -1
        self._fingerprint: str | None = None
        self._location: tuple[str | None, str | None] | None = None
        self._orm: Any = _UNSET
        self._shape: Any = _UNSET

    # -- derived, cached ---------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """16-hex-digit key of the statement's shape (see :mod:`dbprobe.analysis.fingerprint`)."""
        fp = self._fingerprint
        if fp is None:
            fp = self._fingerprint = fingerprint(self.sql)
        return fp

    @property
    def normalized(self) -> str:
        return normalize(self.sql)

    @property
    def kind(self) -> str:
        """``select``, ``insert``, ``update``, ``delete``, ``transaction``, ... ."""
        return statement_kind(normalize(self.sql))

    @property
    def is_read(self) -> bool:
        return self.kind == "select" and not (self.orm is not None and self.orm.dml)

    @property
    def orm(self) -> OrmContext | None:
        """The ORM context, or ``None`` for Core and raw SQL."""
        if self._orm is _UNSET:
            from dbprobe.capture.orm import orm_context

            self._orm = orm_context(self._live, self._orm_key)
        return self._orm  # type: ignore[no-any-return]

    @property
    def shape(self) -> StatementShape | None:
        """Selected columns and equality filters (for batched-rewrite advice)."""
        if self._shape is _UNSET:
            from dbprobe.capture.orm import statement_shape

            self._shape = statement_shape(self._live)
        return self._shape  # type: ignore[no-any-return]

    @property
    def dialect(self) -> str:
        """The SQLAlchemy dialect name (``postgresql``, ``sqlite``, ...)."""
        if self._dialect is None:
            dialect = getattr(self.engine, "dialect", None)
            self._dialect = str(getattr(dialect, "name", "") or "")
        return self._dialect

    @property
    def duration_ms(self) -> float:
        return self.duration_ns / 1e6

    @property
    def database(self) -> str:
        """``host:port/database`` of the engine that ran it (no user, no password)."""
        if self._database is None:
            url = getattr(self.engine, "url", None)
            self._database = (
                f"{url.host or ''}:{url.port or ''}/{url.database or ''}" if url is not None else ""
            )
        return self._database

    def caller_location(self, root: str | None = None) -> str | None:
        """``path:line`` of the application frame that called the call site, if known."""
        if self.caller is None:
            return None
        return f"{relative_path(self.caller[0], root)}:{self.caller[1]}"

    @property
    def caller_function(self) -> str | None:
        return None if self.caller is None else self.caller[2]

    def location(self, root: str | None = None) -> str | None:
        """``path:line`` of the call site relative to ``root`` (default: cwd)."""
        if self.call_site is None:
            return None
        cached = self._location
        if cached is not None and cached[0] == root:
            return cached[1]
        location = CallSite(*self.call_site).location(root)
        self._location = (root, location)
        return location

    @property
    def function(self) -> str | None:
        return None if self.call_site is None else self.call_site[2]

    def parameter_key(self) -> Any:
        """A hashable form of the parameters (equal values → equal keys)."""
        return _freeze(self.parameters)

    def is_ignored(self, rule: str) -> bool:
        ignored = self.ignored
        return ignored is not None and ("*" in ignored or rule in ignored)

    def release(self) -> None:
        """Resolve the derived views and drop the references to live SQLAlchemy objects
        (statements, execution options, engines) so the log holds plain data only."""
        _ = self.fingerprint, self.orm, self.shape, self.database, self.dialect
        self._orm_key = self._live = None
        self.engine = None
        self.joined_root = _class_label(self.joined_root)

    def __repr__(self) -> str:
        where = self.location() or "?"
        sql = " ".join(redact_literals(self.sql).split())
        return f"<StatementRecord #{self.seq} {self.duration_ms:.3f} ms {where} {sql[:60]!r}>"

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self, *, root: str | None = None, with_parameters: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "sql": self.sql if with_parameters else redact_literals(self.sql),
            "fingerprint": self.fingerprint,
            "kind": self.kind,
            "executemany": self.executemany,
            "start_ms": round(self.start_ns / 1e6, 6),
            "duration_ms": round(self.duration_ms, 6),
            "rowcount": self.rowcount,
            "connection": self.connection,
            "dialect": self.dialect,
            "database": self.database,
            "location": self.location(root),
            "function": self.function,
            "caller": self.caller_location(root),
            "caller_function": self.caller_function,
            "activation": self.activation,
            "runid": self.runid,
            "parent_runid": self.parent_runid,
            "error": self.error,
            "ignored": sorted(self.ignored) if self.ignored is not None else None,
            "orm": self.orm.to_dict() if self.orm is not None else None,
            "shape": self.shape.to_dict() if self.shape is not None else None,
            # Parameters are reduced to an opaque key unless asked for, so saved logs
            # still tell "same values" from "different values" without holding them.
            "parameter_key": _opaque(self.parameter_key()),
            "joined_root": _class_label(self.joined_root),
            "loaded_parents": self.loaded_parents,
        }
        if with_parameters:
            out["parameters"] = _jsonable(self.parameters)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatementRecord:
        location = data.get("location")
        site: tuple[str, int, str] | None = None
        if location:
            path, _, line = str(location).rpartition(":")
            site = (path, int(line), str(data.get("function") or "?"))
        ignored = data.get("ignored")
        rec = cls(
            seq=int(data["seq"]),
            sql=str(data["sql"]),
            parameters=data.get("parameters", _OpaqueParams(data.get("parameter_key"))),
            executemany=bool(data.get("executemany", False)),
            call_site=site,
            connection=int(data.get("connection") or 0),
            engine=None,
            dialect=str(data.get("dialect") or ""),
            orm_key=None,
            live=None,
            ignored=frozenset(ignored) if ignored is not None else None,
            activation=int(data.get("activation") or 0),
            parent_runid=data.get("parent_runid"),
        )
        rec.runid = data.get("runid")
        rec._database = str(data.get("database") or "")
        caller = data.get("caller")
        if caller:
            caller_path, _, caller_line = str(caller).rpartition(":")
            rec.caller = (caller_path, int(caller_line), str(data.get("caller_function") or "?"))
        rec.start_ns = int(float(data.get("start_ms") or 0.0) * 1e6)
        rec.duration_ns = int(float(data.get("duration_ms") or 0.0) * 1e6)
        rec.rowcount = int(data.get("rowcount", -1))
        rec.error = data.get("error")
        rec.joined_root = data.get("joined_root")
        rec.loaded_parents = int(data.get("loaded_parents", -1))
        orm = data.get("orm")
        rec._orm = OrmContext.from_dict(orm) if orm else None
        shape = data.get("shape")
        rec._shape = StatementShape.from_dict(shape) if shape else None
        return rec


def _class_label(value: type | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.__name__


class _OpaqueParams:
    """Parameters of a loaded log that were saved only as a key."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _OpaqueParams) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def _freeze(value: Any) -> Any:
    if isinstance(value, _OpaqueParams):
        return ("opaque", value.key)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(repr(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _opaque(key: Any) -> str:
    import hashlib

    if isinstance(key, tuple) and len(key) == 2 and key[0] == "opaque":
        return str(key[1])
    return hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


@dataclasses.dataclass(frozen=True)
class Boundary:
    """A transaction end (commit or rollback) seen after ``after`` statements."""

    after: int
    kind: str
    connection: int


class QueryLog:
    """The statements of one capture scope, in execution order.

    ``statements`` is the list of :class:`StatementRecord`; ``findings()`` runs the
    detectors (N+1, redundant queries, eager-load checks) over it.
    """

    def __init__(self, name: str | None = None, root: str | None = None) -> None:
        self.name = name
        self.root = root
        self.statements: list[StatementRecord] = []
        self.boundaries: list[Boundary] = []
        self.eager_touches: dict[str, int] = {}
        """relationship (``"Order.items"``) → attribute reads seen while tracked."""
        self.verifications: dict[str, dict[str, Any]] = {}
        """Fix re-runs: ``"<fingerprint>@<location>"`` → before/after statement counts."""
        self.unrecorded = 0
        """Statements that ran in another thread or task without a scope while this one
        was open (not recorded: see ``dbprobe.capture(all_threads=True)``)."""
        self.started_ns = 0
        self.ended_ns = 0

    def __len__(self) -> int:
        return len(self.statements)

    def __iter__(self) -> Iterator[StatementRecord]:
        return iter(self.statements)

    def __getitem__(self, index: int) -> StatementRecord:
        return self.statements[index]

    def __repr__(self) -> str:
        return f"<QueryLog {self.name or ''} {len(self.statements)} statements>"

    @property
    def count(self) -> int:
        """Number of statements executed (executemany counts once)."""
        return len(self.statements)

    @property
    def duration_ms(self) -> float:
        """Total time spent in the driver, in milliseconds."""
        return sum(r.duration_ns for r in self.statements) / 1e6

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.statements:
            out[rec.kind] = out.get(rec.kind, 0) + 1
        return out

    def clear(self) -> None:
        self.statements.clear()
        self.boundaries.clear()
        self.eager_touches.clear()

    def release(self) -> None:
        """Drop references to live SQLAlchemy objects (see :meth:`StatementRecord.release`)."""
        for rec in self.statements:
            rec.release()

    def findings(
        self,
        config: DbprobeConfig | None = None,
        *,
        test: str | None = None,
    ) -> list[Finding]:
        """Run the detectors over the log (pure; see :mod:`dbprobe.analysis.nplusone`).

        config: thresholds and ignore/allow lists (default: ``[tool.dbprobe]`` of the
        current project); test: the pytest node id to put on each finding.
        """
        from dbprobe.analysis.nplusone import detect
        from dbprobe.config import load_config

        cfg = config if config is not None else load_config()
        return detect(self, cfg, test=test, root=self.root or cfg.root)

    def format_statements(self, limit: int = 50, root: str | None = None) -> str:
        """The numbered statements with call sites, for assertion messages."""
        lines = []
        for index, rec in enumerate(self.statements[:limit], start=1):
            sql = " ".join(redact_literals(rec.sql).split())
            if len(sql) > 160:
                sql = sql[:157] + "..."
            where = rec.location(root or self.root) or "<no application frame>"
            extra = ""
            orm = rec.orm
            if orm is not None and orm.relationship:
                extra = f" [{'lazy ' if orm.lazy else ''}{orm.relationship}]"
            lines.append(f"{index:>4}. {where} ({rec.function}){extra}\n        {sql}")
        if len(self.statements) > limit:
            lines.append(f"      ... and {len(self.statements) - limit} more")
        return "\n".join(lines)

    def to_dict(self, *, with_parameters: bool = False) -> dict[str, Any]:
        return {
            "name": self.name,
            "statements": [
                r.to_dict(root=self.root, with_parameters=with_parameters) for r in self.statements
            ],
            "boundaries": [dataclasses.asdict(b) for b in self.boundaries],
            "eager_touches": dict(self.eager_touches),
            "verifications": dict(self.verifications),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueryLog:
        log = cls(name=data.get("name"))
        log.statements = [StatementRecord.from_dict(r) for r in data.get("statements", [])]
        log.boundaries = [Boundary(**b) for b in data.get("boundaries", [])]
        log.eager_touches = dict(data.get("eager_touches") or {})
        log.verifications = dict(data.get("verifications") or {})
        return log


def statements_text(records: Sequence[StatementRecord], root: str | None = None) -> str:
    """Numbered statements with call sites (helper for messages)."""
    log = QueryLog(root=root)
    log.statements = list(records)
    return log.format_statements(limit=len(records), root=root)


def default_root() -> str:
    return os.getcwd()


__all__ += ["Boundary", "default_root", "relative_path", "statements_text"]
