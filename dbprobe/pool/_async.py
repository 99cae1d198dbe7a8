"""The load driver and the pool adapters, asyncio form: the ONE source of both forms.

``_sync.py`` (threads: SQLAlchemy ``QueuePool``, psycopg_pool ``ConnectionPool``) is
generated from this file by ``tools/async_to_sync.py``; CI regenerates it and fails on a
difference. Edit this file, then run ``python tools/async_to_sync.py``. Whatever really
differs between the two forms is a name in ``_compat.py``; asyncpg, which has no threaded
twin, is marked ``@async_only``.

Hot path (one request): ``perf_counter`` four times, acquire, run, release, four array
appends. Latency is measured from the request's start (closed loop) or from its
scheduled start (open loop), so a stalled client cannot hide queueing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from dbprobe.pool._compat import (
    ASYNC_SQLALCHEMY_DRIVER,
    PSYCOPG_ASYNC_KIND,
    SQLALCHEMY_ASYNC_KIND,
    AEvent,
    AWorkers,
    arun_blocking,
    asleep,
    async_only,
    psycopg_connect_kwargs,
    sqlalchemy_async_connect_args,
)
from dbprobe.pool.config import StressConfig, Workload
from dbprobe.pool.control import (
    FAILURE_BACKOFF_S,
    TICK_S,
    ProgressFn,
    RunControl,
    Schedule,
    ServerWatch,
    SpikeFlags,
)
from dbprobe.pool.failures import (
    ReleaseTimeout,
    classify_acquire,
    classify_run,
    is_fatal,
    is_timeout,
)
from dbprobe.pool.recording import Recorder, SoakRecorder, StepResult, summarise
from dbprobe.pool.results import (
    PoolRun,
    SoakResult,
    SoakSample,
    SpikeResult,
    WarmupResult,
    summarise_soak,
    summarise_spike,
)
from dbprobe.pool.server import host_busy_share, host_cpu_times, open_fds, process_rss_bytes
from dbprobe.urls import DatabaseTarget

# -- adapters: one small interface over every pool ------------------------------------


class AsyncPoolAdapter:
    """One pool of one kind behind the interface the driver uses.

    ``acquire`` raises the pool's own timeout error when no connection comes within
    ``config.timeout_s``; ``run`` does one request's work on a connection (the workload's
    callable, or its SQL with every row fetched, then a commit unless autocommit);
    ``release`` returns the connection; ``handle`` is the engine or pool object itself.
    """

    kind = ""

    def __init__(
        self,
        target: DatabaseTarget,
        config: StressConfig,
        workload: Workload,
        application_name: str,
    ) -> None:
        self.target = target
        self.config = config
        self.workload = workload
        self.application_name = application_name
        self.call: Callable[[Any], Any] | None = workload.calls.get(self.kind)
        self.sql = workload.sql
        self.autocommit = config.autocommit
        self.pool_level = workload.level == "pool" and self.call is not None

    @property
    def handle(self) -> Any:
        raise NotImplementedError

    async def open(self) -> None:
        raise NotImplementedError

    async def acquire(self, timeout: float | None = None) -> Any:
        """A connection; ``timeout`` (seconds) overrides the pool's for this call."""
        raise NotImplementedError

    async def release(self, conn: Any) -> None:
        raise NotImplementedError

    async def run(self, conn: Any) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def checked_out(self) -> int:
        """Connections currently out of the pool."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """The pool's own statistics, as it reports them."""
        raise NotImplementedError

    def step_stats(self) -> dict[str, Any]:
        """The pool's statistics for the step that just ended."""
        return self.stats()


