"""Cold-start statistics and the ``slow-cold-start`` verdict. Pure: plain data in,
findings out.

Input is the ``metrics["coldstart"]`` tree a cold-start run writes (leaves are
:class:`~dbprobe.report.model.Distribution` objects or their JSON form)::

    {"tcp_floor": {"connect": D},
     "protocol": {"dns"?: D, "tcp": D, "tls"?: D, "startup": D, ..., "_meta": {...}},
     "<driver>": {"dns"?: D, "tcp": D, "tls"?: D, "startup": D, "connect": D,
                  "driver_init": D, "first_query": D, "total": D,
                  "warm"?: {"checkout": D, "pool_ready": D, ...},
                  "process"?: {"interpreter": D, ..., "total": D},
                  "_meta": {...}},
     "_meta": {...}}

A driver is slow when its p95 ``total`` exceeds the threshold (default 100 ms), or
when one phase dominates: at least half of the median total and at least 10 ms. The
finding names the phase to blame and the advice that fits it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from dbprobe.report.model import Distribution, Finding, Severity, percentile
from dbprobe.rules import RULES

RULE_ID = "slow-cold-start"
#: phases of one cold connection that together make up ``total``
PHASES = ("dns", "tcp", "tls", "startup", "driver_init", "first_query")
#: phases measured by the protocol client (the driver's ``connect`` covers them all)
ESTABLISH_PHASES = ("dns", "tcp", "tls", "startup")
PROCESS_PHASES = ("interpreter", "imports", "driver_import", "connect", "first_query")
#: the pseudo-phase for the driver's own connect work beyond a minimal client
DRIVER_CONNECT = "driver_connect"
NOT_DRIVERS = frozenset({"tcp_floor", "protocol"})
#: how phases read in finding messages
PHASE_LABELS = {DRIVER_CONNECT: "the driver's own connect work"}


def label(phase: str) -> str:
    """A phase name as it reads in a message."""
    return PHASE_LABELS.get(phase, phase)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When a cold start is slow.

    total_p95_ms: p95 of a driver's cold connection + first query (default 100 ms).
    dominant_share: share of the median total one phase must reach to dominate
        (default 0.5); dominant_min_ms: and its median must reach this (default 10 ms,
        so a 3 ms loopback connect where the server's start-up is 70 % is not flagged).
    process_total_p95_ms: p95 of a fresh process to its first query (default 1000 ms).
    """

    total_p95_ms: float = 100.0
    dominant_share: float = 0.5
    dominant_min_ms: float = 10.0
    process_total_p95_ms: float = 1000.0

    def __post_init__(self) -> None:
        if not self.total_p95_ms > 0 or not self.process_total_p95_ms > 0:
            raise ValueError("cold-start thresholds must be positive milliseconds")
        if not 0 < self.dominant_share <= 1:
            raise ValueError("dominant_share must be in (0, 1]")


# -- statistics -------------------------------------------------------------------------
def as_distribution(node: Any) -> Distribution | None:
    """A :class:`Distribution` from a metrics leaf (object or JSON form), else None."""
    if isinstance(node, Distribution):
        return node
    if isinstance(node, Mapping) and "n" in node and "p50" in node:
        return Distribution.from_dict(node)
    return None


def _p50(node: Any) -> float | None:
    d = as_distribution(node)
    if d is None or d.n == 0 or math.isnan(d.p50):
        return None
    return d.p50


def _quantiles(node: Any) -> dict[str, float] | None:
    d = as_distribution(node)
    if d is None or d.n == 0:
        return None
    return {"n": d.n, "p50": _r(d.p50), "p95": _r(d.p95), "p99": _r(d.p99), "max": _r(d.max)}


def _r(value: float) -> float:
    return round(value, 3)


def iqr(values: Sequence[float]) -> float:
    """Inter-quartile range (p75 - p25) of ``values``; 0 for fewer than 2 values."""
    data = sorted(values)
    if len(data) < 2:
        return 0.0
    return percentile(data, 75) - percentile(data, 25)


