"""The shop fixture app really is what its manifest says, on a real PostgreSQL.

Ground truth for every dbprobe test that uses the shop: the seed is deterministic and
sized as documented, every marker points at the line that emits the SQL, every flow
runs (sync over psycopg, async over asyncpg), the planted N+1s repeat their statement
exactly ``min_count`` times while their clean twins stay constant, and the schema
problems exist in the catalog and in the statistics after the demo workload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import greenlet
import pytest
from sqlalchemy import Connection, Engine, NullPool, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from fixtures.shop import workload
from fixtures.shop.app import leaks
from fixtures.shop.manifest import (
    MANIFEST_PATH,
    RULES,
    CleanCase,
    ManifestError,
    Problem,
    load_manifest,
    marker_pattern,
)
from fixtures.shop.schema import INDEXES
from fixtures.shop.seed import SIZES, TABLES, build, seed_statements
from probes.shop import SCENARIOS

MANIFEST = load_manifest()
REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "fixtures" / "shop" / "app"

CODE_ENTRIES: list[Problem | CleanCase] = [e for e in MANIFEST if e.kind == "code"]
SYNC_FLOWS = [e for e in CODE_ENTRIES if e.argument == "session"]
ASYNC_FLOWS = [e for e in CODE_ENTRIES if e.argument == "async_session"]
N_PLUS_ONE = MANIFEST.problems_for("n-plus-one")
REDUNDANT = MANIFEST.problems_for("redundant-query")


def _ids(entries: list[Any] | tuple[Any, ...]) -> list[str]:
    return [e.id for e in entries]


# -- statement capture: a plain before_cursor_execute listener -------------------------


@dataclasses.dataclass(frozen=True)
class Executed:
    statement: str
    parameters: str
    """``repr`` of the parameters (hashable)."""
    site: str | None
    """``"orders.py:23"``: the innermost frame in fixtures/shop/app, if any."""


def _app_site(frame: FrameType | None) -> str | None:
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(str(APP_DIR)):
            return f"{Path(filename).name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _call_site() -> str | None:
    """The application line that caused the statement.

    Async flows run SQLAlchemy in a child greenlet whose frames do not link back to the
    coroutine; the coroutine's frame is the parent greenlet's ``gr_frame``.
    """
    site = _app_site(sys._getframe(2))
    current: greenlet.greenlet | None = greenlet.getcurrent()
    while site is None and current is not None:
        current = current.parent
        if current is not None:
            site = _app_site(current.gr_frame)
    return site


@contextmanager
def recording(engine: Engine) -> Iterator[list[Executed]]:
    """Record every statement the engine sends (for async engines pass ``sync_engine``)."""
    log: list[Executed] = []

    def before_cursor_execute(
        conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        log.append(Executed(statement, repr(parameters), _call_site()))

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield log
    finally:
        event.remove(engine, "before_cursor_execute", before_cursor_execute)


def _selects(log: list[Executed]) -> list[Executed]:
    return [e for e in log if e.statement.lstrip().upper().startswith("SELECT")]


def _most_repeated(log: list[Executed]) -> tuple[str, int]:
    statement, count = Counter(e.statement for e in _selects(log)).most_common(1)[0]
    return statement, count


def _marker_site(entry: Problem | CleanCase) -> str:
    path, _, line = entry.resolve_location().rpartition(":")
    return f"{Path(path).name}:{line}"


# -- databases ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_readonly(pg: Any, shop_template: str) -> Iterator[str]:
    """One clone of the seeded shop shared by tests that leave the data as they found it
    (flows roll back)."""
    name = pg.create_database(template=shop_template)
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="module")
def ro_engine(pg: Any, shop_readonly: str) -> Iterator[Engine]:
    engine = create_engine(pg.url(shop_readonly))
    yield engine
    engine.dispose()


@pytest.fixture
def admin(pg: Any) -> Iterator[Engine]:
    """Connections for catalog queries, never pooled (they must not linger)."""
    engine = create_engine(pg.url("postgres"), poolclass=NullPool)
    yield engine
    engine.dispose()


def _run_sync_flow(engine: Engine, entry: Problem | CleanCase) -> list[Executed]:
    with Session(engine) as session, recording(engine) as log:
        entry.call(session)
        session.rollback()
    return log


def _run_async_flow(url: str, entry: Problem | CleanCase) -> list[Executed]:
    async def run() -> list[Executed]:
        engine = create_async_engine(url)
        try:
            with recording(engine.sync_engine) as log:
                async with AsyncSession(engine) as session:
                    await entry.call(session)
                    await session.rollback()
            return log
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _checksums(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {
            table: conn.exec_driver_sql(
                f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} AS t"
            ).scalar_one()
            for table in TABLES
        }


def _wait_for_no_sessions(conn: Connection, database: str, timeout: float = 10.0) -> None:
    """Backends flush their statistics when they exit; wait until they have."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        others = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).scalar_one()
        if others == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"sessions on {database} did not end within {timeout} s")


