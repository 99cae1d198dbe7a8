"""Detectors over a query log: N+1 patterns and redundant queries (pure).

They take the statements of one scope (a test, a ``dbprobe.capture()`` block) as plain
records and return :class:`~dbprobe.report.model.Finding` objects with the exact fix:

* ``n-plus-one`` — the same statement shape (fingerprint) from the same call site with
  different parameters, at least ``n_plus_one_threshold`` times. Lazy relationship
  loads get the loader option (``joinedload(Order.customer)`` for a many-to-one,
  ``selectinload(Customer.orders)`` for a collection, the full chain for a nested path);
  ``Session.get`` and scalar loops get the one batched query that replaces them.
* ``redundant-query`` — the same statement (text and parameters) on the same database
  again, with no write and no commit/rollback in between.

Never reported: eager loaders' own statements (selectinload's ``IN`` query, subquery
loads), writes, executemany batches, failed statements, statements inside
``dbprobe.ignore()``, findings matched by the configuration's ``ignore`` list.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from dbprobe.analysis.fingerprint import normalize, redact_literals, tables
from dbprobe.config import DbprobeConfig, Matcher
from dbprobe.report.model import Finding, Severity
from dbprobe.rules import RULES

__all__ = [
    "LoaderFix",
    "apply_config",
    "detect",
    "loader_fix",
    "n_plus_one",
    "redundant_queries",
]


class OrmFacts(Protocol):
    entity: str | None
    relationship: str | None
    lazy: bool
    parent: str | None
    path: tuple[str, ...]
    collections: tuple[bool, ...]
    pk_get: bool
    refresh: bool
    dml: bool
    eager: tuple[tuple[tuple[str, ...], str], ...]
    reload: str
    attributes: tuple[str, ...]
    groups: tuple[str, ...]
    deferred_in_mapping: bool
    populate_existing: bool

    @property
    def collection(self) -> bool: ...


class ShapeFacts(Protocol):
    entity: str | None
    table: str | None
    columns: tuple[str, ...]
    filters: tuple[tuple[str, str | int], ...]
    aggregate: bool
    pk: tuple[str, ...]


class Statement(Protocol):
    """What the detectors read from a captured statement
    (:class:`dbprobe.capture.log.StatementRecord` provides it)."""

    seq: int
    sql: str
    parameters: Any
    executemany: bool
    duration_ns: int
    rowcount: int
    connection: int
    error: str | None
    start_ns: int

    @property
    def fingerprint(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def orm(self) -> OrmFacts | None: ...
    @property
    def shape(self) -> ShapeFacts | None: ...
    @property
    def function(self) -> str | None: ...
    def location(self, root: str | None = None) -> str | None: ...
    def caller_location(self, root: str | None = None) -> str | None: ...
    def parameter_key(self) -> Any: ...
    def is_ignored(self, rule: str) -> bool: ...
    @property
    def database(self) -> str: ...
    @property
    def dialect(self) -> str: ...


class Boundaries(Protocol):
    after: int
    connection: int


class Log(Protocol):
    @property
    def statements(self) -> Sequence[Any]: ...
    @property
    def boundaries(self) -> Sequence[Any]: ...
    @property
    def verifications(self) -> dict[str, dict[str, Any]]: ...


_LOADER_FUNCTIONS = {
    "joined": "joinedload",
    "selectin": "selectinload",
    "subquery": "subqueryload",
    "immediate": "immediateload",
}


@dataclasses.dataclass(frozen=True)
class LoaderFix:
    """A loader option that removes a lazy-load N+1: ``path`` from the root entity,
    one strategy per step (``joined``, ``selectin``, ...). ``recursion_depth`` (a
    self-referential relationship walked several levels deep) loads that many more
    levels with one option: ``selectinload(Category.children, recursion_depth=2)``."""

    path: tuple[str, ...]
    strategies: tuple[str, ...]
    recursion_depth: int | None = None

    @property
    def root(self) -> str:
        return self.path[0].partition(".")[0]

    def expression(self) -> str:
        """``selectinload(Order.items).joinedload(OrderItem.product)``."""
        if self.recursion_depth:
            step = self.path[0]
            return f"selectinload({step}, recursion_depth={self.recursion_depth})"
        steps = zip(self.path, self.strategies, strict=False)
        parts = [f"{_LOADER_FUNCTIONS[strategy]}({step})" for step, strategy in steps]
        return ".".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": list(self.path), "strategies": list(self.strategies)}
        if self.recursion_depth:
            out["recursion_depth"] = self.recursion_depth
        return out


def _is_candidate_read(rec: Statement) -> bool:
    if rec.executemany or rec.error is not None or rec.kind != "select":
        return False
    orm = rec.orm
    if orm is None:
        return True
    if orm.dml:
        return False
    # An eager loader's own statement (selectinload's IN query, a subquery load) runs once
    # per batch of parents by design: it is the fix, not the problem.
    return not (orm.relationship is not None and not orm.lazy)


def _default_strategy(collection: bool) -> str:
    return "selectin" if collection else "joined"


def _owner(step: str) -> str:
    return step.partition(".")[0]


def loader_fix(
    orm: OrmFacts, log_records: Sequence[Statement], before_seq: int | None = None
) -> LoaderFix | None:
    """The loader option for a lazy relationship load, the whole chain from the root
    entity, from the statement's own path only (see :func:`lazy_chain` for the chain
    through the statements that loaded the parents). Steps before the last keep the
    strategy the application already uses (from the parent query's options, or the
    eager loader statements in the log); the last step becomes ``joined`` for a
    many-to-one and ``selectin`` for a collection."""
    if not orm.path:
        return None
    collections = orm.collections or tuple(False for _ in orm.path)
    root = _owner(orm.path[0])
    options: dict[tuple[str, ...], str] = {}
    selectin_paths: set[tuple[str, ...]] = set()
    for rec in log_records:
        if before_seq is not None and rec.seq >= before_seq:
            break
        rec_orm = rec.orm
        if rec_orm is None:
            continue
        if rec_orm.entity == root and rec_orm.relationship is None:
            options = dict(rec_orm.eager)
        if rec_orm.relationship is not None and not rec_orm.lazy:
            selectin_paths.add(tuple(rec_orm.path))
    strategies = []
    for index in range(len(orm.path) - 1):
        prefix = tuple(orm.path[: index + 1])
        if prefix in options:
            strategies.append(options[prefix])
        elif prefix in selectin_paths:
            strategies.append("selectin")
        else:
            strategies.append(_default_strategy(collections[index]))
    strategies.append(_default_strategy(collections[-1]))
    return LoaderFix(tuple(orm.path), tuple(strategies))


@dataclasses.dataclass(frozen=True)
class LazyChain:
    """How the objects of a lazy load were reached, found through the ORM's load runs
    (each lazy load knows the run that loaded its parent object; each ORM statement the
    run it started): ``root`` is the statement the loader option goes on (``None`` when
    the parents were loaded outside the scope or the chain cannot be followed), ``path``
    the relationship chain from its entity to this load, ``lazy`` the indexes of the
    steps that were themselves lazy-loaded, ``parent`` the statement that loaded the
    parent objects (the root, an eager loader's statement, or another lazy load)."""

    root: Statement | None
    path: tuple[str, ...]
    collections: tuple[bool, ...]
    lazy: frozenset[int]
    strategies: tuple[str | None, ...]
    parent: Statement | None


class _Runs:
    """The records of a log indexed by the ORM load run they started."""

    def __init__(self, records: Sequence[Statement]) -> None:
        self.records = records
        self.by_runid: dict[int, Statement] = {}
        self.position: dict[int, int] = {}
        for position, rec in enumerate(records):
            self.position[rec.seq] = position
            runid = getattr(rec, "runid", None)
            if runid is not None:
                self.by_runid[runid] = rec
        self._chains: dict[int, LazyChain] = {}

    def loader_parent(self, eager: Statement, entity: str) -> Statement | None:
        """The statement an eager loader's statement ran for: the closest earlier ORM
        statement that loads ``entity`` and is not itself an eager loader's."""
        for index in range(self.position[eager.seq] - 1, -1, -1):
            rec = self.records[index]
            orm = rec.orm
            if orm is None or orm.dml or orm.entity != entity:
                continue
            if orm.relationship is None or orm.lazy:
                return rec
        return None

    def chain(self, rec: Statement, depth: int = 0) -> LazyChain:
        cached = self._chains.get(rec.seq)
        if cached is not None:
            return cached
        orm = rec.orm
        assert orm is not None
        path = tuple(orm.path) or ((orm.relationship,) if orm.relationship else ())
        collections = tuple(orm.collections) or tuple(False for _ in path)
        lazy = frozenset({len(path) - 1}) if orm.lazy and path else frozenset()
        # Strategies of this statement's eager steps: the options of the statement the
        # chain goes through (filled in below), None where unknown.
        strategies: tuple[str | None, ...] = (None,) * len(path)
        result = LazyChain(None, path, collections, lazy, strategies, None)
        parent_runid = getattr(rec, "parent_runid", None)
        parent = self.by_runid.get(parent_runid) if parent_runid is not None else None
        if not path or parent is None or depth > 50:
            self._chains[rec.seq] = result
            return result
        porm = parent.orm
        if porm is None:
            self._chains[rec.seq] = result
            return result
        via = parent
        if porm.relationship is not None and not porm.lazy:
            # The parents came from an eager loader's statement: this load's path starts
            # where that loader's statement started.
            via = self.loader_parent(parent, _owner(path[0])) or parent
        vorm = via.orm
        if vorm is None or (vorm.relationship is not None and not vorm.lazy):
            self._chains[rec.seq] = dataclasses.replace(result, parent=parent)
            return self._chains[rec.seq]
        if vorm.relationship is None:
            if vorm.entity != _owner(path[0]):
                result = dataclasses.replace(result, parent=parent)
            else:
                options = dict(vorm.eager)
                known = tuple(options.get(tuple(path[: i + 1])) for i in range(len(path)))
                result = LazyChain(via, path, collections, lazy, known, parent)
            self._chains[rec.seq] = result
            return result
        # The parents were lazy-loaded themselves: this chain continues theirs.
        if vorm.entity != _owner(path[0]):
            self._chains[rec.seq] = dataclasses.replace(result, parent=parent)
            return self._chains[rec.seq]
        upper = self.chain(via, depth + 1)
        offset = len(upper.path)
        options = dict(vorm.eager)  # eager by mapping on the lazy-loaded entity
        known = tuple(options.get(tuple(path[: i + 1])) for i in range(len(path)))
        result = LazyChain(
            upper.root,
            upper.path + path,
            upper.collections + collections,
            upper.lazy | frozenset(offset + i for i in lazy),
            upper.strategies + known,
            parent,
        )
        self._chains[rec.seq] = result
        return result


def _chain_fix(chain: LazyChain, selectin_paths: set[tuple[str, ...]]) -> LoaderFix:
    strategies = []
    for index, step in enumerate(chain.path):
        known = chain.strategies[index]
        if index in chain.lazy or index == len(chain.path) - 1:
            strategies.append(_default_strategy(chain.collections[index]))
        elif known is not None:
            strategies.append(known)
        elif tuple(chain.path[: index + 1]) in selectin_paths or (step,) in selectin_paths:
            strategies.append("selectin")
        else:
            strategies.append(_default_strategy(chain.collections[index]))
    return LoaderFix(tuple(chain.path), tuple(strategies))


def _self_referential(orm: OrmFacts) -> bool:
    rel = orm.relationship
    return bool(rel) and orm.entity is not None and _owner(rel or "") == orm.entity


def _stats(group: Sequence[Statement]) -> dict[str, Any]:
    durations = sorted(r.duration_ns / 1e6 for r in group)
    n = len(durations)
    return {
        "total_ms": round(sum(durations), 3),
        "p50_ms": round(durations[n // 2], 4),
        "max_ms": round(durations[-1], 4),
    }


def _reload_advice(
    orm: OrmFacts, group: Sequence[Statement], runs: _Runs, root: str | None
) -> tuple[str, str | None, str, str | None]:
    """(message kind, fix, advice, where the objects were loaded) for reloads."""
    entity = orm.entity or "the"
    counts: dict[int, int] = {}
    for rec in group:
        parent_runid = getattr(rec, "parent_runid", None)
        if parent_runid is not None:
            counts[parent_runid] = counts.get(parent_runid, 0) + 1
    loaded = None
    source = None
    if counts:
        best = max(counts, key=counts.__getitem__)
        source = runs.by_runid.get(best)
        loaded = source.location(root) if source is not None else None
    query = (
        f"the {entity} query at {loaded}"
        if loaded
        else f"the query that loads the {entity} objects"
    )
    if orm.reload == "deferred":
        attrs = list(orm.attributes) or [f"{entity}.<column>"]
        many = len(attrs) > 1
        it, they = ("them", "they are") if many else ("it", "it is")
        message = (
            f"deferred column{'s' if many else ''} {', '.join(attrs)} loaded one "
            f"{entity} object at a time"
        )
        if orm.deferred_in_mapping:
            if orm.groups:
                fix = ", ".join(f'undefer_group("{g}")' for g in orm.groups)
            else:
                fix = ", ".join(f"undefer({a})" for a in attrs)
            return (
                message,
                fix,
                f"load {', '.join(attrs)} with the objects: add .options({fix}) to {query} "
                f"(the mapping defers {it}: deferred=True; stop deferring {it} in the "
                f"mapping if {they} always read)",
                loaded,
            )
        # Deferred by an option of the query (defer(), load_only()): adding undefer() to
        # that query conflicts with it; the option itself has to go.
        options = list(getattr(source.shape, "options", ()) if source is not None else ())
        written = [o for o in options if o in {f"defer({a})" for a in attrs}]
        if written:
            advice = (
                f"{query} defers {it} with {', '.join(written)} and the loop reads {it}: "
                f"drop that option so {it} {'are' if many else 'is'} loaded with the objects"
            )
        else:
            advice = (
                f"{query} defers {it} with an option (defer() or load_only()) and the loop "
                f"reads {it}: drop the defer(), or add {', '.join(attrs)} to load_only(), so "
                f"{it} {'are' if many else 'is'} loaded with the objects"
            )
        return message, None, advice, loaded
    shape = group[0].shape
    pk = list(shape.pk) if shape is not None and shape.pk else []
    select_in = None
    if orm.entity and len(pk) == 1:
        select_in = f"select({entity}).where({entity}.{pk[0]}.in_(ids))"
    elif orm.entity and pk:
        cols = ", ".join(f"{entity}.{k}" for k in pk)
        select_in = f"select({entity}).where(tuple_({cols}).in_(keys))"
    if orm.reload == "refresh":
        return (
            f"Session.refresh() of {entity} objects one at a time",
            None,
            "refresh them in one query: session.scalars("
            + (select_in or "select(...).where(<primary key>.in_(ids))")
            + ".execution_options(populate_existing=True)) reloads every object (and "
            "overwrites its attributes) with one statement",
            loaded,
        )
    return (
        f"expired {entity} objects reloaded",
        None,
        "objects expired by commit() (or expire()) are reloaded one statement each: "
        "read what you need before the commit, or reload them all in one query after it ("
        + (select_in or "select(...).where(<primary key>.in_(ids))")
        + ".execution_options(populate_existing=True)). Session(expire_on_commit=False) "
        "avoids the reloads but then the objects keep the values they had before the "
        "commit, including changes other transactions made since: use it only when "
        "stale values are acceptable",
        loaded,
    )


def _batched_fix(group: Sequence[Statement], dialect: str = "") -> tuple[str | None, str]:
    """(fix expression, advice) for a loop of look-ups that are not relationship loads."""
    from dbprobe.analysis.batching import batched_rewrite, pk_rewrite

    sample = group[0]
    orm = sample.orm
    shape = sample.shape
    if orm is not None and orm.pk_get and shape is not None and shape.entity and shape.pk:
        return pk_rewrite(shape, orm, dialect)
    if shape is not None and shape.filters:
        done = batched_rewrite(
            shape, group, dialect, populate_existing=bool(orm and orm.populate_existing)
        )
        if done is not None:
            return done
    table = None
    names = tables(normalize(sample.sql))
    if names:
        table = names[0]
    target = f" on {table}" if table else ""
    return None, (
        f"run one query{target} for all values (WHERE ... IN (...) or = ANY(:values)) instead "
        "of one per value, keeping the query's other conditions, then group the rows in "
        "Python. If each query keeps only the first rows of its value (ORDER BY ... LIMIT), "
        "IN would return all of them: use a window function (row_number() OVER (PARTITION "
        "BY ...)), DISTINCT ON or a LATERAL join instead"
    )


PAGING_ROLES = frozenset({"limit", "offset", "range"})
"""A loop whose statements differ only in these values pages or chunks through rows."""


def n_plus_one(
    records: Sequence[Statement], config: DbprobeConfig, root: str | None = None
) -> list[Finding]:
    """``n-plus-one`` findings: one per (fingerprint, call site) repeated with different
    parameters at least ``config.n_plus_one_threshold`` times in one activation (one
    thread or asyncio task: two requests served by two tasks are not one loop)."""
    from dbprobe.analysis.batching import varying_roles

    rule = RULES["n-plus-one"]
    runs = _Runs(records)
    # Grouped by the call site and the application frame that called it: a helper called
    # once from each of two places is not a loop; called from one line in a loop, it is.
    # A recursive walk of a self-referential relationship is one loop at every level.
    groups: dict[tuple[str, Any, Any, int], list[Statement]] = {}
    for rec in records:
        if rec.is_ignored(rule.id) or not _is_candidate_read(rec):
            continue
        site = rec.location(root)
        orm = rec.orm
        caller = rec.caller_location(root)
        if orm is not None and orm.lazy and _self_referential(orm):
            caller = None
        key = (rec.fingerprint, site, caller, int(getattr(rec, "activation", 0) or 0))
        groups.setdefault(key, []).append(rec)
    loops: dict[tuple[str, Any, Any], list[Statement]] = {}
    for (fp, site, caller, _activation), group in groups.items():
        if len(group) < config.n_plus_one_threshold:
            continue
        # Values inlined as literals count as parameters too: compare text and parameters.
        if len({(r.sql, r.parameter_key()) for r in group}) < 2:
            continue
        loops.setdefault((fp, site, caller), []).extend(group)
    selectin_paths = {
        tuple(r.orm.path)
        for r in records
        if r.orm is not None and r.orm.relationship is not None and not r.orm.lazy
    }
    findings = []
    for (fp, site, caller), group in loops.items():
        group.sort(key=lambda r: r.seq)
        sample = group[0]
        orm = sample.orm
        distinct = len({(r.sql, r.parameter_key()) for r in group})
        evidence: dict[str, Any] = {
            "count": len(group),
            "distinct_parameters": distinct,
            "function": sample.function,
            "called_from": caller,
            **_stats(group),
        }
        activations = {getattr(r, "activation", 0) for r in group}
        if len(activations) > 1:
            evidence["activations"] = len(activations)
        table = (sample.shape.table if sample.shape is not None else None) or next(
            iter(tables(normalize(sample.sql))), None
        )
        where = "in one test"
        if orm is not None and orm.lazy and orm.relationship:
            message, recommendation = _relationship_finding(
                orm, group, runs, records, selectin_paths, evidence, root, where
            )
            if message is None:
                continue
        else:
            if orm is None or not orm.refresh:
                roles = varying_roles(group)
                if roles and roles <= PAGING_ROLES:
                    continue  # LIMIT/OFFSET, keyset or range pages: a loop by design
            if orm is not None and orm.refresh:
                kind, expression, advice, loaded = _reload_advice(orm, group, runs, root)
                evidence["lookup"] = "refresh"
                evidence["reload"] = orm.reload or "expired"
                evidence["fix"] = expression
                if loaded:
                    evidence["parents_loaded_at"] = loaded
                message = f"{kind} {len(group)} times {where}"
            else:
                expression, advice = _batched_fix(group, sample.dialect)
                evidence["fix"] = expression
                if orm is not None and orm.pk_get:
                    evidence["lookup"] = "session.get"
                    message = (
                        f"{orm.entity or table} loaded by primary key {len(group)} times "
                        f"{where} from one line"
                    )
                else:
                    evidence["lookup"] = "query"
                    message = (
                        f"the same query on {table or 'one table'} ran {len(group)} times "
                        f"{where} from one line with different parameters"
                    )
            recommendation = advice
        findings.append(
            rule.finding(
                message,
                recommendation,
                location=site,
                table=table,
                sql=redact_literals(sample.sql),
                count=len(group),
                fingerprint=fp,
                evidence=evidence,
            )
        )
    return findings


def _relationship_finding(
    orm: OrmFacts,
    group: Sequence[Statement],
    runs: _Runs,
    records: Sequence[Statement],
    selectin_paths: set[tuple[str, ...]],
    evidence: dict[str, Any],
    root: str | None,
    where: str,
) -> tuple[str | None, str]:
    """Message and recommendation of a lazy-load N+1 (fills ``evidence``)."""
    sample = group[0]
    chains = [runs.chain(r) for r in group]
    # The statement the option goes on: the one most of the parents came from.
    by_root: dict[int, list[LazyChain]] = {}
    for chain in chains:
        if chain.root is not None:
            by_root.setdefault(chain.root.seq, []).append(chain)
    fix: LoaderFix | None
    parents_at = None
    if by_root:
        best = max(by_root.values(), key=len)
        chain = max(best, key=lambda c: len(c.path))
        assert chain.root is not None
        parents_at = chain.root.location(root)
        if _self_referential(orm) and len(set(chain.path)) == 1:
            depth = max(len(c.path) for c in best)
            fix = LoaderFix(
                chain.path[:1],
                ("selectin",),
                recursion_depth=depth - 1 if depth > 1 else None,
            )
            evidence["levels"] = depth
        else:
            fix = _chain_fix(chain, selectin_paths)
        lazy_steps = [chain.path[i] for i in sorted(chain.lazy) if i < len(chain.path) - 1]
        root_entity = chain.root.orm.entity if chain.root.orm is not None else None
    else:
        # The parents were loaded outside the scope, or their load runs are unknown
        # (a log saved by an earlier release): the statement's own path.
        fix = loader_fix(orm, records, before_seq=sample.seq)
        lazy_steps = []
        root_entity = None
        if fix is not None and not any(getattr(r, "parent_runid", None) for r in group):
            parents_at = _closest_parents(orm, records, sample.seq, root)
    expression = fix.expression() if fix is not None else None
    evidence.update(
        relationship=orm.relationship,
        parent=orm.parent,
        path=list(fix.path) if fix is not None else list(orm.path),
        strategy="lazy",
        collection=orm.collection,
        fix=expression,
        parents_loaded_at=parents_at,
    )
    if fix is not None:
        evidence["loader_fix"] = fix.to_dict()
    kind = "collection" if orm.collection else "many-to-one"
    message = f"{orm.relationship} lazy-loaded {len(group)} times {where} ({kind})"
    if expression and fix is not None:
        target = root_entity or fix.root
        place = (
            f"the {target} query at {parents_at}"
            if parents_at
            else f"the query that loads the {target} objects"
        )
        recommendation = f"load it with the parent rows: add .options({expression}) to {place}"
        if lazy_steps and not fix.recursion_depth:
            recommendation += (
                f" ({', '.join(lazy_steps)} {'is' if len(lazy_steps) == 1 else 'are'} "
                "lazy-loaded on the way too: this one option loads the whole chain)"
            )
        if fix.recursion_depth:
            recommendation += (
                f"; the loop walks {fix.recursion_depth + 1} levels of the tree: "
                "recursion_depth loads them level by level, one query each "
                "(recursion_depth=-1 loads the whole tree)"
            )
    elif expression:
        recommendation = f"load it with the parent rows: .options({expression})"
    else:
        recommendation = "load the relationship eagerly with the parent query"
    return message, recommendation


def _closest_parents(
    orm: OrmFacts, records: Sequence[Statement], first_seq: int, root: str | None
) -> str | None:
    """For logs without load runs: the last statement of the root entity before the
    loop (an approximation: an unrelated query of the same entity in between wins)."""
    target = _owner(orm.path[0]) if orm.path else orm.parent
    found = None
    for rec in records:
        if rec.seq >= first_seq:
            break
        rec_orm = rec.orm
        if (
            rec_orm is not None
            and rec_orm.entity == target
            and rec_orm.relationship is None
            and not rec_orm.dml
        ):
            found = rec
    return found.location(root) if found is not None else None


POLL_GAP_MS = 10.0
"""Repeats of one read from one line, with nothing else run on that connection in
between and at least this long (milliseconds) between the end of one and the start of
the next, are a polling loop waiting for another transaction's change: not redundant."""


def _is_polling(group: Sequence[Statement], records: Sequence[Statement], root: str | None) -> bool:
    starts = [getattr(r, "start_ns", 0) for r in group]
    if not all(starts) or len({r.location(root) for r in group}) != 1:
        return False
    seqs = {r.seq for r in group}
    by_seq = {r.seq: r for r in records}
    for prev, nxt in itertools.pairwise(group):
        gap_ms = (nxt.start_ns - (prev.start_ns + prev.duration_ns)) / 1e6
        if gap_ms < POLL_GAP_MS:
            return False
        between = (by_seq[q] for q in range(prev.seq + 1, nxt.seq) if q in by_seq)
        if any(r.connection == prev.connection and r.seq not in seqs for r in between):
            return False
    return True


def redundant_queries(
    records: Sequence[Statement],
    boundaries: Iterable[Boundaries],
    config: DbprobeConfig,
    root: str | None = None,
    exclude: frozenset[int] = frozenset(),
) -> list[Finding]:
    """``redundant-query`` findings: the same statement with the same parameters at least
    ``config.redundant_threshold`` times with nothing in between that could change its
    result: no write anywhere in the scope (INSERT/UPDATE/DELETE/DDL, ``DO``, ``CALL``,
    ``SET``, a SELECT of a function that may write) and no transaction end on the
    connection of either execution. Reads whose result changes by itself (``random()``,
    ``nextval()``, ``clock_timestamp()``, row locks, live statistics) and polling loops
    are never reported. Statements whose seq is in ``exclude`` (already part of an N+1)
    are skipped."""
    from dbprobe.analysis.fingerprint import statement_effect

    rule = RULES["redundant-query"]
    # Transaction ends per connection, as positions in the log.
    ends: dict[int, list[int]] = {}
    for boundary in boundaries:
        ends.setdefault(getattr(boundary, "connection", 0), []).append(boundary.after)
    epoch = 0
    groups: dict[tuple[str, str, Any, int], list[tuple[int, Statement]]] = {}
    for position, rec in enumerate(records):
        kind = rec.kind
        if kind == "transaction":
            # COMMIT / ROLLBACK sent as SQL: a transaction end on that connection.
            ends.setdefault(rec.connection, []).append(position + 1)
            continue
        if kind != "select" or (rec.orm is not None and rec.orm.dml):
            epoch += 1  # data may have changed: a later identical read is not redundant
            continue
        effect = statement_effect(normalize(rec.sql))
        if effect == "write":
            epoch += 1
            continue
        if effect == "volatile":
            continue
        if rec.seq in exclude or rec.is_ignored(rule.id) or not _is_candidate_read(rec):
            continue
        if rec.orm is not None and rec.orm.refresh:
            continue
        # Identical means the same text and parameters on the same database (the same
        # statement shape with other inlined literals is another statement).
        key = (rec.database, rec.sql, rec.parameter_key(), epoch)
        groups.setdefault(key, []).append((position, rec))
    for positions in ends.values():
        positions.sort()

    def ended_between(connection: int, after: int, upto: int) -> bool:
        positions = ends.get(connection)
        if not positions:
            return False
        index = bisect.bisect_right(positions, after)
        return index < len(positions) and positions[index] <= upto

    runs: list[list[Statement]] = []
    for members in groups.values():
        run: list[Statement] = []
        last = -1
        for position, rec in members:
            if run and (
                ended_between(run[-1].connection, last, position)
                or ended_between(rec.connection, last, position)
            ):
                runs.append(run)
                run = []
            run.append(rec)
            last = position
        runs.append(run)
    findings = []
    for group in runs:
        if len(group) < config.redundant_threshold or _is_polling(group, records, root):
            continue
        fp = group[0].fingerprint
        sample = group[0]
        repeat = group[1]
        sites = [r.location(root) for r in group]
        table = next(iter(tables(normalize(sample.sql))), None)
        first = sites[0] or "an unknown line"
        findings.append(
            rule.finding(
                f"the same query on {table or 'one table'} with the same parameters ran "
                f"{len(group)} times (first at {first})",
                "run it once and reuse the result (hoist it out of the repeated code path, "
                "pass it along, or cache it for the request)",
                location=repeat.location(root),
                table=table,
                sql=redact_literals(sample.sql),
                count=len(group),
                fingerprint=fp,
                evidence={
                    "count": len(group),
                    "call_sites": sites,
                    "first_at": sites[0],
                    **_stats(group),
                },
            )
        )
    return findings


def apply_config(findings: list[Finding], config: DbprobeConfig, test: str | None) -> list[Finding]:
    """Drop findings matched by ``config.ignore``, downgrade those matched by
    ``config.allow`` to info (``evidence["allowed"]``), and set ``test``."""
    out = []
    for finding in findings:
        keys: dict[str, Any] = {
            "rule": finding.rule,
            "location": finding.location,
            "fingerprint": finding.fingerprint,
            "normalized_sql": normalize(finding.sql) if finding.sql else None,
            "relationship": finding.evidence.get("relationship"),
            "test": test,
        }
        if any(m.matches(**keys) for m in config.ignore):
            continue
        allowed = _first(config.allow, keys)
        if allowed is not None:
            evidence = dict(finding.evidence)
            evidence["allowed"] = allowed.reason or True
            kept = dataclasses.replace(finding, severity=Severity.INFO, evidence=evidence)
        else:
            kept = finding
        out.append(kept if test is None else kept.with_test(test))
    return out


def _first(matchers: Sequence[Matcher], keys: dict[str, Any]) -> Matcher | None:
    return next((m for m in matchers if m.matches(**keys)), None)


def _with_verification(finding: Finding, verified: dict[str, dict[str, Any]]) -> Finding:
    result = verified.get(f"{finding.fingerprint}@{finding.location}")
    if result is None:
        return finding
    evidence = dict(finding.evidence)
    evidence["verified"] = result
    return dataclasses.replace(finding, evidence=evidence)


def detect(
    log: Log, config: DbprobeConfig, *, test: str | None = None, root: str | None = None
) -> list[Finding]:
    """Every detector over one scope's log, with the configuration's ignore/allow lists
    applied; findings carry ``test`` when given."""
    records = list(log.statements)
    n1 = n_plus_one(records, config, root)
    in_n1: set[int] = set()
    if n1:
        keys = {(f.fingerprint, f.location) for f in n1}
        in_n1 = {r.seq for r in records if (r.fingerprint, r.location(root)) in keys}
    found = [
        *n1,
        *redundant_queries(records, log.boundaries, config, root, frozenset(in_n1)),
    ]
    from dbprobe.analysis.eager import joinedload_row_explosion, unused_eager_loads

    if config.unused_eager_loads:
        found.extend(unused_eager_loads(records, getattr(log, "eager_touches", {}) or {}, root))
    found.extend(joinedload_row_explosion(records, config, root))
    verified = getattr(log, "verifications", None) or {}
    if verified:
        found = [_with_verification(f, verified) for f in found]
    if test is None:
        found = [
            dataclasses.replace(f, message=f.message.replace(" in one test", " in one scope"))
            for f in found
        ]
    return apply_config(found, config, test)
