"""The JSON Schema of ``metrics.coldstart`` and a validator for it.

``dbprobe/schemas/coldstart-metrics.schema.json`` describes the tree a cold-start run
writes (drivers, phases, distributions in ms, ``detail``, ``warm``, ``process`` and the
``_meta`` facts). :func:`validate_coldstart_metrics` checks a tree against it, then
what a schema cannot say: each distribution's quantiles in order, its sample count,
and one count of samples per driver.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from dbprobe.errors import DbprobeError
from dbprobe.report.model import Distribution

SCHEMA_FILE = "coldstart-metrics.schema.json"


@cache
def coldstart_metrics_schema() -> dict[str, Any]:
    """The schema (a dict), loaded once from the ``dbprobe.schemas`` package."""
    text = resources.files("dbprobe.schemas").joinpath(SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_coldstart_metrics(tree: Mapping[str, Any]) -> None:
    """Raise :class:`DbprobeError` naming the first violation in ``tree`` (the value of
    ``report.metrics["coldstart"]``, with :class:`Distribution` objects or their JSON
    form). Needs ``jsonschema``."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a test extra
        raise DbprobeError("validating metrics needs jsonschema (pip install jsonschema)") from None
    doc = _plain(tree)
    validator = jsonschema.Draft202012Validator(coldstart_metrics_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.path) or "(root)"
        raise DbprobeError(f"metrics.coldstart does not match its schema at {where}: {err.message}")
    _check_distributions(doc, "coldstart")
    for name, node in doc.items():
        if name.startswith("_") or name in ("tcp_floor", "protocol"):
            continue
        n = node["total"]["n"]
        if node["_meta"]["samples"] != n:
            raise DbprobeError(f"coldstart/{name}: _meta.samples is not total.n ({n})")
        for phase in ("connect", "driver_init", "first_query"):
            if node[phase]["n"] != n:
                raise DbprobeError(f"coldstart/{name}/{phase}: n differs from total.n ({n})")
        if node["detail"]["connect_gap"]["n"] != n:
            raise DbprobeError(f"coldstart/{name}/detail/connect_gap: one difference per pair")
        pairing = node["_meta"]["pairing"]
        if pairing["protocol_first"] + pairing["driver_first"] != n:
            raise DbprobeError(f"coldstart/{name}/_meta/pairing: one entry per pair")


def _plain(node: Any) -> Any:
    if isinstance(node, Distribution):
        return node.to_dict()
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _check_distributions(node: Any, path: str) -> None:
    if isinstance(node, Mapping) and node.get("unit") == "ms" and "p50" in node:
        order = [node.get("min", node["p50"]), node["p50"], node["p95"], node["p99"], node["max"]]
        if any(a > b + 1e-9 for a, b in itertools.pairwise(order)):
            raise DbprobeError(f"{path}: quantiles out of order (min <= p50 <= p95 <= p99 <= max)")
        samples = node.get("samples")
        if samples is not None and len(samples) != node["n"]:
            raise DbprobeError(f"{path}: n is {node['n']} but there are {len(samples)} samples")
        return
    if isinstance(node, Mapping):
        for key, value in node.items():
            _check_distributions(value, f"{path}/{key}")
