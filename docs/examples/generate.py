"""Regenerate the example reports in this folder from a real run.

    python docs/examples/generate.py

Starts a throwaway PostgreSQL, measures connection cold start and a psycopg_pool at
1/2/4/8 workers, runs a real N+1 loop and EXPLAINs a real sequential scan (see
tests/reports/samples.py), writes the report in every format, compares it with a second
run whose pooled queries each sleep 2 ms, and takes a screenshot of the HTML report when
chromium is installed. The numbers are this machine's, measured now.
"""

from __future__ import annotations

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
from dbprobe.pg import throwaway  # noqa: E402
from dbprobe.report.render import render  # noqa: E402
from dbprobe.report.schema import validate_report  # noqa: E402
from tests.reports.samples import build_sample_report  # noqa: E402

FILES = {
    "table": "report.txt",
    "json": "report.json",
    "markdown": "report.md",
    "html": "report.html",
    "sarif": "report.sarif",
}


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
                "--window-size=1100,2400",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return True


def main() -> None:
    with throwaway() as pg:
        report = build_sample_report(pg)
        slow = build_sample_report(pg, pool_sql="SELECT pg_sleep(0.002)")
    validate_report(report.to_dict())
    for fmt, name in FILES.items():
        (HERE / name).write_text(render(report, fmt), encoding="utf-8")
    comparison = compare_documents(report.to_dict(), slow.to_dict())
    (HERE / "compare.txt").write_text(COMPARE_RENDERERS["table"](comparison), encoding="utf-8")
    (HERE / "compare.md").write_text(COMPARE_RENDERERS["markdown"](comparison), encoding="utf-8")
    shot = screenshot(HERE / "report.html", HERE / "report.png")
    sys.stderr.write(f"wrote {', '.join(FILES.values())}, compare.txt, compare.md")
    sys.stderr.write(", report.png\n" if shot else " (no chromium: no screenshot)\n")


if __name__ == "__main__":
    main()
