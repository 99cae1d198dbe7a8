"""Every rule id has its page, docs/rules/<id>.md (problem, evidence, fix, how to tune)."""

from __future__ import annotations

from pathlib import Path

from dbprobe.rules import RULES, docs_text

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rules"


def test_every_rule_has_its_page() -> None:
    missing = sorted(rule_id for rule_id in RULES if not (DOCS / f"{rule_id}.md").is_file())
    assert not missing, (
        f"{len(missing)} of {len(RULES)} rules lack docs/rules/<id>.md: {', '.join(missing)}"
    )


def test_pages_that_exist_are_real_pages() -> None:
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert page.stem in RULES, f"{page.name} documents no registered rule"
        assert text.startswith("# ") and len(text) > 200, f"{page.name} is not a page yet"
        headings = [line for line in text.splitlines() if line.startswith("## ")]
        for section in ("## Problem", "## Evidence", "## Fix", "## Tune or ignore"):
            assert section in headings, f"{page.name} lacks the section {section!r}"
        assert docs_text(page.stem) == text  # what SARIF help and HTML reports embed


def test_fixture_manifest_uses_only_registered_rules() -> None:
    from dbprobe.rules import RULES
    from fixtures.shop.manifest import RULES as MANIFEST_RULES
    from fixtures.shop.manifest import load_manifest

    assert set(RULES) >= MANIFEST_RULES, MANIFEST_RULES - set(RULES)
    manifest = load_manifest()
    used = {p.rule for p in manifest.problems}
    assert used <= set(RULES), used - set(RULES)
