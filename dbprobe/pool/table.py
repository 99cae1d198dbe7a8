"""Per-step tables of a pool report, for people (terminal and Markdown).

The JSON report holds every distribution with its samples; these tables show, per pool
and step, what a reader needs to see the knee and the exhaustion at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from dbprobe.report.model import Distribution

HEADERS = [
    "conc",
    "rate/s",
    "q/s",
    "wait p50",
    "wait p99",
    "wait max",
    "query p50",
    "query p99",
    "resp p99",
    "timeouts",
    "errors",
    "cpu",
    "sessions",
]


def _get(d: Any, key: str) -> float:
    if d is None:
        return math.nan
    if isinstance(d, Distribution):
        return float(getattr(d, key))
    value = d.get(key)
    return math.nan if value is None else float(value)


def _ms(v: float) -> str:
    if math.isnan(v):
        return "-"
    if v < 1:
        return f"{v:.3f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def _row(step: Mapping[str, Any]) -> list[str]:
    rate = step.get("offered_rate")
    errors = step.get("errors") or {}
    return [
        str(step["concurrency"]),
        "-" if rate is None else f"{rate:g}",
        f"{float(step.get('throughput_qps') or 0):,.0f}",
        _ms(_get(step.get("acquire_wait"), "p50")),
        _ms(_get(step.get("acquire_wait"), "p99")),
        _ms(_get(step.get("acquire_wait"), "max")),
        _ms(_get(step.get("query_latency"), "p50")),
        _ms(_get(step.get("query_latency"), "p99")),
        _ms(_get(step.get("response_time"), "p99")),
        str(step.get("timeouts") or 0),
        ", ".join(f"{k} {n}" for k, n in sorted(errors.items())) or "-",
        f"{float(step.get('client_cpu') or 0):.2f}",
        "-" if step.get("server_backends") is None else str(step["server_backends"]),
    ]


def _spike_line(spike: Mapping[str, Any]) -> str:
    recover = spike.get("recover_ms")
    return (
        f"spike: {spike['requests']} at once → {spike['completed']} served, "
        f"{spike['timeouts']} timed out; wait p99 {_ms(_get(spike.get('acquire_wait'), 'p99'))}"
        f" ms, max {_ms(_get(spike.get('acquire_wait'), 'max'))} ms; drained in "
        f"{_ms(float(spike['drain_ms'])) if spike.get('drain_ms') is not None else '-'} ms; "
        + (f"recovered in {_ms(float(recover))} ms" if recover is not None else "did not recover")
    )


def _soak_line(pool: Mapping[str, Any]) -> list[str]:
    soak = pool.get("soak")
    if not soak:
        return []
    verdicts = (pool.get("verdict") or {}).get("soak") or {}
    parts = [f"{name} {'GROWING' if v.get('growing') else 'flat'}" for name, v in verdicts.items()]
    return [
        f"soak: {soak['duration_s']:.0f}s at concurrency {soak['concurrency']}, "
        f"{soak['completed']} requests, {soak['timeouts']} timeouts; " + (", ".join(parts) or "-")
    ]


def pool_tables(metrics: Mapping[str, Any], fmt: str = "table") -> str:
    """One table per pool (``fmt``: ``table`` or ``markdown``); times in ms, ``cpu`` is
    the load generator's share of one core, ``sessions`` the pool's server sessions."""
    pools = metrics.get("pool") or {}
    tablefmt = "github" if fmt == "markdown" else "simple"
    out: list[str] = []
    for kind, pool in pools.items():
        title = (
            f"{kind} — {pool.get('class', '')}, capacity {pool.get('capacity')} "
            f"(size {pool.get('size')} + overflow {pool.get('overflow')}), "
            f"timeout {pool.get('timeout_s')}s"
        )
        out.append(f"#### {title}" if fmt == "markdown" else title)
        steps = pool.get("steps") or []
        if steps:
            out.append(tabulate([_row(s) for s in steps], headers=HEADERS, tablefmt=tablefmt))
        extra = []
        knee = pool.get("knee") or {}
        extra.append(
            f"knee: {knee.get('concurrency')} ({knee.get('limited_by')}-limited) — "
            f"{knee.get('reason')}"
            if knee.get("concurrency") is not None
            else f"knee: none — {knee.get('reason', '-')}"
        )
        if pool.get("spike"):
            extra.append(_spike_line(pool["spike"]))
        extra += _soak_line(pool)
        sizing = ((pool.get("verdict") or {}).get("sizing")) or {}
        if sizing.get("advice"):
            extra.append(f"sizing: {sizing['advice']}")
        extra.append(f"server sessions left after close: {pool.get('sessions_after_close')}")
        out += [f"- {line}" if fmt == "markdown" else f"  {line}" for line in extra]
        out.append("")
    return "\n".join(out)
