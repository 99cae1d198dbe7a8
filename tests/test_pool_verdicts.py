"""Pool verdicts on captured real runs (tests/data/pool/*.json, see capture.py there)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from dbprobe.analysis.pool_verdicts import (
    Knee,
    SpikeView,
    StepView,
    advise_sizing,
    find_knee,
    judge_client,
    judge_degradation,
    judge_exhaustion,
    judge_pool,
    judge_soak,
    pool_findings,
)
from dbprobe.report.model import Finding, Report, Severity, Target
from dbprobe.report.schema import validate_report

DATA = Path(__file__).parent / "data" / "pool"


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


def steps_of(doc: dict[str, Any], pool: str) -> list[StepView]:
    return [StepView.from_metrics(s) for s in doc["pool"][pool]["steps"]]


def judge(doc: dict[str, Any], pool: str, **overrides: Any) -> Any:
    tree = doc["pool"][pool]
    server = doc["pool_run"]["server"]
    kwargs: dict[str, Any] = {
        "capacity": tree["capacity"],
        "timeout_s": tree["timeout_s"],
        "server_cores": 2,
        "spindles": 0,
        "instances": 1,
        "budget": server["budget"],
        "local_server": server["local"],
    }
    kwargs.update(overrides)
    return judge_pool(pool, tree, **kwargs)


def assert_findings_valid(findings: list[Finding]) -> None:
    report = Report(command="pool", target=Target("postgresql://app@127.0.0.1:5432/shop"))
    report.extend(findings)
    validate_report(report.to_dict())


# -- knee ------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["sqlalchemy", "psycopg"])
def test_knee_sits_at_the_capacity_when_connections_are_held(pool: str) -> None:
    # Each request holds its connection 10 ms: throughput is concurrency / 10 ms until
    # the pool's 4 connections are all busy, then flat.
    doc = load("think_exhaustion")
    steps = steps_of(doc, pool)
    knee = find_knee(steps, capacity=4, local_server=False)
    assert knee.concurrency == 4
    assert knee.limited_by == "pool"
    assert "concurrency 4" in knee.reason
    past = [s for s in steps if s.concurrency > 4]
    # Past the knee requests queue: psycopg_pool serves them in order (response time
    # grows by the queue), SQLAlchemy's QueuePool is not fair (most requests do not wait,
    # the unlucky ones time out).
    assert knee.wait_growth_ms > 10 or sum(s.timeouts for s in past) > 0


def test_knee_with_think_time_is_pool_limited_even_on_a_busy_machine() -> None:
    # think_exhaustion was captured with every core busy, but each request held its
    # connection ~11 ms (10 ms think): 4 connections / 11 ms ≈ 355 q/s, the plateau seen.
    # Little's law says the pool is the limit, whatever the machine's load.
    doc = load("think_exhaustion")
    for local in (True, False):
        knee = find_knee(steps_of(doc, "psycopg"), capacity=4, local_server=local)
        assert knee.limited_by == "pool"
        assert "Little's law" in knee.reason


def test_knee_on_a_saturated_machine_is_blamed_on_the_host() -> None:
    # select1_all: SELECT 1 (the query is most of the hold time) with every core busy.
    doc = load("select1_all")
    knee = find_knee(steps_of(doc, "psycopg"), capacity=4, local_server=True)
    assert knee.limited_by == "host"
    assert "client and local server" in knee.reason


def test_busy_client_machine_counts_when_the_server_is_remote() -> None:
    # The machine measured is the client's: with a remote server (or one whose address
    # was not recognised as local) a saturated client machine is still the limit, never
    # the server; and no pool-oversized.
    doc = load("select1_all")
    tree = dict(doc["pool"]["psycopg"])
    verdicts = judge_pool(
        "psycopg", tree, capacity=16, timeout_s=1.0, server_cores=2, spindles=0,
        instances=1, budget=97, local_server=False,
    )  # fmt: skip
    assert verdicts.knee.concurrency == 8
    assert verdicts.knee.limited_by == "host"
    assert "client's machine" in verdicts.knee.reason
    assert "pool-oversized" not in {f.rule for f in pool_findings(verdicts)}
    assert verdicts.sizing.recommended_size is None


def _synthetic_step(c: int, qps: float, cpu: float, host: float = 0.4) -> dict[str, Any]:
    samples = [qps * f for f in (0.95, 0.97, 0.98, 0.99, 1.0, 1.0, 1.01, 1.02, 1.03, 1.05)]
    dist = {"n": 10, "p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0, "min": 0.1}
    return {
        "concurrency": c, "offered_rate": None, "throughput_qps": qps, "completed": int(qps),
        "throughput": {**dist, "unit": "q/s", "samples": samples},
        "acquire_wait": {**dist, "p50": 0.01}, "query_latency": {**dist, "p50": 0.9},
        "response_time": {**dist, "p50": 1.0 * c}, "timeouts": 0, "errors": {},
        "client_cpu": cpu, "host_cpu_busy": host, "pool_stats": {},
    }  # fmt: skip


def test_client_cpu_is_judged_over_the_plateau_not_the_knee_step_alone() -> None:
    # CPU 0.80 at the knee (concurrency 2), 0.95+ above it: the old verdict called the
    # knee server-limited (0.80 < 0.85) and raised both client-bound and pool-oversized.
    tree = {
        "steps": [
            _synthetic_step(1, 1000, 0.50),
            _synthetic_step(2, 1900, 0.80),
            _synthetic_step(4, 2000, 0.95),
            _synthetic_step(8, 1200, 0.97),
        ]
    }
    verdicts = judge_pool(
        "asyncpg", tree, capacity=8, timeout_s=1.0, server_cores=2, spindles=0,
        instances=1, budget=97, local_server=False,
    )  # fmt: skip
    assert verdicts.knee.concurrency == 2
    assert verdicts.knee.limited_by == "client"
    assert verdicts.knee.plateau_client_cpu == 0.97
    rules = {f.rule for f in pool_findings(verdicts)}
    assert "client-bound" in rules
    assert "pool-oversized" not in rules


def test_client_bound_run_never_says_pool_oversized() -> None:
    # A server-limited knee with a significant drop at the capacity, but the client was
    # saturated at peak throughput: the pool may not be shrunk on this evidence.
    steps = [
        _synthetic_step(1, 1000, 0.5),
        _synthetic_step(2, 2000, 0.86),
        _synthetic_step(4, 1950, 0.6),
        _synthetic_step(8, 1200, 0.6),
    ]
    tree = {"steps": steps}
    verdicts = judge_pool(
        "asyncpg", tree, capacity=8, timeout_s=1.0, server_cores=2, spindles=0,
        instances=1, budget=97, local_server=False,
    )  # fmt: skip
    assert verdicts.client.bound
    assert "pool-oversized" not in {f.rule for f in pool_findings(verdicts)}


def test_no_knee_while_throughput_still_rises() -> None:
    steps = steps_of(load("think_exhaustion"), "psycopg")[:3]  # concurrency 1, 2, 4
    knee = find_knee(steps, capacity=4)
    assert knee.concurrency is None
    assert "still rising" in knee.reason


def test_knee_needs_three_closed_loop_steps() -> None:
    steps = steps_of(load("open_loop"), "psycopg-async")
    open_only = [s for s in steps if not s.closed_loop]
    assert find_knee(open_only, capacity=4).concurrency is None


def test_server_limited_knee_is_oversized_only_when_more_connections_serve_less() -> None:
    # select1_all psycopg: throughput flattens at concurrency 8 with capacity 4; replay
    # it as a pool of 16 with the host not saturated: a server-limited knee at 8.
    doc = load("select1_all")
    steps = [dataclasses.replace(s, host_cpu_busy=0.5) for s in steps_of(doc, "psycopg")]
    knee = find_knee(steps, capacity=16, local_server=True)
    assert knee.concurrency == 8
    assert knee.limited_by == "server"
    tree = dict(doc["pool"]["psycopg"])
    tree["steps"] = [dict(s, host_cpu_busy=0.5) for s in tree["steps"]]

    def verdicts_of(tree: dict[str, Any]) -> Any:
        return judge_pool(
            "psycopg", tree, capacity=16, timeout_s=1.0, server_cores=2, spindles=0,
            instances=1, budget=97, local_server=True,
        )  # fmt: skip

    # Flat from 8 to 16 (6197 vs 6322 q/s, per-interval samples overlap): no evidence
    # that the extra connections cost anything, so no pool-oversized.
    flat = verdicts_of(tree)
    assert flat.contention is not None and not flat.contention.significant
    assert "pool-oversized" not in {f.rule for f in pool_findings(flat)}
    assert flat.sizing.recommended_size is None
    assert "no reason to change the capacity" in flat.sizing.advice
    # The step at the capacity 40% slower in every interval: contention, measured.
    top = dict(tree["steps"][-1])
    top["throughput"] = dict(top["throughput"], samples=[
        v * 0.6 for v in top["throughput"]["samples"]
    ])  # fmt: skip
    top["throughput_qps"] *= 0.6
    slower = verdicts_of(dict(tree, steps=[*tree["steps"][:-1], top]))
    assert slower.contention is not None and slower.contention.significant
    findings = [f for f in pool_findings(slower) if f.rule == "pool-oversized"]
    assert len(findings) == 1
    assert "Mann-Whitney" in findings[0].message
    assert slower.sizing.recommended_size == 8
    assert_findings_valid(findings)


# -- exhaustion ------------------------------------------------------------------------


def test_timeouts_at_twice_the_capacity_are_an_exhaustion_error() -> None:
    doc = load("think_exhaustion")
    verdict = judge_exhaustion(steps_of(doc, "sqlalchemy"), capacity=4, timeout_s=0.05)
    assert verdict.exhausted
    assert verdict.first_concurrency == 8
    assert verdict.severity is Severity.ERROR
    assert verdict.timeouts == sum(s["timeouts"] for s in doc["pool"]["sqlalchemy"]["steps"])
    assert "timed out" in verdict.reason
    # the finding's count is the total: its message says so beside the first step's
    finding = next(f for f in pool_findings(judge(doc, "sqlalchemy"))
                   if f.rule == "pool-exhaustion")  # fmt: skip
    assert finding.count == verdict.timeouts
    assert f"{verdict.timeouts} timeouts in all over {len(verdict.steps)} steps" in finding.message


def test_fair_queue_with_waits_under_the_timeout_is_not_exhausted() -> None:
    # psycopg_pool queues waiters in order: at 4x capacity every wait stayed under the
    # 50 ms timeout, so the pool served the load (slower), without exhaustion.
    doc = load("think_exhaustion")
    verdict = judge_exhaustion(steps_of(doc, "psycopg"), capacity=4, timeout_s=0.05)
    assert not verdict.exhausted
    assert verdict.severity is None


def test_exhaustion_only_beyond_twice_the_capacity_is_a_warning() -> None:
    doc = load("think_exhaustion")
    steps = [s for s in steps_of(doc, "sqlalchemy") if s.concurrency != 8]
    verdict = judge_exhaustion(steps, capacity=4, timeout_s=0.05)
    assert verdict.first_concurrency == 16
    assert verdict.severity is Severity.WARNING


def test_open_loop_over_capacity_grows_without_bound() -> None:
    doc = load("open_loop")
    steps = steps_of(doc, "psycopg-async")
    verdict = judge_exhaustion(steps, capacity=4, timeout_s=2.0)
    assert verdict.exhausted
    (over,) = verdict.steps
    assert over.offered_rate == 2000.0
    assert over.unbounded
    assert over.timeouts == 0  # no timeout: the queue is in front of the pool
    assert verdict.first_offered_rate == 2000.0
    assert "backlog" in verdict.reason
    under = next(s for s in steps if s.offered_rate == 200.0)
    assert under.backlog == 0
    assert "load generator" not in verdict.reason
    # the same step with the client saturated: the verdict says the client may be to blame
    busy = [dataclasses.replace(s, client_cpu=0.97) if s.offered_rate == 2000.0 else s
            for s in steps]  # fmt: skip
    assert "load generator used 0.97 of a core" in judge_exhaustion(busy, 4, 2.0).reason
    # The open-loop shortfall is an error only when the client and its machine had
    # room; captured with the machine 100% busy, it is a warning that names the machine.
    over_step = next(s for s in steps if s.offered_rate == 2000.0)
    assert over_step.host_cpu_busy is not None and over_step.host_cpu_busy >= 0.9
    assert verdict.severity is Severity.WARNING
    assert "client machine's CPU was busy" in verdict.reason
    idle = [dataclasses.replace(s, host_cpu_busy=0.5) for s in steps]
    assert judge_exhaustion(idle, 4, 2.0).severity is Severity.ERROR


def test_closed_loop_waits_rising_below_the_timeout_are_not_exhaustion() -> None:
    # The reproduction: size 2, concurrency 4, timeout 50 ms, think 20 ms. A closed loop
    # bounds waits at about (N/C - 1) hold times; 0 timeouts, interval wait medians flat
    # near 21 ms with a last value of 32.2 ms gave Mann-Kendall p < 0.01 and a last value
    # over half the timeout: the old verdict called that an exhaustion error.
    step = StepView.from_metrics(_synthetic_step(4, 90, 0.1))
    waits = (*(20.0 + 0.1 * i for i in range(19)), 32.2)
    step = dataclasses.replace(step, interval_wait_p50=waits, timeouts=0)
    verdict = judge_exhaustion([step], capacity=2, timeout_s=0.05)
    assert not verdict.exhausted
    assert verdict.severity is None
    # timeouts remain the closed loop's sign of exhaustion
    timed_out = dataclasses.replace(step, timeouts=3)
    assert judge_exhaustion([timed_out], capacity=2, timeout_s=0.05).exhausted


# -- degradation -----------------------------------------------------------------------


def test_clean_timeouts_are_graceful() -> None:
    doc = load("think_exhaustion")
    spike = SpikeView.from_metrics(doc["pool"]["sqlalchemy"]["spike"])
    verdict = judge_degradation(steps_of(doc, "sqlalchemy"), spike, timeout_s=0.05)
    assert verdict.graceful, verdict.reasons


def test_server_refusals_are_not_graceful() -> None:
    doc = load("server_exhaustion")
    verdict = judge_degradation(steps_of(doc, "sqlalchemy"), None, timeout_s=0.5)
    assert not verdict.graceful
    assert verdict.errors["too-many-clients"] > 0
    assert any("too-many-clients" in r for r in verdict.reasons)


def test_pool_connection_refusals_are_not_graceful() -> None:
    # psycopg_pool opens connections in the background: a refusal (too many clients)
    # never reaches a request, it shows only as connections_errors in the pool's stats
    # and as timeouts. The old verdict called such a run graceful with errors {}.
    doc = load("think_exhaustion")
    steps = steps_of(doc, "psycopg")
    assert judge_degradation(steps, None, timeout_s=0.05).graceful
    tree = dict(doc["pool"]["psycopg"])
    tree["steps"] = [dict(s, pool_stats={**s["pool_stats"], "connections_errors": 1})
                     if s["concurrency"] == 8 else s for s in tree["steps"]]  # fmt: skip
    verdict = judge_pool(
        "psycopg", tree, capacity=4, timeout_s=0.05, server_cores=2, spindles=0,
        instances=1, budget=97,
    ).degradation  # fmt: skip
    assert not verdict.graceful
    assert verdict.errors["pool-connect-failed"] == 1
    assert any("refused" in r for r in verdict.reasons)
    # refusals after the last step (spike, soak) are in the run's final statistics
    late = judge_degradation(steps, None, timeout_s=0.05, background_refusals=2)
    assert late.errors["pool-connect-failed"] == 2


def test_waits_far_past_the_timeout_are_hangs() -> None:
    doc = load("think_exhaustion")
    steps = steps_of(doc, "psycopg")
    assert judge_degradation(steps, None, timeout_s=0.05).graceful
    # The top step as if its slowest request had waited 2 s against a 50 ms timeout,
    # and a timed-out request had given up only after 1.5 s.
    stuck = [*steps[:-1], dataclasses.replace(steps[-1], wait_max=2000.0)]
    verdict = judge_degradation(stuck, None, timeout_s=0.05)
    assert not verdict.graceful
    assert any("waited 2000 ms" in r for r in verdict.reasons)
    late = [*steps[:-1], dataclasses.replace(steps[-1], timeout_wait_max=1500.0)]
    assert any("gave up only after" in r for r in judge_degradation(late, None, 0.05).reasons)
    hung = [*steps[:-1], dataclasses.replace(steps[-1], unfinished_workers=2)]
    assert any("stuck" in r for r in judge_degradation(hung, None, 0.05).reasons)


def test_a_spike_that_never_recovers_is_not_graceful() -> None:
    doc = load("think_exhaustion")
    spike = dataclasses.replace(
        SpikeView.from_metrics(doc["pool"]["psycopg"]["spike"]), recover_ms=None
    )
    verdict = judge_degradation(steps_of(doc, "psycopg"), spike, timeout_s=0.05)
    assert any("did not recover" in r for r in verdict.reasons)


# -- client-bound ----------------------------------------------------------------------


def test_client_bound_when_the_client_cpu_at_peak_reaches_the_threshold() -> None:
    doc = load("select1_all")
    steps = steps_of(doc, "sqlalchemy")
    peak = max(steps, key=lambda s: s.throughput_qps)
    at_threshold = judge_client(steps, threshold=peak.client_cpu)
    assert at_threshold.bound
    assert at_threshold.peak_concurrency == peak.concurrency
    assert not judge_client(steps, threshold=peak.client_cpu + 0.01).bound


def test_client_bound_finding_is_info_and_names_the_cpu() -> None:
    doc = load("select1_all")
    tree = dict(doc["pool"]["psycopg"])
    tree["steps"] = [dict(s, client_cpu=0.97) for s in tree["steps"]]
    verdicts = judge_pool(
        "psycopg", tree, capacity=4, timeout_s=1.0, server_cores=2, spindles=0,
        instances=1, budget=97, local_server=True,
    )  # fmt: skip
    assert verdicts.knee.limited_by == "client"
    assert verdicts.sizing.recommended_size is None
    (finding,) = [f for f in pool_findings(verdicts) if f.rule == "client-bound"]
    assert finding.severity is Severity.INFO
    assert "0.97 of a CPU core" in finding.message


# -- sizing and the fleet budget -------------------------------------------------------


def test_fleet_over_budget() -> None:
    knee = Knee(4, 300.0, 320.0, 4, "pool", 5.0, "")
    fits = advise_sizing(knee, 10, server_cores=4, spindles=1, instances=9, budget=97)
    assert fits.fits_budget is True
    assert fits.formula_size == 9
    assert fits.max_instances == 9
    over = advise_sizing(knee, 10, server_cores=4, spindles=1, instances=10, budget=97)
    assert over.fits_budget is False
    assert over.fleet_connections == 100


def test_pool_limited_knee_below_the_formula_suggests_a_larger_pool() -> None:
    knee = Knee(4, 300.0, 320.0, 4, "pool", 5.0, "")
    sizing = advise_sizing(knee, 4, server_cores=8, spindles=0, instances=1, budget=97)
    assert sizing.recommended_size == 4
    assert "up to 16" in sizing.advice


def test_server_exhaustion_run_raises_the_budget_finding() -> None:
    doc = load("server_exhaustion")
    verdicts = judge(doc, "sqlalchemy")
    findings = pool_findings(verdicts)
    rules = {f.rule for f in findings}
    assert {"pool-degradation", "pool-exhaustion", "pool-over-budget"} <= rules
    budget = next(f for f in findings if f.rule == "pool-over-budget")
    assert budget.evidence["budget"] == doc["pool_run"]["server"]["budget"]
    assert_findings_valid(findings)


def test_unknown_cores_say_so() -> None:
    knee = Knee(None, math.nan, 100.0, 8, None, math.nan, "")
    sizing = advise_sizing(knee, 8, server_cores=None, spindles=0, instances=1, budget=None)
    assert sizing.formula_size is None
    assert sizing.fits_budget is None
    assert "--server-cores" in sizing.advice


# -- soak ------------------------------------------------------------------------------


def test_soak_growth_found_in_the_leaky_run_only() -> None:
    leaky = judge_soak(load("soak_leaky")["pool"]["sqlalchemy"]["soak"]["series"])
    clean = judge_soak(load("soak_clean")["pool"]["sqlalchemy"]["soak"]["series"])
    growing = {g.series for g in leaky if g.growing}
    assert growing == {"checked_out"}
    assert not [g.series for g in clean if g.growing]
    checked_out = next(g for g in leaky if g.series == "checked_out")
    assert checked_out.p_value < 0.01
    assert checked_out.slope_per_s > 1


def test_soak_growth_finding() -> None:
    doc = load("soak_leaky")
    verdicts = judge(doc, "sqlalchemy")
    findings = [f for f in pool_findings(verdicts) if f.rule == "soak-growth"]
    assert len(findings) == 1
    assert "checked-out connections grew steadily" in findings[0].message
    assert findings[0].fingerprint == "soak-growth:sqlalchemy:checked_out"
    assert_findings_valid(findings)


# -- every captured run ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "think_exhaustion",
        "select1_all",
        "open_loop",
        "soak_leaky",
        "soak_clean",
        "server_exhaustion",
    ],
)
def test_verdicts_on_every_captured_run_match_what_the_run_reported(name: str) -> None:
    doc = load(name)
    rules: set[str] = set()
    for pool in doc["pool"]:
        verdicts = judge(doc, pool, server_cores=doc["pool_run"]["server_cores"])
        findings = pool_findings(verdicts)
        assert_findings_valid(findings)
        rules |= {f.rule for f in findings}
        stored = doc["pool"][pool]["verdict"]["exhaustion"]
        judged = verdicts.to_metrics()["exhaustion"]
        # fields added since are extra; an open-loop shortfall on a saturated client
        # machine is now a warning naming the machine (reason and severity differ)
        same = [k for k in ("exhausted", "first_concurrency", "first_offered_rate", "timeouts")
                if k in stored]  # fmt: skip
        assert {k: judged[k] for k in same} == {k: stored[k] for k in same}
        if judged["first_offered_rate"] is None:
            assert judged["severity"] == stored["severity"]
            assert judged["reason"].startswith(stored["reason"])
    # connection-leak comes from the live end-of-run checks, not from these verdicts
    assert rules == set(doc["findings"]) - {"connection-leak"}


def test_open_loop_shortfall_within_poisson_noise_is_not_exhaustion() -> None:
    # 50 requests/s for 0.5 s: 25 arrivals expected, 22 completed (a Poisson draw one
    # standard deviation low) with 2 still due: not a queue growing without bound.
    doc = load("open_loop")
    under = next(s for s in steps_of(doc, "psycopg-async") if s.offered_rate == 200.0)
    noisy = dataclasses.replace(
        under, offered_rate=50.0, window_s=0.5, completed=22, throughput_qps=44.0, backlog=2,
        host_cpu_busy=0.5,
    )  # fmt: skip
    assert not judge_exhaustion([noisy], capacity=2, timeout_s=5.0).exhausted
    # 2000/s for 0.5 s with 100 served is far outside the noise
    over = dataclasses.replace(noisy, offered_rate=2000.0, completed=100, throughput_qps=200.0)
    assert judge_exhaustion([over], capacity=2, timeout_s=5.0).exhausted


# -- thresholds, at and either side -----------------------------------------------------


def _closed(qps: list[float], cpu: float = 0.3, host: float = 0.4) -> list[StepView]:
    levels = [1, 2, 4, 8, 16][: len(qps)]
    return [
        StepView.from_metrics(_synthetic_step(c, q, cpu, host))
        for c, q in zip(levels, qps, strict=True)
    ]


def test_knee_share_is_ninety_percent_of_the_peak() -> None:
    # peak 1000 at concurrency 8; concurrency 4 at exactly 900 is the knee, at 899 not
    at = find_knee(_closed([300, 600, 900, 1000, 950]), capacity=16)
    assert at.concurrency == 4
    below = find_knee(_closed([300, 600, 899, 1000, 950]), capacity=16)
    assert below.concurrency == 8


def test_client_bound_threshold_is_inclusive_at_085() -> None:
    at = _closed([300, 600, 900, 1000, 950], cpu=0.85)
    assert find_knee(at, capacity=16).limited_by == "client"
    assert judge_client(at).bound
    under = _closed([300, 600, 900, 1000, 950], cpu=0.849)
    assert find_knee(under, capacity=16).limited_by == "server"
    assert not judge_client(under).bound


def test_client_bound_uses_the_peak_step_not_the_busiest() -> None:
    # the busiest step (0.95) is not the peak (1000 q/s at 0.5): not client-bound
    steps = _closed([300, 600, 900, 1000, 950])
    steps = [dataclasses.replace(s, client_cpu=0.95 if s.concurrency == 1 else 0.5)
             for s in steps]  # fmt: skip
    verdict = judge_client(steps)
    assert not verdict.bound
    assert verdict.max_cpu == 0.95
    assert verdict.bound_steps == (1,)


def test_host_bound_threshold_is_inclusive_at_090() -> None:
    assert find_knee(_closed([300, 600, 900, 1000, 950], host=0.9), 16).limited_by == "host"
    assert find_knee(_closed([300, 600, 900, 1000, 950], host=0.899), 16).limited_by == "server"


def test_exhaustion_severity_at_twice_the_capacity() -> None:
    def timed_out(c: int) -> StepView:
        return dataclasses.replace(StepView.from_metrics(_synthetic_step(c, 100, 0.1)), timeouts=2)

    assert judge_exhaustion([timed_out(8)], capacity=4, timeout_s=0.1).severity is Severity.ERROR
    assert judge_exhaustion([timed_out(9)], capacity=4, timeout_s=0.1).severity is Severity.WARNING


def test_open_loop_shortfall_threshold_is_ninety_percent_of_the_rate() -> None:
    base = dataclasses.replace(
        StepView.from_metrics(_synthetic_step(8, 100, 0.1)), offered_rate=1000.0,
        window_s=10.0, backlog=50,
    )  # fmt: skip
    # 10 000 expected over 10 s; 3 standard deviations = 300: the bar is 8700 completed
    short = dataclasses.replace(base, completed=8690, throughput_qps=869.0)
    assert judge_exhaustion([short], capacity=4, timeout_s=1.0).exhausted
    enough = dataclasses.replace(base, completed=8710, throughput_qps=871.0)
    assert not judge_exhaustion([enough], capacity=4, timeout_s=1.0).exhausted
    served = dataclasses.replace(base, completed=9500, throughput_qps=950.0)
    assert not judge_exhaustion([served], capacity=4, timeout_s=1.0).exhausted


def test_pool_oversized_guards_ratio_and_margin() -> None:
    def verdicts(capacity: int) -> Any:
        steps = [_synthetic_step(1, 1000, 0.3), _synthetic_step(2, 2000, 0.3),
                 _synthetic_step(3, 1200, 0.3), _synthetic_step(4, 1200, 0.3)]  # fmt: skip
        return judge_pool(
            "asyncpg", {"steps": steps}, capacity=capacity, timeout_s=1.0, server_cores=2,
            spindles=0, instances=1, budget=97,
        )  # fmt: skip

    # knee at 2, the step at the capacity 40% slower in every interval (significant)
    four, three = verdicts(4), verdicts(3)
    assert four.contention.significant and three.contention.significant
    assert four.oversized  # 4 ≥ 1.5 × 2 and 2 above the knee
    assert not three.oversized  # 3 ≥ 1.5 × 2 but only 1 above the knee


def test_spike_errors_make_degradation_not_graceful() -> None:
    doc = load("think_exhaustion")
    spike = SpikeView.from_metrics(doc["pool"]["sqlalchemy"]["spike"])
    steps = steps_of(doc, "sqlalchemy")
    assert judge_degradation(steps, spike, timeout_s=0.05).graceful
    refused = dataclasses.replace(spike, errors={"too-many-clients": 1})
    verdict = judge_degradation(steps, refused, timeout_s=0.05)
    assert not verdict.graceful
    assert verdict.errors["too-many-clients"] == 1