# -- the manifest ------------------------------------------------------------------------


def test_manifest_covers_every_rule_and_pairs_twins() -> None:
    raw = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    assert raw["app"] == "shop"
    assert raw["version"] == 1
    required = {
        "id", "rule", "kind", "severity", "description", "table", "columns", "relationship",
        "function", "marker", "async", "expected_fix", "min_count",
    }  # fmt: skip
    for problem in raw["problems"]:
        assert required <= set(problem), problem["id"]
    assert {p.rule for p in MANIFEST.problems} == RULES
    assert len(MANIFEST.problems_for("fk-missing-index")) >= 2
    assert any(p.is_async for p in N_PLUS_ONE)
    relationships = {p.relationship for p in N_PLUS_ONE}
    assert {"Order.customer", "Customer.orders", "Product.tags", "OrderItem.product"} <= (
        relationships
    )
    for problem in MANIFEST.problems:
        if problem.kind == "code" and problem.rule != "unindexed-lookup":
            twin = MANIFEST.twin(problem.id)
            assert twin is not None, f"{problem.id} has no clean twin"
            assert twin.argument == problem.argument
            assert twin.is_async == problem.is_async
        if problem.rule in ("n-plus-one", "redundant-query"):
            assert problem.min_count is not None and problem.min_count >= 2
    assert MANIFEST.twin("unindexed-stock-reference") is not None


def test_indexes_named_in_the_manifest_exist_in_the_schema() -> None:
    names = {index.name for index in INDEXES}
    for problem in MANIFEST.problems_for("duplicate-index") + MANIFEST.problems_for("unused-index"):
        assert problem.index in names
        spec = next(i for i in INDEXES if i.name == problem.index)
        assert not spec.unique
    for problem in MANIFEST.problems_for("fk-missing-index"):
        assert not any(
            i.table == problem.table and i.columns[: len(problem.columns)] == problem.columns
            for i in INDEXES
        )


@pytest.mark.parametrize("entry", CODE_ENTRIES, ids=_ids(CODE_ENTRIES))
def test_marker_resolves_to_exactly_one_line_inside_its_function(
    entry: Problem | CleanCase,
) -> None:
    location = entry.resolve_location()
    path, _, line_text = location.rpartition(":")
    assert path.startswith("fixtures/shop/app/")
    line = int(line_text)
    source = (REPO / path).read_text(encoding="utf-8").splitlines()
    assert entry.marker is not None
    assert marker_pattern(entry.marker).search(source[line - 1])
    lines, first = inspect.getsourcelines(entry.load())
    assert first <= line < first + len(lines), f"{location} is outside {entry.function}"
    # Exactly one occurrence in the whole fixture tree and the probes.
    pattern = marker_pattern(entry.marker)
    hits = [
        f"{file}:{number}"
        for tree in (REPO / "fixtures", REPO / "probes")
        for file in sorted(tree.rglob("*.py"))
        for number, text_line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(text_line)
    ]
    assert len(hits) == 1, hits


def test_every_marker_in_the_app_is_in_the_manifest() -> None:
    known = {entry.marker for entry in CODE_ENTRIES}
    comment = re.compile(r"#\s*(plant|clean):\s*([a-z0-9][a-z0-9-]*)\s*$")
    found = {
        f"{match[1]}:{match[2]}"
        for file in APP_DIR.rglob("*.py")
        for line in file.read_text(encoding="utf-8").splitlines()
        if (match := comment.search(line))
    }
    assert found == known


