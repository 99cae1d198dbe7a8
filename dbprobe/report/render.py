"""Render a :class:`Report` for people and machines.

Formats (``RENDERERS``): ``table`` (terminal, grouped by severity, 100 columns),
``json`` (the ``dbprobe.report/1`` contract), ``markdown`` (a pull-request comment),
``html`` (one self-contained file with inline SVG charts) and ``sarif`` (SARIF 2.1.0
for code-scanning annotations).
"""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tabulate import tabulate

from dbprobe.report.html import render_html
from dbprobe.report.model import Finding, Report, Severity
from dbprobe.report.sarif import render_sarif
from dbprobe.report.views import (
    coldstart_view,
    finding_where,
    fmt_value,
    iter_distributions,
    other_distributions,
    pool_view,
)
from dbprobe.rules import RULES, docs_url

Renderer = Callable[[Report], str]
WIDTH = 100
SEVERITIES = (Severity.ERROR, Severity.WARNING, Severity.INFO)

__all__ = [
    "RENDERERS",
    "WIDTH",
    "Renderer",
    "iter_distributions",
    "render",
    "render_html",
    "render_json",
    "render_markdown",
    "render_sarif",
    "render_table",
    "write_report",
]

# kept for callers that imported these helpers from here
_fmt = fmt_value
_where = finding_where


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_line(report: Report) -> str:
    """``2 errors, 1 warning, 0 info``."""
    s = report.summary()
    return f"{_plural(s['error'], 'error')}, {_plural(s['warning'], 'warning')}, {s['info']} info"


def _header(report: Report, data: dict[str, Any]) -> list[str]:
    target = data["target"]
    line = f"dbprobe {report.command} — {target.get('url') or 'no target'}"
    if target.get("server_version"):
        line += f" (PostgreSQL {target['server_version']})"
    env = data.get("environment") or {}
    facts = [f"started {data['started_at']}", f"took {report.duration_s:.1f}s"]
    facts.append(f"dbprobe {data['tool']['version']}")
    if env.get("cpus"):
        facts.append(f"{env['cpus']} CPUs")
    if env.get("python"):
        facts.append(f"Python {env['python']}")
    return [line, " · ".join(facts)]


def _finding_lines(f: Finding, width: int) -> list[str]:
    head = f"[{f.rule}] {f.message}"
    if f.count is not None:
        head += f" (×{f.count})"
    lines = [textwrap.fill(head, width, subsequent_indent="    ")]
    where = finding_where(f)
    if where != "-":
        lines.append(
            textwrap.fill(
                f"at: {where}", width, initial_indent="    ", subsequent_indent="        "
            )
        )
    if f.sql:
        sql = " ".join(f.sql.split())
        lines.append("    " + textwrap.shorten(f"sql: {sql}", width - 4, placeholder=" …"))
    lines.append(
        textwrap.fill(
            f"fix: {f.recommendation}", width, initial_indent="    ", subsequent_indent="         "
        )
    )
    if f.rule in RULES:
        lines.append(f"    docs: {RULES[f.rule].docs}")
    return lines


