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

Each driver node also has ``detail`` (protocol-client ``tls_request``,
``tls_handshake``, ``scram_client`` from its paired samples, and ``connect_gap``: the
driver's connect minus the paired protocol client's establishment, per pair).

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
#: the protocol client's finer figures, under ``detail`` (per driver: its paired samples)
PROTOCOL_DETAIL = ("tls_request", "tls_handshake", "scram_client")
#: per pair: the driver's connect minus the protocol client's DNS+TCP+TLS+start-up
CONNECT_GAP = "connect_gap"
#: the pseudo-phase for the driver's own connect work beyond a minimal client
DRIVER_CONNECT = "driver_connect"
NOT_DRIVERS = frozenset({"tcp_floor", "protocol"})
#: phases a driver's node takes from the protocol client's paired samples
PROTOCOL_MEASURED = frozenset({*ESTABLISH_PHASES, "tls_request", "tls_handshake"})
#: how phases read in finding messages
PHASE_LABELS = {
    DRIVER_CONNECT: "the driver's own connect work",
    "tls_request": "the SSLRequest answer",
    "tls_handshake": "the TLS handshake",
}


def label(phase: str) -> str:
    """A phase name as it reads in a message; phases the protocol client measured say
    so (a driver exposes no boundary inside its connect)."""
    name = PHASE_LABELS.get(phase, phase)
    if phase in PROTOCOL_MEASURED:
        return f"{name} (protocol client, paired samples)"
    return name


