"""Whole cold-start runs against real servers: every driver, every phase that applies,
phases that add up, warm pools, fresh processes, the library entry point."""

from __future__ import annotations

import dataclasses
import functools
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dbprobe.analysis.coldstart_verdicts import (
    PHASES,
    PROTOCOL_DETAIL,
    additivity,
    as_distribution,
    median_ci,
)
from dbprobe.coldstart import DRIVERS, ColdStartOptions, audit_sample, run, sample
from dbprobe.coldstart import protocol as cprotocol
from dbprobe.coldstart.params import resolve
from dbprobe.coldstart.runner import schedule
from dbprobe.coldstart.schema import validate_coldstart_metrics
from dbprobe.errors import ConnectError, UsageError
from dbprobe.pg import PostgresServer
from dbprobe.report.model import Distribution, Report, Target
from dbprobe.report.render import render
from dbprobe.report.schema import validate_report
from dbprobe.urls import parse_url

from .conftest import AuthServer
from .helpers import CLEARTEXT_PASSWORD, TLS_ONLY_PASSWORD, DirectTlsProxy

pytestmark = pytest.mark.usefixtures("no_leftovers")

DRIVER_PHASES = ("connect", "driver_init", "first_query", "total")


def _validated(result_metrics: dict[str, Any], findings: Any = ()) -> dict[str, Any]:
    """The report a run makes, checked against the report schema and the cold-start
    metrics schema."""
    report = Report(
        command="coldstart",
        target=Target("postgresql://x@127.0.0.1/db", "test"),
        metrics={"coldstart": result_metrics},
        findings=list(findings),
    )
    import json

    doc = json.loads(render(report, "json"))
    validate_report(doc)
    validate_coldstart_metrics(doc["metrics"]["coldstart"])
    return doc


def _assert_driver_node(node: dict[str, Any], samples: int, expect: set[str]) -> None:
    for phase in DRIVER_PHASES:
        d = node[phase]
        assert isinstance(d, Distribution)
        assert d.n == samples
        assert d.min >= 0
    present = {p for p in ("dns", "tcp", "tls", "startup") if p in node}
    assert present == expect
    for phase in present:
        assert node["_meta"]["source"][phase] == "protocol"
    for phase in DRIVER_PHASES:
        assert node["_meta"]["source"][phase] == "driver"


def _assert_adds_up(node: dict[str, Any]) -> None:
    """Judged on the pairs: the per-pair difference between the driver's connect and the
    protocol client's establishment is kept as a distribution, and the verdict on it
    (a confidence interval of its median holding 0, or not) can be re-checked from it."""
    add = additivity(node)
    assert add is not None
    gap = node["detail"]["connect_gap"]
    assert gap.n == node["total"].n
    assert add.gap_ms == gap.p50
    low, high, _confidence = median_ci(gap.samples)
    assert (add.ci_low_ms, add.ci_high_ms) == (low, high)
    assert add.within_noise == (low <= 0 <= high)
    stored = node["_meta"]["phase_sum"]
    assert stored["parts"] == list(add.parts)
    assert stored["within_noise"] == add.within_noise
    # the driver's connect and the protocol client's establishment are two connections
    # measured separately: their difference is never zero in every pair
    assert any(g != 0.0 for g in gap.samples)
    # (that the phases really add up, against a known lower bound of each, is
    # test_coldstart_faults.py's injected-latency test)


