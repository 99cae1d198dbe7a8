"""Run the pool stress plan on each requested pool and turn it into a report.

Order of work: connect a monitor, read the server's connection budget, refuse plans that
would take more than 80% of its free slots (unless allowed), then for each pool in turn:
open, warm up, steps, open-loop rates, spike, soak, close; prove on the server that no
session of the pool is left; judge; report. The pools run one after another, so at most
one pool's capacity (plus the monitor) is open at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from dbprobe.analysis.pool_verdicts import PoolVerdicts, judge_pool, pool_findings
from dbprobe.connect import connect_error
from dbprobe.errors import ConnectError, DbprobeError, UsageError
from dbprobe.pool import _async, _sync
from dbprobe.pool.config import ASYNC_KINDS, POOL_CLASSES, StressConfig, Workload, parse_pools
from dbprobe.pool.control import ProgressFn, RunControl
from dbprobe.pool.failures import FATAL_KINDS, classify_acquire, classify_run, is_timeout
from dbprobe.pool.results import PoolRun
from dbprobe.pool.server import ServerFacts, ServerMonitor
from dbprobe.report.model import Finding, Report, Target
from dbprobe.rules import RULES
from dbprobe.urls import DatabaseTarget, mask_secrets, parse_url

log = logging.getLogger("dbprobe.pool")

ADAPTERS: dict[str, type[Any]] = {
    "sqlalchemy": _sync.SqlalchemyAdapter,
    "psycopg": _sync.PsycopgAdapter,
    "sqlalchemy-async": _async.SqlalchemyAsyncAdapter,
    "psycopg-async": _async.PsycopgAsyncAdapter,
    "asyncpg": _async.AsyncpgAdapter,
}

_DRIVER_LOGGERS = ("psycopg.pool", "asyncpg", "asyncpg.pool", "sqlalchemy.pool")
CENSORED_SHARE = 0.01
"""An open-loop step with more than this share of its due requests unserved at the
window's end reports its response percentiles as lower bounds (``≥``)."""
_CONNECT_KINDS = FATAL_KINDS | {"too-many-clients", "authentication-failed", "does-not-exist"}


@contextlib.contextmanager
def quiet_driver_logs() -> Iterator[None]:
    """Drivers log every failed reconnect while a pool is overloaded or its server gone;
    the report counts those. Keep them off stderr unless dbprobe logs at debug level."""
    if logging.getLogger("dbprobe").getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    saved = {name: logging.getLogger(name).level for name in _DRIVER_LOGGERS}
    for name in _DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def application_name(kind: str, token: str) -> str:
    """``dbprobe-pool-<kind>-<token>``: every pooled session of one run is findable."""
    return f"dbprobe-pool-{kind}-{token}"


def check_budget(facts: ServerFacts, config: StressConfig) -> None:
    """Refuse a plan that would take more than 80% of the server's free slots."""
    if config.allow_server_exhaustion:
        return
    if config.capacity > facts.safe_limit:
        raise UsageError(
            f"pool capacity {config.capacity} (size {config.size} + overflow "
            f"{config.overflow}) exceeds 80% of the server's {facts.free} free connection "
            f"slots (max_connections {facts.max_connections} - {facts.superuser_reserved} "
            f"superuser-reserved - {facts.reserved} reserved - {facts.client_backends} in "
            "use); lower --size/--overflow or pass --allow-server-exhaustion"
        )


