"""Capture real pool-stress runs as test data for the pure verdict tests.

    python tests/data/pool/capture.py [--provider local]

Each file holds ``metrics["pool"]`` and ``metrics["pool_run"]`` of a real run on a
throwaway server, with latency samples dropped (percentiles, counts, per-interval series
and throughput samples are kept). Re-capture when the step layout changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, text  # noqa: E402

from dbprobe.pg import throwaway  # noqa: E402
from dbprobe.pool import StressConfig, Workload, stress  # noqa: E402

HERE = Path(__file__).resolve().parent
LEAKED: list[Any] = []


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strip(v) for k, v in node.items()}
        if "p50" in out and "samples" in out and out.get("unit") != "q/s":
            del out["samples"]
        return out
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _save(name: str, report: Any, about: str) -> None:
    doc = report.to_dict()
    data = {
        "about": about,
        "server_version": doc["target"]["server_version"],
        "environment": doc["environment"],
        "findings": [f["rule"] for f in doc["findings"]],
        "pool": _strip(doc["metrics"]["pool"]),
        "pool_run": doc["metrics"]["pool_run"],
    }
    (HERE / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {name}.json: findings {data['findings']}")


def leaky(engine: Engine) -> None:
    """Checks a connection out and keeps it (a planted leak)."""
    conn = engine.connect()
    LEAKED.append(conn)
    conn.execute(text("SELECT 1"))
    conn.commit()


def clean(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--provider", default=None)
    args = parser.parse_args()
    with throwaway(args.provider) as pg:
        url = pg.dsn()
        _save(
            "think_exhaustion",
            stress(
                url,
                "sqlalchemy,psycopg",
                config=StressConfig(
                    size=2,
                    overflow=2,
                    timeout_s=0.05,
                    think_ms=10,
                    step_seconds=0.6,
                    max_concurrency=16,
                    spike=16,
                ),
            ),
            "SELECT 1 holding each connection 10 ms; capacity 4, timeout 50 ms, up to 4x",
        )
        _save(
            "select1_all",
            stress(
                url,
                "all",
                config=StressConfig(
                    size=4, overflow=0, timeout_s=1.0, step_seconds=0.6, max_concurrency=16
                ),
            ),
            "SELECT 1 with no think time on every pool; capacity 4, up to 4x",
        )
        _save(
            "open_loop",
            stress(
                url,
                "psycopg-async",
                config=StressConfig(
                    size=4,
                    overflow=0,
                    timeout_s=2.0,
                    think_ms=5,
                    step_seconds=1.0,
                    rates=(200.0, 2000.0),
                    spike=0,
                    steps=(1, 4, 8),
                ),
            ),
            "open loop at 200/s (under capacity 4/5ms=800/s) and 2000/s (over)",
        )
        soak_config = StressConfig(
            size=30, overflow=0, timeout_s=0.5, think_ms=150, step_seconds=0.3, steps=(1,),
            spike=0, soak_s=4.0, sample_interval_s=0.1, soak_concurrency=1,
        )  # fmt: skip
        _save(
            "soak_leaky",
            stress(
                url,
                "sqlalchemy",
                config=soak_config,
                workload=Workload.from_callable(leaky, ["sqlalchemy"], level="pool"),
            ),
            "soak 4 s, one worker leaking one connection every ~150 ms",
        )
        for conn in LEAKED:
            conn.close()
        _save(
            "soak_clean",
            stress(
                url,
                "sqlalchemy",
                config=soak_config,
                workload=Workload.from_callable(clean, ["sqlalchemy"], level="pool"),
            ),
            "soak 4 s, the same workload returning its connection",
        )
    with throwaway(args.provider, max_connections=8) as small:
        _save(
            "server_exhaustion",
            stress(
                small.dsn(),
                "sqlalchemy",
                config=StressConfig(
                    size=4,
                    overflow=8,
                    timeout_s=0.5,
                    think_ms=5,
                    step_seconds=0.5,
                    spike=0,
                    allow_server_exhaustion=True,
                ),
            ),
            "capacity 12 on a server with max_connections 8: the server refuses",
        )


if __name__ == "__main__":
    main()