def test_all_drivers_over_plain_tcp(pg: PostgresServer) -> None:
    target = parse_url(pg.dsn()).with_options(sslmode="disable")
    result = run(
        target,
        ColdStartOptions(samples=6, pool_size=2, pool_rounds=1),
    )
    cs = result.metrics
    assert set(DRIVERS) <= set(cs)
    assert cs["tcp_floor"]["connect"].n == 6
    for name in DRIVERS:
        node = cs[name]
        _assert_driver_node(node, 6, {"tcp", "startup"})
        assert node["_meta"]["not_applicable"]["dns"] == "the host is an IP address"
        assert "sslmode=disable" in node["_meta"]["not_applicable"]["tls"]
        assert node["_meta"]["auth_method"] == ("scram-sha-256" if pg.password else "trust")
        _assert_adds_up(node)
        warm = node["warm"]
        assert warm["checkout"].n == 6
        assert warm["pool_ready"].n == 1
        assert warm["min_size"] == 2
        # pool_ready is not like for like: say how each pool opens its connections
        sequential = name.startswith("sqlalchemy")
        assert warm["opens"].startswith("one after another" if sequential else "concurrently")
        # a pooled checkout skips connect, start-up and initialisation
        assert warm["checkout"].p50 < node["total"].p50
        verdict = node["_meta"]["verdict"]
        assert verdict["reason"] in ("ok", "phase-dominates", "p95-over-threshold")
        assert verdict["slow"] == (verdict["reason"] != "ok")
    assert cs["protocol"]["_meta"]["tls_negotiation"] == "none"
    assert cs["_meta"]["sampling"]["samples"] == 6
    assert result.server_version == pg.version
    _validated(cs, result.findings)


def test_scram_and_tls_every_driver(tls_server: AuthServer) -> None:
    """A role only a ``hostssl`` rule admits: every driver connection that succeeds
    used TLS (the negotiation reported is the paired protocol client's)."""
    target = tls_server.target("cs_tlsonly", TLS_ONLY_PASSWORD, sslmode="require")
    result = run(target, ColdStartOptions(samples=5, warm=False))
    for name in DRIVERS:
        node = result.metrics[name]
        _assert_driver_node(node, 5, {"tcp", "tls", "startup"})
        assert node["_meta"]["auth_method"] == "scram-sha-256"
        assert node["_meta"]["tls_negotiation"] == "sslrequest"
        assert node["_meta"]["source"]["tls_negotiation"] == "protocol"
        assert node["_meta"]["scram_iterations"] == 4096
        _assert_adds_up(node)
        # each driver keeps the protocol client's finer figures from its own pairs
        assert node["detail"]["tls_request"].n == 5
        assert node["detail"]["tls_handshake"].n == 5
        assert node["detail"]["scram_client"].n == 5
    proto = result.metrics["protocol"]
    assert proto["detail"]["scram_client"].n == 5 * len(DRIVERS)
    assert proto["detail"]["tls_handshake"].n == 5 * len(DRIVERS)
    assert set(proto["detail"]) == {"tls_request", "tls_handshake", "scram_client"}
    # PostgreSQL keeps no TLS session cache: an offered session is not resumed
    assert proto["_meta"]["tls_session_resumption"] in (False, None)
    _validated(result.metrics, result.findings)


def test_scram_without_tls_every_driver(auth_server: AuthServer) -> None:
    target = auth_server.target(sslmode="disable")
    result = run(target, ColdStartOptions(samples=3, warm=False))
    for name in DRIVERS:
        node = result.metrics[name]
        _assert_driver_node(node, 3, {"tcp", "startup"})
        assert node["_meta"]["auth_method"] == "scram-sha-256"


def test_direct_tls_negotiation(tls_server: AuthServer, direct_tls_proxy: DirectTlsProxy) -> None:
    target = tls_server.target(sslmode="require", sslnegotiation="direct")
    target = dataclasses.replace(target, port=direct_tls_proxy.port)
    params = resolve(target, environ={})
    timings, facts = cprotocol.measure(params)
    assert facts.tls_negotiation == "direct"
    assert facts.alpn == "postgresql"
    assert timings.tls_request is None
    assert timings.tls is not None
    result = run(target, ColdStartOptions(samples=2, warm=False))
    for name in DRIVERS:
        node = result.metrics[name]
        _assert_driver_node(node, 2, {"tcp", "tls", "startup"})
        assert node["_meta"]["tls_negotiation"] == "direct"
    # every driver negotiated ALPN postgresql with the terminator (libpq 17+, asyncpg)
    assert direct_tls_proxy.alpn
    assert set(direct_tls_proxy.alpn) == {"postgresql"}