@dataclasses.dataclass(frozen=True)
class Additivity:
    """Whether a driver's phases add up to its total.

    sum_of_p50: sum of the phases' medians (each phase's own samples);
    total_p50: median of the driver's measured totals; gap_ms = total_p50 - sum_of_p50
    (positive: time no phase accounts for, i.e. the driver's own connect work beyond a
    minimal client); tolerance_ms: the noise allowance, one inter-quartile range of the
    totals and at least 0.5 ms.
    """

    parts: tuple[str, ...]
    sum_of_p50: float
    total_p50: float
    gap_ms: float
    tolerance_ms: float

    @property
    def gap_share(self) -> float:
        return self.gap_ms / self.total_p50 if self.total_p50 > 0 else 0.0

    @property
    def within_noise(self) -> bool:
        return abs(self.gap_ms) <= self.tolerance_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "parts": list(self.parts),
            "sum_of_p50_ms": _r(self.sum_of_p50),
            "total_p50_ms": _r(self.total_p50),
            "gap_ms": _r(self.gap_ms),
            "gap_share": round(self.gap_share, 4),
            "tolerance_ms": _r(self.tolerance_ms),
            "within_noise": self.within_noise,
        }


def additivity(
    phases: Mapping[str, Any], parts: Sequence[str] = PHASES, total: str = "total"
) -> Additivity | None:
    """Compare the sum of the phases' medians with the median total (phases that do not
    apply are simply absent). ``None`` when there is no total."""
    total_d = as_distribution(phases.get(total))
    if total_d is None or total_d.n == 0:
        return None
    present = tuple(p for p in parts if _p50(phases.get(p)) is not None)
    sum_p50 = sum(_p50(phases[p]) or 0.0 for p in present)
    tolerance = max(0.5, iqr(total_d.samples or ()))
    return Additivity(present, sum_p50, total_d.p50, total_d.p50 - sum_p50, tolerance)


def paired_gap(connect: Sequence[float], establish: Sequence[float]) -> Distribution:
    """Per-sample ``connect - establish`` for paired samples (same round, same moment):
    the driver's connect minus the protocol client's DNS+TCP+TLS+start-up."""
    return Distribution.of([c - e for c, e in zip(connect, establish, strict=False)])


# -- verdicts ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Blame:
    """The phase that takes the largest share of a cold start."""

    phase: str
    p50_ms: float
    p95_ms: float | None
    share: float  # of the median total, at most 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "p50_ms": _r(self.p50_ms),
            "p95_ms": None if self.p95_ms is None else _r(self.p95_ms),
            "share": round(self.share, 4),
        }


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The cold-start verdict of one driver (or one driver's fresh process)."""

    driver: str
    scope: str  # "connection" | "process"
    slow: bool
    reason: str  # "p95-over-threshold" | "phase-dominates" | "ok" | "no-data"
    total_p50_ms: float | None
    total_p95_ms: float | None
    threshold_ms: float
    blame: Blame | None
    advice: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "slow": self.slow,
            "reason": self.reason,
            "total_p50_ms": None if self.total_p50_ms is None else _r(self.total_p50_ms),
            "total_p95_ms": None if self.total_p95_ms is None else _r(self.total_p95_ms),
            "threshold_ms": self.threshold_ms,
            "blame": self.blame.to_dict() if self.blame else None,
            "advice": self.advice,
        }


def driver_names(coldstart: Mapping[str, Any]) -> list[str]:
    """The drivers in a cold-start tree (not the floor, the protocol client or _meta)."""
    return [
        k
        for k, v in coldstart.items()
        if not k.startswith("_") and k not in NOT_DRIVERS and isinstance(v, Mapping)
    ]


def blame(
    node: Mapping[str, Any], parts: Sequence[str] = PHASES, *, with_driver_connect: bool = True
) -> Blame | None:
    """The largest phase by median (ties: the first in ``parts``). For a driver the
    driver's own connect work beyond the protocol client's establishment competes too
    (as ``driver_connect``)."""
    total = _p50(node.get("total"))
    if total is None or total <= 0:
        return None
    candidates: list[tuple[str, float, float | None]] = []
    for phase in parts:
        d = as_distribution(node.get(phase))
        if d is not None and d.n and not math.isnan(d.p50):
            candidates.append((phase, d.p50, d.p95))
    if with_driver_connect:
        connect = _p50(node.get("connect"))
        if connect is not None:
            establish = sum(_p50(node.get(p)) or 0.0 for p in ESTABLISH_PHASES)
            if connect - establish > 0:
                candidates.append((DRIVER_CONNECT, connect - establish, None))
    if not candidates:
        return None
    phase, p50, p95 = max(candidates, key=lambda c: c[1])
    # A protocol-client phase is a different connection than the driver's total: on a
    # noisy machine its median can exceed the driver's median total.
    return Blame(phase, p50, p95, min(1.0, p50 / total))


