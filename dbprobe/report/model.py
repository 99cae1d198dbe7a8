"""The report model shared by every probe: findings, metrics, summary.

The JSON form (``Report.to_dict``) is the ``dbprobe.report/1`` contract in DESIGN.md,
described by ``dbprobe/schemas/report.schema.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import math
import platform
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dbprobe import __version__

SCHEMA_ID = "dbprobe.report/1"


class Severity(str, enum.Enum):
    """Finding severity, ordered ``info`` < ``warning`` < ``error``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown severity {value!r} (choose {choices})") from None


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem found, with evidence and a concrete fix.

    rule: stable kebab-case rule id (``n-plus-one``); message: what is wrong;
    recommendation: what to do, as exactly as we can say it. ``location`` is the
    application's ``file:line``; ``test`` the pytest node id; ``evidence`` holds
    rule-specific numbers (costs, rows, timings). ``fingerprint`` is a stable key
    for matching the same finding across runs (``dbprobe compare``).
    """

    rule: str
    severity: Severity
    message: str
    recommendation: str
    location: str | None = None
    test: str | None = None
    table: str | None = None
    sql: str | None = None
    count: int | None = None
    fingerprint: str | None = None
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "severity": self.severity.value,
            "message": self.message,
            "recommendation": self.recommendation,
        }
        for key in ("location", "test", "table", "sql", "count", "fingerprint"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["evidence"] = _jsonable(self.evidence)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(
            rule=data["rule"],
            severity=Severity.parse(data["severity"]),
            message=data["message"],
            recommendation=data["recommendation"],
            location=data.get("location"),
            test=data.get("test"),
            table=data.get("table"),
            sql=data.get("sql"),
            count=data.get("count"),
            fingerprint=data.get("fingerprint"),
            evidence=data.get("evidence") or {},
        )

    def identity(self) -> tuple[str, str]:
        """What makes two findings 'the same' across runs, never the message text: the
        rule plus the test, the file of the location, the table and the fingerprint.

        The line of the location is left out (and any ``path:line`` inside the
        fingerprint is cut to the path), so inserting a line above a finding does not
        turn it into a new one; :meth:`line` breaks ties between findings that are
        otherwise equal (``dbprobe compare`` pairs them by line)."""
        where = "|".join(
            x
            for x in (
                self.test,
                location_file(self.location),
                self.table,
                strip_lines(self.fingerprint) if self.fingerprint else None,
            )
            if x
        )
        return (self.rule, where)

    @property
    def line(self) -> int | None:
        """The line number of ``location`` (``app/orders.py:42`` → 42), or ``None``."""
        if not self.location:
            return None
        _, sep, tail = self.location.rpartition(":")
        return int(tail) if sep and tail.isdigit() else None

    def with_test(self, test: str) -> Finding:
        return dataclasses.replace(self, test=test)


_PATH_LINE = re.compile(r"([\w./\\-]+\.[A-Za-z0-9]+):\d+")


def location_file(location: str | None) -> str | None:
    """The file of a ``file:line`` location (``app/orders.py:42`` → ``app/orders.py``)."""
    if not location:
        return None
    head, sep, tail = location.rpartition(":")
    return head if sep and head and tail.isdigit() else location


def strip_lines(text: str) -> str:
    """``text`` with every ``path.ext:N`` cut to ``path.ext`` (fingerprints that embed a
    call site keep matching when the code moves by a line)."""
    return _PATH_LINE.sub(r"\1", text)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of already-sorted values."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


TIME_ORDER = "time"
"""``Distribution.order`` when the raw samples are in the order they were measured."""


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A latency (or other) distribution: p50/p95/p99/max with the sample count.

    unit: ``ms`` by default. ``samples`` keeps the raw values when a later
    comparison needs them (``dbprobe compare`` decides regressions from them).
    ``order`` is ``"time"`` when ``samples`` are in the order they were measured (the
    default of :meth:`of`), so a comparison can resample blocks of neighbouring samples
    (they share the machine's load of the moment); ``None`` when their order says
    nothing (sorted, thinned, merged from several workers).
    """

    n: int
    p50: float
    p95: float
    p99: float
    max: float
    min: float
    mean: float
    unit: str = "ms"
    samples: tuple[float, ...] | None = None
    order: str | None = None

    @classmethod
    def of(
        cls,
        values: Iterable[float],
        unit: str = "ms",
        keep: bool = True,
        *,
        time_ordered: bool = True,
    ) -> Distribution:
        """The distribution of ``values``.

        keep: keep the raw values (default True); time_ordered: ``values`` come in the
        order they were measured (default True: every probe appends as it measures), so
        they are kept in that order and marked ``order: "time"``; pass False for values
        in any other order (merged from several workers, sorted), which are then kept
        sorted.
        """
        given = [float(v) for v in values]
        data = sorted(given)
        if not data:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan, unit, () if keep else None)
        kept: tuple[float, ...] | None = None
        order: str | None = None
        if keep:
            kept = tuple(given) if time_ordered else tuple(data)
            order = TIME_ORDER if time_ordered else None
        return cls(
            n=len(data),
            p50=percentile(data, 50),
            p95=percentile(data, 95),
            p99=percentile(data, 99),
            max=data[-1],
            min=data[0],
            mean=sum(data) / len(data),
            unit=unit,
            samples=kept,
            order=order,
        )

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "unit": self.unit,
            "n": self.n,
            "p50": _num(self.p50),
            "p95": _num(self.p95),
            "p99": _num(self.p99),
            "max": _num(self.max),
            "min": _num(self.min),
            "mean": _num(self.mean),
        }
        if with_samples and self.samples is not None:
            out["samples"] = [round(v, 6) for v in self.samples]
            if self.order is not None and self.samples:
                out["order"] = self.order
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distribution:
        samples = data.get("samples")
        nan = math.nan
        order = data.get("order")
        return cls(
            n=int(data["n"]),
            p50=_f(data.get("p50", nan)),
            p95=_f(data.get("p95", nan)),
            p99=_f(data.get("p99", nan)),
            max=_f(data.get("max", nan)),
            min=_f(data.get("min", nan)),
            mean=_f(data.get("mean", nan)),
            unit=str(data.get("unit", "ms")),
            samples=tuple(float(v) for v in samples) if samples is not None else None,
            order=str(order) if isinstance(order, str) and samples is not None else None,
        )


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def is_distribution(obj: Any) -> bool:
    """Whether a metrics node is a serialised :class:`Distribution`."""
    return isinstance(obj, Mapping) and "n" in obj and "p50" in obj and "p95" in obj


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Distribution):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            return _jsonable(to_dict())
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


