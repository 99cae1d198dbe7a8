"""SARIF 2.1.0 output (``--format sarif``) for code-review annotations (GitHub code
scanning and other SARIF consumers).

- ``tool.driver.rules``: every rule the report uses, with its title, help (the rule's
  ``docs/rules/<id>.md`` page, text and Markdown), default level, and ``helpUri`` only
  when ``$DBPROBE_DOCS_URL`` says where the pages are published;
- ``results``: one per finding; level ``error``/``warning``/``note`` from the severity;
  a finding with a ``location`` (``app/orders.py:42``) gets a ``physicalLocation`` with
  the line, one raised in a test without a location points at the test's file;
- every result has a physical location, because GitHub's upload rejects results
  without one: a finding with no code location (a table, a pool, a cold start) is
  *anchored* to a project file — the ``[tool.dbprobe.slo]`` line of the configuration
  for an SLO violation, else ``pyproject.toml`` (or ``setup.cfg``, ``setup.py``,
  ``README.md``) — with its table or test as a ``logicalLocation`` and
  ``properties.anchored``; ``unlocated="drop"`` leaves such findings out instead
  (``run.properties.dropped`` counts them);
- paths are relative to the project root (``%SRCROOT%``: the nearest folder at or above
  the working directory with ``.git`` or ``pyproject.toml``), never absolute: a
  location outside the project is treated as no location (its path stays in the
  message and ``properties``);
- ``partialFingerprints`` derive from :meth:`Finding.identity` (rule, test, file, table,
  fingerprint — never the message or the line) plus the finding's rank among equal
  identities, so code-scanning services keep one alert per problem across runs, also
  when the code above it moves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from dbprobe import __version__
from dbprobe.report.model import Finding, Report, Severity
from dbprobe.rules import RULES, docs_link, docs_text, docs_url

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
SRCROOT = "%SRCROOT%"
UNLOCATED = ("anchor", "drop")
UNLOCATED_ENV = "DBPROBE_SARIF_UNLOCATED"
ANCHOR_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "README.rst")
ROOT_MARKERS = (".git", "pyproject.toml")


def split_location(location: str | None) -> tuple[str, int] | None:
    """``path:line`` → ``(path, line)``; ``None`` when it is not that shape."""
    if not location:
        return None
    path, sep, line = location.rpartition(":")
    if not sep or not path or not line.isdigit() or int(line) < 1:
        return None
    return path, int(line)


def project_root(start: Path | None = None) -> Path:
    """The project root: the nearest folder at or above ``start`` (default: the working
    directory) holding ``.git`` or ``pyproject.toml``; ``start`` itself when none does."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return here


def relative_path(path: str, root: Path | None = None) -> str | None:
    """``path`` relative to the project ``root`` (POSIX separators), or ``None`` when it
    lies outside it (an absolute path elsewhere, a Windows drive, ``..``)."""
    root = root or project_root()
    if PureWindowsPath(path).drive and not path.startswith("/"):
        return None
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute():
        try:
            p = PurePosixPath(Path(str(p)).resolve().relative_to(root).as_posix())
        except ValueError:
            return None
    rel = str(p)
    while rel.startswith("./"):
        rel = rel[2:]
    if rel == ".." or rel.startswith("../"):
        return None
    return rel


def artifact_location(path: str, root: Path | None = None) -> dict[str, Any] | None:
    """A SARIF ``artifactLocation`` relative to ``%SRCROOT%``, or ``None`` for a path
    outside the project."""
    rel = relative_path(path, root)
    if rel is None:
        return None
    return {"uri": quote(rel, safe="/"), "uriBaseId": SRCROOT}


def _anchor(finding: Finding, root: Path) -> tuple[dict[str, Any], str] | None:
    """Where a finding without a code location is pinned: the SLO's line in its
    configuration file for an SLO violation, else the project's first anchor file;
    ``(physicalLocation, why)`` or ``None`` when the project has no such file."""
    ev = finding.evidence or {}
    source, key = ev.get("source"), ev.get("slo")
    if finding.rule == "slo-violation" and isinstance(source, str) and isinstance(key, str):
        where = artifact_location(source, root)
        line = _line_of(Path(source), key)
        if where is not None:
            region = {"startLine": line or 1}
            return {"artifactLocation": where, "region": region}, f"the SLO {key}"
    for name in ANCHOR_FILES:
        if (root / name).is_file():
            loc = {
                "artifactLocation": {"uri": name, "uriBaseId": SRCROOT},
                "region": {"startLine": 1},
            }
            return loc, f"the project file {name} (the finding has no code location)"
    return None


def _line_of(path: Path, key: str) -> int | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    return next((i + 1 for i, line in enumerate(lines) if pattern.match(line)), None)


def _identity_hash(finding: Finding, rank: int = 0) -> str:
    rule, where = finding.identity()
    key = f"{rule}\x1f{where}" + (f"\x1f{rank}" if rank else "")
    return hashlib.sha256(key.encode()).hexdigest()[:32]


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
        "properties": {"tags": ["performance", "database", "postgresql"]},
    }
    url = docs_url(rule_id)
    if url:
        descriptor["helpUri"] = url
    if page:
        descriptor["fullDescription"] = {"text": _first_paragraph(page) or title}
        descriptor["help"] = {"text": page, "markdown": page}
    else:
        descriptor["help"] = {"text": f"{title}. See {docs_link(rule_id)}"}
    if rule is not None:
        descriptor["defaultConfiguration"] = {"level": LEVELS[rule.severity]}
    return descriptor


