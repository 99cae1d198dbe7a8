"""Catalog checks on live databases built for each index edge case, on the session's
server (PostgreSQL 15) and the embedded PostgreSQL 18. Every statement dbprobe
recommends is run against the server, to prove it is valid SQL that does what the
finding says, and the database is audited again afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from catalog_support import Scratch, apply_fix, by_rule, drops, fix_statements

from dbprobe.pg import PostgresServer


@pytest.fixture
def scratch(audit_server: PostgresServer) -> Iterator[Scratch]:
    name = audit_server.create_database()
    yield Scratch(audit_server, name)
    audit_server.drop_database(name)


def test_unique_nulls_not_distinct_is_not_a_duplicate_of_a_plain_unique(scratch: Scratch) -> None:
    scratch.sql(
        """
        CREATE TABLE nn2 (id int PRIMARY KEY, email text);
        CREATE UNIQUE INDEX nn2_email ON nn2 (email);
        CREATE UNIQUE INDEX nn2_email_nnd ON nn2 (email) NULLS NOT DISTINCT;
        CREATE TABLE nn3 (id int PRIMARY KEY, email text);
        CREATE UNIQUE INDEX nn3_a ON nn3 (email) NULLS NOT DISTINCT;
        CREATE UNIQUE INDEX nn3_b ON nn3 (email) NULLS NOT DISTINCT;
        """
    )
    snap = scratch.snapshot()
    idx = {i.name: i for i in snap.indexes}
    assert idx["nn2_email_nnd"].nulls_not_distinct and not idx["nn2_email"].nulls_not_distinct
    assert idx["nn2_email_nnd"].columns_text == "(email) NULLS NOT DISTINCT"
    findings = scratch.findings()
    dropped = drops(findings)
    assert "nn2_email_nnd" not in dropped and "nn2_email" not in dropped
    # two NULLS NOT DISTINCT twins: one goes, and NULLs stay unique after the drop
    (dup,) = [f for f in by_rule(findings, "duplicate-index").values() if f.table == "nn3"]
    apply_fix(scratch, dup)
    scratch.sql("INSERT INTO nn3 VALUES (1, NULL)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        scratch.sql("INSERT INTO nn3 VALUES (2, NULL)")


def test_unique_index_a_foreign_key_depends_on_is_kept(scratch: Scratch) -> None:
    scratch.sql(
        """
        CREATE TABLE p4 (id int PRIMARY KEY, code text NOT NULL);
        CREATE UNIQUE INDEX p4_old ON p4 (code);
        CREATE TABLE c7 (id int PRIMARY KEY, code text REFERENCES p4 (code));
        CREATE INDEX ix_c7_code ON c7 (code);
        CREATE UNIQUE INDEX p4_new ON p4 (code);
        """
    )
    snap = scratch.snapshot()
    idx = {i.name: i for i in snap.indexes}
    assert idx["p4_old"].referenced_by == ("c7_code_fkey",)
    dups = by_rule(scratch.findings(), "duplicate-index")
    assert set(dups) == {"public.p4_new"}
    assert dups["public.p4_new"].evidence["covered_by"] == "p4_old"
    apply_fix(scratch, dups["public.p4_new"])
    fk = scratch.sql("SELECT count(*) FROM pg_constraint WHERE conname = 'c7_code_fkey'")
    assert fk == [(1,)]
    assert by_rule(scratch.findings(), "duplicate-index") == {}


def test_foreign_key_index_must_match_collation(scratch: Scratch) -> None:
    scratch.sql(
        """
        CREATE TABLE pt (code text PRIMARY KEY);
        CREATE TABLE c5 (id int PRIMARY KEY, code text REFERENCES pt (code));
        CREATE INDEX c5_code_posix ON c5 (code COLLATE "POSIX");
        CREATE TABLE c6 (id int PRIMARY KEY, code text REFERENCES pt (code));
        CREATE INDEX c6_code_pattern ON c6 (code text_pattern_ops);
        INSERT INTO pt SELECT 'k' || g FROM generate_series(1, 20000) g;
        INSERT INTO c5 SELECT g, 'k' || g FROM generate_series(1, 20000) g;
        INSERT INTO c6 SELECT g, 'k' || g FROM generate_series(1, 20000) g;
        ANALYZE;
        """
    )
    # what the planner does with the foreign key's equality on each table
    c5 = scratch.sql("EXPLAIN SELECT 1 FROM c5 WHERE code = 'k1'")
    c6 = scratch.sql("EXPLAIN SELECT 1 FROM c6 WHERE code = 'k1'")
    assert "Seq Scan" in c5[0][0] and "c6_code_pattern" in c6[0][0]
    fks = by_rule(scratch.findings(), "fk-missing-index")
    assert set(fks) == {"public.c5.c5_code_fkey"}  # the text_pattern_ops index serves c6
    assert "c5_code_posix" in fks["public.c5.c5_code_fkey"].message
    apply_fix(scratch, fks["public.c5.c5_code_fkey"])
    assert "Index" in scratch.sql("EXPLAIN SELECT 1 FROM c5 WHERE code = 'k1'")[0][0]
    assert by_rule(scratch.findings(), "fk-missing-index") == {}


def test_index_names_avoid_every_relation_of_the_schema(scratch: Scratch) -> None:
    scratch.sql(
        """
        CREATE TABLE skus (sku text PRIMARY KEY);
        CREATE TABLE items (id int PRIMARY KEY, sku text REFERENCES skus);
        CREATE SEQUENCE ix_items_sku;
        CREATE VIEW ix_items_sku_2 AS SELECT 1 AS one;
        """
    )
    (fk,) = by_rule(scratch.findings(), "fk-missing-index").values()
    assert fix_statements(fk) == ["CREATE INDEX CONCURRENTLY ix_items_sku_3 ON public.items (sku);"]
    apply_fix(scratch, fk)


PARTITIONED = """
CREATE TABLE pt (id int PRIMARY KEY);
INSERT INTO pt SELECT g FROM generate_series(1, 100) g;
CREATE TABLE ev (id int NOT NULL, pid int REFERENCES pt (id), k int) PARTITION BY RANGE (id);
CREATE TABLE ev1 PARTITION OF ev FOR VALUES FROM (0) TO (1000);
CREATE TABLE ev2 PARTITION OF ev FOR VALUES FROM (1000) TO (2000)
    PARTITION BY RANGE (id);
