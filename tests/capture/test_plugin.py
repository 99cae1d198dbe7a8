"""The pytest plugin, driven through pytester: real ini files, real command lines, a
real PostgreSQL (the session's server; the inner runs get the URL of a clone of the
seeded shop through ``DBPROBE_SHOP_URL``)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbprobe.pg import PostgresServer
from dbprobe.report.schema import validate_report
from fixtures.shop.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = load_manifest()

# In-process pytester runs drop the modules an inner run imported; C extensions such as
# greenlet and asyncpg must not be imported twice in one process, so load them here.
for _module in (
    "asyncpg",
    "greenlet",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.ext.asyncio",
    "fixtures.shop.app.async_api",
    "fixtures.shop.app.catalog",
    "fixtures.shop.app.customers",
    "fixtures.shop.app.orders",
):
    importlib.import_module(_module)

CONFTEST = """
import asyncio, os
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from fixtures.shop.manifest import load_manifest

MANIFEST = load_manifest()

@pytest.fixture(scope="session")
def engine():
    engine = create_engine(os.environ["DBPROBE_SHOP_URL"])
    yield engine
    engine.dispose()

@pytest.fixture
def session(engine):
    with Session(engine) as s:
        yield s
        s.rollback()

def run_flow(entry_id, session=None, driver="asyncpg"):
    entry = MANIFEST.get(entry_id)
    if not entry.is_async:
        return entry.call(session)
    url = os.environ["DBPROBE_SHOP_URL"]
    url = url.replace("+psycopg://", "+asyncpg://" if driver == "asyncpg" else "+psycopg_async://")
    async def main():
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as s:
                return await entry.call(s)
        finally:
            await engine.dispose()
    return asyncio.run(main())
"""

FLOWS = """
import pytest
from conftest import run_flow

def test_order_customer(session):
    run_flow("n1-order-customer", session)

def test_order_customer_joined(session):
    run_flow("n1-order-customer-joined", session)

def test_get_loop(session):
    run_flow("n1-get-loop", session)

def test_category_page(session):
    run_flow("redundant-category-list", session)

def test_category_page_hoisted(session):
    run_flow("redundant-category-list-hoisted", session)

@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_async_orders(driver):
    run_flow("n1-async-order-customer", driver=driver)

def test_async_orders_joined():
    run_flow("n1-async-order-customer-joined")
