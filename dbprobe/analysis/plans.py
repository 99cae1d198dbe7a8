"""``EXPLAIN (FORMAT JSON)`` parsed into typed nodes, unindexed look-ups and red flags.

Pure: a plan document (the list ``EXPLAIN (FORMAT JSON)`` returns) and, optionally, a
:class:`~dbprobe.analysis.catalog.CatalogSnapshot` in; :class:`Plan`,
:class:`ScanCandidate` and findings out.

``find_unindexed_scans`` looks for scans of a large relation (default ≥ 10,000 rows)
that keep a small share (default ≤ 10 %) of the rows they read:

* ``filter`` — a Seq Scan (or an Index/Bitmap scan) whose Filter discards most rows,
  wherever it sits (under ModifyTable, Aggregate, Gather, a SubPlan ...);
* ``join`` — a full scan feeding a join (the inner side of a Nested Loop, the probe or
  build side of a Hash Join, a Merge Join input) when the join keeps few rows: an index
  on the join key would let the planner look rows up instead;
* ``top-n`` — Limit over Sort over a full scan: an index in the sort order would let
  the scan stop after the first rows.

Each candidate carries the columns an index could use (equality, range, sort order),
which :mod:`dbprobe.analysis.index_advice` turns into a ``CREATE INDEX``. Red flags
(``row-misestimate``, ``sort-spill``, ``hash-spill``) need ``EXPLAIN ANALYZE`` data.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dbprobe.analysis.catalog import CatalogSnapshot, TableInfo, display_name
from dbprobe.analysis.sqltext import (
    Token,
    matching_paren,
    render,
    split_top_level,
    strip_parens,
    tokenize,
)
from dbprobe.report.model import Finding
from dbprobe.rules import RULES

# -- plan nodes --------------------------------------------------------------------------

SCAN_TYPES = frozenset(
    {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Tid Scan", "Sample Scan"}
)
JOIN_TYPES = frozenset({"Nested Loop", "Hash Join", "Merge Join"})
# Nodes that pass rows through without changing which rows flow (for pattern matching).
PASS_THROUGH = frozenset({"Gather", "Gather Merge", "Result", "Materialize", "Hash", "Memoize"})


@dataclasses.dataclass(frozen=True)
class PlanNode:
    """One node of a plan, with the fields dbprobe reads (all others are dropped).

    Costs are the planner's arbitrary units; ``plan_rows`` is per loop (per worker for
    parallel-aware nodes). ``actual_*`` and ``rows_removed_*`` are ``None`` unless the
    plan came from ``EXPLAIN ANALYZE`` (``actual_rows`` is per loop, as printed).
    Sizes (``sort_space_used``, ``peak_memory_kb``, ``disk_usage_kb``) are in kB.
    """

    node_type: str
    relation: str | None = None
    schema: str | None = None
    alias: str | None = None
    index_name: str | None = None
    parent_relationship: str | None = None
    subplan_name: str | None = None
    join_type: str | None = None
    strategy: str | None = None
    parallel_aware: bool = False
    scan_direction: str | None = None
    startup_cost: float = 0.0
    total_cost: float = 0.0
    plan_rows: float = 0.0
    plan_width: int = 0
    filter: str | None = None
    index_cond: str | None = None
    recheck_cond: str | None = None
    join_filter: str | None = None
    hash_cond: str | None = None
    merge_cond: str | None = None
    sort_key: tuple[str, ...] = ()
    workers_planned: int | None = None
    actual_rows: float | None = None
    actual_loops: float | None = None
    actual_total_time: float | None = None
    rows_removed_by_filter: float | None = None
    rows_removed_by_join_filter: float | None = None
    rows_removed_by_index_recheck: float | None = None
    sort_method: str | None = None
    sort_space_used: float | None = None
    sort_space_type: str | None = None
    hash_batches: int | None = None
    original_hash_batches: int | None = None
    hashagg_batches: int | None = None
    peak_memory_kb: float | None = None
    disk_usage_kb: float | None = None
    lossy_heap_blocks: float | None = None
    children: tuple[PlanNode, ...] = ()

    @property
    def analyzed(self) -> bool:
        return self.actual_loops is not None

    @property
    def is_scan(self) -> bool:
        return self.node_type in SCAN_TYPES and self.relation is not None

    @property
    def label(self) -> str:
        """``Seq Scan on public.orders o`` / ``Index Scan using ix on orders`` / ``Sort``."""
        text = self.node_type
        if self.parallel_aware and not text.startswith("Parallel"):
            text = "Parallel " + text
        if self.index_name and self.node_type != "Bitmap Heap Scan":
            text += f" using {self.index_name}"
        if self.relation:
            rel = f"{self.schema}.{self.relation}" if self.schema else self.relation
            text += f" on {rel}"
            if self.alias and self.alias != self.relation:
                text += f" {self.alias}"
        return text

    def walk(self) -> Iterator[PlanNode]:
        """This node and every descendant, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def walk_with_ancestors(
        self, ancestors: tuple[PlanNode, ...] = ()
    ) -> Iterator[tuple[PlanNode, tuple[PlanNode, ...]]]:
        """``(node, ancestors)`` pairs, ancestors nearest first."""
        yield self, ancestors
        for child in self.children:
            yield from child.walk_with_ancestors((self, *ancestors))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A parsed plan: the root node and the timings EXPLAIN ANALYZE adds (ms)."""

    root: PlanNode
    planning_time_ms: float | None = None
    execution_time_ms: float | None = None

    @property
    def total_cost(self) -> float:
        return self.root.total_cost

    @property
    def analyzed(self) -> bool:
        return self.root.analyzed

    def walk(self) -> Iterator[PlanNode]:
        return self.root.walk()

    def uses_index(self, predicate: Any) -> bool:
        """Whether any node's index name satisfies ``predicate(name)``."""
        return any(n.index_name and predicate(n.index_name) for n in self.walk())


def _f(value: Any) -> float | None:
    return None if value is None else float(value)


