"""Performance-regression check: a short benchmark subset against a committed baseline.

    python -m benchmarks.regress --baseline benchmarks/baseline.json [--rounds 7]
        [--threshold 25%] [--output results.json]
    python -m benchmarks.regress --baseline benchmarks/baseline.json --results results.json
    python -m benchmarks.regress --write-baseline benchmarks/baseline.json   # refresh it
    python -m benchmarks.regress --write-baseline benchmarks/baseline.json \
        --combine run1.json run2.json run3.json       # or from several runs' --output

Every figure is a RATIO of dbprobe's cost against a peer measured in the same process,
round by round, because ratios move far less with the load of a shared machine than
absolute times do:

* ``capture.orm-n+1`` — client CPU time of an N+1-heavy ORM loop under
  ``dbprobe.capture()`` over the same loop bare (lower is better);
* ``capture.core`` — the same for a loop of Core point SELECTs (lower is better);
* ``fingerprint.cold`` — time to normalise literal SQL with no cache, over the time a
  values-only regex takes on the same statements (lower is better);
* ``fingerprint.cached`` — time of ``fingerprint()`` on a SQLAlchemy-like stream (120
  texts repeated) over plain dict look-ups of the same texts (lower is better);
* ``pool.psycopg.4`` — dbprobe's load harness throughput over a bare hand-written loop
  on the same psycopg_pool, 4 workers (higher is better; shown, NOT gating: on a shared
  machine its rounds swing 0.3–2.5×);
* ``pool.psycopg.4.cpu`` — the harness's client CPU per request over the bare loop's
  (lower is better; gating);
* ``throwaway.clone`` — ``PostgresServer.clone()`` of the seeded shop database over
  ``CREATE DATABASE … TEMPLATE`` sent directly (lower is better).

Each metric keeps its per-round samples, the median and the min–max. The comparison uses
``dbprobe compare``'s verdict rule (:func:`dbprobe.compare.checks.decide`): a metric
regresses when its new median is worse than the baseline median by more than the
threshold (default 25%) AND lies outside the baseline's min–max spread (the interval of
``new median / baseline round`` is wholly on the bad side of 1). Beyond the threshold but
inside the spread is ``inconclusive`` and does not fail; a metric marked ``gate: false``
is compared and shown but never fails.

Exit status: 0 no regression, 1 a regression, 2 bad input (missing or unreadable file,
a baseline metric the results lack, bad arguments). Takes about a minute on a loaded
2-core machine; one throwaway PostgreSQL (``DBPROBE_POSTGRES`` picks the provider).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine_facts  # noqa: E402
from dbprobe.compare.checks import decide  # noqa: E402

SCHEMA = "dbprobe.bench-regress/1"
DEFAULT_THRESHOLD = 0.25
DEFAULT_ROUNDS = 5


class BadInput(Exception):
    """A file or argument the check cannot use (exit 2)."""


# -- documents ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    """Per-round samples of one ratio; ``higher_is_better`` gives its direction."""

    name: str
    samples: tuple[float, ...]
    higher_is_better: bool
    description: str = ""
    gate: bool = True
    """False: compared and shown, but never fails the check (too noisy to gate on)."""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": "ratio",
            "direction": "higher-is-better" if self.higher_is_better else "lower-is-better",
            "description": self.description,
            "gate": self.gate,
            "median": round(self.median, 6),
            "min": round(self.low, 6),
            "max": round(self.high, 6),
            "samples": [round(v, 6) for v in self.samples],
        }

    @classmethod
    def from_dict(cls, name: str, raw: Any) -> Metric:
        if not isinstance(raw, Mapping):
            raise BadInput(f"metric {name!r} is not an object")
        samples = raw.get("samples")
        if (
            not isinstance(samples, list)
            or not samples
            or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in samples)
        ):
            raise BadInput(f"metric {name!r} needs a non-empty list of positive samples")
        direction = raw.get("direction")
        if direction not in ("higher-is-better", "lower-is-better"):
            raise BadInput(
                f"metric {name!r}: direction must be higher-is-better or lower-is-better"
            )
        return cls(
            name,
            tuple(float(v) for v in samples),
            direction == "higher-is-better",
            str(raw.get("description") or ""),
            raw.get("gate", True) is not False,
        )


def parse_document(doc: Any, source: str) -> dict[str, Metric]:
    """The metrics of a baseline or results document; :class:`BadInput` when malformed."""
    if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
        raise BadInput(f"{source}: not a {SCHEMA} document")
    metrics = doc.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        raise BadInput(f"{source}: no metrics")
    return {name: Metric.from_dict(name, raw) for name, raw in metrics.items()}


def read_document(path: str) -> dict[str, Any]:
    """A baseline or results document, checked; :class:`BadInput` when unusable."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: cannot read it ({exc})") from None
    parse_document(doc, path)
    return dict(doc)


