"""dbprobe's pytest plugin (registered through the ``pytest11`` entry point).

Inactive until asked for: ``--dbprobe`` (or ``dbprobe = true`` in the ini file) captures
every test; a test that uses the ``dbprobe`` fixture or carries
``@pytest.mark.dbprobe(...)`` is captured even without it. Nothing here imports
SQLAlchemy until a test is actually captured, so the plugin costs nothing in runs that
do not use it.

Every option exists as a flag and as an ini key of the same name with underscores;
the flag wins over the ini key, which wins over ``[tool.dbprobe]`` in pyproject.toml.
See docs/pytest-plugin.md.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dbprobe.capture.log import QueryLog, StatementRecord
    from dbprobe.capture.scope import Capture
    from dbprobe.config import DbprobeConfig
    from dbprobe.report.model import Finding

__all__ = ["DbprobeFixture", "Settings"]

_PLUGIN_NAME = "dbprobe-session"


@dataclasses.dataclass(frozen=True)
class _Option:
    flag: str
    kind: str  # bool, str, int, rules, paths
    help: str

    @property
    def ini(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def dest(self) -> str:
        return self.ini


OPTIONS: tuple[_Option, ...] = (
    _Option(
        "--dbprobe",
        "bool",
        "capture every SQLAlchemy statement of every test (sync and async) and run the "
        "N+1 / redundant-query detectors on each test",
    ),
    _Option(
        "--dbprobe-report", "str", "write the session's findings as a JSON report to this path"
    ),
    _Option(
        "--dbprobe-fail-on",
        "rules",
        "comma-separated rule ids (or 'all') that fail the test that caused them",
    ),
    _Option(
        "--dbprobe-max-queries",
        "int",
        "fail a test that runs more statements than this (the marker's max_queries wins)",
    ),
    _Option(
        "--dbprobe-n-plus-one-threshold",
        "int",
        "repeats of one statement shape from one line that make an N+1 (default 2)",
    ),
    _Option(
        "--dbprobe-baseline",
        "str",
        "query-count baseline file: fail only on higher statement counts or new findings",
    ),
    _Option(
        "--dbprobe-baseline-update",
        "bool",
        "rewrite the baseline with this run's counts and findings (a ratchet)",
    ),
    _Option(
        "--dbprobe-explain",
        "bool",
        "EXPLAIN each distinct captured statement with its parameters: unindexed look-ups "
        "with verified index advice, and the cost of each N+1 (PostgreSQL only)",
    ),
    _Option(
        "--dbprobe-verify-fixes",
        "bool",
        "re-run tests with N+1 findings with the suggested loader option applied and report "
        "the statement counts before and after (only for tests safe to run twice)",
    ),
    _Option(
        "--dbprobe-app-path",
        "paths",
        "directory whose code counts as application code for call sites (repeatable)",
    ),
    _Option(
        "--dbprobe-report-parameters",
        "bool",
        "include bound parameter values in the JSON report (off: values stay out)",
    ),
)

_MARKER_KEYS: dict[str, Any] = {
    "max_queries": int,
    "fail_on": (str, list, tuple),
    "n_plus_one_threshold": int,
    "redundant_threshold": int,
    "explain": bool,
    "verify_fixes": bool,
    "enabled": bool,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The plugin's resolved settings (flag > ini > ``[tool.dbprobe]`` > default)."""

    config: DbprobeConfig
    enabled: bool
    report: str | None
    fail_on: tuple[str, ...]
    max_queries: int | None
    baseline: str | None
    baseline_update: bool
    explain: bool
    verify_fixes: bool
    report_parameters: bool


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbprobe", "dbprobe: SQLAlchemy statement capture and N+1 detection")
    for option in OPTIONS:
        if option.kind == "bool":
            group.addoption(option.flag, action="store_true", default=None, help=option.help)
            parser.addini(option.ini, option.help, type="bool", default=None)
        elif option.kind == "paths":
            group.addoption(
                option.flag, action="append", default=None, metavar="PATH", help=option.help
            )
            # The flag's name with underscores (dbprobe_app_path), and the plural that
            # earlier releases documented (dbprobe_app_paths); both are read.
            parser.addini(option.ini, option.help, type="linelist", default=None)
            parser.addini(option.ini + "s", option.help, type="linelist", default=None)
        else:
            metavar = {"int": "N", "rules": "RULES", "str": "PATH"}[option.kind]
            group.addoption(option.flag, default=None, metavar=metavar, help=option.help)
            parser.addini(option.ini, option.help, default=None)


