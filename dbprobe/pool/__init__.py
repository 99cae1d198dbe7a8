"""Connection-pool stress: five pools driven to and past exhaustion, leaks, soak.

::

    from dbprobe.pool import StressConfig, Workload, stress

    report = stress(url, "all", config=StressConfig(size=5, overflow=5, timeout_s=1))

    from dbprobe.pool import track_leaks

    with track_leaks(engine) as scope:      # SQLAlchemy engine, psycopg_pool or asyncpg pool
        run_the_code(engine)
    scope.findings()                        # connection-leak, with where each checkout was made
"""

from __future__ import annotations

from dbprobe.pool.config import POOL_KINDS, StressConfig, Workload, concurrency_steps, parse_pools
from dbprobe.pool.leaks import CheckoutLeak, LeakScope, track_leaks
from dbprobe.pool.runner import stress

__all__ = [
    "POOL_KINDS",
    "CheckoutLeak",
    "LeakScope",
    "StressConfig",
    "Workload",
    "concurrency_steps",
    "parse_pools",
    "stress",
    "track_leaks",
]
