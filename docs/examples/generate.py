"""Regenerate the example reports in this folder from two real ``dbprobe demo`` runs.

    python docs/examples/generate.py

Runs ``dbprobe demo`` twice from the repository root (each starts a throwaway
PostgreSQL, builds the shop fixture app with its planted problems and runs every probe:
capture, leaks, audit, cold start, pool stress), writes the first run's report in every
format, compares the second run with the first (two runs of the same code: the gate
should pass), and takes a screenshot of the HTML report when chromium is installed. The
numbers are this machine's, measured now; paths in the SARIF file are relative to the
repository root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from dbprobe.compare import compare_documents  # noqa: E402
from dbprobe.compare.render import COMPARE_RENDERERS  # noqa: E402
from dbprobe.report.model import Report  # noqa: E402
from dbprobe.report.render import render  # noqa: E402
from dbprobe.report.schema import validate_report  # noqa: E402

FILES = {
    "table": "report.txt",
    "json": "report.json",
    "markdown": "report.md",
    "html": "report.html",
    "sarif": "report.sarif",
}


def run_demo(out: Path) -> dict[str, object]:
    """One ``dbprobe demo`` run from the repository root; its JSON report."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "dbprobe.cli", "demo", "--format", "json", "-o", str(out)],
        cwd=ROOT,
        env=env,
        check=False,
        timeout=900,
    )
    if proc.returncode not in (0, 1):  # 1: the demo's planted problems are findings
        raise SystemExit(f"dbprobe demo failed with exit code {proc.returncode}")
    doc: dict[str, object] = json.loads(out.read_text(encoding="utf-8"))
    validate_report(doc)
    return doc


def screenshot(page: Path, png: Path) -> bool:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return False
    with tempfile.TemporaryDirectory(prefix="dbprobe-chromium-") as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                "--window-size=1100,3600",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return True


SHOT_FINDINGS = 2
"""Findings kept in the screenshot's page, so the measurements (cold-start phases, pool
throughput, acquire wait and failed share) fit in the picture below them."""


def report_screenshot(report: Report) -> bool:
    """``report.png``: the HTML report of ``report`` with its first findings and every
    chart (the full page is report.html)."""
    import dataclasses

    shown = dataclasses.replace(report) if dataclasses.is_dataclass(report) else report
    shown.findings = report.sorted_findings()[:SHOT_FINDINGS]
    shown.notes = []
    with tempfile.TemporaryDirectory(prefix="dbprobe-shot-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(render(shown, "html"), encoding="utf-8")
        return screenshot(page, HERE / "report.png")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dbprobe-examples-") as tmp:
        first = run_demo(Path(tmp) / "first.json")
        second = run_demo(Path(tmp) / "second.json")
    report = Report.from_dict(first)
    cwd = Path.cwd()
    os.chdir(ROOT)  # SARIF paths are relative to the project root
    try:
        for fmt, name in FILES.items():
            (HERE / name).write_text(render(report, fmt), encoding="utf-8")
    finally:
        os.chdir(cwd)
    comparison = compare_documents(first, second, base_source="demo run 1", new_source="demo run 2")
    (HERE / "compare.txt").write_text(COMPARE_RENDERERS["table"](comparison), encoding="utf-8")
    (HERE / "compare.md").write_text(COMPARE_RENDERERS["markdown"](comparison), encoding="utf-8")
    shot = report_screenshot(report)
    sys.stderr.write(f"wrote {', '.join(FILES.values())}, compare.txt, compare.md")
    sys.stderr.write(", report.png\n" if shot else " (no chromium: no screenshot)\n")


if __name__ == "__main__":
    main()
