"""Throwaway-server lifecycle: initdb, start to ready, stop, template clone — per provider.

Side by side in one run with the usual way of doing it (``pg_ctl start -w`` /
``pg_ctl stop -m fast``, which poll every 100 ms), on the same binaries and data dir.

    python benchmarks/bench_throwaway.py [--rounds 7] [--providers local,embedded]

Prints machine info, versions, medians with min–max, and a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._machine import machine_info, write_json
from dbprobe.pg import throwaway
from dbprobe.pg.local import LocalCluster


def _fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):7.1f} ms ({min(ms):.1f}–{max(ms):.1f})"


def bench_provider(provider: str, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "initdb",
            "copy",
            "start_ready",
            "enter_total",
            "stop",
            "clone_small",
            "clone_small_file_copy",
            "clone_10mb",
            "pg_ctl_start",
            "pg_ctl_stop",
        )
    }
    for _ in range(rounds):
        t0 = time.perf_counter()
        with throwaway(provider) as pg:
            out["enter_total"].append(time.perf_counter() - t0)
            for key in ("initdb", "copy"):
                if f"{key}_s" in pg.timings:
                    out[key].append(pg.timings[f"{key}_s"])
            out["start_ready"].append(pg.timings["start_s"])
            small = pg.create_database()
            pg.execute(
                "CREATE TABLE t (id int primary key, v text);"
                "INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 2000) i",
                small,
            )
            big = pg.create_database()
            pg.execute(
                "CREATE TABLE t (id int primary key, v text);"
                "INSERT INTO t SELECT i, repeat(md5(i::text), 2) FROM generate_series(1, 80000) i",
                big,
            )
            for key, tpl in (("clone_small", small), ("clone_10mb", big)):
                t = time.perf_counter()
                pg.clone(tpl)
                out[key].append(time.perf_counter() - t)
            t = time.perf_counter()
            name = f"fc_{os.getpid()}_{len(out['clone_small_file_copy'])}"
            pg.execute(f"CREATE DATABASE {name} TEMPLATE {small} STRATEGY FILE_COPY")
            out["clone_small_file_copy"].append(time.perf_counter() - t)
        out["stop"].append(pg.timings["stop_s"])
        out["pg_ctl_start"], out["pg_ctl_stop"] = _pg_ctl_peer(provider, out)
    return out


def _pg_ctl_peer(provider: str, out: dict[str, list[float]]) -> tuple[list[float], list[float]]:
    """pg_ctl -w start / -m fast stop on an initdb'ed cluster of the same binaries."""
    from dbprobe.pg import binaries
    from dbprobe.pg.local import ServerOptions

    bins = binaries.find_local()[0] if provider == "local" else binaries.find_embedded()[0]
    assert bins is not None
    cluster = LocalCluster(bins, ServerOptions(), provider)
    try:
        cluster.initdb()
        from dbprobe.pg.local import free_port

        port = free_port()
        opts = " ".join(f"-c {k}={v}" for k, v in cluster._settings(port).items())
        pg_ctl = str(cluster.bins.tool("pg_ctl"))

        def run(args: list[str]) -> float:
            t = time.perf_counter()
            subprocess.run(
                args,
                check=True,
                capture_output=True,
                env=cluster._env(),
                cwd=cluster.base,
                user=cluster.account.run_uid,
                group=cluster.account.run_gid,
                extra_groups=cluster.account.run_groups,
            )
            return time.perf_counter() - t

        start = run(
            [
                pg_ctl,
                "-D",
                str(cluster.data),
                "-w",
                "-l",
                str(cluster.data / "pg_ctl.log"),  # writable by the account the server runs as
                "-o",
                opts,
                "start",
            ]
        )
        stop = run([pg_ctl, "-D", str(cluster.data), "-w", "-m", "fast", "stop"])
        return [*out["pg_ctl_start"], start], [*out["pg_ctl_stop"], stop]
    finally:
        cluster.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--providers", default="local,embedded")
    ap.add_argument("--json", default=None, help="write the results here (machine-readable)")
    args = ap.parse_args()
    print(machine_info())
    print(
        f"command: python benchmarks/bench_throwaway.py --rounds {args.rounds} "
        f"--providers {args.providers}\n"
    )
    results = {}
    for provider in args.providers.split(","):
        try:
            results[provider] = bench_provider(provider, args.rounds)
        except Exception as exc:  # a missing provider is reported, not fatal
            print(f"{provider}: skipped ({exc})")
    labels = [
        ("initdb", "initdb (tmpfs; first server of a process)"),
        ("copy", "copy of the pristine cluster (later servers)"),
        ("start_ready", "start → first connection (dbprobe)"),
        ("pg_ctl_start", "start → ready (`pg_ctl start -w`)"),
        ("enter_total", "throwaway() entered (data dir + start + extensions)"),
        ("stop", "stop (dbprobe, immediate)"),
        ("pg_ctl_stop", "stop (`pg_ctl stop -m fast -w`)"),
        ("clone_small", "clone 2k-row db (TEMPLATE, WAL_LOG)"),
        ("clone_small_file_copy", "clone 2k-row db (STRATEGY FILE_COPY)"),
        ("clone_10mb", "clone 80k-row db (~14 MB, WAL_LOG)"),
    ]
    header = "| step | " + " | ".join(results) + " |"
    print(header)
    print("|---|" + "---|" * len(results))
    for key, label in labels:
        cells = [_fmt(r[key]) if r[key] else "-" for r in results.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    write_json(args.json, {"benchmark": "throwaway", "seconds": results})


if __name__ == "__main__":
    main()
