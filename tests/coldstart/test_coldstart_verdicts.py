"""The ``slow-cold-start`` verdict and the statistics behind it, on captured real runs
(``tests/data/coldstart/*.json``, made by ``tests/data/coldstart/capture.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dbprobe.analysis.coldstart_verdicts import (
    DRIVER_CONNECT,
    PHASES,
    Thresholds,
    additivity,
    advise,
    advise_process,
    blame,
    driver_names,
    evaluate,
    iqr,
)
from dbprobe.coldstart import DRIVERS
from dbprobe.report.model import Severity

DATA = Path(__file__).parent.parent / "data" / "coldstart"


def _coldstart(name: str) -> dict[str, Any]:
    doc = json.loads((DATA / f"{name}.json").read_text())
    tree: dict[str, Any] = doc["metrics"]["coldstart"]
    return tree


def test_captured_runs_have_every_driver() -> None:
    for name in ("pg15_trust", "pg15_scram_tls", "pg18_scram_200k", "pg15_process"):
        assert driver_names(_coldstart(name)) == list(DRIVERS)


def test_a_fast_loopback_run_is_not_slow() -> None:
    verdicts, findings = evaluate(_coldstart("pg15_trust"), Thresholds(dominant_min_ms=50))
    assert [v.driver for v in verdicts] == list(DRIVERS)
    assert all(not v.slow for v in verdicts)
    assert all(v.reason == "ok" for v in verdicts)
    assert findings == []


def test_over_threshold_names_the_phase_and_the_fix() -> None:
    tree = _coldstart("pg15_trust")
    _verdicts, findings = evaluate(tree, Thresholds(total_p95_ms=1.0))
    assert len(findings) == len(DRIVERS)
    for finding in findings:
        assert finding.rule == "slow-cold-start"
        assert finding.severity is Severity.WARNING
        assert finding.fingerprint is not None
        driver = finding.fingerprint.removeprefix("coldstart:")
        assert driver in DRIVERS
        assert "over the 1 ms threshold" in finding.message
        top = finding.evidence["blame"]
        assert top["phase"] in (*PHASES, DRIVER_CONNECT)
        assert top["phase"] == blame(tree[driver]).phase  # type: ignore[union-attr]
        assert finding.evidence["phases"]["total"]["n"] == tree[driver]["total"]["n"]
        assert finding.evidence["tcp_floor_p50_ms"] == pytest.approx(
            tree["tcp_floor"]["connect"]["p50"], abs=1e-3
        )
        # the warm figures make the pre-warm advice concrete
        assert "pooled checkout after warm-up took" in finding.recommendation
        assert (
            finding.evidence["warm"]["checkout"]["p50"] < finding.evidence["phases"]["total"]["p50"]
        )


def test_scram_iterations_dominate_on_pg18() -> None:
    """200k SCRAM iterations: the client's key derivation is the cold start. asyncpg's
    derivation is close to the protocol client's (startup dominates); libpq's is much
    slower (the driver's own connect work dominates)."""
    tree = _coldstart("pg18_scram_200k")
    _verdicts, findings = evaluate(tree)
    by_driver = {f.fingerprint: f for f in findings}
    assert set(by_driver) == {f"coldstart:{d}" for d in DRIVERS}
    for driver in DRIVERS:
        finding = by_driver[f"coldstart:{driver}"]
        assert finding.severity is Severity.WARNING
        assert finding.evidence["blame"]["phase"] in ("startup", DRIVER_CONNECT)
        assert "scram_iterations" in finding.recommendation
        assert "200000" in finding.recommendation
        assert finding.evidence["auth_method"] == "scram-sha-256"
    detail = tree["protocol"]["detail"]
    assert detail["scram_client"]["p50"] > 0.5 * tree["protocol"]["startup"]["p50"]


def test_a_dominant_phase_below_the_threshold_is_info() -> None:
    tree = _coldstart("pg15_trust")
    verdicts, findings = evaluate(tree, Thresholds(dominant_share=0.3, dominant_min_ms=0.5))
    assert findings
    for finding in findings:
        assert finding.severity is Severity.INFO
        assert "dominates a cold connection" in finding.message
    assert {v.reason for v in verdicts if v.slow} == {"phase-dominates"}


def test_fresh_process_verdict_blames_imports() -> None:
    tree = _coldstart("pg15_process")
    _verdicts, findings = evaluate(tree, Thresholds(process_total_p95_ms=50))
    process_findings = [f for f in findings if f.evidence.get("scope") == "process"]
    assert len(process_findings) == len(DRIVERS)
    for finding in process_findings:
        assert finding.fingerprint.endswith(":process")  # type: ignore[union-attr]
        assert finding.evidence["imports"] == ["slow_user_module"]
        phase = finding.evidence["blame"]["phase"]
        assert phase in ("interpreter", "imports", "driver_import", "connect", "first_query")
        assert finding.recommendation == advise_process(finding.evidence["driver"], phase)
    # the imported module sleeps 60 ms: its phase can never be shorter
    for driver in DRIVERS:
        assert tree[driver]["process"]["imports"]["min"] >= 60.0
    _, none = evaluate(tree, Thresholds(process_total_p95_ms=100_000, total_p95_ms=100_000,
                                         dominant_min_ms=100_000))  # fmt: skip
    assert none == []


def test_additivity_on_captured_runs() -> None:
    for name in ("pg15_trust", "pg15_scram_tls", "pg18_scram_200k"):
        tree = _coldstart(name)
        for driver in DRIVERS:
            add = additivity(tree[driver])
            assert add is not None
            assert "first_query" in add.parts
            assert "driver_init" in add.parts
            assert ("tls" in add.parts) == (name == "pg15_scram_tls")
            assert add.tolerance_ms >= 0.5
            stored = tree[driver]["_meta"]["phase_sum"]
            assert stored["gap_ms"] == pytest.approx(add.gap_ms, abs=1e-3)


def test_tls_advice_fits_the_server_version() -> None:
    node = _coldstart("pg15_scram_tls")["psycopg"]
    meta = dict(node["_meta"])
    old = advise("psycopg", "tls", node, meta)
    assert "this server is older" in old
    assert "does not resume TLS sessions" in old
    meta.update(server_version_num=180001, tls_negotiation="sslrequest")
    new = advise("psycopg", "tls", node, meta)
    assert "use direct TLS negotiation (sslnegotiation=direct" in new
    meta.update(tls_negotiation="direct")
    assert "already in use" in advise("psycopg", "tls", node, meta)


@pytest.mark.parametrize(
    ("driver", "phase", "words"),
    [
        ("sqlalchemy-async", "driver_init", "json and jsonb codecs"),
        ("sqlalchemy", "driver_init", "initialises the dialect"),
        ("asyncpg", "first_query", "statement_cache_size"),
        ("sqlalchemy", "first_query", "BEGIN"),
        ("psycopg", "dns", "caching resolver"),
        ("psycopg", "tcp", "PgBouncer"),
    ],
)
def test_advice_by_phase(driver: str, phase: str, words: str) -> None:
    node = _coldstart("pg15_trust")[driver]
    assert words in advise(driver, phase, node, node["_meta"])


def test_statistics_helpers() -> None:
    assert iqr([]) == 0.0
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)
    node = {
        "tcp": {"n": 3, "p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0, "samples": [1, 1, 1]},
        "startup": {"n": 3, "p50": 2.0, "p95": 2.0, "p99": 2.0, "max": 2.0, "samples": [2, 2, 2]},
        "first_query": {"n": 3, "p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
        "connect": {"n": 3, "p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0},
        "total": {"n": 3, "p50": 8.0, "p95": 9.0, "p99": 9.0, "max": 9.0, "samples": [7, 8, 9]},
    }
    add = additivity(node)
    assert add is not None
    assert add.parts == ("tcp", "startup", "first_query")
    assert add.gap_ms == pytest.approx(4.0)
    assert not add.within_noise
    top = blame(node)
    assert top is not None
    assert top.phase == DRIVER_CONNECT  # connect 7 ms vs 3 ms of measured establishment
    assert top.p50_ms == pytest.approx(4.0)
    with pytest.raises(ValueError, match="positive"):
        Thresholds(total_p95_ms=0)
    with pytest.raises(ValueError, match="dominant_share"):
        Thresholds(dominant_share=1.5)