"""


@pytest.fixture(scope="module")
def shop_url(pg: PostgresServer, shop_template: str) -> Iterator[str]:
    name = pg.clone(shop_template)
    yield pg.url(name)
    pg.drop_database(name)


@pytest.fixture
def tester(pytester: pytest.Pytester, shop_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DBPROBE_SHOP_URL", shop_url)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_flows=FLOWS)
    return pytester


def _report(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    validate_report(document)
    return document


def _by_test(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for finding in document["findings"]:
        out.setdefault(finding["test"].split("::", 1)[1], []).append(finding)
    return out


def test_plugin_import_does_not_import_sqlalchemy() -> None:
    code = (
        "import sys, dbprobe, dbprobe.plugin, dbprobe.config;"
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_inactive_without_flag(tester: pytest.Pytester) -> None:
    result = tester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    assert "dbprobe:" not in result.stdout.str()
    assert not list(tester.path.glob("*.json"))


def test_planted_found_and_clean_clean_with_report(tester: pytest.Pytester) -> None:
    result = tester.runpytest("--dbprobe", "--dbprobe-report", "out/report.json")
    result.assert_outcomes(passed=8)
    document = _report(tester.path / "out" / "report.json")
    assert document["command"] == "pytest"
    found = _by_test(document)
    expected = {
        "test_order_customer": ("n-plus-one", "n1-order-customer"),
        "test_get_loop": ("n-plus-one", "n1-get-loop"),
        "test_category_page": ("redundant-query", "redundant-category-list"),
        "test_async_orders[asyncpg]": ("n-plus-one", "n1-async-order-customer"),
        "test_async_orders[psycopg]": ("n-plus-one", "n1-async-order-customer"),
    }
    assert set(found) == set(expected)
    for test, (rule, problem_id) in expected.items():
        problem = MANIFEST.problem(problem_id)
        (finding,) = found[test]
        assert finding["rule"] == rule
        assert finding["location"].endswith(problem.resolve_location())
        if rule == "n-plus-one":
            assert finding["evidence"]["fix"] == problem.expected_fix
    tests = document["metrics"]["capture"]["tests"]
    assert tests["test_flows.py::test_order_customer"]["statements"] == 26
    assert tests["test_flows.py::test_order_customer_joined"]["statements"] == 1
    assert '"parameters"' not in json.dumps(document)
    out = result.stdout.str()
    assert "dbprobe: 5 findings in 5 of 8 captured tests" in out
    assert "fix: load it with the parent rows: add .options(joinedload(Order.customer))" in out
    assert "joinedload(Order.customer)" in out
    assert "fixtures/shop/app/orders.py:24" in out


def test_fail_on_from_ini_fails_only_the_guilty_tests(tester: pytest.Pytester) -> None:
    tester.makeini("[pytest]\ndbprobe = true\ndbprobe_fail_on = n-plus-one\n")
    result = tester.runpytest()
    result.assert_outcomes(passed=4, failed=4)
    failed = {line.split()[1] for line in result.stdout.lines if line.startswith("FAILED")}
    assert failed == {
        "test_flows.py::test_order_customer",
        "test_flows.py::test_get_loop",
        "test_flows.py::test_async_orders[asyncpg]",
        "test_flows.py::test_async_orders[psycopg]",
    }
    result.stdout.fnmatch_lines(["*dbprobe: findings of --dbprobe-fail-on rules (n-plus-one):*"])
    # The flag overrides the ini key.
    result = tester.runpytest("--dbprobe-fail-on", "redundant-query", "-k", "category")
    result.assert_outcomes(passed=1, failed=1)


def test_fixture_and_marker(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        test_budget="""
import pytest
from conftest import run_flow

@pytest.mark.dbprobe(max_queries=3)
def test_over_budget(session):
    run_flow("n1-category-children", session)

@pytest.mark.dbprobe(max_queries=1)
def test_within_budget(session):
    run_flow("n1-order-customer-joined", session)

def test_fixture_assertions(session, dbprobe):
    run_flow("n1-order-customer-joined", session)
    dbprobe.assert_max_queries(1)
    dbprobe.assert_no_n_plus_one()
    assert dbprobe.count == 1
    assert dbprobe.statements[0].orm.entity == "Order"
    dbprobe.reset()
    run_flow("n1-order-customer", session)
    assert [f.rule for f in dbprobe.findings] == ["n-plus-one"]
    with pytest.raises(AssertionError, match="lazy-loaded 25 times"):
        dbprobe.assert_no_n_plus_one()
    with pytest.raises(AssertionError) as info:
        dbprobe.assert_max_queries(2)
    assert "26 statements ran, at most 2 expected" in str(info.value)
    assert "   1. " in str(info.value) and "  26. " in str(info.value)

@pytest.mark.dbprobe(enabled=False)
def test_opted_out(session):
    run_flow("n1-get-loop", session)

@pytest.mark.dbprobe(max_querys=3)
def test_misspelt_marker():
    pass

@pytest.mark.dbprobe(fail_on="n-plus-two")
def test_unknown_rule_in_marker():
    pass
