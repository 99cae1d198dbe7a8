"""SQL fingerprints: one stable key per statement *shape*, cheap enough for every statement.

``normalize(sql)`` replaces literals and bind placeholders with ``?``, collapses ``IN``
lists, ``VALUES`` tuples and ``ARRAY[...]`` literals to ``(?+)``, drops comments, folds
case and whitespace. ``fingerprint(sql)`` is a 16-hex-digit hash of that text. Both are
cached by the raw statement text: SQLAlchemy re-emits the same text for the same
statement, so the cache almost always hits; a stream of never-repeating literal SQL
misses every time and still costs only a few regular-expression passes implemented in C
(see ``benchmarks/bench_fingerprint.py``).

Pure: no database, no SQLAlchemy. Works on any dialect's text (PostgreSQL, SQLite, ...).
sqlparse is used only off the hot path, for report formatting and for classifying
``WITH`` statements (:func:`statement_kind`).
"""

from __future__ import annotations

import functools
import hashlib
import re

__all__ = [
    "fingerprint",
    "normalize",
    "pretty",
    "redact_literals",
    "statement_kind",
    "tables",
]

# Literals and comments: the only constructs that can hide the others, so they go first.
# A single alternation scanned left to right, so a quote inside a comment (or a comment
# marker inside a string) is never mistaken for the other.
_LITERALS = re.compile(
    r"""
      (?P<str>'(?:[^']|'')*'?)                     # 'text' (E'..' leaves its e), unterminated ok
    | (?P<dollar>\$\$.*?(?:\$\$|\Z)
       |\$(?P<tag>[A-Za-z_]\w*)\$.*?(?:\$(?P=tag)\$|\Z))     # $$..$$ and $q$..$q$
    | (?P<line>--[^\n]*)                           # -- comment
    | (?P<block>/\*.*?(?:\*/|\Z))                  # /* comment */
    | (?P<ident>"(?:[^"]|"")*"?)                   # "quoted identifier" (kept)
    """,
    re.VERBOSE | re.DOTALL,
)

# Placeholders of every DB-API paramstyle, and numbers that are not part of a name. Every
# branch starts with a character (lookbehinds come after it) so the regex engine can skip
# ahead to candidate positions instead of trying each branch at every character.
_VALUES = re.compile(
    r"""
      %\([^)]*\)s                      # pyformat %(name)s
    | %s                               # format %s
    | \$\d+                            # numeric_dollar $1 (asyncpg)
    | :(?<![:\w]:)[a-z_]\w*            # named :name (not ::cast)
    | \?                               # qmark
    | \d(?<![\w.$]\d)[\d.]*(?:e[-+]?\d+)?(?![\w$])   # numbers (not inside a name)
    | \.\d(?<![\w.]\.\d)\d*(?![\w$])  # .5
    | t(?<![\w.]t)rue\b | f(?<![\w.]f)alse\b | n(?<![\w.]n)ull\b   # boolean / null
    | \[postcompile_[^\]]*\]           # un-expanded IN (SQLAlchemy compiled repr)
    """,
    re.VERBOSE,
)
# A sign glued to a value after an operator, a comma, "(" or a keyword is part of it.
_UNARY = re.compile(
    r"(^|[(,=<>!*/%|&+\-]|\b(?:and|or|not|then|else|when|between|select|by|values|case|in|is"
    r"|like|limit|offset|return)) ?[-+]\?"
)
_LIST = re.compile(r"\((?:\?, )*\?\)")
_LIST_RUN = re.compile(r"\(\?\+\)(?:, \(\?\+\))+")
_ARRAY = re.compile(r"array\[(?:\?, )*\?\]")
_NEEDS_LITERAL_PASS = re.compile(r"""['"$]|--|/\*""")

_CACHE_MAX = 20_000
_cache: dict[str, tuple[str, str]] = {}