class SqlalchemyAsyncAdapter(AsyncPoolAdapter):
    """SQLAlchemy ``AsyncEngine`` with its default ``AsyncAdaptedQueuePool``.

    ``pool_size=size``, ``max_overflow=overflow``, ``pool_timeout=timeout``; a request is
    ``engine.connect()``, ``execute``, ``commit``, ``close``.
    """

    kind = SQLALCHEMY_ASYNC_KIND

    async def open(self) -> None:
        cfg = self.config
        options: dict[str, Any] = {}
        if self.autocommit:
            options["isolation_level"] = "AUTOCOMMIT"
        self.engine = create_async_engine(
            self.target.sqlalchemy_url(ASYNC_SQLALCHEMY_DRIVER),
            pool_size=cfg.size,
            max_overflow=cfg.overflow,
            pool_timeout=cfg.timeout_s,
            pool_pre_ping=False,
            connect_args=sqlalchemy_async_connect_args(self.target, self.application_name, cfg),
            **options,
        )
        self.statement = text(self.sql) if self.sql else None

    @property
    def handle(self) -> Any:
        return self.engine

    async def acquire(self, timeout: float | None = None) -> Any:
        if timeout is None:
            return await self.engine.connect()
        # A per-call timeout (the warm-up's connect timeout) needs the pool's own
        # timeout changed for this checkout; QueuePool reads it on every wait.
        pool: Any = self.engine.pool
        saved = pool._timeout
        pool._timeout = timeout
        try:
            return await self.engine.connect()
        finally:
            pool._timeout = saved

    async def release(self, conn: Any) -> None:
        await conn.close()

    async def run(self, conn: Any) -> None:
        if self.call is not None:
            await self.call(conn)
        else:
            result = await conn.execute(self.statement)
            if result.returns_rows:
                result.all()
        if not self.autocommit:
            await conn.commit()

    async def close(self) -> None:
        await self.engine.dispose()

    def checked_out(self) -> int:
        pool: Any = self.engine.pool
        return int(pool.checkedout())

    def stats(self) -> dict[str, Any]:
        pool: Any = self.engine.pool
        return {
            "size": pool.size(),
            "checked_in": pool.checkedin(),
            "checked_out": pool.checkedout(),
            "overflow": pool.overflow(),
        }


class PsycopgAsyncAdapter(AsyncPoolAdapter):
    """psycopg_pool ``AsyncConnectionPool`` with ``min_size=size``,
    ``max_size=size + overflow``, ``timeout=timeout``; a request is ``getconn``,
    ``execute``, ``fetchall``, ``commit``, ``putconn`` (what ``pool.connection()`` does).
    """

    kind = PSYCOPG_ASYNC_KIND

    async def open(self) -> None:
        cfg = self.config
        self.pool = AsyncConnectionPool(
            self.target.libpq_dsn(),
            min_size=cfg.size,
            max_size=cfg.capacity,
            timeout=cfg.timeout_s,
            kwargs=psycopg_connect_kwargs(self.target, self.application_name, cfg),
            name=self.application_name,
            open=False,
        )
        self.count_checkouts()
        await self.pool.open(wait=False)

    def count_checkouts(self) -> None:
        """Count connections handed out and not yet returned by wrapping the pool
        instance's ``getconn``/``putconn`` (``pool.connection()`` goes through them too,
        so pool-level workloads are counted). The pool's own ``pool_size`` also counts a
        slot it is still reconnecting in the background (a refused connection is retried
        for ``reconnect_timeout``), which is not a checkout. A set: add and discard are
        atomic under the GIL, for threads too."""
        self.out: set[int] = set()
        out = self.out
        pool: Any = self.pool
        original_get = pool.getconn
        original_put = pool.putconn

        async def getconn(timeout: float | None = None) -> Any:
            conn = await original_get(timeout)
            out.add(id(conn))
            return conn

        async def putconn(conn: Any) -> None:
            out.discard(id(conn))
            await original_put(conn)

        pool.getconn = getconn  # instance attributes, on purpose
        pool.putconn = putconn

    @property
    def handle(self) -> Any:
        return self.pool

    async def acquire(self, timeout: float | None = None) -> Any:
        return await self.pool.getconn(timeout)

    async def release(self, conn: Any) -> None:
        await self.pool.putconn(conn)

    async def run(self, conn: Any) -> None:
        if self.call is not None:
            await self.call(conn)
        else:
            cursor = await conn.execute(self.sql)
            if cursor.description is not None:
                await cursor.fetchall()
        if not self.autocommit:
            await conn.commit()

    async def close(self) -> None:
        await self.pool.close(timeout=2.0)

    def checked_out(self) -> int:
        return len(self.out)

    def stats(self) -> dict[str, Any]:
        return dict(self.pool.get_stats())

    def step_stats(self) -> dict[str, Any]:
        return dict(self.pool.pop_stats())


