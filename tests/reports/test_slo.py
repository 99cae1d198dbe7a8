"""SLOs: the [tool.dbprobe.slo] table, the pure check, suggestions, and the commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from dbprobe.commands.common import finish, report_options
from dbprobe.errors import UsageError
from dbprobe.report.model import Report
from dbprobe.report.schema import validate_report
from dbprobe.runs import RunStore
from dbprobe.slo import (
    Slos,
    apply_slos,
    check_slos,
    find_pyproject,
    load_slos,
    nice_ceil,
    suggest_slos,
    suggestions_toml,
    tomllib,
)

ROOT = Path(__file__).resolve().parents[2]


def write_pyproject(folder: Path, table: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text(f'[project]\nname = "app"\n\n[tool.dbprobe.slo]\n{table}\n')
    return path


def test_config_found_by_walking_up(tmp_path: Path) -> None:
    write_pyproject(tmp_path, "query_p95_ms = 5\nerror_rate = 0.001")
    deep = tmp_path / "src" / "app"
    deep.mkdir(parents=True)
    assert find_pyproject(deep) == tmp_path / "pyproject.toml"
    slos = load_slos(start=deep)
    assert slos.query_p95_ms == 5.0 and slos.error_rate == 0.001
    assert slos.source == str(tmp_path / "pyproject.toml")
    assert [k.key for k, _ in slos.items()] == ["query_p95_ms", "error_rate"]


def test_no_table_means_no_slos(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert not load_slos(start=tmp_path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("query_p95 = 5", "unknown SLO 'query_p95'"),
        ('query_p95_ms = "5ms"', "must be a number"),
        ("query_p95_ms = -1", "must be a positive number"),
        ("error_rate = 5", "fraction"),
        ("query_p95_ms = true", "must be a number"),
    ],
)
def test_bad_tables_fail_with_one_line(tmp_path: Path, table: str, message: str) -> None:
    write_pyproject(tmp_path, table)
    with pytest.raises(UsageError, match=message) as err:
        load_slos(start=tmp_path)
    assert "\n" not in str(err.value)


def test_bad_toml_and_missing_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[tool.dbprobe.slo\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_slos(bad)
    with pytest.raises(UsageError, match="no such configuration file"):
        load_slos(tmp_path / "nope.toml")


def test_violations_on_real_measurements(sample_doc: dict[str, Any]) -> None:
    steps = sample_doc["metrics"]["pool"]["psycopg_pool"]["steps"]
    waits = {s["concurrency"]: s["acquire_wait"]["p99"] for s in steps}
    # a limit between the best and the worst level's acquire-wait p99
    limit = (min(waits.values()) + max(waits.values())) / 2
    # pool_concurrency=8: every step is within the declared operating load
    slos = Slos(pool_acquire_p99_ms=limit, connect_p95_ms=1e-6, pool_concurrency=8)
    findings = check_slos(sample_doc, slos)
    by_key = {f.evidence["slo"]: f for f in findings}
    acquire = by_key["pool_acquire_p99_ms"]
    bad_levels = sorted(c for c, v in waits.items() if v > limit)
    assert acquire.rule == "slo-violation" and acquire.severity.value == "error"
    assert f"at concurrency {', '.join(map(str, bad_levels))}" in acquire.message
    assert acquire.evidence["observed"] == pytest.approx(max(waits.values()))
    assert acquire.fingerprint == "slo:pool_acquire_p99_ms:pool.psycopg_pool.steps.acquire_wait"
    # every driver's cold start breaks an absurd 1 ns objective; the TCP floor is not a driver
    connect = [f for f in findings if f.evidence["slo"] == "connect_p95_ms"]
    assert {f.evidence["metric"] for f in connect} == {
        "coldstart.psycopg.total",
        "coldstart.psycopg_unix.total",
    }
    assert check_slos(sample_doc, Slos(pool_acquire_p99_ms=1e9, error_rate=0.5)) == []


def test_error_rate_counts_timeouts_and_errors(sample_doc: dict[str, Any]) -> None:
    step = sample_doc["metrics"]["pool"]["psycopg_pool"]["steps"][-1]
    served = step["query_latency"]["n"]
    step["timeouts"] = 5
    step["errors"] = {"OperationalError": 5}
    findings = check_slos(sample_doc, Slos(error_rate=0.0001, pool_concurrency=8))
    assert len(findings) == 1
    assert findings[0].evidence["observed"] == pytest.approx(10 / (served + 10))
    # by default pool SLOs hold within the pool's capacity: the 8-worker step drives a
    # 4-connection pool past it, and its failures are the stress test, not the service
    size = sample_doc["metrics"]["pool"]["psycopg_pool"]["size"]
    assert step["concurrency"] > size
    assert check_slos(sample_doc, Slos(error_rate=0.0001)) == []
    # an error_rate of 0 is a valid objective ("no request may fail")
    assert Slos.from_mapping({"error_rate": 0}).error_rate == 0
    assert len(check_slos(sample_doc, Slos(error_rate=0, pool_concurrency=8))) == 1


def test_apply_adds_each_violation_once(sample_report: Report) -> None:
    report = Report.from_dict(sample_report.to_dict())
    slos = Slos(query_p95_ms=1e-6)
    first = apply_slos(report, slos)
    assert first and apply_slos(report, slos) == []
    validate_report(report.to_dict())


def test_suggestions_are_met_by_the_report_they_come_from(sample_doc: dict[str, Any]) -> None:
    suggestions = suggest_slos(sample_doc)
    keys = {s.key for s in suggestions}
    assert keys == {
        "query_p95_ms",
        "query_p99_ms",
        "pool_acquire_p95_ms",
        "pool_acquire_p99_ms",
        "connect_p95_ms",
        "error_rate",
    }
    # 12 cold starts a driver: too few for a p99 objective, so none is suggested
    assert "connect_p99_ms" not in keys
    for s in suggestions:
        if s.key != "error_rate":
            assert s.value >= s.observed * 1.5
            assert s.value == nice_ceil(s.value)
    snippet = suggestions_toml(suggestions, "report.json")
    table = tomllib.loads(snippet)["tool"]["dbprobe"]["slo"]
    slos = Slos.from_mapping(table)
    assert check_slos(sample_doc, slos) == []
    # ... also when the last step failed (it is beyond the capacity, as in every
    # dbprobe pool run)
    failing = json.loads(json.dumps(sample_doc))
    failing["metrics"]["pool"]["psycopg_pool"]["steps"][-1]["timeouts"] = 40
    table = tomllib.loads(suggestions_toml(suggest_slos(failing)))["tool"]["dbprobe"]["slo"]
    assert check_slos(failing, Slos.from_mapping(table)) == []
    # the percentile objectives start from an upper confidence bound, not the point
    q95 = next(s for s in suggestions if s.key == "query_p95_ms")
    assert "upper bound" in q95.basis
    # error_rate from zero failures starts at the rule-of-three bound 3/N
    er = next(s for s in suggestions if s.key == "error_rate")
    assert er.observed == 0 and 0 < er.value <= 1


def test_suggestions_skip_exhausted_pool_steps(sample_doc: dict[str, Any]) -> None:
    steps = sample_doc["metrics"]["pool"]["psycopg_pool"]["steps"]
    steps[-1]["timeouts"] = 3
    steps[-1]["acquire_wait"]["p99"] = 10_000.0
    s = {x.key: x for x in suggest_slos(sample_doc)}
    assert s["pool_acquire_p99_ms"].value < 10_000
    assert "[c=8]" not in s["pool_acquire_p99_ms"].metric


def test_nice_numbers() -> None:
    assert [nice_ceil(x) for x in (0.7, 1.0, 1.01, 3.1, 41, 0.00123)] == [
        0.8,
        1.0,
        1.2,
        4.0,
        50.0,
        0.0015,
    ]
    with pytest.raises(UsageError):
        suggest_slos({"metrics": {}}, headroom=0.5)


# --- through the commands -----------------------------------------------------------


@click.command()
@click.argument("src")
@report_options()
def probe(src: str, fmt: str, output: str | None, fail_on: str) -> None:
    """A command shaped like every probe: builds a report and calls finish()."""
    report = Report.from_dict(json.loads(Path(src).read_text()))
    raise SystemExit(finish(report, fmt, output, fail_on))


def test_every_command_checks_slos_and_saves_runs(
    tmp_path: Path, sample_doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(sample_doc))
    write_pyproject(tmp_path, "connect_p95_ms = 0.000001")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.json"
    result = CliRunner().invoke(probe, [str(src), "--format", "json", "-o", str(out), "--save"])
    assert result.exit_code == 1, result.output
    doc = json.loads(out.read_text())
    validate_report(doc)
    assert {f["rule"] for f in doc["findings"]} >= {"slo-violation"}
    runs = RunStore(tmp_path / ".dbprobe" / "runs").runs()
    assert [r.number for r in runs] == [1]
    saved = json.loads(runs[0].path.read_text())
    assert saved["findings"] == doc["findings"]
    # --config points elsewhere; a bad one fails before anything runs
    other = tmp_path / "other.toml"
    other.write_text("[tool.dbprobe.slo]\nconnect_p95_ms = 1e9\n")
    ok = CliRunner().invoke(probe, [str(src), "--format", "json", "--config", str(other)])
    assert ok.exit_code == 1  # the sample's own n-plus-one errors remain
    assert "slo-violation" not in ok.output
    other.write_text("[tool.dbprobe.slo]\nconnect_ms = 1\n")
    bad = CliRunner().invoke(probe, [str(src), "--config", str(other)])
    assert isinstance(bad.exception, UsageError)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def test_slo_commands(tmp_path: Path, sample_doc: dict[str, Any]) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps(sample_doc))
    suggested = run_cli("slo", "suggest", str(report), "--headroom", "2", cwd=tmp_path)
    assert suggested.returncode == 0, suggested.stderr
    table = tomllib.loads(suggested.stdout)["tool"]["dbprobe"]["slo"]
    assert "× 2" in suggested.stdout and table["query_p95_ms"] > 0
    (tmp_path / "pyproject.toml").write_text(suggested.stdout)
    shown = run_cli("slo", "show", cwd=tmp_path)
    assert "query_p95_ms = " in shown.stdout
    checked = run_cli("slo", "check", str(report), "--format", "json", cwd=tmp_path)
    assert "slo-violation" not in checked.stdout
    (tmp_path / "pyproject.toml").write_text("[tool.dbprobe.slo]\nquery_p95_ms = 0.000001\n")
    checked = run_cli("slo", "check", str(report), "--format", "json", cwd=tmp_path)
    assert checked.returncode == 1
    assert "slo-violation" in {f["rule"] for f in json.loads(checked.stdout)["findings"]}
    bad = run_cli("slo", "suggest", str(tmp_path / "missing.json"), cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_percentile_upper_bound_is_an_order_statistic() -> None:
    from dbprobe.slo import percentile_upper_bound

    values = [float(v) for v in range(1, 201)]
    bound = percentile_upper_bound(values, 95)
    # above the point p95 (190.05), within the sample, and an order statistic
    assert 190 < bound < 200 and bound in values
    # ten samples cannot bound a p95 beyond their maximum
    assert percentile_upper_bound(values[:10], 95) == 10.0
    # large samples (a pool step's thousands of queries) work and tighten the bound
    many = [float(v) for v in range(1, 20001)]
    assert 19000 < percentile_upper_bound(many, 95) < 19100
    assert percentile_upper_bound([], 95) != percentile_upper_bound([], 95)  # NaN


@pytest.mark.parametrize(
    "url", ["postgresql://app:s3cret-pw@127.0.0.1:1/shop", "host=127.0.0.1 password=s3cret-pw"]
)
def test_save_before_the_url_is_refused_without_showing_it(url: str, tmp_path: Path) -> None:
    # --save takes an optional directory: written before the URL it would swallow it
    result = run_cli("audit", "--save", url, cwd=tmp_path)
    assert result.returncode == 2
    assert "--save" in result.stderr and "after the URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert not (tmp_path / ".dbprobe").exists() and list(tmp_path.iterdir()) == []
