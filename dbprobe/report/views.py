"""Read the shared metrics layout (serialised ``report.to_dict()["metrics"]``) into small
typed views that every renderer, ``dbprobe compare`` and the SLO checks use.

Layout (DESIGN.md, shared conventions):

- cold start: ``metrics["coldstart"][driver][phase]`` distributions (``dns``, ``tcp``,
  ``tls``, ``startup``, ``driver_init``, ``first_query``, ``total``), the floor at
  ``metrics["coldstart"]["tcp_floor"]["connect"]``, facts under ``[driver]["_meta"]``;
- pool: ``metrics["pool"][pool]["steps"]``, a list of per-concurrency dicts with
  ``throughput`` (q/s), ``acquire_wait`` and ``query_latency`` distributions,
  ``throughput_qps``, ``timeouts``, ``errors`` and ``client_cpu``.

Metric paths are dotted; a pool step is named by its load, so steps match across runs
by load, not position: ``[c=N]`` for a closed-loop step of N workers, ``[r=R]`` for an
open-loop step at R requests/s (``offered_rate``); any other list item is ``[i]``:
``pool.psycopg_pool.steps[c=16].acquire_wait``, ``pool.asyncpg.steps[r=50].query_latency``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

from dbprobe.report.model import is_distribution

RATE_SUFFIX = "/s"


def is_rate(unit: str | None) -> bool:
    """Rates (``q/s``, ``rows/s``) are higher-is-better; everything else lower-is-better."""
    return bool(unit) and str(unit).endswith(RATE_SUFFIX)


def step_key(item: Mapping[str, Any]) -> str:
    """``[r=50]`` for an open-loop step (it has an ``offered_rate``), ``[c=16]`` for a
    closed-loop one."""
    rate = item.get("offered_rate")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate):
        return f"[r={rate:g}]"
    return f"[c={item['concurrency']:g}]"


def _item_name(index: int, item: Any) -> str:
    if isinstance(item, Mapping) and isinstance(item.get("concurrency"), (int, float)):
        return step_key(item)
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


ESTABLISH_PHASES = frozenset(
    {
        "dns",
        "tcp",
        "tls",
        "tls_request",
        "ssl_request",
        "sslrequest",
        "tls_handshake",
        "startup",
        "auth",
        "server_init",
    }
)
"""Phase names that are parts of establishing a connection (dns to ready), for reports
whose ``_meta.source`` does not say which figures the protocol client measured."""


@dataclasses.dataclass(frozen=True)
class ColdstartDriver:
    """Cold-start phases of one driver: ``phases`` maps phase → distribution dict, in
    the order the probe wrote them.

    ``parts_of_connect``: phases that are parts of the driver's own ``connect`` figure
    (measured next to it by dbprobe's protocol client: dns, tcp, tls, startup, or what
    the probe calls them), so a chart must not stack them on ``connect``; read from
    ``_meta.source`` (``"protocol"``) when the probe says, else by name.
    """

    name: str
    phases: dict[str, dict[str, Any]]
    total: dict[str, Any] | None
    meta: dict[str, Any]
    parts_of_connect: tuple[str, ...] = ()

    @property
    def sequence(self) -> list[str]:
        """The phases that follow one another in a cold start as the driver timed it:
        everything but the parts of ``connect`` (``connect``, ``driver_init``,
        ``first_query``, ...)."""
        return [p for p in self.phases if p not in self.parts_of_connect]

    def phase_label(self, phase: str) -> str:
        """A chart label: ``tls`` is named after what it timed when the server refused
        TLS (the SSLRequest round trip, not a handshake)."""
        if phase == "tls" and self.meta.get("tls_negotiation") == "sslrequest-refused":
            return "SSLRequest (refused)"
        return phase

    def bar(self, stat: str = "p50") -> list[tuple[str, float]]:
        """Segments of a stacked bar that adds up to the driver's own figures once:
        with a ``connect`` figure, ``connect`` is split into the protocol client's
        phases in their proportions (plus the driver's own share of ``connect``, when
        the parts add up to less), then the other phases in order; without one, the
        phases end to end. Values are each phase's ``stat`` (ms)."""
        value = {p: num(d.get(stat)) for p, d in self.phases.items()}
        out: list[tuple[str, float]] = []
        connect = value.get("connect", math.nan)
        parts = [(p, value[p]) for p in self.parts_of_connect if math.isfinite(value[p])]
        for phase in self.sequence:
            v = value[phase]
            if phase == "connect" and parts and math.isfinite(connect):
                total = sum(max(0.0, x) for _, x in parts)
                scale = connect / total if total > connect and total > 0 else 1.0
                out += [(self.phase_label(p), max(0.0, x) * scale) for p, x in parts]
                if total < connect:
                    out.append(("connect: driver's own", connect - total))
                continue
            if math.isfinite(v):
                out.append((self.phase_label(phase), v))
        return out


