"""Pure checks of the report contract the QA review found untested: identity by
fingerprint and test, warning findings through every format and exit code, Markdown
cells and fences, and the schema's refusals. No database: documents are built here."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from dbprobe.compare import compare_documents
from dbprobe.errors import DbprobeError
from dbprobe.report.model import Finding, Report, Severity, Target
from dbprobe.report.render import render
from dbprobe.report.sarif import sarif_log
from dbprobe.report.schema import validate_report
from dbprobe.rules import RULES


def _doc(*findings: Finding, command: str = "audit") -> dict[str, Any]:
    r = Report(command=command, target=Target("postgresql://app:***@db/shop", "15.18"))
    r.add(*findings)
    doc = r.to_dict()
    validate_report(doc)
    return doc


def test_findings_differing_only_by_fingerprint_are_different() -> None:
    a = RULES["unused-index"].finding("a", "drop a", table="t", fingerprint="public.t.a_idx")
    b = RULES["unused-index"].finding("b", "drop b", table="t", fingerprint="public.t.b_idx")
    result = compare_documents(_doc(a), _doc(b))
    assert [f.fingerprint for f in result.new_findings] == ["public.t.b_idx"]
    assert [f.fingerprint for f in result.resolved] == ["public.t.a_idx"]


def test_pytest_findings_keep_their_test_through_json() -> None:
    f = RULES["n-plus-one"].finding("n", "fix", location="app/o.py:3", test="tests/t.py::a")
    again = Report.from_dict(json.loads(render(_report(f, command="pytest"), "json")))
    assert again.findings[0].test == "tests/t.py::a"
    other = RULES["n-plus-one"].finding("n", "fix", location="app/o.py:3", test="tests/t.py::b")
    assert again.findings[0].identity() != other.identity()


def _report(*findings: Finding, command: str = "audit") -> Report:
    r = Report(command=command)
    r.add(*findings)
    return r


def test_a_warning_finding_everywhere() -> None:
    warn = RULES["seq-scan-heavy-table"].finding("t read by seq scans", "index it", table="t")
    assert warn.severity is Severity.WARNING
    r = _report(warn)
    doc = r.to_dict()
    assert doc["summary"] == {"error": 0, "warning": 1, "info": 0}
    assert [r.exit_code(x) for x in ("error", "warning", "info", "never")] == [0, 1, 1, 0]
    result = sarif_log(r)["runs"][0]["results"][0]
    assert result["level"] == "warning"
    assert "Warnings (1)" in render(r, "html")
    assert "| warning |" in render(r, "markdown")
    assert "warning" in render(r, "table").lower()


def test_markdown_cells_stay_one_row_and_fences_hold() -> None:
    f = RULES["n-plus-one"].finding(
        "a|b\nsecond line",
        "use x|y\nthen z",
        location="app/a|b.py:3",
        sql="SELECT '```' AS fence, 1 FROM t WHERE a = %(p)s " + "AND b = 1 " * 20,
        evidence={"queries": 20},
    )
    text = render(_report(f), "markdown")
    rows = [line for line in text.splitlines() if line.startswith("| error")]
    assert len(rows) == 1
    cells = re.split(r"(?<!\\)\|", rows[0].strip().strip("|"))
    assert len(cells) == 5
    assert "second line" in rows[0] and "then z" in rows[0]
    # SQL containing ``` gets a longer fence, so the block is not cut
    assert "````sql" in text
    # the evidence JSON is there
    assert '"queries": 20' in text


def _valid() -> dict[str, Any]:
    return _doc(RULES["unused-index"].finding("m", "r", table="t", count=2))


@pytest.mark.parametrize(
    "breaks",
    [
        lambda d: d["findings"][0].pop("rule"),
        lambda d: d["findings"][0].pop("severity"),
        lambda d: d["findings"][0].pop("message"),
        lambda d: d["findings"][0].pop("recommendation"),
        lambda d: d["findings"][0].update(severity="fatal"),
        lambda d: d["findings"][0].update(count=-1),
        lambda d: d.update(started_at="yesterday"),
        lambda d: d["metrics"].update(x={"n": 3, "p50": "a", "p95": 1, "p99": 1, "max": 1}),
        lambda d: d["target"].update(url="postgresql://app:hunter2@db/shop"),
        lambda d: d["target"].update(url="postgresql://app:hun/ter@db/shop"),
        lambda d: d["target"].update(url="postgresql://db/shop?password=hunter2"),
        lambda d: d["target"].update(url="host=db password=hunter2"),
    ],
)
def test_schema_refuses(breaks: Any) -> None:
    doc = _valid()
    breaks(doc)
    with pytest.raises(DbprobeError):
        validate_report(doc)


def test_schema_accepts_masked_urls() -> None:
    for url in (
        "postgresql://app:***@db/shop",
        "postgresql://db:5432/shop",
        "host=db password=*** dbname=shop",
        "postgresql://db/shop?password=***",
    ):
        doc = _valid()
        doc["target"]["url"] = url
        validate_report(doc)


def test_a_plan_given_as_text_lines_is_shown_in_html_and_markdown() -> None:
    plan = [
        "Seq Scan on stock_movements  (cost=0.00..431.00 rows=5 width=16)",
        "  Filter: (product_id = 42)",
    ]
    f = RULES["unindexed-lookup"].finding(
        "scan", "CREATE INDEX CONCURRENTLY …", table="stock_movements", evidence={"plan": plan}
    )
    for fmt in ("html", "markdown"):
        text = render(_report(f), fmt)
        assert "Seq Scan on stock_movements" in text, fmt
        assert "Filter: (product_id = 42)" in text, fmt


def test_one_missing_index_seen_twice_is_cross_referenced() -> None:
    from dbprobe.demo import cross_reference

    lookup = RULES["unindexed-lookup"].finding(
        "Seq Scan on stock_movements", "CREATE INDEX …", table="stock_movements"
    )
    heavy = RULES["seq-scan-heavy-table"].finding(
        "public.stock_movements read by seq scans", "CREATE INDEX …", table="public.stock_movements"
    )
    other = RULES["seq-scan-heavy-table"].finding("orders", "…", table="public.orders")
    out = cross_reference([lookup, heavy, other])
    assert out[0].evidence["related"][0]["rule"] == "seq-scan-heavy-table"
    assert out[1].evidence["related"][0]["rule"] == "unindexed-lookup"
    assert "related" not in out[2].evidence
    assert "Same fix as: seq-scan-heavy-table" in render(_report(*out), "html")