def measured_by(phase: str) -> str:
    """Which figures a phase comes from: ``protocol``, ``driver`` or, for
    ``driver_connect``, the paired difference of the two."""
    if phase in PROTOCOL_MEASURED:
        return "protocol"
    if phase == DRIVER_CONNECT:
        return "driver connect - paired protocol establishment"
    return "driver"


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


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval of the median (the sign test's order
    statistics): ``(low, high, confidence)``, the confidence being the interval's exact
    coverage, at least ``level`` when there are enough values (6 for 95 %); with fewer,
    the interval is ``[min, max]`` and the confidence says how much less it is."""
    data = sorted(values)
    n = len(data)
    if n == 0:
        return math.nan, math.nan, 0.0
    alpha = 1.0 - level
    if n > 1000:  # normal approximation of the binomial
        k = max(1, math.floor((n - 1.959964 * math.sqrt(n)) / 2))
        return data[k - 1], data[n - k], level
    k, tail = 1, 0.5**n  # tail = P(X <= k - 1), X ~ Binomial(n, 1/2)
    while k < n // 2 + 1:
        next_tail = tail + math.comb(n, k) / 2**n
        if 2 * next_tail > alpha:
            break
        k, tail = k + 1, next_tail
    return data[k - 1], data[n - k], max(0.0, 1.0 - 2 * tail)


@dataclasses.dataclass(frozen=True)
class Additivity:
    """Whether a driver's phases add up to its total, judged pair by pair.

    For each pair of samples (same round, taken back to back) the phases' sum is the
    protocol client's DNS+TCP+TLS+start-up plus the driver's ``driver_init`` and
    ``first_query``, and the driver's total is its ``connect`` plus the same two; the
    difference is ``connect - establishment`` (``detail.connect_gap``). gap_ms: its
    median; gap_p95_ms; ci_low_ms / ci_high_ms: a distribution-free confidence interval
    of that median at ``confidence``; within_noise: the interval contains 0 (no
    systematic gap). A gap outside the noise is the driver's own connect work, which no
    protocol phase accounts for (``driver_connect`` in the verdict).
    sum_of_p50 / total_p50: the phases' medians summed and the median total, for reading.
    """

    parts: tuple[str, ...]
    sum_of_p50: float
    total_p50: float
    gap_ms: float
    gap_p95_ms: float
    ci_low_ms: float
    ci_high_ms: float
    confidence: float
    pairs: int

    @property
    def gap_share(self) -> float:
        return self.gap_ms / self.total_p50 if self.total_p50 > 0 else 0.0

    @property
    def within_noise(self) -> bool:
        return self.ci_low_ms <= 0.0 <= self.ci_high_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "parts": list(self.parts),
            "sum_of_p50_ms": _r(self.sum_of_p50),
            "total_p50_ms": _r(self.total_p50),
            "gap_ms": _r(self.gap_ms),
            "gap_p95_ms": _r(self.gap_p95_ms),
            "gap_ci_ms": [_r(self.ci_low_ms), _r(self.ci_high_ms)],
            "confidence": round(self.confidence, 4),
            "pairs": self.pairs,
            "gap_share": round(self.gap_share, 4),
            "within_noise": self.within_noise,
            "judged_on": f"the per-pair differences (detail.{CONNECT_GAP}): the gap's median "
            "and a confidence interval of it; within noise when the interval holds 0",
        }


def additivity(
    phases: Mapping[str, Any], parts: Sequence[str] = PHASES, total: str = "total"
) -> Additivity | None:
    """Judge a driver node's phases against its total on the paired differences in
    ``detail.connect_gap`` (phases that do not apply are simply absent). ``None`` when
    there is no total or no paired difference with its samples."""
    total_d = as_distribution(phases.get(total))
    detail = phases.get("detail")
    gap_d = as_distribution(detail.get(CONNECT_GAP)) if isinstance(detail, Mapping) else None
    if total_d is None or total_d.n == 0 or gap_d is None or not gap_d.samples:
        return None
    present = tuple(p for p in parts if _p50(phases.get(p)) is not None)
    sum_p50 = sum(_p50(phases[p]) or 0.0 for p in present)
    low, high, confidence = median_ci(gap_d.samples)
    return Additivity(
        present, sum_p50, total_d.p50, gap_d.p50, gap_d.p95, low, high, confidence, gap_d.n
    )


def paired_gap(connect: Sequence[float], establish: Sequence[float]) -> Distribution:
    """Per-sample ``connect - establish`` for paired samples (same round, same moment):
    the driver's connect minus the protocol client's DNS+TCP+TLS+start-up."""
    if len(connect) != len(establish):
        raise ValueError("paired samples must come in pairs")
    return Distribution.of([c - e for c, e in zip(connect, establish, strict=True)])


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
            "measured_by": measured_by(self.phase),
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


def _detail(node: Mapping[str, Any]) -> Mapping[str, Any]:
    detail = node.get("detail")
    return detail if isinstance(detail, Mapping) else {}


def driver_connect(node: Mapping[str, Any]) -> tuple[float, float | None] | None:
    """The driver's own connect work beyond the protocol client's establishment:
    ``(p50, p95)`` of the per-pair differences (``detail.connect_gap``) when present,
    else the difference of the medians (older reports; no p95)."""
    detail = node.get("detail")
    gap = as_distribution(detail.get(CONNECT_GAP)) if isinstance(detail, Mapping) else None
    if gap is not None and gap.n and not math.isnan(gap.p50):
        return gap.p50, gap.p95
    connect = _p50(node.get("connect"))
    if connect is None:
        return None
    return connect - sum(_p50(node.get(p)) or 0.0 for p in ESTABLISH_PHASES), None


def _tls_parts(node: Mapping[str, Any]) -> list[str]:
    """``tls`` split into what the paired protocol samples measured inside it."""
    detail = node.get("detail")
    if not isinstance(detail, Mapping):
        return []
    return [p for p in ("tls_request", "tls_handshake") if _p50(detail.get(p)) is not None]


def blame(
    node: Mapping[str, Any], parts: Sequence[str] = PHASES, *, with_driver_connect: bool = True
) -> Blame | None:
    """The largest phase by median (ties: the first in ``parts``). ``tls`` competes as
    its two parts when the node has them (``tls_request``: the SSLRequest answer, which
    waits for the server to start a backend; ``tls_handshake``), since they call for
    different fixes. For a driver the driver's own connect work beyond the protocol
    client's establishment competes too (as ``driver_connect``, the median of the
    per-pair differences)."""
    total = _p50(node.get("total"))
    if total is None or total <= 0:
        return None
    detail = _detail(node)
    candidates: list[tuple[str, float, float | None]] = []
    for phase in parts:
        sources = [(p, detail.get(p)) for p in _tls_parts(node)] if phase == "tls" else []
        for name, leaf in sources or [(phase, node.get(phase))]:
            d = as_distribution(leaf)
            if d is not None and d.n and not math.isnan(d.p50):
                candidates.append((name, d.p50, d.p95))
    if with_driver_connect:
        own = driver_connect(node)
        if own is not None and own[0] > 0:
            candidates.append((DRIVER_CONNECT, own[0], own[1]))
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
    detail = _detail(node)
    evidence: dict[str, Any] = {
        "driver": verdict.driver,
        "reason": verdict.reason,
        "threshold_ms": th.total_p95_ms,
        "phases": phases,
        "detail": {k: q for k, v in detail.items() if (q := _quantiles(v))},
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
    opens = str(warm.get("opens") or "").split(":", 1)[0]
    parts = [" Pre-warm the pool at start-up"]
    if checkout is not None:
        parts.append(
            f": a pooled checkout after warm-up took {checkout:.2f} ms against {cold:.1f} ms cold"
        )
    if ready is not None and size:
        how = f", opening them {opens}" if opens else ""
        parts.append(f"; the pool became ready at {size} connections in {ready:.1f} ms (p50{how})")
    return "".join(parts) + "."


def _round_trip(node: Mapping[str, Any], floor: float | None) -> str:
    """One network round trip, as measured: the TCP connect (a SYN and its answer)."""
    tcp = _p50(node.get("tcp"))
    rtt = tcp if tcp is not None else floor
    return f" (about {rtt:.2f} ms here: the TCP connect)" if rtt is not None else ""


def _direct_tls(node: Mapping[str, Any], meta: Mapping[str, Any], floor: float | None) -> str:
    """What direct TLS negotiation would save, and what it needs on the client side."""
    negotiation = str(meta.get("tls_negotiation") or "")
    version = int(meta.get("server_version_num") or 0)
    if negotiation == "direct":
        return "Direct TLS negotiation is already in use."
    saves = f"saves one round trip{_round_trip(node, floor)} — not the backend start"
    needs = (
        "It needs libpq 17+ on the client (psycopg: psycopg.pq.version() >= 170000"
        + _libpq_note(meta)
        + "), asyncpg 0.30+ (direct_tls=True), and every proxy or pooler in the path must "
        "accept direct TLS with ALPN 'postgresql'."
    )
    if version >= 170000:
        return (
            "The server is PostgreSQL 17+: direct TLS negotiation (sslnegotiation=direct "
            f"with sslmode=require or stronger) {saves}. {needs}"
        )
    return (
        f"PostgreSQL 17+ accepts direct TLS negotiation (sslnegotiation=direct), which {saves}; "
        f"this server is older. {needs}"
    )


def _libpq_note(meta: Mapping[str, Any]) -> str:
    versions = meta.get("versions")
    libpq = versions.get("libpq") if isinstance(versions, Mapping) else None
    return f"; this psycopg uses libpq {libpq}" if libpq else ""


def _no_resumption(meta: Mapping[str, Any]) -> str:
    resumed = meta.get("tls_session_resumption")
    return (
        " PostgreSQL does not resume TLS sessions (no session cache, no tickets), so "
        "every new connection pays a full handshake"
        + (" (measured: the offered session was not resumed)" if resumed is False else "")
        + "; cut the number of handshakes with a pre-warmed pool, or terminate TLS in a "
        "pooler close to the application that keeps long-lived server connections."
    )


_BACKEND_START = (
    "the server starting a backend process for the connection (it starts one when it "
    "accepts the socket; without TLS the same time lands in startup)"
)


def _advise_tls(
    phase: str,
    node: Mapping[str, Any],
    meta: Mapping[str, Any],
    floor: float | None,
    took: str,
    prewarm: str,
) -> str:
    negotiation = str(meta.get("tls_negotiation") or "")
    if negotiation == "sslrequest-refused":
        return (
            f"No TLS was negotiated: the server refused the SSLRequest (sslmode=prefer "
            f"against a server without TLS), and this phase{took} is that refused request: "
            f"one round trip plus {_BACKEND_START}. sslmode=disable would save the round "
            f"trip{_round_trip(node, floor)}, not the backend start — and a session without "
            "TLS travels in the clear: better turn TLS on at the server and connect with "
            "sslmode=verify-full. To cut the backend starts, reuse sessions: a pre-warmed "
            "pool, or a pooler (PgBouncer) in front." + prewarm
        )
    if phase == "tls_request":
        return (
            f"The answer to the SSLRequest{took} dominates: it is mostly {_BACKEND_START}, "
            "plus one round trip. Reuse sessions (a pre-warmed pool, or a pooler such as "
            f"PgBouncer in front) to start fewer backends. {_direct_tls(node, meta, floor)}"
            + prewarm
        )
    detail = _detail(node)
    request = _p50(detail.get("tls_request"))
    handshake = _p50(detail.get("tls_handshake"))
    if phase == "tls_handshake":
        what = f"The TLS handshake{took} dominates"
        if negotiation == "direct":
            what += f" (with direct negotiation it also carries {_BACKEND_START})"
    elif request is not None and handshake is not None:
        what = (
            f"TLS{took} dominates: the SSLRequest answer {request:.1f} ms (mostly "
            f"{_BACKEND_START}) and the handshake {handshake:.1f} ms"
        )
    else:
        what = (
            f"TLS{took} dominates (the SSLRequest answer, which waits for the server to start "
            "a backend process, and the handshake)"
        )
    return f"{what}. {_direct_tls(node, meta, floor)}{_no_resumption(meta)}{prewarm}"


def advise(
    driver: str,
    phase: str,
    node: Mapping[str, Any],
    meta: Mapping[str, Any],
    floor: float | None = None,
) -> str:
    """The advice that fits ``phase`` for ``driver``, using the facts in ``meta``
    (``tls_negotiation``, ``server_version_num``, ``auth_method``, ``scram_iterations``,
    ``transport``, ``versions``)."""
    if phase in ("tls_request", "tls_handshake"):
        detail = _detail(node)
        p50 = _p50(detail.get(phase))
    elif phase == DRIVER_CONNECT:
        own = driver_connect(node)
        p50 = own[0] if own is not None else None
    else:
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
    if phase in ("tls", "tls_request", "tls_handshake"):
        return _advise_tls(phase, node, meta, floor, took, prewarm)
    if phase == "startup":
        return _advise_startup(meta, version, took, prewarm)
    if phase == "driver_init":
        return _advise_driver_init(driver, took, prewarm)
    if phase == "first_query":
        if asyncpg_based:
            what = (
                "asyncpg prepares every statement before running it, so a fresh connection "
                "pays an extra round trip; a pooled connection reuses its prepared "
                "statements (statement_cache_size, default 100). Behind PgBouncer in "
                "transaction mode that keeps working with PgBouncer 1.21+ and "
                "max_prepared_statements set; only an older pooler needs "
                "statement_cache_size=0, which makes every query pay the extra round trip"
            )
        elif driver == "sqlalchemy":
            what = "SQLAlchemy sends BEGIN before the first statement: one more round trip"
        else:
            what = "the first statement on a new backend also loads its catalog caches"
        return f"The first query{took} dominates: {what}." + prewarm
    if phase == DRIVER_CONNECT:
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
            f"The driver's own work while connecting{took}: its connect minus a minimal "
            "client's DNS, TCP, TLS and start-up measured right next to it, per pair (option "
            f"parsing, key derivation, event-loop transport set-up).{scram} It is paid per "
            "connection: reuse connections." + prewarm
        )
    return "Reuse connections." + prewarm


def _advise_startup(meta: Mapping[str, Any], version: int, took: str, prewarm: str) -> str:
    auth = str(meta.get("auth_method") or "")
    if auth == "scram-sha-256":
        iterations = meta.get("scram_iterations")
        scram_ms = meta.get("scram_client_p50_ms")
        cost = f" ({scram_ms:.1f} ms in the protocol client)" if scram_ms is not None else ""
        knob = (
            "lower `scram_iterations` (PostgreSQL 16+; set it, then set the role's password again)"
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
    method = ""
    if auth == "md5":
        method = (
            " md5 password authentication is deprecated since PostgreSQL 18 (setting an md5 "
            "password warns, and support will be removed): move the role to scram-sha-256 "
            "— which costs the client more per connection (PBKDF2 over scram_iterations, "
            "4096 by default), one more reason to reuse connections."
        )
    elif auth == "password":
        method = (
            " The server asks for the password in cleartext (pg_hba.conf method password): "
            "move to scram-sha-256, and connect with sslmode=verify-full and "
            "require_auth=scram-sha-256 so no server can ask for less."
        )
    return (
        f"Start-up{took} dominates: the server starts a backend process for every "
        f"connection and authenticates it ({auth or 'unknown'} here). Reuse server "
        "sessions: a pre-warmed application pool, or a pooler (PgBouncer) in front "
        f"for many processes.{method}" + prewarm
    )


def _advise_driver_init(driver: str, took: str, prewarm: str) -> str:
    if driver in ("sqlalchemy", "sqlalchemy-async"):
        queries = (
            "each prepared by asyncpg first; the asyncpg dialect also sets up json and "
            "jsonb codecs on every new connection, with no catalog query for these "
            "built-in types"
            if driver == "sqlalchemy-async"
            else "and an hstore type lookup"
        )
        return (
            f"The engine initialises the dialect on its first connect{took}: a transaction "
            "with server version, schema, isolation level and standard_conforming_strings "
            f"queries, {queries}. Create the engine once per process (never per request) "
            "and pre-warm its pool, so that only the first connection pays it." + prewarm
        )
    if driver == "asyncpg":
        return (
            f"asyncpg's work after the server is ready{took}. It introspects a type (a "
            "catalog query, cached per connection) the first time a connection meets one "
            "that is not built in — enums, domains, composite types, arrays of them; "
            "set_type_codec() runs its own catalog query every time it is called, so a "
            "pool's init= (which runs for every new connection) pays it on every new "
            "connection rather than once. When the introspection query itself is slow, "
            "the usual cause is JIT compiling it: connect with "
            "server_settings={'jit': 'off'}. Open connections through a pool, once." + prewarm
        )
    return (
        f"psycopg's own set-up after libpq reports the connection ready{took} (building "
        "the connection object): it is small; if it dominates, look at what runs on "
        "connect in the application (connection hooks, type registrations). Open "
        "connections through a pool, once." + prewarm
    )


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
