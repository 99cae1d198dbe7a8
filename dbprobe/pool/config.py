"""What a pool stress run is asked to do: pools, sizes, load shapes, workload.

Pure values, no I/O. The units are in the names (``_s`` seconds, ``_ms`` milliseconds).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from dbprobe.errors import UsageError

POOL_KINDS: tuple[str, ...] = (
    "sqlalchemy",
    "sqlalchemy-async",
    "psycopg",
    "psycopg-async",
    "asyncpg",
)
"""The pools dbprobe drives, in report order."""

ASYNC_KINDS = frozenset({"sqlalchemy-async", "psycopg-async", "asyncpg"})
SQLALCHEMY_KINDS = frozenset({"sqlalchemy", "sqlalchemy-async"})

POOL_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "sqlalchemy": "sqlalchemy.pool.QueuePool (threads, psycopg)",
        "sqlalchemy-async": "sqlalchemy.pool.AsyncAdaptedQueuePool (asyncio, asyncpg)",
        "psycopg": "psycopg_pool.ConnectionPool (threads)",
        "psycopg-async": "psycopg_pool.AsyncConnectionPool (asyncio)",
        "asyncpg": "asyncpg.Pool (asyncio)",
    }
)


def parse_pools(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"``, one kind, or a comma-separated list → kinds in report order."""
    items = [value] if isinstance(value, str) else list(value)
    names: set[str] = set()
    for item in items:
        for part in item.split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name == "all":
                names.update(POOL_KINDS)
            elif name in POOL_KINDS:
                names.add(name)
            else:
                raise UsageError(
                    f"unknown pool {name!r} (choose from {', '.join(POOL_KINDS)} or all)"
                )
    if not names:
        raise UsageError("no pool selected")
    return tuple(k for k in POOL_KINDS if k in names)