@dataclasses.dataclass(frozen=True)
class ColdstartView:
    drivers: list[ColdstartDriver]
    tcp_floor: dict[str, Any] | None

    @property
    def app_drivers(self) -> list[ColdstartDriver]:
        """The application's drivers: without dbprobe's own protocol client."""
        return [d for d in self.drivers if d.name not in NOT_DRIVERS]


NOT_DRIVERS = frozenset({"tcp_floor", "protocol"})
"""Cold-start nodes that are dbprobe's own reference measurements, not drivers."""


def _parts_of_connect(node: Mapping[str, Any], phases: Mapping[str, Any]) -> tuple[str, ...]:
    if "connect" not in phases:
        return ()
    meta = node.get("_meta")
    source = meta.get("source") if isinstance(meta, Mapping) else None
    if isinstance(source, Mapping) and source:
        return tuple(p for p in phases if str(source.get(p, "")).startswith("protocol"))
    return tuple(p for p in phases if p in ESTABLISH_PHASES)


def coldstart_view(metrics: Mapping[str, Any]) -> ColdstartView | None:
    """The cold-start section of a metrics tree, or ``None`` when there is none.

    Phases are read generically: every distribution directly under a driver except
    ``total`` (nested groups such as ``detail``, ``warm`` and ``process`` are not
    phases), in the order the probe wrote them."""
    section = metrics.get("coldstart")
    if not isinstance(section, Mapping):
        return None
    drivers: list[ColdstartDriver] = []
    floor = None
    for name, node in section.items():
        if not isinstance(node, Mapping) or str(name).startswith("_"):
            continue
        if name == "tcp_floor":
            floor = _dist(node.get("connect"))
            continue
        phases = {
            str(k): dict(v)
            for k, v in node.items()
            if k != "total" and not str(k).startswith("_") and _dist(v) is not None
        }
        meta = node.get("_meta")
        drivers.append(
            ColdstartDriver(
                name=str(name),
                phases=phases,
                total=_dist(node.get("total")),
                meta=dict(meta) if isinstance(meta, Mapping) else {},
                parts_of_connect=_parts_of_connect(node, phases),
            )
        )
    if not drivers and floor is None:
        return None
    return ColdstartView(drivers, floor)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class PoolStep:
    """One load step of a pool stress run: closed loop (``concurrency`` workers) or
    open loop (``offered_rate`` requests/s, at most ``concurrency`` in flight).

    ``served``: requests that got a connection and completed (``completed``, else the
    query-latency count); ``timeouts``: requests that gave up waiting for a connection;
    ``errors``: other failures by kind. ``acquire_wait`` covers the served requests
    only; :attr:`timeout_share` says how many others waited until they gave up.
    """

    concurrency: int
    offered_rate: float | None
    throughput: dict[str, Any] | None
    throughput_qps: float
    acquire_wait: dict[str, Any] | None
    query_latency: dict[str, Any] | None
    timeouts: int
    errors: dict[str, int]
    client_cpu: float
    served: int | None = None
    timeout_wait: dict[str, Any] | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        """``[c=N]`` or ``[r=R]``, as in metric paths."""
        return step_key({"concurrency": self.concurrency, "offered_rate": self.offered_rate})

    @property
    def closed_loop(self) -> bool:
        return self.offered_rate is None or math.isnan(self.offered_rate)

    @property
    def label(self) -> str:
        """``16`` for 16 workers, ``16 @50/s`` for an open-loop step offered 50
        requests/s with at most 16 in flight."""
        if self.closed_loop:
            return str(self.concurrency)
        return f"{self.concurrency} @{self.offered_rate:g}/s"

    @property
    def error_count(self) -> int:
        """Failed requests: timeouts and errors."""
        return self.timeouts + sum(self.errors.values())

    @property
    def requests(self) -> int:
        """Requests attempted: those that completed plus those that failed."""
        given = _int(self.raw.get("requests"))
        if given is not None:
            return given
        served = self.served
        if served is None:
            served = int(self.query_latency["n"]) if self.query_latency else 0
        return served + self.error_count

    @property
    def error_rate(self) -> float:
        """Failed share of requests (timeouts and errors), 0..1; NaN with no requests."""
        return self.error_count / self.requests if self.requests else math.nan

    failed_share = error_rate

    @property
    def timeout_share(self) -> float:
        """Share of requests that timed out waiting for a connection, 0..1 (NaN with no
        requests)."""
        return self.timeouts / self.requests if self.requests else math.nan


