"""Fixtures for the report, compare and SLO tests: reports built from real measurements
against the session's throwaway server (see ``samples.py``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dbprobe.pg import PostgresServer
from dbprobe.report.model import Report
from dbprobe.report.schema import validate_report
from tests.reports.samples import build_sample_report


@pytest.fixture(scope="session")
def sample_report(pg: PostgresServer) -> Report:
    """A demo-like report: cold start, a psycopg_pool at 1/2/4/8 workers, real findings."""
    report = build_sample_report(pg)
    validate_report(report.to_dict())
    return report


@pytest.fixture(scope="session")
def _sample_doc(sample_report: Report) -> dict[str, Any]:
    return sample_report.to_dict()


@pytest.fixture
def sample_doc(_sample_doc: dict[str, Any]) -> dict[str, Any]:
    """The sample report's JSON document (a fresh copy per test)."""
    return copy.deepcopy(_sample_doc)


@pytest.fixture(scope="session")
def _slow_doc(pg: PostgresServer) -> dict[str, Any]:
    # the same workload with every pooled query 25 ms slower (pg_sleep on the server): a
    # shift well above the scheduling noise of a loaded 2-core machine, even at c=8
    report = build_sample_report(pg, step_s=0.4, pool_sql="SELECT pg_sleep(0.025)")
    doc = report.to_dict()
    validate_report(doc)
    return doc


@pytest.fixture
def slow_doc(_slow_doc: dict[str, Any]) -> dict[str, Any]:
    """A report of the same workload where each pooled query really sleeps 25 ms."""
    return copy.deepcopy(_slow_doc)
