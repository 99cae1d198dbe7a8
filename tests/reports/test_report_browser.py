"""The HTML report in a real headless browser (Debian's chromium): it renders, the
charts are in the DOM, the screenshot is not blank, and the page fetches nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from dbprobe.report.model import Report
from dbprobe.report.render import render
from tests.reports.png import colour_stats

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    # the browser's own background requests (updates, accounts) must not leave the machine
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def chromium(page: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    """Run chromium on ``page`` with a fresh profile; ``(stdout, page requests)`` where
    page requests are the network requests the page itself started (from the NetLog;
    the browser's own background requests carry no origin and are left out)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="dbprobe-chromium-") as profile:
        netlog = Path(profile) / "netlog.json"
        proc = subprocess.run(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}/data",
                f"--log-net-log={netlog}",
                *args,
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        log = json.loads(netlog.read_text())
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requests = [
        e["params"]
        for e in log["events"]
        if kinds.get(e["type"]) == "URL_REQUEST_START_JOB"
        and "url" in e.get("params", {})
        and e["params"].get("initiator") != "not an origin"
    ]
    return proc.stdout, requests


@pytest.fixture(scope="module")
def html_page(sample_report: Report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("html") / "report.html"
    page.write_text(render(sample_report, "html"), encoding="utf-8")
    return page


def test_report_renders_with_charts_in_the_dom(html_page: Path) -> None:
    dom, requests = chromium(html_page, "--dump-dom")
    assert "dbprobe demo report" in dom
    # cold start (stacked phases, percentiles, CDF) and pool (throughput, acquire wait,
    # latency CDF) charts, all inline SVG
    assert dom.count("<svg") >= 6
    assert "Cold start by phase" in dom
    assert "Throughput against concurrency" in dom
    assert "Acquire wait against concurrency" in dom
    assert dom.count('class="finding sev-') == 3
    # the rule's page is embedded in the report and linked by anchor (works offline)
    assert 'id="rule-n-plus-one"' in dom and 'href="#rule-n-plus-one"' in dom
    assert requests == []


def test_screenshot_is_not_blank(html_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _, requests = chromium(html_page, f"--screenshot={shot}", "--window-size=1280,2000")
    colours, inked = colour_stats(shot.read_bytes())
    # a blank or unstyled page has a handful of colours; the charts and severity styles
    # bring hundreds (anti-aliased lines and text)
    assert colours > 50, colours
    assert inked > 0.01, inked
    assert requests == []


def test_network_check_sees_a_page_request(tmp_path: Path) -> None:
    """Control: the NetLog check does catch a page that fetches something."""
    page = tmp_path / "fetches.html"
    page.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/pixel.png">', encoding="utf-8")
    _, requests = chromium(page, "--dump-dom")
    assert any("127.0.0.1:9/pixel.png" in r.get("url", "") for r in requests)