@dataclasses.dataclass(frozen=True)
class Target:
    """What was probed: the masked URL and the server version."""

    url: str | None = None
    server_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "server_version": self.server_version}


def environment() -> dict[str, Any]:
    """Machine and version facts saved with every report, so comparisons across
    machines can warn instead of mislead."""
    import os

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
    }


@dataclasses.dataclass
class Report:
    """Findings and metrics of one run of one command (or one pytest session).

    command: what produced it (``audit``, ``pool``, ``coldstart``, ``demo``, ``pytest``,
    ``explain``). ``metrics`` is a JSON-ready tree whose leaves may be
    :class:`Distribution` objects (serialised with their samples).
    """

    command: str
    target: Target = dataclasses.field(default_factory=Target)
    findings: list[Finding] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    started_at: _dt.datetime = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc)
    )
    duration_s: float = 0.0
    environment: dict[str, Any] = dataclasses.field(default_factory=environment)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, *findings: Finding) -> None:
        self.findings.extend(findings)

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)

    def summary(self) -> dict[str, int]:
        counts = {s.value: 0 for s in (Severity.ERROR, Severity.WARNING, Severity.INFO)}
        for f in self.findings:
            counts[f.severity.value] += 1
        return counts

    def sorted_findings(self) -> list[Finding]:
        return sorted(
            self.findings,
            key=lambda f: (-f.severity.rank, f.rule, f.test or "", f.location or "", f.table or ""),
        )

    def exit_code(self, fail_on: str = "error") -> int:
        """0 when nothing is at or above ``fail_on`` (``error|warning|info|never``), else 1."""
        if fail_on == "never":
            return 0
        threshold = Severity.parse(fail_on).rank
        return 1 if any(f.severity.rank >= threshold for f in self.findings) else 0

    def to_dict(self) -> dict[str, Any]:
        started = self.started_at.astimezone(_dt.timezone.utc).replace(microsecond=0)
        return {
            "schema": SCHEMA_ID,
            "tool": {"name": "dbprobe", "version": __version__},
            "command": self.command,
            "target": self.target.to_dict(),
            "started_at": started.isoformat().replace("+00:00", "Z"),
            "duration_s": round(self.duration_s, 3),
            "findings": [f.to_dict() for f in self.sorted_findings()],
            "metrics": _jsonable(self.metrics),
            "summary": self.summary(),
            "environment": self.environment,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        if data.get("schema") != SCHEMA_ID:
            raise ValueError(f"not a {SCHEMA_ID} document (schema={data.get('schema')!r})")
        started = _dt.datetime.fromisoformat(str(data["started_at"]).replace("Z", "+00:00"))
        target = data.get("target") or {}
        return cls(
            command=str(data.get("command", "")),
            target=Target(target.get("url"), target.get("server_version")),
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            metrics=dict(data.get("metrics") or {}),
            started_at=started,
            duration_s=float(data.get("duration_s", 0.0)),
            environment=dict(data.get("environment") or {}),
            notes=list(data.get("notes") or []),
        )