def test_a_missing_marker_is_an_error() -> None:
    problem = MANIFEST.problem("n1-order-customer")
    ghost = dataclasses.replace(problem, id="ghost", marker="plant:ghost")
    with pytest.raises(ManifestError, match="occurs 0 times"):
        ghost.resolve_location()
    # A prefix of an existing id is not a match either.
    prefix = dataclasses.replace(problem, marker="plant:n1-order")
    with pytest.raises(ManifestError):
        prefix.resolve_location()


def test_sizes_are_as_documented() -> None:
    small, large = SIZES["small"], SIZES["large"]
    assert set(small) == set(large) == set(TABLES)
    assert small["stock_movements"] >= 10_000
    assert sum(small.values()) - small["stock_movements"] < 20_000
    assert max(large.values()) >= 500_000
    assert large["order_items"] >= 500_000
    with pytest.raises(ValueError, match="unknown seed size"):
        seed_statements("medium")


# -- the seed ----------------------------------------------------------------------------


def test_small_seed_row_counts_match_sizes(ro_engine: Engine) -> None:
    with ro_engine.connect() as conn:
        counts = {
            table: conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
            for table in TABLES
        }
    assert counts == dict(SIZES["small"])


def test_seed_is_deterministic(pg: Any, ro_engine: Engine) -> None:
    """A second build with the same seed is identical, table by table; another seed is not."""
    reference = _checksums(ro_engine)
    rebuilt: dict[int, dict[str, str]] = {}
    for seed in (42, 7):
        name = pg.create_database()
        engine = create_engine(pg.url(name))
        try:
            with engine.begin() as conn:
                build(conn, "small", seed=seed)
            rebuilt[seed] = _checksums(engine)
        finally:
            engine.dispose()
            pg.drop_database(name)
    assert rebuilt[42] == reference
    differing = {table for table in TABLES if rebuilt[7][table] != reference[table]}
    assert {"customers", "orders", "order_items", "products", "stock_movements"} <= differing


def test_identity_sequences_continue_after_the_seed(ro_engine: Engine) -> None:
    with ro_engine.connect() as conn:
        for table in TABLES:
            if table == "product_tags":
                continue
            sequence = conn.exec_driver_sql(
                f"SELECT pg_get_serial_sequence('{table}', 'id')"
            ).scalar_one()
            last = conn.exec_driver_sql(f"SELECT last_value FROM {sequence}").scalar_one()
            assert last == SIZES["small"][table], table


@pytest.mark.slow
def test_large_seed(pg: Any) -> None:
    name = pg.create_database()
    engine = create_engine(pg.url(name))
    try:
        with engine.begin() as conn:
            build(conn, "large")
        with engine.connect() as conn:
            counts = {
                table: conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
                for table in TABLES
            }
            estimated = conn.exec_driver_sql(
                "SELECT reltuples FROM pg_class WHERE oid = 'order_items'::regclass"
            ).scalar_one()
        assert counts == dict(SIZES["large"])
        assert counts["order_items"] >= 500_000
        assert estimated >= 400_000  # ANALYZE ran
    finally:
        engine.dispose()
        pg.drop_database(name)


# -- every flow runs; plants plant, twins do not -----------------------------------------


