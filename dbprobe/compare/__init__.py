"""Baselines and regression gating: ``dbprobe compare BASE NEW``.

Pure analysis (:mod:`.stats`, :mod:`.checks`, :mod:`.diff`) apart from output
(:mod:`.render`); saved runs live in :mod:`dbprobe.runs`.
"""

from __future__ import annotations

from dbprobe.compare.checks import (
    DEFAULT_SPECS,
    MetricChange,
    MetricCheck,
    build_checks,
    parse_check,
)
from dbprobe.compare.diff import COMPARE_SCHEMA_ID, Comparison, RunInfo, compare_documents

__all__ = [
    "COMPARE_SCHEMA_ID",
    "DEFAULT_SPECS",
    "Comparison",
    "MetricChange",
    "MetricCheck",
    "RunInfo",
    "build_checks",
    "compare_documents",
    "parse_check",
]