def evaluate(
    coldstart: Mapping[str, Any], thresholds: Thresholds | None = None
) -> tuple[list[Verdict], list[Finding]]:
    """Verdicts for every driver (and its fresh process, when measured) and the
    ``slow-cold-start`` findings for the slow ones."""
    th = thresholds or Thresholds()
    verdicts: list[Verdict] = []
    findings: list[Finding] = []
    floor = _p50((coldstart.get("tcp_floor") or {}).get("connect"))
    for driver in driver_names(coldstart):
        node = coldstart[driver]
        meta = node.get("_meta") if isinstance(node.get("_meta"), Mapping) else {}
        verdict = _connection_verdict(driver, node, meta, th, floor)
        verdicts.append(verdict)
        if verdict.slow:
            findings.append(_finding(verdict, node, meta, th, floor))
        process = node.get("process")
        if isinstance(process, Mapping):
            pverdict = _process_verdict(driver, process, th)
            verdicts.append(pverdict)
            if pverdict.slow:
                findings.append(_process_finding(pverdict, process))
    return verdicts, findings


def _connection_verdict(
    driver: str,
    node: Mapping[str, Any],
    meta: Mapping[str, Any],
    th: Thresholds,
    floor: float | None,
) -> Verdict:
    total = as_distribution(node.get("total"))
    if total is None or total.n == 0:
        return Verdict(
            driver, "connection", False, "no-data", None, None, th.total_p95_ms, None, ""
        )
    top = blame(node)
    over = total.p95 > th.total_p95_ms
    dominates = (
        top is not None and top.share >= th.dominant_share and top.p50_ms >= th.dominant_min_ms
    )
    reason = "p95-over-threshold" if over else "phase-dominates" if dominates else "ok"
    advice = advise(driver, top.phase, node, meta, floor) if top and (over or dominates) else ""
    return Verdict(
        driver, "connection", over or dominates, reason, total.p50, total.p95,
        th.total_p95_ms, top, advice,
    )  # fmt: skip


def _process_verdict(driver: str, process: Mapping[str, Any], th: Thresholds) -> Verdict:
    total = as_distribution(process.get("total"))
    if total is None or total.n == 0:
        return Verdict(
            driver, "process", False, "no-data", None, None, th.process_total_p95_ms, None, ""
        )
    top = blame(process, PROCESS_PHASES, with_driver_connect=False)
    over = total.p95 > th.process_total_p95_ms
    advice = advise_process(driver, top.phase) if top and over else ""
    return Verdict(
        driver, "process", over, "p95-over-threshold" if over else "ok", total.p50, total.p95,
        th.process_total_p95_ms, top, advice,
    )  # fmt: skip


def _finding(
    verdict: Verdict,
    node: Mapping[str, Any],
    meta: Mapping[str, Any],
    th: Thresholds,
    floor: float | None,
) -> Finding:
    assert verdict.total_p50_ms is not None
    assert verdict.total_p95_ms is not None
    top = verdict.blame
    where = (
        f"; {label(top.phase)} takes {top.share:.0%} of it ({top.p50_ms:.1f} ms p50)" if top else ""
    )
    if verdict.reason == "p95-over-threshold":
        n = (as_distribution(node.get("total")) or Distribution.of([])).n
        message = (
            f"{verdict.driver}: a cold connection and first query take "
            f"{verdict.total_p95_ms:.1f} ms at p95 (p50 {verdict.total_p50_ms:.1f} ms, n={n}), "
            f"over the {th.total_p95_ms:g} ms threshold{where}"
        )
        severity = None  # the rule's default
    else:
        assert top is not None
        message = (
            f"{verdict.driver}: {label(top.phase)} dominates a cold connection: "
            f"{top.p50_ms:.1f} ms of {verdict.total_p50_ms:.1f} ms at p50 ({top.share:.0%})"
        )
        severity = Severity.INFO
    phases = {p: q for p in (*PHASES, "connect", "total") if (q := _quantiles(node.get(p)))}
    evidence: dict[str, Any] = {
        "driver": verdict.driver,
        "reason": verdict.reason,
        "threshold_ms": th.total_p95_ms,
        "phases": phases,
        "blame": top.to_dict() if top else None,
        "tcp_floor_p50_ms": None if floor is None else _r(floor),
    }
    warm = node.get("warm")
    if isinstance(warm, Mapping):
        evidence["warm"] = {
            k: q for k in ("checkout", "pool_ready") if (q := _quantiles(warm.get(k)))
        }
    for key in ("source", "tls_negotiation", "auth_method", "scram_iterations", "transport"):
        if key in meta:
            evidence[key] = meta[key]
    return RULES[RULE_ID].finding(
        message,
        verdict.advice,
        severity=severity,
        fingerprint=f"coldstart:{verdict.driver}",
        evidence=evidence,
    )


