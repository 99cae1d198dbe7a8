"""The report model and its JSON contract (pure: no database)."""

from __future__ import annotations

import json

import pytest

from dbprobe.errors import DbprobeError
from dbprobe.report.model import Distribution, Finding, Report, Severity, Target, percentile
from dbprobe.report.render import render
from dbprobe.report.schema import validate_report
from dbprobe.rules import RULES


def _report() -> Report:
    r = Report(command="audit", target=Target("postgresql://app:***@db:5432/shop", "15.18"))
    r.add(
        RULES["n-plus-one"].finding(
            "Order.customer lazy-loaded 50 times in one test",
            "load it with the parent query: .options(joinedload(Order.customer))",
            location="app/orders.py:42",
            table="customers",
            sql="SELECT customers.id FROM customers WHERE customers.id = %(pk_1)s",
            count=50,
            evidence={"cost": Distribution.of([1.0, 2.0, 3.0])},
        ),
        RULES["unused-index"].finding("ix_a never scanned", "DROP INDEX CONCURRENTLY ix_a;"),
    )
    r.metrics = {"coldstart": {"psycopg": {"total": Distribution.of(range(1, 101))}}}
    return r


def test_percentiles_interpolate_linearly() -> None:
    data = [float(x) for x in range(1, 101)]
    assert percentile(data, 50) == pytest.approx(50.5)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0
    d = Distribution.of([5, 1, 3])
    assert (d.n, d.min, d.p50, d.max) == (3, 1.0, 3.0, 5.0)


def test_json_report_matches_schema_and_contract() -> None:
    doc = json.loads(render(_report(), "json"))
    validate_report(doc)
    assert doc["schema"] == "dbprobe.report/1"
    assert doc["summary"] == {"error": 1, "warning": 0, "info": 1}
    first = doc["findings"][0]
    assert first["rule"] == "n-plus-one" and first["count"] == 50
    assert first["location"] == "app/orders.py:42"
    assert doc["metrics"]["coldstart"]["psycopg"]["total"]["n"] == 100


def test_schema_rejects_unmasked_password_and_bad_rule_ids() -> None:
    doc = _report().to_dict()
    doc["target"]["url"] = "postgresql://app:hunter2@db/shop"
    with pytest.raises(DbprobeError, match="target/url"):
        validate_report(doc)
    doc = _report().to_dict()
    doc["findings"][0]["rule"] = "Not A Rule"
    with pytest.raises(DbprobeError, match="findings/0/rule"):
        validate_report(doc)


def test_round_trip_and_exit_codes() -> None:
    r = _report()
    again = Report.from_dict(json.loads(render(r, "json")))
    assert [f.identity() for f in again.sorted_findings()] == [
        f.identity() for f in r.sorted_findings()
    ]
    assert r.exit_code("error") == 1
    assert r.exit_code("never") == 0
    r.findings = [f for f in r.findings if f.severity is Severity.INFO]
    assert r.exit_code("error") == 0
    assert r.exit_code("warning") == 0
    assert r.exit_code("info") == 1


def test_finding_identity_ignores_message_text() -> None:
    a = Finding("n-plus-one", Severity.ERROR, "50 times", "fix", location="a.py:1")
    b = Finding("n-plus-one", Severity.ERROR, "51 times", "fix", location="a.py:1")
    c = Finding("n-plus-one", Severity.ERROR, "50 times", "fix", location="a.py:2")
    d = Finding("n-plus-one", Severity.ERROR, "50 times", "fix", location="b.py:1")
    # the line is not part of the identity (moving code by a line keeps the finding);
    # the file is
    assert a.identity() == b.identity() == c.identity() != d.identity()
    assert (a.line, c.line, Finding("x", Severity.INFO, "m", "r").line) == (1, 2, None)


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_human_formats_show_findings_and_metrics(fmt: str) -> None:
    text = render(_report(), fmt)
    assert "n-plus-one" in text
    assert "joinedload(Order.customer)" in text
    # the cold-start section shows the driver and its total p50 (50.5 ms of 1..100)
    assert "psycopg" in text
    assert "50.5" in text
    if fmt == "table":
        assert max(len(line) for line in text.splitlines()) <= 100


def test_distribution_percentiles_are_the_linear_interpolation() -> None:
    d = Distribution.of(range(1, 101))
    assert (d.n, d.p50, d.p95, d.p99, d.max, d.min) == (100, 50.5, 95.05, 99.01, 100, 1)
    assert d.mean == 50.5
    # samples kept in the order measured, and marked so
    shuffled = Distribution.of([3.0, 1.0, 2.0])
    assert shuffled.samples == (3.0, 1.0, 2.0) and shuffled.order == "time"
    assert Distribution.of([3.0, 1.0, 2.0], time_ordered=False).samples == (1.0, 2.0, 3.0)
