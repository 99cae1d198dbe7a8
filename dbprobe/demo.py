"""``dbprobe demo``: every probe against the shop fixture app on a throwaway server.

1. a throwaway PostgreSQL (the provider chain), the shop built and seeded;
2. the shop's flows (planted problems and their clean twins, sync and async on asyncpg)
   run under :func:`dbprobe.capture`: N+1 and redundant queries with the exact fix and
   the EXPLAIN cost, unindexed look-ups of the captured statements with verified advice;
3. the leaking flows under :func:`dbprobe.pool.track_leaks`: connection leaks;
4. the audit of the database (catalog and statistics checks, pg_stat_statements);
5. a cold-start sample of the four drivers; 6. a short stress of the application's pool.

The report also says which of the planted problems of the fixture's manifest were
found (``metrics.demo.manifest``): all of them, or the demo says which it missed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dbprobe.report.model import Finding, Report, Target

log = logging.getLogger("dbprobe.demo")

Step = Callable[[str], None]
STEPS = ("capture", "leaks", "audit", "coldstart", "pool")


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """provider: force a throwaway provider (default: the chain); size: seed size
    (``small`` or ``large``); skip: steps left out (of ``STEPS``); workload_runs: how
    often the shop's flows run before the audit reads the statistics (default 5, the
    audit's sequential-scan threshold); coldstart_samples: cold connections per driver
    (default 10); pools: pools stressed (default the app's own, ``sqlalchemy``)."""

    provider: str | None = None
    size: str = "small"
    skip: tuple[str, ...] = ()
    workload_runs: int = 5
    coldstart_samples: int = 10
    pools: tuple[str, ...] = ("sqlalchemy",)


def run_demo(options: DemoOptions, step: Step = lambda _msg: None) -> Report:
    """Run the demo and return its report (``command="demo"``)."""
    from dbprobe.demoapp import fixtures_root
    from dbprobe.pg import throwaway

    report = Report(command="demo")
    t0 = time.perf_counter()
    root = fixtures_root()
    step("starting a throwaway PostgreSQL server")
    with throwaway(options.provider) as pg:
        report.target = Target(f"throwaway PostgreSQL ({pg.provider})", pg.version)
        ready = sum(v for k, v in pg.timings.items() if k.endswith("_s"))
        step(f"PostgreSQL {pg.version} ready ({pg.provider}, port {pg.port}, {ready:.2f}s)")
        db = pg.create_database("shop")
        target = pg.target(db)
        metrics: dict[str, Any] = {"server": {"provider": pg.provider, "durable": pg.durable}}
        report.notes.append(
            f"throwaway PostgreSQL {pg.version} from the {pg.provider} provider; not durable "
            "(fsync off), so commit latencies are not production figures"
        )
        _build(pg, db, options.size, metrics, step)
        hypopg = "hypopg" in pg.available_extensions(db)
        findings: list[Finding] = []
        if "capture" not in options.skip:
            findings += _capture(pg.url(db), pg.async_url(db), root, hypopg, metrics, step)
        if "leaks" not in options.skip:
            findings += _leaks(pg.url(db), step)
        _exercise(pg.url(db), max(0, options.workload_runs - 1), step)
        if "audit" not in options.skip:
            findings += _audit(target, hypopg, report, metrics, step)
        if "coldstart" not in options.skip:
            findings += _coldstart(target, options.coldstart_samples, metrics, step)
        if "pool" not in options.skip:
            findings += _pool(target, options.pools, report, metrics, step)
        report.findings = _dedupe(findings)
        metrics["demo"] = {"manifest": _manifest_coverage(report.findings, options.size)}
        report.metrics = metrics
    cov = metrics["demo"]["manifest"]
    if cov["planted"]:
        missed = ("missed: " + ", ".join(cov["missed"])) if cov["missed"] else "none missed"
        report.notes.append(
            f"found {len(cov['found'])} of {cov['planted']} problems planted in the shop "
            f"fixture ({missed})"
        )
    report.duration_s = time.perf_counter() - t0
    step("server stopped and removed")
    return report


# -- the steps ------------------------------------------------------------------------


def _build(pg: Any, db: str, size: str, metrics: dict[str, Any], step: Step) -> None:
    from sqlalchemy import create_engine, text

    from dbprobe.demoapp import import_fixture

    seed = import_fixture("fixtures.shop.seed")
    step(f"building the shop fixture ({size} seed)")
    engine = create_engine(pg.url(db))
    t = time.perf_counter()
    try:
        with engine.begin() as conn:
            seed.build(conn, size)
        engine.dispose()
        pg.settle(db)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.relname, greatest(c.reltuples, 0)::bigint FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 1"
                )
            ).all()
    finally:
        engine.dispose()
    seconds = time.perf_counter() - t
    counts = {name: int(n) for name, n in rows}
    metrics["fixture"] = {"size": size, "seed_s": round(seconds, 3), "rows": counts}
    step(f"shop built: {len(counts)} tables, {sum(counts.values()):,} rows in {seconds:.1f}s")


