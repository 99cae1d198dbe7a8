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
    "statement_effect",
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
    ("do ", "write"),  # DO $$ ... $$: anonymous code, may change anything
    ("call ", "write"),  # CALL procedure(...)
    ("lock ", "write"),
    ("notify ", "write"),
    ("refresh ", "write"),  # REFRESH MATERIALIZED VIEW
    ("vacuum", "write"),
    ("analyze", "write"),
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


# Functions whose result changes from one call to the next, or that act on the server
# (sequences, locks, notifications, settings): a statement calling one is never a
# harmless repeat. PostgreSQL and SQLite names.
_VOLATILE_FUNCTIONS = frozenset(
    {
        "random", "setseed", "clock_timestamp", "statement_timestamp", "timeofday",
        "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4",
        "uuidv4", "uuidv7", "nextval", "currval", "lastval", "setval", "pg_sleep",
        "pg_sleep_for", "pg_sleep_until", "txid_current", "txid_current_if_assigned",
        "pg_current_xact_id", "pg_current_xact_id_if_assigned", "pg_notify", "set_config",
        "pg_cancel_backend", "pg_terminate_backend", "pg_reload_conf", "pg_stat_reset",
        "randomblob", "changes", "total_changes", "last_insert_rowid",
    }
)  # fmt: skip
_VOLATILE_PREFIXES = ("pg_advisory", "pg_try_advisory", "lo_", "dblink", "pg_stat_reset")
# Of those, the ones that change state: later reads may see the change.
_SIDE_EFFECT_FUNCTIONS = frozenset(
    {"nextval", "setval", "pg_notify", "set_config", "pg_cancel_backend",
     "pg_terminate_backend", "pg_reload_conf", "pg_stat_reset"}
)  # fmt: skip
_SIDE_EFFECT_PREFIXES = ("pg_advisory", "pg_try_advisory", "lo_", "dblink", "pg_stat_reset")
# Built-in functions that only compute (no side effect, same result for the same input
# within a transaction). Any other function may be user code that writes: a statement
# calling it is treated as a write.
_PURE_FUNCTIONS = frozenset(
    """
    count sum avg min max every bool_and bool_or array_agg string_agg json_agg jsonb_agg
    json_object_agg jsonb_object_agg xmlagg stddev stddev_pop stddev_samp variance
    var_pop var_samp corr covar_pop covar_samp mode percentile_cont percentile_disc
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value
    last_value nth_value coalesce nullif greatest least lower upper initcap length
    char_length character_length octet_length bit_length substr substring trim btrim
    ltrim rtrim concat concat_ws replace split_part position strpos left right lpad
    rpad repeat reverse translate format md5 sha224 sha256 sha384 sha512 encode decode
    regexp_replace regexp_match regexp_matches regexp_split_to_array
    regexp_split_to_table regexp_like regexp_count regexp_instr regexp_substr starts_with
    to_hex ascii chr quote_ident quote_literal quote_nullable abs round ceil ceiling
    floor trunc mod power pow sqrt cbrt exp ln log log10 sign div pi degrees radians sin
    cos tan asin acos atan atan2 width_bucket date_trunc date_part extract to_char
    to_date to_timestamp to_number age now transaction_timestamp localtimestamp
    localtime current_timestamp current_date current_time make_date make_time
    make_timestamp make_timestamptz make_interval justify_days justify_hours
    justify_interval isfinite timezone date_bin date time datetime julianday strftime
    unixepoch array_length array_lower array_upper array_ndims array_dims cardinality
    array_position array_positions array_remove array_replace array_append array_prepend
    array_cat array_to_string string_to_array unnest generate_series generate_subscripts
    to_json to_jsonb row_to_json array_to_json json_build_object jsonb_build_object
    json_build_array jsonb_build_array json_object jsonb_object json_array_elements
    jsonb_array_elements json_array_elements_text jsonb_array_elements_text json_each
    jsonb_each json_each_text jsonb_each_text json_extract_path jsonb_extract_path
    json_extract_path_text jsonb_extract_path_text jsonb_set jsonb_insert jsonb_strip_nulls
    jsonb_pretty json_typeof jsonb_typeof jsonb_path_query jsonb_path_exists
    jsonb_path_match json_array_length jsonb_array_length json_extract json_array
    json_group_array json_group_object to_tsvector to_tsquery plainto_tsquery
    phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd ts_headline setweight
    cast exists any all some array row grouping pg_typeof version current_setting
    current_user current_schema current_database session_user pg_get_serial_sequence
    pg_size_pretty pg_relation_size pg_total_relation_size pg_table_size
    pg_indexes_size pg_get_indexdef pg_get_constraintdef pg_get_viewdef
    pg_get_functiondef pg_get_expr format_type has_table_privilege
    has_schema_privilege has_column_privilege has_database_privilege obj_description
    col_description to_regclass to_regtype ifnull iif instr printf hex typeof
    likely unlikely total group_concat char unicode zeroblob quote glob
    """.split()  # noqa: SIM905
)
_FUNCTION_CALL = re.compile(
    r"(?<![\w.$:\x01])((?:[a-z_][\w$]*\.)?[a-z_][\w$]*|\"(?:[^\"]|\"\")+\")(?= ?\()"
)
# Words followed by "(" that are not function calls.
_NOT_CALLS = frozenset(
    """
    in exists any all some values over filter within using on and or not from join select
    where lateral as with by when then else case is like ilike between into table index
    references returning set default check primary unique key partition window rows
    range groups tablesample only distinct union intersect except limit offset fetch
    having order group cube rollup grouping sets array row recursive materialized
    cast extract overlay position substring trim treat collate
    """.split()  # noqa: SIM905
)  # fmt: skip
_LOCKING = re.compile(
    r"\bfor (?:no key )?update\b|\bfor (?:key )?share\b|\bskip locked\b|\bnowait\b"
)
_LIVE_RELATIONS = re.compile(r"\b(?:from|join) (?:pg_catalog\.)?(?:pg_stat\w*|pg_locks)\b")


