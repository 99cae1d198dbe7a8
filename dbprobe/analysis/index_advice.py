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
    CatalogSnapshot,
    ForeignKeyInfo,
    IndexInfo,
    TableInfo,
    display_name,
    qualified,
    quote_ident,
    serves_columns,
)
from dbprobe.analysis.plans import Operand, ScanCandidate, SortColumn, display_condition, redact
from dbprobe.report.model import Finding, Severity
from dbprobe.rules import RULES

MAX_IDENTIFIER_BYTES = 63
DEFAULT_MIN_COST_DROP = 0.5


@dataclasses.dataclass(frozen=True)
class IndexKey:
    """One key of a proposed index: a column or an expression, with its direction."""

    column: str | None = None
    expression: str | None = None
    descending: bool = False
    nulls_first: bool = False

    @property
    def label(self) -> str:
        return self.column if self.column is not None else (self.expression or "?")

    def sql(self) -> str:
        text = quote_ident(self.column) if self.column is not None else f"({self.expression})"
        if self.descending:
            text += " DESC"
            if not self.nulls_first:
                text += " NULLS LAST"
        elif self.nulls_first:
            text += " NULLS FIRST"
        return text

    @classmethod
    def of(cls, operand: Operand, sort: SortColumn | None = None) -> IndexKey:
        column = operand.column.name if operand.column is not None else None
        return cls(
            column=column,
            expression=None if column is not None else operand.expression,
            descending=bool(sort and sort.descending),
            nulls_first=bool(sort and sort.nulls_first),
        )


@dataclasses.dataclass(frozen=True)
class IndexAdvice:
    """A proposed index on ``schema.table``.

    reason: what it serves (``equality on reference``); extends: an existing index
    whose key columns lead this one (it may become redundant once this one exists).
    """

    schema: str
    table: str
    keys: tuple[IndexKey, ...]
    name: str
    method: str = "btree"
    reason: str = ""
    extends: str | None = None

    @property
    def columns_text(self) -> str:
        return "(" + ", ".join(k.sql() for k in self.keys) + ")"

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


def _key_matches(key: IndexKey, col: Any) -> bool:
    if key.column is not None:
        return bool(col.name == key.column)
    return col.name is None and _norm(col.definition) == _norm(key.expression or "")


def served_by(
    keys: Sequence[IndexKey], equality_count: int, indexes: Iterable[IndexInfo]
) -> IndexInfo | None:
    """An existing index whose leading key columns already do this advice's work.

    The first ``equality_count`` keys may appear in any order (equality columns are
    interchangeable); the rest must follow in order, with the same direction or all
    directions reversed (a B-tree scans backwards). Only valid, non-partial B-trees.
    """
    for index in indexes:
        if index.method != "btree" or not index.valid or index.predicate is not None:
            continue
        cols = index.key_columns
        if len(cols) < len(keys):
            continue
        eq_keys, rest = list(keys[:equality_count]), list(keys[equality_count:])
        lead = cols[: len(eq_keys)]
        if not all(any(_key_matches(k, c) for c in lead) for k in eq_keys):
            continue
        tail = cols[len(eq_keys) : len(eq_keys) + len(rest)]
        if not all(_key_matches(k, c) for k, c in zip(rest, tail, strict=True)):
            continue
        flips = {k.descending != c.descending for k, c in zip(rest, tail, strict=True)}
        if len(flips) > 1:
            continue
        return index
    return None


def _extends(keys: Sequence[IndexKey], indexes: Iterable[IndexInfo]) -> str | None:
    """An existing index whose key columns are a leading prefix of ``keys``."""
    for index in indexes:
        cols = index.key_columns
        if (
            index.method == "btree"
            and index.valid
            and index.predicate is None
            and 0 < len(cols) < len(keys)
            and all(_key_matches(k, c) for k, c in zip(keys, cols, strict=False))
        ):
            return index.name
    return None


# -- advice for a scan --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdviceSet:
    """Alternatives to verify (narrowest first) and what was left out and why."""

    alternatives: tuple[IndexAdvice, ...]
    served_by: str | None = None
    reason_none: str | None = None


