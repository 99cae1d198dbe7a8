"""The HTML report: one self-contained file a database engineer can review offline.

No network: no external scripts, styles, fonts or images, and a Content-Security-Policy
that forbids fetching any. Charts are inline SVG drawn by :mod:`dbprobe.report.svg`:
latency distributions (percentile bars and CDFs), throughput and acquire wait against
concurrency for pool runs, stacked phases for cold start. Findings show the SQL
(formatted with sqlparse), plan excerpts and evidence, with a link to the rule's page.
A few lines of inline JavaScript filter findings by severity; the page prints with every
finding and every collapsed block expanded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from dbprobe.report import svg
from dbprobe.report.model import Finding, Report, Severity, is_distribution
from dbprobe.report.views import (
    ColdstartView,
    PoolView,
    coldstart_view,
    finding_where,
    fmt_value,
    iter_distributions,
    other_distributions,
    pool_view,
)
from dbprobe.rules import RULES, docs_url

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)
PLAN_LINES = 40
SERIES_PER_CHART = 7
ROWS_PER_CHART = 12

STYLE = """
:root { --fg:#1b1b1b; --muted:#555; --line:#d0d0d0; --bg:#fff;
  --error:#b3261e; --error-bg:#fdecea; --warning:#8a5300; --warning-bg:#fff4e0;
  --info:#0b57a4; --info-bg:#e8f1fb; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; color: var(--fg); background: var(--bg); margin: 0 auto; max-width: 1100px;
  padding: 24px; line-height: 1.45; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 32px 0 12px; border-bottom: 2px solid var(--line);
  padding-bottom: 4px; }
h3 { font-size: 1.05rem; margin: 0 0 6px; }
.meta { color: var(--muted); margin: 0; }
.summary { display: flex; gap: 12px; flex-wrap: wrap; margin: 16px 0; }
.badge { border-radius: 6px; padding: 6px 12px; font-weight: 600; border: 1px solid; }
.badge.error { color: var(--error); background: var(--error-bg); }
.badge.warning { color: var(--warning); background: var(--warning-bg); }
.badge.info { color: var(--info); background: var(--info-bg); }
.filters { margin: 8px 0 16px; }
.filters label { margin-right: 16px; cursor: pointer; }
.finding { border: 1px solid var(--line); border-left: 6px solid; border-radius: 6px;
  padding: 12px 16px; margin: 12px 0; break-inside: avoid; }
.finding.sev-error { border-left-color: var(--error); }
.finding.sev-warning { border-left-color: var(--warning); }
.finding.sev-info { border-left-color: var(--info); }
.sev { font-size: .8rem; font-weight: 700; text-transform: uppercase; padding: 1px 6px;
  border-radius: 4px; margin-right: 6px; }