def lost_cause(exc: BaseException, target: DatabaseTarget) -> str:
    """One line for the failure that revealed a server gone mid-run: a connection that
    was open and failed is "connection lost" (asyncpg's "cannot switch to state …;
    another operation is in progress" is one), not "cannot connect"."""
    if classify_run(exc) == "connection-lost":
        return f"connection to {target.masked()} lost ({type(exc).__name__})"
    return str(connect_error(exc, target))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_secrets(text[0] if text else type(exc).__name__)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after every pool was closed; ``done`` holds one line per pool
    finished and per step measured before it, for the command to show."""

    def __init__(self, done: Sequence[str]) -> None:
        super().__init__("interrupted")
        self.done = list(done)


def _step_lines(kind: str, run: PoolRun) -> list[str]:
    lines = []
    for step in run.steps:
        what = (
            f"concurrency {step.concurrency}"
            if step.offered_rate is None
            else f"open loop {step.offered_rate:g}/s"
        )
        lines.append(
            f"{kind} {what}: {step.throughput_qps:,.0f} q/s, acquire p99 "
            f"{step.acquire_wait.p99:.2f} ms, response p99 {step.response_time.p99:.2f} ms, "
            f"{step.timeouts} timeouts (n={step.completed})"
        )
    return lines


def run_pool(
    kind: str,
    target: DatabaseTarget,
    config: StressConfig,
    workload: Workload,
    monitor: ServerMonitor,
    control: RunControl,
    app_name: str,
    progress: ProgressFn | None = None,
) -> PoolRun:
    """Drive one pool through the plan (threads or asyncio by its kind)."""
    adapter = ADAPTERS[kind](target, config, workload, app_name)
    driver: _async.AsyncDriver | _sync.Driver | None = None
    try:
        if kind in ASYNC_KINDS:
            driver = _async.AsyncDriver(adapter, config, monitor, control, progress)
            return asyncio.run(driver.drive())
        driver = _sync.Driver(adapter, config, monitor, control, progress)
        return driver.drive()
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(_step_lines(kind, driver.result) if driver else []) from None
    except DbprobeError:
        raise
    except Exception as exc:
        failure = classify_acquire(exc)
        if is_timeout(failure):
            raise ConnectError(
                f"{kind} pool: no connection within {config.connect_timeout_s:g}s while "
                "opening the pool"
            ) from None
        if failure in _CONNECT_KINDS or isinstance(exc, OSError):
            raise ConnectError(f"{kind} pool: {connect_error(exc, target)}") from None
        raise UsageError(
            f"the workload failed on the {kind} pool before the run started: {_one_line(exc)}"
        ) from None


def _pool_metrics(run: PoolRun, config: StressConfig, workload: Workload) -> dict[str, Any]:
    return {
        "class": POOL_CLASSES[run.kind],
        "application_name": run.application_name,
        "size": config.size,
        "overflow": config.overflow,
        "capacity": run.capacity,
        "timeout_s": config.timeout_s,
        "think_ms": config.think_ms,
        "autocommit": config.autocommit,
        "workload": workload.describe(),
        "warmup": run.warmup.to_metrics() if run.warmup else None,
        "steps": [s.to_metrics() for s in run.steps],
        "spike": run.spike.to_metrics() if run.spike else None,
        "soak": run.soak.to_metrics() if run.soak else None,
        "stats": run.stats,
        "checked_out_at_end": run.checked_out_at_end,
        "idle_in_transaction_at_end": run.idle_in_transaction_at_end,
        "stopped_early": run.stopped_early or run.aborted,
    }


def _leak_findings(run: PoolRun, leftover: int | None) -> list[Finding]:
    out = []
    if run.checked_out_at_end:
        out.append(
            RULES["connection-leak"].finding(
                f"{run.checked_out_at_end} connection(s) of the {run.kind} pool were still "
                "checked out when the run ended",
                "every checkout must be returned: use the pool's context manager "
                "(with engine.connect(), with pool.connection(), async with pool.acquire()); "
                "find where with dbprobe.pool.track_leaks",
                count=run.checked_out_at_end,
                fingerprint=f"connection-leak:{run.kind}:checked-out",
                evidence={"checked_out": run.checked_out_at_end},
            )
        )
    if run.idle_in_transaction_at_end:
        out.append(
            RULES["connection-leak"].finding(
                f"{run.idle_in_transaction_at_end} session(s) of the {run.kind} pool were "
                "left idle in transaction on the server",
                "end every transaction (commit or rollback) before the connection goes back "
                "to the pool; set idle_in_transaction_session_timeout as a safety net",
                count=run.idle_in_transaction_at_end,
                fingerprint=f"connection-leak:{run.kind}:idle-in-transaction",
                evidence={"idle_in_transaction": run.idle_in_transaction_at_end},
            )
        )
    if leftover:
        out.append(
            RULES["connection-leak"].finding(
                f"{leftover} server session(s) of the {run.kind} pool were still open after "
                "the pool was closed",
                "connections checked out when the pool closed are only closed when "
                "returned: return every connection before closing the pool",
                count=leftover,
                fingerprint=f"connection-leak:{run.kind}:after-close",
                evidence={"sessions_after_close": leftover},
            )
        )
    return out


def _summary_line(kind: str, run: PoolRun, verdicts: PoolVerdicts) -> str:
    closed = [s for s in run.steps if s.offered_rate is None and s.completed]
    if not closed:
        return f"{kind}: no step completed"
    peak = max(closed, key=lambda s: s.throughput_qps)
    parts = [
        f"{kind}: peak {peak.throughput_qps:,.0f} q/s at concurrency {peak.concurrency} "
        f"(client CPU {peak.client_cpu:.2f} core)"
    ]
    knee = verdicts.knee
    if knee.concurrency is not None:
        parts.append(f"knee at {knee.concurrency} ({knee.limited_by}-limited)")
    else:
        parts.append("no knee")
    if verdicts.sizing.recommended_size is not None:
        parts.append(f"size for {verdicts.sizing.recommended_size} connections")
    exhaustion = verdicts.exhaustion
    if exhaustion.exhausted and exhaustion.first_offered_rate is not None:
        parts.append(f"exhausted at {exhaustion.first_offered_rate:g} requests/s offered")
    elif exhaustion.exhausted:
        parts.append(f"exhausted from concurrency {exhaustion.first_concurrency}")
    for step in run.steps:
        if step.offered_rate is None:
            continue
        due = step.completed + step.censored
        if step.censored and step.censored > CENSORED_SHARE * due:
            p99 = (
                f"p99 ≥ {step.response_time.p99:.1f} ms from the scheduled start "
                f"({step.censored} of {due} requests due were not served by the window's "
                "end and count at their wait so far)"
            )
        else:
            p99 = f"p99 {step.response_time.p99:.1f} ms from the scheduled start"
        parts.append(
            f"open loop {step.offered_rate:g}/s: {step.throughput_qps:,.0f}/s served, "
            f"response {p99}, backlog {step.backlog}"
        )
    if run.spike is not None:
        spike = run.spike
        rec = spike.recover_ms
        if rec is None:
            parts.append(f"spike of {spike.requests}: did not recover")
        else:
            drain = "-" if spike.drain_ms is None else f"{spike.drain_ms:.0f}"
            probe = "-" if spike.probe_recover_ms is None else f"{spike.probe_recover_ms:.0f}"
            parts.append(
                f"spike of {spike.requests}: recovered in {rec:.0f} ms (drained in {drain} "
                f"ms, probe served without waiting from {probe} ms)"
            )
    return "; ".join(parts)


def stress(
    url: str | DatabaseTarget,
    pools: str | Sequence[str] = "sqlalchemy",
    *,
    config: StressConfig | None = None,
    workload: Workload | None = None,
    progress: ProgressFn | None = None,
) -> Report:
    """Drive each pool in ``pools`` to and past exhaustion; return the report.

    ``pools``: kinds (``sqlalchemy``, ``sqlalchemy-async``, ``psycopg``,
    ``psycopg-async``, ``asyncpg``) or ``"all"``; ``workload`` defaults to ``SELECT 1``.
    Raises :class:`ConnectError` when the server cannot be reached or goes away during
    the run (after closing everything), :class:`UsageError` for plans the server cannot
    safely take or a workload that fails outright.
    """
    config = config or StressConfig()
    workload = workload or Workload()
    kinds = parse_pools(pools)
    unsupported = [k for k in kinds if not workload.supports(k)]
    if unsupported:
        raise UsageError(
            f"the workload {workload.name!r} has no form for pool(s): {', '.join(unsupported)}"
        )
    target = parse_url(url) if isinstance(url, str) else url
    t0 = time.perf_counter()
    report = Report(command="pool", target=Target(target.masked()))
    token = secrets.token_hex(3)
    control = RunControl(deadline=t0 + config.max_total_s)
    metrics: dict[str, Any] = {}
    findings: list[Finding] = []
    with ServerMonitor(target, config.connect_timeout_s) as monitor, quiet_driver_logs():
        facts = monitor.facts()
        report.target = Target(target.masked(), facts.version)
        check_budget(facts, config)
        server_cores = config.server_cores or (os.cpu_count() if facts.local else None)
        for kind in kinds:
            if control.out_of_time:
                report.notes.append(f"{kind}: not run, the total time cap was reached")
                continue
            name = application_name(kind, token)
            try:
                run = run_pool(kind, target, config, workload, monitor, control, name, progress)
            except Interrupted as exc:
                raise Interrupted([*report.notes, *exc.done]) from None
            finally:
                leftover = monitor.wait_closed(name) if monitor.alive else None
            if run.aborted is not None and not monitor.ping():
                cause = run.abort_error or ConnectionError("the server went away")
                raise ConnectError(
                    f"the server went away during the {kind} pool run "
                    f"(after {len(run.steps)} steps): {lost_cause(cause, target)}; "
                    "every pooled connection was closed"
                )
            tree = _pool_metrics(run, config, workload)
            verdicts = judge_pool(
                kind,
                tree,
                capacity=config.capacity,
                timeout_s=config.timeout_s,
                server_cores=server_cores,
                spindles=config.spindles,
                instances=config.instances,
                budget=facts.budget,
                local_server=facts.local,
            )
            tree["knee"] = verdicts.knee.to_metrics()
            tree["verdict"] = verdicts.to_metrics()
            tree["sessions_after_close"] = leftover
            metrics[kind] = tree
            findings += pool_findings(verdicts)
            findings += _leak_findings(run, leftover)
            report.notes.append(_summary_line(kind, run, verdicts))
            if run.stopped_early or run.aborted:
                report.notes.append(f"{kind}: stopped early: {run.stopped_early or run.aborted}")
    if not metrics:
        raise UsageError(
            f"the --max-seconds cap of {config.max_total_s:g}s was reached before any pool "
            "ran: nothing was measured"
        )
    report.metrics = {
        "pool": metrics,
        "pool_run": {
            "server": facts.to_metrics(),
            "server_cores": server_cores,
            "config": _config_metrics(config),
            "workload": workload.describe(),
            "client_cpus": os.cpu_count(),
        },
    }
    report.notes.insert(
        0,
        f"workload: {workload.describe()}; capacity {config.capacity} (size {config.size} + "
        f"overflow {config.overflow}), timeout {config.timeout_s:g}s, think "
        f"{config.think_ms:g} ms, steps of {config.step_seconds:g}s after "
        f"{config.warmup_s:g}s warm-up",
    )
    if "asyncpg" in kinds and len(kinds) > 1 and not config.autocommit:
        report.notes.insert(
            1,
            "query latency is not comparable across pools: the SQLAlchemy and psycopg "
            "pools run BEGIN, the statement and COMMIT (three round trips), asyncpg runs "
            "the statement alone in autocommit (one); pass --autocommit to compare like "
            "with like",
        )
    report.extend(_dedupe(findings))
    report.duration_s = time.perf_counter() - t0
    return report


def _config_metrics(config: StressConfig) -> dict[str, Any]:
    return {
        "size": config.size,
        "overflow": config.overflow,
        "capacity": config.capacity,
        "timeout_s": config.timeout_s,
        "max_concurrency": config.top_concurrency,
        "concurrency_levels": list(config.concurrency_levels),
        "step_seconds": config.step_seconds,
        "warmup_s": config.warmup_s,
        "rates": list(config.rates),
        "think_ms": config.think_ms,
        "spike": config.spike_requests,
        "soak_s": config.soak_s,
        "sample_interval_s": config.sample_interval_s,
        "soak_concurrency": config.soak_workers,
        "instances": config.instances,
        "spindles": config.spindles,
        "allow_server_exhaustion": config.allow_server_exhaustion,
        "max_total_s": config.max_total_s,
        "autocommit": config.autocommit,
    }


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """The fleet budget is the same finding for every pool of the same capacity."""
    seen: set[tuple[str, str]] = set()
    out = []
    for f in findings:
        key = (f.rule, f.message) if f.rule == "pool-over-budget" else (f.rule, f.fingerprint or "")
        if key in seen and f.rule == "pool-over-budget":
            continue
        seen.add(key)
        out.append(f)
    return out


__all__ = ["ADAPTERS", "Interrupted", "application_name", "check_budget", "stress"]
