"""dbprobe: database and connection-pool performance probes for SQLAlchemy and PostgreSQL.

``import dbprobe`` is cheap (the pytest plugin imports it in every pytest run); the
capture API is loaded on first use::

    with dbprobe.capture() as log:
        ...
    log.findings()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dbprobe.capture import QueryLog, capture, ignore

__all__ = ["QueryLog", "__version__", "capture", "ignore"]

_LAZY = {
    "capture": ("dbprobe", "capture"),
    "ignore": ("dbprobe.capture.scope", "ignore"),
    "QueryLog": ("dbprobe.capture.log", "QueryLog"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'dbprobe' has no attribute {name!r}")
    import importlib

    if name == "capture":  # the package is callable: dbprobe.capture(...) == capture(...)
        value = importlib.import_module("dbprobe.capture")
    else:
        value = getattr(importlib.import_module(target[0]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
