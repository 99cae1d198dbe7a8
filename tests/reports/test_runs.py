"""Saved runs: numbering, commit facts, references."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dbprobe.errors import UsageError
from dbprobe.report.schema import validate_report
from dbprobe.runs import RunStore, commit_info, load_document


def test_numbered_runs_keep_machine_and_commit(tmp_path: Path, sample_doc: dict[str, Any]) -> None:
    store = RunStore(tmp_path / "runs")
    commit = {"id": "0123456789abcdef" * 2 + "01234567", "branch": "main", "dirty": False}
    first = store.save(sample_doc, commit=commit)
    second = store.save(sample_doc, commit=commit)
    assert (first.number, second.number) == (1, 2)
    assert first.path.name.startswith("0001_demo_") and first.path.name.endswith("_0123456789.json")
    saved = json.loads(second.path.read_text())
    validate_report(saved)
    assert saved["environment"]["commit"] == commit
    assert saved["environment"]["cpus"] == sample_doc["environment"]["cpus"]
    assert "commit" not in sample_doc["environment"]  # the input is not modified
    assert store.resolve("latest") == second.path
    assert store.resolve("latest~1") == first.path
    assert store.resolve("0001") == first.path
    with pytest.raises(UsageError, match="no saved run 'latest~2'"):
        store.resolve("latest~2")
    with pytest.raises(UsageError, match="neither a file nor a saved-run id"):
        store.resolve("yesterday")
    doc, source = load_document("latest", store)
    assert source == str(second.path) and doc["command"] == "demo"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_commit_info_from_git(tmp_path: Path) -> None:
    assert commit_info(tmp_path) is None
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "trunk", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "one"], check=True)
    info = commit_info(tmp_path)
    assert info is not None and len(info["id"]) == 40
    assert info["branch"] == "trunk" and info["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert commit_info(tmp_path)["dirty"] is True  # type: ignore[index]


def test_saving_something_else_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="only reports can be saved"):
        RunStore(tmp_path).save({"schema": "dbprobe.compare/1"})
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps({"schema": "dbprobe.report/1", "findings": [{"rule": "x"}]}))
    with pytest.raises(UsageError, match="malformed"):
        load_document(str(bad))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("p50", "a", "psycopg/total/p50 is not a number"),
        ("samples", ["x"], "psycopg/total/samples is not a list of numbers"),
        ("n", "lots", "psycopg/total/n is not a count"),
    ],
)
def test_junk_distributions_are_refused_with_the_field(
    tmp_path: Path, sample_doc: dict[str, Any], field: str, value: Any, message: str
) -> None:
    sample_doc["metrics"]["coldstart"]["psycopg"]["total"][field] = value
    path = tmp_path / "junk.json"
    path.write_text(json.dumps(sample_doc))
    with pytest.raises(UsageError) as err:
        load_document(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: metrics/coldstart/") and message in text
    # the schema refuses it too (every distribution under metrics is checked)
    from dbprobe.errors import DbprobeError

    with pytest.raises(DbprobeError):
        validate_report(sample_doc)


def test_numbering_survives_a_deleted_run_and_orders_by_number(
    tmp_path: Path, sample_doc: dict[str, Any]
) -> None:
    store = RunStore(tmp_path / "runs")
    saved = []
    # later runs with earlier timestamps: the order is the number, not the file name
    for stamp in ("2026-11-27T12:00:00Z", "2026-11-27T11:00:00Z", "2026-11-27T10:00:00Z"):
        doc = json.loads(json.dumps(sample_doc))
        doc["started_at"] = stamp
        saved.append(store.save(doc, commit=None))
    saved[1].path.unlink()
    fourth = store.save(sample_doc, commit=None)
    assert fourth.number == 4
    assert [r.number for r in store.runs()] == [1, 3, 4]
    assert store.resolve("latest") == fourth.path
    assert store.resolve("latest~1") == saved[2].path