@functools.lru_cache(maxsize=4096)
def statement_effect(normalized: str) -> str:
    """What running the statement again would do, from the normalised text:

    * ``read``: a plain read; run twice with nothing in between, it returns the same;
    * ``volatile``: a read whose result may differ every time (``random()``,
      ``nextval()``, ``clock_timestamp()``, ``FOR UPDATE`` / ``SKIP LOCKED`` row locks,
      live statistics views): never a harmless repeat;
    * ``write``: changes data or server state (INSERT/UPDATE/DELETE/DDL, ``DO``,
      ``CALL``, ``SET``, a SELECT of ``nextval()``/``setval()``/advisory locks, or of a
      function that is not a known built-in, which may be user code that writes).
    """
    kind = statement_kind(normalized)
    if kind == "transaction":
        return "read"  # transaction ends are boundaries, handled by the caller
    if kind != "select":
        return "write"
    effect = "read"
    if _LOCKING.search(normalized) is not None or _LIVE_RELATIONS.search(normalized):
        effect = "volatile"
    if "(" not in normalized:
        return effect
    for name in _FUNCTION_CALL.findall(normalized):
        if name in _NOT_CALLS:
            continue
        start = normalized.find(name + "(")
        if start < 0:
            start = normalized.find(name + " (")
        before = normalized[max(0, start - 3) : start]
        if before.endswith("as "):
            continue  # a type in CAST(x AS numeric(12, 2))
        schema, _, bare = name.rpartition(".")
        if schema and schema != "pg_catalog":
            return "write"  # a function of the application's own schema
        if bare in _SIDE_EFFECT_FUNCTIONS or bare.startswith(_SIDE_EFFECT_PREFIXES):
            return "write"
        if bare in _VOLATILE_FUNCTIONS or bare.startswith(_VOLATILE_PREFIXES):
            effect = "volatile"
        elif bare not in _PURE_FUNCTIONS:
            return "write"
    return effect


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
