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
# The n1-order-customer flow: the orders query and one lazy load per order.
ORDER_CUSTOMER_STATEMENTS = (MANIFEST.get("n1-order-customer").min_count or 0) + 1

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
    assert tests["test_flows.py::test_order_customer"]["statements"] == ORDER_CUSTOMER_STATEMENTS
    assert tests["test_flows.py::test_order_customer_joined"]["statements"] == 1
    assert '"parameters"' not in json.dumps(document)
    out = result.stdout.str()
    assert "dbprobe: 5 findings in 5 of 8 captured tests" in out
    assert "fix: load it with the parent rows: add .options(joinedload(Order.customer))" in out
    assert "joinedload(Order.customer)" in out
    assert MANIFEST.get("n1-order-customer").resolve_location() in out


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
from conftest import MANIFEST, run_flow

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
    with pytest.raises(AssertionError, match="lazy-loaded 25 times") as info:
        dbprobe.assert_no_n_plus_one()
    site = MANIFEST.get("n1-order-customer").resolve_location()
    assert "fix: load it with the parent rows" in str(info.value)
    assert "joinedload(Order.customer)" in str(info.value)
    assert "statements:" in str(info.value) and "  26. " in str(info.value)
    with pytest.raises(AssertionError) as info:
        dbprobe.assert_max_queries(2)
    assert "26 statements ran, at most 2 expected" in str(info.value)
    assert "   1. " in str(info.value) and "  26. " in str(info.value)
    assert str(info.value).count(site + " (recent_orders_report) [lazy Order.customer]") == 25

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
    tree = MANIFEST.get("n1-category-children").resolve_location()
    assert f"{tree} (category_tree) [lazy Category.children]" in out
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
    assert entry["statements"] == ORDER_CUSTOMER_STATEMENTS
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
    assert verified["queries_before"] == ORDER_CUSTOMER_STATEMENTS
    assert verified["queries_after"] == 1
    assert verified["rerun_passed"] is True
    (gets,) = found["test_get_loop"]
    assert "verified" not in gets["evidence"]  # no loader option fixes a get loop
    assert f"{ORDER_CUSTOMER_STATEMENTS} → 1 statements with joinedload(Order.customer)" in (
        result.stdout.str()
    )


def test_xdist_merges_worker_results(tester: pytest.Pytester, shop_url: str) -> None:
    result = tester.runpytest_subprocess(
        "-n", "2", "--dbprobe", "--dbprobe-report", "r.json", "-k", "not async"
    )
    result.assert_outcomes(passed=5)
    document = _report(tester.path / "r.json")
    assert len(document["metrics"]["capture"]["tests"]) == 5
    # The target the workers captured reaches the merged report (password masked).
    target = document["target"]
    assert target["url"] and shop_url.rsplit("/", 1)[1] in target["url"]
    assert target["server_version"]
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


INLINED = """
from sqlalchemy import text

def test_inlined_reference(session):
    session.execute(text("SELECT * FROM stock_movements WHERE reference = 'SECRETLIT42'")).all()

def test_other_statement_same_index(session):
    session.execute(
        text("SELECT id, quantity FROM stock_movements WHERE reference = 'OTHERLIT77'")
    ).all()
"""