def _raw(config: pytest.Config, option: _Option) -> tuple[Any, str] | None:
    """(value, where) from the flag, else the ini file, else ``None``."""
    value = config.getoption(option.dest, default=None)
    if value is not None:
        return value, option.flag
    names = (option.ini, option.ini + "s") if option.kind == "paths" else (option.ini,)
    for ini in names:
        value = config.getini(ini)  # None when unset (every key is declared with default=None)
        if value is not None and value != []:
            return value, f"ini {ini}"
    return None


def _to_int(value: Any, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"dbprobe: {where} expects a whole number, got {value!r}") from None
    if number < 1:
        raise pytest.UsageError(f"dbprobe: {where} must be at least 1, got {number}")
    return number


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise pytest.UsageError(f"dbprobe: {where} expects true or false, got {value!r}")


def resolve_settings(config: pytest.Config) -> Settings:
    """Resolve flags, ini keys and ``[tool.dbprobe]`` into :class:`Settings` (bad values
    raise ``pytest.UsageError`` with one line)."""
    from dbprobe.config import ConfigError, load_config, parse_rule_list

    try:
        base = load_config(str(config.rootpath))
    except ConfigError as exc:
        raise pytest.UsageError(f"dbprobe: {exc}") from None
    values: dict[str, Any] = {
        "enabled": base.enabled,
        "report": base.report,
        "fail_on": base.fail_on,
        "max_queries": base.max_queries,
        "baseline": base.baseline,
        "baseline_update": False,
        "explain": base.explain,
        "verify_fixes": base.verify_fixes,
        "report_parameters": base.report_parameters,
    }
    overrides: dict[str, Any] = {}
    for option in OPTIONS:
        found = _raw(config, option)
        if found is None:
            continue
        value, where = found
        key = option.dest.removeprefix("dbprobe_") if option.dest != "dbprobe" else "enabled"
        if option.kind == "bool":
            values[key] = _to_bool(value, where)
        elif option.kind == "int":
            number = _to_int(value, where)
            if key == "n_plus_one_threshold":
                overrides["n_plus_one_threshold"] = number
            else:
                values[key] = number
        elif option.kind == "rules":
            try:
                values[key] = parse_rule_list(value, where)
            except ConfigError as exc:
                raise pytest.UsageError(f"dbprobe: {exc}") from None
        elif option.kind == "paths":
            paths = [value] if isinstance(value, str) else list(value)
            overrides["app_paths"] = base.app_paths + tuple(
                str((config.rootpath / p).resolve()) for p in paths if p
            )
        else:
            values[key] = str(value)
    if values["baseline_update"] and not values["baseline"]:
        raise pytest.UsageError("dbprobe: --dbprobe-baseline-update needs --dbprobe-baseline PATH")
    if overrides:
        base = base.replace(**overrides)
    if base.root is None:
        base = base.replace(root=str(config.rootpath))
    return Settings(config=base, **values)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dbprobe(max_queries=None, fail_on=None, n_plus_one_threshold=None, "
        "redundant_threshold=None, explain=None, verify_fixes=None, enabled=True): "
        "capture this test's SQLAlchemy statements with these settings",
    )
    settings = resolve_settings(config)
    config.pluginmanager.register(DbprobeSession(config, settings), _PLUGIN_NAME)


@dataclasses.dataclass
class _TestState:
    """One test's capture and what came of it."""

    nodeid: str
    settings: Settings
    config: DbprobeConfig
    fail_on: tuple[str, ...]
    max_queries: int | None
    explain: bool
    verify_fixes: bool
    scope: Capture | None = None
    findings: list[Finding] = dataclasses.field(default_factory=list)
    analysed: bool = False
    started: float = 0.0

    @property
    def log(self) -> QueryLog:
        if self.scope is None:
            self.scope = _new_scope(self)
        return self.scope.log


def _new_scope(state: _TestState) -> Capture:
    from dbprobe.capture.scope import Capture

    return Capture(
        all_threads=True,
        app_paths=state.config.app_paths,
        library_paths=state.config.library_paths,
        use_project_config=False,  # resolved from the rootdir's pyproject.toml already
        name=state.nodeid,
        root=state.config.root,
    )