@async_only
class AsyncpgAdapter(AsyncPoolAdapter):
    """asyncpg ``Pool`` with ``min_size=size``, ``max_size=size + overflow``; a request
    is ``acquire(timeout=timeout)``, ``fetch``, ``release`` (asyncpg runs its reset
    query on release)."""

    kind = "asyncpg"

    async def open(self) -> None:
        cfg = self.config
        kwargs = self.target.asyncpg_kwargs()
        kwargs["timeout"] = cfg.connect_timeout_s
        self.pool = await asyncpg.create_pool(
            **kwargs,
            min_size=cfg.size,
            max_size=cfg.capacity,
            max_inactive_connection_lifetime=0,
            server_settings={
                "application_name": self.application_name,
                "statement_timeout": str(cfg.statement_timeout_ms),
            },
        )

    @property
    def handle(self) -> Any:
        return self.pool

    async def acquire(self, timeout: float | None = None) -> Any:
        return await self.pool.acquire(timeout=timeout or self.config.timeout_s)

    async def release(self, conn: Any) -> None:
        try:
            await self.pool.release(conn)
        except asyncio.TimeoutError as exc:
            raise ReleaseTimeout(str(exc)) from exc

    async def run(self, conn: Any) -> None:
        if self.call is not None:
            await self.call(conn)
        else:
            await conn.fetch(self.sql)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), 5.0)
        except (asyncio.TimeoutError, Exception):
            self.pool.terminate()

    def checked_out(self) -> int:
        return int(self.pool.get_size() - self.pool.get_idle_size())

    def stats(self) -> dict[str, Any]:
        return {
            "size": self.pool.get_size(),
            "idle": self.pool.get_idle_size(),
            "min_size": self.pool.get_min_size(),
            "max_size": self.pool.get_max_size(),
        }


# -- workers ---------------------------------------------------------------------------

# Think time longer than this sleeps in slices, so a stop (end of step, time cap,
# abort) is seen within one slice.
THINK_SLICE_S = 0.05


async def think(control: RunControl, seconds: float) -> None:
    """Hold the connection ``seconds`` (the request's think time), cut short when the
    run stops or runs out of time."""
    if seconds <= THINK_SLICE_S:
        await asleep(seconds)
        return
    end = time.perf_counter() + seconds
    while not control.stop and not control.out_of_time:
        left = end - time.perf_counter()
        if left <= 0:
            return
        await asleep(min(THINK_SLICE_S, left))


async def closed_worker(
    adapter: AsyncPoolAdapter, rec: Recorder | SoakRecorder, control: RunControl, think_s: float
) -> None:
    """Request after request until ``control.stop``: the closed loop."""
    acquire = adapter.acquire
    run = adapter.run
    release = adapter.release
    ok = rec.ok
    clock = time.perf_counter
    while not control.stop:
        t0 = clock()
        try:
            conn = await acquire()
        except Exception as exc:
            kind = classify_acquire(exc)
            rec.fail(t0, clock(), kind)
            control.failed(kind, exc)
            if not is_timeout(kind):
                await asleep(FAILURE_BACKOFF_S)
            continue
        t1 = clock()
        t2 = t1
        failure: BaseException | None = None
        try:
            await run(conn)
            t2 = clock()
            if think_s:
                await think(control, think_s)
        except Exception as exc:
            failure = exc
        try:
            await release(conn)
        except Exception as exc:
            failure = failure or exc
        if failure is None:
            ok(t0, t1, t2, clock())
        else:
            kind = classify_run(failure)
            rec.fail(t0, clock(), kind)
            control.failed(kind, failure)
            await asleep(FAILURE_BACKOFF_S)


