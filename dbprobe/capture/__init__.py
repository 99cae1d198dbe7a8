"""Statement capture for SQLAlchemy (sync and async): scopes, call sites, the query log.

::

    import dbprobe

    with dbprobe.capture() as log:          # every engine; or dbprobe.capture(engine)
        run_the_code()
    log.statements                          # StatementRecord: sql, timing, call site, ORM context
    log.findings()                          # n-plus-one, redundant-query, ...

SQLAlchemy is imported when the first scope opens, not by importing this package.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from dbprobe.capture.callsite import CallSite, CallSiteResolver
from dbprobe.capture.log import OrmContext, QueryLog, StatementRecord, StatementShape
from dbprobe.capture.scope import Capture, IgnoreBlock, capture, ignore, suspended

__all__ = [
    "CallSite",
    "CallSiteResolver",
    "Capture",
    "IgnoreBlock",
    "OrmContext",
    "QueryLog",
    "StatementRecord",
    "StatementShape",
    "capture",
    "ignore",
    "suspended",
]


class _CallableModule(types.ModuleType):
    """``dbprobe.capture`` is both this package and the function: importing a submodule
    binds the package as ``dbprobe.capture``, so the package itself must be callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> Capture:
        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
