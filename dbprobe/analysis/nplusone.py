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
    one strategy per step (``joined``, ``selectin``, ...)."""

    path: tuple[str, ...]
    strategies: tuple[str, ...]

    @property
    def root(self) -> str:
        return self.path[0].partition(".")[0]

    def expression(self) -> str:
        """``selectinload(Order.items).joinedload(OrderItem.product)``."""
        steps = zip(self.path, self.strategies, strict=False)
        parts = [f"{_LOADER_FUNCTIONS[strategy]}({step})" for step, strategy in steps]
        return ".".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"path": list(self.path), "strategies": list(self.strategies)}


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


def loader_fix(
    orm: OrmFacts, log_records: Sequence[Statement], before_seq: int | None = None
) -> LoaderFix | None:
    """The loader option for a lazy relationship load, the whole chain from the root
    entity. Steps before the last keep the strategy the application already uses (from
    the parent query's options, or the eager loader statements in the log); the last
    step becomes ``joined`` for a many-to-one and ``selectin`` for a collection."""
    if not orm.path:
        return None
    collections = orm.collections or tuple(False for _ in orm.path)
    strategies: list[str] = []
    root = orm.path[0].partition(".")[0]
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


def _varying_filters(shape: ShapeFacts, group: Sequence[Statement]) -> list[str]:
    out = []
    for expr, ref in shape.filters:
        values: set[str] = set()
        for rec in group:
            params = rec.parameters
            try:
                value = params[ref]
            except (KeyError, IndexError, TypeError):
                values = set()
                break
            values.add(repr(value))
        if len(values) > 1:
            out.append(expr)
    return out


def _batched_fix(group: Sequence[Statement]) -> tuple[str | None, str]:
    """(fix expression, advice) for a loop of look-ups that are not relationship loads."""
    sample = group[0]
    orm = sample.orm
    shape = sample.shape
    if orm is not None and orm.refresh:
        return None, (
            "objects expired by commit() are reloaded one statement each: keep them loaded "
            "(Session(expire_on_commit=False)) or re-select them in one query"
        )
    if orm is not None and orm.pk_get and shape is not None and shape.entity and shape.pk:
        entity = shape.entity
        if len(shape.pk) == 1:
            fix = f"select({entity}).where({entity}.{shape.pk[0]}.in_(ids))"
        else:
            cols = ", ".join(f"{entity}.{k}" for k in shape.pk)
            fix = f"select({entity}).where(tuple_({cols}).in_(keys))"
        return fix, (
            f"load all {entity} rows in one query: session.scalars({fix}), then look them "
            "up in a dict by primary key instead of calling session.get() per id"
        )
    if shape is not None and shape.filters:
        varying = _varying_filters(shape, group)
        if len(varying) == 1:
            key = varying[0]
            columns = [c for c in shape.columns if c != key]
            if shape.aggregate:
                fix = f"select({', '.join([key, *columns])}).where({key}.in_(ids)).group_by({key})"
                return fix, (
                    f"compute it for every {key} at once: {fix}, then read the results from a dict"
                )
            if shape.entity and columns == [shape.entity]:
                fix = f"select({shape.entity}).where({key}.in_(ids))"
            else:
                fix = f"select({', '.join([key, *columns])}).where({key}.in_(ids))"
            return fix, f"fetch the rows for every {key} in one query: {fix}, then group them"
    table = None
    names = tables(normalize(sample.sql))
    if names:
        table = names[0]
    target = f" on {table}" if table else ""
    return None, (
        f"run one query{target} for all values (WHERE ... IN (...) or = ANY(:values)) instead "
        "of one per value, then group the rows in Python"
    )


def _parents_location(
    orm: OrmFacts, records: Sequence[Statement], first_seq: int, root: str | None
) -> str | None:
    """Call site of the statement that loaded the root entity's rows before the loop."""
    target = orm.path[0].partition(".")[0] if orm.path else orm.parent
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


def _stats(group: Sequence[Statement]) -> dict[str, Any]:
    durations = sorted(r.duration_ns / 1e6 for r in group)
    n = len(durations)
    return {
        "total_ms": round(sum(durations), 3),
        "p50_ms": round(durations[n // 2], 4),
        "max_ms": round(durations[-1], 4),
    }


def n_plus_one(
    records: Sequence[Statement], config: DbprobeConfig, root: str | None = None
) -> list[Finding]:
    """``n-plus-one`` findings: one per (fingerprint, call site) repeated with different
    parameters at least ``config.n_plus_one_threshold`` times."""
    rule = RULES["n-plus-one"]
    # Grouped by the call site and the application frame that called it: a helper called
    # once from each of two places is not a loop; called from one line in a loop, it is.
    groups: dict[tuple[str, Any, Any], list[Statement]] = {}
    for rec in records:
        if rec.is_ignored(rule.id) or not _is_candidate_read(rec):
            continue
        site = rec.location(root)
        groups.setdefault((rec.fingerprint, site, rec.caller_location(root)), []).append(rec)
    findings = []
    for (fp, site, caller), group in groups.items():
        if len(group) < config.n_plus_one_threshold:
            continue
        # Values inlined as literals count as parameters too: compare text and parameters.
        distinct = len({(r.sql, r.parameter_key()) for r in group})
        if distinct < 2:
            continue
        sample = group[0]
        orm = sample.orm
        evidence: dict[str, Any] = {
            "count": len(group),
            "distinct_parameters": distinct,
            "function": sample.function,
            "called_from": caller,
            **_stats(group),
        }
        table = (sample.shape.table if sample.shape is not None else None) or next(
            iter(tables(normalize(sample.sql))), None
        )
        where = "in one test"
        if orm is not None and orm.lazy and orm.relationship:
            fix = loader_fix(orm, records, before_seq=sample.seq)
            expression = fix.expression() if fix is not None else None
            parents_at = _parents_location(orm, records, sample.seq, root)
            evidence.update(
                relationship=orm.relationship,
                parent=orm.parent,
                path=list(orm.path),
                strategy="lazy",
                collection=orm.collection,
                fix=expression,
                parents_loaded_at=parents_at,
            )
            if fix is not None:
                evidence["loader_fix"] = fix.to_dict()
            kind = "collection" if orm.collection else "many-to-one"
            message = f"{orm.relationship} lazy-loaded {len(group)} times {where} ({kind})"
            if expression and fix is not None and parents_at:
                recommendation = (
                    f"load it with the parent rows: add .options({expression}) to the "
                    f"{fix.root} query at {parents_at}"
                )
            elif expression:
                recommendation = f"load it with the parent rows: .options({expression})"
            else:
                recommendation = "load the relationship eagerly with the parent query"
        else:
            expression, advice = _batched_fix(group)
            evidence["fix"] = expression
            if orm is not None and orm.refresh:
                evidence["lookup"] = "refresh"
                message = f"expired {orm.entity} objects reloaded {len(group)} times {where}"
            elif orm is not None and orm.pk_get:
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
    for prev, nxt in zip(group, group[1:], strict=False):
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
