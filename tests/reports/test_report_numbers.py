"""The numbers the renderers print and draw are the report's own: table cells against
the JSON figures, chart geometry against the values. On a frozen real report
(tests/data/reports/sample_base.json), so nothing depends on this machine's load."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dbprobe.report import svg
from dbprobe.report.model import Report
from dbprobe.report.render import _num3, render

DOC = Path(__file__).resolve().parents[1] / "data" / "reports" / "sample_base.json"


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DOC.read_text(encoding="utf-8"))
    return doc


def _row(text: str, first: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.split()[:1] == [first])
    return line.split()


def test_table_cells_are_the_report_figures() -> None:
    doc = _doc()
    text = render(Report.from_dict(doc), "table")
    total = doc["metrics"]["coldstart"]["psycopg"]["total"]
    row = _row(text, "psycopg")
    # the last three cells: total p50, total p95, n
    assert row[-3:] == [_num3(total["p50"]), _num3(total["p95"]), str(total["n"])]
    for step in doc["metrics"]["pool"]["psycopg_pool"]["steps"]:
        cells = _row(text, str(step["concurrency"]))
        aw, ql = step["acquire_wait"], step["query_latency"]
        assert cells[1] == _num3(step["throughput_qps"])
        assert cells[2:5] == [_num3(aw["p50"]), _num3(aw["p95"]), _num3(aw["p99"])]
        assert cells[7:9] == [_num3(ql["p50"]), _num3(ql["p95"])]


def _polyline(chart: str) -> list[tuple[float, float]]:
    m = re.search(r'<polyline class="series" points="([^"]+)"', chart)
    assert m, chart[:200]
    return [(float(x), float(y)) for x, y in (p.split(",") for p in m.group(1).split())]


def test_line_chart_heights_follow_the_values() -> None:
    values = [(1.0, 10.0), (2.0, 40.0), (4.0, 30.0), (8.0, 80.0)]
    chart = svg.line_chart("t", [svg.Series("s", tuple(values))], x_label="x", y_label="y")
    points = _polyline(chart)
    assert len(points) == 4
    # SVG y grows downwards: a larger value is drawn higher (smaller y), in the same order
    ys = [y for _, y in points]
    order = sorted(range(4), key=lambda i: values[i][1])
    assert sorted(range(4), key=lambda i: -ys[i]) == order
    # and proportionally, from a zero baseline: (y0 - y) / value is the same everywhere
    xs = [x for x, _ in points]
    assert xs == sorted(xs)
    base = re.search(r'<line x1="[\d.]+" y1="([\d.]+)" x2="[\d.]+" y2="\1"', chart)
    if base:
        y0 = float(base.group(1))
        scale = [(y0 - y) / v for (_, v), y in zip(values, ys, strict=True)]
        assert max(scale) - min(scale) < 0.05 * max(scale)


def test_cold_start_bar_widths_follow_the_phases() -> None:
    rows = [("drv", [("a", 10.0), ("b", 30.0), ("c", 60.0)])]
    chart = svg.stacked_bars("t", rows, unit="ms")
    widths = [float(w) for w in re.findall(r'<rect class="bar"[^>]* width="([\d.]+)"', chart)]
    assert len(widths) == 3
    a, b, c = widths
    assert abs(b / a - 3) < 0.05 and abs(c / a - 6) < 0.1
