"""The detectors on saved real query logs (tests/data/querylogs, captured from the shop
on PostgreSQL by capture_shop_logs.py): no database needed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dbprobe.analysis.nplusone import LoaderFix, detect
from dbprobe.capture.log import QueryLog
from dbprobe.config import DbprobeConfig, Matcher
from dbprobe.report.model import Report, Target
from dbprobe.report.schema import validate_report
from fixtures.shop.manifest import load_manifest

LOGS = Path(__file__).resolve().parents[1] / "data" / "querylogs"
MANIFEST = load_manifest()
CONFIG = DbprobeConfig(root=str(Path(__file__).resolve().parents[2]))


def _raw(name: str) -> dict[str, Any]:
    return json.loads((LOGS / f"{name}.json").read_text())


def _log(name: str) -> QueryLog:
    return QueryLog.from_dict(_raw(name))


PLANTED = [
    p
    for p in MANIFEST.problems
    if p.rule in ("n-plus-one", "redundant-query") and not p.is_async and p.kind == "code"
]
CLEAN = [c for c in MANIFEST.clean if c.argument == "session" and (LOGS / f"{c.id}.json").exists()]


@pytest.mark.parametrize("problem", PLANTED, ids=lambda p: p.id)
def test_saved_planted_logs(problem: Any) -> None:
    findings = [f for f in detect(_log(problem.id), CONFIG, test="t") if f.rule == problem.rule]
    (finding,) = [f for f in findings if f.location == problem.resolve_location()]
    assert finding.test == "t"
    assert finding.count >= problem.min_count
    if problem.rule == "n-plus-one":
        assert finding.evidence["fix"] == problem.expected_fix
    # Every finding serialises into a valid report.
    report = Report(command="pytest", target=Target("postgresql://shop@127.0.0.1/shop", "15.8"))
    report.extend(findings)
    validate_report(report.to_dict())


@pytest.mark.parametrize("case", CLEAN, ids=lambda c: c.id)
def test_saved_clean_logs(case: Any) -> None:
    found = [f for f in detect(_log(case.id), CONFIG) if f.rule in case.must_not_trigger]
    assert found == []


def test_threshold_is_respected() -> None:
    log = _log("n1-category-children")  # six lazy loads
    assert len(detect(log, CONFIG.replace(n_plus_one_threshold=6))) == 1
    assert detect(log, CONFIG.replace(n_plus_one_threshold=7)) == []


def test_same_parameters_every_time_is_redundant_not_n_plus_one() -> None:
    raw = _raw("n1-get-loop")
    first = raw["statements"][0]
    raw["statements"] = [dict(first, seq=i + 1) for i in range(5)]
    (finding,) = detect(QueryLog.from_dict(raw), CONFIG)
    assert finding.rule == "redundant-query"
    assert finding.count == 5


def test_eager_loader_statements_never_count() -> None:
    # selectinload's IN query repeated (as for more than 500 parents) from one line.
    raw = _raw("n1-customer-orders-selectin")
    selectin = [s for s in raw["statements"] if s["orm"] and s["orm"]["relationship"]]
    assert selectin and not selectin[0]["orm"]["lazy"]
    extra = copy.deepcopy(selectin[0])
    extra["seq"] = 10_000
    extra["parameters"] = {k: [1, 2] for k in selectin[0]["parameters"]}
    raw["statements"].append(extra)
    assert detect(QueryLog.from_dict(raw), CONFIG) == []


def test_failed_and_executemany_statements_are_skipped() -> None:
    raw = _raw("n1-get-loop")
    for statement in raw["statements"][:10]:
        statement["error"] = "OperationalError"
    for statement in raw["statements"][10:]:
        statement["executemany"] = True
    assert detect(QueryLog.from_dict(raw), CONFIG) == []


def test_ignored_statements_are_skipped_per_rule() -> None:
    raw = _raw("n1-get-loop")
    for statement in raw["statements"]:
        statement["ignored"] = ["redundant-query"]
    assert [f.rule for f in detect(QueryLog.from_dict(raw), CONFIG)] == ["n-plus-one"]
    for statement in raw["statements"]:
        statement["ignored"] = ["*"]
    assert detect(QueryLog.from_dict(raw), CONFIG) == []


def test_test_glob_matcher() -> None:
    config = CONFIG.replace(ignore=(Matcher(test="tests/legacy/*"),))
    assert detect(_log("n1-get-loop"), config, test="tests/legacy/test_a.py::t") == []
    assert len(detect(_log("n1-get-loop"), config, test="tests/test_b.py::t")) == 1


def test_loader_fix_expression() -> None:
    fix = LoaderFix(("Author.books", "Book.reviews"), ("selectin", "selectin"))
    assert fix.root == "Author"
    assert fix.expression() == "selectinload(Author.books).selectinload(Book.reviews)"


def test_message_without_test_says_scope() -> None:
    (finding,) = detect(_log("n1-order-customer"), CONFIG)
    assert finding.message == "Order.customer lazy-loaded 25 times in one scope (many-to-one)"
    (in_test,) = detect(_log("n1-order-customer"), CONFIG, test="x")
    assert in_test.message.endswith("in one test (many-to-one)")
    assert in_test.sql is not None and "%(pk_1)s" in in_test.sql
    assert "461" not in json.dumps(in_test.to_dict())  # parameter values stay out
