"""Index advice for single statements on a live database shaped for the hard cases
(type mismatches, collations, NULLS order, expressions, joins, column order, top-N),
on the session's server (PostgreSQL 15 with hypopg) and the embedded PostgreSQL 18
(no hypopg). Every CREATE INDEX dbprobe recommends is run, checked to be used by the
statement it was proposed for, and dropped again."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from catalog_support import Scratch, fix_statements

from dbprobe.audit.explain import analyze_statement
from dbprobe.connect import connect
from dbprobe.pg import PostgresServer
from dbprobe.report.model import Finding, Severity

SCHEMA = """
CREATE TABLE customers (id bigint PRIMARY KEY, city text NOT NULL, email text NOT NULL);
INSERT INTO customers
SELECT g, 'city' || (g % 100), 'user' || g || '@example.com' FROM generate_series(1, 50000) g;
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    status text NOT NULL,
    state text NOT NULL,
    note text NOT NULL,
    ext uuid NOT NULL,
    ext2 uuid NOT NULL,
    code char(10) NOT NULL,
    created_at timestamptz NOT NULL,
    placed_at timestamptz NOT NULL,
    deleted_at timestamptz,
    done boolean NOT NULL
);
INSERT INTO orders
SELECT g, 1 + (g * 7919) % 50000,
       (ARRAY['open', 'paid', 'shipped', 'refunded'])[1 + g % 4],
       CASE WHEN g % 1000 = 0 THEN 'pending' ELSE 'settled-' || abs(hashint4(g) % 16) END,
       'note ' || (g % 20000),
       md5(g::text)::uuid, md5('x' || g)::uuid,
       'c' || (g % 50000),
       timestamptz '2024-01-01' + g * interval '37 seconds',
       timestamptz '2024-01-01' + ((g * 7) % 200000) * interval '11 seconds',
       CASE WHEN g % 100 = 0 THEN timestamptz '2025-01-01' END,
       g % 1000 <> 0
