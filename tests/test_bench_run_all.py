"""run_all's summary on the combined results of a real full run (2026-11-27, load 14-21):
the budgets' verdicts and every benchmark's rows, re-derived from the raw results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks import run_all

RUN = Path(__file__).resolve().parent / "data" / "bench" / "run_all-2026-11-27.json"


def _outcomes(doc: dict[str, Any]) -> dict[str, run_all.RunOutcome]:
    return {name: run_all.RunOutcome(**o) for name, o in doc["benchmarks"].items()}


def test_budgets_of_a_loaded_full_run() -> None:
    doc = json.loads(RUN.read_text())
    budgets = {b.name.split(" ")[0]: b for b in run_all.budgets(_outcomes(doc), 2, quick=False)}
    capture, pool, audit = budgets["capture"], budgets["pool"], budgets["audit"]
    # capture: the median meets 1.05, the rounds straddle it at load 14 on 2 cores
    assert capture.value is not None
    assert capture.value <= run_all.CAPTURE_BUDGET
    assert capture.verdict.startswith("unconfirmed under load 14.2 on 2 cores (median met")
    # pool: the lowest row is below 0.9, but its rounds straddle it at load 20.8
    assert pool.value is not None
    assert pool.value < run_all.POOL_BUDGET
    assert "sqlalchemy, workers=16" in pool.measured
    assert pool.verdict.startswith("unconfirmed under load 20.8 on 2 cores (median missed by")
    # audit: every round well within 30 s, even under that load
    assert audit.value is not None
    assert audit.value < run_all.AUDIT_BUDGET_S
    assert audit.verdict == "met"


def test_the_same_results_on_a_quiet_machine_would_be_judged_on_their_medians() -> None:
    doc = json.loads(RUN.read_text())
    quiet = {
        name: run_all.RunOutcome(**{**o.to_dict(), "load_before": 0.5, "load_after": 0.5})
        for name, o in _outcomes(doc).items()
    }
    verdicts = {b.name.split(" ")[0]: b.verdict for b in run_all.budgets(quiet, 2, quick=False)}
    assert verdicts["capture"] == "met"
    assert verdicts["pool"].startswith("missed by ")
    assert verdicts["audit"] == "met"


def test_resummarise_writes_every_benchmarks_rows(tmp_path: Path) -> None:
    shutil.copy(RUN, tmp_path / "benchmarks.json")
    assert run_all.main(["--resummarise", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ")]
    for name in ("throwaway", "fingerprint", "capture", "pool", "audit", "coldstart"):
        assert any(line.startswith(f"| {name} |") for line in rows), name
    assert "`pg_ctl start -w`" in summary
    assert "pglast fingerprint" in summary
    assert "psycopg, workers=4: harness / bare" in summary
    assert "summary unavailable" not in summary
    rewritten = json.loads((tmp_path / "benchmarks.json").read_text())
    assert rewritten["started_at"] == "2026-11-27T05:04:50+00:00"
    assert rewritten["finished_at"] == "2026-11-27T05:17:10+00:00"
    assert len(rewritten["budgets"]) == 3


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    assert run_all.main(["--only", "nothing"]) == 2
    assert run_all.main(["--resummarise", str(tmp_path)]) == 2  # no benchmarks.json there