"""
    )
    result = tester.runpytest("test_budget.py")
    result.assert_outcomes(passed=3, failed=3)
    out = result.stdout.str()
    assert "dbprobe: 7 statements ran, the budget is 3 (max_queries):" in out
    assert "unknown marker argument 'max_querys'" in out
    assert "marker fail_on: unknown rule id(s) n-plus-two" in out
    assert "fixtures/shop/app/catalog.py:57 (category_tree) [lazy Category.children]" in out
    # Without --dbprobe only the marked and fixture-using tests were captured.
    assert "3 captured tests" in out


def test_bad_options_are_usage_errors(tester: pytest.Pytester) -> None:
    result = tester.runpytest("--dbprobe", "--dbprobe-fail-on", "n-plus-two")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*dbprobe: --dbprobe-fail-on: unknown rule id(s) n-plus-two*"])
    result = tester.runpytest("--dbprobe-max-queries", "lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (tester.path / "pyproject.toml").write_text("[tool.dbprobe]\nthreshold = 3\n")
    result = tester.runpytest("--dbprobe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown key(s) threshold*"])


def test_pyproject_ignore_and_app_paths(tester: pytest.Pytester) -> None:
    (tester.path / "pyproject.toml").write_text(
        '[tool.dbprobe]\nenabled = true\nfail_on = ["n-plus-one"]\n'
        '[[tool.dbprobe.ignore]]\nrelationship = "Order.customer"\n'
        '[[tool.dbprobe.allow]]\nlocation = "*/catalog.py"\nreason = "known"\n'
    )
    result = tester.runpytest("--dbprobe-report", "r.json")
    result.assert_outcomes(passed=8)
    document = _report(tester.path / "r.json")
    found = _by_test(document)
    assert set(found) == {"test_get_loop", "test_category_page"}
    assert all(f["severity"] == "info" for fs in found.values() for f in fs)


def test_baseline_ratchet(tester: pytest.Pytester) -> None:
    args = ["--dbprobe", "--dbprobe-baseline", "dbprobe-baseline.json", "-k", "not async"]
    tester.runpytest(*args, "--dbprobe-baseline-update").assert_outcomes(passed=5)
    baseline = json.loads((tester.path / "dbprobe-baseline.json").read_text())
    entry = baseline["tests"]["test_flows.py::test_order_customer"]
    assert entry["statements"] == 26
    assert entry["findings"][0].startswith("n-plus-one|")
    # Known findings and unchanged counts pass, even with fail-on.
    tester.runpytest(*args, "--dbprobe-fail-on", "n-plus-one").assert_outcomes(passed=5)
    # A count above the baseline fails; a new finding fails.
    tester.makepyfile(
        test_flows=FLOWS.replace(
            'run_flow("n1-order-customer-joined", session)',
            'run_flow("n1-order-customer-joined", session); run_flow("n1-get-loop", session)',
        )
    )
    result = tester.runpytest(*args)
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(
        ["*21 statements ran, the baseline dbprobe-baseline.json allows 1*", "*new findings*"]
    )
    # Improvements are reported, and --dbprobe-baseline-update tightens them.
    tester.makepyfile(test_flows=FLOWS.replace('run_flow("n1-get-loop", session)', "pass"))
    result = tester.runpytest(*args)
    result.assert_outcomes(passed=5)
    assert "1 test(s) now run fewer statements than the baseline" in result.stdout.str()
    tester.runpytest(*args, "--dbprobe-baseline-update").assert_outcomes(passed=5)
    baseline = json.loads((tester.path / "dbprobe-baseline.json").read_text())
    assert baseline["tests"]["test_flows.py::test_get_loop"] == {"statements": 0, "findings": []}


def test_explain_and_verify_fixes(tester: pytest.Pytester) -> None:
    result = tester.runpytest(
        "--dbprobe",
        "--dbprobe-explain",
        "--dbprobe-verify-fixes",
        "--dbprobe-report",
        "r.json",
        "-k",
        "test_order_customer or test_get_loop",
    )
    result.assert_outcomes(passed=3)
    found = _by_test(_report(tester.path / "r.json"))
    (orders,) = found["test_order_customer"]
    assert orders["evidence"]["explain"]["relation"] == "customers"
    assert orders["evidence"]["explain"]["total_cost"] > 0
    verified = orders["evidence"]["verified"]
    assert verified["fix"] == "joinedload(Order.customer)"
    assert verified["queries_before"] == 26
    assert verified["queries_after"] == 1
    assert verified["rerun_passed"] is True
    (gets,) = found["test_get_loop"]
    assert "verified" not in gets["evidence"]  # no loader option fixes a get loop
    assert "26 → 1 statements with joinedload(Order.customer)" in result.stdout.str()


def test_xdist_merges_worker_results(tester: pytest.Pytester) -> None:
    result = tester.runpytest_subprocess(
        "-n", "2", "--dbprobe", "--dbprobe-report", "r.json", "-k", "not async"
    )
    result.assert_outcomes(passed=5)
    document = _report(tester.path / "r.json")
    assert len(document["metrics"]["capture"]["tests"]) == 5
    assert len(document["findings"]) == 3
    assert "dbprobe: 3 findings in 3 of 5 captured tests" in result.stdout.str()
    # Both workers ran tests (the merged report is not one worker's).
    assert "2 workers" in result.stdout.str()


def test_report_parameters_only_when_asked(tester: pytest.Pytester) -> None:
    args = ["--dbprobe", "--dbprobe-report", "r.json", "-k", "test_get_loop"]
    tester.runpytest(*args).assert_outcomes(passed=1)
    plain = _report(tester.path / "r.json")
    assert "log" not in plain["metrics"]["capture"]["tests"]["test_flows.py::test_get_loop"]
    tester.runpytest(*args, "--dbprobe-report-parameters").assert_outcomes(passed=1)
    full = _report(tester.path / "r.json")
    log = full["metrics"]["capture"]["tests"]["test_flows.py::test_get_loop"]["log"]
    ids = [s["parameters"]["pk_1"] for s in log["statements"]]
    assert ids == list(range(101, 121))  # catalog.DEFAULT_PRODUCT_IDS


LOOKUPS = """
from conftest import run_flow