def _i(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_node(data: Mapping[str, Any]) -> PlanNode:
    """One JSON plan node (and its ``Plans``) as a :class:`PlanNode`."""
    sort_key = data.get("Sort Key") or ()
    return PlanNode(
        node_type=str(data.get("Node Type", "?")),
        relation=data.get("Relation Name"),
        schema=data.get("Schema"),
        alias=data.get("Alias"),
        index_name=data.get("Index Name"),
        parent_relationship=data.get("Parent Relationship"),
        subplan_name=data.get("Subplan Name"),
        join_type=data.get("Join Type"),
        strategy=data.get("Strategy"),
        parallel_aware=bool(data.get("Parallel Aware", False)),
        scan_direction=data.get("Scan Direction"),
        startup_cost=float(data.get("Startup Cost", 0.0)),
        total_cost=float(data.get("Total Cost", 0.0)),
        plan_rows=float(data.get("Plan Rows", 0.0)),
        plan_width=int(data.get("Plan Width", 0)),
        filter=data.get("Filter"),
        index_cond=data.get("Index Cond"),
        recheck_cond=data.get("Recheck Cond"),
        join_filter=data.get("Join Filter"),
        hash_cond=data.get("Hash Cond"),
        merge_cond=data.get("Merge Cond"),
        sort_key=tuple(str(k) for k in sort_key),
        workers_planned=_i(data.get("Workers Planned")),
        actual_rows=_f(data.get("Actual Rows")),
        actual_loops=_f(data.get("Actual Loops")),
        actual_total_time=_f(data.get("Actual Total Time")),
        rows_removed_by_filter=_f(data.get("Rows Removed by Filter")),
        rows_removed_by_join_filter=_f(data.get("Rows Removed by Join Filter")),
        rows_removed_by_index_recheck=_f(data.get("Rows Removed by Index Recheck")),
        sort_method=data.get("Sort Method"),
        sort_space_used=_f(data.get("Sort Space Used")),
        sort_space_type=data.get("Sort Space Type"),
        hash_batches=_i(data.get("Hash Batches")),
        original_hash_batches=_i(data.get("Original Hash Batches")),
        hashagg_batches=_i(data.get("HashAgg Batches")),
        peak_memory_kb=_f(data.get("Peak Memory Usage")),
        disk_usage_kb=_f(data.get("Disk Usage")),
        lossy_heap_blocks=_f(data.get("Lossy Heap Blocks")),
        children=tuple(parse_node(c) for c in data.get("Plans", ())),
    )


def parse_plan(document: Any) -> Plan:
    """Parse what ``EXPLAIN (FORMAT JSON)`` returned: the list, its first element, or
    the JSON text. Raises ``ValueError`` for anything else."""
    doc = json.loads(document) if isinstance(document, (str, bytes)) else document
    if isinstance(doc, Sequence) and not isinstance(doc, (str, bytes)):
        if not doc:
            raise ValueError("empty EXPLAIN document")
        doc = doc[0]
    if not isinstance(doc, Mapping) or "Plan" not in doc:
        raise ValueError("not an EXPLAIN (FORMAT JSON) document (no 'Plan' key)")
    return Plan(
        root=parse_node(doc["Plan"]),
        planning_time_ms=_f(doc.get("Planning Time")),
        execution_time_ms=_f(doc.get("Execution Time")),
    )


# -- expressions -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ColumnRef:
    """A column as a plan prints it: ``alias.name`` (VERBOSE) or ``name``."""

    qualifier: str | None
    name: str


@dataclasses.dataclass(frozen=True)
class Operand:
    """One side of a comparison.

    column: set when the side is a plain column, possibly cast: ``casts`` lists the
    types it is cast to, innermost first (``(id)::numeric`` → ``("numeric",)``). Whether
    an index on the column still serves the comparison depends on the column's type (a
    ``varchar`` compared as ``(col)::text`` is served; a ``bigint`` compared as
    ``(col)::numeric`` is not): see :func:`harmless_casts`. expression: otherwise, the
    expression with alias qualifiers removed (usable in ``CREATE INDEX …
    ((expression))``); refs: every column the side mentions.
    """

    text: str
    column: ColumnRef | None = None
    expression: str | None = None
    refs: frozenset[ColumnRef] = frozenset()
    casts: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The column name or the expression: what an index key would be."""
        if self.column is not None:
            return self.column.name
        return self.expression or self.text

    def belongs_to(self, alias: str | None, *, own: bool) -> bool:
        """Whether every column of this side is ``alias``'s (unqualified ones count when
        ``own``: a scan's own Filter prints its columns unqualified without VERBOSE)."""
        if not self.refs:
            return False
        return all(_ref_matches(r, alias, own) for r in self.refs)

    def mentions(self, alias: str | None, *, own: bool) -> bool:
        return any(_ref_matches(r, alias, own) for r in self.refs)


def _ref_matches(ref: ColumnRef, alias: str | None, own: bool) -> bool:
    if ref.qualifier is None:
        return own
    return ref.qualifier == alias


EQUALITY, IN_LIST, IS_NULL, RANGE, PATTERN, OTHER = "eq", "in", "null", "range", "pattern", "other"
BOOLEAN, NOT_NULL = "bool", "notnull"
_RANGE_OPS = frozenset({"<", "<=", ">", ">="})
_PATTERN_OPS = frozenset({"~~", "~~*", "!~~", "!~~*", "~", "~*", "!~", "!~*"})
_COMPARISON_OPS = frozenset({"=", "<>", "!=", *_RANGE_OPS, *_PATTERN_OPS})


@dataclasses.dataclass(frozen=True)
class Predicate:
    """One conjunct of a Filter / Index Cond / join condition.

    kind: ``eq`` (``=``), ``in`` (``= ANY (…)``), ``null`` (``IS NULL``), ``range``
    (``< <= > >=``), ``pattern`` (LIKE and regular expressions), ``bool`` (a boolean
    column, or ``NOT`` one), ``notnull`` (``IS NOT NULL``), ``other`` (OR, ``<>``,
    subplans: nothing a B-tree serves directly). ``left``/``right`` are the two sides
    (``right`` is ``None`` for ``IS NULL``, ``bool``, ``notnull`` and ``other``).
    """

    kind: str
    text: str
    operator: str = ""
    left: Operand | None = None
    right: Operand | None = None

    def key_for(self, alias: str | None, *, own: bool) -> Operand | None:
        """The side that is ``alias``'s column (or expression over its columns) while
        the other side does not mention ``alias``: what an index on ``alias`` could
        search for. ``None`` when neither side qualifies."""
        for this, that in ((self.left, self.right), (self.right, self.left)):
            if this is None or not this.belongs_to(alias, own=own):
                continue
            if that is not None and that.mentions(alias, own=own):
                continue
            return this
        return None

    @property
    def indexable(self) -> bool:
        return self.kind in (EQUALITY, IN_LIST, IS_NULL, RANGE, BOOLEAN)

    @property
    def constant_free(self) -> bool:
        """No value in it (``x IS NULL``, ``NOT done``): the same for every execution of
        the statement, so a partial index can be built ``WHERE`` it holds."""
        return self.kind in (IS_NULL, NOT_NULL, BOOLEAN)

    @property
    def like_prefix(self) -> str | None:
        """The fixed prefix of ``col LIKE 'abc%'`` (``abc``), which a B-tree can search
        as a range; ``None`` for other predicates and patterns that start with a
        wildcard or are not constants."""
        if self.operator != "~~" or self.right is None:
            return None
        toks, _ = _strip_trailing_casts(tokenize(self.right.text))
        if len(toks) != 1 or toks[0].kind != "string":
            return None
        prefix = ""
        pattern = toks[0].value
        i = 0
        while i < len(pattern) and pattern[i] not in "%_":
            if pattern[i] == "\\" and i + 1 < len(pattern):
                i += 1
            prefix += pattern[i]
            i += 1
        return prefix or None


_NOT_COLUMNS = frozenset(
    """
    NULL TRUE FALSE AND OR NOT IS ANY ALL SOME ARRAY CASE WHEN THEN ELSE END IN LIKE
    ILIKE SIMILAR TO BETWEEN DISTINCT FROM COLLATE HASHED SUBPLAN INITPLAN
    CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP LOCALTIME LOCALTIMESTAMP
    CURRENT_USER SESSION_USER CURRENT_ROLE USER EXISTS ROW AT TIME ZONE ASC DESC
    NULLS FIRST LAST USING DEFAULT INTERVAL
    """.split()  # noqa: SIM905
)
_TYPE_CONTINUATIONS = frozenset({"VARYING", "PRECISION", "WITH", "WITHOUT", "TIME", "ZONE"})
_TEXT_TYPES = frozenset(
    {"text", "character varying", "varchar", "bpchar", "character", "name", "citext"}
)


def _skip_type(tokens: Sequence[Token], i: int) -> tuple[int, str]:
    """Index after the type name starting at ``i`` (after ``::``), and the name."""
    n = len(tokens)
    words: list[str] = []
    if i < n and tokens[i].kind in ("ident", "qident"):
        words.append(tokens[i].value)
        i += 1
        if i + 1 < n and tokens[i].is_punct(".") and tokens[i + 1].kind in ("ident", "qident"):
            words.append(tokens[i + 1].value)
            i += 2
        while i < n and tokens[i].kind == "ident" and tokens[i].upper in _TYPE_CONTINUATIONS:
            words.append(tokens[i].value)
            i += 1
        if i < n and tokens[i].is_punct("("):
            close = matching_paren(tokens, i)
            i = close + 1 if close > 0 else n
        while i + 1 < n and tokens[i].is_punct("[") and tokens[i + 1].is_punct("]"):
            i += 2
    return i, " ".join(words).lower()


def column_refs(tokens: Sequence[Token]) -> frozenset[ColumnRef]:
    """Every column reference in ``tokens`` (function names, keywords, type names in
    casts, SubPlan references are not columns)."""
    refs: set[ColumnRef] = set()
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        if t.is_punct("::"):
            i, _ = _skip_type(tokens, i + 1)
            continue
        if t.is_punct(".") and i > 0 and tokens[i - 1].is_punct(")"):
            i += 2  # (hashed SubPlan 1).col1
            continue
        if t.kind in ("ident", "qident"):
            if t.kind == "ident" and t.upper in _NOT_COLUMNS:
                if t.upper in ("SUBPLAN", "INITPLAN"):
                    i += 2  # the plan number
                else:
                    i += 1
                continue
            nxt = tokens[i + 1] if i + 1 < n else None
            if nxt is not None and nxt.is_punct("("):
                i += 1  # function name
                continue
            if (
                nxt is not None
                and nxt.is_punct(".")
                and i + 2 < n
                and tokens[i + 2].kind in ("ident", "qident")
            ):
                after = tokens[i + 3] if i + 3 < n else None
                if after is not None and after.is_punct("("):
                    i += 3  # schema-qualified function
                    continue
                refs.add(ColumnRef(t.value, tokens[i + 2].value))
                i += 3
                continue
            refs.add(ColumnRef(None, t.value))
        i += 1
    return frozenset(refs)


def _without_qualifiers(tokens: Sequence[Token]) -> list[Token]:
    out: list[Token] = []
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        if (
            t.kind in ("ident", "qident")
            and i + 2 < n
            and tokens[i + 1].is_punct(".")
            and tokens[i + 2].kind in ("ident", "qident")
            and not (i > 0 and tokens[i - 1].is_punct("::"))
            and not (i + 3 < n and tokens[i + 3].is_punct("("))
        ):
            i += 2  # drop "alias."
            continue
        out.append(t)
        i += 1
    return out


def _as_column(toks: Sequence[Token]) -> ColumnRef | None:
    """``col`` or ``alias.col`` as a column reference (``None`` for anything else)."""
    if len(toks) == 1 and toks[0].kind in ("ident", "qident"):
        if toks[0].kind == "ident" and toks[0].upper in _NOT_COLUMNS:
            return None
        return ColumnRef(None, toks[0].value)
    if (
        len(toks) == 3
        and toks[1].is_punct(".")
        and toks[0].kind in ("ident", "qident")
        and toks[2].kind in ("ident", "qident")
    ):
        return ColumnRef(toks[0].value, toks[2].value)
    return None


def _strip_trailing_casts(tokens: Sequence[Token]) -> tuple[list[Token], list[str]]:
    """``tokens`` without the casts around them (``((x)::a)::b`` → ``x``), and the
    cast types innermost first."""
    toks = list(strip_parens(tokens))
    casts: list[str] = []
    while len(toks) >= 3:
        pos = _last_top_level_cast(toks)
        if pos < 0:
            break
        end, type_name = _skip_type(toks, pos + 1)
        if end != len(toks):
            break
        casts.insert(0, type_name)
        toks = list(strip_parens(toks[:pos]))
    return toks, casts


def parse_operand(tokens: Sequence[Token]) -> Operand:
    """One side of a comparison: a plain column (with the casts applied to it), an
    expression over columns (casts to text types around it dropped), or a value
    (constant, parameter, other side's column)."""
    toks = strip_parens(tokens)
    text = render(toks)
    bare, casts = _strip_trailing_casts(toks)
    column = _as_column(bare)
    if column is not None:
        return Operand(text, column=column, refs=frozenset({column}), casts=tuple(casts))
    # An expression: drop trailing casts to text types only ((lower(x))::text is lower(x)).
    while len(toks) >= 3:
        pos = _last_top_level_cast(toks)
        if pos < 0:
            break
        end, type_name = _skip_type(toks, pos + 1)
        if end != len(toks) or type_name not in _TEXT_TYPES:
            break
        toks = strip_parens(toks[:pos])
    refs = column_refs(toks)
    expression = render(_without_qualifiers(toks)) if refs else None
    return Operand(text, expression=expression, refs=refs)


# Types a text-like column may be cast to and still be searched by its index: ``varchar``
# and ``text`` share the B-tree operator family, so ``(col)::text = $1`` uses an index on
# a ``varchar`` column. Every other cast of a column (``bigint`` to ``numeric``, ``uuid``
# or ``character(n)`` to ``text``, ``timestamptz`` to ``date``) hides the column from its
# index.
_TEXT_FAMILY = frozenset({"text", "character varying", "varchar"})


def base_type_name(type_text: str) -> str:
    """``character varying(20)`` → ``character varying``; ``numeric(10,2)[]`` → ``numeric[]``."""
    name = type_text.split("(", maxsplit=1)[0].strip()
    return name + ("[]" if type_text.endswith("[]") and not name.endswith("[]") else "")


def harmless_casts(casts: Sequence[str], column_type: str | None) -> bool:
    """Whether an index on a column of ``column_type`` still serves the column cast to
    ``casts`` (innermost first). Without the column's type, casts to text types count
    as harmless (a ``varchar`` column compared with text is the common case)."""
    if not casts:
        return True
    if column_type is None:
        return all(c in _TEXT_TYPES for c in casts)
    base = base_type_name(column_type)
    if all(c == base for c in casts):
        return True
    return base in _TEXT_FAMILY and all(c in _TEXT_FAMILY for c in casts)


def _last_top_level_cast(tokens: Sequence[Token]) -> int:
    depth, last = 0, -1
    for i, t in enumerate(tokens):
        if t.is_punct("(", "["):
            depth += 1
        elif t.is_punct(")", "]"):
            depth -= 1
        elif depth == 0 and t.is_punct("::"):
            last = i
    return last


def parse_predicate(tokens: Sequence[Token]) -> Predicate:
    """Classify one conjunct (see :class:`Predicate`)."""
    toks = strip_parens(tokens)
    text = render(toks)
    if len(split_top_level(toks, "OR")) > 1:
        return Predicate(OTHER, text)
    if toks and toks[0].is_word("NOT"):
        rest = strip_parens(toks[1:])
        if _as_column(rest) is not None:
            return Predicate(BOOLEAN, text, "NOT", left=parse_operand(rest))
        return Predicate(OTHER, text)
    if _as_column(toks) is not None:
        return Predicate(BOOLEAN, text, "", left=parse_operand(toks))
    if (
        len(toks) >= 4
        and toks[-1].is_word("NULL")
        and toks[-2].is_word("NOT")
        and toks[-3].is_word("IS")
    ):
        return Predicate(NOT_NULL, text, "IS NOT NULL", left=parse_operand(toks[:-3]))
    if len(toks) >= 3 and toks[-1].is_word("NULL") and toks[-2].is_word("IS"):
        return Predicate(IS_NULL, text, "IS NULL", left=parse_operand(toks[:-2]))
    depth, op_at = 0, -1
    for i, t in enumerate(toks):
        if t.is_punct("(", "["):
            depth += 1
        elif t.is_punct(")", "]"):
            depth -= 1
        elif depth == 0 and t.kind == "op" and t.value in _COMPARISON_OPS:
            op_at = i
            break
    if op_at <= 0 or op_at == len(toks) - 1:
        return Predicate(OTHER, text)
    op = toks[op_at].value
    lhs, rhs = toks[:op_at], toks[op_at + 1 :]
    kind = OTHER
    if op == "=":
        kind = EQUALITY
        if rhs[0].is_word("ANY", "SOME"):
            kind = IN_LIST
        elif rhs[0].is_word("ALL"):
            kind = OTHER
    elif op in _RANGE_OPS:
        kind = RANGE if not rhs[0].is_word("ANY", "ALL", "SOME") else OTHER
    elif op in _PATTERN_OPS:
        kind = PATTERN
    return Predicate(kind, text, op, left=parse_operand(lhs), right=parse_operand(rhs))


def parse_conjuncts(expression: str | None) -> list[Predicate]:
    """The AND-ed conjuncts of a condition as EXPLAIN prints it."""
    if not expression:
        return []
    toks = strip_parens(tokenize(expression))
    return [parse_predicate(part) for part in split_top_level(toks, "AND")]


@dataclasses.dataclass(frozen=True)
class SortColumn:
    """One ``Sort Key`` entry: a column or expression with its direction."""

    operand: Operand
    descending: bool = False
    nulls_first: bool = False


def parse_sort_key(text: str) -> SortColumn:
    toks = tokenize(text)
    descending = False
    nulls_first: bool | None = None
    while toks:
        if len(toks) >= 2 and toks[-2].is_word("NULLS") and toks[-1].is_word("FIRST", "LAST"):
            nulls_first = toks[-1].is_word("FIRST")
            toks = toks[:-2]
        elif toks[-1].is_word("DESC", "ASC"):
            descending = toks[-1].is_word("DESC")
            toks = toks[:-1]
        elif len(toks) >= 2 and toks[-2].is_word("USING"):
            descending = toks[-1].value == ">"
            toks = toks[:-2]
        else:
            break
    if nulls_first is None:
        nulls_first = descending
    return SortColumn(parse_operand(toks), descending=descending, nulls_first=nulls_first)


# -- literal redaction ---------------------------------------------------------------------


def redact(expression: str | None) -> str | None:
    """``expression`` with string and number literals replaced by ``?``: plan texts
    explained with bound parameters carry their values, which stay out of reports."""
    if expression is None:
        return None
    toks = tokenize(expression)
    out: list[Token] = []
    for i, t in enumerate(toks):
        prev = toks[i - 1] if i else None
        if t.kind == "string" or (
            t.kind == "number" and not (prev and prev.is_word("SUBPLAN", "INITPLAN"))
        ):
            out.append(Token("op", "?", "?", t.start))
        else:
            out.append(t)
    return render(out)


def display_condition(expression: str) -> str:
    """A condition for messages: literals redacted, the outer parentheses dropped."""
    return render(strip_parens(tokenize(redact(expression) or "")))


# -- unindexed look-ups --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CastIssue:
    """A condition that casts a column, so no index on the column can serve it.

    column: the column; casts: the types it is cast to (innermost first);
    column_type: the column's type (``None`` when unknown); condition: the conjunct as
    the plan prints it; kind: the predicate kind (``eq``, ``range`` ...).
    """

    column: str
    casts: tuple[str, ...]
    column_type: str | None
    condition: str
    kind: str


@dataclasses.dataclass(frozen=True)
class ScanCandidate:
    """A scan that reads many rows of a large relation to keep few of them.

    pattern: ``filter``, ``join`` or ``top-n`` (see the module docstring).
    rows_examined / rows_returned: per loop (estimates, or measured with ANALYZE);
    loops: how often the scan runs (outer rows of a nested loop; 1 otherwise).
    equality / ranges / sort: what an index could use, from the Filter, the join
    condition and the Sort Key (or, for an index scan read in its index's order under a
    LIMIT, that index's key columns). unindexable: conjuncts no B-tree serves (OR, LIKE
    '%…' …). index_used: the index the scan already uses (Index/Bitmap scans), and
    served / served_ranges the columns its condition already searches. casts:
    conditions that cast a column (no index on the column serves them); prefixes:
    columns searched by ``LIKE 'prefix%'``; partial: constant-free conjuncts
    (``deleted_at IS NULL``, ``NOT done``) without alias qualifiers, usable as the
    predicate of a partial index; either: the columns of each OR whose branches one
    index per column could serve (combined in a BitmapOr).
    """

    pattern: str
    node: PlanNode
    schema: str | None
    relation: str
    alias: str | None
    relation_rows: float
    rows_examined: float
    rows_returned: float
    loops: float = 1.0
    equality: tuple[Operand, ...] = ()
    ranges: tuple[Operand, ...] = ()
    sort: tuple[SortColumn, ...] = ()
    unindexable: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    index_used: str | None = None
    served: tuple[Operand, ...] = ()
    served_ranges: tuple[Operand, ...] = ()
    has_limit: bool = False
    analyzed: bool = False
    casts: tuple[CastIssue, ...] = ()
    prefixes: tuple[Operand, ...] = ()
    partial: tuple[tuple[str, str], ...] = ()
    either: tuple[tuple[str, ...], ...] = ()

    @property
    def fraction_kept(self) -> float:
        return self.rows_returned / self.rows_examined if self.rows_examined else 1.0

    @property
    def table_display(self) -> str:
        return display_name(self.schema or "public", self.relation)

    @property
    def has_index_columns(self) -> bool:
        return bool(self.equality or self.ranges or self.sort or self.prefixes)


def _parallel_factor(ancestors: Sequence[PlanNode], node: PlanNode) -> float:
    """Rows of a parallel-aware node are per worker: the whole scan keeps about
    ``workers + 1`` times as many (the leader participates)."""
    if not node.parallel_aware:
        return 1.0
    for a in ancestors:
        if a.node_type in ("Gather", "Gather Merge"):
            return float((a.workers_planned or 0) + 1)
    return 1.0


def _relation_rows(node: PlanNode, catalog: CatalogSnapshot | None) -> float | None:
    if catalog is not None and node.relation:
        table = catalog.table(node.schema, node.relation)
        if table is not None:
            return table.rows
    if node.analyzed and node.node_type == "Seq Scan":
        loops = node.actual_loops or 1.0
        return ((node.actual_rows or 0.0) + (node.rows_removed_by_filter or 0.0)) * loops
    if node.node_type == "Seq Scan" and not node.filter and not node.parallel_aware:
        return node.plan_rows
    return None


def _examined(node: PlanNode, relation_rows: float) -> float | None:
    """Rows the scan reads per loop before its Filter (estimates; see ``_measure``)."""
    if node.node_type == "Seq Scan":
        return relation_rows
    if node.node_type in ("Index Scan", "Index Only Scan") and not node.index_cond:
        return relation_rows  # a full index scan, for its order
    if node.node_type == "Bitmap Heap Scan":
        return sum(c.plan_rows for c in node.walk() if c.node_type == "Bitmap Index Scan") or None
    return None  # an index scan with a condition: unknown without ANALYZE


def _measure(
    node: PlanNode, ancestors: Sequence[PlanNode], relation_rows: float
) -> tuple[float | None, float, float]:
    """``(rows examined, rows returned, loops)`` of a scan, per loop.

    A parallel-aware scan is counted as one scan over all workers (its printed rows
    are per worker). ANALYZE data wins over estimates.
    """
    factor = _parallel_factor(ancestors, node)
    if node.analyzed:
        loops = node.actual_loops or 1.0
        returned = node.actual_rows or 0.0
        removed = node.rows_removed_by_filter
        examined = returned + removed if removed is not None else _examined(node, relation_rows)
        if node.parallel_aware:
            if removed is not None and examined is not None:
                examined *= loops
            return examined, returned * loops, 1.0
        return examined, returned, loops
    return _examined(node, relation_rows), node.plan_rows * factor, 1.0


def _is_full_scan(node: PlanNode) -> bool:
    return node.node_type == "Seq Scan" or (
        node.node_type in ("Index Scan", "Index Only Scan") and not node.index_cond
    )


@dataclasses.dataclass
class _Classified:
    eq: list[Operand] = dataclasses.field(default_factory=list)
    rng: list[Operand] = dataclasses.field(default_factory=list)
    other: list[str] = dataclasses.field(default_factory=list)
    casts: list[CastIssue] = dataclasses.field(default_factory=list)
    prefixes: list[Operand] = dataclasses.field(default_factory=list)
    partial: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    alternatives: list[tuple[str, ...]] = dataclasses.field(default_factory=list)


def _or_columns(p: Predicate, alias: str | None, own: bool) -> tuple[str, ...] | None:
    """The columns of an OR whose every branch an index on one of this relation's
    columns serves (``a = 1 OR b > 2`` → ``("a", "b")``); ``None`` otherwise."""
    if p.kind != OTHER:
        return None
    branches = split_top_level(strip_parens(tokenize(p.text)), "OR")
    if len(branches) < 2:
        return None
    columns: list[str] = []
    for branch in branches:
        sub = parse_predicate(branch)
        key = sub.key_for(alias, own=own) if sub.left is not None else None
        if not sub.indexable or key is None or key.column is None or key.casts:
            return None
        if key.column.name not in columns:
            columns.append(key.column.name)
    return tuple(columns)


def _classify(
    predicates: Sequence[Predicate],
    alias: str | None,
    own: bool,
    table: TableInfo | None = None,
) -> _Classified:
    out = _Classified()
    for p in predicates:
        key = p.key_for(alias, own=own) if p.left is not None else None
        if key is not None and key.column is not None and key.casts:
            col = table.column(key.column.name) if table is not None else None
            col_type = (col.base_type or col.type) if col is not None else None
            if not harmless_casts(key.casts, col_type):
                out.casts.append(CastIssue(key.column.name, key.casts, col_type, p.text, p.kind))
                continue
        if key is not None and key.column is not None and p.constant_free:
            out.partial.append((key.column.name, render(_without_qualifiers(tokenize(p.text)))))
        if p.kind == NOT_NULL:
            continue
        if key is not None and key.column is not None and p.like_prefix is not None:
            out.prefixes.append(key)
            continue
        if not p.indexable:
            key = None
        if key is None:
            mentions = p.left is not None and p.left.mentions(alias, own=own)
            if mentions or p.kind == OTHER:
                out.other.append(p.text)
                either = _or_columns(p, alias, own)
                if either is not None:
                    out.alternatives.append(either)
            continue
        if p.kind in (EQUALITY, IN_LIST, IS_NULL, BOOLEAN):
            out.eq.append(key)
        else:
            out.rng.append(key)
    return out


def _dedupe(operands: Sequence[Operand], exclude: Sequence[Operand] = ()) -> tuple[Operand, ...]:
    seen: set[str] = {o.key for o in exclude}
    out: list[Operand] = []
    for o in operands:
        if o.key not in seen:
            seen.add(o.key)
            out.append(o)
    return tuple(out)


def _top_n(
    node: PlanNode, ancestors: Sequence[PlanNode], catalog: CatalogSnapshot | None = None
) -> tuple[tuple[SortColumn, ...], PlanNode | None, bool]:
    """Sort columns (all of ``node``'s relation) and the Limit above them, if the chain
    is Limit → [pass-through …] → Sort → [pass-through …] → node; or, when ``node`` is
    an index scan read in its index's order right under the Limit, that index's key
    columns (the third value is then ``True``)."""
    sort_node: PlanNode | None = None
    for a in ancestors:
        if a.node_type in ("Sort", "Incremental Sort") and sort_node is None:
            sort_node = a
            continue
        if a.node_type == "Limit":
            if sort_node is None:
                order = _index_order(node, catalog)
                return (order, a, True) if order else ((), None, False)
            cols = tuple(parse_sort_key(k) for k in sort_node.sort_key)
            own = node.schema is None
            if cols and all(c.operand.belongs_to(node.alias, own=own) for c in cols):
                return cols, a, False
            return (), None, False
        if a.node_type not in PASS_THROUGH:
            return (), None, False
    return (), None, False


def _index_order(node: PlanNode, catalog: CatalogSnapshot | None) -> tuple[SortColumn, ...]:
    """The order a full index scan returns rows in: its index's key columns."""
    if (
        catalog is None
        or node.node_type not in ("Index Scan", "Index Only Scan")
        or node.index_cond
        or not node.index_name
    ):
        return ()
    index = next(
        (
            i
            for i in catalog.indexes
            if i.name == node.index_name and (node.schema is None or i.schema == node.schema)
        ),
        None,
    )
    if index is None or index.method != "btree":
        return ()
    backward = node.scan_direction == "Backward"
    out = []
    for c in index.key_columns:
        ref = ColumnRef(None, c.name) if c.name is not None else None
        operand = Operand(
            c.definition,
            column=ref,
            expression=None if ref is not None else c.definition,
            refs=frozenset({ref}) if ref is not None else frozenset(),
        )
        out.append(SortColumn(operand, c.descending != backward, c.nulls_first != backward))
    return tuple(out)


def _join_above(
    node: PlanNode, ancestors: Sequence[PlanNode]
) -> tuple[PlanNode | None, PlanNode | None]:
    """The join this scan feeds (through Hash/Materialize/Sort/Gather wrappers), and
    the join's child on the scan's side."""
    child = node
    for a in ancestors:
        if a.node_type in JOIN_TYPES:
            return a, child
        if a.node_type not in ("Hash", "Materialize", "Sort", "Gather", "Gather Merge", "Memoize"):
            return None, None
        child = a
    return None, None


def _join_candidate(
    node: PlanNode,
    ancestors: Sequence[PlanNode],
    relation_rows: float,
    max_fraction: float,
) -> tuple[list[Operand], float, float, list[str], bool] | None:
    """``(join key columns, loops, join rows per loop, conditions, lookup side)`` when
    ``node`` is a full scan feeding a join that keeps few of its rows; lookup side:
    the inner side of a nested loop, which could look each outer row's match up."""
    join, side = _join_above(node, ancestors)
    if join is None or not _is_full_scan(node):
        return None
    conds = [c for c in (join.hash_cond, join.merge_cond, join.join_filter) if c]
    keys = [
        p.key_for(node.alias, own=False)
        for c in conds
        for p in parse_conjuncts(c)
        if p.kind == EQUALITY
    ]
    columns = [k for k in keys if k is not None and k.column is not None]
    if not columns:
        return None
    outer_rows = 1.0
    inner = join.node_type == "Nested Loop" and len(join.children) == 2 and side is join.children[1]
    if inner:
        outer_rows = max(1.0, join.children[0].plan_rows)
    rows_per_loop = join.plan_rows / outer_rows
    if rows_per_loop > max_fraction * relation_rows:
        return None
    return columns, outer_rows, rows_per_loop, conds, inner


def find_unindexed_scans(
    plan: Plan,
    catalog: CatalogSnapshot | None = None,
    *,
    min_rows: float = 10_000,
    max_fraction: float = 0.1,
) -> list[ScanCandidate]:
    """Scans of relations with at least ``min_rows`` rows that keep at most
    ``max_fraction`` of the rows they read (see the module docstring for patterns).

    Relation sizes come from ``catalog`` (``pg_class.reltuples``); without one, from
    ANALYZE data or an unfiltered Seq Scan's estimate, and scans of unknown size are
    skipped.
    """
    found: list[ScanCandidate] = []
    for node, ancestors in plan.root.walk_with_ancestors():
        if not node.is_scan:
            continue
        rel_rows = _relation_rows(node, catalog)
        if rel_rows is None or rel_rows < min_rows:
            continue
        own = node.schema is None  # without VERBOSE, a scan's own filter is unqualified
        examined, returned, loops = _measure(node, ancestors, rel_rows)
        pattern: str | None = None
        conditions: list[str] = []

        table = catalog.table(node.schema, node.relation) if catalog and node.relation else None
        # What the scan's index already serves (Index Cond, bitmap conditions).
        served: list[Operand] = []
        served_range: list[Operand] = []
        for cond in (node.index_cond, node.recheck_cond):
            got = _classify(parse_conjuncts(cond), node.alias, True, table)
            served += got.eq
            served_range += got.rng
        found_here = _Classified()
        if node.filter:
            found_here = _classify(parse_conjuncts(node.filter), node.alias, own, table)
            conditions.append(node.filter)
            if (
                examined is not None
                and examined >= min_rows
                and returned <= max_fraction * examined
            ):
                pattern = "filter"
        eq, rng = found_here.eq, found_here.rng

        sort, limit, index_order = _top_n(node, ancestors, catalog)
        if limit is not None and _is_full_scan(node):
            if pattern is None and not index_order and limit.plan_rows <= max_fraction * rel_rows:
                # Limit over Sort: every row (that passes the filter) is sorted to
                # return a few; an index in the sort order lets the scan stop early.
                pattern = "top-n"
                examined, returned = rel_rows, limit.plan_rows
            conditions.append("ORDER BY " + ", ".join(sort_keys(sort)))

        joined = _join_candidate(node, ancestors, rel_rows, max_fraction)
        if joined is not None:
            join_cols, join_loops, join_rows, join_conds, lookup_side = joined
            # A hash or merge join reads its inputs once: when the scan's own filter is
            # selective, that filter is what to index; the join key only helps the
            # inner side of a nested loop (or a join the planner could turn into one).
            if lookup_side or pattern != "filter":
                pattern = "join"
                eq = [*join_cols, *eq]
                examined, returned, loops = rel_rows, join_rows, join_loops
                conditions[:0] = join_conds

        if pattern is None or examined is None:
            continue
        equality = _dedupe(eq, served)
        found.append(
            ScanCandidate(
                pattern=pattern,
                node=node,
                schema=node.schema or _schema_of(node, catalog),
                relation=node.relation or "?",
                alias=node.alias,
                relation_rows=rel_rows,
                rows_examined=float(examined),
                rows_returned=float(returned),
                loops=loops,
                equality=equality,
                ranges=_dedupe(rng, [*served, *equality]),
                sort=sort if limit is not None else (),
                unindexable=tuple(found_here.other),
                conditions=tuple(conditions),
                index_used=node.index_name or _bitmap_index(node),
                served=_dedupe(served),
                served_ranges=_dedupe(served_range, served),
                has_limit=limit is not None,
                analyzed=node.analyzed,
                casts=tuple(found_here.casts),
                prefixes=_dedupe(found_here.prefixes, [*served, *equality]),
                partial=tuple(found_here.partial),
                either=tuple(found_here.alternatives),
            )
        )
    return found


def sort_keys(sort: Sequence[SortColumn]) -> list[str]:
    return [c.operand.key + (" DESC" if c.descending else "") for c in sort]


def _schema_of(node: PlanNode, catalog: CatalogSnapshot | None) -> str | None:
    if catalog is not None and node.relation:
        table = catalog.table(None, node.relation)
        if table is not None:
            return table.schema
    return None


def _bitmap_index(node: PlanNode) -> str | None:
    for c in node.walk():
        if c.node_type == "Bitmap Index Scan" and c.index_name:
            return c.index_name
    return None


# -- red flags (EXPLAIN ANALYZE) --------------------------------------------------------------


def misestimate_factor(node: PlanNode) -> float | None:
    """Actual over planned rows (or the inverse, whichever is larger), per loop."""
    if not node.analyzed or node.actual_rows is None or not node.actual_loops:
        return None
    est = max(node.plan_rows, 1.0)
    act = max(node.actual_rows, 1.0)
    return max(est / act, act / est)


def _bucket(factor: float) -> int:
    return int(10 ** min(3, int(math.log10(factor))))


def red_flags(
    plan: Plan,
    *,
    min_misestimate: float = 10.0,
    min_misestimate_rows: float = 100.0,
) -> list[Finding]:
    """Info findings from ``EXPLAIN ANALYZE`` data: ``row-misestimate`` (the worst node,
    ×10/×100/×1000), ``sort-spill`` and ``hash-spill``. Empty for plain EXPLAIN."""
    if not plan.analyzed:
        return []
    findings: list[Finding] = []
    worst: tuple[float, PlanNode] | None = None
    flagged: list[dict[str, Any]] = []
    for node in plan.walk():
        factor = misestimate_factor(node)
        if factor is None or factor < min_misestimate:
            continue
        rows = max(node.plan_rows, node.actual_rows or 0.0) * (node.actual_loops or 1.0)
        if rows < min_misestimate_rows:
            continue
        flagged.append(
            {
                "node": node.label,
                "planned_rows": node.plan_rows,
                "actual_rows": node.actual_rows,
                "loops": node.actual_loops,
                "factor": round(factor, 1),
            }
        )
        if worst is None or _worse(factor, node, worst):
            worst = (factor, node)
    if worst is not None:
        factor, node = worst
        under = (node.actual_rows or 0.0) > node.plan_rows
        findings.append(
            RULES["row-misestimate"].finding(
                f"Row estimate off by ×{factor:,.0f} on {node.label}: planned "
                f"{node.plan_rows:,.0f} rows, got {node.actual_rows or 0:,.0f} per loop "
                f"({'under' if under else 'over'}estimate)",
                _misestimate_advice(node),
                table=display_name(node.schema, node.relation)
                if node.relation and node.schema
                else node.relation,
                fingerprint=f"row-misestimate:{node.label}",
                evidence={
                    "bucket": f"x{_bucket(factor)}",
                    "factor": round(factor, 1),
                    "node": node.label,
                    "planned_rows": node.plan_rows,
                    "actual_rows": node.actual_rows,
                    "condition": redact(node.filter or node.index_cond or node.hash_cond),
                    "nodes": flagged[:5],
                },
            )
        )
    for node in plan.walk():
        if node.sort_space_type == "Disk":
            used = node.sort_space_used or 0.0
            findings.append(
                RULES["sort-spill"].finding(
                    f"{node.label} spilled {used:,.0f} kB to disk "
                    f"({node.sort_method or 'external sort'})",
                    f"Give this statement more sort memory, e.g. SET LOCAL work_mem = "
                    f"'{_work_mem_for(used * 3)}' in its transaction (in-memory sorts need "
                    "about 2-3× the on-disk size), or an index in the sort order "
                    f"({', '.join(node.sort_key) or 'the ORDER BY'}) so nothing is sorted.",
                    fingerprint=f"sort-spill:{','.join(node.sort_key)}",
                    evidence={
                        "node": node.label,
                        "sort_key": list(node.sort_key),
                        "sort_method": node.sort_method,
                        "disk_kb": used,
                        "rows": node.actual_rows,
                    },
                )
            )
        batches = max(node.hash_batches or 0, node.hashagg_batches or 0)
        if batches > 1 or (node.disk_usage_kb or 0) > 0:
            need = (node.peak_memory_kb or 0.0) * max(batches, 1) + (node.disk_usage_kb or 0.0)
            findings.append(
                RULES["hash-spill"].finding(
                    f"{node.label} needed {batches} batches"
                    + (f" and {node.disk_usage_kb:,.0f} kB of disk" if node.disk_usage_kb else "")
                    + ": the hash table did not fit in work_mem",
                    f"Give this statement more hash memory, e.g. SET LOCAL work_mem = "
                    f"'{_work_mem_for(need * 1.5)}' (or raise hash_mem_multiplier), or "
                    "filter rows before they are hashed.",
                    fingerprint=f"hash-spill:{node.label}",
                    evidence={
                        "node": node.label,
                        "batches": batches,
                        "original_batches": node.original_hash_batches,
                        "peak_memory_kb": node.peak_memory_kb,
                        "disk_kb": node.disk_usage_kb,
                    },
                )
            )
    return findings


def _worse(factor: float, node: PlanNode, worst: tuple[float, PlanNode]) -> bool:
    """Whether ``node`` is the one to blame over ``worst``: a larger factor, or about
    the same (within 1 %) on a scan or a node below it (nodes that only pass rows on,
    like a Sort, inherit the estimate of the node under them; the walk goes depth
    first, so a later node of the same factor is below or beside the earlier one)."""
    best, other = worst
    if factor > best * 1.01:
        return True
    if factor < best / 1.01:
        return False
    return node.is_scan or not other.is_scan


def _work_mem_for(kb: float) -> str:
    mb = max(4, 2 ** math.ceil(math.log2(max(kb, 1.0) / 1024.0)))
    return f"{mb}MB" if mb < 1024 else f"{mb // 1024}GB"


def _misestimate_advice(node: PlanNode) -> str:
    from dbprobe.analysis.catalog import qualified, quote_ident

    table: str | None = None
    if node.relation:
        table = qualified(node.schema, node.relation) if node.schema else quote_ident(node.relation)
    preds = parse_conjuncts(node.filter or node.index_cond)
    cols = sorted(
        {
            p.left.column.name
            for p in preds
            if p.kind in (EQUALITY, IN_LIST) and p.left is not None and p.left.column is not None
        }
    )
    if table and node.relation and len(cols) >= 2:
        name = quote_ident(f"{node.relation}_{'_'.join(cols)}_stats"[:63])
        if node.schema:
            name = f"{quote_ident(node.schema)}.{name}"
        col_list = ", ".join(quote_ident(c) for c in cols)
        return (
            f"The filter combines correlated columns; tell the planner: CREATE STATISTICS "
            f"{name} (dependencies, mcv) ON {col_list} FROM {table}; then ANALYZE {table};"
        )
    if table:
        return (
            f"Refresh the statistics (ANALYZE {table};); if the estimate stays wrong, raise "
            "the statistics target of the filtered columns (ALTER TABLE … ALTER COLUMN … SET "
            "STATISTICS 1000) or add extended statistics (CREATE STATISTICS)."
        )
    return (
        "Refresh the statistics of the tables involved (ANALYZE); misestimates above a join "
        "often come from correlated join keys or functions the planner cannot see into."
    )


# -- summaries for evidence -------------------------------------------------------------------


def summarize(plan: Plan, *, redacted: bool = True, max_nodes: int = 12) -> list[str]:
    """The plan as short indented lines (node, cost, rows, condition) for evidence.

    Literals are replaced by ``?`` when ``redacted`` (the default)."""
    lines: list[str] = []
    for node, ancestors in plan.root.walk_with_ancestors():
        if len(lines) >= max_nodes:
            lines.append("  " * len(ancestors) + "…")
            break
        text = f"{node.label} (cost={node.total_cost:.2f} rows={node.plan_rows:,.0f})"
        if node.analyzed:
            text += (
                f" (actual rows={node.actual_rows or 0:,.0f} loops={node.actual_loops or 0:,.0f})"
            )
        for label, cond in (
            ("Index Cond", node.index_cond),
            ("Hash Cond", node.hash_cond),
            ("Join Filter", node.join_filter),
            ("Filter", node.filter),
        ):
            if cond:
                text += f" {label}: {redact(cond) if redacted else cond}"
        if node.sort_key:
            text += f" Sort Key: {', '.join(node.sort_key)}"
        lines.append("  " * len(ancestors) + text)
    return lines
