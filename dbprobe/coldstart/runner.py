"""The cold-start run: preflight, warm-up, interleaved sampling, metrics and verdicts.

Sampling design (so a noisy moment on a shared machine does not land on one driver):

- one untimed warm-up round first (``warmup_rounds``, default 1): every driver and the
  protocol client connect once, so module imports, SQLAlchemy's dialect loading and
  the first use of the TLS library are not counted as connection time;
- then ``samples`` rounds (:func:`schedule`); each round takes one raw TCP connect
  (the floor) to the address the preflight connection reached, then every driver in
  an order rotated by one each round, each driver sample paired with a
  protocol-client sample taken right next to it. Which of the two goes first
  alternates from round to round, for every driver;
- samples run back to back: on these machines an idle gap of 10 ms or more makes the
  next connect 3-5 times slower, so no sleep is put between samples unless asked
  (``idle_ms``: a pause before every timed connection, driver and protocol client
  alike, to measure the "first connection after a quiet spell" case). The gap before
  every timed connection is recorded, and whether it followed a pause
  (``<driver>._meta.pairing``; unplanned gaps in ``_meta.sampling.idle_gaps``);
- the garbage collector is paused during the timed rounds and run every 10 rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from dbprobe.analysis.coldstart_verdicts import (
    CONNECT_GAP,
    ESTABLISH_PHASES,
    PROTOCOL_DETAIL,
    Thresholds,
    Verdict,
    additivity,
    evaluate,
    paired_gap,
)
from dbprobe.coldstart import process as process_mod
from dbprobe.coldstart import protocol, wire
from dbprobe.coldstart.drivers import DRIVERS, PROBES, DriverProbe, DriverTimings, WarmPool
from dbprobe.coldstart.params import ConnectParams, resolve
from dbprobe.connect import connect_error
from dbprobe.errors import ConnectError, DbprobeError, UsageError
from dbprobe.report.model import Distribution, Finding
from dbprobe.urls import DatabaseTarget

log = logging.getLogger("dbprobe.coldstart")

T = TypeVar("T")
ProgressFn = Callable[[str, int, int], None]
GAP_WARN_MS = 10.0


@dataclasses.dataclass(frozen=True)
class ColdStartOptions:
    """What to measure and how much.

    drivers: any of ``psycopg``, ``asyncpg``, ``sqlalchemy``, ``sqlalchemy-async``.
    samples: cold connections per driver (default 30); warmup_rounds: untimed rounds
    first (default 1). warm: also measure pools (default on): ``pool_rounds`` pools per
    driver opened at ``pool_size`` (defaults 3 and 4), and ``samples`` warm checkouts.
    process: also measure fresh processes (default off): ``process_samples`` per driver
    (default 5), importing ``imports`` first, after one untimed process per driver
    (``process_warmup``: warms the OS page cache). idle_ms: a pause before every timed cold
    connection (default 0: back to back). connect_timeout: seconds (default: the URL's,
    else 10). thresholds: when a cold start is slow.
    """

    drivers: tuple[str, ...] = DRIVERS
    samples: int = 30
    warmup_rounds: int = 1
    warm: bool = True
    pool_size: int = 4
    pool_rounds: int = 3
    process: bool = False
    process_samples: int = 5
    process_warmup: bool = True
    imports: tuple[str, ...] = ()
    idle_ms: float = 0.0
    connect_timeout: float | None = None
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        unknown = [d for d in self.drivers if d not in PROBES]
        if unknown or not self.drivers:
            given = ", ".join(unknown) or "(none)"
            raise UsageError(f"unknown driver {given} (choose from {', '.join(DRIVERS)})")
        if len(set(self.drivers)) != len(self.drivers):
            raise UsageError("each driver may be given once")
        if self.samples < 1 or self.warmup_rounds < 0:
            raise UsageError("samples must be at least 1 and warm-up rounds at least 0")
        if self.warm and (self.pool_size < 1 or self.pool_rounds < 1):
            raise UsageError("pool size and pool rounds must be at least 1")
        if self.process and self.process_samples < 1:
            raise UsageError("process samples must be at least 1")
        if self.idle_ms < 0 or math.isnan(self.idle_ms):
            raise UsageError("idle time must be zero or more milliseconds")
        if self.imports and not self.process:
            raise UsageError("--import needs --process (modules are imported in a fresh process)")


@dataclasses.dataclass(frozen=True)
class ColdStartResult:
    """``metrics`` goes under ``report.metrics["coldstart"]``; findings are
    ``slow-cold-start``."""

    metrics: dict[str, Any]
    findings: tuple[Finding, ...]
    verdicts: tuple[Verdict, ...]
    server_version: str
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Preflight:
    facts: protocol.HandshakeFacts
    server_version_num: int
    tls_session_resumption: bool | None
    family: int
    sockaddr: object


@dataclasses.dataclass(frozen=True)
class PairStep:
    """One driver's turn in a round: its sample and the paired protocol-client sample,
    ``first`` (``protocol`` or ``driver``) going first."""

    driver: str
    first: str


@dataclasses.dataclass(frozen=True)
class Round:
    """One round of the sampling plan. Warm-up rounds (untimed, ``number`` counting
    from 0 among them) come before the timed rounds (``number`` 0, 1, ...)."""

    warmup: bool
    number: int
    steps: tuple[PairStep, ...]


def schedule(drivers: Sequence[str], rounds: int, warmup_rounds: int = 0) -> list[Round]:
    """The order of the samples: ``warmup_rounds`` untimed rounds first (every driver
    once, protocol client first), then ``rounds`` timed rounds. In timed round ``r``
    the drivers are rotated left by ``r`` (over ``len(drivers)`` rounds every driver
    takes every position once); the protocol client goes first in even rounds and the
    driver in odd rounds, so every driver alternates whatever the number of drivers."""
    plan = [
        Round(True, w, tuple(PairStep(name, "protocol") for name in drivers))
        for w in range(warmup_rounds)
    ]
    for r in range(rounds):
        first = "protocol" if r % 2 == 0 else "driver"
        plan.append(Round(False, r, tuple(PairStep(name, first) for name in rotate(drivers, r))))
    return plan


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` rotated left by ``by`` (round-robin order of round ``by``)."""
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