CREATE TABLE ev2a PARTITION OF ev2 FOR VALUES FROM (1000) TO (1500);
CREATE TABLE ev2b PARTITION OF ev2 FOR VALUES FROM (1500) TO (2000);
-- every partition has its own index on pid: the key is served
CREATE TABLE evs (id int NOT NULL, pid int REFERENCES pt (id)) PARTITION BY RANGE (id);
CREATE TABLE evs1 PARTITION OF evs FOR VALUES FROM (0) TO (1000);
CREATE TABLE evs2 PARTITION OF evs FOR VALUES FROM (1000) TO (2000);
CREATE INDEX evs1_pid ON evs1 (pid);
CREATE INDEX evs2_pid ON evs2 (pid, id);
CREATE TABLE pp (a int, b int) PARTITION BY RANGE (a);
CREATE TABLE pp1 PARTITION OF pp FOR VALUES FROM (0) TO (100);
CREATE TABLE pp2 PARTITION OF pp FOR VALUES FROM (100) TO (200);
CREATE INDEX pp_a ON pp (a);
CREATE INDEX pp_a_b ON pp (a, b);
CREATE TABLE pq (a int) PARTITION BY RANGE (a);
CREATE TABLE pq1 PARTITION OF pq FOR VALUES FROM (0) TO (10);
CREATE TABLE pq2 PARTITION OF pq FOR VALUES FROM (10) TO (20);
CREATE INDEX pq_a ON ONLY pq (a);
CREATE INDEX pq1_a ON pq1 (a);
ALTER INDEX pq_a ATTACH PARTITION pq1_a;
"""


def test_partitioned_tables_get_statements_that_run(scratch: Scratch) -> None:
    scratch.sql(PARTITIONED)
    findings = scratch.findings()

    # fk-missing-index on a partitioned table: ON ONLY, CONCURRENTLY per partition, ATTACH
    fks = by_rule(findings, "fk-missing-index")
    assert set(fks) == {"public.ev.ev_pid_fkey"}  # evs is served by its partitions' indexes
    fk = fks["public.ev.ev_pid_fkey"]
    statements = fix_statements(fk)
    assert statements[0] == "CREATE INDEX ix_ev_pid ON ONLY public.ev (pid);"
    assert not any("CONCURRENTLY" in s and " ON public.ev " in s for s in statements)
    assert any(s.startswith("CREATE INDEX CONCURRENTLY") and "public.ev2a" in s for s in statements)

    # duplicate-index on a partitioned index: DROP INDEX without CONCURRENTLY, lock stated
    dups = by_rule(findings, "duplicate-index")
    assert set(dups) == {"public.pp_a"}  # never the partitions' attached indexes
    assert fix_statements(dups["public.pp_a"]) == ["DROP INDEX public.pp_a;"]
    assert "ACCESS EXCLUSIVE" in dups["public.pp_a"].recommendation
    unused = by_rule(findings, "unused-index")
    assert not [k for k in unused if k.startswith("public.pp1_") or k.startswith("public.pp2_")]

    # invalid partitioned index: index the partitions that lack one and attach them
    invalid = by_rule(findings, "invalid-index")
    assert set(invalid) == {"public.pq_a"}
    assert "not attached" in invalid["public.pq_a"].message
    assert "CONCURRENTLY" not in invalid["public.pq_a"].message

    for finding in (fk, dups["public.pp_a"], invalid["public.pq_a"]):
        apply_fix(scratch, finding)
    valid = dict(scratch.sql("SELECT indexrelid::regclass::text, indisvalid FROM pg_index"))
    assert valid["ix_ev_pid"] is True and valid["pq_a"] is True
    assert "pp_a" not in valid
    after = scratch.findings()
    assert by_rule(after, "fk-missing-index") == {}
    assert by_rule(after, "invalid-index") == {}
    assert by_rule(after, "duplicate-index") == {}


def test_invalid_indexes_by_how_they_failed(scratch: Scratch) -> None:
    scratch.sql(
        """
        CREATE TABLE o (id int PRIMARY KEY, ext uuid);
        INSERT INTO o SELECT g, md5(g::text)::uuid FROM generate_series(1, 2000) g;
        CREATE INDEX o_ext ON o (ext);
        CREATE TABLE other (x int);
        CREATE TABLE dd (v int);
        INSERT INTO dd VALUES (1), (1);
        """
    )
    with scratch.connect() as admin:
        admin.execute("SET statement_timeout = '300ms'")
        # REINDEX CONCURRENTLY cancelled while it waits for a writer: leaves o_ext_ccnew
        with scratch.connect(autocommit=False) as writer:
            writer.execute("INSERT INTO o VALUES (0, NULL)")
            with pytest.raises(psycopg.errors.QueryCanceled):
                admin.execute("REINDEX INDEX CONCURRENTLY o_ext")
        # a unique build cancelled while it waits for an old snapshot: built and ready
        # (writes maintain it and check uniqueness), but INVALID
        with scratch.connect(autocommit=False) as reader:
            reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            reader.execute("SELECT 1 FROM other")
            with pytest.raises(psycopg.errors.QueryCanceled):
                admin.execute("CREATE UNIQUE INDEX CONCURRENTLY o_ext_key ON o (ext)")
    # a unique build that met duplicates: not even ready
    with pytest.raises(psycopg.errors.UniqueViolation):
        scratch.sql("CREATE UNIQUE INDEX CONCURRENTLY dd_v ON dd (v)")
    state = {r[0]: r[1:] for r in scratch.sql(
        "SELECT indexrelid::regclass::text, indisvalid, indisready FROM pg_index"
    )}  # fmt: skip
    assert state["o_ext_ccnew"] == (False, False)
    assert state["o_ext_key"] == (False, True) and state["dd_v"] == (False, False)

    invalid = by_rule(scratch.findings(), "invalid-index")
    assert set(invalid) == {"public.o_ext_ccnew", "public.o_ext_key", "public.dd_v"}
    ccnew = invalid["public.o_ext_ccnew"]
    assert "REINDEX" in ccnew.message and "o_ext" in ccnew.message
    assert fix_statements(ccnew) == ["DROP INDEX CONCURRENTLY public.o_ext_ccnew;"]
    assert "REINDEX INDEX CONCURRENTLY public.o_ext_ccnew" not in ccnew.recommendation
    assert "CREATE INDEX CONCURRENTLY o_ext " not in ccnew.recommendation
    ready = invalid["public.o_ext_key"]
    assert "writes still maintain it" in ready.message
    assert "does not enforce" not in ready.message
    dd = invalid["public.dd_v"]
    assert "writes do not maintain it" in dd.message and "uniqueness" in dd.message
    assert "duplicate" in dd.recommendation

    for finding in (ccnew, ready):
        apply_fix(scratch, finding)
    names = {r[0] for r in scratch.sql("SELECT relname FROM pg_class WHERE relkind = 'i'")}
    assert {"o_ext", "o_ext_key"} <= names and "o_ext_ccnew" not in names
    scratch.sql("DELETE FROM dd WHERE ctid = (SELECT max(ctid) FROM dd)")
    apply_fix(scratch, dd)
    assert by_rule(scratch.findings(), "invalid-index") == {}


def test_duplicate_and_unused_never_drop_both(scratch: Scratch) -> None:
    scratch.sql(
        """
        CREATE TABLE d (id int PRIMARY KEY, a int, b int);
        INSERT INTO d SELECT g, g % 1000, g FROM generate_series(1, 20000) g;
        CREATE INDEX d_a1 ON d (a);
        CREATE TABLE e (id int PRIMARY KEY, a int, b int);
        CREATE INDEX e_a ON e (a);
        CREATE INDEX e_ab ON e (a, b);
        ANALYZE;
        """
    )
    scratch.flush_stats(
        "SET enable_seqscan = off",
        *["SELECT * FROM d WHERE a = 7"] * 3,
        *["SELECT * FROM e WHERE a = 7 AND b = 7"] * 3,
    )
    # a wider index added later, never used since
    scratch.sql("CREATE INDEX d_ab ON d (a, b)")
    snap = scratch.snapshot()
    scans = {i.name: i.idx_scan for i in snap.indexes}
    assert scans["d_a1"] and not scans["d_ab"] and scans["e_ab"] and not scans["e_a"]
    findings = scratch.findings()
    dropped = drops(findings)
    assert len(dropped) == len(set(dropped))
    # d: the scanned prefix stays, the unscanned wider index is the one to drop
    assert "d_a1" not in dropped and "d_ab" in dropped
    assert "d_a1" in by_rule(findings, "unused-index")["public.d_ab"].message
    # e: the classic case, the unscanned prefix goes and the scanned wider index stays
    assert "e_a" in dropped and "e_ab" not in dropped
    for f in findings:
        if f.rule in ("duplicate-index", "unused-index"):
            apply_fix(scratch, f)
    left = {r[0] for r in scratch.sql("SELECT indexrelid::regclass::text FROM pg_index")}
    assert {"d_a1", "e_ab"} <= left


LOCKED = """
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, note text);
CREATE INDEX o_note ON orders (note) WHERE id > 0;
CREATE INDEX o_lower ON orders (lower(note));
CREATE TABLE customers (id int PRIMARY KEY);
CREATE TABLE invoices (id int PRIMARY KEY, customer_id int REFERENCES customers, note text);
INSERT INTO invoices SELECT g, NULL, 'n' || g FROM generate_series(1, 20000) g;
ANALYZE;
"""


@pytest.mark.parametrize("how", ["held", "queued"])
def test_a_locked_table_is_skipped_and_the_audit_goes_on(scratch: Scratch, how: str) -> None:
    from dbprobe.audit import AuditOptions, StatementAnalyzer, run_audit
    from dbprobe.connect import connect
    from dbprobe.report.schema import validate_report

    scratch.sql(LOCKED)
    holder = scratch.connect(autocommit=False)
    waiter: threading.Thread | None = None
    try:
        if how == "held":
            holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        else:
            # a migration's ALTER waiting in the lock queue behind a reader blocks
            # every later reader of the table too
            holder.execute("SELECT count(*) FROM orders")
            waiter = threading.Thread(
                target=scratch.sql, args=("ALTER TABLE orders ADD COLUMN extra int",)
            )
            waiter.start()
            wait_for_lock_queue(scratch)
        report = run_audit(scratch.target, AuditOptions(coldstart=False, lock_timeout_ms=200))
        validate_report(report.to_dict())
        skipped = [f for f in report.findings if f.rule == "check-skipped"]
        assert any(f.table == "orders" and "lock" in f.message for f in skipped), skipped
        fks = by_rule(report.findings, "fk-missing-index")
        assert set(fks) == {"public.invoices.invoices_customer_id_fkey"}
        assert not [f for f in report.findings if f.table == "orders" and f.rule != "check-skipped"]

        # the analyzer reads the catalog lazily, and survives the lock the same way
        with connect(scratch.target, application_name="dbprobe-test", read_only=True,
                     lock_timeout_ms=200) as conn:  # fmt: skip
            analyzer = StatementAnalyzer(conn)
            result = analyzer.analyze("SELECT * FROM invoices WHERE note = $1")
            assert result.error is None and result.findings
            snapshot = analyzer.snapshot
            locked = analyzer.analyze("SELECT * FROM orders WHERE note = $1")
            assert locked.error is not None and locked.error.kind == "timeout"
            # system catalogs are never in the snapshot: no re-read for them
            analyzer.analyze("SELECT * FROM pg_class WHERE relname = $1")
            assert analyzer.snapshot is snapshot
    finally:
        holder.rollback()
        holder.close()
        if waiter is not None:
            waiter.join(timeout=10)


def wait_for_lock_queue(scratch: Scratch) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = scratch.sql(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'orders'::regclass"
        )
        if rows[0][0]:
            return
        time.sleep(0.02)
    raise AssertionError("the ALTER never queued for its lock")


def test_indexes_that_only_look_redundant_are_kept(scratch: Scratch) -> None:
    """Unique beside a wider non-unique index, a UNIQUE constraint beside an identical
    unique index, an unscanned unique index, INCLUDE columns, and a foreign key whose
    column is only second in an index."""
    scratch.sql(
        """
        CREATE TABLE u (id int PRIMARY KEY, x int, y int, z int, w int, a int, b int, c int);
        INSERT INTO u SELECT g, g, g, g, g, g % 100, g, g FROM generate_series(1, 20000) g;
        CREATE UNIQUE INDEX u_x ON u (x);
        CREATE INDEX u_x_y ON u (x, y);
        ALTER TABLE u ADD CONSTRAINT u_z_key UNIQUE (z);
        CREATE UNIQUE INDEX u_z_again ON u (z);
        CREATE UNIQUE INDEX u_w ON u (w);
        CREATE INDEX u_a_incl_c ON u (a) INCLUDE (c);
        CREATE INDEX u_a_b ON u (a, b);
        CREATE TABLE fkp (id int PRIMARY KEY);
        CREATE TABLE fkc (id int PRIMARY KEY, other int, pid int REFERENCES fkp);
        CREATE INDEX fkc_other_pid ON fkc (other, pid);
        ANALYZE;
        """
    )
    findings = scratch.findings()
    dropped = drops(findings)
    # a unique index is not covered by a wider non-unique one (it enforces uniqueness)
    assert "u_x" not in dropped
    # the constraint's index stays; its plain twin is the one to drop
    assert "u_z_key" not in dropped and "u_z_again" in dropped
    assert "u_z_key" in by_rule(findings, "duplicate-index")["public.u_z_again"].message
    # unused-index ran (the plain, never scanned u_x_y) but left unique indexes alone
    unused = by_rule(findings, "unused-index")
    assert "public.u_x_y" in unused or "u_x_y" in dropped
    assert not {"public.u_x", "public.u_w", "public.u_z_key"} & set(unused)
    # INCLUDE (c) is not covered by (a, b): index-only scans need c
    duplicate_of = {
        f.evidence.get("index"): f.evidence.get("covered_by")
        for f in findings
        if f.rule == "duplicate-index"
    }
    assert duplicate_of.get("u_a_incl_c") is None, duplicate_of
    # the foreign key's column is second in fkc_other_pid: not served
    fk = [f for f in findings if f.rule == "fk-missing-index" and f.table == "fkc"]
    assert [f.evidence["columns"] for f in fk] == [["pid"]]
    for f in fk:
        apply_fix(scratch, f)
    assert not [f for f in scratch.findings() if f.rule == "fk-missing-index" and f.table == "fkc"]