@dataclasses.dataclass(frozen=True)
class PoolView:
    name: str
    steps: list[PoolStep]
    extra: dict[str, Any]

    @property
    def capacity(self) -> int | None:
        """Connections the pool can hand out (``capacity``, else ``size`` +
        ``overflow``), or ``None`` when the report does not say."""
        cap = _int(self.extra.get("capacity"))
        if cap is not None:
            return cap
        size = _int(self.extra.get("size"))
        if size is None:
            return None
        return size + (_int(self.extra.get("overflow")) or 0)

    @property
    def closed_steps(self) -> list[PoolStep]:
        return [s for s in self.steps if s.closed_loop]

    @property
    def open_steps(self) -> list[PoolStep]:
        return [s for s in self.steps if not s.closed_loop]

    def within_capacity(self, step: PoolStep, limit: int | None = None) -> bool:
        """Whether ``step`` loads the pool at most to ``limit`` (default: its capacity):
        a closed-loop step with no more workers than that. Without a capacity, a step
        with no failures counts as within it. Open-loop steps count when they had no
        failures (their rate, not their worker cap, sets the load)."""
        cap = limit if limit is not None else self.capacity
        if step.closed_loop and cap is not None:
            return step.concurrency <= cap
        return step.error_count == 0


def _dist(node: Any) -> dict[str, Any] | None:
    return dict(node) if is_distribution(node) else None


def pool_view(metrics: Mapping[str, Any]) -> list[PoolView]:
    """Every pool in ``metrics["pool"]``: closed-loop steps by concurrency, then
    open-loop steps by offered rate."""
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
                qps = num(throughput.get("mean"))
            rate = raw.get("offered_rate")
            steps.append(
                PoolStep(
                    concurrency=int(raw["concurrency"]),
                    offered_rate=None if rate is None else num(rate),
                    throughput=throughput,
                    throughput_qps=qps,
                    acquire_wait=_dist(raw.get("acquire_wait")),
                    query_latency=_dist(raw.get("query_latency")),
                    timeouts=_int(raw.get("timeouts")) or 0,
                    errors={str(k): int(v) for k, v in errors.items()}
                    if isinstance(errors, Mapping)
                    else {},
                    client_cpu=num(raw.get("client_cpu")),
                    served=_int(raw.get("completed")),
                    timeout_wait=_dist(raw.get("timeout_wait")),
                    raw=dict(raw),
                )
            )
        steps.sort(key=lambda s: (not s.closed_loop, s.offered_rate or 0.0, s.concurrency))
        extra = {k: v for k, v in node.items() if k != "steps"}
        pools.append(PoolView(str(name), steps, extra))
    return pools


def other_distributions(
    metrics: Mapping[str, Any], *, with_empty: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """Distributions outside the cold-start and pool-step sections (capture, audit, …);
    empty ones (``n`` = 0, say no timeouts) only with ``with_empty``."""
    out = []
    for path, dist in iter_distributions(metrics):
        if path.startswith("coldstart.") or (path.startswith("pool.") and ".steps[" in path):
            continue
        if not with_empty and not dist.get("n"):
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


STACK_FRAMES = 8
"""Frames of a stack kept in human-readable reports (the innermost application ones)."""


def app_frames(stack: list[Any], keep: int = STACK_FRAMES) -> list[Any]:
    """The frames of a ``path:line in function`` stack that are the application's: not
    absolute paths (site-packages, the interpreter), not dbprobe's own; the innermost
    ``keep`` of them, with a note of how many were left out."""

    def is_app(frame: Any) -> bool:
        text = str(frame)
        return not (
            text.startswith(("/", "<"))
            or "site-packages" in text
            or text.startswith(("dbprobe/", "dbprobe\\"))
            or (len(text) > 2 and text[1] == ":")  # a Windows drive
        )

    mine = [f for f in stack if is_app(f)]
    if len(mine) > keep:
        mine = mine[-keep:]
    dropped = len(stack) - len(mine)
    return [*mine, f"({dropped} library or dbprobe frames left out)"] if dropped else mine


def finding_where(finding: Any) -> str:
    """``location [table] test`` of a finding, or ``-``."""
    parts = (finding.location, finding.table and f"[{finding.table}]", finding.test)
    return " ".join(x for x in parts if x) or "-"