def test_explain_keeps_inlined_values_out_and_names_one_index_once(
    tester: pytest.Pytester,
) -> None:
    tester.makepyfile(test_inlined=INLINED)
    result = tester.runpytest(
        "test_inlined.py", "--dbprobe", "--dbprobe-explain", "--dbprobe-report", "r.json"
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    raw = (tester.path / "r.json").read_text()
    found = _by_test(_report(tester.path / "r.json"))
    lookups = [
        f
        for name in ("test_inlined_reference", "test_other_statement_same_index")
        for f in found.get(name, [])
        if f["rule"] == "unindexed-lookup"
    ]
    assert len(lookups) == 2
    # Both statements need the same index: one name, not ..._reference_2.
    advice = {f["recommendation"].split(";")[0] for f in lookups}
    assert any("ix_stock_movements_reference ON" in a for a in advice), advice
    assert not any("_reference_2" in f["recommendation"] for f in lookups)
    # The inlined literal values appear nowhere in the report or the terminal.
    for secret in ("SECRETLIT42", "OTHERLIT77"):
        assert secret not in raw
        assert secret not in result.stdout.str()


SETUP_HEAVY = """
import pytest
from sqlalchemy import text
from conftest import run_flow

@pytest.fixture
def busy(session):
    for _ in range(40):
        session.execute(text("SELECT 1"))
    yield
    for _ in range(5):
        session.execute(text("SELECT 2"))

def test_orders_after_busy_setup(session, busy):
    run_flow("n1-order-customer", session)
"""


def test_verify_fixes_counts_the_call_phase_both_times(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_setup_heavy=SETUP_HEAVY)
    result = tester.runpytest(
        "test_setup_heavy.py", "--dbprobe", "--dbprobe-verify-fixes", "--dbprobe-report", "r.json"
    )
    result.assert_outcomes(passed=1)
    (orders,) = _by_test(_report(tester.path / "r.json"))["test_orders_after_busy_setup"]
    min_count = MANIFEST.get("n1-order-customer").min_count
    verified = orders["evidence"]["verified"]
    assert verified["queries_before"] > min_count
    assert verified["queries_after"] == 1  # the 45 fixture statements are not counted
    assert verified["n_plus_one_remaining"] is False
    assert f"{verified['queries_before']} → 1 statements" in result.stdout.str()


HELPER = """
from sqlalchemy import text

def product_names(session, ids):
    out = []
    for product_id in ids:
        out.append(
            session.execute(  # helper-line
                text("SELECT name FROM products WHERE id = :id"), {"id": product_id}
            ).scalar_one()
        )
    return out
"""

KNOBS = """
import pathlib, sys
import pytest
from conftest import run_flow

sys.path.insert(0, str(pathlib.Path(__file__).parent / "vendor" / "site-packages"))
import vendored_helper

def test_helper_loop(session):
    assert len(vendored_helper.product_names(session, range(101, 109))) == 8  # call-line

@pytest.mark.dbprobe(n_plus_one_threshold=30)
def test_marker_threshold(session):
    run_flow("n1-order-customer", session)

@pytest.mark.dbprobe(redundant_threshold=50, max_queries=100)
def test_marker_redundant_threshold(session):
    run_flow("redundant-category-list", session)

@pytest.mark.dbprobe(verify_fixes=True, explain=True, max_queries=100)
def test_marker_verify_and_explain(session):
    run_flow("n1-order-customer", session)

@pytest.mark.dbprobe(fail_on="n-plus-one", max_queries=100)
def test_marker_fail_on(session):
    run_flow("n1-get-loop", session)
"""


def _line_of(source: str, marker: str) -> int:
    (number,) = [i for i, text in enumerate(source.splitlines(), 1) if marker in text]
    return number


def test_flags_ini_and_marker_keys_take_effect(tester: pytest.Pytester) -> None:
    vendor = tester.path / "vendor" / "site-packages"
    vendor.mkdir(parents=True)
    (vendor / "vendored_helper.py").write_text(HELPER)
    tester.makepyfile(test_knobs=KNOBS)
    helper_at = f"vendored_helper.py:{_line_of(HELPER, 'helper-line')}"
    call_at = f"test_knobs.py:{_line_of(KNOBS.lstrip(), 'call-line')}"  # as makepyfile writes it

    # Flags: max-queries budget, app path (a directory under site-packages counts as
    # application code only when named).
    result = tester.runpytest(
        "test_knobs.py", "--dbprobe", "--dbprobe-report", "r.json",
        "--dbprobe-max-queries", "9", "--dbprobe-app-path", "vendor/site-packages",
    )  # fmt: skip
    result.assert_outcomes(passed=3, failed=2)
    out = result.stdout.str()
    assert f"dbprobe: {ORDER_CUSTOMER_STATEMENTS} statements ran, the budget is 9" in out
    assert "FAILED test_knobs.py::test_marker_threshold" in out
    assert "FAILED test_knobs.py::test_marker_fail_on" in out
    found = _by_test(_report(tester.path / "r.json"))
    (loop,) = found["test_helper_loop"]
    assert loop["location"].endswith(helper_at)
    assert "test_marker_threshold" not in found  # 25 lazy loads, threshold 30
    assert "test_marker_redundant_threshold" not in found  # redundant_threshold=50
    (verified,) = found["test_marker_verify_and_explain"]
    assert verified["evidence"]["verified"]["queries_after"] == 1
    assert verified["evidence"]["explain"]["relation"] == "customers"
    assert [f["rule"] for f in found["test_marker_fail_on"]] == ["n-plus-one"]

    # ini (the flag's name, dbprobe_app_path) wins over [tool.dbprobe]; a flag over ini.
    (tester.path / "pyproject.toml").write_text(
        "[tool.dbprobe]\nn_plus_one_threshold = 100\nmax_queries = 1\n"
    )
    (tester.path / "tox.ini").write_text(
        "[pytest]\ndbprobe = true\ndbprobe_app_path = vendor/site-packages\n"
        "dbprobe_n_plus_one_threshold = 3\ndbprobe_max_queries = 20\n"
    )
    result = tester.runpytest("test_knobs.py", "-k", "helper", "--dbprobe-report", "r.json")
    result.assert_outcomes(passed=1)
    (loop,) = _by_test(_report(tester.path / "r.json"))["test_helper_loop"]
    assert loop["location"].endswith(helper_at)
    result = tester.runpytest(
        "test_knobs.py", "-k", "helper", "--dbprobe-report", "r.json",
        "--dbprobe-n-plus-one-threshold", "9",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    assert "test_helper_loop" not in _by_test(_report(tester.path / "r.json"))
    # Without the app path the helper is library code: the loop is the test's line.
    (tester.path / "tox.ini").write_text("[pytest]\ndbprobe = true\n")
    (tester.path / "pyproject.toml").write_text("[tool.dbprobe]\n")
    result = tester.runpytest("test_knobs.py", "-k", "helper", "--dbprobe-report", "r.json")
    result.assert_outcomes(passed=1)
    (loop,) = _by_test(_report(tester.path / "r.json"))["test_helper_loop"]
    assert loop["location"].endswith(call_at)


SQLITE_TESTS = """
import pytest
from sqlalchemy import ForeignKey, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

class Base(DeclarativeBase):
    pass

class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]

class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship()

@pytest.fixture
def session(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'books.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Author(id=i, name=f"a{i}") for i in range(1, 6)])
        s.add_all([Book(id=i, author_id=i) for i in range(1, 6)])
        s.commit()
    with Session(engine) as s:
        yield s
    engine.dispose()

def test_books_authors(session):
    books = session.scalars(select(Book).order_by(Book.id)).all()
    assert len({book.author.name for book in books}) == 5  # loop-line
"""


def test_plugin_on_sqlite(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_sqlite=SQLITE_TESTS)
    result = tester.runpytest(
        "test_sqlite.py", "--dbprobe", "--dbprobe-fail-on", "n-plus-one",
        "--dbprobe-explain", "--dbprobe-report", "r.json",
    )  # fmt: skip
    result.assert_outcomes(failed=1)
    document = _report(tester.path / "r.json")
    (finding,) = _by_test(document)["test_books_authors"]
    assert finding["rule"] == "n-plus-one"
    assert finding["location"].endswith(
        f"test_sqlite.py:{_line_of(SQLITE_TESTS.lstrip(), 'loop-line')}"
    )
    assert "joinedload(Book.author)" in finding["recommendation"]
    assert "explain" not in finding["evidence"] or "error" in finding["evidence"]["explain"]
    stats = document["metrics"]["capture"]["tests"]["test_sqlite.py::test_books_authors"]
    assert stats["statements"] == 6


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
