"""Every rule the pool probe raises has its page, with the sections a reader needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbprobe.rules import RULES

ROOT = Path(__file__).resolve().parent.parent
POOL_RULES = (
    "pool-exhaustion",
    "connection-leak",
    "pool-degradation",
    "client-bound",
    "pool-oversized",
    "pool-over-budget",
    "soak-growth",
)


@pytest.mark.parametrize("rule_id", POOL_RULES)
def test_rule_page(rule_id: str) -> None:
    page = ROOT / RULES[rule_id].docs
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# {rule_id}\n")
    for section in ("## Problem", "## Evidence", "## Fix", "## Ignore or tune"):
        assert section in text, f"{page} lacks {section}"
    assert f"**Severity:** {RULES[rule_id].severity.value}" in text


def test_pool_guide_links_resolve() -> None:
    text = (ROOT / "docs" / "pool.md").read_text(encoding="utf-8")
    for target in ("rules/soak-growth.md",):
        assert target in text
        assert (ROOT / "docs" / target).is_file()