def explain_failure(exc: BaseException, params: ConnectParams, who: str = "") -> DbprobeError:
    """One clear line for any failure while connecting (driver, protocol client, OS)."""
    if isinstance(exc, DbprobeError):
        return exc
    exc = _unwrap(exc)
    target = DatabaseTarget(host=params.host, port=params.port, user=params.user)
    if isinstance(exc, protocol.NoAnswerError):
        error = ConnectError(str(exc))
    elif isinstance(exc, wire.ProtocolViolation):
        error = ConnectError(f"{params.where} does not speak the PostgreSQL protocol ({exc})")
    elif isinstance(exc, protocol.TlsNegotiationError):
        error = connect_error(exc, target)
        if "closed a direct TLS" in str(exc):
            error = ConnectError(str(exc))
    elif isinstance(exc, wire.AuthenticationError) and "no password" not in str(exc):
        error = ConnectError(f"authentication with {params.where} failed: {exc}")
    else:
        error = connect_error(exc, target)
    if who:
        return type(error)(f"{who}: {error}")
    return error


def _unwrap(exc: BaseException) -> BaseException:
    """The driver's own exception inside SQLAlchemy's wrappers: ``DBAPIError.orig``,
    and for the asyncpg dialect the asyncpg exception its adapted error was raised
    from."""
    for _ in range(3):
        orig = getattr(exc, "orig", None)
        if isinstance(orig, BaseException):
            exc = orig
        elif type(exc).__module__.startswith("sqlalchemy") and exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    return exc