def test_host_name_adds_a_dns_phase(pg: PostgresServer) -> None:
    target = parse_url(pg.dsn().replace("127.0.0.1", "localhost")).with_options(sslmode="disable")
    result = run(target, ColdStartOptions(drivers=("psycopg", "asyncpg"), samples=2, warm=False))
    for name in ("psycopg", "asyncpg"):
        node = result.metrics[name]
        assert node["dns"].n == 2
        assert "dns" not in node["_meta"]["not_applicable"]


def test_sample_for_the_audit_raises_slow_cold_start(pg: PostgresServer) -> None:
    metrics, findings = sample(parse_url(pg.dsn()), samples=3, threshold_ms=0.001)
    node = metrics["coldstart"]["psycopg"]
    assert set(metrics["coldstart"]) == {"tcp_floor", "protocol", "psycopg", "_meta"}
    assert "warm" not in node
    assert len(findings) == 1
    finding = findings[0]
    assert finding.rule == "slow-cold-start"
    assert finding.fingerprint == "coldstart:psycopg"
    # whichever phase is largest on this run: one of the phases, or a part of TLS
    # (here the refused SSLRequest's round trip can be the largest under load)
    assert finding.evidence["blame"]["phase"] in (*PHASES, *PROTOCOL_DETAIL, "driver_connect")
    assert "0.001 ms threshold" in finding.message
    assert finding.recommendation
    _validated(metrics["coldstart"], findings)
    subtree, audit_findings = audit_sample(parse_url(pg.dsn()), samples=2, connect_timeout_s=5)
    assert set(subtree) == {"tcp_floor", "protocol", "psycopg", "_meta"}
    assert subtree["psycopg"]["total"].n == 2
    assert all(f.rule == "slow-cold-start" for f in audit_findings)


