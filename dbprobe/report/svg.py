"""Inline SVG charts for the HTML report, drawn in pure Python (no JS, no network).

Every chart is a standalone ``<svg>`` element with ``role="img"``, a ``<title>`` and
a ``<desc>``, sized by its ``viewBox`` so it scales with the page and prints. Colours
come from the Okabe–Ito palette (distinguishable with the common colour-vision
deficiencies) and every series also differs by dash pattern or marker shape, so no
chart relies on colour alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

# Okabe–Ito, without yellow (too light on white for thin lines).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "4 4", "1 2", "10 4")
MARKERS = ("circle", "square", "diamond", "triangle", "circle", "square", "diamond")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

WIDTH = 640
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 64, 16, 34, 46


@dataclasses.dataclass(frozen=True)
class Series:
    """One line of a chart: a label and its ``(x, y)`` points; colour, dash and marker
    are indexes into the palette, dash patterns and marker shapes (default: the
    series' position), so related series can share a colour and differ by dash."""

    label: str
    points: tuple[tuple[float, float], ...]
    colour: int | None = None
    dash: int | None = None
    marker: int | None = None

    def style(self, position: int) -> tuple[str, str, str]:
        """``(colour, dash pattern, marker shape)`` of this series at ``position``."""
        c = position if self.colour is None else self.colour
        d = position if self.dash is None else self.dash
        m = position if self.marker is None else self.marker
        return PALETTE[c % len(PALETTE)], DASHES[d % len(DASHES)], MARKERS[m % len(MARKERS)]


@dataclasses.dataclass(frozen=True)
class Scale:
    """Maps data values onto a pixel range, linearly or by log10."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        lo, hi, v = self.lo, self.hi, value
        if self.log:
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(max(value, self.lo))
        if hi == lo:
            return (self.start + self.end) / 2
        return self.start + (v - lo) / (hi - lo) * (self.end - self.start)


def nice_ceil(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is >= ``value`` (``value`` > 0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = step * 10.0**exp
        if candidate >= value * (1 - 1e-12):
            return candidate
    return 10.0 ** (exp + 1)  # pragma: no cover - the loop always returns


def linear_ticks(hi: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``hi``."""
    step = nice_ceil(hi / count) if hi > 0 else 1.0
    ticks = [0.0]
    while ticks[-1] < hi - 1e-12:
        ticks.append(ticks[-1] + step)
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 × 10^k ticks covering ``lo``..``hi`` (both > 0)."""
    ticks: list[float] = []
    exp = math.floor(math.log10(lo))
    while True:
        for m in (1.0, 2.0, 5.0):
            t = m * 10.0**exp
            if t >= lo * 0.999 and t <= hi * 1.001:
                ticks.append(t)
            if t > hi:
                return ticks or [lo, hi]
        exp += 1


def fmt_number(value: float) -> str:
    """Short axis/label text: 0.012, 1.5, 25, 1.2k, 3.4M."""
    if not math.isfinite(value):
        return "-"
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e4:
        return f"{value / 1e3:.3g}k"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 1 or a == 0:
        return f"{value:.3g}"
    return f"{value:.2g}"


def _open(title: str, desc: str, height: int, width: int = WIDTH) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'font-family="{escape(FONT)}" font-size="12">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(desc)}</desc>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{PAD_LEFT}" y="20" font-size="14" font-weight="600" fill="#111">'
        f"{escape(title)}</text>",
    ]


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{colour}"/>'
    if kind == "diamond":
        pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{colour}"/>'
    if kind == "triangle":
        pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y + 4:.1f} {x - 5:.1f},{y + 4:.1f}"
        return f'<polygon points="{pts}" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>'


def _legend(
    labels: Sequence[str],
    y: float,
    *,
    lines: bool = True,
    styles: Sequence[tuple[str, str, str]] | None = None,
) -> tuple[list[str], float]:
    """A legend laid out left to right, wrapping; returns its elements and its height.
    styles: ``(colour, dash, marker)`` per label (default: by position)."""
    out: list[str] = []
    x, row_h = float(PAD_LEFT), 18.0
    height = row_h
    for i, label in enumerate(labels):
        item_w = 44 + 7 * len(label)
        if x + item_w > WIDTH - PAD_RIGHT and x > PAD_LEFT:
            x = PAD_LEFT
            y += row_h
            height += row_h
        colour, dash, marker = (
            styles[i]
            if styles
            else (PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)], MARKERS[i % len(MARKERS)])
        )
        if lines:
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 22:.1f}" y2="{y - 4:.1f}" '
                f'stroke="{colour}" stroke-width="2.5"{dash_attr}/>'
            )
            out.append(_marker(marker, x + 11, y - 4, colour))
        else:
            out.append(
                f'<rect x="{x:.1f}" y="{y - 11:.1f}" width="14" height="12" fill="{colour}"/>'
            )
        out.append(f'<text x="{x + 28:.1f}" y="{y:.1f}" fill="#222">{escape(label)}</text>')
        x += item_w
    return out, height


def _axes(
    xs: Scale,
    ys: Scale,
    xticks: Sequence[float],
    yticks: Sequence[float],
    x_label: str,
    y_label: str,
    *,
    x_tick_text: Sequence[str] | None = None,
) -> list[str]:
    out = ['<g class="axes" stroke="#999" stroke-width="1">']
    top, bottom = ys.end, ys.start
    for t in yticks:
        y = ys(t)
        out.append(
            f'<line x1="{xs.start:.1f}" y1="{y:.1f}" x2="{xs.end:.1f}" y2="{y:.1f}" '
            f'stroke="#e3e3e3"/>'
        )
    out.append(f'<line x1="{xs.start:.1f}" y1="{bottom:.1f}" x2="{xs.end:.1f}" y2="{bottom:.1f}"/>')
    out.append(f'<line x1="{xs.start:.1f}" y1="{top:.1f}" x2="{xs.start:.1f}" y2="{bottom:.1f}"/>')
    out.append("</g>")
    out.append('<g class="ticks" fill="#333">')
    for t in yticks:
        out.append(
            f'<text x="{xs.start - 6:.1f}" y="{ys(t) + 4:.1f}" text-anchor="end">'
            f"{escape(fmt_number(t))}</text>"
        )
    for i, t in enumerate(xticks):
        label = x_tick_text[i] if x_tick_text else fmt_number(t)
        out.append(
            f'<text x="{xs(t):.1f}" y="{bottom + 16:.1f}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    out.append("</g>")
    mid_x = (xs.start + xs.end) / 2
    out.append(
        f'<text x="{mid_x:.1f}" y="{bottom + 34:.1f}" text-anchor="middle" fill="#222">'
        f"{escape(x_label)}</text>"
    )
    mid_y = (top + bottom) / 2
    out.append(
        f'<text transform="translate(14 {mid_y:.1f}) rotate(-90)" text-anchor="middle" '
        f'fill="#222">{escape(y_label)}</text>'
    )
    return out


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_log2: bool = False,
    height: int = 300,
) -> str:
    """Lines with markers, one per series (e.g. throughput against concurrency).

    x_log2: place x on a log2 axis with ticks at the data's x values (concurrency 1, 2,
    4, … 64). The y axis starts at zero.
    """
    points = [p for s in series for p in s.points if math.isfinite(p[1])]
    styles = [s.style(i) for i, s in enumerate(series)]
    legend, legend_h = _legend([s.label for s in series], 0, styles=styles)
    plot_bottom = height - PAD_BOTTOM - legend_h
    xs_all = sorted({p[0] for p in points}) or [0.0, 1.0]
    y_hi = max((p[1] for p in points), default=1.0)
    yticks = linear_ticks(y_hi if y_hi > 0 else 1.0)
    ys = Scale(0.0, yticks[-1], plot_bottom, PAD_TOP + 8)
    if x_log2 and xs_all[0] > 0:
        xs = Scale(xs_all[0], xs_all[-1], PAD_LEFT + 12, WIDTH - PAD_RIGHT - 12, log=True)
        xticks = xs_all
    else:
        xticks = linear_ticks(xs_all[-1]) if xs_all[-1] > 0 else [0.0, 1.0]
        xs = Scale(min(0.0, xs_all[0]), xticks[-1], PAD_LEFT, WIDTH - PAD_RIGHT)
    desc = "; ".join(
        f"{s.label}: " + ", ".join(f"{fmt_number(x)}→{fmt_number(y)}" for x, y in s.points)
        for s in series
    )
    out = _open(title, desc, height)
    out += _axes(xs, ys, xticks, yticks, x_label, y_label)
    for i, s in enumerate(series):
        colour, dash, marker = styles[i]
        pts = [(xs(x), ys(y)) for x, y in s.points if math.isfinite(y)]
        if not pts:
            continue
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(
            f'<polyline class="series" points="{path}" fill="none" stroke="{colour}" '
            f'stroke-width="2.5"{dash_attr}><title>{escape(s.label)}</title></polyline>'
        )
        out += [_marker(marker, x, y, colour) for x, y in pts]
    out += [f'<g transform="translate(0 {plot_bottom + PAD_BOTTOM:.1f})">', *legend, "</g>"]
    out.append("</svg>")
    return "\n".join(out)


def cdf_chart(
    title: str, samples: Sequence[tuple[str, Sequence[float]]], *, unit: str, height: int = 300
) -> str:
    """Empirical CDFs of raw samples, one step line per series.

    The x axis switches to log10 when the values span more than 50× (latency tails).
    Each line is drawn through at most 400 quantile points, so a 100k-sample
    distribution stays a small SVG.
    """
    cleaned = [(label, sorted(v for v in values if math.isfinite(v))) for label, values in samples]
    cleaned = [(label, v) for label, v in cleaned if v]
    legend, legend_h = _legend([label for label, _ in cleaned], 0)
    plot_bottom = height - PAD_BOTTOM - legend_h
    lo = min((v[0] for _, v in cleaned), default=0.0)
    hi = max((v[-1] for _, v in cleaned), default=1.0)
    use_log = lo > 0 and hi / lo > 50
    if use_log:
        xs = Scale(lo, hi, PAD_LEFT, WIDTH - PAD_RIGHT, log=True)
        xticks = log_ticks(lo, hi)
    else:
        xticks = linear_ticks(hi if hi > 0 else 1.0)
        xs = Scale(0.0, xticks[-1], PAD_LEFT, WIDTH - PAD_RIGHT)
    ys = Scale(0.0, 1.0, plot_bottom, PAD_TOP + 8)
    desc = "; ".join(
        f"{label}: n={len(v)}, p50 {fmt_number(v[len(v) // 2])}, max {fmt_number(v[-1])} {unit}"
        for label, v in cleaned
    )
    out = _open(title, desc, height)
    out += _axes(
        xs,
        ys,
        xticks,
        [0.0, 0.25, 0.5, 0.75, 0.9, 1.0],
        f"{unit}{' (log scale)' if use_log else ''}",
        "fraction of samples ≤ x",
    )
    for i, (label, values) in enumerate(cleaned):
        colour = PALETTE[i % len(PALETTE)]
        dash = DASHES[i % len(DASHES)]
        n = len(values)
        step = max(1, n // 400)
        idx = list(range(0, n, step))
        if idx[-1] != n - 1:
            idx.append(n - 1)
        pts: list[str] = []
        prev_y = ys(0.0)
        for k in idx:
            x = xs(values[k])
            y = ys((k + 1) / n)
            pts.append(f"{x:.1f},{prev_y:.1f} {x:.1f},{y:.1f}")
            prev_y = y
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<polyline class="series" points="{" ".join(pts)}" fill="none" '
            f'stroke="{colour}" stroke-width="2"{dash_attr}><title>{escape(label)} '
            f"(n={n})</title></polyline>"
        )
    out += [f'<g transform="translate(0 {plot_bottom + PAD_BOTTOM:.1f})">', *legend, "</g>"]
    out.append("</svg>")
    return "\n".join(out)


PERCENTILES = ("p50", "p95", "p99", "max")


def percentile_chart(
    title: str, rows: Sequence[tuple[str, Mapping[str, Any]]], *, unit: str
) -> str:
    """Grouped horizontal bars: p50, p95, p99 and max of each distribution.

    rows: ``(label, {"p50": …, "p95": …, "p99": …, "max": …, "n": …})``. Values are
    printed at the end of each bar, so the chart reads without colour.
    """
    bar_h, gap = 9, 12
    texts = [f"{label} (n={int(d['n'])})" if d.get("n") is not None else label for label, d in rows]
    label_w = min(300, max((7 * len(t) for t in texts), default=60) + 12)
    legend, legend_h = _legend(PERCENTILES, 0, lines=False)
    block = bar_h * len(PERCENTILES) + gap
    plot_top = PAD_TOP + 8
    height = int(plot_top + block * len(rows) + 30 + legend_h + 12)
    values = [
        float(v)
        for _, d in rows
        for k in PERCENTILES
        if (v := d.get(k)) is not None and math.isfinite(float(v))
    ]
    hi = max(values, default=1.0)
    xticks = linear_ticks(hi if hi > 0 else 1.0)
    xs = Scale(0.0, xticks[-1], label_w, WIDTH - PAD_RIGHT - 40)
    desc = "; ".join(
        f"{label}: "
        + ", ".join(f"{k} {fmt_number(float(d[k]))}" for k in PERCENTILES if d.get(k) is not None)
        + f" {unit}"
        for label, d in rows
    )
    out = _open(title, desc, height)
    plot_bottom = plot_top + block * len(rows)
    for t in xticks:
        x = xs(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{plot_top:.1f}" x2="{x:.1f}" y2="{plot_bottom:.1f}" '
            f'stroke="#e3e3e3"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{plot_bottom + 14:.1f}" text-anchor="middle" fill="#333">'
            f"{escape(fmt_number(t))}</text>"
        )
    out.append(
        f'<text x="{(xs.start + xs.end) / 2:.1f}" y="{plot_bottom + 28:.1f}" '
        f'text-anchor="middle" fill="#222">{escape(unit)}</text>'
    )
    for r, (label, d) in enumerate(rows):
        y0 = plot_top + r * block
        text = texts[r]
        out.append(
            f'<text x="{label_w - 8}" y="{y0 + bar_h * 2 + 3:.1f}" text-anchor="end" '
            f'fill="#222">{escape(text)}</text>'
        )
        for j, key in enumerate(PERCENTILES):
            v = d.get(key)
            if v is None or not math.isfinite(float(v)):
                continue
            y = y0 + j * bar_h
            w = max(1.0, xs(float(v)) - xs.start)
            out.append(
                f'<rect class="bar" x="{xs.start:.1f}" y="{y:.1f}" width="{w:.1f}" '
                f'height="{bar_h - 1}" fill="{PALETTE[j]}"><title>{escape(label)} {key} '
                f"{fmt_number(float(v))} {escape(unit)}</title></rect>"
            )
            out.append(
                f'<text x="{xs.start + w + 3:.1f}" y="{y + bar_h - 1.5:.1f}" font-size="9" '
                f'fill="#333">{escape(fmt_number(float(v)))}</text>'
            )
    out += [f'<g transform="translate(0 {plot_bottom + 48:.1f})">', *legend, "</g>"]
    out.append("</svg>")
    return "\n".join(out)


def stacked_bars(
    title: str,
    rows: Sequence[tuple[str, Sequence[tuple[str, float]]]],
    *,
    unit: str,
    totals: dict[str, float] | None = None,
) -> str:
    """Horizontal stacked bars: each row's phases laid end to end (cold start phases).

    totals: optional measured total per row, drawn as a black tick, so a gap between
    the sum of the phases and the measured total is visible.
    """
    bar_h, gap = 22, 14
    phases: list[str] = []
    for _, parts in rows:
        for name, _v in parts:
            if name not in phases:
                phases.append(name)
    label_w = min(200, max((7 * len(label) for label, _ in rows), default=60) + 12)
    legend, legend_h = _legend(phases, 0, lines=False)
    plot_top = PAD_TOP + 8
    plot_bottom = plot_top + (bar_h + gap) * len(rows)
    height = int(plot_bottom + 34 + legend_h + 14)
    sums = [sum(v for _, v in parts if math.isfinite(v)) for _, parts in rows]
    hi = max([*sums, *(totals or {}).values(), 0.0]) or 1.0
    xticks = linear_ticks(hi)
    xs = Scale(0.0, xticks[-1], label_w, WIDTH - PAD_RIGHT - 10)
    desc = "; ".join(
        f"{label}: " + ", ".join(f"{n} {fmt_number(v)}" for n, v in parts) + f" {unit}"
        for label, parts in rows
    )
    out = _open(title, desc, height)
    for t in xticks:
        x = xs(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{plot_top:.1f}" x2="{x:.1f}" y2="{plot_bottom:.1f}" '
            f'stroke="#e3e3e3"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{plot_bottom + 14:.1f}" text-anchor="middle" fill="#333">'
            f"{escape(fmt_number(t))}</text>"
        )
    out.append(
        f'<text x="{(xs.start + xs.end) / 2:.1f}" y="{plot_bottom + 28:.1f}" '
        f'text-anchor="middle" fill="#222">{escape(unit)}</text>'
    )
    for r, (label, parts) in enumerate(rows):
        y = plot_top + r * (bar_h + gap)
        out.append(
            f'<text x="{label_w - 8}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end" '
            f'fill="#222">{escape(label)}</text>'
        )
        x = xs.start
        for name, value in parts:
            if not math.isfinite(value) or value <= 0:
                continue
            w = xs(value) - xs.start
            colour = PALETTE[phases.index(name) % len(PALETTE)]
            out.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h}" '
                f'fill="{colour}" stroke="#fff" stroke-width="1"><title>{escape(label)} '
                f"{escape(name)} {fmt_number(value)} {escape(unit)}</title></rect>"
            )
            if w > 34:
                out.append(
                    f'<text x="{x + w / 2:.1f}" y="{y + bar_h / 2 + 4:.1f}" font-size="10" '
                    f'text-anchor="middle" fill="#fff">{escape(fmt_number(value))}</text>'
                )
            x += w
        total = (totals or {}).get(label)
        if total is not None and math.isfinite(total):
            tx = xs(total)
            out.append(
                f'<line x1="{tx:.1f}" y1="{y - 3:.1f}" x2="{tx:.1f}" y2="{y + bar_h + 3:.1f}" '
                f'stroke="#000" stroke-width="2"><title>{escape(label)} total '
                f"{fmt_number(total)} {escape(unit)}</title></line>"
            )
    out += [f'<g transform="translate(0 {plot_bottom + 50:.1f})">', *legend, "</g>"]
    out.append("</svg>")
    return "\n".join(out)
