"""Capture the real catalog snapshots the catalog-rule tests read.

Run from the repository root (needs the local PostgreSQL 15 and the embedded 18 wheel)::

    python tests/data/catalog/capture_catalog.py            # both servers
    python tests/data/catalog/capture_catalog.py embedded   # one provider

Builds a schema full of index edge cases (INCLUDE columns, operator classes,
collations, expressions, partial and hash indexes, unique and exclusion constraints,
replica identity, an invalid index left by a failed concurrent build, multi-column and
partially indexed foreign keys), runs scans so the statistics differ, and writes
``edge-cases.pg<major>.json`` — the snapshot ``dbprobe.audit.catalog.read_snapshot``
reads from it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

import psycopg  # noqa: E402

from dbprobe.audit.catalog import read_snapshot  # noqa: E402
from dbprobe.pg import throwaway  # noqa: E402

SCHEMA = """
CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE);
INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 100) g;
CREATE TABLE child (
    id int PRIMARY KEY,
    parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE,
    a int, b int, c text, d text, e int
);
INSERT INTO child SELECT g, 1 + g % 100, g % 50, g, 'c' || g, 'D' || g, g % 7
FROM generate_series(1, 1000) g;
CREATE INDEX ix_child_a ON child (a);
CREATE INDEX ix_child_a_b ON child (a, b);
CREATE INDEX ix_child_a_desc ON child (a DESC);
CREATE INDEX ix_child_a_incl_b ON child (a) INCLUDE (b);
CREATE INDEX ix_child_c_pattern ON child (c text_pattern_ops);
CREATE INDEX ix_child_c ON child (c);
CREATE INDEX ix_child_c_collate ON child (c COLLATE "C");
CREATE INDEX ix_child_lower_d ON child (lower(d));
CREATE INDEX ix_child_lower_d_again ON child (lower(d));
CREATE INDEX ix_child_e_positive ON child (e) WHERE e > 0;
CREATE INDEX ix_child_e ON child (e);
CREATE INDEX ix_child_e_hash ON child USING hash (e);
CREATE UNIQUE INDEX uq_child_b ON child (b);
CREATE INDEX ix_child_b ON child (b);
CREATE UNIQUE INDEX uq_child_b_again ON child (b);
CREATE INDEX ix_child_id ON child (id);

CREATE TABLE multi_parent (x int, y int, PRIMARY KEY (x, y));
CREATE TABLE multi_child (id int PRIMARY KEY, x int, y int,
    CONSTRAINT fk_multi_child_xy FOREIGN KEY (x, y) REFERENCES multi_parent);
CREATE INDEX ix_multi_child_y_x ON multi_child (y, x);

CREATE TABLE soft_child (id int PRIMARY KEY, parent_id int REFERENCES parent,
    deleted boolean NOT NULL DEFAULT false);
CREATE INDEX ix_soft_child_parent_live ON soft_child (parent_id) WHERE NOT deleted;

CREATE TABLE fk_indexed (id int PRIMARY KEY, parent_id int REFERENCES parent);
CREATE INDEX ix_fk_indexed_parent_id ON fk_indexed (parent_id);

CREATE TABLE ri (id int NOT NULL, k int NOT NULL);
CREATE UNIQUE INDEX ri_k ON ri (k);
ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_k;
CREATE UNIQUE INDEX ri_k_again ON ri (k);

CREATE TABLE bookings (id int PRIMARY KEY, during int4range,
    CONSTRAINT ex_bookings_during EXCLUDE USING gist (during WITH &&));
CREATE INDEX ix_bookings_during ON bookings USING gist (during);

CREATE TABLE dupdata (v int);
INSERT INTO dupdata VALUES (1), (1);

CREATE TABLE "Mixed Case" (id int PRIMARY KEY, "Value" int);
CREATE INDEX "Ix Mixed Value" ON "Mixed Case" ("Value");
CREATE INDEX "Ix Mixed Value Again" ON "Mixed Case" ("Value");

CREATE TABLE big_scanned (id int PRIMARY KEY, ref text);
INSERT INTO big_scanned SELECT g, 'r' || g FROM generate_series(1, 20000) g;
CREATE TABLE big_indexed (id int PRIMARY KEY, ref text);
INSERT INTO big_indexed SELECT g, 'r' || g FROM generate_series(1, 20000) g;
CREATE TABLE big_noindex (ref text);
INSERT INTO big_noindex SELECT 'r' || g FROM generate_series(1, 20000) g;
CREATE TABLE big_limit (id int PRIMARY KEY, ref text);
INSERT INTO big_limit SELECT g, 'r' || g FROM generate_series(1, 20000) g;
CREATE TABLE small_scanned (id int PRIMARY KEY, ref text);
INSERT INTO small_scanned SELECT g, 'r' || g FROM generate_series(1, 50) g;
ANALYZE;
"""

WORKLOAD = [
    *["SELECT count(*) FROM big_scanned WHERE ref = 'r42'"] * 6,
    *["SELECT count(*) FROM big_indexed WHERE ref = 'r42'"] * 6,
    *["SELECT ref FROM big_indexed WHERE id = 42"] * 50,
    *["SELECT count(*) FROM big_noindex WHERE ref = 'r42'"] * 6,
    *["SELECT ref FROM big_limit LIMIT 1"] * 8,
    *["SELECT count(*) FROM small_scanned WHERE ref = 'r42'"] * 8,
    "SELECT * FROM child WHERE a = 3 AND b = 3",
    "SELECT * FROM child WHERE lower(d) = 'd7'",
]


def capture(provider: str) -> None:
    with throwaway(provider) as pg:
        major = pg.version_num // 10000
        db = pg.create_database("catalog")
        pg.execute(SCHEMA, db)
        try:
            pg.execute("CREATE UNIQUE INDEX CONCURRENTLY uq_dupdata_v ON dupdata (v)", db)
        except psycopg.errors.UniqueViolation:
            pass  # leaves uq_dupdata_v INVALID, as intended
        with pg.connect(db) as conn:
            for stmt in WORKLOAD:
                conn.execute(stmt)
            conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(0.5)
        with pg.connect(db) as conn:
            snapshot = read_snapshot(conn)
        out = HERE / f"edge-cases.pg{major}.json"
        out.write_text(json.dumps(snapshot.to_dict(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {out.name}: {len(snapshot.tables)} tables, {len(snapshot.indexes)} indexes")


if __name__ == "__main__":
    for prov in sys.argv[1:] or ["local", "embedded"]:
        capture(prov)
