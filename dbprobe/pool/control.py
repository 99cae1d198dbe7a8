"""State the driver shares with its workers, identical for threads and asyncio.

Workers read plain attributes (``control.stop``) in their loop: one attribute load per
request, no lock. Writes come from the driver (stop, abort) or are single assignments
(``suspect``), which are atomic in CPython.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from array import array
from collections.abc import Callable
from typing import Protocol

ProgressFn = Callable[[str, int, int], None]
"""``progress(label, done, total)``: a progress bar per step (``Progress.update``)."""

TICK_S = 0.1
"""How often the driver wakes during a step: progress, server checks, caps."""

FAILURE_BACKOFF_S = 0.01
"""A worker whose request failed with anything but a clean pool timeout pauses this long,
so a refusing server is not hammered with connection attempts (each forks a backend)."""


class ServerWatch(Protocol):
    """What the driver needs from the server monitor (``dbprobe.pool.server``)."""

    def ping(self) -> bool: ...

    def backends(self, application_name: str) -> int | None: ...

    def idle_in_transaction(self, application_name: str) -> int | None: ...


class RunControl:
    """Flags shared by the driver and its workers.

    stop: workers finish their current request and return; suspect: a worker saw a
    failure that may mean the server is gone (the driver checks and clears it); abort:
    why the run stopped early (server gone, time cap), ``None`` while all is well;
    deadline: ``perf_counter`` time at which the whole run stops (the total cap).
    """

    __slots__ = ("abort", "deadline", "stop", "suspect")

    def __init__(self, deadline: float = math.inf) -> None:
        self.stop = False
        self.suspect: BaseException | None = None
        self.abort: str | None = None
        self.deadline = deadline

    def failed(self, kind: str, exc: BaseException) -> None:
        from dbprobe.pool.failures import is_fatal

        if is_fatal(kind) and self.suspect is None:
            self.suspect = exc

    @property
    def out_of_time(self) -> bool:
        return time.perf_counter() >= self.deadline


class Schedule:
    """Open-loop arrival times: a Poisson process at ``rate`` requests/s from ``start``
    to ``end`` (``perf_counter`` seconds). Workers take the next slot with :meth:`take`
    (``itertools.count`` is atomic under the GIL, so threads need no lock)."""

    __slots__ = ("_next", "end", "rate", "start", "times")

    def __init__(self, rate: float, start: float, end: float, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.rate = rate
        self.start = start
        self.end = end
        times = array("d")
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            times.append(t)
        self.times = times
        self._next = itertools.count().__next__

    def take(self) -> int:
        """The next slot's index, or -1 when the schedule is used up."""
        slot = self._next()
        return slot if slot < len(self.times) else -1

    def backlog(self, at: float) -> int:
        """Slots due before ``at`` that no worker has taken (an unbounded queue grows
        this). Takes one slot number, which is harmless once the window is over."""
        return len(self.overdue(at))

    def overdue(self, at: float) -> list[float]:
        """Due times (``perf_counter`` s) of the slots due before ``at`` that no worker
        has taken. Takes one slot number, which is harmless once the window is over."""
        taken = self._next()
        return [t for t in self.times[taken:] if t < at]


class SpikeFlags:
    """The spike's shared state: workers that reached the start line, whether the spike
    requests are all done, and when the prober must give up (``perf_counter``)."""

    __slots__ = ("deadline", "done", "ready")

    def __init__(self) -> None:
        self.ready: list[int] = []
        self.done = False
        self.deadline = math.inf
