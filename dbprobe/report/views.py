"""Read the shared metrics layout (serialised ``report.to_dict()["metrics"]``) into small
typed views that every renderer, ``dbprobe compare`` and the SLO checks use.

Layout (DESIGN.md, shared conventions):

- cold start: ``metrics["coldstart"][driver][phase]`` distributions (``dns``, ``tcp``,
  ``tls``, ``startup``, ``driver_init``, ``first_query``, ``total``), the floor at
  ``metrics["coldstart"]["tcp_floor"]["connect"]``, facts under ``[driver]["_meta"]``;
- pool: ``metrics["pool"][pool]["steps"]``, a list of per-concurrency dicts with
  ``throughput`` (q/s), ``acquire_wait`` and ``query_latency`` distributions,
  ``throughput_qps``, ``timeouts``, ``errors`` and ``client_cpu``.

Metric paths are dotted; a list item that has a ``concurrency`` key is named
``[c=N]`` (so pool steps match across runs by concurrency, not position), any
other list item ``[i]``: ``pool.psycopg_pool.steps[c=16].acquire_wait``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

from dbprobe.report.model import is_distribution

PHASES = ("dns", "tcp", "tls", "startup", "driver_init", "first_query")
RATE_SUFFIX = "/s"


def is_rate(unit: str | None) -> bool:
    """Rates (``q/s``, ``rows/s``) are higher-is-better; everything else lower-is-better."""
    return bool(unit) and str(unit).endswith(RATE_SUFFIX)


def _item_name(index: int, item: Any) -> str:
    if isinstance(item, Mapping) and isinstance(item.get("concurrency"), (int, float)):
        return f"[c={item['concurrency']:g}]"
    return f"[{index}]"


def iter_distributions(metrics: Any, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every serialised distribution in a metrics tree, with its dotted path.

    Keys starting with ``_`` (``_meta``) hold facts, not measurements, and are skipped.
    """
    if is_distribution(metrics):
        yield prefix, dict(metrics)
        return
    if isinstance(metrics, Mapping):
        for key, value in metrics.items():
            if str(key).startswith("_"):
                continue
            yield from iter_distributions(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(metrics, list):
        for i, value in enumerate(metrics):
            yield from iter_distributions(value, f"{prefix}{_item_name(i, value)}")


def num(value: Any) -> float:
    """A float from a JSON number (``None`` and junk become NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclasses.dataclass(frozen=True)
class ColdstartDriver:
    """Cold-start phases of one driver: ``phases`` maps phase → distribution dict."""

    name: str
    phases: dict[str, dict[str, Any]]
    total: dict[str, Any] | None
    meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ColdstartView:
    drivers: list[ColdstartDriver]
    tcp_floor: dict[str, Any] | None


def coldstart_view(metrics: Mapping[str, Any]) -> ColdstartView | None:
    """The cold-start section of a metrics tree, or ``None`` when there is none."""
    section = metrics.get("coldstart")
    if not isinstance(section, Mapping):
        return None
    drivers: list[ColdstartDriver] = []
    floor = None
    for name, node in section.items():
        if not isinstance(node, Mapping) or str(name).startswith("_"):
            continue
        if name == "tcp_floor":
            connect = node.get("connect")
            floor = _dist(connect)
            continue
        phases = {p: dict(node[p]) for p in PHASES if _dist(node.get(p)) is not None}
        # phases beyond the standard ones, in the order the probe wrote them
        for key, value in node.items():
            if key not in phases and key != "total" and is_distribution(value):
                phases[str(key)] = dict(value)
        total = node.get("total")
        meta = node.get("_meta")
        drivers.append(
            ColdstartDriver(
                name=str(name),
                phases=phases,
                total=_dist(total),
                meta=dict(meta) if isinstance(meta, Mapping) else {},
            )
        )
    if not drivers and floor is None:
        return None
    return ColdstartView(drivers, floor)


@dataclasses.dataclass(frozen=True)
class PoolStep:
    """One concurrency level of a pool stress run."""

    concurrency: int
    offered_rate: float | None
    throughput: dict[str, Any] | None
    throughput_qps: float
    acquire_wait: dict[str, Any] | None
    query_latency: dict[str, Any] | None
    timeouts: int
    errors: dict[str, int]
    client_cpu: float

    @property
    def error_count(self) -> int:
        return self.timeouts + sum(self.errors.values())

    @property
    def requests(self) -> int:
        """Requests attempted: those that completed a query plus those that failed."""
        served = int(self.query_latency["n"]) if self.query_latency else 0
        return served + self.error_count

    @property
    def error_rate(self) -> float:
        """Failed share of requests (timeouts and errors), 0..1; NaN with no requests."""
        return self.error_count / self.requests if self.requests else math.nan


@dataclasses.dataclass(frozen=True)
class PoolView:
    name: str
    steps: list[PoolStep]
    extra: dict[str, Any]


def _dist(node: Any) -> dict[str, Any] | None:
    return dict(node) if is_distribution(node) else None


def pool_view(metrics: Mapping[str, Any]) -> list[PoolView]:
    """Every pool in ``metrics["pool"]`` with its steps sorted by concurrency."""
    section = metrics.get("pool")
    if not isinstance(section, Mapping):
        return []
    pools: list[PoolView] = []
    for name, node in section.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("steps"), list):
            continue
        steps: list[PoolStep] = []
        for raw in node["steps"]:
            if not isinstance(raw, Mapping) or "concurrency" not in raw:
                continue
            errors = raw.get("errors") or {}
            throughput = _dist(raw.get("throughput"))
            qps = num(raw.get("throughput_qps"))
            if math.isnan(qps) and throughput:
                qps = num(throughput.get("p50"))
            steps.append(
                PoolStep(
                    concurrency=int(raw["concurrency"]),
                    offered_rate=None
                    if raw.get("offered_rate") is None
                    else num(raw["offered_rate"]),
                    throughput=throughput,
                    throughput_qps=qps,
                    acquire_wait=_dist(raw.get("acquire_wait")),
                    query_latency=_dist(raw.get("query_latency")),
                    timeouts=int(raw.get("timeouts") or 0),
                    errors={str(k): int(v) for k, v in errors.items()}
                    if isinstance(errors, Mapping)
                    else {},
                    client_cpu=num(raw.get("client_cpu")),
                )
            )
        steps.sort(key=lambda s: s.concurrency)
        extra = {k: v for k, v in node.items() if k != "steps"}
        pools.append(PoolView(str(name), steps, extra))
    return pools


def other_distributions(metrics: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Distributions outside the cold-start and pool-step sections (capture, audit, …)."""
    out = []
    for path, dist in iter_distributions(metrics):
        if path.startswith("coldstart.") or (path.startswith("pool.") and ".steps[" in path):
            continue
        out.append((path, dist))
    return out


def fmt_value(value: Any) -> str:
    """A number for tables: ``-`` for missing, 3 decimals below 10, 1 decimal above."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 10_000:
            return f"{value:,.0f}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def finding_where(finding: Any) -> str:
    """``location [table] test`` of a finding, or ``-``."""
    parts = (finding.location, finding.table and f"[{finding.table}]", finding.test)
    return " ".join(x for x in parts if x) or "-"