def _num3(value: Any) -> str:
    """Three significant digits: 0.0123, 1.23, 123, 12,345."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v):
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


# Phases in the order a connection goes through them; short labels keep the table
# within 100 columns ("connect" is the driver's own figure for dns..startup).
_COLD_ORDER = ("dns", "tcp", "tls", "startup", "connect", "driver_init", "first_query")
_COLD_LABELS = {
    "driver_init": "driver\ninit",
    "first_query": "first\nquery",
    "connect": "connect\n(driver)",
}


def metrics_tables(data: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The metrics as (title, headers, rows) tables: cold start, one per pool, the rest."""
    metrics = data.get("metrics") or {}
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    cold = coldstart_view(metrics)
    if cold is not None and cold.drivers:
        present = {p for d in cold.drivers for p in d.phases}
        phases = [p for p in _COLD_ORDER if p in present]
        phases += sorted(present - set(phases))
        rows = []
        for d in cold.drivers:
            total = d.total or {}
            rows.append(
                [d.name]
                + [_num3(d.phases[p]["p50"]) if p in d.phases else "-" for p in phases]
                + [_num3(total.get(k)) for k in ("p50", "p95")]
                + [str(total.get("n", "-"))]
            )
        if cold.tcp_floor:
            fl = cold.tcp_floor
            rows.append(
                ["tcp floor"]
                + ["-"] * len(phases)
                + [_num3(fl.get(k)) for k in ("p50", "p95")]
                + [str(fl.get("n", "-"))]
            )
        tables.append(
            (
                # dns..startup: dbprobe's protocol client, paired with each driver's samples
                "COLD START (ms; phases at p50, total at p50 and p95; "
                "dns/tcp/tls/startup: protocol client)",
                [
                    "driver",
                    *(_COLD_LABELS.get(p, p) for p in phases),
                    "total\np50",
                    "total\np95",
                    "n",
                ],
                rows,
            )
        )
    for pool in pool_view(metrics):
        rows = []
        for s in pool.steps:
            aw = s.acquire_wait or {}
            ql = s.query_latency or {}
            rows.append(
                [
                    str(s.concurrency)
                    if s.offered_rate is None or math.isnan(s.offered_rate)
                    else f"{s.concurrency} @{s.offered_rate:g}/s",
                    _num3(s.throughput_qps),
                    _num3(aw.get("p50")),
                    _num3(aw.get("p95")),
                    _num3(aw.get("p99")),
                    _num3(ql.get("p50")),
                    _num3(ql.get("p95")),
                    str(s.timeouts),
                    str(sum(s.errors.values())),
                    "-" if math.isnan(s.client_cpu) else f"{s.client_cpu:.2f}",
                ]
            )
        tables.append(
            (
                f"POOL {pool.name} (acquire wait and query latency in ms)",
                [
                    "workers",
                    "q/s",
                    "acquire\np50",
                    "acquire\np95",
                    "acquire\np99",
                    "query\np50",
                    "query\np95",
                    "timeouts",
                    "errors",
                    "client\nCPU",
                ],
                rows,
            )
        )
    rest = [
        [
            path,
            str(d.get("n")),
            *(fmt_value(d.get(k)) for k in ("p50", "p95", "p99", "max")),
            str(d.get("unit", "")),
        ]
        for path, d in other_distributions(metrics)
        if d.get("n")  # an empty distribution (no timeouts, say) says nothing in a table
    ]
    if rest:
        tables.append(("METRICS", ["metric", "n", "p50", "p95", "p99", "max", "unit"], rest))
    return tables


def render_table(report: Report) -> str:
    """Plain text for a terminal: findings grouped by severity, metrics as tables;
    no line is wider than the terminal (at most 100 columns)."""
    width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    data = report.to_dict()
    lines = _header(report, data)
    for note in report.notes:
        lines.append(textwrap.fill(f"note: {note}", width))
    ordered = report.sorted_findings()
    for sev in SEVERITIES:
        group = [f for f in ordered if f.severity is sev]
        if not group:
            continue
        title = f"{sev.value.upper()} ({len(group)})"
        lines += ["", title, "─" * len(title)]
        for f in group:
            lines += _finding_lines(f, width)
    for title, headers, rows in metrics_tables(data):
        lines += ["", title]
        align = ("left",) + ("right",) * (len(headers) - 1)
        text = tabulate(
            rows, headers=headers, tablefmt="simple", disable_numparse=True, colalign=align
        )
        if max(len(line) for line in text.splitlines()) > width:
            text = tabulate(
                rows,
                headers=headers,
                tablefmt="simple",
                disable_numparse=True,
                colalign=align,
                maxcolwidths=[max(12, width - 60)] + [None] * (len(headers) - 1),
            )
        lines.append(text)
    lines += ["", f"summary: {summary_line(report)}"]
    return "\n".join(_clip(line, width) for line in "\n".join(lines).splitlines()) + "\n"


def _clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


MARKDOWN_DETAILS_LIMIT = 50
"""Findings that get a collapsible evidence block in Markdown (PR comments are capped
at 65,536 characters)."""