FROM generate_series(1, 200000) g;
CREATE INDEX o_ext ON orders (ext);
CREATE INDEX o_code ON orders (code);
CREATE INDEX o_note_c ON orders (note COLLATE "C");
CREATE INDEX o_created ON orders (created_at);
CREATE FUNCTION order_bucket(bigint) RETURNS bigint STABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN $1 % 97; END';
"""


@pytest.fixture(scope="module")
def shop(audit_server: PostgresServer) -> Iterator[Scratch]:
    name = audit_server.create_database()
    scratch = Scratch(audit_server, name)
    scratch.sql(SCHEMA)
    scratch.sql("VACUUM ANALYZE")
    yield scratch
    audit_server.drop_database(name)


@pytest.fixture
def ro(shop: Scratch) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(shop.target, application_name="dbprobe-test", read_only=True)
    yield conn
    conn.close()


def has_hypopg(shop: Scratch) -> bool:
    return bool(shop.sql("SELECT 1 FROM pg_extension WHERE extname = 'hypopg'"))


def lookups(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.rule == "unindexed-lookup"]


def run_and_drop(shop: Scratch, finding: Finding, statement: str) -> None:
    """Run the CREATE INDEX statements a finding recommends, check the statement then
    uses one of the new indexes, and drop them again."""
    statements = fix_statements(finding)
    created = [re.search(r"INDEX (?:CONCURRENTLY )?(\S+) ON", s).group(1) for s in statements]  # type: ignore[union-attr]
    try:
        with shop.connect() as conn:
            for stmt in statements:
                conn.execute(stmt.encode())
            plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN {statement}".encode()))
        assert any(name in plan for name in created), plan
    finally:
        for name in created:
            shop.sql(f"DROP INDEX IF EXISTS {name}")


# -- type mismatches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "column", "index"),
    [
        ("SELECT * FROM orders WHERE id = 5.0::numeric", "id", "orders_pkey"),
        (
            "SELECT * FROM orders WHERE ext::text = 'c4ca4238-a0b9-2382-0dcc-509a6f75849b'",
            "ext",
            "o_ext",
        ),
        ("SELECT * FROM orders WHERE code = 'c42'::text", "code", "o_code"),
        (
            "SELECT * FROM orders WHERE ext2::text = 'c4ca4238-a0b9-2382-0dcc-509a6f75849b'",
            "ext2",
            None,
        ),
    ],
)
def test_a_cast_column_is_reported_with_the_cast_to_remove(
    ro: psycopg.Connection[Any], sql: str, column: str, index: str | None
) -> None:
    (finding,) = lookups(analyze_statement(ro, sql))
    # never an index on the cast expression: the parameter's type is what to fix
    assert "CREATE INDEX" not in finding.recommendation or f"(({column})::" not in (
        finding.recommendation
    )
    assert "::numeric" not in finding.recommendation
    assert finding.severity is Severity.WARNING
    assert f"casts {column}" in finding.message
    if index:
        assert index in finding.message
    assert "value" in finding.recommendation and column in finding.recommendation


def test_a_cast_to_date_gets_a_range_rewrite(ro: psycopg.Connection[Any]) -> None:
    (finding,) = lookups(
        analyze_statement(ro, "SELECT * FROM orders WHERE placed_at::date = '2024-01-05'")
    )
    assert "::date" not in " ".join(finding.evidence.get("fix_sql", []))
    assert "placed_at >=" in finding.recommendation and "placed_at <" in finding.recommendation


# -- collations, operator classes, NULLS order -------------------------------------------------


def test_an_index_in_another_collation_does_not_serve(
    shop: Scratch, ro: psycopg.Connection[Any]
) -> None:
    sql = "SELECT * FROM orders WHERE note = 'note 5'"
    (finding,) = lookups(analyze_statement(ro, sql))
    assert finding.evidence["index"]["columns"] == ["note"]
    if has_hypopg(shop):
        assert finding.severity is Severity.ERROR
    run_and_drop(shop, finding, sql)


def test_nulls_last_order_is_not_served_by_a_plain_index(
    shop: Scratch, ro: psycopg.Connection[Any]
) -> None:
    sql = "SELECT * FROM orders ORDER BY created_at DESC NULLS LAST LIMIT 10"
    (finding,) = lookups(analyze_statement(ro, sql))
    assert "(created_at DESC NULLS LAST)" in finding.recommendation
    run_and_drop(shop, finding, sql)


# -- the caller's transaction -------------------------------------------------------------------


def test_a_refused_hypothetical_index_leaves_the_callers_transaction_alone(shop: Scratch) -> None:
    with psycopg.connect(shop.server.dsn(shop.database)) as conn:  # not autocommit
        conn.execute("CREATE TABLE scratch AS SELECT g AS id FROM generate_series(1, 30000) g")
        conn.execute("ANALYZE scratch")
        findings = analyze_statement(conn, "SELECT * FROM scratch WHERE order_bucket(id) = 5")
        # the table created in the caller's open transaction is still there
        assert conn.execute("SELECT count(*) FROM scratch").fetchone() == (30000,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
    (finding,) = lookups(findings)
    # order_bucket() is STABLE: no index on it can exist
    assert "order_bucket" not in " ".join(finding.evidence.get("fix_sql", []))
    assert finding.severity is Severity.WARNING


# -- expressions that cannot be indexed ----------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders WHERE date_trunc($1, created_at) = $2",
        "SELECT * FROM orders WHERE substr(note, $1, $2) = $3",
        "SELECT * FROM orders WHERE date_trunc('day', placed_at) = '2024-01-05'",
    ],
)
def test_no_expression_index_that_cannot_be_built(ro: psycopg.Connection[Any], sql: str) -> None:
    for finding in lookups(analyze_statement(ro, sql)):
        statements = finding.evidence.get("fix_sql", [])
        assert not any("$" in s or "date_trunc" in s for s in statements), statements
        assert "CREATE INDEX CONCURRENTLY" not in finding.recommendation or "$" not in (
            finding.recommendation
        )


# -- joins, column order, top-N --------------------------------------------------------------


def test_hash_join_build_side_gets_its_filter_columns(
    shop: Scratch, ro: psycopg.Connection[Any]
) -> None:
    sql = (
        "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.city = 'city7'"
    )
    found = lookups(analyze_statement(ro, sql))
    on_customers = [f for f in found if f.table == "customers"]
    for f in on_customers:
        assert f.evidence["index"]["columns"] == ["city"]
        assert "customers_pkey" not in f.recommendation


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders WHERE status = 'paid' AND customer_id = 42",
        "SELECT * FROM orders WHERE deleted_at IS NULL AND customer_id = 42",
    ],
)
def test_the_most_selective_column_leads(
    shop: Scratch, ro: psycopg.Connection[Any], sql: str
) -> None:
    (finding,) = lookups(analyze_statement(ro, sql))
    assert finding.evidence["index"]["columns"][0] == "customer_id"
    run_and_drop(shop, finding, sql)


def test_top_n_with_a_filter(shop: Scratch, ro: psycopg.Connection[Any]) -> None:
    sql = "SELECT * FROM orders WHERE status = 'paid' ORDER BY placed_at DESC LIMIT 10"
    (finding,) = lookups(analyze_statement(ro, sql))
    assert finding.evidence["index"]["columns"] == ["status", "placed_at"]
    run_and_drop(shop, finding, sql)


def test_top_n_ordered_by_an_index_scan(shop: Scratch, ro: psycopg.Connection[Any]) -> None:
    sql = "SELECT * FROM orders WHERE state = 'pending' ORDER BY id LIMIT 10"
    (finding,) = lookups(analyze_statement(ro, sql))
    assert finding.evidence["index"]["columns"] == ["state", "id"], finding.evidence
    run_and_drop(shop, finding, sql)


# -- row-misestimate ---------------------------------------------------------------------------


def test_row_misestimate_blames_the_scan_and_its_advice_runs(shop: Scratch) -> None:
    shop.sql(
        """
        CREATE SCHEMA "App";
        CREATE TABLE "App"."Big Orders" (id int, "Region" int, b int, x int);
        INSERT INTO "App"."Big Orders"
        SELECT g, g % 100, g % 100, g FROM generate_series(1, 20000) g;
        ANALYZE "App"."Big Orders";
        """
    )
    sql = 'SELECT * FROM "App"."Big Orders" WHERE "Region" = 5 AND b = 5 ORDER BY x'
    with shop.connect() as conn:
        (mis,) = [
            f
            for f in analyze_statement(conn, sql, analyze=True, verify="none")
            if f.rule == "row-misestimate"
        ]
        # the Sort above passes the scan's estimate on: the scan is where it goes wrong
        assert "Seq Scan" in mis.message and "Sort" not in mis.message.split(":")[0]
        statements = re.findall(r"(CREATE STATISTICS [^;]+;|ANALYZE [^;]+;)", mis.recommendation)
        assert statements and 'FROM "App"."Big Orders"' in statements[0]
        for stmt in statements:
            conn.execute(stmt.encode())
        after = analyze_statement(conn, sql, analyze=True, verify="none")
    assert not [f for f in after if f.rule == "row-misestimate"]


# -- real-index verification next to an open transaction ----------------------------------------


def test_real_index_verification_gives_up_on_a_locked_table(shop: Scratch) -> None:
    """A test's own open transaction (the pytest plugin's case) holds a lock that
    CREATE INDEX waits for: verification gives up after a moment instead of waiting
    the session's lock_timeout for every proposal."""
    sql = "SELECT * FROM orders WHERE customer_id = $1"
    with shop.connect(autocommit=False) as writer, shop.connect() as conn:
        writer.execute("UPDATE orders SET note = note WHERE id = 1")
        conn.execute("SET lock_timeout = '5s'")
        started = time.monotonic()
        (finding,) = lookups(analyze_statement(conn, sql, verify="real"))
        elapsed = time.monotonic() - started
        writer.rollback()
    verification = finding.evidence["verification"]
    assert verification["method"] == "none" and "lock" in verification["reason"]
    assert finding.severity is Severity.WARNING
    assert finding.evidence["index"]["columns"] == ["customer_id"]
    assert elapsed < 2.5  # not the 5 s lock_timeout of the session


