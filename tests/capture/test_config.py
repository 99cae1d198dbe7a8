"""[tool.dbprobe] parsing: types, unknown keys, matchers, relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbprobe.config import ConfigError, DbprobeConfig, Matcher, load_config, parse_config


def test_defaults_without_pyproject(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config == DbprobeConfig(root=str(tmp_path.resolve()))
    assert config.n_plus_one_threshold == 2


def test_full_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        """
[tool.dbprobe]
app_paths = ["src/app"]
n_plus_one_threshold = 3
fail_on = "n-plus-one, redundant-query"
explain = true
report = "out/report.json"

[[tool.dbprobe.ignore]]
rule = "n-plus-one"
location = "src/app/legacy/*"

[[tool.dbprobe.allow]]
relationship = "Order.customer"
reason = "reviewed"
"""
    )
    (tmp_path / "sub").mkdir()
    config = load_config(tmp_path / "sub")
    assert config.app_paths == (str((tmp_path / "src" / "app").resolve()),)
    assert config.n_plus_one_threshold == 3
    assert config.fail_on == ("n-plus-one", "redundant-query")
    assert config.explain is True
    assert config.report == "out/report.json"
    assert config.ignore == (Matcher(rule="n-plus-one", location="src/app/legacy/*"),)
    assert config.allow[0].reason == "reviewed"
    assert config.root == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"n_plus_one_treshold": 3}, "unknown key(s) n_plus_one_treshold"),
        ({"n_plus_one_threshold": 0}, "expected a positive integer"),
        ({"explain": "yes"}, "expected true or false"),
        ({"fail_on": "n-plus-two"}, "unknown rule id(s) n-plus-two"),
        ({"ignore": [{"rule": "n-plus-one", "path": "x"}]}, "unknown key(s) path"),
        ({"ignore": {"rule": "x"}}, "expected an array of tables"),
        ({"app_paths": [1]}, "expected a list of strings"),
    ],
)
def test_errors_are_one_clear_line(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_config(table)
    assert "\n" not in str(info.value)


def test_other_sections_are_left_to_their_owners() -> None:
    config = parse_config({"slo": {"query_p95_ms": 5}, "n_plus_one_threshold": 4})
    assert config.n_plus_one_threshold == 4


def test_matcher_location_and_fingerprint() -> None:
    m = Matcher(location="app/*.py", fingerprint="select * from audit*")
    keys = {
        "rule": "n-plus-one",
        "location": "app/x.py:3",
        "fingerprint": "0123456789abcdef",
        "relationship": None,
        "test": None,
    }
    assert m.matches(normalized_sql="select * from audit_log where id = ?", **keys)
    assert not m.matches(normalized_sql="select * from users", **keys)
    assert Matcher(fingerprint="0123456789abcdef").matches(normalized_sql=None, **keys)