def load_document(path: str) -> dict[str, Metric]:
    return parse_document(read_document(path), path)


def combine(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One document holding every round of several runs (a steadier baseline: its median
    and spread cover more of the machine's moods). Metrics missing from any run are
    dropped."""
    parsed = [parse_document(d, f"run {i + 1}") for i, d in enumerate(docs)]
    names = [n for n in parsed[0] if all(n in p for p in parsed[1:])]
    metrics = [
        Metric(
            n,
            tuple(v for p in parsed for v in p[n].samples),
            parsed[0][n].higher_is_better,
            parsed[0][n].description,
            parsed[0][n].gate,
        )
        for n in names
    ]
    rounds = sum(int(d.get("rounds") or 0) for d in docs)
    seconds = sum(float(d.get("seconds") or 0) for d in docs)
    doc = make_document(metrics, rounds=rounds, seconds=seconds)
    doc["combined_from"] = [
        {
            "created_at": d.get("created_at"),
            "load_average": (d.get("machine") or {}).get("load_average"),
        }
        for d in docs
    ]
    return doc


def make_document(metrics: Sequence[Metric], *, rounds: int, seconds: float) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "rounds": rounds,
        "seconds": round(seconds, 1),
        "metrics": {m.name: m.to_dict() for m in metrics},
    }


# -- the comparison (pure) --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Change:
    """One metric, baseline against new: ``ratio`` is new median / baseline median;
    ``low``/``high`` are new median / baseline max and / baseline min (the new median
    against every baseline round); ``verdict`` as in ``dbprobe compare``."""

    metric: str
    higher_is_better: bool
    base_median: float
    base_low: float
    base_high: float
    new_median: float
    new_low: float
    new_high: float
    ratio: float
    low: float
    high: float
    threshold: float
    verdict: str
    gate: bool = True


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Every change, the metrics only in the results (no verdict), and the exit code."""

    changes: tuple[Change, ...]
    only_in_results: tuple[str, ...]

    @property
    def regressions(self) -> list[Change]:
        """Regressions of gating metrics (the ones that fail the check)."""
        return [c for c in self.changes if c.verdict == "regression" and c.gate]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def compare(
    baseline: Mapping[str, Metric],
    results: Mapping[str, Metric],
    threshold: float = DEFAULT_THRESHOLD,
) -> Outcome:
    """Compare every baseline metric with the results (see the module docstring).

    threshold: the fraction a median may get worse before it can fail (default 0.25).
    A baseline metric missing from the results is :class:`BadInput` (the check did not
    run what it guards), as is a metric whose direction changed.
    """
    missing = [name for name in baseline if name not in results]
    if missing:
        raise BadInput(f"the results lack baseline metrics: {', '.join(missing)}")
    changes = []
    for name, base in baseline.items():
        new = results[name]
        if new.higher_is_better != base.higher_is_better:
            raise BadInput(f"metric {name!r} changed direction between baseline and results")
        ratio = new.median / base.median
        low, high = new.median / base.high, new.median / base.low
        changes.append(
            Change(
                name, base.higher_is_better, base.median, base.low, base.high,
                new.median, new.low, new.high, ratio, low, high, threshold,
                decide(ratio, low, high, threshold, higher_is_better=base.higher_is_better),
                base.gate,
            )
        )  # fmt: skip
    extra = tuple(name for name in results if name not in baseline)
    return Outcome(tuple(changes), extra)


def render(outcome: Outcome) -> str:
    """The comparison as a plain-text table."""
    header = (
        f"{'metric':<20} {'direction':<7} {'baseline median (min–max)':<28} "
        f"{'new median (min–max)':<28} {'change':>8}  verdict"
    )
    lines = [header, "-" * len(header)]
    for c in outcome.changes:
        lines.append(
            f"{c.metric:<20} {'higher' if c.higher_is_better else 'lower':<7} "
            f"{f'{c.base_median:.3f} ({c.base_low:.3f}–{c.base_high:.3f})':<28} "
            f"{f'{c.new_median:.3f} ({c.new_low:.3f}–{c.new_high:.3f})':<28} "
            f"{(c.ratio - 1) * 100:>+7.1f}%  {c.verdict}{'' if c.gate else ' (not gating)'}"
        )
    for name in outcome.only_in_results:
        lines.append(f"{name:<20} (not in the baseline: no verdict)")
    threshold = outcome.changes[0].threshold if outcome.changes else DEFAULT_THRESHOLD
    lines.append(
        f"\nregression = median worse than the baseline's by more than {threshold:.0%} and "
        f"outside its min–max spread: "
        + (
            f"{len(outcome.regressions)} regression(s): "
            + ", ".join(c.metric for c in outcome.regressions)
            if outcome.regressions
            else "none"
        )
    )
    return "\n".join(lines)


def parse_threshold(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text.strip())
    if not m or not 0 < float(m.group(1)) < 1000:
        raise BadInput(f"bad threshold {text!r}: expected a percentage such as 25%")
    return float(m.group(1)) / 100


# -- the measurements -------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _paired(
    ours: Callable[[], float], peer: Callable[[], float], rounds: int, best_of: int = 3
) -> tuple[float, ...]:
    """Per round: our cost over the peer's, each the best of ``best_of`` runs measured
    back to back in alternating order (the minimum is the run least disturbed by the
    other processes on the machine)."""
    out = []
    for r in range(rounds):
        a: list[float] = []
        b: list[float] = []
        for k in range(best_of):
            if (r + k) % 2 == 0:
                a.append(ours())
                b.append(peer())
            else:
                b.append(peer())
                a.append(ours())
        out.append(min(a) / min(b))
    return tuple(out)


def measure_capture(url: str, rounds: int) -> list[Metric]:
    """Client CPU time of two loops under ``dbprobe.capture()`` over the same loops bare."""
    from sqlalchemy import bindparam, create_engine, select
    from sqlalchemy.orm import Session

    import dbprobe
    from fixtures.shop.models import Customer, Order

    engine = create_engine(url)
    orders_stmt = select(Order).order_by(Order.id).limit(200)
    email = Customer.__table__.c.email
    point = select(email).where(Customer.__table__.c.id == bindparam("id"))

    def orm_loop() -> None:
        with Session(engine) as session:
            for order in session.scalars(orders_stmt).all():
                len(order.customer.full_name)

    def core_loop() -> None:
        with engine.connect() as conn:
            for i in range(600):
                conn.execute(point, {"id": 1 + i % 500}).scalar_one()

    def cpu(fn: Callable[[], None], captured: bool) -> Callable[[], float]:
        def run() -> float:
            c0 = time.process_time()
            if captured:
                with dbprobe.capture():
                    fn()
            else:
                fn()
            return time.process_time() - c0

        return run

    try:
        for fn in (orm_loop, core_loop):  # warm caches, the pool and the statement cache
            cpu(fn, True)()
            cpu(fn, False)()
        metrics = []
        for name, fn, what in (
            ("capture.orm-n+1", orm_loop, "N+1 ORM loop (200 orders, lazy customer)"),
            ("capture.core", core_loop, "600 Core point SELECTs"),
        ):
            samples = _paired(cpu(fn, True), cpu(fn, False), rounds)
            metrics.append(Metric(name, samples, False, f"{what}: CPU capture() / bare"))
            _progress(f"{name}: {statistics.median(samples):.3f}")
        return metrics
    finally:
        engine.dispose()


def measure_fingerprint(
    rounds: int, statements: int = 900, stream_length: int = 100_000
) -> list[Metric]:
    """dbprobe's normaliser against a values-only regex on ``statements`` literal
    statements, and its cache against a dict on a stream of ``stream_length``."""
    from benchmarks.bench_fingerprint import corpus, regex_simple
    from dbprobe.analysis import fingerprint as fpmod

    bound, literal, _ = corpus(300)
    literal = (literal * (statements // len(literal) + 1))[:statements]

    def timed(fn: Callable[[str], object], items: Sequence[str]) -> Callable[[], float]:
        def run() -> float:  # CPU time: the work is pure Python
            t0 = time.process_time()
            for s in items:
                fn(s)
            return time.process_time() - t0

        return run

    cold = _paired(timed(fpmod._normalize_uncached, literal), timed(regex_simple, literal), rounds)
    stream = [bound[i % 120] for i in range(stream_length)]
    table = {s: fpmod.fingerprint(s) for s in stream}  # also fills dbprobe's cache
    cached = _paired(timed(fpmod.fingerprint, stream), timed(table.get, stream), rounds)
    _progress(f"fingerprint.cold: {statistics.median(cold):.3f}")
    _progress(f"fingerprint.cached: {statistics.median(cached):.3f}")
    return [
        Metric("fingerprint.cold", cold, False, "normalize (no cache) / regex, literal SQL"),
        Metric("fingerprint.cached", cached, False, "fingerprint() cached / dict.get"),
    ]


def measure_pool(dsn: str, rounds: int, seconds: float) -> list[Metric]:
    """Harness against a bare loop on psycopg_pool with 4 workers (bench_pool's own
    functions): throughput, and client CPU per request (steadier under load)."""
    from benchmarks.bench_pool import bare, harness
    from dbprobe.urls import parse_url

    target = parse_url(dsn)
    qps: list[float] = []
    cpu: list[float] = []
    for r in range(rounds):
        order = (harness, bare) if r % 2 == 0 else (bare, harness)
        got = {fn.__name__: fn("psycopg", target, 4, seconds) for fn in order}
        h, b = got["harness"], got["bare"]
        qps.append(h["qps"] / b["qps"])
        # client CPU (share of a core) per completed request; both windows are ``seconds``
        cpu.append((h["cpu"] / max(h["n"], 1)) / (b["cpu"] / max(b["n"], 1)))
    _progress(f"pool.psycopg.4: {statistics.median(qps):.3f}")
    _progress(f"pool.psycopg.4.cpu: {statistics.median(cpu):.3f}")
    return [
        Metric(
            "pool.psycopg.4",
            tuple(qps),
            True,
            "harness / bare q/s, psycopg_pool, 4 (not gating: throughput swings with the load)",
            gate=False,
        ),
        Metric("pool.psycopg.4.cpu", tuple(cpu), False, "harness / bare CPU per request"),
    ]


def measure_clone(pg: Any, template: str, rounds: int) -> list[Metric]:
    """``clone()`` against ``CREATE DATABASE … TEMPLATE`` sent directly."""
    made: list[str] = []

    def ours() -> float:
        t0 = time.perf_counter()
        made.append(pg.clone(template))
        return time.perf_counter() - t0

    def peer() -> float:
        name = f"peer_{os.getpid()}_{len(made)}"
        t0 = time.perf_counter()
        with pg.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        elapsed = time.perf_counter() - t0
        made.append(name)
        return elapsed

    samples = _paired(ours, peer, rounds)
    with pg.connect("postgres") as conn:
        for name in made:
            conn.execute(f'DROP DATABASE "{name}"')
    _progress(f"throwaway.clone: {statistics.median(samples):.3f}")
    return [Metric("throwaway.clone", samples, False, "clone() / direct CREATE DATABASE")]


def measure(rounds: int = DEFAULT_ROUNDS, pool_seconds: float = 0.4) -> dict[str, Any]:
    """Run the subset on one throwaway server; the results document."""
    from sqlalchemy import create_engine

    from dbprobe.pg import throwaway
    from fixtures.shop import seed

    t0 = time.perf_counter()
    metrics: list[Metric] = []
    metrics += measure_fingerprint(rounds)
    with throwaway() as pg:
        _progress(f"PostgreSQL {pg.version} ({pg.provider})")
        shop = pg.create_database()
        setup = create_engine(pg.url(shop))
        with setup.begin() as conn:
            seed.build(conn, "small")
        setup.dispose()
        metrics += measure_capture(pg.socket_url(shop), rounds)
        metrics += measure_clone(pg, shop, rounds)
        bench = pg.create_database()
        pg.execute(
            "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, "
            "filler char(84)); INSERT INTO pgbench_accounts SELECT g, 1, 0, '' "
            "FROM generate_series(1, 100000) g; ANALYZE pgbench_accounts",
            bench,
        )
        metrics += measure_pool(pg.dsn(bench), min(rounds, 3), pool_seconds)
    return make_document(metrics, rounds=rounds, seconds=time.perf_counter() - t0)


# -- the command ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.regress", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--baseline", help="the committed baseline to compare against")
    ap.add_argument("--results", help="compare this results file instead of measuring")
    ap.add_argument("--output", help="also write the new results here")
    ap.add_argument(
        "--write-baseline",
        metavar="PATH",
        help="write a new baseline: measured now, or combined from --results/--combine files",
    )
    ap.add_argument(
        "--combine",
        nargs="+",
        metavar="RESULTS",
        help="results files to merge (with --write-baseline)",
    )
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="default 5")
    ap.add_argument("--threshold", default="25%", help="default 25%%")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    try:
        threshold = parse_threshold(args.threshold)
        if not args.baseline and not args.write_baseline:
            raise BadInput("give --baseline PATH (or --write-baseline PATH to make one)")
        if args.rounds < 3:
            raise BadInput("--rounds must be at least 3")
        if args.combine and not args.write_baseline:
            raise BadInput("--combine needs --write-baseline PATH")
        if args.write_baseline and (args.combine or args.results):
            files = [*(args.combine or []), *([args.results] if args.results else [])]
            merged = combine([read_document(f) for f in files])
            Path(args.write_baseline).write_text(json.dumps(merged, indent=1) + "\n")
            print(f"baseline of {merged['rounds']} rounds written to {args.write_baseline}")
            if not args.baseline:
                return 0
        baseline = load_document(args.baseline) if args.baseline else None
        if args.results:
            results = load_document(args.results)
        else:
            print(f"measuring {args.rounds} rounds …", file=sys.stderr)
            try:
                doc = measure(args.rounds)
            except Exception as exc:  # one line, never a traceback
                message = str(exc).splitlines()[0] if str(exc) else ""
                raise BadInput(f"the measurement failed: {type(exc).__name__}: {message}") from exc
            print(f"measured in {doc['seconds']} s", file=sys.stderr)
            for path in filter(None, (args.output, args.write_baseline)):
                Path(path).write_text(json.dumps(doc, indent=1) + "\n")
            results = parse_document(doc, "measured results")
        if baseline is None:
            print(f"baseline written to {args.write_baseline}")
            return 0
        outcome = compare(baseline, results, threshold)
    except BadInput as exc:
        print(f"regress: error: {exc}", file=sys.stderr)
        return 2
    print(render(outcome))
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