_STATE = pytest.StashKey[_TestState]()


class DbprobeFixture:
    """The ``dbprobe`` fixture: the current test's capture.

    ``statements`` (what ran so far), ``count``, ``findings`` (detectors over what ran
    so far), ``assert_max_queries(n)``, ``assert_no_n_plus_one()``, ``ignore(*rules)``,
    ``reset()``.
    """

    def __init__(self, state: _TestState) -> None:
        self._state = state

    @property
    def log(self) -> QueryLog:
        return self._state.log

    @property
    def statements(self) -> list[StatementRecord]:
        return list(self._state.log.statements)

    @property
    def count(self) -> int:
        return len(self._state.log.statements)

    @property
    def findings(self) -> list[Finding]:
        return _analyse(self._state, final=False)

    def reset(self) -> None:
        """Forget the statements captured so far (e.g. after arranging test data)."""
        self._state.log.clear()

    def ignore(self, *rules: str) -> Any:
        """``with dbprobe.ignore(): ...`` — see :func:`dbprobe.ignore`."""
        from dbprobe.capture.scope import ignore

        return ignore(*rules)

    def assert_max_queries(self, n: int) -> None:
        """Fail when more than ``n`` statements ran so far, listing them with call sites."""
        log = self._state.log
        if len(log) > n:
            raise AssertionError(
                f"dbprobe: {len(log)} statements ran, at most {n} expected:\n"
                + log.format_statements(root=self._state.config.root)
            )

    def assert_no_n_plus_one(self) -> None:
        """Fail when an N+1 was found so far, with the fix and the statements."""
        found = [f for f in self.findings if f.rule == "n-plus-one"]
        if found:
            raise AssertionError(
                "dbprobe: N+1 queries:\n"
                + "\n".join(_describe(f) for f in found)
                + "\nstatements:\n"
                + self._state.log.format_statements(root=self._state.config.root)
            )


@pytest.fixture
def dbprobe(request: pytest.FixtureRequest) -> DbprobeFixture:
    """The current test's statement capture (see :class:`DbprobeFixture`)."""
    session = request.config.pluginmanager.get_plugin(_PLUGIN_NAME)
    assert isinstance(session, DbprobeSession)
    item = request.node
    state = item.stash.get(_STATE, None)
    if state is None:
        state = session.state_for(item)
    return DbprobeFixture(state)


def _describe(finding: Finding) -> str:
    lines = [f"  {finding.severity.value} {finding.rule} at {finding.location or '?'}"]
    lines.append(f"      {finding.message}")
    evidence = finding.evidence
    parents = evidence.get("parents_loaded_at")
    if parents and parents not in finding.recommendation:
        lines.append(f"      parent rows loaded at {parents}")
    lines.append(f"      fix: {finding.recommendation}")
    verified = evidence.get("verified")
    if isinstance(verified, dict) and verified.get("error"):
        lines.append(
            f"      verified: the re-run with {verified['fix']} failed: {verified['error']}"
        )
    elif isinstance(verified, dict) and "queries_after" in verified:
        lines.append(
            f"      verified: {verified['queries_before']} → {verified['queries_after']} "
            f"statements with {verified['fix']}"
        )
    explain = evidence.get("explain")
    if isinstance(explain, dict):
        if "total_cost" in explain:
            relation = f" on {explain['relation']}" if explain.get("relation") else ""
            lines.append(
                f"      explain: {explain['node']}{relation}, cost {explain['total_cost']:g} "
                f"each, {explain['count_x_cost']:g} for all {finding.count}"
            )
        elif "error" in explain:
            lines.append(f"      explain: not available ({explain['error']})")
    return "\n".join(lines)


def _analyse(state: _TestState, final: bool) -> list[Finding]:
    from dbprobe.capture.analyzers import CaptureContext, analyze

    ctx = CaptureContext(
        config=state.config,
        test=state.nodeid,
        root=state.config.root,
        explain=state.explain and final,
    )
    findings = analyze(state.log, ctx)
    if final:
        state.findings = findings
        state.analysed = True
    return findings


