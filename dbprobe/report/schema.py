"""The JSON Schema of ``dbprobe.report/1`` and a validator for it."""

from __future__ import annotations

import datetime as _dt
import json
import re
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
    """Raise :class:`DbprobeError` naming the first violation (needs ``jsonschema``).

    Every distribution anywhere in ``metrics`` is checked against
    ``$defs/distribution``, and ``started_at`` must be an RFC 3339 date-time."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a test extra
        raise DbprobeError("validating reports needs jsonschema (pip install jsonschema)") from None
    validator = jsonschema.Draft202012Validator(report_schema(), format_checker=_formats())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.path) or "(document)"
        raise DbprobeError(f"report does not match dbprobe.report/1 at {where}: {err.message}")


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def is_rfc3339(value: object) -> bool:
    """An RFC 3339 ``date-time`` (``2026-11-27T10:00:00Z``): the shape, and a real date
    and time. Non-strings pass (the schema's ``type`` checks those)."""
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    try:
        _dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@cache
def _formats() -> Any:
    """A format checker that enforces ``date-time`` without an optional dependency."""
    import jsonschema

    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(is_rfc3339)
    return checker