def _literal(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind in ("str", "dollar"):
        return "?"
    if kind in ("line", "block"):
        return " "
    return match.group(0).lower()  # quoted identifier: kept, case folded with the rest


def _normalize_uncached(sql: str) -> str:
    text = sql
    if _NEEDS_LITERAL_PASS.search(text) is not None:
        text = _LITERALS.sub(_literal, text)
    text = " ".join(_VALUES.sub("?", text.lower()).split())
    if "-?" in text or "+?" in text:
        text = _UNARY.sub(r"\1 ?", text)
    if "," in text:
        text = text.replace(" ,", ",").replace(", ", ",").replace(",", ", ")
    text = text.replace("( ", "(").replace(" )", ")").replace("[ ", "[").replace(" ]", "]")
    if "(?" in text:
        text = _LIST.sub("(?+)", text)
        if "(?+), " in text:
            text = _LIST_RUN.sub("(?+)", text)
    if "array[" in text:
        text = _ARRAY.sub("array[?+]", text)
    return text.rstrip(";").strip()


def _entry(sql: str) -> tuple[str, str]:
    entry = _cache.get(sql)
    if entry is None:
        norm = _normalize_uncached(sql)
        entry = (norm, hashlib.blake2b(norm.encode("utf-8", "replace"), digest_size=8).hexdigest())
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()  # literal-heavy streams never hit: start over rather than grow
        _cache[sql] = entry
    return entry


def normalize(sql: str) -> str:
    """The statement's shape: literals and placeholders as ``?``, lists as ``(?+)``,
    comments dropped, lower case, single spaces. Never raises on any text."""
    return _entry(sql)[0]


def fingerprint(sql: str) -> str:
    """A 16-hex-digit key of :func:`normalize`'s output: equal for statements that differ
    only in values, different for different tables, columns or structure."""
    return _entry(sql)[1]


_KIND_PREFIXES = (
    ("select", "select"),
    ("insert", "insert"),
    ("update", "update"),
    ("delete", "delete"),
    ("values", "select"),
    ("table", "select"),
    ("show", "select"),
    ("explain", "explain"),
    ("begin", "transaction"),
    ("start", "transaction"),
    ("commit", "transaction"),
    ("rollback", "transaction"),
    ("savepoint", "transaction"),
    ("release", "transaction"),
    ("set", "set"),
    ("create", "ddl"),
    ("alter", "ddl"),
    ("drop", "ddl"),
    ("truncate", "write"),
    ("copy", "copy"),
    ("merge", "write"),
    ("pragma", "set"),
)


@functools.lru_cache(maxsize=4096)
def statement_kind(normalized: str) -> str:
    """``select``, ``insert``, ``update``, ``delete``, ``write`` (other data changes),
    ``transaction``, ``set``, ``ddl``, ``copy``, ``explain`` or ``other``, from the
    normalised text. ``WITH`` statements are classified by sqlparse (data-modifying CTEs
    count as writes)."""
    head = normalized.lstrip("( ")
    for prefix, kind in _KIND_PREFIXES:
        if head.startswith(prefix):
            if kind == "select" and " for update" in head:
                return "select"
            return kind
    if head.startswith("with"):
        return _cte_kind(head)
    return "other"


def _cte_kind(text: str) -> str:
    import sqlparse

    try:
        parsed = sqlparse.parse(text)
    except Exception:  # sqlparse gives up on some inputs; classification is best effort
        return "other"
    kind = str(parsed[0].get_type()).lower() if parsed else ""  # type: ignore[no-untyped-call]
    if kind in ("select", "insert", "update", "delete"):
        # A SELECT whose CTEs modify data is a write.
        if kind == "select" and re.search(r"\b(insert into|update \S+ set|delete from)\b", text):
            return "write"
        return kind
    return "other"


_TABLE = re.compile(
    r"\b(?:from|join|into|update)\s+((?:\"[^\"]+\"|[a-z_][\w$]*)(?:\.(?:\"[^\"]+\"|[a-z_][\w$]*))?)"
)


@functools.lru_cache(maxsize=4096)
def tables(normalized: str) -> tuple[str, ...]:
    """Tables named after FROM / JOIN / INTO / UPDATE, in order of first appearance."""
    seen: dict[str, None] = {}
    for name in _TABLE.findall(normalized):
        if name not in ("select", "lateral", "unnest", "only"):
            seen.setdefault(name.replace('"', ""), None)
    return tuple(seen)


_LITERALS_ONLY = re.compile(
    r"""(?P<str>[eEnNbBxX]?'(?:[^']|'')*'?)"""
    r"""|(?P<dollar>\$\$.*?(?:\$\$|\Z)|\$(?P<tag>[A-Za-z_]\w*)\$.*?(?:\$(?P=tag)\$|\Z))"""
    r"""|(?P<ident>"(?:[^"]|"")*"?)|(?P<num>(?<![\w.$%(])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w$]))""",
    re.DOTALL,
)


def _redact(match: re.Match[str]) -> str:
    return match.group(0) if match.lastgroup == "ident" else "?"


def redact_literals(sql: str) -> str:
    """The statement as written, with inlined string and number literals replaced by
    ``?``: safe to put in a report (bind placeholders carry no values)."""
    return _LITERALS_ONLY.sub(_redact, sql)


@functools.lru_cache(maxsize=1024)
def pretty(sql: str) -> str:
    """Re-indented SQL with upper-case keywords, for reports (sqlparse; slow, cached)."""
    import sqlparse

    try:
        return str(sqlparse.format(sql, reindent=True, keyword_case="upper")).strip()
    except Exception:  # formatting is cosmetic: never fail a report over it
        return sql.strip()
