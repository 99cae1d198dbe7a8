"""The SQL tokenizer behind placeholder detection and plan-expression analysis."""

from __future__ import annotations

import pytest

from dbprobe.analysis.sqltext import (
    has_marker,
    is_explainable,
    leading_keyword,
    max_dollar_param,
    placeholder_style,
    split_top_level,
    strip_parens,
    tokenize,
)


def kinds(text: str) -> list[tuple[str, str]]:
    return [(t.kind, t.value) for t in tokenize(text)]


def test_strings_comments_and_dollar_quotes_hide_placeholders() -> None:
    sql = (
        "SELECT $1, $$ $2 $$, $tag$ $3 $tag$, 'it''s $4', \"col $5\" -- $6\n"
        "/* $7 /* nested $8 */ still comment */ FROM t"
    )
    params = [t.value for t in tokenize(sql) if t.kind == "param"]
    assert params == ["1"]
    assert max_dollar_param(sql) == 1
    strings = [t.value for t in tokenize(sql) if t.kind == "string"]
    assert strings == [" $2 ", " $3 ", "it's $4"]
    assert ("qident", "col $5") in kinds(sql)


def test_placeholder_styles() -> None:
    assert placeholder_style("SELECT * FROM t WHERE a = $1 AND b = $2") == "dollar"
    assert placeholder_style("SELECT * FROM t WHERE a = %(a_1)s") == "pyformat"
    assert placeholder_style("SELECT * FROM t WHERE a = %s") == "format"
    assert placeholder_style("SELECT '%s', '$1' FROM t") == "none"
    assert max_dollar_param("SELECT $10, $2") == 10


def test_operators_stop_before_pyformat_and_signs() -> None:
    assert kinds("a=%(x)s") == [("ident", "a"), ("op", "="), ("pyformat", "x")]
    # PostgreSQL: a multi-character operator cannot end in + or - (unless it has ~!@#…)
    assert kinds("a=-1") == [("ident", "a"), ("op", "="), ("op", "-"), ("number", "1")]
    assert ("op", "@@") in kinds("v @@ q")
    assert ("op", "!~~*") in kinds("name !~~* 'x'")


def test_unterminated_input_never_raises() -> None:
    for text in ("SELECT 'open", 'SELECT "open', "SELECT /* open", "SELECT $a$ open"):
        assert tokenize(text)[0].value == "SELECT"


@pytest.mark.parametrize(
    ("sql", "keyword", "explainable"),
    [
        ("/* dbprobe */ (SELECT 1)", "SELECT", True),
        ("  with x as (select 1) select * from x", "WITH", True),
        ("UPDATE t SET a = 1", "UPDATE", True),
        ("EXPLAIN SELECT 1", "EXPLAIN", False),
        ("SET statement_timeout = 0", "SET", False),
        ("CREATE INDEX ix ON t (a)", "CREATE", False),
        ("-- only a comment", "", False),
    ],
)
def test_leading_keyword(sql: str, keyword: str, explainable: bool) -> None:
    assert leading_keyword(sql) == keyword
    assert is_explainable(sql) is explainable


def test_marker_only_counts_in_comments() -> None:
    assert has_marker("/* dbprobe-audit */ SELECT 1", "dbprobe-audit")
    assert not has_marker("SELECT 'dbprobe-audit'", "dbprobe-audit")


def test_top_level_split_respects_parentheses() -> None:
    toks = strip_parens(tokenize("((a = 1) AND ((b = 2) OR (c = 3)) AND (d IS NULL))"))
    parts = split_top_level(toks, "AND")
    assert len(parts) == 3
    assert len(split_top_level(strip_parens(parts[1]), "OR")) == 2
