"""Call-site resolution: app-or-library decisions and the greenlet hop (no database)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import greenlet
import sqlalchemy

import dbprobe
from dbprobe.capture.callsite import CallSite, CallSiteResolver, relative_path

PACKAGE = Path(dbprobe.__file__).resolve().parent


def test_library_and_application_files() -> None:
    resolver = CallSiteResolver()
    assert resolver.is_application(__file__)
    assert not resolver.is_application(sqlalchemy.__file__)
    assert not resolver.is_application(os.__file__)  # the standard library
    assert not resolver.is_application(str(PACKAGE / "capture" / "scope.py"))
    assert not resolver.is_application("<frozen importlib._bootstrap>")
    assert not resolver.is_application("/venv/lib/python3.11/site-packages/flask/app.py")
    assert resolver.is_application("/srv/app/views.py")


def test_app_paths_win_even_inside_dbprobe_and_site_packages() -> None:
    bundled = PACKAGE / "_bundled" / "fixtures"
    module = str(bundled / "shop" / "app" / "orders.py")
    assert not CallSiteResolver().is_application(module)
    resolver = CallSiteResolver(app_paths=[bundled, "/venv/lib/python3.11/site-packages/myapp"])
    assert resolver.is_application(module)
    assert resolver.is_application("/venv/lib/python3.11/site-packages/myapp/views.py")
    assert not resolver.is_application("/venv/lib/python3.11/site-packages/other/x.py")


def test_library_paths_exclude_vendored_code(tmp_path: Path) -> None:
    resolver = CallSiteResolver(library_paths=[tmp_path / "vendor"])
    assert not resolver.is_application(str(tmp_path / "vendor" / "lib.py"))
    assert resolver.is_application(str(tmp_path / "app.py"))


def _library_call(resolver: CallSiteResolver) -> tuple[str, int, str] | None:
    return resolver.resolve(depth=0)


def test_resolve_skips_library_frames() -> None:
    # Treat this function's own file as library: the first application frame is then
    # whoever called from outside it... which is pytest (library) — so nothing.
    resolver = CallSiteResolver(library_paths=[os.path.dirname(__file__)])
    assert _library_call(resolver) is None
    site = _library_call(CallSiteResolver())
    assert site is not None
    assert site[0] == __file__
    assert site[2] == "_library_call"


def test_resolve_continues_in_the_parent_greenlet() -> None:
    library_file = str(Path(__file__).parent / "_lib" / "glue.py")
    resolver = CallSiteResolver(library_paths=[os.path.dirname(library_file)])
    found: list[tuple[str, int, str] | None] = []
    # A greenlet whose every frame is library code, as in SQLAlchemy's asyncio glue.
    namespace = {"found": found, "resolver": resolver}
    exec(
        compile("def run():\n    found.append(resolver.resolve(depth=0))\n", library_file, "exec"),
        namespace,
    )
    child = greenlet.greenlet(namespace["run"])
    switch_line = sys._getframe().f_lineno + 1
    child.switch()
    # The walk went on in this (parent) greenlet's suspended frame, at the switch.
    assert found == [(__file__, switch_line, "test_resolve_continues_in_the_parent_greenlet")]


def test_locations_are_relative_to_the_root(tmp_path: Path) -> None:
    site = CallSite(str(tmp_path / "src" / "app.py"), 12, "view")
    assert site.location(str(tmp_path)) == "src/app.py:12"
    assert site.location("/elsewhere") == f"{tmp_path}/src/app.py:12"
    assert relative_path(str(tmp_path / "a.py"), str(tmp_path)) == "a.py"
