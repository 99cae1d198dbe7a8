"""``dbprobe compare`` output: ``table`` (terminal), ``json`` (``dbprobe.compare/1``),
``markdown`` (a pull-request comment)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

from tabulate import tabulate

from dbprobe.compare.checks import MetricChange
from dbprobe.compare.diff import Comparison
from dbprobe.report.model import Finding
from dbprobe.report.views import finding_where
from dbprobe.rules import RULES, docs_link


def _n(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _ci(c: MetricChange) -> str:
    if not (math.isfinite(c.ci_low) and math.isfinite(c.ci_high)):
        return "-"
    if c.stat == "failed":
        return f"{c.ci_low * 100:+.1f}…{c.ci_high * 100:+.1f} pts"
    return f"{(c.ci_low - 1) * 100:+.0f}…{(c.ci_high - 1) * 100:+.0f}%"


def _p(c: MetricChange) -> str:
    if not math.isfinite(c.p_adjusted):
        return "-"
    return "<0.001" if c.p_adjusted < 0.001 else f"{c.p_adjusted:.3f}"


def _values(c: MetricChange) -> str:
    if c.stat == "failed" and c.counts is not None:
        fb, tb, fn, tn = c.counts
        return f"{fb}/{tb}→{fn}/{tn} ({c.base:.1%}→{c.new:.1%})"
    return f"{_n(c.base)}→{_n(c.new)} {c.unit}"


def _change(c: MetricChange) -> str:
    if c.stat == "failed":
        return f"{c.change_pct:+.1f} pts"
    return f"{c.change_pct:+.1f}%" if math.isfinite(c.ratio) else "∞"


def _limit(c: MetricChange) -> str:
    unit = " pts" if c.stat == "failed" else "%"
    return f"{c.threshold * 100:g}{unit}"


def _row(c: MetricChange) -> list[str]:
    return [
        c.verdict,
        c.metric,
        c.stat,
        _values(c),
        _change(c),
        _ci(c),
        _p(c),
        _limit(c),
        "gate" if c.gate else "info",
    ]


HEADERS = ["verdict", "metric", "stat", "base→new", "change", "95% CI", "p adj.", "limit", "role"]
SECTIONS = (
    ("regression", "REGRESSIONS (gating checks that failed)"),
    ("worse", "WORSE BEYOND THE LIMIT (information: does not gate)"),
    ("inconclusive", "BEYOND THE LIMIT BUT WITHIN NOISE (pass)"),
    ("improvement", "IMPROVEMENTS"),
    ("unchanged", "UNCHANGED"),
)


def _headline(cmp: Comparison) -> str:
    verdict = "FAIL" if cmp.exit_code else "PASS"
    parts = [
        f"{len(cmp.regressions)} regression(s) in {len(cmp.gating)} gating check(s)",
        f"{len(cmp.new_findings)} new finding(s) ({len(cmp.failing_findings)} at or above "
        f"{cmp.fail_on})",
        f"{len(cmp.resolved)} resolved",
    ]
    return f"{verdict}: " + ", ".join(parts)


def _method_line(cmp: Comparison) -> str:
    gating = len(cmp.gating)
    info = len(cmp.changes) - gating
    what = "headline checks and your GLOB checks" if cmp.gate == "headline" else "all checks"
    return (
        f"gate: {gating} check(s) ({what}), each testing 'worse by more than its limit', "
        f"Holm-corrected together at {cmp.alpha:.0%} family-wise; {info} informational "
        "check(s) corrected as their own family"
    )


def _side(label: str, info: object) -> str:
    from dbprobe.compare.diff import RunInfo

    assert isinstance(info, RunInfo)
    extra = [info.command, info.started_at]
    if info.commit:
        extra.append(f"commit {info.commit[:12]}")
    if info.server_version:
        extra.append(f"PostgreSQL {info.server_version}")
    return f"{label}: {info.source} ({', '.join(x for x in extra if x)})"


def _finding_line(f: Finding) -> str:
    where = finding_where(f)
    return f"[{f.severity.value}] {f.rule}: {f.message}" + (f" — {where}" if where != "-" else "")


def render_compare_table(cmp: Comparison, *, show_all: bool = False) -> str:
    lines = [_side("base", cmp.base), _side("new ", cmp.new)]
    lines.append("limits: " + ", ".join(cmp.checks))
    lines.append(_method_line(cmp))
    for w in cmp.warnings:
        lines.append(f"warning: {w}")
    if cmp.new_findings:
        lines += ["", f"NEW FINDINGS ({len(cmp.new_findings)})"]
        lines += [f"  {_finding_line(f)}" for f in cmp.new_findings]
    if cmp.resolved:
        lines += ["", f"RESOLVED ({len(cmp.resolved)})"]
        lines += [f"  {_finding_line(f)}" for f in cmp.resolved]
    shown = cmp.changes if show_all else [c for c in cmp.changes if c.verdict != "unchanged"]
    for verdict, title in SECTIONS:
        rows = [_row(c)[1:] for c in shown if c.verdict == verdict]
        if not rows:
            continue
        lines += ["", f"{title} ({len(rows)})"]
        lines.append(
            tabulate(
                rows,
                headers=HEADERS[1:],
                tablefmt="simple",
                disable_numparse=True,
                colalign=("left", "left", "right", "right", "right", "right", "right", "left"),
                maxcolwidths=[40, None, 26, None, None, None, None, None],
            )
        )
    hidden = len(cmp.changes) - len(shown)
    if hidden:
        gated = sum(1 for c in cmp.changes if c.verdict == "unchanged" and c.gate)
        lines.append(
            f"({hidden} metric check(s) unchanged, {gated} of them gating; --all shows them)"
        )
    if not cmp.changes:
        lines.append("(no metric present in both reports)")
    if cmp.skipped:
        lines.append(
            f"({len(cmp.skipped)} metric(s) empty on a side (n = 0), not compared: "
            + ", ".join(cmp.skipped[:3])
            + (" …" if len(cmp.skipped) > 3 else "")
            + ")"
        )
    if cmp.only_in_base or cmp.only_in_new:
        lines.append(
            f"({len(cmp.only_in_base)} metric(s) only in base, {len(cmp.only_in_new)} only in new)"
        )
    lines += ["", _headline(cmp)]
    return "\n".join(lines) + "\n"


def render_compare_json(cmp: Comparison, *, show_all: bool = False) -> str:
    return json.dumps(cmp.to_dict(), indent=2, ensure_ascii=False) + "\n"


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _md_table(rows: Sequence[list[str]]) -> list[str]:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = [row[0], f"`{row[1]}`", *row[2:]]
        out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return out


def render_compare_markdown(cmp: Comparison, *, show_all: bool = False) -> str:
    icon = "❌" if cmp.exit_code else "✅"
    out = [f"### {icon} dbprobe compare — {_headline(cmp)}", ""]
    out += [f"- {_side('base', cmp.base)}", f"- {_side('new', cmp.new)}"]
    out += [f"- {_method_line(cmp)}", ""]
    for w in cmp.warnings:
        out.append(f"> ⚠️ {_md_cell(w)}")
    if cmp.warnings:
        out.append("")
    for title, items in (("New findings", cmp.new_findings), ("Resolved", cmp.resolved)):
        if not items:
            continue
        out += [f"**{title}**", ""]
        for f in items:
            rule = f"[`{f.rule}`]({docs_link(f.rule)})" if f.rule in RULES else f"`{f.rule}`"
            where = finding_where(f)
            tail = f" — `{where}`" if where != "-" else ""
            out.append(f"- {f.severity.value} {rule}: {_md_cell(f.message)}{tail}")
        out.append("")
    changed = [c for c in cmp.changes if c.verdict != "unchanged"]
    same = [c for c in cmp.changes if c.verdict == "unchanged"]
    if changed:
        out += ["**Metrics**", "", *_md_table([_row(c) for c in changed]), ""]
    if same:
        out += [
            "<details>",
            f"<summary>{len(same)} metric check(s) unchanged</summary>",
            "",
            *_md_table([_row(c) for c in same]),
            "",
            "</details>",
            "",
        ]
    return "\n".join(out)


COMPARE_RENDERERS: dict[str, Callable[..., str]] = {
    "table": render_compare_table,
    "json": render_compare_json,
    "markdown": render_compare_markdown,
}