def _check_flow(entry: Problem | CleanCase, log: list[Executed]) -> None:
    assert log, f"{entry.id} ran no SQL"
    if isinstance(entry, Problem) and entry.rule == "n-plus-one":
        statement, count = _most_repeated(log)
        assert count == entry.min_count, statement
        assert len(log) >= count
        sites = {e.site for e in log if e.statement == statement}
        assert sites == {_marker_site(entry)}, "the marker is not where the N+1 is emitted"
    elif isinstance(entry, Problem) and entry.rule == "redundant-query":
        pairs = Counter((e.statement, e.parameters) for e in _selects(log))
        (statement, _), count = pairs.most_common(1)[0]
        assert count == entry.min_count
        last = [e for e in log if e.statement == statement][-1]
        assert last.site == _marker_site(entry)
    elif isinstance(entry, Problem) and entry.rule == "unindexed-lookup":
        assert entry.table is not None
        lookups = [e for e in log if f"FROM {entry.table}" in e.statement]
        assert len(lookups) == 1
        assert lookups[0].site == _marker_site(entry)
    elif isinstance(entry, CleanCase):
        assert entry.max_queries is not None
        assert len(log) <= entry.max_queries, [e.statement for e in log]
        if "n-plus-one" in entry.must_not_trigger:
            repeated = Counter(e.statement for e in _selects(log))
            assert max(repeated.values()) == 1, repeated.most_common(1)
        if "redundant-query" in entry.must_not_trigger:
            pairs = Counter((e.statement, e.parameters) for e in log)
            assert max(pairs.values()) == 1
        sites = {e.site for e in log}
        if entry.id == "identity-map-get":
            # The point of this case: the marked Session.get emits nothing.
            assert _marker_site(entry) not in sites
        else:
            assert _marker_site(entry) in sites, "the clean marker is not on a line running SQL"


@pytest.mark.parametrize("entry", SYNC_FLOWS, ids=_ids(SYNC_FLOWS))
def test_sync_flow(ro_engine: Engine, entry: Problem | CleanCase) -> None:
    _check_flow(entry, _run_sync_flow(ro_engine, entry))


@pytest.mark.parametrize("entry", ASYNC_FLOWS, ids=_ids(ASYNC_FLOWS))
def test_async_flow_over_asyncpg(pg: Any, shop_readonly: str, entry: Problem | CleanCase) -> None:
    _check_flow(entry, _run_async_flow(pg.async_url(shop_readonly), entry))


@pytest.mark.parametrize("problem", N_PLUS_ONE, ids=_ids(N_PLUS_ONE))
def test_n_plus_one_plant_repeats_while_its_twin_stays_constant(
    pg: Any, shop_readonly: str, ro_engine: Engine, problem: Problem
) -> None:
    twin = MANIFEST.twin(problem.id)
    assert twin is not None and twin.max_queries is not None and problem.min_count is not None
    if problem.is_async:
        url = pg.async_url(shop_readonly)
        planted, clean = _run_async_flow(url, problem), _run_async_flow(url, twin)
    else:
        planted, clean = _run_sync_flow(ro_engine, problem), _run_sync_flow(ro_engine, twin)
    assert len(planted) >= problem.min_count
    assert len(planted) >= len(clean) + problem.min_count - 1
    assert len(clean) <= twin.max_queries <= 3
    assert max(Counter(e.statement for e in clean).values()) == 1
    # Same rows either way.
    if not problem.is_async:
        with Session(ro_engine) as one, Session(ro_engine) as two:
            assert problem.call(one) == twin.call(two)


def test_workload_runs_every_flow(pg: Any, shop_readonly: str, ro_engine: Engine) -> None:
    with Session(ro_engine) as session:
        assert workload.run_all(session) == _ids(SYNC_FLOWS)
        clean_ids = _ids([e for e in SYNC_FLOWS if isinstance(e, CleanCase)])
        assert workload.run_clean(session) == clean_ids

    async def run_async() -> tuple[list[str], list[str]]:
        engine = create_async_engine(pg.async_url(shop_readonly))
        try:
            async with AsyncSession(engine) as session:
                return (
                    await workload.run_all_async(session),
                    await workload.run_clean_async(session),
                )
        finally:
            await engine.dispose()

    every, clean = asyncio.run(run_async())
    assert every == _ids(ASYNC_FLOWS)
    assert clean == _ids([e for e in ASYNC_FLOWS if isinstance(e, CleanCase)])


def test_run_all_plants_fresh_for_each_flow(ro_engine: Engine) -> None:
    """Flows do not hide each other's queries behind a shared identity map."""
    with Session(ro_engine) as session, recording(ro_engine) as log:
        workload.run_all(session)
    counts = Counter(e.site for e in log)
    for problem in N_PLUS_ONE:
        if not problem.is_async:
            assert problem.min_count is not None
            assert counts[_marker_site(problem)] == problem.min_count, problem.id