def test_fresh_processes_import_the_users_module(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_app.py").write_text(
        textwrap.dedent(
            """
            import time
            time.sleep(0.05)  # an application whose import takes 50 ms
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    result = run(
        parse_url(pg.dsn()),
        ColdStartOptions(
            drivers=("psycopg", "sqlalchemy-async"),
            samples=1,
            warm=False,
            process=True,
            process_samples=1,
            process_warmup=False,
            imports=("user_app",),
        ),
    )
    for name in ("psycopg", "sqlalchemy-async"):
        proc = result.metrics[name]["process"]
        assert proc["_meta"]["imports"] == ["user_app"]
        assert proc["imports"].p50 >= 50.0  # the sleep is a lower bound, not a timing target
        parts = sum(
            proc[p].p50
            for p in ("interpreter", "imports", "driver_import", "connect", "first_query")
        )
        assert math.isclose(parts, proc["total"].p50, rel_tol=1e-9)  # n=1: contiguous phases
        assert as_distribution(proc["driver_import"]) is not None
    with pytest.raises(UsageError, match="cannot import module 'no_such_module_here'"):
        run(
            parse_url(pg.dsn()),
            ColdStartOptions(
                drivers=("psycopg",), samples=1, warm=False, process=True,
                process_samples=1, process_warmup=False, imports=("no_such_module_here",),
            ),
        )  # fmt: skip


def test_a_wrong_password_fails_at_the_preflight(auth_server: AuthServer) -> None:
    """One line naming the user, before any driver connects (a failure in the middle
    of a run: test_coldstart_faults.py)."""
    target = auth_server.target(password="wrong-password", sslmode="disable")
    with pytest.raises(ConnectError, match="authentication failed for user 'postgres'") as info:
        run(target, ColdStartOptions(samples=2))
    assert "wrong-password" not in str(info.value)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_the_sampling_plan_is_fair(count: int) -> None:
    """Warm-up rounds first; then, over every ``count`` timed rounds, every driver takes
    every position once; each driver alternates which of its pair goes first."""
    names = [f"driver{i}" for i in range(count)]
    rounds = 4 * count
    plan = schedule(names, rounds, warmup_rounds=2)
    assert [(r.warmup, r.number) for r in plan] == [(True, 0), (True, 1)] + [
        (False, r) for r in range(rounds)
    ]
    for warmup in plan[:2]:
        assert [s.driver for s in warmup.steps] == names
    timed = plan[2:]
    for rnd in timed:
        r = rnd.number
        assert [s.driver for s in rnd.steps] == names[r % count :] + names[: r % count]
    for name in names:
        positions = [[s.driver for s in rnd.steps].index(name) for rnd in timed]
        assert sorted(positions) == sorted(list(range(count)) * 4)
        firsts = [s.first for rnd in timed for s in rnd.steps if s.driver == name]
        assert firsts == ["protocol", "driver"] * (rounds // 2)
    assert schedule(names, 3) == plan[2:5]  # no warm-up asked, none planned


def test_scram_iterations_are_reported_as_the_server_set_them(auth_server: AuthServer) -> None:
    """PostgreSQL 16+ takes ``scram_iterations`` per role password: the report says
    what the server asked for, not the default."""
    if auth_server.server.version_num < 160000:
        pytest.skip("scram_iterations is PostgreSQL 16+ (runs on the embedded PG 18)")
    auth_server.server.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cs_iter') THEN "
        "SET scram_iterations = 12345; CREATE ROLE cs_iter LOGIN PASSWORD 'iter-pass'; "
        "END IF; END $$"
    )
    target = auth_server.target("cs_iter", "iter-pass", sslmode="disable")
    result = run(target, ColdStartOptions(drivers=("psycopg",), samples=2, warm=False))
    for node in (result.metrics["protocol"], result.metrics["psycopg"]):
        assert node["_meta"]["auth_method"] == "scram-sha-256"
        assert node["_meta"]["scram_iterations"] == 12345
    assert result.metrics["psycopg"]["detail"]["scram_client"].n == 2
    _validated(result.metrics, result.findings)


def test_the_audit_sample(
    pg: PostgresServer, refusing_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``dbprobe audit`` gets: five psycopg connections by default; the sample's
    threshold decides the finding, and the findings and the tree reach the audit's
    report; a server it cannot reach becomes a check-skipped finding of the audit,
    never an exception out of it."""
    import dbprobe.coldstart as coldstart_package
    from dbprobe.audit.audit import AuditOptions, _coldstart_sample
    from dbprobe.commands.common import Progress

    target = parse_url(pg.dsn())
    # the audit's own hook, with the sample's threshold lowered so every run is slow
    monkeypatch.setattr(
        coldstart_package, "audit_sample", functools.partial(audit_sample, threshold_ms=0.001)
    )
    report = Report(command="audit", target=Target(target.masked(), None))
    _coldstart_sample(report, target, AuditOptions(), Progress(quiet=True))
    tree = report.metrics["coldstart"]
    assert tree["psycopg"]["total"].n == 5
    assert tree["_meta"]["sampling"]["samples"] == 5
    assert [f.rule for f in report.findings] == ["slow-cold-start"]
    assert "over the 0.001 ms threshold" in report.findings[0].message
    assert report.findings[0].evidence["reason"] == "p95-over-threshold"
    _validated(tree, report.findings)
    monkeypatch.undo()
    _tree, relaxed = audit_sample(target, samples=2, threshold_ms=100_000.0)
    assert all(f.evidence["reason"] != "p95-over-threshold" for f in relaxed)
    report = Report(command="audit", target=Target(target.masked(), None))
    unreachable = parse_url(f"postgresql://u:pw@127.0.0.1:{refusing_port}/db")
    _coldstart_sample(report, unreachable, AuditOptions(connect_timeout_s=2), Progress(quiet=True))
    assert "coldstart" not in report.metrics
    assert [f.rule for f in report.findings] == ["check-skipped"]
    assert "connection refused" in report.findings[0].message


def test_idle_pause_comes_before_every_timed_connection(pg: PostgresServer) -> None:
    """With --idle-ms every timed connection, driver and protocol client alike, follows
    a pause, and each driver went first in half of its rounds."""
    target = parse_url(pg.dsn()).with_options(sslmode="disable")
    result = run(
        target,
        ColdStartOptions(drivers=("psycopg", "asyncpg"), samples=4, warm=False, idle_ms=20),
    )
    for name in ("psycopg", "asyncpg"):
        pairing = result.metrics[name]["_meta"]["pairing"]
        assert pairing["protocol_first"] == pairing["driver_first"] == 2
        assert pairing["after_gap"] == {"protocol": 4, "driver": 4}
        assert [r["first"] for r in pairing["rounds"]] == ["protocol", "driver"] * 2
        for record in pairing["rounds"]:
            for who in ("protocol", "driver"):
                assert record[who]["after_pause"] is True
                assert record[who]["gap_before_ms"] >= 20.0  # the sleep is a lower bound
    # planned pauses are not counted as idle gaps
    assert result.metrics["_meta"]["sampling"]["idle_gaps"]["n"] == 0


def test_back_to_back_samples_record_the_gap_before_each(pg: PostgresServer) -> None:
    result = run(parse_url(pg.dsn()), ColdStartOptions(drivers=("psycopg",), samples=3, warm=False))
    pairing = result.metrics["psycopg"]["_meta"]["pairing"]
    assert [r["first"] for r in pairing["rounds"]] == ["protocol", "driver", "protocol"]
    gaps = [r[who]["gap_before_ms"] for r in pairing["rounds"] for who in ("protocol", "driver")]
    assert all(g is not None and g >= 0 for g in gaps)
    assert not any(
        r[who]["after_pause"] for r in pairing["rounds"] for who in ("protocol", "driver")
    )
    assert result.metrics["_meta"]["sampling"]["idle_gaps"]["n"] == 6


def test_cleartext_password_is_a_note_and_needs_the_opt_in(auth_server: AuthServer) -> None:
    refused = auth_server.target("cs_cleartext", CLEARTEXT_PASSWORD, sslmode="disable")
    with pytest.raises(ConnectError, match="in cleartext over a connection without TLS"):
        run(refused, ColdStartOptions(drivers=("psycopg",), samples=1, warm=False))
    opted_in = auth_server.target(
        "cs_cleartext", CLEARTEXT_PASSWORD, sslmode="disable", require_auth="password"
    )
    result = run(opted_in, ColdStartOptions(drivers=("psycopg", "asyncpg"), samples=2, warm=False))
    note = next(n for n in result.notes if n.startswith("security:"))
    assert "cleartext" in note
    assert "WITHOUT TLS" in note
    assert "sslmode=verify-full" in note
    assert "require_auth=scram-sha-256" in note
    assert note in result.metrics["_meta"]["notes"]  # reaches the audit, which keeps metrics
    assert result.metrics["asyncpg"]["_meta"]["not_given_to_asyncpg"] == ["require_auth"]
    _validated(result.metrics, result.findings)


@pytest.mark.parametrize(
    ("host", "tls_version", "where"),
    [
        ("/run/postgresql", None, "over a unix socket"),
        ("127.0.0.1", None, "WITHOUT TLS (allowed by require_auth=password)"),
        ("127.0.0.1", "TLSv1.3", "inside TLS; the server's certificate was not verified"),
    ],
)
def test_the_cleartext_note_says_how_the_password_travelled(
    host: str, tls_version: str | None, where: str
) -> None:
    from dbprobe.coldstart import runner

    tcp = resolve(parse_url("postgresql://u@127.0.0.1:5432/d?sslmode=require"), environ={})
    params = dataclasses.replace(tcp, host=host)
    assert params.transport == ("unix" if host.startswith("/") else "tcp")
    facts = cprotocol.HandshakeFacts(
        address=host, transport=params.transport, tls_negotiation="sslrequest",
        tls_version=tls_version, tls_cipher=None, alpn=None, tls_session_reused=None,
        auth_method="password", scram_iterations=None, server_version="15", backend_pid=1,
    )  # fmt: skip
    pre = runner._Preflight(facts, 150000, None, 0, None)
    notes = runner._notes(ColdStartOptions(), params, pre, runner._GapClock())
    assert any(
        n.startswith(
            f"security: the server asks for the password in cleartext and it was sent {where}"
        )
        for n in notes
    )