def _strip_samples(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_samples(v) for k, v in node.items() if k != "samples"}
    if isinstance(node, list):
        return [_strip_samples(v) for v in node]
    return node


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _md_code(text: str, lang: str = "") -> list[str]:
    fence = "```"
    while fence in text:
        fence += "`"
    return [f"{fence}{lang}", text.rstrip(), fence]


def _md_details(f: Finding, evidence: dict[str, Any]) -> list[str]:
    from dbprobe.report.html import format_sql, plan_excerpt

    body: list[str] = []
    if f.sql:
        body += _md_code(format_sql(f.sql), "sql")
    plan = plan_excerpt(evidence)
    if plan:
        body += ["", "Plan excerpt:", "", *_md_code(plan)]
    numbers = {k: _strip_samples(v) for k, v in evidence.items() if "plan" not in k.lower()}
    if numbers:
        body += ["", "Evidence:", "", *_md_code(json.dumps(numbers, indent=2, default=str), "json")]
    if not body:
        return []
    where = finding_where(f)
    summary = f"<code>{f.rule}</code> evidence" + (f" — {where}" if where != "-" else "")
    return ["<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>", ""]


def render_markdown(report: Report) -> str:
    """GitHub-flavoured Markdown for a pull-request comment: a summary line, the
    findings table with links to the rule pages, collapsible SQL/plan/evidence blocks
    and the metrics tables."""
    data = report.to_dict()
    s = report.summary()
    icon = "❌" if s["error"] else ("⚠️" if s["warning"] else "✅")
    out = [f"### {icon} dbprobe {report.command}: {summary_line(report)}", ""]
    target = data["target"]
    facts = []
    if target.get("url"):
        facts.append(f"target `{target['url']}`")
    if target.get("server_version"):
        facts.append(f"PostgreSQL {target['server_version']}")
    facts.append(f"{report.duration_s:.1f} s")
    facts.append(f"dbprobe {data['tool']['version']}")
    out += [" · ".join(facts), ""]
    for note in report.notes:
        out.append(f"> {_md_cell(note)}")
    if report.notes:
        out.append("")
    ordered = report.sorted_findings()
    if ordered:
        out.append("| severity | rule | where | finding | fix |")
        out.append("|---|---|---|---|---|")
        for f in ordered:
            link = f"[`{f.rule}`]({docs_url(f.rule)})" if f.rule in RULES else f"`{f.rule}`"
            message = f.message + (f" (×{f.count})" if f.count is not None else "")
            cells = [f.severity.value, link, finding_where(f), message, f.recommendation]
            out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        out.append("")
        for f, d in list(zip(ordered, data["findings"], strict=True))[:MARKDOWN_DETAILS_LIMIT]:
            out += _md_details(f, d.get("evidence") or {})
        if len(ordered) > MARKDOWN_DETAILS_LIMIT:
            out += [
                f"_Evidence shown for the first {MARKDOWN_DETAILS_LIMIT} of {len(ordered)} "
                "findings; the JSON or HTML report has all of it._",
                "",
            ]
    else:
        out += ["No findings.", ""]
    tables = metrics_tables(data)
    if tables:
        out += ["<details>", "<summary>Metrics</summary>", ""]
        for title, headers, rows in tables:
            out += [f"**{title.capitalize()}**", ""]
            out.append("| " + " | ".join(h.replace("\n", " ") for h in headers) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
            for row in rows:
                cells = [f"`{row[0]}`", *row[1:]] if title == "METRICS" else row
                out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
            out.append("")
        out += ["</details>", ""]
    return "\n".join(out)


RENDERERS: dict[str, Renderer] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
    "html": render_html,
    "sarif": render_sarif,
}


def render(report: Report, fmt: str) -> str:
    try:
        renderer = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (choose {', '.join(RENDERERS)})") from None
    return renderer(report)


def write_report(report: Report, fmt: str, output: str | Path | None) -> None:
    """Render ``report`` to ``output`` (a path) or standard output."""
    import sys

    text = render(report, fmt)
    if output in (None, "", "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(str(output))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