# -- leaks -------------------------------------------------------------------------------


def _idle_in_transaction(admin: Engine, database: str, *, expect: int) -> int:
    deadline = time.monotonic() + 5
    while True:
        with admin.connect() as conn:
            count = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = :db AND state = 'idle in transaction'"
                ),
                {"db": database},
            ).scalar_one()
        if count == expect or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.02)


def test_leaked_connection_stays_checked_out(pg: Any, shop_readonly: str) -> None:
    engine = create_engine(pg.url(shop_readonly), pool_size=3)
    problem = MANIFEST.problem("leak-unreturned-connection")
    twin = MANIFEST.twin(problem.id)
    assert twin is not None
    try:
        problem.call(engine)
        gc.collect()
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        assert leaks.leaked_count() == 1
        twin.call(engine)
        gc.collect()
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    finally:
        assert leaks.release_leaks() == 1
        engine.dispose()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_idle_in_transaction_session(pg: Any, shop_readonly: str, admin: Engine) -> None:
    engine = create_engine(pg.url(shop_readonly))
    problem = MANIFEST.problem("leak-idle-in-transaction")
    twin = MANIFEST.twin(problem.id)
    assert twin is not None
    try:
        assert _idle_in_transaction(admin, shop_readonly, expect=0) == 0
        assert problem.call(engine) is not None
        gc.collect()
        assert _idle_in_transaction(admin, shop_readonly, expect=1) == 1
        assert twin.call(engine) == problem.call(engine)
        # The twin added nothing; the second leaky call added one more.
        assert _idle_in_transaction(admin, shop_readonly, expect=2) == 2
    finally:
        released = leaks.release_leaks()
        engine.dispose()
    assert released == 2
    assert _idle_in_transaction(admin, shop_readonly, expect=0) == 0


def test_run_leaks_leaves_both_leaks_until_released(pg: Any, shop_readonly: str) -> None:
    engine = create_engine(pg.url(shop_readonly))
    try:
        ran = workload.run_leaks(engine)
        assert ran == _ids([e for e in CODE_ENTRIES if e.argument == "engine"])
        assert engine.pool.checkedout() == 2  # type: ignore[attr-defined]
    finally:
        assert workload.release_leaks() == 2
        engine.dispose()


# -- the schema problems are in the catalog ---------------------------------------------

_INDEXES_SQL = """
    SELECT i.relname AS name,
           array(SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                 ORDER BY k.n) AS columns,
           x.indisunique AS is_unique,
           am.amname AS method,
           x.indpred IS NOT NULL AS partial,
           EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = x.indexrelid) AS backs_constraint
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_am am ON am.oid = i.relam
    WHERE x.indrelid = CAST(:table AS regclass)
"""


