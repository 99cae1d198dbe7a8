"""Render a :class:`Report` for people and machines.

Formats: ``table`` (terminal), ``json`` (the ``dbprobe.report/1`` contract),
``markdown`` (pull-request comments). More formats register in ``RENDERERS``.
"""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tabulate import tabulate

from dbprobe.report.model import Report, Severity, is_distribution
from dbprobe.rules import RULES

Renderer = Callable[[Report], str]
WIDTH = 100


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"


def iter_distributions(metrics: Any, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every serialised distribution in a metrics tree, with its dotted path."""
    if is_distribution(metrics):
        yield prefix, metrics
        return
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            yield from iter_distributions(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(metrics, list):
        for i, value in enumerate(metrics):
            yield from iter_distributions(value, f"{prefix}[{i}]")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _where(f: Any) -> str:
    return " ".join(x for x in (f.location, f.table and f"[{f.table}]", f.test) if x) or "-"


def render_table(report: Report) -> str:
    width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    data = report.to_dict()
    lines = [
        f"dbprobe {report.command} — {data['target'].get('url') or 'no target'}"
        + (
            f" (PostgreSQL {data['target']['server_version']})"
            if data["target"].get("server_version")
            else ""
        ),
        f"started {data['started_at']}, took {report.duration_s:.1f}s",
    ]
    for note in report.notes:
        lines.append(textwrap.fill(f"note: {note}", width))
    for sev in (Severity.ERROR, Severity.WARNING, Severity.INFO):
        group = [f for f in report.sorted_findings() if f.severity is sev]
        if not group:
            continue
        lines += ["", f"{sev.value.upper()} ({len(group)})", "=" * min(width, 40)]
        for f in group:
            head = f"[{f.rule}] {f.message}"
            if f.count is not None:
                head += f" (×{f.count})"
            lines.append(textwrap.fill(head, width, subsequent_indent="    "))
            where = _where(f)
            if where != "-":
                lines.append(
                    textwrap.fill(
                        f"at: {where}", width, initial_indent="    ", subsequent_indent="        "
                    )
                )
            if f.sql:
                sql = " ".join(f.sql.split())
                lines.append(textwrap.shorten(f"    sql: {sql}", width, placeholder=" …"))
            lines.append(
                textwrap.fill(
                    f"fix: {f.recommendation}",
                    width,
                    initial_indent="    ",
                    subsequent_indent="         ",
                )
            )
    rows = [
        [
            path,
            d.get("n"),
            _fmt(d.get("p50")),
            _fmt(d.get("p95")),
            _fmt(d.get("p99")),
            _fmt(d.get("max")),
            d.get("unit", ""),
        ]
        for path, d in iter_distributions(data["metrics"])
    ]
    if rows:
        lines += ["", "METRICS"]
        lines.append(
            tabulate(
                rows,
                headers=["metric", "n", "p50", "p95", "p99", "max", "unit"],
                tablefmt="simple",
                maxcolwidths=[46, None, None, None, None, None, 6],
            )
        )
    s = report.summary()
    lines += ["", f"summary: {s['error']} error, {s['warning']} warning, {s['info']} info"]
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    data = report.to_dict()
    s = report.summary()
    out = [
        f"### dbprobe {report.command}: {s['error']} error, {s['warning']} warning, "
        f"{s['info']} info",
        "",
    ]
    if data["target"].get("url"):
        out.append(
            f"Target `{data['target']['url']}`"
            + (
                f", PostgreSQL {data['target']['server_version']}"
                if data["target"].get("server_version")
                else ""
            )
        )
        out.append("")
    if report.findings:
        out.append("| severity | rule | where | finding | fix |")
        out.append("|---|---|---|---|---|")
        for f in report.sorted_findings():
            rule = RULES.get(f.rule)
            link = f"[`{f.rule}`]({rule.docs})" if rule else f"`{f.rule}`"
            cells = [
                f.severity.value,
                link,
                _where(f).replace("|", "\\|"),
                f.message.replace("|", "\\|"),
                f.recommendation.replace("|", "\\|"),
            ]
            out.append("| " + " | ".join(c.replace("\n", " ") for c in cells) + " |")
        out.append("")
    rows = list(iter_distributions(data["metrics"]))
    if rows:
        out.append("| metric | n | p50 | p95 | p99 | max |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for path, d in rows:
            out.append(
                f"| `{path}` ({d.get('unit', '')}) | {d.get('n')} | {_fmt(d.get('p50'))} | "
                f"{_fmt(d.get('p95'))} | {_fmt(d.get('p99'))} | {_fmt(d.get('max'))} |"
            )
        out.append("")
    return "\n".join(out)


RENDERERS: dict[str, Renderer] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
}


def render(report: Report, fmt: str) -> str:
    try:
        return RENDERERS[fmt](report)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (choose {', '.join(RENDERERS)})") from None


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
