"""The benchmark regression check: the comparison can fail, noise does not fail it, bad
input exits 2, and a real short measurement produces comparable ratios."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import regress
from benchmarks.run_all import verdict
from dbprobe.pg import PostgresServer

BASELINE = Path(__file__).resolve().parent.parent / "benchmarks" / "baseline.json"


def _doc(metrics: dict[str, tuple[list[float], str]]) -> dict[str, Any]:
    return {
        "schema": regress.SCHEMA,
        "metrics": {
            name: {"unit": "ratio", "direction": direction, "samples": samples}
            for name, (samples, direction) in metrics.items()
        },
    }


def _scaled(doc: dict[str, Any], factors: dict[str, float]) -> dict[str, Any]:
    """A copy of ``doc`` with the samples of some metrics multiplied by a factor."""
    out = json.loads(json.dumps(doc))
    for name, factor in factors.items():
        out["metrics"][name]["samples"] = [v * factor for v in out["metrics"][name]["samples"]]
    return out


def _committed() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(BASELINE.read_text())
    return doc


def test_committed_baseline_is_a_valid_document() -> None:
    metrics = regress.parse_document(_committed(), str(BASELINE))
    assert {"capture.orm-n+1", "capture.core", "pool.psycopg.4"} <= set(metrics)
    assert metrics["pool.psycopg.4"].higher_is_better
    assert not metrics["capture.orm-n+1"].higher_is_better
    assert all(len(m.samples) >= 3 for m in metrics.values())


def test_a_doubled_capture_overhead_and_a_doubled_harness_cpu_fail() -> None:
    base_doc = _committed()
    new_doc = _scaled(
        base_doc, {"capture.orm-n+1": 2.0, "pool.psycopg.4.cpu": 2.0, "pool.psycopg.4": 0.25}
    )
    outcome = regress.compare(
        regress.parse_document(base_doc, "base"), regress.parse_document(new_doc, "new")
    )
    assert outcome.exit_code == 1
    assert {c.metric for c in outcome.regressions} == {"capture.orm-n+1", "pool.psycopg.4.cpu"}
    by_name = {c.metric: c for c in outcome.changes}
    assert by_name["capture.orm-n+1"].ratio == pytest.approx(2.0)
    assert by_name["capture.core"].verdict == "unchanged"
    # the harness throughput ratio is shown with its verdict but does not gate
    assert by_name["pool.psycopg.4"].ratio == pytest.approx(0.25)
    assert by_name["pool.psycopg.4"].verdict == "regression"
    assert not by_name["pool.psycopg.4"].gate
    assert "regression (not gating)" in regress.render(outcome)
    table = regress.render(outcome)
    assert "regression(s): " in table
    assert "capture.orm-n+1" in table.splitlines()[-1]


def test_changes_within_noise_pass() -> None:
    base_doc = _committed()
    # 10% worse everywhere: under the 25% threshold
    worse = dict.fromkeys(base_doc["metrics"], 1.1)
    for name, m in base_doc["metrics"].items():
        if m["direction"] == "higher-is-better":
            worse[name] = 1 / 1.1
    outcome = regress.compare(
        regress.parse_document(base_doc, "base"),
        regress.parse_document(_scaled(base_doc, worse), "new"),
    )
    assert outcome.exit_code == 0
    assert {c.verdict for c in outcome.changes} == {"unchanged"}


def test_beyond_the_threshold_but_inside_the_baseline_spread_is_inconclusive() -> None:
    base = regress.parse_document(
        _doc({"capture.core": ([1.0, 1.05, 1.1, 1.6, 1.7], "lower-is-better")}), "base"
    )
    inside = regress.parse_document(
        _doc({"capture.core": ([1.4, 1.45, 1.5], "lower-is-better")}), "new"
    )
    outcome = regress.compare(base, inside)
    assert outcome.changes[0].ratio > 1.25
    assert outcome.changes[0].verdict == "inconclusive"
    assert outcome.exit_code == 0
    outside = regress.parse_document(
        _doc({"capture.core": ([1.8, 1.9, 2.0], "lower-is-better")}), "new"
    )
    assert regress.compare(base, outside).exit_code == 1
    # a stricter threshold does not override the spread rule
    assert regress.compare(base, inside, threshold=0.05).exit_code == 0


def test_improvements_and_extra_metrics_do_not_fail() -> None:
    steady = _doc({"pool.psycopg.4": ([1.0, 1.0, 1.0], "higher-is-better")})
    base = regress.parse_document(steady, "b")
    new = regress.parse_document(
        _doc(
            {
                "pool.psycopg.4": ([2.0, 2.1, 2.2], "higher-is-better"),
                "capture.new": ([1.0, 1.0, 1.0], "lower-is-better"),
            }
        ),
        "n",
    )
    outcome = regress.compare(base, new)
    assert outcome.changes[0].verdict == "improvement"
    assert outcome.only_in_results == ("capture.new",)
    assert outcome.exit_code == 0


def _write(tmp_path: Path, name: str, doc: Any) -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = str(BASELINE)
    same = _write(tmp_path, "same.json", _committed())
    slower = _write(tmp_path, "slower.json", _scaled(_committed(), {"capture.core": 3.0}))
    assert regress.main(["--baseline", base, "--results", same]) == 0
    assert "none" in capsys.readouterr().out
    assert regress.main(["--baseline", base, "--results", slower]) == 1
    out = capsys.readouterr().out
    assert "capture.core" in out.splitlines()[-1]

    lacking = _committed()
    del lacking["metrics"]["capture.core"]
    bad_inputs = [
        ["--baseline", str(tmp_path / "missing.json"), "--results", same],
        ["--baseline", base, "--results", _write(tmp_path, "broken.json", "{not json")],
        ["--baseline", base, "--results", _write(tmp_path, "other.json", {"schema": "x"})],
        ["--baseline", base, "--results", _write(tmp_path, "lacking.json", lacking)],
        ["--baseline", base, "--results", same, "--threshold", "lots"],
        ["--baseline", base, "--results", same, "--rounds", "1"],
        ["--results", same],
        ["--no-such-flag"],
    ]
    for argv in bad_inputs:
        assert regress.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.strip(), argv


def test_malformed_samples_are_bad_input() -> None:
    for samples in ([], [1.0, -1.0], [1.0, math.inf], ["1"]):
        doc = _doc({"m": (samples, "lower-is-better")})  # type: ignore[dict-item]
        with pytest.raises(regress.BadInput):
            regress.parse_document(doc, "doc")
    with pytest.raises(regress.BadInput):
        regress.parse_document(_doc({"m": ([1.0], "sideways")}), "doc")


def test_budget_verdicts_say_met_missed_or_unconfirmed() -> None:
    assert verdict(1.03, 1.05, higher_is_better=False, load=9.0, cores=2) == "met"
    assert verdict(0.95, 0.9, higher_is_better=True, load=0.5, cores=2) == "met"
    assert verdict(1.10, 1.05, higher_is_better=False, load=0.5, cores=2) == "missed by 4.8%"
    under_load = verdict(0.80, 0.9, higher_is_better=True, load=9.0, cores=2)
    assert under_load == "unconfirmed under load 9.0 on 2 cores (median missed by 11.1%)"
    assert verdict(0.45, 0.9, higher_is_better=True, load=0.5, cores=2) == "missed by 50.0%"
    # met on the median, but the rounds straddle the limit on an overloaded machine
    straddling = verdict(1.01, 1.05, higher_is_better=False, load=9.0, cores=2, spread=(0.6, 1.6))
    assert straddling.startswith("unconfirmed under load 9.0 on 2 cores (median met; rounds")
    # the same spread on a quiet machine: the median decides
    assert (
        verdict(1.01, 1.05, higher_is_better=False, load=1.0, cores=2, spread=(0.6, 1.6)) == "met"
    )
    # every round within the limit: met even under load
    assert (
        verdict(21.3, 30.0, higher_is_better=False, load=20.0, cores=2, spread=(8, 21.3)) == "met"
    )


def test_a_real_short_measurement_gives_comparable_ratios(pg: PostgresServer, shop_db: str) -> None:
    """Fingerprint and capture subsets, 3 rounds each (a few seconds), on real loops."""
    metrics = regress.measure_fingerprint(3, statements=300, stream_length=20_000)
    metrics += regress.measure_capture(pg.socket_url(shop_db), 3)
    names = {m.name for m in metrics}
    assert names == {"fingerprint.cold", "fingerprint.cached", "capture.orm-n+1", "capture.core"}
    for m in metrics:
        assert len(m.samples) == 3
        assert all(math.isfinite(v) and v > 0 for v in m.samples)
    by_name = {m.name: m for m in metrics}
    # the cached path must be far cheaper than normalising from scratch: both are measured
    # against cheap peers (a dict look-up, a regex), so cached/dict < cold/regex * 20
    assert by_name["fingerprint.cached"].median < 20 * by_name["fingerprint.cold"].median
    doc = regress.make_document(metrics, rounds=3, seconds=1.0)
    parsed = regress.parse_document(json.loads(json.dumps(doc)), "measured")
    assert regress.compare(parsed, parsed).exit_code == 0


def test_a_baseline_combined_from_runs_holds_every_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = _doc({"capture.core": ([1.0, 1.1, 1.2], "lower-is-better")})
    two = _doc(
        {
            "capture.core": ([1.3, 1.4, 1.5], "lower-is-better"),
            "only.here": ([1.0, 1.0, 1.0], "lower-is-better"),
        }
    )
    merged = regress.combine([one, two])
    metrics = regress.parse_document(merged, "merged")
    assert set(metrics) == {"capture.core"}  # a metric missing from a run is dropped
    assert metrics["capture.core"].samples == (1.0, 1.1, 1.2, 1.3, 1.4, 1.5)
    assert metrics["capture.core"].median == pytest.approx(1.25)

    out = tmp_path / "baseline.json"
    files = [_write(tmp_path, "one.json", one), _write(tmp_path, "two.json", two)]
    assert regress.main(["--write-baseline", str(out), "--combine", *files]) == 0
    assert regress.load_document(str(out))["capture.core"].high == pytest.approx(1.5)
    assert regress.main(["--combine", *files]) == 2
    assert "--write-baseline" in capsys.readouterr().err
