"""Regenerate the saved query logs used by the pure detector tests.

    PYTHONPATH=. python tests/data/querylogs/capture_shop_logs.py

Runs every n-plus-one / redundant-query flow of the shop manifest (planted and clean)
on a throwaway PostgreSQL with the small seed, and saves each captured log, parameters
included (seed data only), as ``<manifest id>.json`` beside this file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import dbprobe
from dbprobe.pg import throwaway
from fixtures.shop import seed
from fixtures.shop.manifest import load_manifest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def main() -> None:
    manifest = load_manifest()
    entries = [e for e in manifest if e.kind == "code" and e.argument == "session"]
    os.chdir(ROOT)
    with throwaway() as pg:
        db = pg.create_database()
        engine = create_engine(pg.url(db))
        with engine.begin() as conn:
            seed.build(conn, "small")
        for entry in entries:
            with Session(engine) as session, dbprobe.capture(root=str(ROOT)) as log:
                entry.call(session)
            document = log.to_dict(with_parameters=True)
            document["name"] = entry.id
            (HERE / f"{entry.id}.json").write_text(json.dumps(document, indent=1) + "\n")
        engine.dispose()


if __name__ == "__main__":
    main()
