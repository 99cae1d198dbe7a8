"""What one pool's run produced: steps, spike, soak, warm-up, the pool's own statistics."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from dbprobe.pool.recording import (
    TIMEOUT_KINDS,
    LatencyHistogram,
    Recorder,
    SoakRecorder,
    StepResult,
    distribution,
)
from dbprobe.report.model import Distribution


@dataclasses.dataclass(frozen=True)
class WarmupResult:
    """The pool filled to its size before measuring: connections opened, how long it
    took (ms), and failures by kind (a server out of slots refuses some)."""

    opened: int
    duration_ms: float
    failures: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def to_metrics(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "duration_ms": round(self.duration_ms, 3),
            "failures": dict(self.failures),
        }


@dataclasses.dataclass(frozen=True)
class SpikeResult:
    """``requests`` fired at the same instant at an idle pool.

    drain_ms: from the fire to the last spike request's end; probe_recover_ms: from the
    fire until the pool served a probe request without waiting (acquire wait at most
    ``probe_threshold_ms``) and kept doing so; recover_ms: the later of the two (a pool
    that is not a FIFO queue can serve the probe ahead of the spike, so a fast probe
    alone does not mean the spike is over); None when the probe never was fast and
    sustained within the cap.
    """

    requests: int
    completed: int
    timeouts: int
    errors: Mapping[str, int]
    acquire_wait: Distribution
    response_time: Distribution
    timeout_wait: Distribution
    drain_ms: float | None
    recover_ms: float | None
    probe_threshold_ms: float
    probes: int
    unfinished_workers: int
    server_backends: int | None = None
    probe_recover_ms: float | None = None

    @property
    def recovered(self) -> bool:
        return self.recover_ms is not None

    def to_metrics(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "timeouts": self.timeouts,
            "errors": dict(self.errors),
            "acquire_wait": self.acquire_wait,
            "response_time": self.response_time,
            "timeout_wait": self.timeout_wait,
            "drain_ms": _r(self.drain_ms),
            "recover_ms": _r(self.recover_ms),
            "probe_recover_ms": _r(self.probe_recover_ms),
            "recovered": self.recovered,
            "probe_threshold_ms": round(self.probe_threshold_ms, 4),
            "probes": self.probes,
            "unfinished_workers": self.unfinished_workers,
            "server_backends": self.server_backends,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def summarise_spike(
    spike: Sequence[Recorder],
    probe: Recorder,
    *,
    fired_at: float,
    threshold_s: float,
    unfinished_workers: int,
    server_backends: int | None,
) -> SpikeResult:
    """Spike requests' waits and the recovery time seen by the prober."""
    waits: list[float] = []
    responses: list[float] = []
    timeout_waits: list[float] = []
    errors: dict[str, int] = {}
    timeouts = 0
    last_end = None
    for rec in spike:
        for t0, t1, t3 in zip(rec.t0, rec.t1, rec.t3, strict=True):
            waits.append((t1 - t0) * 1000.0)
            responses.append((t3 - fired_at) * 1000.0)
            last_end = t3 if last_end is None else max(last_end, t3)
        for f0, f1, kind in zip(rec.fail_start, rec.fail_end, rec.fail_kind, strict=True):
            last_end = f1 if last_end is None else max(last_end, f1)
            if kind in TIMEOUT_KINDS:
                timeouts += 1
                timeout_waits.append((f1 - f0) * 1000.0)
            else:
                errors[kind] = errors.get(kind, 0) + 1
    # Probes in time order; the pool has recovered at the first fast probe after the
    # last slow (or failed) one, provided the spike was over by the end of probing.
    events = [(t1, t1 - t0 <= threshold_s) for t0, t1 in zip(probe.t0, probe.t1, strict=True)]
    events += [(f1, False) for f1 in probe.fail_end]
    events.sort()
    probe_recover_ms: float | None = None
    fast_run: list[float] = []
    for when, fast in events:
        if fast:
            fast_run.append(when)
        else:
            fast_run = []
    if len(fast_run) >= 3 or (fast_run and len(fast_run) == len(events)):
        probe_recover_ms = max(0.0, (fast_run[0] - fired_at) * 1000.0)
    drain_ms = None if last_end is None else (last_end - fired_at) * 1000.0
    recover_ms = probe_recover_ms
    if recover_ms is not None and drain_ms is not None:
        recover_ms = max(recover_ms, drain_ms)
    return SpikeResult(
        requests=len(spike),
        completed=len(waits),
        timeouts=timeouts,
        errors=errors,
        acquire_wait=distribution(waits),
        response_time=distribution(responses),
        timeout_wait=distribution(timeout_waits),
        drain_ms=drain_ms,
        recover_ms=recover_ms,
        probe_recover_ms=probe_recover_ms,
        probe_threshold_ms=threshold_s * 1000.0,
        probes=len(events),
        unfinished_workers=unfinished_workers,
        server_backends=server_backends,
    )