async def pool_level_worker(
    adapter: AsyncPoolAdapter, rec: Recorder | SoakRecorder, control: RunControl, think_s: float
) -> None:
    """The workload gets the engine or pool and checks out connections itself."""
    call = adapter.call
    handle = adapter.handle
    assert call is not None
    clock = time.perf_counter
    while not control.stop:
        t0 = clock()
        try:
            await call(handle)
        except Exception as exc:
            kind = classify_acquire(exc)
            rec.fail(t0, clock(), kind)
            control.failed(kind, exc)
            await asleep(FAILURE_BACKOFF_S)
            continue
        t2 = clock()
        if think_s:
            await think(control, think_s)
        rec.ok(t0, t0, t2, clock())


async def open_worker(
    adapter: AsyncPoolAdapter,
    rec: Recorder,
    control: RunControl,
    schedule: Schedule,
    think_s: float,
) -> None:
    """Takes scheduled arrivals in order; a request that starts late carries its lag."""
    acquire = adapter.acquire
    run = adapter.run
    release = adapter.release
    times = schedule.times
    take = schedule.take
    ok = rec.ok_scheduled
    clock = time.perf_counter
    while not control.stop:
        slot = take()
        if slot < 0:
            return
        due = times[slot]
        now = clock()
        if due > now:
            await asleep(due - now)
        t0 = clock()
        try:
            conn = await acquire()
        except Exception as exc:
            kind = classify_acquire(exc)
            rec.fail(t0, clock(), kind)
            control.failed(kind, exc)
            continue
        t1 = clock()
        t2 = t1
        failure: BaseException | None = None
        try:
            await run(conn)
            t2 = clock()
            if think_s:
                await think(control, think_s)
        except Exception as exc:
            failure = exc
        try:
            await release(conn)
        except Exception as exc:
            failure = failure or exc
        if failure is None:
            ok(due, t0, t1, t2, clock())
        else:
            kind = classify_run(failure)
            rec.fail(t0, clock(), kind)
            control.failed(kind, failure)


async def one_shot_worker(
    adapter: AsyncPoolAdapter,
    rec: Recorder,
    control: RunControl,
    go: AEvent,
    flags: SpikeFlags,
    think_s: float,
) -> None:
    """One spike request: wait at the start line, then acquire, run, release."""
    flags.ready.append(1)
    await go.wait()
    if control.stop:
        return
    clock = time.perf_counter
    t0 = clock()
    try:
        conn = await adapter.acquire()
    except Exception as exc:
        kind = classify_acquire(exc)
        rec.fail(t0, clock(), kind)
        control.failed(kind, exc)
        return
    t1 = clock()
    t2 = t1
    failure: BaseException | None = None
    try:
        await adapter.run(conn)
        t2 = clock()
        if think_s:
            await think(control, think_s)
    except Exception as exc:
        failure = exc
    try:
        await adapter.release(conn)
    except Exception as exc:
        failure = failure or exc
    if failure is None:
        rec.ok(t0, t1, t2, clock())
    else:
        kind = classify_run(failure)
        rec.fail(t0, clock(), kind)
        control.failed(kind, failure)


async def probe_worker(
    adapter: AsyncPoolAdapter,
    rec: Recorder,
    control: RunControl,
    go: AEvent,
    flags: SpikeFlags,
    threshold_s: float,
) -> None:
    """During and after a spike: one request at a time (1 ms apart) until the pool has
    served three in a row without waiting once the spike is over."""
    await go.wait()
    clock = time.perf_counter
    fast = 0
    while not control.stop and clock() < flags.deadline:
        t0 = clock()
        try:
            conn = await adapter.acquire()
        except Exception as exc:
            kind = classify_acquire(exc)
            rec.fail(t0, clock(), kind)
            control.failed(kind, exc)
            fast = 0
            await asleep(FAILURE_BACKOFF_S)
            continue
        t1 = clock()
        try:
            await adapter.run(conn)
        except Exception as exc:
            control.failed(classify_run(exc), exc)
        try:
            await adapter.release(conn)
        except Exception as exc:
            control.failed(classify_run(exc), exc)
        rec.ok(t0, t1, t1, clock())
        fast = fast + 1 if t1 - t0 <= threshold_s else 0
        if flags.done and fast >= 3:
            return
        await asleep(0.001)


# -- the driver ------------------------------------------------------------------------


