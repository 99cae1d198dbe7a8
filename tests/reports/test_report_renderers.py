"""Every renderer on a report built from real measurements, and SARIF against the
official SARIF 2.1.0 schema (vendored in tests/data)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dbprobe.report.model import Finding, Report, Severity
from dbprobe.report.render import RENDERERS, render
from dbprobe.report.sarif import artifact_location, sarif_log, split_location
from dbprobe.report.schema import validate_report
from dbprobe.rules import RULES, docs_url

SARIF_SCHEMA = Path(__file__).parents[1] / "data" / "sarif-schema-2.1.0.json"


def test_every_format_is_registered() -> None:
    assert set(RENDERERS) >= {"table", "json", "markdown", "html", "sarif"}


def test_json_round_trips_and_validates(sample_report: Report) -> None:
    doc = json.loads(render(sample_report, "json"))
    validate_report(doc)
    again = Report.from_dict(doc)
    validate_report(again.to_dict())
    steps = doc["metrics"]["pool"]["psycopg_pool"]["steps"]
    assert [s["concurrency"] for s in steps] == [1, 2, 4, 8]
    # raw samples travel with the distributions, so compare can decide from them
    assert len(steps[0]["query_latency"]["samples"]) == steps[0]["query_latency"]["n"] > 10


def test_table_fits_100_columns_and_groups_by_severity(sample_report: Report) -> None:
    text = render(sample_report, "table")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    error_at = lines.index("ERROR (2)")
    info_at = lines.index("INFO (1)")
    assert error_at < info_at
    assert any(line.startswith("[unused-index]") for line in lines[info_at:])
    assert "POOL psycopg_pool" in text and "COLD START" in text
    assert "summary: 2 errors, 0 warnings, 1 info" in text


def test_markdown_is_a_pr_comment(sample_report: Report) -> None:
    text = render(sample_report, "markdown")
    first = text.splitlines()[0]
    assert first.startswith("### ") and "2 errors, 0 warnings, 1 info" in first
    # rule links are repository paths (no public site to point at) unless configured
    assert "(docs/rules/n-plus-one.md)" in text
    assert "dbprobe.dev" not in text
    # long SQL and plans fold into <details>, with the plan rendered as text
    assert text.count("<details>") == text.count("</details>") >= 3
    assert "Seq Scan on sample_child" in text
    assert "```sql" in text
    # table rows stay one line each: a pipe in a cell must be escaped
    for line in text.splitlines():
        if line.startswith("| error") or line.startswith("| info"):
            assert line.endswith(" |")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained(sample_report: Report) -> None:
    text = render(sample_report, "html")
    parser = _Collector()
    parser.feed(text)
    tags = parser.tags
    names = [t for t, _ in tags]
    assert names.count("svg") >= 6
    assert "link" not in names and "img" not in names and "iframe" not in names
    for tag, attrs in tags:
        if tag == "script":
            assert "src" not in attrs
        if tag == "a":
            continue  # links to rule pages are navigation, not fetches
        for key in ("src", "href", "xlink:href"):
            assert key not in attrs or not str(attrs[key]).startswith(("http", "//"))
    assert "@import" not in text and "url(" not in text
    csp = [a for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in str(csp[0]["content"])
    # the inline script stays a few lines
    script = text.split("<script>")[1].split("</script>")[0]
    assert len(script.strip().splitlines()) <= 16
    assert "@media print" in text
    # SQL formatted by sqlparse: keywords on their own lines
    assert "SELECT id\nFROM sample_child\nWHERE code = 4242" in text


def test_html_escapes_untrusted_text() -> None:
    r = Report(command="audit")
    r.add(
        RULES["unused-index"].finding(
            "<script>alert(1)</script> index", "DROP INDEX x; -- <b>", table="t<1>"
        )
    )
    text = render(r, "html")
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


@pytest.fixture(scope="module")
def sarif_validator() -> jsonschema.Draft4Validator:
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    assert "sarif-schema-2.1.0" in schema["id"]
    return jsonschema.Draft4Validator(
        schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )


def test_sarif_validates_against_the_official_schema(
    sample_report: Report, sarif_validator: jsonschema.Draft4Validator
) -> None:
    doc = json.loads(render(sample_report, "sarif"))
    errors = sorted(sarif_validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["n-plus-one", "unindexed-lookup", "unused-index"]
    for rule in rules:
        assert "helpUri" not in rule  # no base URL configured: no dead links
        assert rule["help"]["text"]
    results = run["results"]
    assert [r["level"] for r in results] == ["error", "error", "note"]
    n1 = results[0]
    loc = n1["locations"][0]["physicalLocation"]
    path, line = split_location(sample_report.sorted_findings()[0].location)  # type: ignore[misc]
    assert loc["artifactLocation"] == {"uri": path, "uriBaseId": "%SRCROOT%"}
    assert loc["region"]["startLine"] == line
    # the location is the real call site of the N+1 loop in the sample workload
    source = (Path(__file__).parents[2] / path).read_text().splitlines()
    assert "# the N+1" in source[line - 1]
    # catalog findings have no code location: a logical location names the table
    assert results[2]["locations"][0]["logicalLocations"][0]["name"] == "public.sample_child"
    assert all(r["ruleIndex"] == [x["id"] for x in rules].index(r["ruleId"]) for r in results)


def _finding(**kw: Any) -> Finding:
    base: dict[str, Any] = {
        "rule": "n-plus-one",
        "severity": Severity.ERROR,
        "message": "50 loads",
        "recommendation": "joinedload",
    }
    base.update(kw)
    return Finding(**base)


def test_sarif_fingerprints_follow_identity_not_message(
    sarif_validator: jsonschema.Draft4Validator,
) -> None:
    def log(*findings: Finding) -> dict[str, Any]:
        r = Report(command="pytest")
        r.add(*findings)
        doc = sarif_log(r)
        assert not list(sarif_validator.iter_errors(doc))
        return doc

    a = log(_finding(location="app/orders.py:42", fingerprint="SELECT 1"))["runs"][0]
    b = log(_finding(location="app/orders.py:42", fingerprint="SELECT 1", message="51 loads"))
    c = log(_finding(location="app/orders.py:43", fingerprint="SELECT 1"))
    fa = a["results"][0]["partialFingerprints"]
    assert fa == b["runs"][0]["results"][0]["partialFingerprints"]
    # moving the call site by a line keeps the alert; another file is another alert
    assert fa == c["runs"][0]["results"][0]["partialFingerprints"]
    e = log(_finding(location="app/items.py:42", fingerprint="SELECT 1"))["runs"][0]
    assert fa != e["results"][0]["partialFingerprints"]
    # two equal findings in one file stay two alerts
    two = log(
        _finding(location="app/orders.py:42", fingerprint="SELECT 1"),
        _finding(location="app/orders.py:90", fingerprint="SELECT 1"),
    )["runs"][0]["results"]
    assert two[0]["partialFingerprints"] != two[1]["partialFingerprints"]
    # a finding raised in a test without a code location points at the test file
    d = log(_finding(test="tests/test_orders.py::test_list[2]"))["runs"][0]["results"][0]
    assert d["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == (
        "tests/test_orders.py"
    )
    assert d["level"] == "error"


def test_sarif_paths(tmp_path: Path) -> None:
    assert split_location("app/orders.py:42") == ("app/orders.py", 42)
    assert split_location("C:\\app\\orders.py:7") == ("C:\\app\\orders.py", 7)
    assert split_location("orders.py") is None
    assert split_location("orders.py:0") is None
    inside = tmp_path / "app" / "my orders.py"
    assert artifact_location(str(inside), root=tmp_path) == {
        "uri": "app/my%20orders.py",
        "uriBaseId": "%SRCROOT%",
    }
    # never an absolute file:// URI: a path outside the project is no location
    assert artifact_location("/elsewhere/x.py", root=tmp_path) is None
    assert artifact_location("../x.py", root=tmp_path) is None
    assert artifact_location("./app/x.py", root=tmp_path) == {
        "uri": "app/x.py",
        "uriBaseId": "%SRCROOT%",
    }


def test_empty_report_renders_everywhere() -> None:
    r = Report(command="audit")
    for fmt in RENDERERS:
        text = render(r, fmt)
        assert text.strip()
    assert "No findings." in render(r, "html")
    assert re.search(r"0 errors, 0 warnings, 0 info", render(r, "markdown"))


def test_rule_links_follow_a_configured_docs_url(
    sample_report: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBPROBE_DOCS_URL", "https://docs.example.org/rules/")
    assert docs_url("n-plus-one") == "https://docs.example.org/rules/n-plus-one.md"
    rules = sarif_log(sample_report)["runs"][0]["tool"]["driver"]["rules"]
    assert all(r["helpUri"] == docs_url(r["id"]) for r in rules)
    assert "(https://docs.example.org/rules/n-plus-one.md)" in render(sample_report, "markdown")
    monkeypatch.delenv("DBPROBE_DOCS_URL")
    assert docs_url("n-plus-one") is None
    # the HTML report embeds the pages of the rules it uses, linked by anchor
    html = render(sample_report, "html")
    assert 'id="rule-n-plus-one"' in html and 'href="#rule-n-plus-one"' in html


def _taint(node: Any, bad: str) -> Any:
    """Every string of a report document with ``bad`` appended, except the few fields the
    schema constrains to fixed words."""
    fixed = {"schema", "severity", "rule", "started_at", "unit", "order", "version"}
    if isinstance(node, dict):
        return {k: v if k in fixed else _taint(v, bad) for k, v in node.items()}
    if isinstance(node, list):
        return [_taint(v, bad) for v in node]
    if isinstance(node, str):
        return node + bad
    return node


def test_html_escapes_every_string_of_a_loaded_document(sample_report: Report) -> None:
    bad = "<x>\"'&"
    doc = _taint(sample_report.to_dict(), bad)
    doc["environment"]["cpus"] = bad  # saved runs travel as artifacts: anything goes
    doc["notes"] = [bad]
    pools = doc["metrics"]["pool"]
    pools["p" + bad] = pools.pop(next(iter(pools)))
    doc["metrics"]["extra" + bad] = {
        "lat" + bad: dict(doc["metrics"]["coldstart"]["psycopg"]["total"])
    }
    text = render(Report.from_dict(doc), "html")
    assert "<x>" not in text
    assert "&lt;x&gt;" in text
