"""Fingerprints: property tests (hypothesis) and known cases."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbprobe.analysis.fingerprint import (
    fingerprint,
    normalize,
    redact_literals,
    statement_kind,
    tables,
)

IDENT = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12).filter(
    lambda s: s not in {"true", "false", "null", "select", "from", "where", "and", "in"}
)
VALUE = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: repr(float(f))),
    st.text(max_size=20).map(lambda s: "'" + s.replace("'", "''") + "'"),
    st.sampled_from(["%(p_1)s", "%s", "$1", "?", ":name", "TRUE", "NULL"]),
)


@given(st.text(max_size=300))
@settings(max_examples=400, deadline=None)
def test_never_raises_on_arbitrary_text(text: str) -> None:
    assert isinstance(normalize(text), str)
    assert len(fingerprint(text)) == 16
    assert isinstance(redact_literals(text), str)
    statement_kind(normalize(text))
    tables(normalize(text))


@settings(deadline=None)
@given(IDENT, IDENT, VALUE, VALUE, st.lists(VALUE, min_size=1, max_size=8))
def test_stable_under_value_changes(
    table: str, column: str, a: str, b: str, in_list: list[str]
) -> None:
    one = f"SELECT {table}.id FROM {table} WHERE {table}.{column} = {a}"
    two = f"select  {table}.id\nFROM {table} where {table}.{column} = {b} -- note"
    assert fingerprint(one) == fingerprint(two)
    listed = f"SELECT * FROM {table} WHERE {column} IN ({', '.join(in_list)})"
    single = f"SELECT * FROM {table} WHERE {column} IN ({a})"
    assert fingerprint(listed) == fingerprint(single)


@settings(deadline=None)
@given(IDENT, IDENT, IDENT, VALUE)
def test_different_for_different_tables_or_columns(
    table: str, column: str, other: str, value: str
) -> None:
    base = f"SELECT {column} FROM {table} WHERE {column} = {value}"
    if other != table:
        assert fingerprint(base) != fingerprint(
            f"SELECT {column} FROM {other} WHERE {column} = {value}"
        )
    if other != column:
        assert fingerprint(base) != fingerprint(
            f"SELECT {other} FROM {table} WHERE {other} = {value}"
        )


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "SELECT customers.id FROM customers WHERE customers.id = %(pk_1)s::BIGINT",
            "select customers.id from customers where customers.id = ?::bigint",
        ),
        (
            "INSERT INTO t (a, b) VALUES (%(a__0)s, %(b__0)s), (%(a__1)s, %(b__1)s)",
            "insert into t (a, b) values (?+)",
        ),
        (
            "SELECT 1 /* hint */ FROM t WHERE x = ANY(ARRAY[1,2,3])",
            "select ? from t where x = any(array[?+])",
        ),
        ("SELECT $$a'b$$, $q$x$q$, E'it''s', -1, (-2.5)", "select ?, ?, e?, ?, (?+)"),
        ('SELECT x::int, :name FROM "User"', 'select x::int, ? from "User"'),
        # Expanding IN lists as SQLAlchemy's PostgreSQL dialects send them: one cast each.
        (
            "SELECT p.id FROM p WHERE p.id IN (%(id_1_1)s::BIGINT, %(id_1_2)s::BIGINT)",
            "select p.id from p where p.id in (?+)",
        ),
        (
            "SELECT p.id FROM p WHERE p.id IN ($1::BIGINT, $2::BIGINT, $3::BIGINT)",
            "select p.id from p where p.id in (?+)",
        ),
        (
            "SELECT 1 FROM t WHERE a IN ($1::TIMESTAMP WITH TIME ZONE, $2::DOUBLE PRECISION)",
            "select ? from t where a in (?+)",
        ),
        (
            "SELECT 1 FROM t WHERE b = ANY(ARRAY[$1::INTEGER, $2::INTEGER])",
            "select ? from t where b = any(array[?+])",
        ),
        # Not a list: a parenthesised expression with a cast.
        ("SELECT * FROM t WHERE (x::text OR y)", "select * from t where (x::text or y)"),
        # Predicates and positions are not values.
        (
            "SELECT 1 FROM t WHERE x IS NOT NULL AND y = NULL",
            "select ? from t where x is not null and y = ?",
        ),
        ("SELECT a FROM t ORDER BY 2, 1 LIMIT 5", "select a from t order by 2, 1 limit ?"),
    ],
)
def test_known_normal_forms(sql: str, expected: str) -> None:
    assert normalize(sql) == expected


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "select"),
        ("update t set a = 1", "update"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "select"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "write"),
        ("COMMIT", "transaction"),
        ("CREATE INDEX i ON t (a)", "ddl"),
    ],
)
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(normalize(sql)) == kind


def test_redact_keeps_placeholders_and_identifiers() -> None:
    sql = "SELECT \"t1\".a FROM t1 WHERE b = 'secret' AND c = 42 AND d = %(d_1)s"
    assert redact_literals(sql) == 'SELECT "t1".a FROM t1 WHERE b = ? AND c = ? AND d = %(d_1)s'


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("SELECT 1 FROM t WHERE x IS NULL", "SELECT 1 FROM t WHERE x IS TRUE"),
        ("SELECT a, b FROM t ORDER BY 1", "SELECT a, b FROM t ORDER BY 2"),
        ("SELECT a, b FROM t GROUP BY 1", "SELECT a, b FROM t GROUP BY 2"),
        ('SELECT * FROM "Users"', 'SELECT * FROM "users"'),
    ],
)
def test_different_statements_stay_apart(one: str, other: str) -> None:
    assert fingerprint(one) != fingerprint(other)


@pytest.mark.parametrize(
    ("sql", "secret"),
    [
        ("SELECT * FROM t WHERE x IN (42424242, 43434343)", "42424242"),
        ("INSERT INTO cards (number, cvc) VALUES (4111111111111111, %(cvc)s)", "4111111111111111"),
        ("SELECT f(31337)", "31337"),
        ("SELECT g((-987654321))", "987654321"),
        ("SELECT * FROM t WHERE a = .75", ".75"),
        ("SELECT E'it\\'s secret' AS v", "secret"),
        ("SELECT U&'d\\0061t\\+000061' AS v", "0061"),
    ],
)
def test_redact_removes_every_literal(sql: str, secret: str) -> None:
    assert secret not in redact_literals(sql)
    assert secret not in normalize(sql)


@settings(deadline=None)
@given(
    st.integers(min_value=100, max_value=10**18),
    st.sampled_from(["(", "( ", ",", ", ", "=", " = ", "[", "<", ">=", " IN (", " VALUES (", "-"]),
)
def test_redact_removes_numbers_after_any_punctuation(number: int, before: str) -> None:
    sql = f"SELECT a FROM t WHERE b{before}{number})"
    assert str(number) not in redact_literals(sql)
