"""Cold-start connection latency by phase, per driver.

::

    from dbprobe.coldstart import ColdStartOptions, run, sample

    result = run(target, ColdStartOptions(samples=30))   # full probe (dbprobe coldstart)
    metrics, findings = sample(target)                    # a short sample (dbprobe audit)

``metrics["coldstart"][<driver>][<phase>]`` are :class:`~dbprobe.report.model.Distribution`
objects in ms; phases ``dns``, ``tcp``, ``tls``, ``startup`` (from dbprobe's protocol
client), ``connect``, ``driver_init``, ``first_query``, ``total`` (from the driver);
``detail`` holds the protocol client's finer figures from the same pairs and
``connect_gap``, the driver's connect minus the paired establishment, pair by pair;
``_meta`` says which is which. See docs/coldstart.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dbprobe.analysis.coldstart_verdicts import Thresholds
from dbprobe.coldstart.drivers import DRIVERS
from dbprobe.coldstart.runner import ColdStartOptions, ColdStartResult, ProgressFn, run
from dbprobe.report.model import Finding
from dbprobe.urls import DatabaseTarget

__all__ = [
    "DRIVERS",
    "ColdStartOptions",
    "ColdStartResult",
    "Thresholds",
    "audit_sample",
    "run",
    "sample",
]


def sample(
    target: DatabaseTarget,
    samples: int = 5,
    drivers: Sequence[str] = ("psycopg",),
    *,
    threshold_ms: float = 100.0,
    connect_timeout: float | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Any], list[Finding]]:
    """A short cold-start sample for other probes (``dbprobe audit``).

    samples: cold connections per driver (default 5); drivers: default psycopg only;
    threshold_ms: p95 of connect + first query above which ``slow-cold-start`` is raised
    (default 100). No pools, no fresh processes. Returns ``({"coldstart": tree},
    findings)``, ready for ``report.metrics.update(...)`` and ``report.extend(...)``.
    Raises :class:`~dbprobe.errors.ConnectError` (one line) when the server cannot be
    reached.
    """
    options = ColdStartOptions(
        drivers=tuple(drivers),
        samples=samples,
        warm=False,
        process=False,
        connect_timeout=connect_timeout,
        thresholds=Thresholds(total_p95_ms=threshold_ms),
    )
    result = run(target, options, progress=progress)
    return {"coldstart": result.metrics}, list(result.findings)


def audit_sample(
    target: DatabaseTarget,
    *,
    samples: int = 5,
    connect_timeout_s: float | None = None,
    drivers: Sequence[str] = ("psycopg",),
    threshold_ms: float = 100.0,
) -> tuple[dict[str, Any], list[Finding]]:
    """The hook ``dbprobe audit`` calls: like :func:`sample`, but returns the subtree for
    ``report.metrics["coldstart"]`` itself. connect_timeout_s: seconds (default: the
    URL's, else 10)."""
    metrics, findings = sample(
        target,
        samples=samples,
        drivers=drivers,
        threshold_ms=threshold_ms,
        connect_timeout=connect_timeout_s,
    )
    return metrics["coldstart"], findings