def _indexes(conn: Connection, table: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute(text(_INDEXES_SQL), {"table": table}).mappings()
    return {row["name"]: {**row, "columns": tuple(row["columns"])} for row in rows}


def _foreign_key(conn: Connection, name: str) -> tuple[str, tuple[str, ...]]:
    row = conn.execute(
        text(
            "SELECT c.conrelid::regclass::text AS table_name, array(SELECT a.attname "
            "  FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
            "  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
            "  ORDER BY k.n) AS columns "
            "FROM pg_constraint c WHERE c.conname = :name AND c.contype = 'f'"
        ),
        {"name": name},
    ).one()
    return row.table_name, tuple(row.columns)


def _leading(columns: tuple[str, ...], fk: tuple[str, ...]) -> bool:
    return set(columns[: len(fk)]) == set(fk)


FK_MISSING = MANIFEST.problems_for("fk-missing-index")
FK_INDEXED = [c for c in MANIFEST.clean if "fk-missing-index" in c.must_not_trigger]


@pytest.mark.parametrize("problem", FK_MISSING, ids=_ids(FK_MISSING))
def test_foreign_key_without_index(ro_engine: Engine, problem: Problem) -> None:
    assert problem.constraint is not None and problem.table is not None
    with ro_engine.connect() as conn:
        table, columns = _foreign_key(conn, problem.constraint)
        assert (table, columns) == (problem.table, problem.columns)
        leading = [
            name
            for name, index in _indexes(conn, table).items()
            if _leading(index["columns"], columns)
        ]
    assert leading == []


@pytest.mark.parametrize("case", FK_INDEXED, ids=_ids(FK_INDEXED))
def test_foreign_key_with_index(ro_engine: Engine, case: CleanCase) -> None:
    assert case.table is not None and case.index is not None
    with ro_engine.connect() as conn:
        fks = (
            conn.execute(
                text(
                    "SELECT conname FROM pg_constraint "
                    "WHERE conrelid = CAST(:t AS regclass) AND contype = 'f'"
                ),
                {"t": case.table},
            )
            .scalars()
            .all()
        )
        columns = {_foreign_key(conn, name)[1] for name in fks}
        index = _indexes(conn, case.table)[case.index]
    assert case.columns in columns
    assert _leading(index["columns"], case.columns)


def test_duplicate_index_is_a_prefix(ro_engine: Engine) -> None:
    for problem in MANIFEST.problems_for("duplicate-index"):
        assert problem.table is not None and problem.index and problem.covered_by
        with ro_engine.connect() as conn:
            indexes = _indexes(conn, problem.table)
        redundant, wider = indexes[problem.index], indexes[problem.covered_by]
        assert redundant["columns"] == problem.columns
        assert wider["columns"][: len(redundant["columns"])] == redundant["columns"]
        assert len(wider["columns"]) > len(redundant["columns"])
        assert redundant["method"] == wider["method"] == "btree"
        assert not redundant["partial"] and not wider["partial"]
        assert not redundant["is_unique"] and not redundant["backs_constraint"]


def _plan(conn: Connection, executed: Executed, parameters: Any) -> dict[str, Any]:
    raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + executed.statement, parameters)
    plan: dict[str, Any] = raw.scalar_one()[0]["Plan"]
    return plan