@dataclasses.dataclass(frozen=True)
class SoakSample:
    """One sample of the soak, ``t_s`` seconds after it started.

    rss_bytes / open_fds: this process (None where the platform cannot say);
    checked_out: connections out of the pool; server_backends: the pool's sessions on
    the server (None if the monitor could not say); completed / timeouts: cumulative.
    """

    t_s: float
    rss_bytes: int | None
    open_fds: int | None
    checked_out: int
    server_backends: int | None
    completed: int
    timeouts: int


@dataclasses.dataclass(frozen=True)
class SoakResult:
    """Sustained load for ``duration_s`` at ``concurrency``, sampled every
    ``interval_s``."""

    duration_s: float
    concurrency: int
    interval_s: float
    samples: tuple[SoakSample, ...]
    throughput: Distribution
    acquire_wait: Distribution
    query_latency: Distribution
    response_time: Distribution
    completed: int
    timeouts: int
    errors: Mapping[str, int]
    unfinished_workers: int = 0

    def series(self, name: str) -> list[float | None]:
        return [getattr(s, name) for s in self.samples]

    def to_metrics(self) -> dict[str, Any]:
        return {
            "duration_s": round(self.duration_s, 3),
            "concurrency": self.concurrency,
            "interval_s": self.interval_s,
            "completed": self.completed,
            "timeouts": self.timeouts,
            "errors": dict(self.errors),
            "throughput": self.throughput,
            "acquire_wait": self.acquire_wait,
            "query_latency": self.query_latency,
            "response_time": self.response_time,
            "unfinished_workers": self.unfinished_workers,
            "series": {
                "t_s": [round(s.t_s, 3) for s in self.samples],
                "rss_bytes": self.series("rss_bytes"),
                "open_fds": self.series("open_fds"),
                "checked_out": self.series("checked_out"),
                "server_backends": self.series("server_backends"),
                "completed": self.series("completed"),
                "timeouts": self.series("timeouts"),
            },
        }


def summarise_soak(
    recorders: Sequence[SoakRecorder],
    samples: Sequence[SoakSample],
    *,
    duration_s: float,
    concurrency: int,
    interval_s: float,
    unfinished_workers: int,
) -> SoakResult:
    wait, query, response = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    errors: dict[str, int] = {}
    for rec in recorders:
        wait.merge(rec.wait)
        query.merge(rec.query)
        response.merge(rec.response)
        for kind, n in rec.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    rates = []
    for before, after in itertools.pairwise(samples):
        dt = after.t_s - before.t_s
        if dt > 0:
            rates.append((after.completed - before.completed) / dt)
    return SoakResult(
        duration_s=duration_s,
        concurrency=concurrency,
        interval_s=interval_s,
        samples=tuple(samples),
        throughput=distribution(rates, unit="q/s"),
        acquire_wait=wait.distribution(),
        query_latency=query.distribution(),
        response_time=response.distribution(),
        completed=sum(r.completed for r in recorders),
        timeouts=sum(r.timeouts for r in recorders),
        errors=errors,
        unfinished_workers=unfinished_workers,
    )


@dataclasses.dataclass
class PoolRun:
    """Everything the driver measured on one pool (filled in as the run goes, so a
    run stopped early still reports what it saw)."""

    kind: str
    application_name: str
    capacity: int
    warmup: WarmupResult | None = None
    steps: list[StepResult] = dataclasses.field(default_factory=list)
    spike: SpikeResult | None = None
    soak: SoakResult | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    aborted: str | None = None
    abort_error: BaseException | None = None
    stopped_early: str | None = None
    checked_out_at_end: int = 0
    idle_in_transaction_at_end: int | None = None
