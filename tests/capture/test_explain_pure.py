"""PlanCost on real EXPLAIN (FORMAT JSON) output saved by tests/data/plans (no database)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbprobe.capture.explain import PlanCost, _to_pyformat

PLANS = Path(__file__).resolve().parents[1] / "data" / "plans"


@pytest.mark.parametrize("version", ["pg15", "pg18"])
def test_primary_key_lookup(version: str) -> None:
    saved = json.loads((PLANS / f"indexed-pk.{version}.json").read_text())
    cost = PlanCost.from_explain(saved["plan"])
    assert cost.node == "Index Scan"
    assert cost.relation == "orders"
    assert cost.index == "orders_pkey"
    assert 0 < cost.startup_cost <= cost.total_cost
    assert cost.plan_rows == 1
    assert PlanCost.from_explain(json.dumps(saved["plan"])) == cost


def test_join_reads_its_first_relation() -> None:
    saved = json.loads((PLANS / "hash-join-large-probe.pg15.json").read_text())
    cost = PlanCost.from_explain(saved["plan"])
    assert cost.node in ("Hash Join", "Gather", "Sort", "Aggregate", "Limit", "HashAggregate")
    assert cost.relation is not None
    assert cost.total_cost > 0


def test_not_a_plan() -> None:
    with pytest.raises(ValueError, match="EXPLAIN"):
        PlanCost.from_explain({"nope": 1})


def test_dollar_placeholders_become_pyformat() -> None:
    sql, params = _to_pyformat("SELECT a FROM t WHERE b = $2 AND c = $1 AND d LIKE 'x%'", (1, 2))
    assert sql == "SELECT a FROM t WHERE b = %s AND c = %s AND d LIKE 'x%%'"
    assert params == (2, 1)
    assert _to_pyformat("SELECT %(x)s", {"x": 1}) == ("SELECT %(x)s", {"x": 1})
