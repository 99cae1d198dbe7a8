"""``dbprobe compare``: threshold specs, findings matched by identity, regressions on
real measurements, environment warnings, saved runs, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbprobe.compare import build_checks, compare_documents, parse_check
from dbprobe.compare.checks import resolve_checks
from dbprobe.compare.render import COMPARE_RENDERERS
from dbprobe.errors import UsageError
from dbprobe.report.model import Distribution, Report
from dbprobe.rules import RULES

ROOT = Path(__file__).resolve().parents[2]
COMPARE_SCHEMA = ROOT / "dbprobe" / "schemas" / "compare.schema.json"


# --- threshold specs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "stat", "pattern", "limit"),
    [
        ("p95:10%", "p95", None, 0.10),
        ("p99:2.5%", "p99", None, 0.025),
        ("throughput:5%", "throughput", None, 0.05),
        ("mean:5%", "mean", None, 0.05),
        ("p99.9:20%", "p99.9", None, 0.20),
        ("pool.*.throughput:5%", None, "pool.*.throughput", 0.05),
        ("coldstart.*.total:p99:25%", "p99", "coldstart.*.total", 0.25),
        ("p99:off", "p99", None, None),
    ],
)
def test_parse_check(spec: str, stat: str | None, pattern: str | None, limit: float | None) -> None:
    check = parse_check(spec)
    assert (check.stat, check.pattern, check.threshold) == (stat, pattern, limit)


@pytest.mark.parametrize(
    "spec", ["p95", "p95:10", "p95:ten%", ":10%", "p999:10%", "x:median:5%", "p95:-5%"]
)
def test_bad_specs_fail_with_one_line(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_check(spec)
    assert "\n" not in str(err.value) and spec in str(err.value)


def test_most_specific_check_wins() -> None:
    checks = build_checks(["p95:20%", "pool.*.acquire_wait:p95:50%", "p99:off"])
    wait = dict(resolve_checks("pool.p.steps[c=4].acquire_wait", "ms", checks))
    assert wait["p95"].threshold == 0.5
    assert "p99" not in wait
    other = dict(resolve_checks("coldstart.psycopg.total", "ms", checks))
    assert other["p95"].threshold == 0.2
    rate = dict(resolve_checks("pool.p.steps[c=4].throughput", "q/s", checks))
    assert set(rate) == {"throughput"} and rate["throughput"].threshold == 0.10
    # a glob without a statistic checks the defaults of the metric's kind
    glob = dict(resolve_checks("pool.p.steps[c=4].throughput", "q/s", [parse_check("pool.*:5%")]))
    assert set(glob) == {"throughput"}
    # units that are neither times nor rates are only checked when asked for
    assert resolve_checks("audit.rows", "rows", build_checks([])) == []


# --- comparing documents ---------------------------------------------------------


def test_identical_reports_pass(sample_doc: dict[str, Any]) -> None:
    result = compare_documents(sample_doc, json.loads(json.dumps(sample_doc)))
    assert result.exit_code == 0
    assert result.new_findings == [] and result.resolved == []
    assert result.unchanged_findings == 3
    assert result.changes and all(c.verdict == "unchanged" for c in result.changes)
    # pool steps are matched by concurrency, and sampled metrics decided by bootstrap
    assert any("steps[c=8].acquire_wait" in c.metric for c in result.changes)
    assert {c.method for c in result.changes} == {"bootstrap"}
    assert result.warnings == []


def test_a_really_slower_run_fails_on_p95(
    sample_doc: dict[str, Any], slow_doc: dict[str, Any]
) -> None:
    result = compare_documents(sample_doc, slow_doc)
    assert result.exit_code == 1
    regressed = {(c.metric, c.stat) for c in result.regressions}
    # every pooled query slept 25 ms more: query latency p95 regressed at every level
    for level in (1, 2, 4, 8):
        assert (f"pool.psycopg_pool.steps[c={level}].query_latency", "p95") in regressed
    q = next(c for c in result.regressions if c.metric.endswith("[c=1].query_latency"))
    # 25 ms on top of a base p95 of a few ms: well above 1.5x even when load inflates the base
    assert q.ratio > 1.5 and q.ci_low > 1 and q.p_value < 0.001
    # and throughput, a rate, fell
    assert any(c.stat == "throughput" and c.ratio < 1 for c in result.regressions)
    # the reverse direction is an improvement (cold start is left out: the two runs
    # measured it at different moments of a shared, noisy machine)
    back = compare_documents(slow_doc, sample_doc)
    pooled = [c for c in back.changes if ".query_latency" in c.metric]
    assert pooled and not [c for c in pooled if c.verdict == "regression"]
    assert all(c.verdict == "improvement" for c in pooled if c.stat == "p95")


def test_new_and_resolved_findings_by_identity(sample_doc: dict[str, Any]) -> None:
    new = json.loads(json.dumps(sample_doc))
    # the same N+1 reworded and with a new count: not a new finding
    new["findings"][0]["message"] = "reworded message"
    new["findings"][0]["count"] = 21
    leak = RULES["connection-leak"].finding(
        "2 connections never returned", "close them", location="app/jobs.py:7"
    )
    new["findings"].append(leak.to_dict())
    dropped = new["findings"].pop(2)  # the unused index was dropped
    result = compare_documents(sample_doc, new)
    assert [f.rule for f in result.new_findings] == ["connection-leak"]
    assert [f.fingerprint for f in result.resolved] == [dropped["fingerprint"]]
    assert result.exit_code == 1
    assert compare_documents(sample_doc, new, fail_on="never").exit_code == 0
    # a new info-level finding does not fail at the default --fail-on error
    info = json.loads(json.dumps(sample_doc))
    info["findings"].append(
        RULES["unused-index"].finding("x", "y", table="t", fingerprint="public.t.ix").to_dict()
    )
    assert compare_documents(sample_doc, info).exit_code == 0
    assert compare_documents(sample_doc, info, fail_on="info").exit_code == 1


def test_duplicate_findings_count_as_a_multiset(sample_doc: dict[str, Any]) -> None:
    new = json.loads(json.dumps(sample_doc))
    new["findings"].append(dict(new["findings"][0]))
    result = compare_documents(sample_doc, new)
    assert len(result.new_findings) == 1 and result.new_findings[0].rule == "n-plus-one"


def test_cross_machine_comparison_warns(sample_doc: dict[str, Any]) -> None:
    other = json.loads(json.dumps(sample_doc))
    other["environment"]["cpus"] = 64
    other["environment"]["hostname"] = "elsewhere"
    other["target"]["server_version"] = "18.1"
    result = compare_documents(sample_doc, other)
    text = " ".join(result.warnings)
    assert "CPU count differs" in text and "machine (hostname) differs" in text
    assert "PostgreSQL version differs: " in text
    assert "CPU count differs" in COMPARE_RENDERERS["table"](result)


def test_point_values_decide_when_samples_are_missing() -> None:
    def doc(scale: float) -> dict[str, Any]:
        r = Report(command="coldstart")
        r.metrics = {
            "coldstart": {"psycopg": {"total": Distribution.of([scale * x for x in range(1, 6)])}}
        }
        return r.to_dict()

    result = compare_documents(doc(1.0), doc(1.5))
    assert result.exit_code == 1
    assert {c.method for c in result.changes} == {"point"}
    assert any("point values" in w for w in result.warnings)


def test_json_output_matches_its_schema(
    sample_doc: dict[str, Any], slow_doc: dict[str, Any]
) -> None:
    import jsonschema

    schema = json.loads(COMPARE_SCHEMA.read_text(encoding="utf-8"))
    doc = json.loads(COMPARE_RENDERERS["json"](compare_documents(sample_doc, slow_doc)))
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert doc["schema"] == "dbprobe.compare/1" and doc["result"] == "fail"
    assert doc["metrics"]["regressions"] >= 4
    md = COMPARE_RENDERERS["markdown"](compare_documents(sample_doc, slow_doc))
    assert md.startswith("### ❌ dbprobe compare — FAIL")


# --- the command line ------------------------------------------------------------


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DBPROBE_RUNS_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def report_files(
    tmp_path: Path, sample_doc: dict[str, Any], slow_doc: dict[str, Any]
) -> tuple[Path, Path]:
    base, slow = tmp_path / "base.json", tmp_path / "slow.json"
    base.write_text(json.dumps(sample_doc))
    slow.write_text(json.dumps(slow_doc))
    return base, slow


def test_cli_exit_codes(report_files: tuple[Path, Path], tmp_path: Path) -> None:
    base, slow = report_files
    same = run_cli("compare", str(base), str(base))
    assert same.returncode == 0, same.stderr
    assert "PASS" in same.stdout
    worse = run_cli("compare", str(base), str(slow))
    assert worse.returncode == 1
    assert "FAIL: " in worse.stdout and "regression" in worse.stdout
    # loosening the query-latency limit is not enough: throughput
    # fell too; switching both off passes
    relaxed = run_cli(
        "compare",
        str(base),
        str(slow),
        "-t",
        "pool.*.query_latency:off",
        "-t",
        "pool.*.acquire_wait:off",
        "-t",
        "throughput:off",
        "-t",
        "coldstart.*:off",
        "--format",
        "json",
    )
    assert relaxed.returncode == 0, relaxed.stdout[-2000:]
    assert json.loads(relaxed.stdout)["result"] == "pass"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json", "missing.json"], "missing.json: no such file"),
        (["{bad}", "{bad}"], "not JSON"),
        (["{other}", "{other}"], "not a dbprobe.report/1 report"),
        (["{base}", "{base}", "-t", "p95:lots"], "bad threshold 'p95:lots'"),
        (["7", "{base}"], "no saved run number 7"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    report_files: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/2"}))
    files = {
        "base": report_files[0],
        "bad": tmp_path / "bad.json",
        "other": tmp_path / "other.json",
    }
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    proc = run_cli("compare", *argv, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_compares_saved_runs(report_files: tuple[Path, Path], tmp_path: Path) -> None:
    base, slow = report_files
    runs = tmp_path / "runs"
    assert run_cli("runs", "save", str(base), "--dir", str(runs)).returncode == 0
    saved = run_cli("runs", "save", str(slow), "--dir", str(runs))
    assert saved.returncode == 0 and "saved as run 2" in saved.stdout
    listing = run_cli("runs", "list", "--dir", str(runs))
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()[2:]] == ["1", "2"]
    proc = run_cli("compare", "1", "latest", "--runs-dir", str(runs), "--format", "json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["base"]["source"].endswith(".json") and "0001_demo_" in doc["base"]["source"]
    # saved inside this git checkout: the commit travels with the run
    assert doc["base"]["commit"] and len(doc["base"]["commit"]) == 40
    same = run_cli("compare", "latest~1", "1", "--runs-dir", str(runs))
    assert same.returncode == 0, same.stdout
