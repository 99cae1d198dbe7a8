"""Index advice and the unindexed-lookup finding, on candidates from real plans."""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path

import pytest

from dbprobe.analysis.catalog import CatalogSnapshot, IndexColumn, IndexInfo, quote_ident
from dbprobe.analysis.index_advice import (
    MAX_IDENTIFIER_BYTES,
    IndexKey,
    Verification,
    advise,
    index_name,
    lookup_finding,
    served_by,
)
from dbprobe.analysis.plans import ScanCandidate, find_unindexed_scans, parse_plan
from dbprobe.report.model import Severity

DATA = Path(__file__).parent / "data" / "plans"
VERSIONS = ("15", "18")


@cache
def catalog(version: str) -> CatalogSnapshot:
    return CatalogSnapshot.from_dict(json.loads((DATA / f"catalog.pg{version}.json").read_text()))


def candidate(name: str, version: str) -> ScanCandidate:
    doc = json.loads((DATA / f"{name}.pg{version}.json").read_text())
    (cand,) = find_unindexed_scans(parse_plan(doc["plan"]), catalog(version))
    return cand


def indexes_on(version: str, table: str) -> tuple[IndexInfo, ...]:
    info = catalog(version).table("public", table)
    assert info is not None
    return catalog(version).indexes_on(info.oid)


def btree(name: str, *cols: str, predicate: str | None = None, desc: bool = False) -> IndexInfo:
    return IndexInfo(
        oid=abs(hash(name)) % 100_000,
        schema="public",
        name=name,
        table_oid=1,
        table_schema="public",
        table_name="orders",
        key_columns=tuple(
            IndexColumn(definition=c, name=c, descending=desc, nulls_first=desc) for c in cols
        ),
        predicate=predicate,
    )