def _process_finding(verdict: Verdict, process: Mapping[str, Any]) -> Finding:
    assert verdict.total_p50_ms is not None
    assert verdict.total_p95_ms is not None
    top = verdict.blame
    where = f"; {top.phase} takes {top.share:.0%} of it ({top.p50_ms:.0f} ms p50)" if top else ""
    message = (
        f"{verdict.driver}: a fresh process takes {verdict.total_p95_ms:.0f} ms at p95 to its "
        f"first query (p50 {verdict.total_p50_ms:.0f} ms), over the "
        f"{verdict.threshold_ms:g} ms threshold{where}"
    )
    phases = {p: q for p in (*PROCESS_PHASES, "total") if (q := _quantiles(process.get(p)))}
    return RULES[RULE_ID].finding(
        message,
        verdict.advice,
        fingerprint=f"coldstart:{verdict.driver}:process",
        evidence={
            "driver": verdict.driver,
            "scope": "process",
            "threshold_ms": verdict.threshold_ms,
            "phases": phases,
            "blame": top.to_dict() if top else None,
            "imports": list((process.get("_meta") or {}).get("imports", [])),
        },
    )


# -- advice -----------------------------------------------------------------------------
def _prewarm_clause(node: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    warm = node.get("warm")
    cold = _p50(node.get("total"))
    if not isinstance(warm, Mapping) or cold is None:
        return (
            " Open connections before traffic arrives: a pool pre-warmed to its minimum size "
            "at start-up means no request pays a cold connect."
        )
    checkout = _p50(warm.get("checkout"))
    ready = _p50(warm.get("pool_ready"))
    size = warm.get("min_size")
    parts = [" Pre-warm the pool at start-up"]
    if checkout is not None:
        parts.append(
            f": a pooled checkout after warm-up took {checkout:.2f} ms against {cold:.1f} ms cold"
        )
    if ready is not None and size:
        parts.append(f"; the pool became ready at {size} connections in {ready:.1f} ms (p50)")
    return "".join(parts) + "."


def advise(
    driver: str,
    phase: str,
    node: Mapping[str, Any],
    meta: Mapping[str, Any],
    floor: float | None = None,
) -> str:
    """The advice that fits ``phase`` for ``driver``, using the facts in ``meta``
    (``tls_negotiation``, ``server_version_num``, ``auth_method``, ``scram_iterations``,
    ``transport``)."""
    p50 = _p50(node.get(phase))
    took = f" ({p50:.1f} ms p50)" if p50 is not None else ""
    version = int(meta.get("server_version_num") or 0)
    asyncpg_based = driver in ("asyncpg", "sqlalchemy-async")
    prewarm = _prewarm_clause(node, meta)
    if phase == "dns":
        return (
            f"Name resolution{took} is paid on every new connection: getaddrinfo keeps no "
            "cache of its own. Run a caching resolver on the host (nscd, systemd-resolved, "
            "dnsmasq) or connect by address (libpq hostaddr=), and keep connections pooled "
            "so resolution is rare." + prewarm
        )
    if phase == "tcp":
        fl = f" (raw TCP floor {floor:.2f} ms)" if floor is not None else ""
        return (
            f"The TCP connect{took}{fl} is the network round trip to the server: every new "
            "connection pays it several times over (TCP, TLS, start-up). Keep connections "
            "open, or run a pooler (PgBouncer) next to the application so new sessions are "
            "local." + prewarm
        )
    if phase == "tls":
        negotiation = str(meta.get("tls_negotiation") or "")
        if negotiation == "direct":
            direct = "Direct TLS negotiation is already in use."
        elif version >= 170000:
            direct = (
                "The server is PostgreSQL 17+: use direct TLS negotiation "
                "(sslnegotiation=direct with sslmode=require or stronger; asyncpg: "
                "direct_tls=True) to save the SSLRequest round trip."
            )
        else:
            direct = (
                "PostgreSQL 17+ accepts direct TLS negotiation (sslnegotiation=direct), which "
                "saves the SSLRequest round trip; this server is older."
            )
        resumed = meta.get("tls_session_resumption")
        resumption = (
            " PostgreSQL does not resume TLS sessions (no session cache, no tickets), so "
            "every new connection pays a full handshake"
            + (" (measured: the offered session was not resumed)" if resumed is False else "")
            + "; cut the number of handshakes with a pre-warmed pool, or terminate TLS in a "
            "pooler close to the application that keeps long-lived server connections."
        )
        return f"The TLS handshake{took} dominates. {direct}{resumption}{prewarm}"
    if phase == "startup":
        auth = str(meta.get("auth_method") or "")
        iterations = meta.get("scram_iterations")
        scram_ms = meta.get("scram_client_p50_ms")
        if auth == "scram-sha-256":
            cost = f" ({scram_ms:.1f} ms in the protocol client)" if scram_ms is not None else ""
            knob = (
                "lower `scram_iterations` (PostgreSQL 16+; set it, then set the role's password "
                "again)"
                if version >= 160000 or version == 0
                else "upgrade to PostgreSQL 16+ for `scram_iterations`"
            )
            return (
                f"Start-up and authentication{took} dominate. SCRAM-SHA-256 makes the client "
                f"derive its key with PBKDF2 over {iterations or 4096} iterations on every "
                f"connection{cost}: {knob} only for a strong password, as fewer iterations "
                "weaken a stolen verifier. The rest is the server starting a backend process "
                "for the session: reuse sessions through a pool or a pooler (PgBouncer) in "
                "front." + prewarm
            )
        return (
            f"Start-up{took} dominates: the server starts a backend process for every "
            f"connection and authenticates it ({auth or 'unknown'} here). Reuse server "
            "sessions: a pre-warmed application pool, or a pooler (PgBouncer) in front "
            "for many processes." + prewarm
        )
    if phase == "driver_init":
        if driver == "sqlalchemy-async":
            what = (
                "The engine initialises the dialect on its first connect (a transaction with "
                "four queries, each prepared by asyncpg first) and the asyncpg dialect sets "
                "up json and jsonb codecs on every new connection"
            )
        elif driver == "sqlalchemy":
            what = (
                "The engine initialises the dialect on its first connect (a transaction with "
                "server version, schema, isolation level and standard_conforming_strings "
                "queries and an hstore type lookup)"
            )
        elif driver == "asyncpg":
            what = (
                "asyncpg's connection set-up; type introspection runs for every type a "
                "connection has not seen (register codecs once in a pool's init=)"
            )
        else:
            what = "The driver's own set-up after the server is ready"
        return (
            f"{what}{took}. Create engines once per process (never per request), keep "
            "statement_cache_size at its default (0 only behind PgBouncer in transaction "
            "mode), and pay this once at start-up." + prewarm
        )
    if phase == "first_query":
        if asyncpg_based:
            what = (
                "asyncpg prepares every statement before running it, so a fresh connection "
                "pays an extra round trip; pooled connections reuse prepared statements "
                "(statement_cache_size, default 100)"
            )
        elif driver == "sqlalchemy":
            what = "SQLAlchemy sends BEGIN before the first statement: one more round trip"
        else:
            what = "the first statement on a new backend also loads its catalog caches"
        return f"The first query{took} dominates: {what}." + prewarm
    if phase == DRIVER_CONNECT:
        gap = meta.get("connect_gap_p50_ms")
        gap_text = f" ({gap:.1f} ms p50)" if isinstance(gap, (int, float)) else ""
        scram = ""
        if meta.get("auth_method") == "scram-sha-256":
            iterations = meta.get("scram_iterations") or 4096
            scram = (
                f" With SCRAM-SHA-256 ({iterations} iterations) most of it is the driver's "
                "own key derivation, which is slower than one PBKDF2 call (libpq's loop in "
                "particular) and grows with the iteration count: lower `scram_iterations` "
                "(PostgreSQL 16+, then set the role's password again) only for a strong "
                "password."
            )
        return (
            f"The driver's own work while connecting{gap_text}: its connect minus a minimal "
            "client's DNS, TCP, TLS and start-up measured right next to it (option parsing, "
            f"key derivation, event-loop transport set-up).{scram} It is paid per "
            "connection: reuse connections." + prewarm
        )
    return "Reuse connections." + prewarm


def advise_process(driver: str, phase: str) -> str:
    """Advice for a slow fresh process, by the phase that dominates it."""
    if phase in ("imports", "driver_import"):
        return (
            "Imports dominate a fresh process (python -X importtime shows which). Import "
            "the application once and fork workers after it (gunicorn --preload, or a "
            "pre-fork server), defer heavy imports off the start-up path, and keep "
            "processes long-lived instead of starting one per request or scaling to zero."
        )
    if phase == "interpreter":
        return (
            "Interpreter start-up dominates: look for slow .pth files and site-packages "
            "hooks (python -X importtime -c pass), and keep processes long-lived."
        )
    return (
        "The first connection dominates a fresh process: open the pool during start-up, "
        "before the process takes traffic (a readiness check that waits for it)."
    )