def _guard(who: str, params: ConnectParams, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (KeyboardInterrupt, DbprobeError):
        raise
    except Exception as exc:
        raise explain_failure(exc, params, who) from exc


def _preflight(params: ConnectParams) -> _Preflight:
    """One untimed connection: can we connect at all, and what does the server say."""
    result = _guard("", params, lambda: protocol.connect(params))
    conn = result.connection
    try:
        rows = _guard("", params, lambda: conn.simple_query("SHOW server_version_num"))
    finally:
        conn.close()
    try:
        version_num = int(rows[0][0] or b"0")
    except (IndexError, ValueError):
        version_num = 0
    resumption: bool | None = None
    if result.facts.tls_version:
        resumption = _probe_resumption(params)
    return _Preflight(result.facts, version_num, resumption, result.family, result.sockaddr)


def _probe_resumption(params: ConnectParams) -> bool | None:
    """Offer the session of one TLS connection to the next: was it resumed?"""
    ctx = protocol.tls_context(params)
    first = _guard("", params, lambda: protocol.connect(params, context=ctx))
    with contextlib.suppress(Exception):
        first.connection.simple_query("SELECT 1")  # lets TLS 1.3 tickets arrive, if any
    session = first.connection.sock.session if hasattr(first.connection.sock, "session") else None
    first.connection.close()
    if session is None:
        return None
    second = _guard("", params, lambda: protocol.connect(params, context=ctx, tls_session=session))
    second.connection.close()
    return bool(second.facts.tls_session_reused)


class GcAccount:
    """Counts the garbage collections while the collector is paused: the planned ones
    (:meth:`collect`) apart from any other (none, while the pause holds)."""

    def __init__(self) -> None:
        self.planned = 0
        self.started = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started += 1

    def collect(self) -> None:
        """A planned full collection."""
        self.planned += 1
        gc.collect()

    def counts(self) -> dict[str, int]:
        return {"planned": self.planned, "unplanned": self.started - self.planned}


@contextlib.contextmanager
def _gc_paused() -> Iterator[GcAccount]:
    """The garbage collector paused (after one full collection) for the block; the
    collections that still happen are counted."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    account = GcAccount()
    gc.callbacks.append(account._callback)
    try:
        yield account
    finally:
        gc.callbacks.remove(account._callback)
        if was_enabled:
            gc.enable()


#: third-party pool loggers: their warnings (a failed connection, a retry) would reach
#: stderr as extra lines; a failure reaches the user once, as the run's error
POOL_LOGGERS = ("psycopg.pool", "asyncpg.pool", "sqlalchemy.pool")


class _ToDebug(logging.Filter):
    """Drops a record from its own logger and logs it at DEBUG on dbprobe's."""

    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("%s: %s", record.name, record.getMessage())
        return False


@contextlib.contextmanager
def quiet_pool_loggers(names: Sequence[str] = POOL_LOGGERS) -> Iterator[None]:
    """While the block runs, the pools' own log records go to ``dbprobe.coldstart`` at
    DEBUG (``--debug`` shows them) instead of stderr."""
    drop = _ToDebug()
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@contextlib.contextmanager
def _event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@dataclasses.dataclass(frozen=True)
class SampleGap:
    """The idle time before one timed connection: ms since the previous timed
    connection (or the floor) ended, ``None`` for the first; ``after_pause``: a
    planned pause (``idle_ms``, a garbage collection) came right before it."""

    gap_ms: float | None
    after_pause: bool

    def to_dict(self) -> dict[str, Any]:
        gap = None if self.gap_ms is None else round(self.gap_ms, 3)
        return {"gap_before_ms": gap, "after_pause": self.after_pause}

    @property
    def after_gap(self) -> bool:
        """Followed a pause, or an idle gap long enough to slow a connect."""
        return self.after_pause or (self.gap_ms is not None and self.gap_ms >= GAP_WARN_MS)


class _GapClock:
    """Time between the end of one timed connection and the start of the next."""

    def __init__(self) -> None:
        self.last_end: int | None = None
        self.paused = False
        self.gaps: list[float] = []  # unplanned gaps only

    def pause(self, seconds: float = 0.0) -> None:
        """A planned pause (sleeps ``seconds``): the next gap is not an idle gap."""
        if seconds > 0:
            time.sleep(seconds)
        self.paused = True

    def start(self) -> SampleGap:
        now = time.perf_counter_ns()
        gap = None if self.last_end is None else (now - self.last_end) / 1e6
        after_pause, self.paused = self.paused, False
        if gap is not None and not after_pause:
            self.gaps.append(gap)
        return SampleGap(gap, after_pause)

    def end(self) -> None:
        self.last_end = time.perf_counter_ns()


def run(
    target: DatabaseTarget,
    options: ColdStartOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    environ: dict[str, str] | None = None,
) -> ColdStartResult:
    """Measure cold-start latency of each driver against ``target``.

    Raises :class:`ConnectError` (one line) when the server cannot be reached or
    refuses us, :class:`UsageError` for bad options. Every connection is closed when
    it returns or raises.
    """
    opts = options or ColdStartOptions()
    params = resolve(target, environ=environ, connect_timeout=opts.connect_timeout)
    say = progress or (lambda message, done, total: None)
    started = time.perf_counter()
    load_before = _loadavg()
    say("preflight connection", 0, 1)
    pre = _preflight(params)
    say("preflight connection", 1, 1)
    if opts.process and opts.imports:
        # before any measurement: a module that cannot be imported is bad input
        say("checking --import modules in a fresh process", 0, 1)
        process_mod.check_imports(opts.imports)
    names = list(opts.drivers)
    cold: dict[str, list[DriverTimings]] = {n: [] for n in names}
    paired: dict[str, list[protocol.ProtocolTimings]] = {n: [] for n in names}
    pairing: dict[str, list[tuple[str, dict[str, SampleGap]]]] = {n: [] for n in names}
    facts: dict[str, protocol.HandshakeFacts] = {}
    floor: list[float] = []
    clock = _GapClock()
    warm_checkout: dict[str, list[float]] = {n: [] for n in names}
    pool_ready: dict[str, list[float]] = {n: [] for n in names}
    processes: dict[str, list[process_mod.ProcessTimings]] = {n: [] for n in names}
    gc_counts: dict[str, int] = {}
    with quiet_pool_loggers(), _event_loop() as loop:
        probes: dict[str, DriverProbe] = {n: PROBES[n](params, loop) for n in names}

        def protocol_sample(name: str) -> SampleGap:
            if opts.idle_ms:
                clock.pause(opts.idle_ms / 1000)
            gap = clock.start()
            timings, f = _guard("protocol client", params, lambda: protocol.measure(params))
            clock.end()
            paired[name].append(timings)
            facts[name] = f
            return gap

        def driver_sample(name: str) -> SampleGap:
            if opts.idle_ms:
                clock.pause(opts.idle_ms / 1000)
            gap = clock.start()
            timings = _guard(name, params, probes[name].cold)
            clock.end()
            cold[name].append(timings)
            return gap

        plan = schedule(names, opts.samples, opts.warmup_rounds)
        total_warmup = opts.warmup_rounds * len(names)
        for warmup in (rnd for rnd in plan if rnd.warmup):
            for i, step in enumerate(warmup.steps):
                say("warm-up", warmup.number * len(names) + i, total_warmup)
                _guard("protocol client", params, lambda: protocol.measure(params))
                _guard(step.driver, params, probes[step.driver].cold)
        with _gc_paused() as collections:
            for rnd in (rnd for rnd in plan if not rnd.warmup):
                r = rnd.number
                say("cold connections", r, opts.samples)
                floor.append(
                    _guard(
                        "tcp floor",
                        params,
                        lambda: protocol.tcp_floor_ms(
                            pre.family, pre.sockaddr, params.connect_timeout
                        ),
                    )
                )
                clock.end()
                for step in rnd.steps:
                    gaps: dict[str, SampleGap] = {}
                    if step.first == "protocol":
                        gaps["protocol"] = protocol_sample(step.driver)
                        gaps["driver"] = driver_sample(step.driver)
                    else:
                        gaps["driver"] = driver_sample(step.driver)
                        gaps["protocol"] = protocol_sample(step.driver)
                    pairing[step.driver].append((step.first, gaps))
                if r % 10 == 9:
                    collections.collect()
                    clock.pause()  # a planned pause, not an idle gap
            gc_counts = collections.counts()
            say("cold connections", opts.samples, opts.samples)
            if opts.warm:
                _warm_rounds(opts, params, probes, names, warm_checkout, pool_ready, say)
        if opts.process:
            _process_rounds(opts, params, names, processes, say)
    load_after = _loadavg()
    metrics = _build_metrics(
        opts, params, pre, probes, names, cold, paired, pairing, facts, floor, clock,
        warm_checkout, pool_ready, processes, load_before, load_after, gc_counts,
    )  # fmt: skip
    verdicts, findings = evaluate(metrics, opts.thresholds)
    for verdict in verdicts:
        node = metrics.get(verdict.driver)
        if isinstance(node, dict):
            key = "verdict" if verdict.scope == "connection" else "process_verdict"
            node["_meta"][key] = verdict.to_dict()
    metrics["_meta"]["duration_s"] = round(time.perf_counter() - started, 3)
    notes = _notes(opts, params, pre, clock)
    metrics["_meta"]["notes"] = list(notes)
    return ColdStartResult(
        metrics=metrics,
        findings=tuple(findings),
        verdicts=tuple(verdicts),
        server_version=pre.facts.server_version.split(" ")[0],
        notes=tuple(notes),
    )


def _warm_rounds(
    opts: ColdStartOptions,
    params: ConnectParams,
    probes: dict[str, DriverProbe],
    names: list[str],
    warm_checkout: dict[str, list[float]],
    pool_ready: dict[str, list[float]],
    say: ProgressFn,
) -> None:
    per_round = math.ceil(opts.samples / opts.pool_rounds)
    for r in range(opts.pool_rounds):
        say("warm pools", r, opts.pool_rounds)
        pools: dict[str, WarmPool] = {}
        try:
            for name in rotate(names, r):
                ready, pool = _guard(
                    f"{name} pool",
                    params,
                    functools.partial(probes[name].open_pool, opts.pool_size),
                )
                pools[name] = pool
                pool_ready[name].append(ready)
            for name in names:  # every pooled connection serves once, untimed
                for _ in range(opts.pool_size):
                    _guard(f"{name} pool", params, pools[name].checkout_query)
            for k in range(per_round):
                for name in rotate(names, r + k):
                    if len(warm_checkout[name]) < opts.samples:
                        warm_checkout[name].append(
                            _guard(f"{name} pool", params, pools[name].checkout_query)
                        )
        finally:
            for name, pool in pools.items():
                try:
                    pool.close()
                except Exception as exc:  # keep closing the others
                    log.warning("closing the %s pool failed: %r", name, exc)
    say("warm pools", opts.pool_rounds, opts.pool_rounds)


def _process_rounds(
    opts: ColdStartOptions,
    params: ConnectParams,
    names: list[str],
    processes: dict[str, list[process_mod.ProcessTimings]],
    say: ProgressFn,
) -> None:
    warmups = names if opts.process_warmup else []
    total = opts.process_samples * len(names) + len(warmups)
    done = 0
    for name in warmups:  # untimed: warms the page cache for the interpreter and modules
        say("fresh processes", done, total)
        process_mod.measure(params, name, opts.imports)
        done += 1
    for r in range(opts.process_samples):
        for name in rotate(names, r):
            say("fresh processes", done, total)
            processes[name].append(process_mod.measure(params, name, opts.imports))
            done += 1
    say("fresh processes", total, total)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _dist(values: Sequence[float | None]) -> Distribution | None:
    present = [v for v in values if v is not None]
    return Distribution.of(present) if present else None


def _build_metrics(
    opts: ColdStartOptions,
    params: ConnectParams,
    pre: _Preflight,
    probes: dict[str, DriverProbe],
    names: list[str],
    cold: dict[str, list[DriverTimings]],
    paired: dict[str, list[protocol.ProtocolTimings]],
    pairing: dict[str, list[tuple[str, dict[str, SampleGap]]]],
    facts: dict[str, protocol.HandshakeFacts],
    floor: list[float],
    clock: _GapClock,
    warm_checkout: dict[str, list[float]],
    pool_ready: dict[str, list[float]],
    processes: dict[str, list[process_mod.ProcessTimings]],
    load_before: list[float] | None,
    load_after: list[float] | None,
    gc_counts: dict[str, int],
) -> dict[str, Any]:
    f0 = pre.facts
    not_applicable: dict[str, str] = {}
    if not params.host_is_name:
        not_applicable["dns"] = (
            "unix socket" if params.transport == "unix" else "the host is an IP address"
        )
    if not params.tls_wanted:
        not_applicable["tls"] = (
            "unix socket (no TLS)"
            if params.transport == "unix"
            else f"sslmode={params.sslmode} (no TLS negotiation on the first attempt)"
        )
    server = {
        "server_version": f0.server_version,
        "server_version_num": pre.server_version_num,
        "transport": params.transport,
        "address": f0.address,
        "sslmode": params.sslmode,
        "sslnegotiation": params.sslnegotiation,
        "tls_negotiation": f0.tls_negotiation,
        "tls_version": f0.tls_version,
        "tls_cipher": f0.tls_cipher,
        "alpn": f0.alpn,
        "tls_session_resumption": pre.tls_session_resumption,
        "auth_method": f0.auth_method,
        "scram_iterations": f0.scram_iterations,
    }
    all_protocol = [t for n in names for t in paired[n]]
    scram = _dist([t.scram_client for t in all_protocol])
    tree: dict[str, Any] = {
        "tcp_floor": {
            "connect": Distribution.of(floor),
            "_meta": {
                "source": "raw socket connect (socket creation, connect, TCP_NODELAY: timed "
                "like the protocol client's tcp phase) to the address the preflight "
                "connection reached; no DNS, no PostgreSQL protocol; one per round. "
                "Untimed: waiting for the server to close its end, so the backend it "
                "started has exited before the round's timed connections",
                "address": f0.address,
                "transport": params.transport,
            },
        }
    }
    proto_node: dict[str, Any] = {}
    for phase in ("dns", "tcp", "tls", "startup", "first_query", "total"):
        d = _dist([getattr(t, phase) for t in all_protocol])
        if d is not None:
            proto_node[phase] = d
    detail: dict[str, Any] = {}
    for phase in PROTOCOL_DETAIL:
        d = _dist([getattr(t, phase) for t in all_protocol])
        if d is not None:
            detail[phase] = d
    proto_node["detail"] = detail
    proto_node["_meta"] = {
        "source": "dbprobe's protocol client: every figure measured step by step on one "
        "blocking socket (see docs/coldstart.md)",
        "samples_from": "the samples paired with every driver, together",
        **server,
        "not_applicable": not_applicable,
    }
    tree["protocol"] = proto_node
    for name in names:
        probe = probes[name]
        node: dict[str, Any] = {}
        pairs = paired[name]
        source: dict[str, str] = {}
        for phase in ESTABLISH_PHASES:
            d = _dist([getattr(t, phase) for t in pairs])
            if d is not None:
                node[phase] = d
                source[phase] = "protocol"
        for phase in ("connect", "driver_init", "first_query", "total"):
            node[phase] = Distribution.of([getattr(t, phase) for t in cold[name]])
            source[phase] = "driver"
        establish = [sum(getattr(t, p) or 0.0 for p in ESTABLISH_PHASES) for t in pairs]
        gap = paired_gap([t.connect for t in cold[name]], establish)
        node_detail: dict[str, Any] = {}
        for phase in PROTOCOL_DETAIL:
            d = _dist([getattr(t, phase) for t in pairs])
            if d is not None:
                node_detail[phase] = d
                source[f"detail.{phase}"] = "protocol"
        node_detail[CONNECT_GAP] = gap
        source[f"detail.{CONNECT_GAP}"] = "driver connect - paired protocol establishment"
        node["detail"] = node_detail
        add = additivity(node)
        first = [f for f, _gaps in pairing[name]]
        meta: dict[str, Any] = {
            "source": source,
            "covers": dict(probe.covers),
            "not_applicable": not_applicable,
            "paired_with": "protocol",
            "samples": len(cold[name]),
            "connect_gap_p50_ms": round(gap.p50, 3),
            "connect_gap": {
                "p50_ms": round(gap.p50, 3),
                "p95_ms": round(gap.p95, 3),
                "pairs": gap.n,
                "what": "driver connect minus the paired protocol-client DNS+TCP+TLS+start-up, "
                "per pair (the distribution: detail.connect_gap)",
            },
            "phase_sum": add.to_dict() if add else None,
            "pairing": {
                "protocol_first": first.count("protocol"),
                "driver_first": first.count("driver"),
                "after_gap": {
                    who: sum(1 for _f, gaps in pairing[name] if gaps[who].after_gap)
                    for who in ("protocol", "driver")
                },
                "rounds": [
                    {"first": f, **{who: g.to_dict() for who, g in gaps.items()}}
                    for f, gaps in pairing[name]
                ],
            },
            "versions": probe.versions(),
            **server,
            "scram_client_p50_ms": None if scram is None else round(scram.p50, 3),
        }
        if name in facts:
            # what the paired protocol client negotiated with the same settings; that
            # the driver used TLS too is what a hostssl-only pg_hba rule proves
            meta["tls_negotiation"] = facts[name].tls_negotiation
            source["tls_negotiation"] = "protocol"
        if name in ("asyncpg", "sqlalchemy-async") and params.asyncpg_ignored():
            meta["not_given_to_asyncpg"] = params.asyncpg_ignored()
        if warm_checkout[name]:
            node["warm"] = {
                "checkout": Distribution.of(warm_checkout[name]),
                "pool_ready": Distribution.of(pool_ready[name]),
                "min_size": opts.pool_size,
                "pool": probe.pool_kind,
                "opens": probe.pool_opens,
            }
            source["warm"] = "driver (pool)"
        if processes[name]:
            pnode: dict[str, Any] = {
                phase: Distribution.of([t.phases()[phase] for t in processes[name]])
                for phase in (*process_mod.PROCESS_PHASES, "total")
            }
            pnode["_meta"] = {
                "source": "a fresh interpreter that stamps its own phases on the monotonic "
                "clock; interpreter = from the parent's spawn",
                "python": sys.executable,
                "imports": list(opts.imports),
                "cwd": os.getcwd(),
            }
            node["process"] = pnode
            source["process"] = "child process"
        node["_meta"] = meta
        tree[name] = node
    gaps = clock.gaps
    tree["_meta"] = {
        "sampling": {
            "samples": opts.samples,
            "warmup_rounds": opts.warmup_rounds,
            "order": "round-robin: drivers rotated by one each round; each driver sample "
            "paired with a protocol-client sample; the protocol client goes first in even "
            "rounds, the driver in odd rounds (<driver>._meta.pairing)",
            "idle_ms": opts.idle_ms,
            "idle_gaps": {
                "max_ms": round(max(gaps), 3) if gaps else None,
                "p50_ms": round(Distribution.of(gaps).p50, 3) if gaps else None,
                f"over_{GAP_WARN_MS:g}ms": sum(1 for g in gaps if g >= GAP_WARN_MS),
                "n": len(gaps),
            },
            "gc": "paused during timed rounds, collected every 10 rounds",
            "gc_collections": gc_counts,
            "pool_rounds": opts.pool_rounds if opts.warm else 0,
            "process_samples": opts.process_samples if opts.process else 0,
        },
        "thresholds": dataclasses.asdict(opts.thresholds),
        "load_average": {"before": load_before, "after": load_after},
        "cpus": os.cpu_count(),
        "drivers": names,
        **server,
    }
    return tree


def _notes(
    opts: ColdStartOptions, params: ConnectParams, pre: _Preflight, clock: _GapClock
) -> list[str]:
    notes = [
        "cold start: dns/tcp/tls/startup come from dbprobe's protocol client (paired samples "
        "next to each driver's); connect/driver_init/first_query/total come from the driver "
        "itself (see metrics.coldstart.<driver>._meta.source)",
    ]
    over = sum(1 for g in clock.gaps if g >= GAP_WARN_MS)
    if over and not opts.idle_ms:
        notes.append(
            f"{over} of {len(clock.gaps)} gaps between timed connections were 10 ms or more "
            "(a busy machine?): connects right after an idle gap run slower"
        )
    facts = pre.facts
    if facts.tls_negotiation == "sslrequest-refused":
        notes.append(
            "sslmode=prefer against a server without TLS: no connection is encrypted, and "
            "every one pays a refused SSLRequest round trip (metrics tls). sslmode=disable "
            "saves only that round trip; turning TLS on at the server and connecting with "
            "sslmode=verify-full protects the session"
        )
    unverified = params.sslmode not in ("verify-ca", "verify-full")
    if facts.auth_method == "password":
        if facts.tls_version:
            where = "inside TLS"
        elif params.transport == "unix":
            where = "over a unix socket"
        else:
            where = "WITHOUT TLS (allowed by require_auth=password)"
        notes.append(
            f"security: the server asks for the password in cleartext and it was sent {where}"
            + (
                "; the server's certificate was not verified, so whoever answers gets it"
                if facts.tls_version and unverified
                else ""
            )
            + ". Use scram-sha-256 in pg_hba.conf, and on the client sslmode=verify-full with "
            "require_auth=scram-sha-256 (libpq 16+), so no server can ask for less"
        )
    elif facts.auth_method == "md5":
        notes.append(
            "security: md5 password authentication (deprecated since PostgreSQL 18); move "
            "the role to scram-sha-256 and set require_auth=scram-sha-256 on the client"
        )
    return notes
