"""dbprobe's project configuration: ``[tool.dbprobe]`` in ``pyproject.toml``.

::

    [tool.dbprobe]
    app_paths = ["src/shop"]            # always application code (call sites)
    n_plus_one_threshold = 3            # repeats before an N+1 is reported (default 2)
    fail_on = ["n-plus-one"]            # pytest plugin default for --dbprobe-fail-on

    [[tool.dbprobe.ignore]]             # never report these
    rule = "n-plus-one"
    location = "src/shop/legacy/*"      # call-site glob ("path" or "path:line")

    [[tool.dbprobe.allow]]              # report, but as info, and never fail on them
    relationship = "Order.customer"

Everything is resolved once into a frozen :class:`DbprobeConfig`; the pytest plugin's
ini keys and command-line flags override it (flag > ini > pyproject > default).
Relative paths are relative to the directory of ``pyproject.toml``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dbprobe.errors import UsageError

__all__ = ["ConfigError", "DbprobeConfig", "Matcher", "find_pyproject", "load_config"]


class ConfigError(UsageError):
    """``[tool.dbprobe]`` is malformed."""


@dataclasses.dataclass(frozen=True)
class Matcher:
    """Selects findings by rule id, call-site glob, SQL fingerprint pattern, relationship
    name or test node id; every field that is set must match.

    location: glob against ``path:line`` and ``path`` (relative to the project root);
    fingerprint: the 16-hex-digit fingerprint, or a glob against the normalised SQL
    (``"select * from audit_log*"``); relationship: glob against ``"Order.customer"``.
    """

    rule: str | None = None
    location: str | None = None
    fingerprint: str | None = None
    relationship: str | None = None
    test: str | None = None
    reason: str | None = None

    def matches(
        self,
        *,
        rule: str,
        location: str | None,
        fingerprint: str | None,
        normalized_sql: str | None,
        relationship: str | None,
        test: str | None,
    ) -> bool:
        if self.rule is not None and self.rule != rule:
            return False
        if self.location is not None:
            if location is None:
                return False
            path = location.rpartition(":")[0] if ":" in location else location
            if not (
                fnmatch.fnmatchcase(location, self.location)
                or fnmatch.fnmatchcase(path, self.location)
            ):
                return False
        if self.fingerprint is not None:
            pattern = self.fingerprint
            if not (
                pattern == fingerprint
                or (normalized_sql is not None and fnmatch.fnmatchcase(normalized_sql, pattern))
            ):
                return False
        if self.relationship is not None and not (
            relationship is not None and fnmatch.fnmatchcase(relationship, self.relationship)
        ):
            return False
        return not (
            self.test is not None
            and not (test is not None and fnmatch.fnmatchcase(test, self.test))
        )

    @classmethod
    def parse(cls, raw: Any, where: str) -> Matcher:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: each entry must be a table, got {raw!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - fields
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(use {', '.join(sorted(fields))})"
            )
        values = {}
        for key, value in raw.items():
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
            values[key] = value
        if not (set(values) - {"reason", "rule"}) and "rule" not in values:
            raise ConfigError(f"{where}: an entry needs at least one of {sorted(fields)}")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class DbprobeConfig:
    """Resolved configuration (immutable; derive variants with :meth:`replace`).

    root: directory locations are reported relative to (default: the directory of
    pyproject.toml, else the current directory). app_paths / library_paths: extra
    directories that are always / never application code for call sites.
    n_plus_one_threshold: a statement shape repeated this many times from one call
    site with different parameters is an N+1 (default 2). redundant_threshold: the same
    statement with the same parameters this many times is redundant (default 2).
    joinedload_row_ratio / joinedload_min_rows: a joined eager load returning at least
    this many rows per parent (default 10) and this many rows in all (default 100) is
    reported. unused_eager_loads: report eager-loaded relationships never read.
    ignore / allow: findings dropped / downgraded to info and never failing.
    explain_verify: how ``explain`` verifies index advice for captured statements:
    ``auto`` (hypopg when the database has it), ``hypopg``, ``real`` (a real index in a
    rolled-back transaction: only for disposable test databases) or ``none``;
    explain_min_rows: relations smaller than this are never reported (default 10,000).
    The rest are pytest plugin defaults (see docs/pytest-plugin.md).
    """

    root: str | None = None
    app_paths: tuple[str, ...] = ()
    library_paths: tuple[str, ...] = ()
    n_plus_one_threshold: int = 2
    redundant_threshold: int = 2
    joinedload_row_ratio: float = 10.0
    joinedload_min_rows: int = 100
    unused_eager_loads: bool = True
    ignore: tuple[Matcher, ...] = ()
    allow: tuple[Matcher, ...] = ()
    # pytest plugin defaults
    enabled: bool = False
    report: str | None = None
    fail_on: tuple[str, ...] = ()
    baseline: str | None = None
    explain: bool = False
    explain_verify: str = "auto"
    explain_min_rows: int = 10_000
    verify_fixes: bool = False
    max_queries: int | None = None
    report_parameters: bool = False
    source: str | None = None
    """The pyproject.toml this came from, if any."""

    def replace(self, **changes: Any) -> DbprobeConfig:
        return dataclasses.replace(self, **changes)


_INT_KEYS = (
    "n_plus_one_threshold", "redundant_threshold", "joinedload_min_rows", "max_queries",
    "explain_min_rows",
)  # fmt: skip
EXPLAIN_VERIFY = ("auto", "hypopg", "real", "none")
_FLOAT_KEYS = ("joinedload_row_ratio",)
_BOOL_KEYS = ("unused_eager_loads", "enabled", "explain", "verify_fixes", "report_parameters")
_PATH_LIST_KEYS = ("app_paths", "library_paths")
_STR_KEYS = ("report", "baseline", "root")


def find_pyproject(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (default: cwd)."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(
                "reading pyproject.toml on Python 3.10 needs tomli (pip install tomli)"
            ) from None
    try:
        with path.open("rb") as fh:
            return dict(tomllib.load(fh))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def parse_config(
    table: Mapping[str, Any], base: Path | None = None, source: str | None = None
) -> DbprobeConfig:
    """Validate a ``[tool.dbprobe]`` table. Unknown keys and wrong types raise
    :class:`ConfigError` with one clear line."""
    known = {f.name for f in dataclasses.fields(DbprobeConfig)} - {"source"}
    # Sub-tables ([tool.dbprobe.slo], ...) belong to other parts of dbprobe.
    table = {k: v for k, v in table.items() if k in known or not isinstance(v, Mapping)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(
            f"[tool.dbprobe]: unknown key(s) {', '.join(sorted(unknown))}"
            f" (known: {', '.join(sorted(known))})"
        )
    base = base or Path(os.getcwd())
    values: dict[str, Any] = {"source": source, "root": str(base)}
    for key, value in table.items():
        where = f"[tool.dbprobe] {key}"
        if key in _INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
            values[key] = value
        elif key in _FLOAT_KEYS:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where}: expected a positive number, got {value!r}")
            values[key] = float(value)
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
            values[key] = value
        elif key in _PATH_LIST_KEYS:
            values[key] = tuple(str((base / p).resolve()) for p in _str_list(value, where))
        elif key in _STR_KEYS:
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected a string, got {value!r}")
            values[key] = str((base / value).resolve()) if key == "root" else value
        elif key == "explain_verify":
            if value not in EXPLAIN_VERIFY:
                raise ConfigError(f"{where}: expected one of {', '.join(EXPLAIN_VERIFY)}")
            values[key] = value
        elif key == "fail_on":
            values[key] = parse_rule_list(value, where)
        elif key in ("ignore", "allow"):
            if not isinstance(value, list):
                raise ConfigError(f"{where}: expected an array of tables ([[tool.dbprobe.{key}]])")
            values[key] = tuple(Matcher.parse(raw, f"{where}[{i}]") for i, raw in enumerate(value))
    return DbprobeConfig(**values)


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


def parse_rule_list(value: Any, where: str = "fail_on") -> tuple[str, ...]:
    """``"n-plus-one,redundant-query"`` or a list → rule ids, checked against the registry
    (``all`` means every rule)."""
    from dbprobe.rules import RULES

    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{where}: expected rule ids, got {value!r}")
    rules = tuple(v for v in items if v)
    if "all" in rules:
        return tuple(RULES)
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ConfigError(
            f"{where}: unknown rule id(s) {', '.join(unknown)} (known: {', '.join(sorted(RULES))})"
        )
    return rules


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime: float) -> DbprobeConfig:
    file = Path(path)
    data = _read_toml(file)
    table = data.get("tool", {}).get("dbprobe", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{file}: [tool.dbprobe] must be a table")
    return parse_config(table, base=file.parent, source=str(file))


def load_config(start: str | os.PathLike[str] | None = None) -> DbprobeConfig:
    """The ``[tool.dbprobe]`` configuration of the project at or above ``start``
    (default: cwd); defaults when there is no pyproject.toml. Cached by file and mtime."""
    path = find_pyproject(start)
    if path is None:
        return DbprobeConfig(root=str(Path(start or os.getcwd()).resolve()))
    return _load_cached(str(path), path.stat().st_mtime)


def merge_matchers(*groups: Iterable[Matcher]) -> tuple[Matcher, ...]:
    out: list[Matcher] = []
    for group in groups:
        out.extend(group)
    return tuple(out)