class AsyncDriver:
    """Runs the plan on one pool: warm-up, closed-loop steps, open-loop rates, spike,
    soak; closes the pool whatever happens (error, abort, Ctrl-C)."""

    def __init__(
        self,
        adapter: AsyncPoolAdapter,
        config: StressConfig,
        monitor: ServerWatch,
        control: RunControl,
        progress: ProgressFn | None = None,
    ) -> None:
        self.adapter = adapter
        self.config = config
        self.monitor = monitor
        self.control = control
        self.progress = progress
        self.result = PoolRun(
            kind=adapter.kind,
            application_name=adapter.application_name,
            capacity=config.capacity,
        )

    async def drive(self) -> PoolRun:
        """The whole plan; the partial result when it stops early."""
        cfg = self.config
        opened = False
        try:
            await self.adapter.open()
            opened = True
            self.result.warmup = await self.warm_up()
            for concurrency in cfg.concurrency_levels:
                if await self.stopping():
                    break
                self.result.steps.append(await self.closed_step(concurrency))
            for rate in cfg.rates:
                if await self.stopping():
                    break
                self.result.steps.append(await self.open_step(rate, cfg.top_concurrency))
            if cfg.spike_requests and not await self.stopping():
                self.result.spike = await self.spike(cfg.spike_requests)
            if cfg.soak_s and not await self.stopping():
                self.result.soak = await self.soak(cfg.soak_s)
            await self.stopping()
        finally:
            self.control.stop = True
            if opened:
                try:
                    self.result.stats = self.adapter.stats()
                    self.result.checked_out_at_end = self.adapter.checked_out()
                except Exception as exc:  # a pool already broken by a lost server
                    self.result.stats = {"error": classify_run(exc)}
                if self.control.abort is None:
                    self.result.idle_in_transaction_at_end = await arun_blocking(
                        self.monitor.idle_in_transaction, self.adapter.application_name
                    )
                try:
                    await self.adapter.close()
                except Exception as exc:
                    self.result.stats["close_error"] = classify_run(exc)
        return self.result

    def aborted(self) -> bool:
        return self.control.abort is not None

    async def stopping(self) -> bool:
        """Whether to stop before the next phase (server gone, time cap)."""
        control = self.control
        if control.suspect is not None and control.abort is None:
            await self.check_server()
        if control.abort is None and control.out_of_time:
            self.result.stopped_early = "the total time cap was reached"
            return True
        return control.abort is not None

    async def warm_up(self) -> WarmupResult:
        """Open ``size`` connections (held at once), then run the workload once so a
        broken statement fails here with one clear message, not in every request."""
        adapter = self.adapter
        clock = time.perf_counter
        t0 = clock()
        held: list[Any] = []
        failures: dict[str, int] = {}
        try:
            for _ in range(self.config.size):
                try:
                    held.append(await adapter.acquire(self.config.connect_timeout_s))
                except Exception as exc:
                    kind = classify_acquire(exc)
                    failures[kind] = failures.get(kind, 0) + 1
                    if is_fatal(kind) or not held:
                        raise
                    break
        finally:
            for conn in held:
                await adapter.release(conn)
        if not adapter.pool_level:
            conn = await adapter.acquire(self.config.connect_timeout_s)
            try:
                await adapter.run(conn)
            finally:
                await adapter.release(conn)
        adapter.step_stats()
        return WarmupResult(
            opened=len(held), duration_ms=(clock() - t0) * 1000.0, failures=failures
        )

    async def wait_until(self, deadline: float, label: str, begin: float, end: float) -> None:
        """Sleep in ticks until ``deadline``: progress (of the step from ``begin`` to
        ``end``), server check when a worker saw a suspicious failure, the time cap."""
        clock = time.perf_counter
        control = self.control
        total = max(1, round((end - begin) / TICK_S))
        while True:
            now = clock()
            if now >= deadline or control.abort is not None:
                break
            if control.out_of_time:
                self.result.stopped_early = "the total time cap was reached"
                break
            await asleep(min(TICK_S, deadline - now))
            if control.suspect is not None:
                await self.check_server()
            if self.progress is not None:
                done = min(total - 1, round((clock() - begin) / TICK_S))
                self.progress(label, done, total)

    def drain_time(self, cap: float | None = None) -> float:
        """How long workers get to finish after a phase: ``cap`` (default the config's
        drain cap), but no later than the run's time cap (at least one second, so the
        pool can still be closed cleanly)."""
        cap = self.config.drain_cap_s if cap is None else cap
        left = self.control.deadline - time.perf_counter()
        return max(1.0, min(cap, left))

    async def check_server(self) -> None:
        """A worker saw a failure that may mean the server is gone: ask the monitor."""
        control = self.control
        suspect = control.suspect
        alive = await arun_blocking(self.monitor.ping)
        if alive:
            control.suspect = None
            return
        control.abort = "the server went away"
        self.result.aborted = control.abort
        self.result.abort_error = suspect
        control.stop = True

    async def backends(self) -> int | None:
        return await arun_blocking(self.monitor.backends, self.adapter.application_name)

    async def closed_step(self, concurrency: int) -> StepResult:
        cfg = self.config
        adapter = self.adapter
        control = self.control
        control.stop = False
        recorders = [Recorder() for _ in range(concurrency)]
        workers = AWorkers()
        worker = pool_level_worker if adapter.pool_level else closed_worker
        for rec in recorders:
            workers.spawn(worker, adapter, rec, control, cfg.think_s)
        label = f"{adapter.kind} concurrency {concurrency}"
        return await self.measure(workers, recorders, concurrency, None, label, None)

    async def open_step(self, rate: float, max_in_flight: int) -> StepResult:
        cfg = self.config
        adapter = self.adapter
        control = self.control
        control.stop = False
        clock = time.perf_counter
        begin = clock() + 0.02
        schedule = Schedule(rate, begin, begin + cfg.warmup_s + cfg.step_seconds, cfg.seed)
        recorders = [Recorder() for _ in range(max_in_flight)]
        workers = AWorkers()
        for rec in recorders:
            workers.spawn(open_worker, adapter, rec, control, schedule, cfg.think_s)
        label = f"{adapter.kind} open loop {rate:g}/s"
        return await self.measure(workers, recorders, max_in_flight, rate, label, schedule)

    async def measure(
        self,
        workers: AWorkers,
        recorders: Sequence[Recorder],
        concurrency: int,
        rate: float | None,
        label: str,
        schedule: Schedule | None,
    ) -> StepResult:
        cfg = self.config
        control = self.control
        clock = time.perf_counter
        begin = clock() if schedule is None else schedule.start
        window_start = begin + cfg.warmup_s
        window_end = window_start + cfg.step_seconds
        backends: int | None = None
        try:
            await self.wait_until(window_start, label, begin, window_end)
            cpu0, wall0, host0 = time.process_time(), clock(), host_cpu_times()
            await self.wait_until(window_start + 0.8 * cfg.step_seconds, label, begin, window_end)
            if control.abort is None:
                backends = await self.backends()
            await self.wait_until(window_end, label, begin, window_end)
            cpu1, wall1, host1 = time.process_time(), clock(), host_cpu_times()
            window_end = min(window_end, wall1)
            overdue = schedule.overdue(window_end) if schedule is not None else []
        finally:
            control.stop = True
            drain_s = self.drain_time()
            unfinished = await workers.join(drain_s)
        if self.progress is not None:
            self.progress(label, 1, 1)
        if unfinished and control.abort is None:
            control.abort = f"{unfinished} workers did not finish within {drain_s:g}s"
            self.result.aborted = control.abort
        return summarise(
            recorders,
            concurrency=concurrency,
            window=(window_start, window_end),
            client_cpu=(cpu1 - cpu0) / max(wall1 - wall0, 1e-9),
            host_cpu_busy=host_busy_share(host0, host1),
            offered_rate=rate,
            late_after_s=cfg.timeout_s,
            backlog=len(overdue),
            unstarted_due=overdue,
            unfinished_workers=unfinished,
            server_backends=backends,
            pool_stats=self.adapter.step_stats(),
            acquire_wait_measured=not self.adapter.pool_level,
        )

    async def spike(self, requests: int) -> SpikeResult:
        """``requests`` at the same instant, and how long until the pool serves a new
        request without waiting again."""
        cfg = self.config
        adapter = self.adapter
        control = self.control
        control.stop = False
        clock = time.perf_counter
        go = AEvent()
        flags = SpikeFlags()
        recorders = [Recorder() for _ in range(requests)]
        probe = Recorder()
        workers = AWorkers()
        prober = AWorkers()
        threshold_s = self.probe_threshold_s()
        label = f"{adapter.kind} spike of {requests}"
        unfinished = 0
        backends: int | None = None
        fired = clock()
        try:
            for rec in recorders:
                workers.spawn(one_shot_worker, adapter, rec, control, go, flags, cfg.think_s)
            prober.spawn(probe_worker, adapter, probe, control, go, flags, threshold_s)
            ready_by = clock() + 5.0
            while len(flags.ready) < requests and clock() < ready_by:
                await asleep(0.002)
            cap = self.drain_time(cfg.timeout_s + cfg.think_s + cfg.drain_cap_s)
            fired = clock()
            flags.deadline = fired + cap
            go.set()
            unfinished = await workers.join(cap)
            flags.done = True
            backends = await self.backends() if control.abort is None else None
            await prober.join(cap)
        finally:
            control.stop = True
            go.set()  # workers still at the start line see the stop and leave
            await workers.cancel()
            await prober.cancel()
        if self.progress is not None:
            self.progress(label, 1, 1)
        return summarise_spike(
            recorders,
            probe,
            fired_at=fired,
            threshold_s=threshold_s,
            unfinished_workers=unfinished,
            server_backends=backends,
        )

    def probe_threshold_s(self) -> float:
        """A probe counts as served without waiting below twice the p99 acquire wait of
        the lightest step within the capacity (at least 1 ms; 1 ms when every step was
        past the capacity, where waits are queueing, not the pool's own cost)."""
        lightest = min(
            (
                s
                for s in self.result.steps
                if s.offered_rate is None
                and s.acquire_wait.n
                and s.concurrency <= self.config.capacity
            ),
            key=lambda s: s.concurrency,
            default=None,
        )
        base = lightest.acquire_wait.p99 / 1000.0 if lightest is not None else 0.0
        return max(0.001, 2.0 * base)

    async def soak(self, duration_s: float) -> SoakResult:
        """Sustained load at ``soak_workers`` with think time; samples memory, file
        descriptors, checked-out connections and server backends every interval."""
        cfg = self.config
        adapter = self.adapter
        control = self.control
        control.stop = False
        clock = time.perf_counter
        recorders = [SoakRecorder() for _ in range(cfg.soak_workers)]
        workers = AWorkers()
        worker = pool_level_worker if adapter.pool_level else closed_worker
        for rec in recorders:
            workers.spawn(worker, adapter, rec, control, cfg.think_s)
        samples: list[SoakSample] = []
        begin = clock()
        end = begin + duration_s
        total = max(1, round(duration_s / cfg.sample_interval_s))
        label = f"{adapter.kind} soak {duration_s:g}s"
        try:
            tick = 0
            while not self.aborted():
                now = clock()
                if now >= end:
                    break
                if control.out_of_time:
                    self.result.stopped_early = "the total time cap was reached"
                    break
                await asleep(min(cfg.sample_interval_s, end - now))
                if control.suspect is not None:
                    await self.check_server()
                    if self.aborted():
                        break
                backends = await self.backends()
                samples.append(
                    SoakSample(
                        t_s=clock() - begin,
                        rss_bytes=process_rss_bytes(),
                        open_fds=open_fds(),
                        checked_out=adapter.checked_out(),
                        server_backends=backends,
                        completed=sum(r.completed for r in recorders),
                        timeouts=sum(r.timeouts for r in recorders),
                    )
                )
                tick += 1
                if self.progress is not None:
                    self.progress(label, min(tick, total), total)
        finally:
            control.stop = True
            unfinished = await workers.join(self.drain_time())
        return summarise_soak(
            recorders,
            samples,
            duration_s=clock() - begin,
            concurrency=cfg.soak_workers,
            interval_s=cfg.sample_interval_s,
            unfinished_workers=unfinished,
        )