.sev-error .sev { color: var(--error); background: var(--error-bg); }
.sev-warning .sev { color: var(--warning); background: var(--warning-bg); }
.sev-info .sev { color: var(--info); background: var(--info-bg); }
.rule { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.fix { background: #eef7ee; border-radius: 4px; padding: 8px 12px; margin: 8px 0;
  white-space: pre-wrap; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 4px; padding: 8px 12px;
  overflow-x: auto; font-size: .85rem; white-space: pre-wrap; overflow-wrap: anywhere; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: .9rem; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
figure { margin: 12px 0 20px; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: .9rem; }
a { color: #0b57a4; }
body.hide-error .sev-error, body.hide-warning .sev-warning, body.hide-info .sev-info
  { display: none; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  .filters { display: none; }
  body.hide-error .sev-error, body.hide-warning .sev-warning, body.hide-info .sev-info
    { display: block; }
  figure, table, .finding { break-inside: avoid; }
  a { color: inherit; }
}
"""

SCRIPT = """
document.querySelectorAll('input[data-sev]').forEach(function (box) {
  box.addEventListener('change', function () {
    document.body.classList.toggle('hide-' + box.dataset.sev, !box.checked);
  });
});
window.addEventListener('beforeprint', function () {
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
});
"""


def format_sql(sql: str) -> str:
    """SQL laid out for reading: sqlparse reindent, upper-case keywords."""
    import sqlparse

    try:
        text = sqlparse.format(sql, reindent=True, keyword_case="upper", wrap_after=88)
    except Exception:  # sqlparse gives up on some inputs; show them as they came
        return sql.strip()
    return str(text).strip()


def _plan_root(plan: Any) -> Mapping[str, Any] | None:
    if isinstance(plan, list) and plan:
        plan = plan[0]
    if isinstance(plan, Mapping) and isinstance(plan.get("Plan"), Mapping):
        root: Mapping[str, Any] = plan["Plan"]
        return root
    if isinstance(plan, Mapping) and "Node Type" in plan:
        return plan
    return None


def _plan_node_lines(node: Mapping[str, Any], depth: int, out: list[str]) -> None:
    head = str(node.get("Node Type", "?"))
    if node.get("Relation Name"):
        head += f" on {node['Relation Name']}"
        if node.get("Alias") and node["Alias"] != node["Relation Name"]:
            head += f" {node['Alias']}"
    if node.get("Index Name"):
        head += f" using {node['Index Name']}"
    if "Total Cost" in node:
        head += (
            f"  (cost={node.get('Startup Cost', 0):.2f}..{node['Total Cost']:.2f}"
            f" rows={node.get('Plan Rows', '?')})"
        )
    if "Actual Total Time" in node:
        head += (
            f" (actual time={node.get('Actual Startup Time', 0):.3f}.."
            f"{node['Actual Total Time']:.3f} rows={node.get('Actual Rows', '?')} "
            f"loops={node.get('Actual Loops', '?')})"
        )
    pad = "  " * depth
    out.append(f"{pad}{'->  ' if depth else ''}{head}")
    for key in ("Index Cond", "Filter", "Hash Cond", "Join Filter", "Sort Key"):
        if key in node:
            value = node[key]
            if isinstance(value, list):
                value = ", ".join(map(str, value))
            out.append(f"{pad}      {key}: {value}")
    if "Rows Removed by Filter" in node:
        out.append(f"{pad}      Rows Removed by Filter: {node['Rows Removed by Filter']}")
    for child in node.get("Plans") or []:
        if isinstance(child, Mapping):
            _plan_node_lines(child, depth + 1, out)


def plan_text(plan: Any) -> str | None:
    """EXPLAIN (FORMAT JSON) output (or plain EXPLAIN text) as indented text lines,
    cut to :data:`PLAN_LINES` lines."""
    if isinstance(plan, str):
        lines = plan.strip().splitlines()
    else:
        root = _plan_root(plan)
        if root is None:
            return None
        lines = []
        _plan_node_lines(root, 0, lines)
    if len(lines) > PLAN_LINES:
        lines = [*lines[:PLAN_LINES], f"… {len(lines) - PLAN_LINES} more lines"]
    return "\n".join(lines) if lines else None


def plan_excerpt(evidence: Mapping[str, Any]) -> str | None:
    """Every plan in a finding's evidence (keys containing ``plan``), as text."""
    parts = []
    keys = [k for k in evidence if "plan" in k.lower()]
    for key in keys:
        text = plan_text(evidence[key])
        if text:
            parts.append(f"-- {key}\n{text}" if len(keys) > 1 else text)
    return "\n\n".join(parts) or None


def _evidence_value(value: Any) -> str:
    if is_distribution(value):
        return (
            f"p50 {fmt_value(value.get('p50'))} · p95 {fmt_value(value.get('p95'))} · "
            f"p99 {fmt_value(value.get('p99'))} · max {fmt_value(value.get('max'))} "
            f"{value.get('unit', '')} (n={value.get('n')})"
        )
    if isinstance(value, (Mapping, list)):
        return json.dumps(value, default=str)
    return fmt_value(value)


def _finding_html(f: Finding, data_evidence: Mapping[str, Any]) -> str:
    sev = f.severity.value
    rule = RULES.get(f.rule)
    out = [f'<article class="finding sev-{sev}" data-severity="{sev}">']
    out.append(
        f'<h3><span class="sev">{sev}</span><span class="rule">{escape(f.rule)}</span> — '
        f"{escape(f.message)}</h3>"
    )
    facts: list[tuple[str, str]] = []
    if rule is not None:
        facts.append(
            (
                "rule",
                f"{escape(rule.title)} · "
                f'<a href="{escape(docs_url(f.rule))}">docs/rules/{escape(f.rule)}.md</a>',
            )
        )
    for label, value in (
        ("location", f.location),
        ("test", f.test),
        ("table", f.table),
        ("count", None if f.count is None else str(f.count)),
        ("fingerprint", f.fingerprint),
    ):
        if value:
            facts.append((label, f"<code>{escape(value)}</code>"))
    if facts:
        out.append('<dl class="facts">')
        out += [f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts]
        out.append("</dl>")
    out.append(f'<div class="fix"><strong>Fix:</strong> {escape(f.recommendation)}</div>')
    if f.sql:
        sql = format_sql(f.sql)
        block = f'<pre class="sql"><code>{escape(sql)}</code></pre>'
        if sql.count("\n") > 12:
            block = (
                f"<details><summary>SQL ({sql.count(chr(10)) + 1} lines)</summary>{block}</details>"
            )
        out.append(block)
    plan = plan_excerpt(data_evidence)
    if plan:
        out.append(
            f'<details open><summary>Plan excerpt</summary><pre class="plan"><code>'
            f"{escape(plan)}</code></pre></details>"
        )
    rest = {k: v for k, v in data_evidence.items() if "plan" not in k.lower()}
    if rest:
        out.append("<details><summary>Evidence</summary><table><tbody>")
        for k, v in rest.items():
            out.append(
                f'<tr><th scope="row">{escape(str(k))}</th>'
                f'<td style="text-align:left"><code>{escape(_evidence_value(v))}</code></td></tr>'
            )
        out.append("</tbody></table></details>")
    out.append("</article>")
    return "\n".join(out)


def _figure(svg_text: str, caption: str) -> str:
    return f"<figure>{svg_text}<figcaption>{escape(caption)}</figcaption></figure>"


def _samples(dist: Mapping[str, Any]) -> list[float]:
    values = dist.get("samples")
    return [float(v) for v in values] if isinstance(values, list) else []


def _dist_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    out = [
        "<table><thead><tr><th>metric</th><th>n</th><th>p50</th><th>p95</th><th>p99</th>"
        "<th>max</th><th>unit</th></tr></thead><tbody>"
    ]
    for path, d in rows:
        cells = [fmt_value(d.get(k)) for k in ("p50", "p95", "p99", "max")]
        out.append(
            f"<tr><td><code>{escape(path)}</code></td><td>{d.get('n')}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td>{escape(str(d.get('unit', '')))}</td></tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _coldstart_section(view: ColdstartView) -> list[str]:
    out = ["<h3>Cold start</h3>"]
    rows: list[tuple[str, list[tuple[str, float]]]] = []
    totals: dict[str, float] = {}
    for d in view.drivers:
        # "connect" is the driver's own figure for what dns..startup measure (by the
        # protocol client): stacking it on them would count that time twice
        parts = [
            (p, float(dist.get("p50") or math.nan))
            for p, dist in d.phases.items()
            if p != "connect"
        ]
        rows.append((d.name, parts))
        if d.total and d.total.get("p50") is not None:
            totals[d.name] = float(d.total["p50"])
    if any(parts for _, parts in rows):
        out.append(
            _figure(
                svg.stacked_bars("Cold start by phase (p50, ms)", rows, unit="ms", totals=totals),
                "Each bar lays the driver's phases (median of each) end to end; the black tick "
                "is the measured median total. Phases are medians of separate samples, so "
                "their sum need not equal the total; a driver's own connect figure, which "
                "covers dns to startup, is in the table, not in the bar.",
            )
        )
    pct_rows = [(d.name, d.total) for d in view.drivers if d.total]
    if view.tcp_floor:
        pct_rows.append(("tcp floor", view.tcp_floor))
    if pct_rows:
        out.append(
            _figure(
                svg.percentile_chart(
                    "Connect + first query, total (ms)",
                    [(name, dict(d)) for name, d in pct_rows],
                    unit="ms",
                ),
                "p50, p95, p99 and max of the total cold start of each driver, and the raw "
                "TCP connect floor.",
            )
        )
    cdf = [(name, _samples(d)) for name, d in pct_rows if _samples(d)]
    if cdf:
        out.append(
            _figure(
                svg.cdf_chart("Cold start total, CDF", cdf[:SERIES_PER_CHART], unit="ms"),
                "Share of connections established within x ms.",
            )
        )
    return out


def _pool_section(pools: Sequence[PoolView]) -> list[str]:
    out = ["<h3>Connection pools</h3>"]
    throughput = [
        svg.Series(p.name, tuple((float(s.concurrency), s.throughput_qps) for s in p.steps))
        for p in pools
        if p.steps
    ]
    if throughput:
        out.append(
            _figure(
                svg.line_chart(
                    "Throughput against concurrency",
                    throughput[:SERIES_PER_CHART],
                    x_label="concurrent workers",
                    y_label="queries per second",
                    x_log2=True,
                ),
                "Completed queries per second at each concurrency level (higher is better). "
                "A flat or falling line marks the knee: more workers only queue.",
            )
        )
    waits: list[svg.Series] = []
    for p in pools:
        for stat in ("p50", "p99"):
            pts = tuple(
                (float(s.concurrency), float(s.acquire_wait[stat]))
                for s in p.steps
                if s.acquire_wait and s.acquire_wait.get(stat) is not None
            )
            if pts:
                waits.append(svg.Series(f"{p.name} {stat}", pts))
    if waits:
        out.append(
            _figure(
                svg.line_chart(
                    "Acquire wait against concurrency (ms)",
                    waits[:SERIES_PER_CHART],
                    x_label="concurrent workers",
                    y_label="ms waiting for a connection",
                    x_log2=True,
                ),
                "Time a worker waited to get a connection from the pool, median and p99.",
            )
        )
    for p in pools:
        cdf = [
            (f"c={s.concurrency}", _samples(s.query_latency))
            for s in p.steps
            if s.query_latency and _samples(s.query_latency)
        ]
        if cdf:
            out.append(
                _figure(
                    svg.cdf_chart(
                        f"{p.name}: query latency by concurrency, CDF",
                        cdf[-SERIES_PER_CHART:],
                        unit="ms",
                    ),
                    "Share of queries (acquire excluded) completed within x ms at each level.",
                )
            )
        header = (
            "<table><thead><tr><th>concurrency</th><th>q/s</th><th>acquire p50</th>"
            "<th>acquire p95</th><th>acquire p99</th><th>query p50</th><th>query p95</th>"
            "<th>query p99</th><th>timeouts</th><th>errors</th><th>client CPU</th></tr>"
            "</thead><tbody>"
        )
        rows = [f"<h4>{escape(p.name)}</h4>", header]
        for s in p.steps:
            aw, ql = s.acquire_wait or {}, s.query_latency or {}
            cells = [
                str(s.concurrency),
                fmt_value(s.throughput_qps),
                *(fmt_value(aw.get(k)) for k in ("p50", "p95", "p99")),
                *(fmt_value(ql.get(k)) for k in ("p50", "p95", "p99")),
                str(s.timeouts),
                str(sum(s.errors.values())),
                "-" if math.isnan(s.client_cpu) else f"{s.client_cpu:.2f}",
            ]
            rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
        rows.append("</tbody></table>")
        out += rows
    return out


def _group_key(path: str) -> str:
    return path.split(".", 1)[0].split("[", 1)[0]


def _other_section(rows: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    out: list[str] = []
    groups: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for path, d in rows:
        groups.setdefault((_group_key(path), str(d.get("unit", "ms"))), []).append((path, d))
    for (group, unit), items in groups.items():
        out.append(f"<h3>{escape(group)} ({escape(unit)})</h3>")
        for start in range(0, len(items), ROWS_PER_CHART):
            chunk = items[start : start + ROWS_PER_CHART]
            out.append(
                _figure(
                    svg.percentile_chart(
                        f"{group}: latency percentiles ({unit})"
                        if unit == "ms"
                        else f"{group} ({unit})",
                        [(p.removeprefix(group + ".") or p, d) for p, d in chunk],
                        unit=unit,
                    ),
                    "p50, p95, p99 and max of each distribution, with its sample count.",
                )
            )
        cdf = [(p.removeprefix(group + "."), _samples(d)) for p, d in items if _samples(d)]
        if 1 <= len(cdf) <= SERIES_PER_CHART:
            out.append(
                _figure(
                    svg.cdf_chart(f"{group}: CDF", cdf, unit=unit),
                    "Share of samples at or below x.",
                )
            )
    return out


def _strip_samples(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _strip_samples(v) for k, v in node.items() if k != "samples"}
    if isinstance(node, list):
        return [_strip_samples(v) for v in node]
    return node


def render_html(report: Report) -> str:
    """One self-contained HTML page (see the module docstring)."""
    data = report.to_dict()
    target = data["target"]
    summary = data["summary"]
    env = data.get("environment") or {}
    title = f"dbprobe {report.command} report"
    head_facts = [
        f"target <code>{escape(target.get('url') or 'none')}</code>",
    ]
    if target.get("server_version"):
        head_facts.append(f"PostgreSQL {escape(str(target['server_version']))}")
    head_facts += [
        f"started {escape(data['started_at'])}",
        f"took {report.duration_s:.1f} s",
        f"dbprobe {escape(data['tool']['version'])}",
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{" · ".join(head_facts)}</p>',
    ]
    if env:
        machine = " · ".join(
            escape(str(env[k]))
            for k in ("hostname", "platform", "python", "implementation")
            if env.get(k)
        )
        if env.get("cpus"):
            machine += f" · {env['cpus']} CPUs"
        out.append(f'<p class="meta">machine: {machine}</p>')
    out.append("</header>")
    out.append('<section class="summary" aria-label="summary">')
    for sev in ("error", "warning", "info"):
        out.append(f'<span class="badge {sev}">{summary[sev]} {sev}</span>')
    out.append("</section>")
    for note in report.notes:
        out.append(f'<p class="note">Note: {escape(note)}</p>')

    out.append('<section id="findings"><h2>Findings</h2>')
    findings = report.sorted_findings()
    if findings:
        out.append('<div class="filters" role="group" aria-label="show severities">Show: ')
        for sev in ("error", "warning", "info"):
            out.append(f'<label><input type="checkbox" data-sev="{sev}" checked> {sev}</label>')
        out.append("</div>")
        by_index = data["findings"]  # same order as sorted_findings()
        for sev in (Severity.ERROR, Severity.WARNING, Severity.INFO):
            group = [(i, f) for i, f in enumerate(findings) if f.severity is sev]
            if not group:
                continue
            heading = {"error": "Errors", "warning": "Warnings", "info": "Info"}[sev.value]
            out.append(f'<div class="sev-{sev.value}"><h3>{heading} ({len(group)})</h3>')
            out += [_finding_html(f, by_index[i].get("evidence") or {}) for i, f in group]
            out.append("</div>")
    else:
        out.append("<p>No findings.</p>")
    out.append("</section>")

    metrics = data.get("metrics") or {}
    charts: list[str] = []
    cold = coldstart_view(metrics)
    if cold is not None:
        charts += _coldstart_section(cold)
    pools = pool_view(metrics)
    if pools:
        charts += _pool_section(pools)
    rest = other_distributions(metrics)
    if rest:
        charts += _other_section(rest)
    all_dists = list(iter_distributions(metrics))
    if charts or all_dists:
        out.append('<section id="metrics"><h2>Measurements</h2>')
        out += charts
        if all_dists:
            out.append("<details><summary>Every distribution</summary>")
            out.append(_dist_table(all_dists))
            out.append("</details>")
        out.append(
            "<details><summary>Raw metrics (JSON, samples omitted)</summary>"
            f"<pre><code>{escape(json.dumps(_strip_samples(metrics), indent=1))}</code></pre>"
            "</details>"
        )
        out.append("</section>")
    out.append(
        f'<footer><p class="meta">Generated by dbprobe {escape(data["tool"]["version"])}. '
        "A location is the application's file:line that caused the finding; a test is the "
        "pytest node id. Every finding links to its rule page.</p></footer>"
    )
    out.append(f"<script>{SCRIPT}</script>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# re-exported for the Markdown renderer
__all__ = ["finding_where", "format_sql", "plan_excerpt", "plan_text", "render_html"]
