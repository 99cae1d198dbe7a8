"""Call sites: the first frame of application code that led to a statement.

Walks ``sys._getframe`` (never traceback objects, never stack formatting) and decides
"application or library?" once per file name, so the hot path is a few dictionary
look-ups per frame (about 1 µs for a typical ORM stack).

Library code is: SQLAlchemy, dbprobe itself, the standard library, ``site-packages`` /
``dist-packages`` (unless listed in ``app_paths``), greenlet, and frozen or generated
code (``<frozen ...>``, ``<string>``). ``app_paths`` always win, so an application that
lives under dbprobe's own directory (the bundled ``fixtures/`` of an installed wheel) or
inside ``site-packages`` is still application code when configured.

For asyncio code, SQLAlchemy runs the synchronous part of each operation inside a
greenlet whose stack ends at the greenlet's entry: the walk continues in the parent
greenlet's suspended frame (``greenlet.getcurrent().parent.gr_frame``), where the
application's coroutines are.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["CALLER_WINDOW", "CallSite", "CallSiteResolver"]

_MAX_FRAMES = 200
"""A walk stops after this many frames (a runaway recursion is not worth more)."""

CALLER_WINDOW = 64
"""Library frames between the call site and its application caller beyond which the
caller is not looked for. A web framework's test client puts 20-40 frames between a
test and a view; a test runner's frames (pytest, pluggy) end the search at once."""

_APP, _LIBRARY, _RUNNER = 1, 0, 2


class CallSite(NamedTuple):
    """Where application code caused a statement: absolute file, line, function."""

    file: str
    line: int
    function: str

    def location(self, root: str | None = None) -> str:
        """``path:line``, the path relative to ``root`` (default: the current directory)
        when the file is below it, else absolute."""
        return f"{relative_path(self.file, root)}:{self.line}"


def relative_path(path: str, root: str | None = None) -> str:
    """``path`` relative to ``root`` (default: the current directory) with forward
    slashes when it lies below it; otherwise unchanged."""
    base = root or os.getcwd()
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive (Windows)
        return path
    if rel.startswith(".."):
        return path
    return Path(rel).as_posix()


def _norm_dir(path: str | os.PathLike[str]) -> str:
    text = os.path.normcase(os.path.abspath(os.fspath(path)))
    return text if text.endswith(os.sep) else text + os.sep


def _package_dir(module_name: str) -> str | None:
    """Directory of an installed package, without importing it (so the answer does not
    depend on what was imported first)."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        file = spec.origin if spec is not None and spec.has_location else None
    return _norm_dir(os.path.dirname(file)) if file else None


_LIBRARY_PACKAGES = ("sqlalchemy", "greenlet", "dbprobe", "_pytest", "pluggy")
_RUNNER_PACKAGES = ("_pytest", "pluggy")


def _default_library_dirs() -> tuple[str, ...]:
    dirs: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            value = sysconfig.get_paths()[key]
        except KeyError:
            continue
        dirs.add(_norm_dir(value))
    for module_name in _LIBRARY_PACKAGES:
        found = _package_dir(module_name)
        if found:
            dirs.add(found)
    dirs.add(_norm_dir(os.path.dirname(os.__file__)))  # the standard library
    return tuple(sorted(dirs))


def _runner_dirs() -> tuple[str, ...]:
    return tuple(d for d in (_package_dir(m) for m in _RUNNER_PACKAGES) if d)


class CallSiteResolver:
    """Finds the first application frame; decisions are cached per file name.

    app_paths: directories (or files) that are always application code, even under
    site-packages or dbprobe's own directory. library_paths: extra directories that
    are never application code (a framework vendored into the repository, say).
    """

    def __init__(
        self,
        app_paths: Iterable[str | os.PathLike[str]] = (),
        library_paths: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.app_paths = tuple(_norm_dir(p) for p in app_paths)
        self.library_paths = tuple(_norm_dir(p) for p in library_paths) + _default_library_dirs()
        self.runner_paths = _runner_dirs()
        # Per file name: _APP, _LIBRARY, or _RUNNER (a test runner's own code: no
        # application frame calls through it, the caller search stops there).
        self._kinds: dict[str, int] = {}
        try:
            import greenlet

            self._getcurrent: Any = greenlet.getcurrent
        except ImportError:  # pragma: no cover - greenlet ships with SQLAlchemy's asyncio extra
            self._getcurrent = None

    def is_application(self, filename: str) -> bool:
        """Whether frames of ``filename`` are application code (cached)."""
        return self._kind(filename) == _APP

    def _kind(self, filename: str) -> int:
        kind = self._kinds.get(filename)
        if kind is None:
            kind = self._decide(filename)
            self._kinds[filename] = kind
        return kind

    def _decide(self, filename: str) -> int:
        if not filename or filename.startswith("<"):
            return _LIBRARY  # <frozen ...>, <string>, <stdin>: not a place a user can fix
        path = os.path.normcase(os.path.abspath(filename))
        if any(path.startswith(app) or path + os.sep == app for app in self.app_paths):
            return _APP
        if any(path.startswith(runner) for runner in self.runner_paths):
            return _RUNNER
        if any(path.startswith(lib) for lib in self.library_paths):
            return _LIBRARY
        return _LIBRARY if ("site-packages" in path or "dist-packages" in path) else _APP

    def resolve(self, depth: int = 1) -> tuple[str, int, str] | None:
        """``(file, line, function)`` of the first application frame above the caller
        (``depth`` frames up), or ``None`` when the whole stack is library code."""
        found = self.resolve_with_caller(depth + 1)
        return None if found is None else found[0]

    def resolve_with_caller(
        self, depth: int = 1
    ) -> tuple[tuple[str, int, str], tuple[str, int, str] | None] | None:
        """The first application frame (as :meth:`resolve`) and the next application
        frame that called it, ``(file, line, function)``, looked for within
        :data:`CALLER_WINDOW` library frames and never through a test runner's frames
        (``None`` when there is none)."""
        kinds = self._kinds
        window = CALLER_WINDOW
        frame: Any = sys._getframe(depth + 1)
        seen = 0
        walked: Any = None  # the greenlet whose frames are being walked
        site: tuple[str, int, str] | None = None
        after_site = 0
        while True:
            while frame is not None and seen < _MAX_FRAMES:
                code = frame.f_code
                filename = code.co_filename
                kind = kinds.get(filename)
                if kind is None:
                    kind = self._kind(filename)
                if kind == 1:  # _APP (a literal: no global look-up per frame)
                    if site is not None:
                        return site, (filename, frame.f_lineno, code.co_name)
                    site = (filename, frame.f_lineno, code.co_name)
                elif site is not None:
                    after_site += 1
                    if after_site > window or kind == 2:  # _RUNNER
                        return site, None
                frame = frame.f_back
                seen += 1
            if seen >= _MAX_FRAMES or self._getcurrent is None:
                return None if site is None else (site, None)
            # End of this greenlet's stack: continue in the parent's suspended frame.
            walked = self._getcurrent() if walked is None else walked
            walked = walked.parent
            if walked is None:
                return None if site is None else (site, None)
            frame = walked.gr_frame
