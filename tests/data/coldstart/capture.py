"""Capture the real cold-start reports the pure verdict tests read.

Run from the repository root (needs PostgreSQL 15 binaries and the embedded wheel)::

    python tests/data/coldstart/capture.py

Each case starts its own throwaway server and writes the ``dbprobe coldstart --format
json`` report to ``tests/data/coldstart/<case>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dbprobe.cli import main
from dbprobe.pg import throwaway
from dbprobe.urls import parse_url

HERE = Path(__file__).parent
PASSWORD = "capture-pw"

CASES: dict[str, dict[str, Any]] = {
    # PG 15, trust over loopback TCP, no TLS: the fast baseline
    "pg15_trust": {
        "provider": "local",
        "server": {"auth": "trust"},
        "options": "sslmode=disable",
        "args": "",
    },
    # PG 15, SCRAM and TLS (self-signed certificate)
    "pg15_scram_tls": {
        "provider": "local",
        "server": {"auth": "scram-sha-256", "password": PASSWORD, "ssl": True},
        "options": "sslmode=require",
        "args": "",
    },
    # PG 18, SCRAM with 200k iterations: the client's key derivation dominates
    "pg18_scram_200k": {
        "provider": "embedded",
        "server": {
            "auth": "scram-sha-256",
            "password": PASSWORD,
            "settings": {"scram_iterations": "200000"},
        },
        "options": "sslmode=disable",
        "args": "--samples 8",
    },
    # PG 15, trust, sslmode=prefer against a server without TLS: a refused SSLRequest
    "pg15_prefer_refused": {
        "provider": "local",
        "server": {"auth": "trust"},
        "options": "sslmode=prefer",
        "args": "--samples 15 --no-warm",
    },
    # PG 15, fresh processes that import a module taking 60 ms
    "pg15_process": {
        "provider": "local",
        "server": {"auth": "trust"},
        "options": "sslmode=disable",
        "args": "--samples 5 --no-warm --process --process-samples 3 --import slow_user_module",
    },
}


def capture(name: str) -> None:
    case = CASES[name]
    with throwaway(case["provider"], **case["server"]) as pg:
        key, _, value = case["options"].partition("=")
        url = parse_url(pg.dsn()).with_options(**{key: value}).libpq_dsn()
        out = HERE / f"{name}.json"
        args = ["-q", "coldstart", url, "--format", "json", "--output", str(out)]
        args += (case["args"] or "--samples 15").split()
        rc = main(args)
        print(f"{name}: exit {rc} -> {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))  # slow_user_module
    import os

    os.chdir(HERE)
    for case_name in sys.argv[1:] or list(CASES):
        capture(case_name)