def advise(
    candidate: ScanCandidate,
    indexes: Sequence[IndexInfo] = (),
    *,
    taken: Iterable[str] = (),
    max_columns: int = 3,
) -> AdviceSet:
    """Index alternatives for a :class:`~dbprobe.analysis.plans.ScanCandidate`.

    Alternatives, narrowest first: the new equality columns alone; with the columns
    the current index already searches; plus one range column; plus the sort order
    (with a LIMIT). Each is at most ``max_columns`` keys. Alternatives an existing index
    already serves are dropped (``served_by`` names it when nothing is left).
    """
    schema = candidate.schema or "public"
    eq = [IndexKey.of(o) for o in candidate.equality]
    served = [IndexKey.of(o) for o in candidate.served]
    ranges = [IndexKey.of(o) for o in (*candidate.ranges, *candidate.served_ranges)]
    sort = [IndexKey.of(s.operand, s) for s in candidate.sort] if candidate.has_limit else []
    if sort and all(k.descending and k.nulls_first for k in sort):
        # ORDER BY … DESC on every key: an ascending index scanned backwards serves it.
        sort = [dataclasses.replace(k, descending=False, nulls_first=False) for k in sort]

    options: list[tuple[list[IndexKey], int, str]] = []
    eq_labels = ", ".join(k.label for k in eq)
    if eq:
        options.append((eq, len(eq), f"equality on {eq_labels}"))
        if served:
            both = served + eq
            options.append((both, len(both), f"equality on {', '.join(k.label for k in both)}"))
    all_eq = served + eq
    if ranges:
        rng = ranges[0]
        options.append(([*all_eq, rng], len(all_eq), _reason(all_eq, f"range on {rng.label}")))
    if sort:
        first_sort = sort[0].label
        if not ranges or ranges[0].label == first_sort:
            keys = all_eq + [k for k in sort if k.label not in {e.label for e in all_eq}]
            order = ", ".join(
                s.operand.key + (" DESC" if s.descending else "") for s in candidate.sort
            )
            options.append((keys, len(all_eq), _reason(all_eq, f"order by {order}")))
    if not options:
        why = "no condition on this relation that a B-tree index can search"
        if candidate.unindexable:
            why = "its conditions cannot use a B-tree index: " + "; ".join(
                redact(t) or t for t in candidate.unindexable
            )
        return AdviceSet((), reason_none=why)

    table_indexes = list(indexes)
    out: list[IndexAdvice] = []
    seen: set[tuple[str, ...]] = set()
    served_name: str | None = None
    names = set(taken)
    for option_keys, eq_count, reason in options:
        keys = option_keys[:max_columns]
        sig = tuple(k.sql() for k in keys)
        if not keys or sig in seen:
            continue
        seen.add(sig)
        existing = served_by(keys, min(eq_count, len(keys)), table_indexes)
        if existing is not None:
            served_name = served_name or existing.name
            continue
        out.append(
            IndexAdvice(
                schema=schema,
                table=candidate.relation,
                keys=tuple(keys),
                name=index_name(candidate.relation, keys, names),
                reason=reason,
                extends=_extends(keys, table_indexes),
            )
        )
    if not out:
        return AdviceSet((), served_by=served_name, reason_none=f"already served by {served_name}")
    return AdviceSet(tuple(out), served_by=served_name)


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
) -> Finding | None:
    """The ``unindexed-lookup`` finding, or ``None`` when verification showed the index
    would not cut the cost by ``min_cost_drop`` (the scan is then the right plan).

    Severity: the rule's (error) when verified; warning when it could not be verified
    or no index can be proposed.
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
        return rule.finding(
            f"{what}; no index proposal: {reason_none}",
            "Rewrite the condition so an index can search it (an OR across columns as a "
            "UNION of two indexed look-ups, a LIKE '%…%' with a pg_trgm GIN index), or "
            "accept the scan if it is rare.",
            severity=Severity.WARNING,
            table=table,
            sql=sql,
            fingerprint=fingerprint
            or f"{candidate.schema}.{candidate.relation}:{candidate.pattern}",
            evidence=evidence,
        )
    evidence["index"] = advice.to_dict()
    evidence["alternatives"] = list(alternatives)
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
    return rule.finding(
        message,
        recommendation,
        severity=severity,
        table=table,
        sql=sql,
        fingerprint=fingerprint or advice.fingerprint,
        evidence=evidence,
    )
