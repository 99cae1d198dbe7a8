"""redundant-query on real PostgreSQL: volatile reads, writes hidden in DO / CALL /
functions, polling loops and per-connection transaction ends."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text

import dbprobe
from dbprobe.analysis.fingerprint import normalize, statement_effect
from dbprobe.config import DbprobeConfig

READ = text("SELECT name FROM tags WHERE id = :id")


@pytest.fixture
def conn(shop_engine: Engine) -> Iterator[Connection]:
    with shop_engine.connect() as c:
        yield c
        c.rollback()


def _redundant(log: dbprobe.QueryLog, config: DbprobeConfig) -> list[str]:
    return [f.location or "" for f in log.findings(config) if f.rule == "redundant-query"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT nextval('orders_id_seq')",
        "SELECT random()",
        "SELECT clock_timestamp()",
        "SELECT gen_random_uuid()",
        "SELECT name FROM tags WHERE id = 1 FOR UPDATE",
        "SELECT id FROM tags ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        "SELECT pg_try_advisory_xact_lock(42)",
    ],
)
def test_volatile_reads_are_not_redundant(
    sql: str, conn: Connection, config: DbprobeConfig
) -> None:
    with dbprobe.capture() as log:
        values = [conn.execute(text(sql)).scalar() for _ in range(3)]
    assert len(log) == 3
    assert _redundant(log, config) == []
    if "nextval" in sql:
        assert len(set(values)) == 3  # three different keys: reusing one would collide


def test_do_block_between_reads_is_a_write(conn: Connection, config: DbprobeConfig) -> None:
    with dbprobe.capture() as log:
        before = conn.execute(READ, {"id": 1}).scalar_one()
        conn.execute(text("DO $$ BEGIN UPDATE tags SET name = name || '!' WHERE id = 1; END $$"))
        after = conn.execute(READ, {"id": 1}).scalar_one()
    assert after == before + "!"  # the second read returned something else
    assert _redundant(log, config) == []


def test_function_that_writes_between_reads_is_a_write(
    conn: Connection, config: DbprobeConfig
) -> None:
    conn.execute(
        text(
            "CREATE FUNCTION pg_temp.bump() RETURNS int LANGUAGE sql AS "
            "$$ UPDATE tags SET name = name || '+' WHERE id = 2 RETURNING 1 $$"
        )
    )
    with dbprobe.capture() as log:
        before = conn.execute(READ, {"id": 2}).scalar_one()
        conn.execute(text("SELECT pg_temp.bump()")).scalar_one()
        after = conn.execute(READ, {"id": 2}).scalar_one()
    assert after == before + "+"
    assert _redundant(log, config) == []


def test_call_is_a_write(conn: Connection, config: DbprobeConfig) -> None:
    conn.execute(
        text(
            "CREATE PROCEDURE pg_temp.rename() LANGUAGE sql AS "
            "$$ UPDATE tags SET name = name || '*' WHERE id = 3 $$"
        )
    )
    with dbprobe.capture() as log:
        conn.execute(READ, {"id": 3}).scalar_one()
        conn.execute(text("CALL pg_temp.rename()"))
        conn.execute(READ, {"id": 3}).scalar_one()
    assert _redundant(log, config) == []


def test_polling_loop_is_not_redundant(shop_engine: Engine, config: DbprobeConfig) -> None:
    # READ COMMITTED: each poll may see another transaction's commit.
    with shop_engine.connect() as poller, shop_engine.connect() as other:
        with dbprobe.capture() as log:
            seen = []
            for attempt in range(4):
                seen.append(poller.execute(READ, {"id": 4}).scalar_one())  # poll
                poller.rollback()
                time.sleep(0.02)
                if attempt == 2:
                    other.execute(text("UPDATE tags SET name = name || '#' WHERE id = 4"))
                    other.commit()
        other.execute(text("UPDATE tags SET name = rtrim(name, '#') WHERE id = 4"))
        other.commit()
    assert seen[-1] != seen[0]
    assert _redundant(log, config) == []


def test_polling_without_transaction_end_and_with_sleep_is_not_redundant(
    conn: Connection, config: DbprobeConfig
) -> None:
    with dbprobe.capture() as log:
        for _ in range(3):
            conn.execute(READ, {"id": 4}).scalar_one()
            time.sleep(0.02)
    assert _redundant(log, config) == []


def test_a_commit_on_another_connection_does_not_hide_a_repeat(
    shop_engine: Engine, config: DbprobeConfig
) -> None:
    with shop_engine.connect() as a, shop_engine.connect() as b, dbprobe.capture() as log:
        a.execute(READ, {"id": 5}).scalar_one()
        b.execute(text("SELECT 1"))
        b.commit()  # ends b's transaction only
        a.execute(READ, {"id": 5}).scalar_one()
        a.commit()
        a.execute(READ, {"id": 5}).scalar_one()  # after a's own commit: a new snapshot
    (finding,) = [f for f in log.findings(config) if f.rule == "redundant-query"]
    assert finding.count == 2


def test_plain_repeats_are_still_redundant(conn: Connection, config: DbprobeConfig) -> None:
    with dbprobe.capture() as log:
        for _ in range(3):
            conn.execute(READ, {"id": 6}).scalar_one()
        conn.execute(text("SELECT count(*), lower(min(name)) FROM tags")).scalar_one()
        conn.execute(text("SELECT count(*), lower(min(name)) FROM tags")).scalar_one()
    assert sorted(f.count for f in log.findings(config) if f.rule == "redundant-query") == [2, 3]


@pytest.mark.parametrize(
    ("sql", "effect"),
    [
        ("SELECT a FROM t WHERE b = 1", "read"),
        ("SELECT CAST(a AS NUMERIC(12, 2)), count(*) OVER (PARTITION BY b) FROM t", "read"),
        ("WITH x AS (SELECT 1) SELECT * FROM x WHERE EXISTS (SELECT 1)", "read"),
        ("SELECT random()", "volatile"),
        ("SELECT * FROM pg_stat_activity", "volatile"),
        ("SELECT * FROM jobs WHERE id = 1 FOR NO KEY UPDATE NOWAIT", "volatile"),
        ("SELECT nextval('s')", "write"),
        ("SELECT setval('s', 10)", "write"),
        ("SELECT pg_advisory_lock(1)", "write"),
        ("SELECT app.bump(1)", "write"),
        ('SELECT "Bump"(1)', "write"),
        ("SELECT bump(1)", "write"),
        ("DO $$ BEGIN PERFORM 1; END $$", "write"),
        ("CALL p()", "write"),
        ("SET search_path TO app", "write"),
    ],
)
def test_statement_effect(sql: str, effect: str) -> None:
    assert statement_effect(normalize(sql)) == effect
