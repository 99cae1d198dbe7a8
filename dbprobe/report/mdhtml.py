"""A small Markdown-to-HTML converter for the rule pages embedded in HTML reports.

It covers what ``docs/rules/*.md`` use — ATX headings, paragraphs, fenced code blocks,
bullet and numbered lists (with continuation lines), pipe tables, inline code,
``**bold**``, ``*emphasis*`` and links — and escapes everything else, so a page renders
offline inside the report without a Markdown dependency. Links to other rule pages
(``pool-exhaustion.md``) become anchors within the report when ``anchors`` knows them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from html import escape

_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EM = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_BULLET = re.compile(r"^(\s*)([-*]|\d+\.)\s+(.*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _inline(text: str, link: Callable[[str], str]) -> str:
    """Escape ``text`` and render inline code, links, bold and emphasis."""
    codes: list[str] = []

    def stash(m: re.Match[str]) -> str:
        codes.append(f"<code>{escape(m.group(1))}</code>")
        return f"\x00{len(codes) - 1}\x00"

    text = _CODE.sub(stash, text)
    links: list[str] = []

    def stash_link(m: re.Match[str]) -> str:
        label = _inline(m.group(1), link)
        links.append(f'<a href="{escape(link(m.group(2)))}">{label}</a>')
        return f"\x01{len(links) - 1}\x01"

    text = _LINK.sub(stash_link, text)
    text = escape(text, quote=False)
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _EM.sub(r"<em>\1</em>", text)
    text = re.sub("\x01(\\d+)\x01", lambda m: links[int(m.group(1))], text)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], text)


def _table(rows: list[str], link: Callable[[str], str]) -> str:
    def cells(line: str) -> list[str]:
        body = line.strip().strip("|")
        return [c.strip() for c in re.split(r"(?<!\\)\|", body)]

    head = cells(rows[0])
    out = ["<table><thead><tr>"]
    out += [f"<th>{_inline(c, link)}</th>" for c in head]
    out.append("</tr></thead><tbody>")
    for line in rows[2:]:
        out.append("<tr>" + "".join(f"<td>{_inline(c, link)}</td>" for c in cells(line)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def markdown_to_html(
    text: str,
    *,
    anchors: Mapping[str, str] | None = None,
    heading_offset: int = 2,
) -> str:
    """``text`` (Markdown) as an HTML fragment.

    anchors: link targets to rewrite (``"pool-exhaustion.md"`` → ``"#rule-pool-exhaustion"``);
    heading_offset: added to every heading level (``#`` becomes ``<h3>`` with the default
    2), so the page nests under the report's own headings.
    """
    anchors = anchors or {}

    def link(target: str) -> str:
        name = target.rsplit("/", 1)[-1]
        return anchors.get(name, anchors.get(target, target))

    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    items: list[tuple[str, list[str]]] = []  # list kind, item lines

    def flush_para() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para), link)}</p>")
            para.clear()

    def flush_list() -> None:
        if not items:
            return
        kind = items[0][0]
        tag = "ol" if kind == "ol" else "ul"
        out.append(f"<{tag}>")
        out.extend(f"<li>{_inline(' '.join(body), link)}</li>" for _, body in items)
        out.append(f"</{tag}>")
        items.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush_para()
            flush_list()
            fence = stripped[: len(stripped) - len(stripped.lstrip("`"))]
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i])
                i += 1
            out.append(f"<pre><code>{escape(chr(10).join(body))}</code></pre>")
            i += 1
            continue
        heading = _HEADING.match(line)
        if heading:
            flush_para()
            flush_list()
            level = min(6, len(heading.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(heading.group(2), link)}</h{level}>")
            i += 1
            continue
        if (
            stripped.startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\s*\|?\s*:?-{3,}", lines[i + 1])
        ):
            flush_para()
            flush_list()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i])
                i += 1
            out.append(_table(rows, link))
            continue
        bullet = _BULLET.match(line)
        if bullet and not bullet.group(1):
            flush_para()
            kind = "ol" if bullet.group(2)[0].isdigit() else "ul"
            if items and items[0][0] != kind:
                flush_list()
            items.append((kind, [bullet.group(3)]))
            i += 1
            continue
        if not stripped:
            flush_para()
            if items and not (i + 1 < len(lines) and lines[i + 1].startswith("  ")):
                flush_list()
            i += 1
            continue
        if items and line.startswith((" ", "\t")):
            items[-1][1].append(stripped)
            i += 1
            continue
        flush_list()
        para.append(stripped)
        i += 1
    flush_para()
    flush_list()
    return "\n".join(out)
