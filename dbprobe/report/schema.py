"""The JSON Schema of ``dbprobe.report/1`` and a validator for it."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from dbprobe.errors import DbprobeError


@cache
def report_schema() -> dict[str, Any]:
    text = resources.files("dbprobe.schemas").joinpath("report.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_report(document: dict[str, Any]) -> None:
    """Raise :class:`DbprobeError` naming the first violation (needs ``jsonschema``)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a test extra
        raise DbprobeError("validating reports needs jsonschema (pip install jsonschema)") from None
    validator = jsonschema.Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.path) or "(document)"
        raise DbprobeError(f"report does not match dbprobe.report/1 at {where}: {err.message}")
    _check_distributions(document.get("metrics", {}), "metrics")


def _check_distributions(node: Any, path: str) -> None:
    from dbprobe.report.model import is_distribution

    if is_distribution(node):
        for key in ("n", "p50", "p95", "p99", "max"):
            if key not in node:
                raise DbprobeError(f"distribution at {path} lacks {key}")
        return
    if isinstance(node, dict):
        for k, v in node.items():
            _check_distributions(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_distributions(v, f"{path}/{i}")