def concurrency_steps(capacity: int, max_concurrency: int) -> tuple[int, ...]:
    """Closed-loop concurrency levels from 1 to ``max_concurrency``.

    Powers of two, plus the pool's capacity, twice the capacity and the maximum, so the
    knee and the first level past the pool are always measured.
    """
    if capacity < 1 or max_concurrency < 1:
        raise ValueError("capacity and max_concurrency must be at least 1")
    levels = {1, capacity, max_concurrency}
    if 2 * capacity <= max_concurrency:
        levels.add(2 * capacity)
    power = 2
    while power < max_concurrency:
        levels.add(power)
        power *= 2
    return tuple(sorted(c for c in levels if 1 <= c <= max_concurrency))


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one request does while it holds a connection.

    ``sql``: a statement run per request (default ``SELECT 1``), all rows fetched, one
    transaction per request (committed) unless the pool is in autocommit.
    ``calls``: pool kind → callable that replaces ``sql`` for that pool. At
    ``level="connection"`` the callable receives the checked-out connection (SQLAlchemy
    ``Connection``/``AsyncConnection``, psycopg ``Connection``/``AsyncConnection``,
    asyncpg ``Connection``); at ``level="pool"`` it receives the engine or pool itself and
    checks connections out on its own (acquire wait is then not separable from the call).
    Callables for the async pools are coroutine functions.
    """

    name: str = "select-1"
    sql: str = "SELECT 1"
    calls: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
    level: str = "connection"

    def __post_init__(self) -> None:
        if self.level not in ("connection", "pool"):
            raise UsageError(f"workload level must be 'connection' or 'pool', not {self.level!r}")
        for kind, fn in self.calls.items():
            if kind not in POOL_KINDS:
                raise UsageError(f"workload callable for unknown pool {kind!r}")
            if (kind in ASYNC_KINDS) != inspect.iscoroutinefunction(fn):
                want = "a coroutine function" if kind in ASYNC_KINDS else "a plain function"
                raise UsageError(f"the workload for pool {kind!r} must be {want}")

    @classmethod
    def from_sql(cls, sql: str, name: str | None = None) -> Workload:
        """A statement run once per request on every pool."""
        text = sql.strip().rstrip(";").strip()
        if not text:
            raise UsageError("--sql is empty")
        return cls(name=name or "sql", sql=text)

    @classmethod
    def from_callable(
        cls,
        fn: Callable[[Any], Any],
        pools: Sequence[str],
        *,
        level: str = "connection",
        name: str | None = None,
    ) -> Workload:
        """One callable for the given pools (sync pools take a plain function, async
        pools a coroutine function)."""
        return cls(
            name=name or str(getattr(fn, "__name__", "callable")),
            sql="",
            calls=dict.fromkeys(pools, fn),
            level=level,
        )

    @classmethod
    def from_scenario(cls, scenario: Any, seed: int = 0) -> Workload:
        """A probe scenario (``probes.shop.SCENARIOS[name]``) on the SQLAlchemy pools.

        The flow runs in an ORM ``Session`` (``AsyncSession`` for the async engine) bound
        to the checked-out connection, with a ``random.Random(seed)`` for its parameters.
        """
        from sqlalchemy.ext.asyncio import AsyncSession
        from sqlalchemy.orm import Session

        rng = random.Random(seed)
        flow = scenario.fn
        async_flow = getattr(scenario, "async_fn", None)

        def run_sync(connection: Any) -> Any:
            with Session(bind=connection) as session:
                return flow(session, rng)

        calls: dict[str, Callable[[Any], Any]] = {"sqlalchemy": run_sync}
        if async_flow is not None:

            async def run_async(connection: Any) -> Any:
                async with AsyncSession(bind=connection) as session:
                    return await async_flow(session, rng)

            calls["sqlalchemy-async"] = run_async
        return cls(name=f"scenario:{scenario.name}", sql="", calls=calls)

    def supports(self, kind: str) -> bool:
        """Whether this workload can run on pool ``kind``."""
        return bool(self.sql) or kind in self.calls

    def describe(self) -> str:
        if self.calls:
            return f"{self.name} (callable, {self.level} level)"
        return self.sql


MAX_WORKERS = 1000
"""Most concurrent requests (closed-loop workers, open-loop requests in flight, spike,
soak): each is a thread for the threaded pools."""
MAX_RATE = 1_000_000.0
"""Highest open-loop rate, requests/s (one Python process serves a few thousand)."""
MAX_ARRIVALS = 2_000_000
"""Most scheduled arrivals in one open-loop step (rate × its length): the schedule is
built before the step."""
MAX_THINK_STEPS = 10.0
"""``--think-ms`` may be at most this many times the longer of the step and the
timeout: a request holding its connection longer than that measures nothing."""


@dataclasses.dataclass(frozen=True)
class StressConfig:
    """Pool sizes, load shapes, safety limits.

    size: connections the pool keeps (default 5); overflow: extra connections it may open
    under load (default 5; SQLAlchemy ``max_overflow``, psycopg_pool and asyncpg
    ``max_size = size + overflow``); timeout_s: how long a request waits for a connection
    before the pool gives up (default 2 s); max_concurrency: the highest closed-loop
    concurrency (default 2 × capacity, at least 2 × capacity); step_seconds: measured
    length of each step (default 1 s) after a warm-up of ``warmup_fraction`` of it
    (capped at 0.5 s); rates: open-loop arrival rates in requests/s (default none);
    think_ms: how long each request keeps its connection after its work (default 0);
    spike: requests fired at once after the steps (default ``max_concurrency``; 0 turns
    the spike off); soak_s: seconds of sustained load after the spike (default 0: off),
    sampled every ``sample_interval_s`` (default 1 s) at ``soak_concurrency`` (default
    half the capacity); instances: application instances sharing the server (for the
    fleet budget, default 1); server_cores / spindles: for the sizing formula (cores
    default: this machine's when the server is local, else unknown; spindles default
    0); allow_server_exhaustion: let the pools use more than 80% of the server's free
    connection slots; max_total_s: hard cap on the whole run (default 900 s);
    autocommit: run requests without a transaction (default off).
    """

    size: int = 5
    overflow: int = 5
    timeout_s: float = 2.0
    max_concurrency: int | None = None
    step_seconds: float = 1.0
    warmup_fraction: float = 0.2
    steps: tuple[int, ...] | None = None
    rates: tuple[float, ...] = ()
    think_ms: float = 0.0
    spike: int | None = None
    soak_s: float = 0.0
    sample_interval_s: float = 1.0
    soak_concurrency: int | None = None
    instances: int = 1
    server_cores: int | None = None
    spindles: int = 0
    allow_server_exhaustion: bool = False
    max_total_s: float = 900.0
    autocommit: bool = False
    connect_timeout_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        floats = {
            "--timeout": self.timeout_s,
            "--step-seconds": self.step_seconds,
            "--think-ms": self.think_ms,
            "--soak": self.soak_s,
            "--sample-interval": self.sample_interval_s,
            "--max-seconds": self.max_total_s,
            "--connect-timeout": self.connect_timeout_s,
        }
        for option, value in [*floats.items(), *(("--rate", r) for r in self.rates)]:
            if not math.isfinite(value):
                raise UsageError(f"{option} must be a finite number, not {value}")
        if self.size < 1:
            raise UsageError("--size must be at least 1")
        if self.overflow < 0:
            raise UsageError("--overflow must be 0 or more")
        if not self.timeout_s > 0:
            raise UsageError("--timeout must be more than 0 seconds")
        if not self.step_seconds > 0:
            raise UsageError("--step-seconds must be more than 0")
        if self.max_concurrency is not None and self.max_concurrency < 2 * self.capacity:
            raise UsageError(
                f"--max-concurrency {self.max_concurrency} is below twice the pool's "
                f"capacity ({2 * self.capacity}); the probe drives pools past exhaustion"
            )
        if any(not r > 0 for r in self.rates):
            raise UsageError("--rate values must be more than 0 requests/s")
        if any(r > MAX_RATE for r in self.rates):
            raise UsageError(f"--rate values must be at most {MAX_RATE:,.0f} requests/s")
        arrivals = max(self.rates, default=0.0) * (self.warmup_s + self.step_seconds)
        if arrivals > MAX_ARRIVALS:
            raise UsageError(
                f"--rate × --step-seconds schedules {arrivals:,.0f} arrivals in one step; "
                f"at most {MAX_ARRIVALS:,} (lower the rate or the step length)"
            )
        if self.think_ms < 0:
            raise UsageError("--think-ms must be 0 or more")
        longest = MAX_THINK_STEPS * max(self.step_seconds, self.timeout_s)
        if self.think_ms / 1000.0 > longest:
            raise UsageError(
                f"--think-ms {self.think_ms:g} holds each connection longer than "
                f"{MAX_THINK_STEPS:g} × the longer of the step and the timeout "
                f"({longest:g}s): no request would finish inside a step"
            )
        if self.spike is not None and self.spike < 0:
            raise UsageError("--spike must be 0 or more")
        for option, count in (
            ("--max-concurrency", self.top_concurrency),
            ("--spike", self.spike_requests),
            ("--soak-concurrency", self.soak_concurrency or 0),
            ("the concurrency steps", max(self.steps or (0,))),
        ):
            if count > MAX_WORKERS:
                raise UsageError(
                    f"{option} {count} is over the ceiling of {MAX_WORKERS} concurrent "
                    "requests (a thread each for the threaded pools): run several probes"
                )
        if self.server_cores is not None and self.server_cores < 1:
            raise UsageError("--server-cores must be at least 1")
        if self.spindles < 0:
            raise UsageError("--spindles must be 0 or more")
        if self.soak_s < 0:
            raise UsageError("--soak must be 0 or more seconds")
        if not self.sample_interval_s > 0:
            raise UsageError("--sample-interval must be more than 0 seconds")
        if self.instances < 1:
            raise UsageError("--instances must be at least 1")
        if not self.max_total_s > 0:
            raise UsageError("--max-seconds must be more than 0")
        if self.steps is not None and (not self.steps or min(self.steps) < 1):
            raise UsageError("concurrency steps must be 1 or more")

    @property
    def capacity(self) -> int:
        """The most connections the pool will open: size + overflow."""
        return self.size + self.overflow

    @property
    def top_concurrency(self) -> int:
        return self.max_concurrency or 2 * self.capacity

    @property
    def concurrency_levels(self) -> tuple[int, ...]:
        if self.steps is not None:
            return tuple(sorted(set(self.steps)))
        return concurrency_steps(self.capacity, self.top_concurrency)

    @property
    def spike_requests(self) -> int:
        return self.top_concurrency if self.spike is None else self.spike

    @property
    def warmup_s(self) -> float:
        return min(0.5, self.step_seconds * self.warmup_fraction)

    @property
    def drain_cap_s(self) -> float:
        """How long workers get to finish their last request after a step ends."""
        return max(5.0, 2.0 * self.timeout_s + 1.0 + self.think_ms / 1000.0)

    @property
    def statement_timeout_ms(self) -> int:
        """Server-side cap on one statement: a step plus its drain time."""
        return int(1000 * (self.warmup_s + self.step_seconds + self.drain_cap_s))

    @property
    def think_s(self) -> float:
        return self.think_ms / 1000.0

    @property
    def soak_workers(self) -> int:
        return self.soak_concurrency or max(1, self.capacity // 2)

    def estimated_seconds(self, pools: int) -> float:
        """A rough duration of the whole run, for the progress line."""
        per_step = self.warmup_s + self.step_seconds + 0.05
        steps = len(self.concurrency_levels) + len(self.rates)
        spike = (self.timeout_s + 0.5) if self.spike_requests else 0.0
        return pools * (steps * per_step + spike + self.soak_s + 0.5)
