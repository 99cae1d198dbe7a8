"""Fingerprinting throughput: dbprobe's normaliser (cold and behind its cache) against
sqlparse, pglast, sqlglot and a plain regex, on realistic SQLAlchemy statements.

    PYTHONPATH=. python benchmarks/bench_fingerprint.py [--repeat 5]

The corpus is 1,000 statements compiled by SQLAlchemy from the shop fixture's models
(PostgreSQL psycopg dialect, bind placeholders as executed: expanding IN lists with one
``%(name_k)s::TYPE`` per value, 13 underlying forms, IN lists of varying length)
plus the same statements with their values inlined as literals (the worst case for a
cache keyed by text: every text is new). Reported: distinct statements per second with
no cache (each method's own cost), the cached rate on a SQLAlchemy-like stream, and how
many distinct fingerprints each method finds (fewer than the number of forms means two
different statements were merged; more means values leaked into the key).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks._machine import write_json  # noqa: E402


def corpus(size: int = 1000) -> tuple[list[str], list[str], int]:
    """(bound statements, literal statements, number of underlying forms)."""
    from sqlalchemy import func, select, update
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.orm import joinedload, selectinload

    from fixtures.shop.models import Category, Customer, Order, OrderItem, Product, Review, Tag

    rng = random.Random(7)
    forms: list[Callable[[int], object]] = [
        lambda v: select(Customer).where(Customer.id == v),
        lambda v: (
            select(Order).where(Order.customer_id == v).order_by(Order.created_at.desc()).limit(10)
        ),
        lambda v: select(Product).where(Product.id.in_(list(range(v, v + 1 + v % 7)))),
        lambda v: select(func.count()).select_from(Review).where(Review.product_id == v),
        lambda v: (
            select(Review.product_id, func.count())
            .where(Review.product_id.in_([v, v + 1]))
            .group_by(Review.product_id)
        ),
        lambda v: select(Category).where(Category.parent_id == v).order_by(Category.position),
        lambda v: select(Tag.name).where(Tag.id == v),
        lambda v: (
            select(Product.sku, Product.stock_on_hand)
            .where(Product.supplier_id == v)
            .order_by(Product.sku)
        ),
        lambda v: select(Order).options(joinedload(Order.customer)).where(Order.id > v).limit(25),
        lambda v: (
            select(Order)
            .options(selectinload(Order.items).joinedload(OrderItem.product))
            .limit(v % 20 + 1)
        ),
        lambda v: (
            update(Product).where(Product.id == v).values(stock_on_hand=Product.stock_on_hand + 1)
        ),
        lambda v: select(Customer.email).where(Customer.email == f"user{v}@example.com"),
        lambda v: select(Product).where(Product.name.ilike(f"%{v}%")).where(Product.active),
    ]
    dialect = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    bound, literal = [], []
    for i in range(size):
        stmt = forms[i % len(forms)](rng.randint(1, 5000))
        # The text the driver receives: expanding IN lists rendered with one placeholder
        # per value and the dialect's cast on each (``%(id_1_1)s::BIGINT, ...``).
        executed = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        bound.append(str(executed))
        literal.append(str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})))
    return bound, literal, len(forms)


_REGEX_VALUES = re.compile(r"'(?:[^']|'')*'|%\(\w+\)s|\$\d+|\b\d+(?:\.\d+)?\b")


def regex_simple(sql: str) -> str:
    return " ".join(_REGEX_VALUES.sub("?", sql).lower().split())


def sqlparse_fp(sql: str) -> str:
    import sqlparse
    from sqlparse import tokens as T

    out = []
    for token in sqlparse.parse(sqlparse.format(sql, strip_comments=True))[0].flatten():
        if token.ttype in T.Literal or token.ttype in T.Name.Placeholder:
            out.append("?")
        elif not token.is_whitespace:
            out.append(token.value.lower())
    return " ".join(out)


def pglast_fp() -> Callable[[str], str] | None:
    try:
        import pglast
    except ImportError:
        return None
    pattern = re.compile(r"%\((\w+)\)s")

    def fp(sql: str) -> str:
        counter = iter(range(1, 10_000))
        text = pattern.sub(lambda m: f"${next(counter)}", sql)
        return str(pglast.parser.fingerprint(text))

    return fp


def sqlglot_fp() -> Callable[[str], str] | None:
    try:
        import sqlglot
        from sqlglot import exp
    except ImportError:
        return None

    def fp(sql: str) -> str:
        tree = sqlglot.parse_one(re.sub(r"%\((\w+)\)s", r":\1", sql), read="postgres")
        for node in tree.find_all(exp.Literal, exp.Placeholder):
            node.replace(exp.Placeholder())
        return tree.sql()

    return fp


def rate(fn: Callable[[str], str], items: list[str], repeat: int) -> tuple[float, int]:
    """(statements per second, median of ``repeat`` passes; distinct outputs)."""
    times = []
    outputs: set[str] = set()
    for _ in range(repeat):
        t0 = time.perf_counter()
        outputs = {fn(s) for s in items}
        times.append(time.perf_counter() - t0)
    return len(items) / statistics.median(times), len(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--statements", type=int, default=1000, help="corpus size")
    parser.add_argument("--json", default=None, help="write the results here (machine-readable)")
    args = parser.parse_args()

    import sqlalchemy
    import sqlparse

    from dbprobe.analysis import fingerprint as fpmod

    load = os.getloadavg()
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, load "
        f"{tuple(round(x, 2) for x in load)}\nversions: python {platform.python_version()}, "
        f"sqlalchemy {sqlalchemy.__version__}, sqlparse {sqlparse.__version__}"
    )
    print(f"command: PYTHONPATH=. python benchmarks/bench_fingerprint.py {' '.join(sys.argv[1:])}")
    bound, literal, forms = corpus(args.statements)
    print(
        f"corpus: {len(bound)} statements, {forms} forms, {len(set(bound))} distinct texts bound, "
        f"{len(set(literal))} with literals\n"
    )

    def dbprobe_cold(sql: str) -> str:
        return fpmod._normalize_uncached(sql)

    methods: list[tuple[str, Callable[[str], str] | None, int]] = [
        ("dbprobe normalize (no cache)", dbprobe_cold, args.repeat),
        ("regex, values only", regex_simple, args.repeat),
        ("pglast fingerprint", pglast_fp(), args.repeat),
        ("sqlparse token walk", sqlparse_fp, 1),
        ("sqlglot parse + rewrite", sqlglot_fp(), 1),
    ]
    header = f"{'method':<30} {'bound stmts/s':>14} {'distinct':>9}"
    print(header + f" {'literal stmts/s':>16} {'distinct':>9}")
    rows: dict[str, dict[str, float] | None] = {}
    for name, fn, repeat in methods:
        if fn is None:
            print(f"{name:<30} {'(not installed: pip install it to compare)':>50}")
            rows[name] = None
            continue
        r1, d1 = rate(fn, bound, repeat)
        r2, d2 = rate(fn, literal, repeat)
        rows[name] = {"bound_rate": r1, "bound_keys": d1, "literal_rate": r2, "literal_keys": d2}
        print(f"{name:<30} {r1:>14,.0f} {d1:>9} {r2:>16,.0f} {d2:>9}")

    # Behind the cache: a SQLAlchemy-like stream re-emits the same texts.
    stream = [bound[i % 120] for i in range(100_000)]
    fpmod._cache.clear()
    t0 = time.perf_counter()
    for sql in stream:
        fpmod.fingerprint(sql)
    took = time.perf_counter() - t0
    cached_rate = len(stream) / took
    print(
        "\ndbprobe fingerprint, cached, 100k statements over 120 texts: "
        f"{len(stream) / took:,.0f}/s"
    )
    fpmod._cache.clear()
    t0 = time.perf_counter()
    for sql in literal:
        fpmod.fingerprint(sql)
    took = time.perf_counter() - t0
    print(
        "dbprobe fingerprint, literal stream (every text new, cache misses): "
        f"{len(literal) / took:,.0f}/s"
    )
    write_json(
        args.json,
        {
            "benchmark": "fingerprint",
            "corpus": {"statements": len(bound), "forms": forms},
            "methods": rows,
            "cached_rate": cached_rate,
            "literal_stream_rate": len(literal) / took,
        },
    )


if __name__ == "__main__":
    main()
