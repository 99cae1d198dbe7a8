"""Locate and import the bundled fixture application (the "shop") and probe scenarios.

In a source checkout they are the top-level ``fixtures/`` and ``probes/`` folders; an
installed wheel carries copies under ``dbprobe/_bundled/``. Either way they import as
``fixtures.shop`` and ``probes``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from dbprobe.errors import DbprobeError

_PACKAGE_DIR = Path(__file__).resolve().parent


def fixtures_root() -> Path:
    """The folder that holds ``fixtures/`` and ``probes/``."""
    for root in (_PACKAGE_DIR.parent, _PACKAGE_DIR / "_bundled"):
        if (root / "fixtures" / "shop" / "__init__.py").is_file():
            return root
    raise DbprobeError(
        "the shop fixture application is missing from this installation "
        f"(looked in {_PACKAGE_DIR.parent} and {_PACKAGE_DIR / '_bundled'})"
    )


def import_fixture(module: str = "fixtures.shop") -> ModuleType:
    """Import a module of the fixture app (``fixtures.shop.seed``, ``probes.shop``...)."""
    root = str(fixtures_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(module)
