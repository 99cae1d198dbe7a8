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
@settings(max_examples=400)
def test_never_raises_on_arbitrary_text(text: str) -> None:
    assert isinstance(normalize(text), str)
    assert len(fingerprint(text)) == 16
    assert isinstance(redact_literals(text), str)
    statement_kind(normalize(text))
    tables(normalize(text))


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
        ('SELECT x::int, :name FROM "User"', 'select x::int, ? from "user"'),
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