def _result(
    finding: Finding, rule_index: int, data: dict[str, Any], rank: int, root: Path
) -> dict[str, Any] | None:
    """The SARIF result of a finding; ``None`` when it has no code location and
    ``anchor`` found no project file to pin it to."""
    text = f"{finding.message}\nFix: {finding.recommendation}"
    result: dict[str, Any] = {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": LEVELS[finding.severity],
        "message": {"text": text},
        "partialFingerprints": {"dbprobeIdentity/v2": _identity_hash(finding, rank)},
    }
    if finding.fingerprint:
        digest = hashlib.sha256(finding.fingerprint.encode()).hexdigest()[:32]
        result["partialFingerprints"]["dbprobeFingerprint/v1"] = digest
    props: dict[str, Any] = {"severity": finding.severity.value}
    location: dict[str, Any] = {}
    parsed = split_location(finding.location)
    if parsed is not None:
        path, line = parsed
        where = artifact_location(path, root)
        if where is not None:
            location["physicalLocation"] = {
                "artifactLocation": where,
                "region": {"startLine": line},
            }
        else:
            props["location"] = finding.location
    elif finding.test:
        where = artifact_location(finding.test.split("::", 1)[0], root)
        if where is not None:
            location["physicalLocation"] = {"artifactLocation": where}
    if "physicalLocation" not in location:
        anchored = _anchor(finding, root)
        if anchored is None:
            return None
        location["physicalLocation"], why = anchored
        props["anchored"] = f"no code location: pinned to {why}"
    logical = []
    if finding.table:
        logical.append({"name": finding.table, "kind": "table"})
    if finding.test:
        logical.append({"fullyQualifiedName": finding.test, "kind": "test"})
    if logical:
        location["logicalLocations"] = logical
    result["locations"] = [location]
    for key in ("test", "table", "sql", "count", "fingerprint"):
        value = data.get(key)
        if value is not None:
            props[key] = value
    if data.get("evidence"):
        props["evidence"] = data["evidence"]
    result["properties"] = props
    return result


def _has_code_location(finding: Finding, root: Path) -> bool:
    parsed = split_location(finding.location)
    if parsed is not None and relative_path(parsed[0], root) is not None:
        return True
    return (
        bool(finding.test) and relative_path(str(finding.test).split("::", 1)[0], root) is not None
    )


def sarif_log(
    report: Report, *, unlocated: str | None = None, root: Path | None = None
) -> dict[str, Any]:
    """The SARIF 2.1.0 log of a report, as a JSON-ready dict.

    unlocated: ``anchor`` (default; ``$DBPROBE_SARIF_UNLOCATED`` overrides the default)
    pins findings without a code location to a project file, ``drop`` leaves them out;
    root: the project root (default: :func:`project_root`)."""
    mode = unlocated or os.environ.get(UNLOCATED_ENV) or "anchor"
    if mode not in UNLOCATED:
        raise ValueError(f"unknown unlocated mode {mode!r} (choose {', '.join(UNLOCATED)})")
    root = root or project_root()
    doc = report.to_dict()
    findings = report.sorted_findings()  # same order as doc["findings"]
    rule_ids: list[str] = []
    for f in findings:
        if f.rule not in rule_ids:
            rule_ids.append(f.rule)
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    ranks: Counter[tuple[str, str]] = Counter()
    results = []
    dropped = 0
    by_line = sorted(
        zip(findings, doc["findings"], strict=True),
        key=lambda pair: (pair[0].identity(), pair[0].line or 0),
    )
    rank_of: dict[int, int] = {}
    for f, _ in by_line:
        rank_of[id(f)] = ranks[f.identity()]
        ranks[f.identity()] += 1
    for f, d in zip(findings, doc["findings"], strict=True):
        if mode == "drop" and not _has_code_location(f, root):
            dropped += 1
            continue
        result = _result(f, index[f.rule], d, rank_of[id(f)], root)
        if result is None:
            dropped += 1
            continue
        results.append(result)
    used = [r for r in rule_ids if any(res["ruleId"] == r for res in results)]
    if used != rule_ids:
        index = {rule_id: i for i, rule_id in enumerate(used)}
        for res in results:
            res["ruleIndex"] = index[res["ruleId"]]
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
                "rules": [_rule_descriptor(r) for r in used],
            }
        },
        "automationDetails": {"id": f"dbprobe/{report.command or 'report'}/"},
        "invocations": [
            {"executionSuccessful": True, "startTimeUtc": start, "endTimeUtc": end_utc}
        ],
        "originalUriBaseIds": {
            SRCROOT: {
                "description": {
                    "text": "The project root (the folder with .git or pyproject.toml)."
                }
            }
        },
        "results": results,
        "properties": {
            "command": report.command,
            "target": doc["target"],
            "summary": doc["summary"],
            "unlocated": mode,
            "dropped": dropped,
        },
    }
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


def render_sarif(report: Report, *, unlocated: str | None = None) -> str:
    """``--format sarif``: the report as a SARIF 2.1.0 log (see :func:`sarif_log`)."""
    return json.dumps(sarif_log(report, unlocated=unlocated), indent=2, ensure_ascii=False) + "\n"
