"""SARIF 2.1.0 output (``--format sarif``) for code-review annotations.

- ``tool.driver.rules``: every rule the report uses, with its title, help (the rule's
  ``docs/rules/<id>.md`` page), ``helpUri`` and default level;
- ``results``: one per finding; level ``error``/``warning``/``note`` from the severity;
  a finding with a ``location`` (``app/orders.py:42``) gets a ``physicalLocation`` with
  the line, one raised in a test without a location points at the test's file, others
  (catalog findings about a table) carry a ``logicalLocation`` naming the table;
- ``partialFingerprints`` derive from :meth:`Finding.identity` (rule plus
  test/location/table/fingerprint, never the message text), so code-scanning services
  keep one alert per problem across runs.

Paths are repository-relative when they are (``uriBaseId`` ``%SRCROOT%``); an absolute
path inside the working directory is made relative to it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from dbprobe import __version__
from dbprobe.report.model import Finding, Report, Severity
from dbprobe.rules import RULES, docs_text, docs_url

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://dbprobe.dev"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
SRCROOT = "%SRCROOT%"


def split_location(location: str | None) -> tuple[str, int] | None:
    """``path:line`` → ``(path, line)``; ``None`` when it is not that shape."""
    if not location:
        return None
    path, sep, line = location.rpartition(":")
    if not sep or not path or not line.isdigit() or int(line) < 1:
        return None
    return path, int(line)


def artifact_location(path: str, cwd: Path | None = None) -> dict[str, Any]:
    """A SARIF ``artifactLocation`` for a file path, relative to ``%SRCROOT%`` when it can be."""
    cwd = cwd or Path.cwd()
    win = PureWindowsPath(path)
    if win.drive and not path.startswith("/"):
        return {"uri": "file:///" + quote(win.as_posix(), safe="/:")}
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute():
        try:
            p = PurePosixPath(Path(str(p)).relative_to(cwd).as_posix())
        except ValueError:
            return {"uri": "file://" + quote(str(p), safe="/")}
    rel = str(p)
    while rel.startswith("./"):
        rel = rel[2:]
    return {"uri": quote(rel, safe="/"), "uriBaseId": SRCROOT}


def _identity_hash(finding: Finding) -> str:
    rule, where = finding.identity()
    return hashlib.sha256(f"{rule}\x1f{where}".encode()).hexdigest()[:32]


def _rule_name(rule_id: str) -> str:
    return "".join(part.capitalize() for part in rule_id.split("-"))


_HEADING = re.compile(r"^\s*#+\s*")


def _first_paragraph(markdown: str) -> str:
    paragraphs = [p.strip() for p in markdown.split("\n\n")]
    for p in paragraphs:
        if p and not p.startswith("#"):
            return " ".join(_HEADING.sub("", p).split())
    return ""


def _rule_descriptor(rule_id: str) -> dict[str, Any]:
    rule = RULES.get(rule_id)
    title = rule.title if rule else rule_id
    page = docs_text(rule_id)
    descriptor: dict[str, Any] = {
        "id": rule_id,
        "name": _rule_name(rule_id),
        "shortDescription": {"text": title},
        "helpUri": docs_url(rule_id),
        "properties": {"tags": ["performance", "database", "postgresql"]},
    }
    if page:
        descriptor["fullDescription"] = {"text": _first_paragraph(page) or title}
        descriptor["help"] = {"text": page, "markdown": page}
    else:
        descriptor["help"] = {"text": f"{title}. See {docs_url(rule_id)}"}
    if rule is not None:
        descriptor["defaultConfiguration"] = {"level": LEVELS[rule.severity]}
    return descriptor


def _result(finding: Finding, rule_index: int, data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": LEVELS[finding.severity],
        "message": {"text": f"{finding.message}\nFix: {finding.recommendation}"},
        "partialFingerprints": {"dbprobeIdentity/v1": _identity_hash(finding)},
    }
    if finding.fingerprint:
        digest = hashlib.sha256(finding.fingerprint.encode()).hexdigest()[:32]
        result["partialFingerprints"]["dbprobeFingerprint/v1"] = digest
    location: dict[str, Any] = {}
    parsed = split_location(finding.location)
    if parsed is not None:
        path, line = parsed
        location["physicalLocation"] = {
            "artifactLocation": artifact_location(path),
            "region": {"startLine": line},
        }
    elif finding.test:
        test_file = finding.test.split("::", 1)[0]
        location["physicalLocation"] = {"artifactLocation": artifact_location(test_file)}
    logical = []
    if finding.table:
        logical.append({"name": finding.table, "kind": "table"})
    if finding.test:
        logical.append({"fullyQualifiedName": finding.test, "kind": "test"})
    if logical:
        location["logicalLocations"] = logical
    if location:
        result["locations"] = [location]
    props: dict[str, Any] = {"severity": finding.severity.value}
    for key in ("test", "table", "sql", "count", "fingerprint"):
        value = data.get(key)
        if value is not None:
            props[key] = value
    if data.get("evidence"):
        props["evidence"] = data["evidence"]
    result["properties"] = props
    return result


def sarif_log(report: Report) -> dict[str, Any]:
    """The SARIF 2.1.0 log of a report, as a JSON-ready dict."""
    doc = report.to_dict()
    findings = report.sorted_findings()  # same order as doc["findings"]
    rule_ids: list[str] = []
    for f in findings:
        if f.rule not in rule_ids:
            rule_ids.append(f.rule)
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    results = [_result(f, index[f.rule], d) for f, d in zip(findings, doc["findings"], strict=True)]
    start = doc["started_at"]
    end = report.started_at.timestamp() + report.duration_s
    import datetime as _dt

    end_utc = (
        _dt.datetime.fromtimestamp(end, _dt.timezone.utc)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "dbprobe",
                "version": __version__,
                "semanticVersion": __version__,
                "informationUri": INFORMATION_URI,
                "rules": [_rule_descriptor(r) for r in rule_ids],
            }
        },
        "automationDetails": {"id": f"dbprobe/{report.command or 'report'}/"},
        "invocations": [
            {"executionSuccessful": True, "startTimeUtc": start, "endTimeUtc": end_utc}
        ],
        "originalUriBaseIds": {
            SRCROOT: {"description": {"text": "The directory dbprobe ran in (the project root)."}}
        },
        "results": results,
        "properties": {
            "command": report.command,
            "target": doc["target"],
            "summary": doc["summary"],
        },
    }
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


def render_sarif(report: Report) -> str:
    """``--format sarif``: the report as a SARIF 2.1.0 log."""
    return json.dumps(sarif_log(report), indent=2, ensure_ascii=False) + "\n"
