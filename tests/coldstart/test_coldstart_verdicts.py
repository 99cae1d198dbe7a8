"""The ``slow-cold-start`` verdict and the statistics behind it, on captured real runs
(``tests/data/coldstart/*.json``, made by ``tests/data/coldstart/capture.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable
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
    label,
    median_ci,
)
from dbprobe.coldstart import DRIVERS
from dbprobe.coldstart.schema import validate_coldstart_metrics
from dbprobe.errors import DbprobeError
from dbprobe.report.model import Distribution, Severity
from dbprobe.report.schema import validate_report

DATA = Path(__file__).parent.parent / "data" / "coldstart"


def _coldstart(name: str) -> dict[str, Any]:
    doc = json.loads((DATA / f"{name}.json").read_text())
    tree: dict[str, Any] = doc["metrics"]["coldstart"]
    return tree


def test_captured_runs_have_every_driver() -> None:
    for name in (
        "pg15_trust", "pg15_scram_tls", "pg18_scram_200k", "pg15_process", "pg15_prefer_refused"
    ):  # fmt: skip
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


def test_additivity_is_judged_on_the_pairs() -> None:
    """Every captured run keeps the per-pair differences, and the verdict on them can
    be re-checked: within noise exactly when the median's confidence interval holds 0."""
    outside = []
    for name in ("pg15_trust", "pg15_scram_tls", "pg18_scram_200k", "pg15_prefer_refused"):
        tree = _coldstart(name)
        for driver in DRIVERS:
            node = tree[driver]
            add = additivity(node)
            assert add is not None
            assert "first_query" in add.parts
            assert "driver_init" in add.parts
            assert ("tls" in add.parts) == (name in ("pg15_scram_tls", "pg15_prefer_refused"))
            gap = node["detail"]["connect_gap"]
            assert add.pairs == gap["n"] == node["total"]["n"]
            assert add.gap_ms == pytest.approx(gap["p50"])
            low, high, _ = median_ci(gap["samples"])
            assert add.within_noise == (low <= 0 <= high)
            stored = node["_meta"]["phase_sum"]
            assert stored["within_noise"] == add.within_noise
            assert stored["gap_ci_ms"] == pytest.approx([low, high], abs=1e-3)
            if not add.within_noise:
                outside.append((name, driver, add.gap_share))
    # libpq's SCRAM key derivation at 200k iterations is a systematic gap, never "noise"
    assert ("pg18_scram_200k", "psycopg") in {(n, d) for n, d, _ in outside}


def test_a_large_systematic_gap_is_not_noise() -> None:
    """libpq's SCRAM at 200k iterations: a gap of 40 % of the total in every pair. The
    old allowance (one IQR of the totals, tens of ms on such a run) called gaps of this
    size noise; the paired interval excludes 0."""
    node = _coldstart("pg18_scram_200k")["psycopg"]
    add = additivity(node)
    assert add is not None
    assert add.gap_share > 0.1
    assert add.ci_low_ms > 0
    assert not add.within_noise


