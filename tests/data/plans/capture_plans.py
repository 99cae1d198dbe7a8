"""Capture the real EXPLAIN (FORMAT JSON) documents the plan-analysis tests read.

Run from the repository root (needs the local PostgreSQL 15 and the embedded 18 wheel)::

    python tests/data/plans/capture_plans.py            # both servers
    python tests/data/plans/capture_plans.py local      # one provider

Writes ``<case>.pg<major>.json`` (the plan with its statement, settings and explain
options) and ``catalog.pg<major>.json`` (the catalog snapshot dbprobe reads from the
same database) beside this file. Data is deterministic (no random()), so the plans are
stable across runs apart from costs that depend on the server version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from dbprobe.audit.catalog import read_snapshot  # noqa: E402
from dbprobe.audit.runner import ExplainRunner  # noqa: E402
from dbprobe.pg import throwaway  # noqa: E402

SCHEMA = """
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    country text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    status text NOT NULL,
    total numeric(10, 2) NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX ix_orders_status ON orders (status);
CREATE TABLE events (
    id bigint PRIMARY KEY,
    kind int NOT NULL,
    a int NOT NULL,
    b int NOT NULL,
    payload text NOT NULL,
    "Source" varchar(20) NOT NULL
);
CREATE INDEX ix_events_kind ON events (kind);
INSERT INTO customers
SELECT g, 'user' || g || '@example.com', (ARRAY['DE', 'NL', 'SE', 'FR'])[1 + g % 4],
       timestamptz '2024-01-01' + g * interval '1 minute'
FROM generate_series(1, 20000) g;
INSERT INTO orders
SELECT g, 1 + (g * 7919) % 20000,
       (ARRAY['open', 'paid', 'shipped', 'refunded'])[1 + (g / 7) % 4],
       ((g * 31) % 1000) + 0.99,
       timestamptz '2024-01-01' + g * interval '37 seconds'
FROM generate_series(1, 200000) g;
INSERT INTO events
SELECT g, g % 10, g % 100, g % 100, md5(g::text) || repeat('x', 40),
       'src-' || (g % 500)
