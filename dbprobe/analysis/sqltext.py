"""A small SQL tokenizer for statement texts and the expressions EXPLAIN prints.

It knows what PostgreSQL's lexer knows about where text is *not* code: string literals
(``'…'`` with ``''``, ``E'…'``), dollar quotes (``$tag$…$tag$``), quoted identifiers,
``--`` and nested ``/* */`` comments. That is enough to find placeholders (``$1``,
``%(name)s``, ``%s``), the statement's leading keyword, and the column references in a
plan's ``Filter``/``Index Cond``/``Sort Key`` texts. It does not build a full syntax
tree: the plan analysis only needs conjuncts of the form ``column op value``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

_IDENT_START = re.compile(r"[A-Za-z_\u0080-\uffff]")
_IDENT = re.compile(r"[A-Za-z0-9_$\u0080-\uffff]*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_PARAM = re.compile(r"\$(\d+)")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_PYFORMAT = re.compile(r"%\((\w+)\)s")
_OP_CHARS = set("+-*/<>=~!@#%^&|`?")


@dataclasses.dataclass(frozen=True)
class Token:
    """One token: ``kind`` is ``ident``, ``qident`` (quoted identifier; ``value`` is
    the name), ``string``, ``number``, ``param`` (``$n``; ``value`` is n),
    ``pyformat`` (``%(name)s``), ``format`` (``%s``), ``op``, ``punct`` (``( ) [ ] , .
    ; ::``) or ``comment``."""

    kind: str
    value: str
    text: str
    start: int

    @property
    def upper(self) -> str:
        return self.value.upper() if self.kind == "ident" else ""

    def is_word(self, *words: str) -> bool:
        return self.kind == "ident" and self.value.upper() in words

    def is_punct(self, *chars: str) -> bool:
        return self.kind == "punct" and self.value in chars


def tokenize(text: str, *, keep_comments: bool = False) -> list[Token]:
    """Split ``text`` into tokens; whitespace is dropped, comments too unless asked.

    Never raises: an unterminated string or comment runs to the end of the text.
    """
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        start = i
        if ch == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            if keep_comments:
                out.append(Token("comment", text[start:i], text[start:i], start))
            continue
        if ch == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if keep_comments:
                out.append(Token("comment", text[start:i], text[start:i], start))
            continue
        if ch == "'" or (ch in "eEnN" and text.startswith("'", i + 1)):
            if ch != "'":
                i += 1
            i = _end_of_string(text, i, backslash=ch in "eE")
            raw = text[start:i]
            body = raw[raw.index("'") + 1 : -1 if raw.endswith("'") and len(raw) > 1 else None]
            out.append(Token("string", body.replace("''", "'"), raw, start))
            continue
        if ch == '"':
            i += 1
            buf = []
            while i < n:
                if text[i] == '"':
                    if text.startswith('""', i):
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(text[i])
                i += 1
            out.append(Token("qident", "".join(buf), text[start:i], start))
            continue
        if ch == "$":
            m = _PARAM.match(text, i)
            if m and not (m.end() < n and text[m.end()] == "$"):
                out.append(Token("param", m.group(1), m.group(0), start))
                i = m.end()
                continue
            m = _DOLLAR_TAG.match(text, i)
            if m:
                tag = m.group(0)
                end = text.find(tag, m.end())
                i = n if end < 0 else end + len(tag)
                body = text[m.end() : end if end >= 0 else n]
                out.append(Token("string", body, text[start:i], start))
                continue
        if ch == "%":
            m = _PYFORMAT.match(text, i)
            if m:
                out.append(Token("pyformat", m.group(1), m.group(0), start))
                i = m.end()
                continue
            if text.startswith("%s", i):
                out.append(Token("format", "s", "%s", start))
                i += 2
                continue
        if _IDENT_START.match(ch):
            m = _IDENT.match(text, i + 1)
            assert m is not None
            i = m.end()
            out.append(Token("ident", text[start:i], text[start:i], start))
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            m = _NUMBER.match(text, i)
            assert m is not None
            i = m.end()
            out.append(Token("number", text[start:i], text[start:i], start))
            continue
        if ch == ":" and text.startswith("::", i):
            out.append(Token("punct", "::", "::", start))
            i += 2
            continue
        if ch in "()[],.;:":
            out.append(Token("punct", ch, ch, start))
            i += 1
            continue
        if ch in _OP_CHARS:
            while i < n and text[i] in _OP_CHARS:
                if text.startswith("--", i) or text.startswith("/*", i):
                    break
                if (
                    i > start
                    and text[i] == "%"
                    and (_PYFORMAT.match(text, i) or text.startswith("%s", i))
                ):
                    break
                i += 1
            op = text[start:i]
            # PostgreSQL: a multi-character operator cannot end in + or - unless it
            # also contains one of ~ ! @ # % ^ & | ` ?
            while len(op) > 1 and op[-1] in "+-" and not (set(op) & set("~!@#%^&|`?")):
                op = op[:-1]
            i = start + len(op)
            out.append(Token("op", op, op, start))
            continue
        out.append(Token("op", ch, ch, start))
        i += 1
    return out


def _end_of_string(text: str, i: int, *, backslash: bool) -> int:
    """Index just past the string literal whose opening quote is at ``i``."""
    i += 1
    n = len(text)
    while i < n:
        c = text[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == "'":
            if text.startswith("''", i):
                i += 2
                continue
            return i + 1
        i += 1
    return n


# -- statements ---------------------------------------------------------------------------


def leading_keyword(sql: str) -> str:
    """The statement's first keyword in upper case (``SELECT``, ``WITH``, ``UPDATE`` ...),
    skipping comments and opening parentheses; ``""`` when there is none."""
    for tok in tokenize(sql):
        if tok.is_punct("("):
            continue
        return tok.upper
    return ""


EXPLAINABLE = frozenset(
    {"SELECT", "WITH", "UPDATE", "DELETE", "INSERT", "VALUES", "TABLE", "MERGE"}
)


def is_explainable(sql: str) -> bool:
    """Whether ``EXPLAIN`` accepts the statement (queries and DML, not utility commands)."""
    return leading_keyword(sql) in EXPLAINABLE


def placeholder_style(sql: str) -> str:
    """``dollar`` (``$1``), ``pyformat`` (``%(name)s``), ``format`` (``%s``) or ``none``."""
    kinds = {t.kind for t in tokenize(sql)}
    for kind, style in (("param", "dollar"), ("pyformat", "pyformat"), ("format", "format")):
        if kind in kinds:
            return style
    return "none"


def max_dollar_param(sql: str) -> int:
    """The highest ``$n`` in ``sql`` (0 when there is none)."""
    return max((int(t.value) for t in tokenize(sql) if t.kind == "param"), default=0)


def has_marker(sql: str, marker: str) -> bool:
    """Whether a comment in ``sql`` contains ``marker`` (e.g. ``dbprobe-audit``)."""
    return any(marker in t.value for t in tokenize(sql, keep_comments=True) if t.kind == "comment")


# -- token-list helpers used by the plan analysis --------------------------------------------


def matching_paren(tokens: Sequence[Token], open_index: int) -> int:
    """Index of the ``)`` (or ``]``) closing the bracket at ``open_index``; -1 if none."""
    opener = tokens[open_index].value
    closer = ")" if opener == "(" else "]"
    depth = 0
    for j in range(open_index, len(tokens)):
        t = tokens[j]
        if t.kind == "punct" and t.value == opener:
            depth += 1
        elif t.kind == "punct" and t.value == closer:
            depth -= 1
            if depth == 0:
                return j
    return -1


def strip_parens(tokens: Sequence[Token]) -> list[Token]:
    """Drop parentheses that wrap the whole token list (repeatedly)."""
    toks = list(tokens)
    while len(toks) >= 2 and toks[0].is_punct("(") and matching_paren(toks, 0) == len(toks) - 1:
        toks = toks[1:-1]
    return toks


def split_top_level(tokens: Sequence[Token], word: str) -> list[list[Token]]:
    """Split on the keyword ``word`` (``AND``/``OR``) where it is not inside brackets."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for t in tokens:
        if t.is_punct("(", "["):
            depth += 1
        elif t.is_punct(")", "]"):
            depth -= 1
        if depth == 0 and t.is_word(word):
            parts.append([])
            continue
        parts[-1].append(t)
    return [p for p in parts if p]


def render(tokens: Sequence[Token]) -> str:
    """Tokens joined back into readable SQL (spacing normalised)."""
    out: list[str] = []
    prev: Token | None = None
    for t in tokens:
        if prev is not None and _space_between(prev, t):
            out.append(" ")
        out.append(t.text)
        prev = t
    return "".join(out)


def _space_between(a: Token, b: Token) -> bool:
    if a.is_punct("(", "[", ".", "::") or b.is_punct(")", "]", ",", ".", "::", "["):
        return False
    return not (b.is_punct("(") and a.kind in ("ident", "qident") and not a.is_word(*_SPACED))


_SPACED = ("AND", "OR", "NOT", "IN", "ANY", "ALL", "IS", "EXISTS", "ARRAY", "AS", "ON")