def test_median_confidence_interval() -> None:
    values = [float(v) for v in range(1, 31)]
    low, high, confidence = median_ci(values)
    assert (low, high) == (10.0, 21.0)  # the sign test's order statistics for n = 30
    assert confidence == pytest.approx(0.9572, abs=1e-4)
    low, high, confidence = median_ci([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (low, high) == (1.0, 5.0)  # too few for 95 %: [min, max] and what it covers
    assert confidence == pytest.approx(1 - 2 / 32)
    assert median_ci([])[2] == 0.0


def test_tls_blame_is_split_into_the_request_and_the_handshake() -> None:
    tree = _coldstart("pg15_scram_tls")
    for driver in DRIVERS:
        node = tree[driver]
        top = blame(node, ("tls",), with_driver_connect=False)
        assert top is not None
        assert top.phase in ("tls_request", "tls_handshake")
        assert top.p50_ms == pytest.approx(node["detail"][top.phase]["p50"])
        assert top.to_dict()["measured_by"] == "protocol"


def test_tls_advice_fits_the_server_version() -> None:
    node = _coldstart("pg15_scram_tls")["psycopg"]
    meta = dict(node["_meta"])
    old = advise("psycopg", "tls_handshake", node, meta)
    assert "this server is older" in old
    assert "does not resume TLS sessions" in old
    meta.update(server_version_num=180001, tls_negotiation="sslrequest")
    new = advise("psycopg", "tls_handshake", node, meta)
    assert "direct TLS negotiation (sslnegotiation=direct" in new
    # direct TLS saves one round trip, and the client side must support it
    assert "saves one round trip" in new
    assert "not the backend start" in new
    assert "libpq 17+" in new
    assert f"this psycopg uses libpq {meta['versions']['libpq']}" in new
    assert "asyncpg 0.30+" in new
    assert "ALPN 'postgresql'" in new
    request = advise("psycopg", "tls_request", node, meta)
    assert "mostly the server starting a backend process" in request
    meta.update(tls_negotiation="direct")
    assert "already in use" in advise("psycopg", "tls_handshake", node, meta)


def test_a_refused_sslrequest_gets_its_own_advice() -> None:
    """sslmode=prefer against a server without TLS: the tls phase is a refused request
    and the backend start, not a handshake."""
    tree = _coldstart("pg15_prefer_refused")
    verdicts, findings = evaluate(tree, Thresholds(total_p95_ms=0.001))
    assert findings
    for driver in DRIVERS:
        node = tree[driver]
        assert node["_meta"]["tls_negotiation"] == "sslrequest-refused"
        assert "tls_handshake" not in node["detail"]
        for phase in ("tls", "tls_request"):
            text = advise(driver, phase, node, node["_meta"])
            assert text.startswith("No TLS was negotiated")
            assert "handshake" not in text
            assert "direct" not in text
            assert "saves" not in text or "not the backend start" in text
    for verdict in verdicts:
        if verdict.blame and verdict.blame.phase in ("tls", "tls_request"):
            assert verdict.advice.startswith("No TLS was negotiated")


def test_the_driver_connect_figure_is_one_number() -> None:
    """The blame, the message and the recommendation quote the same p50 for the
    driver's own connect work: the median of the per-pair differences."""
    tree = _coldstart("pg18_scram_200k")
    for driver in DRIVERS:
        node = tree[driver]
        gap = node["detail"]["connect_gap"]["p50"]
        top = blame(node, (), with_driver_connect=True)
        assert top is not None
        assert top.phase == DRIVER_CONNECT
        assert top.p50_ms == pytest.approx(gap)
        figure = f"({gap:.1f} ms p50)"
        assert figure in advise(driver, DRIVER_CONNECT, node, node["_meta"])
    _verdicts, findings = evaluate(tree)
    for finding in findings:
        if finding.evidence["blame"]["phase"] == DRIVER_CONNECT:
            figure = f"({finding.evidence['blame']['p50_ms']:.1f} ms p50)"
            assert figure in finding.message
            assert figure in finding.recommendation
            assert finding.evidence["blame"]["measured_by"].startswith("driver connect - paired")


def test_protocol_figures_say_where_they_come_from() -> None:
    tree = _coldstart("pg15_trust")
    _verdicts, findings = evaluate(tree, Thresholds(total_p95_ms=0.001))
    by_source = {f.evidence["blame"]["measured_by"] for f in findings}
    assert "protocol" in by_source
    for finding in findings:
        blamed = finding.evidence["blame"]
        if blamed["measured_by"] == "protocol":
            assert "(protocol client, paired samples)" in finding.message
        else:
            assert "protocol client" not in finding.message


@pytest.mark.parametrize(
    ("driver", "phase", "words"),
    [
        ("sqlalchemy-async", "driver_init", "json and jsonb codecs"),
        ("sqlalchemy", "driver_init", "initialises the dialect"),
        ("sqlalchemy", "driver_init", "Create the engine once per process"),
        ("asyncpg", "driver_init", "server_settings={'jit': 'off'}"),
        ("asyncpg", "driver_init", "init= (which runs for every new connection)"),
        ("asyncpg", "first_query", "statement_cache_size"),
        ("asyncpg", "first_query", "PgBouncer 1.21+ and max_prepared_statements"),
        ("sqlalchemy", "first_query", "BEGIN"),
        ("psycopg", "dns", "caching resolver"),
        ("psycopg", "tcp", "PgBouncer"),
    ],
)
def test_advice_by_phase(driver: str, phase: str, words: str) -> None:
    node = _coldstart("pg15_trust")[driver]
    assert words in advise(driver, phase, node, node["_meta"])


@pytest.mark.parametrize(
    ("driver", "phase", "wrong"),
    [
        # statement_cache_size is asyncpg's, and it does not touch driver_init
        ("psycopg", "driver_init", "statement_cache_size"),
        ("sqlalchemy", "driver_init", "statement_cache_size"),
        ("asyncpg", "driver_init", "statement_cache_size"),
        ("psycopg", "first_query", "statement_cache_size"),
        # raw drivers have no engine
        ("psycopg", "driver_init", "engine"),
        ("asyncpg", "driver_init", "engine"),
        # init= runs per connection: it does not register codecs "once"
        ("asyncpg", "driver_init", "register codecs once"),
        # PgBouncer 1.21+ keeps prepared statements in transaction mode
        ("asyncpg", "first_query", "0 only behind PgBouncer"),
    ],
)
def test_advice_says_nothing_wrong(driver: str, phase: str, wrong: str) -> None:
    node = _coldstart("pg15_trust")[driver]
    assert wrong not in advise(driver, phase, node, node["_meta"])


def test_md5_and_cleartext_startup_advice() -> None:
    node = _coldstart("pg15_trust")["psycopg"]
    md5 = advise("psycopg", "startup", node, {**node["_meta"], "auth_method": "md5"})
    assert "deprecated since PostgreSQL 18" in md5
    assert "costs the client more per connection" in md5
    clear = advise("psycopg", "startup", node, {**node["_meta"], "auth_method": "password"})
    assert "require_auth=scram-sha-256" in clear
    assert "sslmode=verify-full" in clear


def test_statistics_helpers() -> None:
    assert iqr([]) == 0.0
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)
    gaps = [3.5, 3.8, 4.0, 4.1, 4.4, 3.9, 4.2]  # connect - establishment, per pair
    node = {
        "tcp": {"n": 7, "p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
        "startup": {"n": 7, "p50": 2.0, "p95": 2.0, "p99": 2.0, "max": 2.0},
        "first_query": {"n": 7, "p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
        "connect": {"n": 7, "p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0},
        "total": {"n": 7, "p50": 8.0, "p95": 9.0, "p99": 9.0, "max": 9.0},
        "detail": {"connect_gap": Distribution.of(gaps).to_dict()},
    }
    add = additivity(node)
    assert add is not None
    assert add.parts == ("tcp", "startup", "first_query")
    assert add.gap_ms == pytest.approx(4.0)
    assert add.ci_low_ms > 0
    assert not add.within_noise
    top = blame(node)
    assert top is not None
    assert top.phase == DRIVER_CONNECT  # the median of the pairs, not 7 - 3 ms
    assert top.p50_ms == pytest.approx(4.0)
    assert top.p95_ms == pytest.approx(Distribution.of(gaps).p95)
    del node["detail"]
    assert additivity(node) is None  # nothing to judge without the pairs
    old_style = blame(node)
    assert old_style is not None
    assert old_style.p50_ms == pytest.approx(4.0)  # medians' difference (older reports)
    with pytest.raises(ValueError, match="positive"):
        Thresholds(total_p95_ms=0)
    with pytest.raises(ValueError, match="dominant_share"):
        Thresholds(dominant_share=1.5)


def test_html_phase_bars_do_not_count_the_drivers_connect_twice() -> None:
    """``connect`` is the driver's own figure for what dns/tcp/tls/startup measure: the
    stacked bars lay out the phases, so it must not be stacked on top of them."""
    import html
    import re

    from dbprobe.report.model import Report
    from dbprobe.report.render import render

    doc = json.loads((DATA / "pg15_scram_tls.json").read_text())
    page = render(Report.from_dict(doc), "html")
    descs = re.findall(r"<title>Cold start by phase \(p50, ms\)</title>\s*<desc>(.*?)</desc>", page)
    assert len(descs) == 1
    rows = html.unescape(descs[0]).split("; ")
    assert [row.split(":")[0] for row in rows] == ["protocol", *DRIVERS]
    for row in rows:
        phases = [part.split()[0] for part in row.split(": ", 1)[1].split(", ")]
        assert "connect" not in phases
        assert "startup" in phases


def _with_totals(node: dict[str, Any], totals: list[float]) -> dict[str, Any]:
    """A captured node whose ``total`` is replaced by ``totals`` (its other phases stay
    as measured)."""
    return {**node, "total": Distribution.of(totals).to_dict()}


def test_the_threshold_is_judged_on_p95_and_quoted_exactly() -> None:
    """Most connections fast, a tail over the threshold: p50 below it, p95 above. The
    verdict is on p95; the message and the evidence quote p50 and p95 each in its
    place; the recommendation is the advice for the phase blamed."""
    tree = _coldstart("pg15_trust")
    totals = [10.0] * 18 + [180.0, 220.0]
    total = Distribution.of(totals)
    assert total.p50 < 100.0 < total.p95
    tree["psycopg"] = _with_totals(tree["psycopg"], totals)
    verdicts, findings = evaluate(tree, Thresholds(total_p95_ms=100.0, dominant_min_ms=1e9))
    by_driver = {v.driver: v for v in verdicts}
    verdict = by_driver["psycopg"]
    assert verdict.slow
    assert verdict.reason == "p95-over-threshold"
    assert verdict.total_p50_ms == pytest.approx(total.p50)
    assert verdict.total_p95_ms == pytest.approx(total.p95)
    assert [f.fingerprint for f in findings] == ["coldstart:psycopg"]
    finding = findings[0]
    top = verdict.blame
    assert top is not None
    node, meta = tree["psycopg"], tree["psycopg"]["_meta"]
    floor = tree["tcp_floor"]["connect"]["p50"]
    assert finding.message == (
        f"psycopg: a cold connection and first query take {total.p95:.1f} ms at p95 "
        f"(p50 {total.p50:.1f} ms, n=20), over the 100 ms threshold; "
        f"{label(top.phase)} takes {min(1.0, top.p50_ms / total.p50):.0%} of it "
        f"({top.p50_ms:.1f} ms p50)"
    )
    evidence = finding.evidence["phases"]["total"]
    assert evidence == {
        "n": 20,
        "p50": round(total.p50, 3),
        "p95": round(total.p95, 3),
        "p99": round(total.p99, 3),
        "max": 220.0,
    }
    assert finding.recommendation == advise("psycopg", top.phase, node, meta, floor)
    # the same tail under a threshold above p95: not slow
    relaxed, none = evaluate(tree, Thresholds(total_p95_ms=total.p95 + 1, dominant_min_ms=1e9))
    assert not {v.driver: v for v in relaxed}["psycopg"].slow
    assert none == []


def test_the_advice_is_for_the_phase_blamed() -> None:
    """A fresh SQLAlchemy engine on a loopback trust server: its dialect
    initialisation is the largest phase, and the advice is about that, not about
    start-up or TLS."""
    tree = _coldstart("pg15_trust")
    node = tree["sqlalchemy"]
    top = blame(node)
    assert top is not None
    assert top.phase == "driver_init"
    verdicts, findings = evaluate(tree, Thresholds(dominant_share=0.3, dominant_min_ms=1.0))
    finding = next(f for f in findings if f.fingerprint == "coldstart:sqlalchemy")
    assert finding.evidence["blame"]["phase"] == "driver_init"
    assert finding.message == (
        f"sqlalchemy: driver_init dominates a cold connection: {top.p50_ms:.1f} ms of "
        f"{node['total']['p50']:.1f} ms at p50 ({top.share:.0%})"
    )
    floor = tree["tcp_floor"]["connect"]["p50"]
    assert finding.recommendation == advise("sqlalchemy", "driver_init", node, node["_meta"], floor)
    assert finding.recommendation.startswith("The engine initialises the dialect")
    assert {v.driver: v for v in verdicts}["sqlalchemy"].advice == finding.recommendation


@pytest.mark.parametrize(
    "name",
    ["pg15_trust", "pg15_scram_tls", "pg18_scram_200k", "pg15_process", "pg15_prefer_refused"],
)
def test_captured_runs_match_the_metrics_schema(name: str) -> None:
    validate_coldstart_metrics(_coldstart(name))
    # the report schema references the metrics schema for metrics.coldstart
    validate_report(json.loads((DATA / f"{name}.json").read_text()))


def test_the_report_schema_checks_metrics_coldstart() -> None:
    """A report whose metrics.coldstart breaks the layout (drivers -> phases ->
    distributions in ms, the floor at tcp_floor.connect) is refused by the report schema
    itself; other probes' metrics are left alone."""
    doc = json.loads((DATA / "pg15_trust.json").read_text())
    doc["metrics"]["pool"] = {"anything": [1, "two"]}
    validate_report(doc)

    def refused(change: Callable[[dict[str, Any]], None], where: str) -> None:
        broken = json.loads(json.dumps(doc))
        change(broken["metrics"]["coldstart"])
        with pytest.raises(DbprobeError, match=where):
            validate_report(broken)

    refused(lambda t: t["psycopg"]["total"].update(unit="q/s"), "coldstart/psycopg/total/unit")
    refused(lambda t: t["psycopg"].update(warp=t["psycopg"]["total"]), "'warp' was unexpected")
    refused(lambda t: t["psycopg"].update(total=5), "coldstart/psycopg/total")
    refused(lambda t: t["tcp_floor"].pop("connect"), "'connect' is a required property")
    refused(lambda t: t.update(asyncpg=[1, 2]), "coldstart/asyncpg")


def _broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    tree = _coldstart("pg15_trust")
    change(tree)
    return tree


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: t.update(psycopg={"total": 5}), "psycopg"),
        (lambda t: t.update(mysqlclient=t["psycopg"]), "mysqlclient"),
        (lambda t: t["asyncpg"].pop("startup"), "'startup' is a required property"),
        (lambda t: t["asyncpg"].update(warp=t["asyncpg"]["total"]), "warp"),
        (lambda t: t["sqlalchemy"]["total"].update(unit="q/s"), "'ms' was expected"),
        (lambda t: t["sqlalchemy"]["total"].update(n=0), "minimum of 1"),
        (lambda t: t["psycopg"]["detail"].pop("connect_gap"), "connect_gap"),
        (lambda t: t["psycopg"]["_meta"]["source"].update(connect="protocol"), "'driver'"),
        (lambda t: t["psycopg"]["_meta"].update(tls_negotiation="maybe"), "maybe"),
        (lambda t: t.pop("tcp_floor"), "tcp_floor"),
        (lambda t: t["psycopg"]["total"].update(p50=1e9), "quantiles out of order"),
        (lambda t: t["psycopg"]["total"].update(samples=[1.0]), "samples"),
        (lambda t: t["psycopg"]["_meta"].update(samples=999), "_meta.samples"),
        (lambda t: t["psycopg"]["_meta"]["pairing"].update(driver_first=99), "one entry per pair"),
    ],
)
def test_the_metrics_schema_refuses_nonsense(
    change: Callable[[dict[str, Any]], None], words: str
) -> None:
    with pytest.raises(DbprobeError, match=r"metrics\.coldstart|coldstart/") as info:
        validate_coldstart_metrics(_broken(change))
    assert words in str(info.value)