# -- identifiers and names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("orders", "orders"),
        ("customer_id", "customer_id"),
        ("Source", '"Source"'),
        ("order", '"order"'),
        ("user", '"user"'),
        ("name", "name"),  # unreserved keyword: PostgreSQL leaves it bare
        ("2fa", '"2fa"'),
        ('we"ird', '"we""ird"'),
        ("café", '"café"'),
    ],
)
def test_quote_ident_matches_postgres(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


def test_index_names_are_deterministic_and_fit_63_bytes() -> None:
    keys = [IndexKey(column="customer_id"), IndexKey(column="created_at")]
    assert index_name("orders", keys) == "ix_orders_customer_id_created_at"
    assert index_name("orders", keys) == index_name("orders", keys)
    assert index_name("Mixed Table", [IndexKey(column="Value")]) == "ix_mixed_table_value"
    assert index_name("customers", [IndexKey(expression="lower(email)")]) == (
        "ix_customers_lower_email"
    )
    long_keys = [IndexKey(column="a_really_long_column_name_" + str(i)) for i in range(4)]
    long = index_name("a_table_with_a_long_name", long_keys)
    assert len(long.encode()) <= MAX_IDENTIFIER_BYTES
    other = index_name("a_table_with_a_long_name", [*long_keys[:3], IndexKey(column="zz")])
    assert long != other  # the hash suffix keeps distinct long names distinct
    taken = {"ix_orders_customer_id", "ix_orders_customer_id_2"}
    assert index_name("orders", keys[:1], taken) == "ix_orders_customer_id_3"
    many = index_name(
        "t" * 70, [IndexKey(column="c")], {index_name("t" * 70, [IndexKey(column="c")])}
    )
    assert len(many.encode()) <= MAX_IDENTIFIER_BYTES and many.endswith("_2")


# -- served by existing indexes -------------------------------------------------------------


def test_served_by_leading_columns() -> None:
    eq = [IndexKey(column="customer_id")]
    composite = btree("ix_c_created", "customer_id", "created_at")
    assert served_by(eq, 1, [composite]) is composite
    # equality columns in any order
    two = [IndexKey(column="status"), IndexKey(column="customer_id")]
    assert served_by(two, 2, [btree("ix", "customer_id", "status", "x")]) is not None
    # not when the column is second, the index is partial, or another method
    assert served_by(eq, 1, [btree("ix", "created_at", "customer_id")]) is None
    assert served_by(eq, 1, [btree("ix", "customer_id", predicate="(status = 'x')")]) is None
    hash_index = dataclasses.replace(btree("ix", "customer_id"), method="hash")
    assert served_by(eq, 1, [hash_index]) is None
    # sort order: same direction and NULLS order, or all reversed (backward scan)
    sort = [
        IndexKey(column="customer_id"),
        IndexKey(column="created_at", descending=True, nulls_first=True, kind="sort"),
    ]
    desc = btree("ix_desc", "customer_id", "created_at", desc=True)
    assert served_by(sort, 1, [desc]) is desc
    assert served_by(sort, 1, [composite]) is composite  # backward scan
    mixed = [
        IndexKey(column="customer_id"),
        IndexKey(column="a", kind="sort"),
        IndexKey(column="b", descending=True, nulls_first=True, kind="sort"),
    ]
    assert served_by(mixed, 1, [btree("ix", "customer_id", "a", "b")]) is None
    # DESC NULLS LAST: neither an ascending index (backward it gives NULLS FIRST) nor a
    # DESC (NULLS FIRST) one returns that order
    nulls_last = [IndexKey(column="created_at", descending=True, kind="sort")]
    assert served_by(nulls_last, 0, [btree("ix", "created_at")]) is None
    assert served_by(nulls_last, 0, [btree("ix", "created_at", desc=True)]) is None
    # another collation or a pattern operator class: equality only, or nothing
    c_index = btree("ix_c", "customer_id")
    c_coll = dataclasses.replace(
        c_index,
        key_columns=(dataclasses.replace(c_index.key_columns[0], collation="C"),),
    )
    assert served_by(eq, 1, [c_coll]) is None
    pattern = dataclasses.replace(
        c_index,
        key_columns=(
            dataclasses.replace(
                c_index.key_columns[0], opclass="text_pattern_ops", opclass_default=False
            ),
        ),
    )
    assert served_by(eq, 1, [pattern]) is pattern
    assert served_by([IndexKey(column="customer_id", kind="range")], 0, [pattern]) is None


# -- advice on real candidates ------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_equality_advice_statement(version: str) -> None:
    cand = candidate("seq-scan-equality", version)
    result = advise(cand, indexes_on(version, "orders"))
    first = result.alternatives[0]
    assert first.statement == (
        "CREATE INDEX CONCURRENTLY ix_orders_customer_id ON public.orders (customer_id);"
    )
    assert (
        first.plain_statement == "CREATE INDEX ix_orders_customer_id ON public.orders (customer_id)"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_order_equality_then_range_then_sort(version: str) -> None:
    rng = advise(candidate("range-filter", version), indexes_on(version, "orders"))
    assert [a.columns_text for a in rng.alternatives] == [
        "(customer_id)",
        "(customer_id, created_at)",
    ]

    # with a LIMIT, the shape that also serves the order comes first: it is the one
    # recommended when nothing can verify them
    top = advise(candidate("sort-limit-filter", version), indexes_on(version, "orders"))
    assert [a.columns_text for a in top.alternatives] == [
        "(customer_id, created_at)",
        "(customer_id)",
    ]
    assert "order by created_at DESC" in top.alternatives[0].reason

    topn = advise(candidate("sort-limit-no-filter", version), indexes_on(version, "orders"))
    assert [a.columns_text for a in topn.alternatives] == ["(created_at)"]  # backward scan


@pytest.mark.parametrize("version", VERSIONS)
def test_advice_extends_the_index_in_use(version: str) -> None:
    result = advise(candidate("index-scan-filter", version), indexes_on(version, "orders"))
    (only,) = result.alternatives
    assert only.columns_text == "(status, total)"
    assert only.extends == "ix_orders_status"

    result = advise(candidate("bound-params", version), indexes_on(version, "orders"))
    assert [a.columns_text for a in result.alternatives] == [
        "(customer_id)",
        "(status, customer_id)",
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_quoted_column_and_expression_keys(version: str) -> None:
    (adv, *_) = advise(
        candidate("seq-scan-varchar-cast", version), indexes_on(version, "events")
    ).alternatives
    assert (
        adv.statement == 'CREATE INDEX CONCURRENTLY ix_events_source ON public.events ("Source");'
    )
    (expr, *_) = advise(
        candidate("expression-filter", version), indexes_on(version, "customers")
    ).alternatives
    assert expr.statement == (
        "CREATE INDEX CONCURRENTLY ix_customers_lower_email ON public.customers ((lower(email)));"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_advice_already_served_is_dropped(version: str) -> None:
    cand = candidate("seq-scan-equality", version)
    existing = btree("ix_orders_customer_id_created_at", "customer_id", "created_at")
    result = advise(cand, [existing])
    assert result.alternatives == ()
    assert result.served_by == "ix_orders_customer_id_created_at"


@pytest.mark.parametrize("version", VERSIONS)
def test_names_avoid_taken_relations(version: str) -> None:
    cand = candidate("seq-scan-equality", version)
    result = advise(cand, (), taken={"ix_orders_customer_id"})
    assert result.alternatives[0].name == "ix_orders_customer_id_2"


@pytest.mark.parametrize("version", VERSIONS)
def test_or_filter_gets_no_index_but_a_reason(version: str) -> None:
    result = advise(candidate("or-filter", version), indexes_on(version, "orders"))
    assert result.alternatives == ()
    assert result.reason_none is not None and "OR" in result.reason_none
    assert "42" not in result.reason_none  # literals redacted
    # one index per column: PostgreSQL combines them in a BitmapOr
    assert result.hint_sql == (
        "CREATE INDEX CONCURRENTLY ix_orders_customer_id ON public.orders (customer_id);",
        "CREATE INDEX CONCURRENTLY ix_orders_total ON public.orders (total);",
    )
    assert "BitmapOr" in " ".join(result.hints)


# -- the finding -----------------------------------------------------------------------------------


def test_finding_severity_follows_verification() -> None:
    cand = candidate("seq-scan-equality", "15")
    (adv, *_) = advise(cand, indexes_on("15", "orders")).alternatives
    good = Verification("hypopg", 4167.0, 41.9, index_used=True)
    finding = lookup_finding(cand, advice=adv, verification=good, sql="SELECT …")
    assert finding is not None
    assert finding.severity is Severity.ERROR
    assert finding.recommendation == adv.statement
    assert "99%" in finding.message and "hypopg" in finding.message
    assert finding.evidence["verification"]["cost_before"] == 4167.0
    assert finding.evidence["verification"]["cost_after"] == 41.9
    assert finding.table == "orders" and finding.fingerprint == "public.orders(customer_id)"

    weak = Verification("hypopg", 4167.0, 3000.0, index_used=True)
    assert lookup_finding(cand, advice=adv, verification=weak) is None
    assert lookup_finding(cand, advice=adv, verification=weak, min_cost_drop=0.2) is not None
    unused = Verification("real-index", 4167.0, 10.0, index_used=False)
    assert lookup_finding(cand, advice=adv, verification=unused) is None

    none = Verification("none", 4167.0, reason="hypopg is not installed", hint="install hypopg")
    unverified = lookup_finding(cand, advice=adv, verification=none)
    assert unverified is not None and unverified.severity is Severity.WARNING
    assert "not verified: hypopg is not installed" in unverified.message
    assert unverified.recommendation.startswith(adv.statement)
    assert "install hypopg" in unverified.recommendation


def test_finding_without_advice_is_a_warning() -> None:
    cand = candidate("or-filter", "18")
    finding = lookup_finding(cand, advice=None, verification=None, reason_none="OR across columns")
    assert finding is not None and finding.severity is Severity.WARNING
    assert "UNION" in finding.recommendation
    assert "42" not in finding.message
