"""Baseline files (pure, no database): keys, load/save, the ratchet."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbprobe.baseline import SCHEMA, Baseline, BaselineEntry, finding_key
from dbprobe.errors import UsageError

N1 = {
    "rule": "n-plus-one",
    "location": "src/app/orders.py:24",
    "fingerprint": "a22c129b57ca006f",
    "message": "Order.customer lazy-loaded 25 times in one test (many-to-one)",
}


def test_key_ignores_the_line_number() -> None:
    moved = dict(N1, location="src/app/orders.py:31")
    assert finding_key(N1) == finding_key(moved) == "n-plus-one|src/app/orders.py|a22c129b57ca006f"
    assert finding_key(dict(N1, location="src/app/other.py:24")) != finding_key(N1)


def test_round_trip_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "baseline.json"
    assert Baseline.load(path).tests == {}
    baseline = Baseline().updated({"t::a": (26, [N1]), "t::b": (1, [])})
    baseline.save(path)
    assert SCHEMA in path.read_text()
    loaded = Baseline.load(path)
    assert loaded.tests["t::a"] == BaselineEntry(26, (finding_key(N1),))
    assert loaded.allows("t::b") == 1
    assert loaded.allows("t::new") is None


def test_ratchet_semantics() -> None:
    baseline = Baseline().updated({"t::a": (26, [N1])})
    assert baseline.new_findings("t::a", [N1]) == []
    other = dict(N1, fingerprint="ffffffffffffffff")
    assert baseline.new_findings("t::a", [N1, other]) == [other]
    assert baseline.new_findings("t::fresh", [N1]) == [N1]
    assert baseline.improved("t::a", 1) and not baseline.improved("t::a", 26)
    tightened = baseline.updated({"t::a": (1, [])})
    assert tightened.tests["t::a"] == BaselineEntry(1, ())
    kept = Baseline({"t::x": BaselineEntry(3)}).updated({"t::a": (2, [])})
    assert set(kept.tests) == {"t::x", "t::a"}


def test_bad_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('{"schema": "something else"}')
    with pytest.raises(UsageError, match="is not a dbprobe baseline"):
        Baseline.load(path)
    path.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read the dbprobe baseline"):
        Baseline.load(path)