def _capture(
    url: str, async_url: str, root: Path, hypopg: bool, metrics: dict[str, Any], step: Step
) -> list[Finding]:
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import Session

    import dbprobe
    from dbprobe.capture.analyzers import CaptureContext, analyze
    from dbprobe.config import DbprobeConfig
    from dbprobe.demoapp import import_fixture

    workload = import_fixture("fixtures.shop.workload")
    app_paths = [str(root / "fixtures"), str(root / "probes")]
    step("running the shop's flows under capture (sync, then async on asyncpg)")
    engine = create_engine(url)
    aengine = create_async_engine(async_url)
    try:
        with (
            dbprobe.capture(engine, app_paths=app_paths, root=str(root), name="sync") as slog,
            Session(engine) as session,
        ):
            workload.run_all(session)

        async def run_async() -> Any:
            async with (
                dbprobe.capture(aengine, app_paths=app_paths, root=str(root), name="async") as alog,
                AsyncSession(aengine) as session,
            ):
                await workload.run_all_async(session)
            await aengine.dispose()
            return alog

        alog = asyncio.run(run_async())
        step(
            f"captured {len(slog.statements)} + {len(alog.statements)} statements; "
            "explaining the distinct ones"
        )
        config = DbprobeConfig(
            root=str(root), app_paths=tuple(app_paths),
            explain_verify="auto" if hypopg else "real",
        )  # fmt: skip
        findings: list[Finding] = []
        for query_log in (slog, alog):
            findings += analyze(query_log, CaptureContext(config, root=str(root), explain=True))
    finally:
        engine.dispose()
        from dbprobe.capture.plans import PLANS

        PLANS.close()
    metrics["capture"] = {
        "statements": {"sync": len(slog.statements), "async": len(alog.statements)},
        "duration_ms": {
            "sync": round(sum(r.duration_ns for r in slog.statements) / 1e6, 3),
            "async": round(sum(r.duration_ns for r in alog.statements) / 1e6, 3),
        },
    }
    return findings


def _leaks(url: str, step: Step) -> list[Finding]:
    from sqlalchemy import create_engine

    from dbprobe.demoapp import import_fixture
    from dbprobe.pool import track_leaks

    workload = import_fixture("fixtures.shop.workload")
    step("running the engine flows under leak tracking")
    engine = create_engine(url, pool_size=5, max_overflow=5)
    try:
        with track_leaks(engine) as scope:
            workload.run_leaks(engine)
        found: list[Finding] = scope.findings()
        return found
    finally:
        workload.release_leaks()
        engine.dispose()