FROM generate_series(1, 100000) g;
CREATE TABLE settings_kv (id int PRIMARY KEY, key text NOT NULL, value text);
INSERT INTO settings_kv SELECT g, 'k' || g, 'v' || g FROM generate_series(1, 100) g;
ANALYZE customers, orders, events, settings_kv;
"""

# name -> (description, sql, params, options)
# options: analyze (bool), settings (dict of SET LOCAL), verbose (bool, default True)
CASES: dict[str, tuple[str, str, Any, dict[str, Any]]] = {
    "seq-scan-equality": (
        "Equality look-up on an unindexed foreign-key column: Seq Scan with a Filter.",
        "SELECT id, total FROM orders WHERE customer_id = 4242",
        None,
        {},
    ),
    "seq-scan-equality-plain": (
        "The same look-up without VERBOSE (unqualified filter, no Schema key).",
        "SELECT id, total FROM orders WHERE customer_id = 4242",
        None,
        {"verbose": False},
    ),
    "seq-scan-varchar-cast": (
        "Equality on a varchar column with a quoted name: the filter casts it to text.",
        "SELECT id FROM events WHERE \"Source\" = 'src-42'",
        None,
        {},
    ),
    "seq-scan-analyze": (
        "Seq Scan with ANALYZE: Rows Removed by Filter.",
        "SELECT id, total FROM orders WHERE customer_id = 4242",
        None,
        {"analyze": True},
    ),
    "nested-loop-inner-seq-scan": (
        "Nested loop whose inner side is a Seq Scan of orders for every outer customer.",
        "SELECT o.id FROM customers c JOIN orders o ON o.customer_id = c.id "
        "WHERE c.email = 'user42@example.com'",
        None,
        {"settings": {"enable_hashjoin": "off", "enable_mergejoin": "off"}},
    ),
    "hash-join-large-probe": (
        "One customer by e-mail joined to orders: a hash join that scans all orders.",
        "SELECT o.id FROM customers c JOIN orders o ON o.customer_id = c.id "
        "WHERE c.email = 'user42@example.com'",
        None,
        {},
    ),
    "sort-limit-filter": (
        "Latest orders of one customer: Limit over Sort over Seq Scan with a Filter.",
        "SELECT * FROM orders WHERE customer_id = 4242 ORDER BY created_at DESC LIMIT 10",
        None,
        {},
    ),
    "sort-limit-no-filter": (
        "Top-N of a whole table by an unindexed column: Limit over Sort over Seq Scan.",
        "SELECT * FROM orders ORDER BY created_at DESC LIMIT 10",
        None,
        {},
    ),
    "bitmap-recheck-filter": (
        "Bitmap Heap Scan on kind with a Filter on a (lossy bitmap with small work_mem).",
        "SELECT id FROM events WHERE kind = 3 AND a = 13",
        None,
        {"analyze": True, "settings": {"work_mem": "64kB", "enable_indexscan": "off"}},
    ),
    "index-scan-filter": (
        "Index Scan on status whose Filter on total removes most rows (ANALYZE).",
        "SELECT id FROM orders WHERE status = 'refunded' AND total > 998",
        None,
        {"analyze": True, "settings": {"enable_bitmapscan": "off", "enable_seqscan": "off"}},
    ),
    "misestimate": (
        "Correlated columns a = b: the planner multiplies selectivities (ANALYZE).",
        "SELECT id FROM events WHERE a = 5 AND b = 5",
        None,
        {"analyze": True, "settings": {"max_parallel_workers_per_gather": "0"}},
    ),
    "misestimate-1000": (
        "Three correlated columns: estimated 1 row, 1,000 found (ANALYZE).",
        "SELECT id FROM events WHERE a = 5 AND b = 5 AND kind = 5",
        None,
        {"analyze": True, "settings": {"max_parallel_workers_per_gather": "0"}},
    ),
    "non-selective-filter": (
        "A filter that keeps most rows: a Seq Scan is the right plan.",
        "SELECT id FROM orders WHERE status <> 'refunded'",
        None,
        {},
    ),
    "small-table": (
        "An unindexed look-up on a 100-row table: too small to matter.",
        "SELECT value FROM settings_kv WHERE key = 'k42'",
        None,
        {},
    ),
    "sort-spill": (
        "A sort bigger than work_mem goes to disk (ANALYZE).",
        "SELECT id, payload FROM events ORDER BY payload",
        None,
        {"analyze": True, "settings": {"work_mem": "64kB", "max_parallel_workers_per_gather": "0"}},
    ),
    "hash-spill": (
        "A hash join whose hash table needs several batches (ANALYZE).",
        "SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id",
        None,
        {
            "analyze": True,
            "settings": {"work_mem": "64kB", "max_parallel_workers_per_gather": "0"},
        },
    ),
    "generic-plan": (
        "A pg_stat_statements text with $1: generic plan.",
        "SELECT id, total FROM orders WHERE customer_id = $1",
        None,
        {},
    ),
    "bound-params": (
        "SQLAlchemy-rendered psycopg statement with real parameters.",
        "SELECT orders.id FROM orders WHERE orders.customer_id = %(customer_id_1)s "
        "AND orders.status = %(status_1)s",
        {"customer_id_1": 4242, "status_1": "paid"},
        {},
    ),
    "indexed-pk": (
        "Primary-key look-up: Index Scan, nothing to flag.",
        "SELECT * FROM orders WHERE id = 4242",
        None,
        {},
    ),
    "indexed-unique": (
        "Unique e-mail look-up: Index Scan, nothing to flag.",
        "SELECT id FROM customers WHERE email = 'user42@example.com'",
        None,
        {},
    ),
    "range-filter": (
        "Equality plus range on two unindexed columns.",
        "SELECT id FROM orders WHERE customer_id = 4242 AND created_at >= '2024-02-01'",
        None,
        {},
    ),
    "update-filter": (
        "UPDATE with an unindexed WHERE: ModifyTable over Seq Scan.",
        "UPDATE orders SET status = 'paid' WHERE customer_id = 7",
        None,
        {},
    ),
    "not-in-subplan": (
        "NOT IN (subquery): a hashed SubPlan in the Filter text.",
        "SELECT id FROM customers WHERE id NOT IN (SELECT customer_id FROM orders "
        "WHERE status = 'refunded')",
        None,
        {},
    ),
    "expression-filter": (
        "A function of a column: lower(email).",
        "SELECT id FROM customers WHERE lower(email) = 'user42@example.com'",
        None,
        {},
    ),
    "or-filter": (
        "An OR of two columns: no single B-tree serves it.",
        "SELECT id FROM orders WHERE customer_id = 42 OR total = 1.99",
        None,
        {"settings": {"max_parallel_workers_per_gather": "0"}},
    ),
    "parallel-seq-scan": (
        "A parallel Seq Scan under Gather.",
        "SELECT count(*) FROM orders WHERE customer_id = 4242",
        None,
        {
            "settings": {
                "parallel_setup_cost": "0",
                "parallel_tuple_cost": "0",
                "min_parallel_table_scan_size": "0",
            }
        },
    ),
}


def capture(provider: str) -> None:
    with throwaway(provider) as pg:
        major = pg.version_num // 10000
        db = pg.create_database("plans")
        pg.execute(SCHEMA, db)
        with pg.connect(db) as conn:
            snapshot = read_snapshot(conn)
            (HERE / f"catalog.pg{major}.json").write_text(
                json.dumps(snapshot.to_dict(), indent=1, sort_keys=True) + "\n"
            )
            for name, (description, sql, params, options) in CASES.items():
                runner = ExplainRunner(conn, verbose=options.get("verbose", True))
                settings = options.get("settings", {})
                setup = [f"SET LOCAL {k} = '{v}'" for k, v in settings.items()]
                plan = runner.explain(
                    sql, params, analyze=bool(options.get("analyze")), setup=setup
                )
                doc = {
                    "case": name,
                    "description": description,
                    "server_version": pg.version,
                    "sql": sql,
                    "params": params,
                    "analyze": bool(options.get("analyze")),
                    "verbose": options.get("verbose", True),
                    "generic": params is None and "$1" in sql,
                    "settings": settings,
                    "plan": plan,
                }
                (HERE / f"{name}.pg{major}.json").write_text(json.dumps(doc, indent=1) + "\n")
                print(f"pg{major} {name}: {plan[0]['Plan']['Node Type']}")


if __name__ == "__main__":
    for prov in sys.argv[1:] or ["local", "embedded"]:
        capture(prov)