def test_reference_lookup(session):
    run_flow("unindexed-stock-reference", session)

def test_sku_lookup(session):
    run_flow("indexed-product-sku", session)
"""


def test_explain_reports_unindexed_lookups_at_the_application_line(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(test_lookups=LOOKUPS)
    result = tester.runpytest(
        "test_lookups.py", "--dbprobe", "--dbprobe-explain", "--dbprobe-report", "r.json",
        "--dbprobe-fail-on", "unindexed-lookup",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    found = _by_test(_report(tester.path / "r.json"))
    planted = MANIFEST.get("unindexed-stock-reference")
    (lookup,) = [f for f in found["test_reference_lookup"] if f["rule"] == "unindexed-lookup"]
    assert lookup["location"].endswith(planted.resolve_location())
    assert lookup["table"].endswith("stock_movements")
    assert "CREATE INDEX CONCURRENTLY" in lookup["recommendation"]
    assert "(reference)" in lookup["recommendation"]
    assert "test_sku_lookup" not in found  # the indexed twin: nothing to say
    assert "test_lookups.py::test_reference_lookup" in result.stdout.str()


MARKED_LOOKUPS = """
import pytest
from conftest import run_flow

@pytest.mark.dbprobe(explain=True)
def test_marked_lookup(session):
    run_flow("unindexed-stock-reference", session)

def test_unmarked_lookup(session):
    run_flow("unindexed-stock-reference", session)

def test_explain_session_is_read_only():
    # runs last: the plugin's EXPLAIN session was opened for test_marked_lookup
    from dbprobe.capture.plans import PLANS

    sessions = [db for db in PLANS._databases.values() if db is not None]
    assert sessions
    for db in sessions:
        row = db.conn.execute("SHOW default_transaction_read_only").fetchone()
        assert row == ("on",)
"""


def test_explain_marker_and_read_only_session(tester: pytest.Pytester) -> None:
    """``@pytest.mark.dbprobe(explain=True)`` explains one test's statements without
    --dbprobe-explain; the others are not explained; the EXPLAIN session is read-only."""
    tester.makepyfile(test_marked=MARKED_LOOKUPS)
    result = tester.runpytest("test_marked.py", "--dbprobe", "--dbprobe-report", "r.json")
    result.assert_outcomes(passed=3)
    found = _by_test(_report(tester.path / "r.json"))
    marked = [f for f in found.get("test_marked_lookup", []) if f["rule"] == "unindexed-lookup"]
    assert len(marked) == 1 and "(reference)" in marked[0]["recommendation"]
    unmarked = found.get("test_unmarked_lookup", [])
    assert not [f for f in unmarked if f["rule"] == "unindexed-lookup"]