def _exercise(url: str, runs: int, step: Step) -> None:
    """Run the flows a few more times, so the statistics views have a history."""
    if runs <= 0:
        return
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from dbprobe.demoapp import import_fixture

    workload = import_fixture("fixtures.shop.workload")
    step(f"running the shop's flows {runs} more times for the statistics views")
    engine = create_engine(url)
    try:
        for _ in range(runs):
            with Session(engine) as session:
                workload.run_all(session)
    finally:
        engine.dispose()  # backends exit: their statistics are flushed


def _audit(
    target: Any, hypopg: bool, report: Report, metrics: dict[str, Any], step: Step
) -> list[Finding]:
    from dbprobe.audit import AuditOptions, run_audit

    step("auditing the database (catalog, statistics, pg_stat_statements)")
    options = AuditOptions(disposable=True, verify="auto" if hypopg else "real", coldstart=False)
    audit = run_audit(target, options)
    metrics["audit"] = audit.metrics.get("audit", {})
    report.notes += [n for n in audit.notes if "cold start" not in n]
    return list(audit.findings)


def _coldstart(target: Any, samples: int, metrics: dict[str, Any], step: Step) -> list[Finding]:
    from dbprobe.coldstart import sample

    step(f"sampling cold-start latency ({samples} connections per driver, four drivers)")
    tree, findings = sample(
        target, samples=samples, drivers=("psycopg", "asyncpg", "sqlalchemy", "sqlalchemy-async")
    )
    metrics.update(tree)
    return findings


def _pool(
    target: Any, pools: Sequence[str], report: Report, metrics: dict[str, Any], step: Step
) -> list[Finding]:
    from dbprobe.pool import StressConfig, stress

    step(f"stressing the application's pool ({', '.join(pools)}) to four times its capacity")
    # A pool of 4 whose requests hold their connection for 15 ms (a request handler's
    # work), driven to 16 concurrent requests with a 100 ms acquire timeout: the report
    # shows the knee and where waits turn into timeouts.
    config = StressConfig(
        size=4, overflow=0, timeout_s=0.1, think_ms=15, max_concurrency=16,
        step_seconds=0.4, spike=16, max_total_s=40,
    )  # fmt: skip
    run = stress(target, list(pools), config=config)
    metrics["pool"] = run.metrics.get("pool", {})
    report.notes += run.notes
    return list(run.findings)


# -- combining ------------------------------------------------------------------------


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per problem: the audit and the captured statements can both report
    the same unindexed look-up; keep the one that knows the application line."""
    by_key: dict[tuple[str, str, str], Finding] = {}
    out: list[Finding] = []
    for f in findings:
        if f.rule != "unindexed-lookup":
            out.append(f)
            continue
        key = (f.rule, f.table or "", f.recommendation)
        kept = by_key.get(key)
        if kept is None or (f.location and not kept.location):
            by_key[key] = f
    return out + list(by_key.values())


def _manifest_coverage(findings: Sequence[Finding], size: str) -> dict[str, Any]:
    """Which planted problems of the fixture's manifest a finding accounts for."""
    from dbprobe.demoapp import import_fixture

    manifest = import_fixture("fixtures.shop.manifest").load_manifest()
    found, missed = [], []
    for problem in manifest.problems:
        if _matches(problem, findings):
            found.append(problem.id)
        else:
            missed.append(problem.id)
    return {
        "planted": len(manifest.problems), "found": found, "missed": missed, "seed": size,
    }  # fmt: skip


def _matches(problem: Any, findings: Sequence[Finding]) -> bool:
    for f in findings:
        if f.rule != problem.rule:
            continue
        if problem.kind == "code":
            if f.location and f.location.endswith(problem.resolve_location()):
                return True
            continue
        table = (f.table or "").rsplit(".", 1)[-1]
        if table != problem.table:
            continue
        index = getattr(problem, "index", None)
        if index and index not in f.message + f.recommendation:
            continue
        columns = getattr(problem, "columns", None) or []
        text = f.message + f.recommendation
        if all(c in text for c in columns):
            return True
    return False