class DbprobeSession:
    """Session-wide plugin object: per-test capture, checks, results, report."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.pytest_config = config
        self.settings = settings
        self.results: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, str | None] = {}
        self.worker = hasattr(config, "workerinput")
        self.started = time.time()
        self._baseline: Any = None
        self._verifying = False
        self._rerun_scope: Capture | None = None

    # -- which tests --------------------------------------------------------------------
    def _marker(self, item: pytest.Item) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for mark in reversed(list(item.iter_markers("dbprobe"))):  # closest marker wins
            if mark.args:
                pytest.fail(
                    f"dbprobe: {item.nodeid}: @pytest.mark.dbprobe takes keyword arguments only",
                    pytrace=False,
                )
            kwargs.update(mark.kwargs)
        for key, value in kwargs.items():
            expected = _MARKER_KEYS.get(key)
            if expected is None:
                pytest.fail(
                    f"dbprobe: {item.nodeid}: unknown marker argument {key!r} "
                    f"(use {', '.join(sorted(_MARKER_KEYS))})",
                    pytrace=False,
                )
            if value is not None and not isinstance(value, expected):
                pytest.fail(
                    f"dbprobe: {item.nodeid}: {key}={value!r} has the wrong type", pytrace=False
                )
        return kwargs

    def wants(self, item: pytest.Item) -> bool:
        marker = self._marker(item)
        if marker.get("enabled") is False:
            return False
        if self.settings.enabled or marker:
            return True
        return "dbprobe" in getattr(item, "fixturenames", ())

    def state_for(self, item: pytest.Item) -> _TestState:
        state = item.stash.get(_STATE, None)
        if state is not None:
            return state
        from dbprobe.config import ConfigError, parse_rule_list

        marker = self._marker(item)
        config = self.settings.config
        changes = {
            k: marker[k]
            for k in ("n_plus_one_threshold", "redundant_threshold")
            if marker.get(k) is not None
        }
        if changes:
            config = config.replace(**changes)
        fail_on = self.settings.fail_on
        if marker.get("fail_on") is not None:
            raw = marker["fail_on"]
            try:
                fail_on = parse_rule_list(list(raw) if not isinstance(raw, str) else raw)
            except ConfigError as exc:
                pytest.fail(f"dbprobe: {item.nodeid}: marker {exc}", pytrace=False)
        state = _TestState(
            nodeid=item.nodeid,
            settings=self.settings,
            config=config,
            fail_on=fail_on,
            max_queries=marker.get("max_queries", self.settings.max_queries),
            explain=bool(marker.get("explain", self.settings.explain)),
            verify_fixes=bool(marker.get("verify_fixes", self.settings.verify_fixes)),
        )
        item.stash[_STATE] = state
        return state

    # -- per test -----------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        if self._verifying:
            # A fix re-run: only its call phase is counted, as for the test itself.
            rerun = self._rerun_scope
            if rerun is None:
                return (yield)
            rerun.start()
            try:
                return (yield)
            finally:
                rerun.stop()
        if not self.wants(item):
            return (yield)
        state = self.state_for(item)
        scope = state.scope or _new_scope(state)
        state.scope = scope
        state.started = time.perf_counter()
        scope.start()
        try:
            result = yield
        except BaseException:
            scope.stop()
            self._finish(item, state, passed=False)
            raise
        scope.stop()
        failures = self._finish(item, state, passed=True)
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)
        return result

    def _finish(self, item: pytest.Item, state: _TestState, passed: bool) -> list[str]:
        """Analyse the test's log, record the result, return failure messages."""
        findings = _analyse(state, final=True)
        log = state.log
        failures: list[str] = []
        if passed:
            if state.max_queries is not None and len(log) > state.max_queries:
                failures.append(
                    f"dbprobe: {len(log)} statements ran, the budget is {state.max_queries} "
                    f"(max_queries):\n" + log.format_statements(root=state.config.root)
                )
            failing = [f for f in findings if f.rule in state.fail_on and not _allowed(f)]
            baseline = self.baseline()
            if baseline is not None and not self.settings.baseline_update:
                allowed_count = baseline.allows(item.nodeid)
                if allowed_count is not None and len(log) > allowed_count:
                    failures.append(
                        f"dbprobe: {len(log)} statements ran, the baseline "
                        f"{self.settings.baseline} allows {allowed_count}:\n"
                        + log.format_statements(root=state.config.root)
                    )
                # With a baseline only new findings fail: those of --dbprobe-fail-on
                # rules, or any warning or error when no rule is named.
                candidates = (
                    failing
                    if state.fail_on
                    else [f for f in findings if f.severity.rank > 0 and not _allowed(f)]
                )
                from dbprobe.baseline import finding_key

                dicts = [c.to_dict() for c in candidates]
                new_keys = {finding_key(d) for d in baseline.new_findings(item.nodeid, dicts)}
                failing = [
                    c for c, d in zip(candidates, dicts, strict=True) if finding_key(d) in new_keys
                ]
            if failing:
                why = (
                    f"findings of --dbprobe-fail-on rules ({', '.join(state.fail_on)})"
                    if state.fail_on
                    else "findings"
                )
                if self.settings.baseline and not self.settings.baseline_update:
                    why = "new " + why + f" (not in the baseline {self.settings.baseline})"
                failures.append(f"dbprobe: {why}:\n" + "\n".join(_describe(f) for f in failing))
        self._record(item, state, findings)
        return failures

    def _record(self, item: pytest.Item, state: _TestState, findings: list[Finding]) -> None:
        log = state.log
        kinds = log.by_kind()
        engines = {id(r.engine): r.engine for r in log.statements if r.engine is not None}
        for engine in engines.values():
            url = engine.url.render_as_string(hide_password=True)
            version = getattr(engine.dialect, "server_version_info", None)
            self.targets[url] = ".".join(str(v) for v in version) if version else None
        result: dict[str, Any] = {
            "statements": len(log),
            "duration_ms": round(log.duration_ms, 3),
            "kinds": kinds,
            "findings": [f.to_dict() for f in findings],
        }
        if self.settings.report_parameters:
            result["log"] = log.to_dict(with_parameters=True)
        self.results[item.nodeid] = result
        log.release()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        result = yield
        state = item.stash.get(_STATE, None)
        if state is not None and state.verify_fixes and not self._verifying and state.findings:
            self._verify(item, nextitem, state)
        return result

    def _verify(self, item: pytest.Item, nextitem: pytest.Item | None, state: _TestState) -> None:
        """Re-run the test once per applicable loader fix (--dbprobe-verify-fixes)."""
        from _pytest.runner import runtestprotocol

        from dbprobe.capture.scope import Capture
        from dbprobe.capture.verify import (
            failed,
            fixes_to_verify,
            loader_fix_applied,
            summarize,
            verification_key,
        )

        before = self.results[item.nodeid]["statements"]
        verified: dict[str, dict[str, Any]] = {}
        for finding, fix in fixes_to_verify(state.findings):
            scope = Capture(
                all_threads=True,
                app_paths=state.config.app_paths,
                library_paths=state.config.library_paths,
                root=state.config.root,
                use_project_config=False,
            )
            self._verifying = True
            self._rerun_scope = scope
            try:
                if hasattr(item, "_initrequest"):
                    item._initrequest()
                with loader_fix_applied([fix]):
                    reports = runtestprotocol(item, nextitem=nextitem, log=False)
            except Exception as exc:  # the re-run itself broke: report it, go on
                verified[verification_key(finding)] = failed(fix, exc)
                continue
            finally:
                self._verifying = False
                self._rerun_scope = None
            summary = summarize(fix, finding, before, scope.log, state.config.root)
            call = [r for r in reports if r.when == "call"]
            summary["rerun_passed"] = all(r.passed for r in call)
            if call and not summary["rerun_passed"]:
                crash = getattr(call[0].longrepr, "reprcrash", None)
                message = getattr(crash, "message", "") or "the re-run failed"
                summary["error"] = failed(fix, RuntimeError(message))["error"].partition(": ")[2]
            summary["note"] = (
                "statements of the test's call phase, before and after (fixtures not counted)"
            )
            verified[verification_key(finding)] = summary
        if not verified:
            return
        findings = self.results[item.nodeid]["findings"]
        for finding_dict in findings:
            key = f"{finding_dict.get('fingerprint')}@{finding_dict.get('location')}"
            if key in verified:
                finding_dict["evidence"]["verified"] = verified[key]

    # -- baseline ---------------------------------------------------------------------------
    def baseline(self) -> Any:
        if self.settings.baseline is None:
            return None
        if self._baseline is None:
            from dbprobe.baseline import Baseline
            from dbprobe.errors import UsageError

            try:
                self._baseline = Baseline.load(self._path(self.settings.baseline))
            except UsageError as exc:
                raise pytest.UsageError(f"dbprobe: {exc}") from None
        return self._baseline

    def _path(self, path: str) -> Path:
        return (self.pytest_config.rootpath / path).resolve()

    # -- xdist ------------------------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        raw = getattr(node, "workeroutput", {}).get("dbprobe")
        if not raw:
            return
        data = json.loads(raw)
        self.results.update(data.get("results", {}))
        self.targets.update(data.get("targets", {}))

    # -- end of session ---------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.settings.explain and "dbprobe.capture.plans" in sys.modules:
            sys.modules["dbprobe.capture.plans"].PLANS.close()  # no connection stays open
        if self.worker:
            workeroutput = getattr(self.pytest_config, "workeroutput", None)
            if workeroutput is not None:
                workeroutput["dbprobe"] = json.dumps(
                    {"results": self.results, "targets": self.targets}
                )
            return
        if not self.results:
            return
        if self.settings.baseline and self.settings.baseline_update:
            from dbprobe.baseline import Baseline

            current = Baseline.load(self._path(self.settings.baseline))
            updated = current.updated(
                {
                    node: (
                        r["statements"],
                        [
                            f
                            for f in r["findings"]
                            if f["severity"] != "info" and not f["evidence"].get("allowed")
                        ],
                    )
                    for node, r in self.results.items()
                }
            )
            updated.save(self._path(self.settings.baseline))
        if self.settings.report:
            self._write_report()

    def build_report(self) -> Any:
        import datetime as dt

        from dbprobe.report.model import Finding, Report, Target

        report = Report(command="pytest")
        report.started_at = dt.datetime.fromtimestamp(self.started, dt.timezone.utc)
        report.duration_s = time.time() - self.started
        report.target = Target(None, None)  # no statement captured
        if self.targets:
            urls = sorted(self.targets)
            versions = sorted({v for v in self.targets.values() if v})
            report.target = Target(
                urls[0] if len(urls) == 1 else f"{len(urls)} engines: " + ", ".join(urls),
                versions[0] if len(versions) == 1 else (", ".join(versions) or None),
            )
        tests: dict[str, Any] = {}
        for node in sorted(self.results):
            result = self.results[node]
            report.extend(Finding.from_dict(f) for f in result["findings"])
            entry = {k: v for k, v in result.items() if k != "findings"}
            tests[node] = entry
        report.metrics["capture"] = {
            "tests": tests,
            "statements": sum(r["statements"] for r in self.results.values()),
        }
        report.notes.append(
            "statements of each test's call phase (fixture setup and teardown excluded)"
        )
        if not self.settings.report_parameters:
            report.notes.append("bound parameter values are not included")
        return report

    def _write_report(self) -> None:
        from dbprobe.report.render import write_report

        assert self.settings.report is not None
        path = self._path(self.settings.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_report(self.build_report(), "json", str(path))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.worker or not self.results:
            return
        tr = terminalreporter
        with_findings = {n: r for n, r in self.results.items() if r["findings"]}
        total = sum(len(r["findings"]) for r in with_findings.values())
        statements = sum(r["statements"] for r in self.results.values())
        title = (
            f"dbprobe: {total} finding{'s' if total != 1 else ''} in {len(with_findings)} of "
            f"{len(self.results)} captured tests, {statements} statements"
        )
        tr.write_sep("=", title)
        from dbprobe.report.model import Finding

        for node in sorted(with_findings):
            result = with_findings[node]
            tr.write_line(
                f"{node}  ({result['statements']} statements, {result['duration_ms']} ms)"
            )
            for raw in result["findings"]:
                tr.write_line(_describe(Finding.from_dict(raw)))
        baseline = self.baseline() if self.settings.baseline else None
        if baseline is not None and not self.settings.baseline_update:
            improved = [n for n, r in self.results.items() if baseline.improved(n, r["statements"])]
            if improved:
                tr.write_line(
                    f"dbprobe: {len(improved)} test(s) now run fewer statements than the baseline; "
                    "--dbprobe-baseline-update tightens it"
                )
        if self.settings.baseline and self.settings.baseline_update:
            tr.write_line(f"dbprobe: baseline updated: {self._path(self.settings.baseline)}")
        if self.settings.report:
            tr.write_line(f"dbprobe: report written to {self._path(self.settings.report)}")


def _allowed(finding: Finding) -> bool:
    return bool(finding.evidence.get("allowed"))
