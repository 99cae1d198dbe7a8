"""SQL fingerprints: one stable key per statement *shape*, cheap enough for every statement.

``normalize(sql)`` replaces literals and bind placeholders with ``?``, collapses ``IN``
lists, ``VALUES`` tuples and ``ARRAY[...]`` literals to ``(?+)`` (also when each value
carries a cast, as SQLAlchemy's PostgreSQL dialects send expanding IN parameters:
``IN (%(id_1_1)s::BIGINT, ...)``), drops comments, folds case and whitespace (quoted
identifiers keep their case). ``IS NULL`` / ``IS TRUE`` and ``ORDER BY 2`` are
structure, not values, and stay. ``fingerprint(sql)`` is a 16-hex-digit hash of that text. Both are
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
      (?P<estr>(?<![\w$])[eE]'(?:[^'\\]|\\.|'')*'?)  # E'it\'s' (backslash escapes)
    | (?P<str>'(?:[^']|'')*'?)                     # 'text', unterminated ok
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
# A value in a list may carry a cast, as SQLAlchemy's PostgreSQL dialects render every
# expanded IN parameter: ``IN (%(id_1_1)s::BIGINT, ...)``, ``IN ($1::VARCHAR, ...)``.
_CAST = (
    r"(?:::[a-z_]\w*(?: (?:with|without) time zone| precision| varying)?"
    r"(?:\(\?(?:, \?)*\)|\(\?\+\))?(?:\[\])*)?"
)
_ITEM = r"\?" + _CAST
_LIST = re.compile(r"\((?:" + _ITEM + r", )*" + _ITEM + r"\)")
_LIST_RUN = re.compile(r"\(\?\+\)(?:, \(\?\+\))+")
_ARRAY = re.compile(r"array\[(?:" + _ITEM + r", )*" + _ITEM + r"\]")
_NEEDS_LITERAL_PASS = re.compile(r"""['"$]|--|/\*""")
# Positions in ORDER BY / GROUP BY (``ORDER BY 2``) are column references, not values;
# IS NULL / IS TRUE / IS FALSE are predicates, not comparisons with a value.
_ORDINALS = re.compile(r"\b(order|group) by (\d+(?: ?, ?\d+)*)(?![\w.])")
_ORDINAL_MARK = "\x01ord"
_ORDINAL_RESTORE = re.compile("\x01ord(\\d+)")
_IS_PREDICATE = re.compile(r"\bis( not)? (null|true|false|unknown)\b")
_IS_MARK = re.compile("\x01is(n?)(null|true|false|unknown)")
_QUOTED_MARK = re.compile("\x02([a-j]+)\x02")

_CACHE_MAX = 20_000
_cache: dict[str, tuple[str, str]] = {}


def _index_mark(index: int) -> str:
    # Letters a-j for the digits: a mark never contains a digit or a word such as "null".
    return "\x02" + "".join("abcdefghij"[int(d)] for d in str(index)) + "\x02"


def _normalize_uncached(sql: str) -> str:
    text = sql
    quoted: list[str] = []
    if _NEEDS_LITERAL_PASS.search(text) is not None:

        def literal(match: re.Match[str]) -> str:
            kind = match.lastgroup
            if kind == "estr":
                return "e?"
            if kind in ("str", "dollar"):
                return "?"
            if kind in ("line", "block"):
                return " "
            # A quoted identifier keeps its case ("Users" and "users" are two tables):
            # set aside until the rest is folded.
            quoted.append(match.group(0))
            return _index_mark(len(quoted) - 1)

        text = _LITERALS.sub(literal, text)
    text = text.lower()
    if " by " in text:
        text = _ORDINALS.sub(
            lambda m: (
                f"{m.group(1)} by "
                + re.sub(r"\d+", lambda d: _ORDINAL_MARK + d.group(0), m.group(2))
            ),
            text,
        )
    if "is " in text:
        text = _IS_PREDICATE.sub(
            lambda m: "\x01is" + ("n" if m.group(1) else "") + m.group(2), text
        )
    text = " ".join(_VALUES.sub("?", text).split())
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
    if "\x01" in text:
        text = _ORDINAL_RESTORE.sub(r"\1", text)
        text = _IS_MARK.sub(lambda m: "is " + ("not " if m.group(1) else "") + m.group(2), text)
    if quoted:
        text = _QUOTED_MARK.sub(
            lambda m: quoted[int("".join(str("abcdefghij".index(c)) for c in m.group(1)))], text
        )
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
    r"""(?P<estr>(?<![\w$])[eE]'(?:[^'\\]|\\.|'')*'?)"""  # E'..' with backslash escapes
    r"""|(?P<str>(?:(?<![\w$])[nNbBxXuU]&?)?'(?:[^']|'')*'?)"""
    r"""|(?P<dollar>\$\$.*?(?:\$\$|\Z)|\$(?P<tag>[A-Za-z_]\w*)\$.*?(?:\$(?P=tag)\$|\Z))"""
    r"""|(?P<ident>"(?:[^"]|"")*"?)"""
    r"""|(?P<num>(?<![\w.$%:?])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w$]))""",
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