# -- conditions a B-tree serves after all ---------------------------------------------------------


def test_like_prefix_gets_a_btree(shop: Scratch, ro: psycopg.Connection[Any]) -> None:
    # the test databases compare bytes (C collation): a plain B-tree serves LIKE 'abc%'
    sql = "SELECT * FROM customers WHERE email LIKE 'user12%'"
    (finding,) = lookups(analyze_statement(ro, sql))
    assert fix_statements(finding) == [
        "CREATE INDEX CONCURRENTLY ix_customers_email ON public.customers (email);"
    ]
    run_and_drop(shop, finding, sql)


def test_like_prefix_under_a_linguistic_collation_gets_pattern_ops(shop: Scratch) -> None:
    (collation,) = shop.sql(
        "SELECT collname FROM pg_collation WHERE collprovider = 'i' "
        "AND collname IN ('en-x-icu', 'unicode') ORDER BY collname LIMIT 1"
    )[0]
    try:
        shop.sql(
            f"""
            CREATE TABLE people (id int PRIMARY KEY, email text COLLATE "{collation}");
            INSERT INTO people SELECT g, 'user' || g || '@example.com'
            FROM generate_series(1, 50000) g;
            ANALYZE people;
            """
        )
    except psycopg.errors.FeatureNotSupported as exc:
        # the embedded PostgreSQL 18 lists ICU collations but is built without ICU
        pytest.skip(f"no linguistic collation on this server: {exc}")
    sql = "SELECT * FROM people WHERE email LIKE 'user12%'"
    with connect(shop.target, application_name="dbprobe-test", read_only=True) as conn:
        (finding,) = lookups(analyze_statement(conn, sql))
    assert "(email text_pattern_ops)" in finding.recommendation
    run_and_drop(shop, finding, sql)


def test_a_rare_boolean_gets_an_index(shop: Scratch, ro: psycopg.Connection[Any]) -> None:
    sql = "SELECT * FROM orders WHERE NOT done"
    (finding,) = lookups(analyze_statement(ro, sql))
    assert finding.evidence["index"]["columns"] == ["done"]
    run_and_drop(shop, finding, sql)


def test_or_across_columns_gets_one_index_per_column(
    shop: Scratch, ro: psycopg.Connection[Any]
) -> None:
    sql = (
        "SELECT * FROM orders "
        "WHERE customer_id = 42 OR ext2 = 'c4ca4238-a0b9-2382-0dcc-509a6f75849b'"
    )
    (finding,) = lookups(analyze_statement(ro, sql))
    assert "BitmapOr" in finding.recommendation
    statements = fix_statements(finding)
    assert [re.search(r"\((\w+)\);$", s).group(1) for s in statements] == [  # type: ignore[union-attr]
        "customer_id",
        "ext2",
    ]
    try:
        with shop.connect() as conn:
            for stmt in statements:
                conn.execute(stmt.encode())
            plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN {sql}".encode()))
        assert "BitmapOr" in plan
    finally:
        shop.sql("DROP INDEX IF EXISTS ix_orders_customer_id; DROP INDEX IF EXISTS ix_orders_ext2")