def _scans(plan: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    found = [(plan["Node Type"], plan.get("Relation Name"), plan.get("Index Name"))]
    for child in plan.get("Plans", ()):
        found.extend(_scans(child))
    return found


def test_unindexed_lookup_scans_a_large_table(ro_engine: Engine) -> None:
    problem = MANIFEST.problems_for("unindexed-lookup")[0]
    twin = MANIFEST.twin(problem.id)
    assert twin is not None and problem.table is not None

    def captured(entry: Problem | CleanCase) -> tuple[Executed, Any]:
        params: list[Any] = []

        def keep(conn: Connection, cursor: Any, stmt: str, p: Any, ctx: Any, many: bool) -> None:
            params.append(p)

        event.listen(ro_engine, "before_cursor_execute", keep)
        try:
            log = _run_sync_flow(ro_engine, entry)
        finally:
            event.remove(ro_engine, "before_cursor_execute", keep)
        return log[-1], params[-1]

    with ro_engine.connect() as conn:
        indexes = _indexes(conn, problem.table)
        assert not any(set(problem.columns) & set(i["columns"]) for i in indexes.values())
        rows = conn.exec_driver_sql(
            f"SELECT reltuples FROM pg_class WHERE oid = '{problem.table}'::regclass"
        ).scalar_one()
        assert rows >= 10_000
        planted = _scans(_plan(conn, *captured(problem)))
        clean = _scans(_plan(conn, *captured(twin)))
    assert ("Seq Scan", problem.table, None) in planted
    assert not any(node.startswith("Seq Scan") for node, _, _ in clean)
    assert any(index == "uq_products_sku" for _, _, index in clean)


def test_statistics_after_the_demo_workload(pg: Any, shop_template: str, admin: Engine) -> None:
    """What the stats-based rules see after every flow and scenario ran once on a fresh
    clone: the planted unused index was never scanned, every other non-unique index was
    (tolerated ones aside), and the large table was read by sequential scans only."""
    name = pg.create_database(template=shop_template)
    try:
        engine = create_engine(pg.url(name))
        with Session(engine) as session:
            workload.run_all(session)
            rng = random.Random(5)
            for scenario in SCENARIOS.values():
                scenario.fn(session, rng)
        workload.run_leaks(engine)
        workload.release_leaks()
        engine.dispose()

        async def run_async() -> None:
            async_engine = create_async_engine(pg.async_url(name))
            async with AsyncSession(async_engine) as session:
                await workload.run_all_async(session)
            await async_engine.dispose()

        asyncio.run(run_async())
        with admin.connect() as conn:
            _wait_for_no_sessions(conn, name)
        stats_engine = create_engine(pg.url(name), poolclass=NullPool)
        with stats_engine.connect() as conn:
            index_scans = {
                row.indexrelname: row.idx_scan
                for row in conn.exec_driver_sql(
                    "SELECT s.indexrelname, s.idx_scan FROM pg_stat_user_indexes s "
                    "JOIN pg_index x ON x.indexrelid = s.indexrelid WHERE NOT x.indisunique"
                )
            }
            tables = {
                row.relname: row
                for row in conn.exec_driver_sql(
                    "SELECT s.relname, s.seq_scan, coalesce(s.idx_scan, 0) AS idx_scan, "
                    "c.reltuples FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
                )
            }
        stats_engine.dispose()
    finally:
        pg.drop_database(name)

    unused = {p.index for p in MANIFEST.problems_for("unused-index")}
    tolerated = {t.index for t in MANIFEST.tolerated if t.rule == "unused-index"}
    assert set(index_scans) == {i.name for i in INDEXES if not i.unique}
    for index, scans in index_scans.items():
        if index in unused:
            assert scans == 0, index
        elif index not in tolerated:
            assert scans > 0, f"{index} was never scanned: it would be reported as unused"

    heavy = {p.table for p in MANIFEST.problems_for("seq-scan-heavy-table")}
    large = {name for name, row in tables.items() if row.reltuples >= 10_000}
    assert large == heavy
    for table in heavy:
        assert tables[table].seq_scan >= 1
        assert tables[table].idx_scan == 0


# -- the probe scenarios -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_is_clean_and_deterministic(pg: Any, shop_db: str, name: str) -> None:
    scenario = SCENARIOS[name]
    engine = create_engine(pg.url(shop_db))
    try:
        results = []
        for _attempt in range(2):
            rng = random.Random(2024)
            per_call: list[list[Executed]] = []
            outputs = []
            for _ in range(8):
                with Session(engine) as session, recording(engine) as log:
                    outputs.append(scenario.fn(session, rng))
                per_call.append(log)
            results.append(outputs)
            for log in per_call:
                assert len(log) <= 8, [e.statement for e in log]
                repeated = Counter(e.statement for e in _selects(log))
                assert max(repeated.values()) == 1, repeated.most_common(1)
        if scenario.writes:
            with engine.connect() as conn:
                orders = conn.exec_driver_sql("SELECT count(*) FROM orders").scalar_one()
            assert orders == SIZES["small"]["orders"] + 16
            assert all(isinstance(order_id, int) for order_id in results[0])
        else:
            assert results[0] == results[1]
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_async_scenario_over_asyncpg(pg: Any, shop_db: str, name: str) -> None:
    scenario = SCENARIOS[name]
    assert scenario.async_fn is not None
    async_fn: Callable[..., Any] = scenario.async_fn

    async def run() -> tuple[list[Any], list[list[Executed]]]:
        engine = create_async_engine(pg.async_url(shop_db))
        outputs, logs = [], []
        try:
            async with AsyncSession(engine) as session:
                for _ in range(3):
                    with recording(engine.sync_engine) as log:
                        outputs.append(await async_fn(session, random.Random(9)))
                    logs.append(log)
            return outputs, logs
        finally:
            await engine.dispose()

    outputs, logs = asyncio.run(run())
    assert len(outputs) == 3
    for log in logs:
        assert log
        repeated = Counter(e.statement for e in _selects(log))
        assert max(repeated.values()) == 1, repeated.most_common(1)
    if not scenario.writes:
        assert outputs[0] == outputs[1] == outputs[2]
        sync_engine = create_engine(pg.url(shop_db))
        try:
            with Session(sync_engine) as session:
                assert scenario.fn(session, random.Random(9)) == outputs[0]
        finally:
            sync_engine.dispose()
