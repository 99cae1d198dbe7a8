"""Capture scopes: ``dbprobe.capture()`` and ``dbprobe.ignore()``.

A scope is bound to the current :mod:`contextvars` context, so concurrent asyncio tasks
and threads each see only their own scopes (a task created inside a scope inherits it;
SQLAlchemy's asyncio greenlets share their task's context). Scopes nest: a statement is
recorded in the innermost scope and in every enclosing one. ``all_threads=True`` makes a
scope see every statement of the process, whatever thread or task ran it (the pytest
plugin's per-test scope works that way).

The SQLAlchemy listeners (``before_cursor_execute``, ``after_cursor_execute``,
``handle_error``, ``commit``, ``rollback`` on the :class:`~sqlalchemy.engine.Engine`
class, so every engine, sync or async, is covered) are installed while at least one
scope is open and removed with the last one.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

from dbprobe.capture.callsite import CallSiteResolver
from dbprobe.capture.log import Boundary, QueryLog, StatementRecord
from dbprobe.capture.orm import NO_INFO, StatementInfo, orm_key, statement_info

__all__ = ["Capture", "IgnoreBlock", "capture", "ignore", "resolver"]

F = TypeVar("F", bound=Callable[..., Any])

# (QueryLog, engines filter or None) of the scopes open in this context, innermost last.
_context_scopes: contextvars.ContextVar[tuple[Capture, ...]] = contextvars.ContextVar(
    "dbprobe_scopes", default=()
)
_ignored: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "dbprobe_ignored", default=None
)
_suspend: contextvars.ContextVar[bool] = contextvars.ContextVar("dbprobe_suspend", default=False)
_process_scopes: tuple[Capture, ...] = ()
_lock = threading.RLock()
_installed = 0
_seq = itertools.count(1)
_resolver = CallSiteResolver()
_perf_ns = time.perf_counter_ns
_RECORD_ATTR = "_dbprobe_record"
# Per compiled statement: which eager loads to watch (computed once, dropped with the
# last scope). Compiled objects are SQLAlchemy's own cache entries, so this holds them
# no longer than a capture is open.
_info_cache: dict[Any, StatementInfo] = {}
# The record of the last statement in this context that joined-eager-loads a collection:
# its root entity's "load" events are counted into it.
_counting: contextvars.ContextVar[StatementRecord | None] = contextvars.ContextVar(
    "dbprobe_counting", default=None
)
_load_listeners: set[Any] = set()
_trackers: dict[tuple[type, str], _TouchTracker] = {}


def resolver() -> CallSiteResolver:
    """The process-wide call-site resolver (its per-file decisions are shared)."""
    return _resolver


def configure_call_sites(app_paths: Iterable[str] = (), library_paths: Iterable[str] = ()) -> None:
    """Add application / library directories for call-site resolution (process-wide)."""
    global _resolver
    apps = {os.path.abspath(p) for p in app_paths}
    libs = {os.path.abspath(p) for p in library_paths}
    current_apps = {a.rstrip(os.sep) for a in _resolver.app_paths}
    current_libs = {a.rstrip(os.sep) for a in _resolver.library_paths}
    if apps <= current_apps and libs <= current_libs:
        return
    _resolver = CallSiteResolver(
        app_paths=sorted(current_apps | apps),
        library_paths=sorted(libs | _extra_libs(current_libs)),
    )


def _extra_libs(current: set[str]) -> set[str]:
    defaults = {d.rstrip(os.sep) for d in CallSiteResolver().library_paths}
    return current - defaults


# -- the listeners (hot path) ------------------------------------------------------------


def _targets() -> tuple[Capture, ...]:
    scopes = _context_scopes.get()
    process = _process_scopes
    if process:
        if scopes:
            return scopes + tuple(s for s in process if s not in scopes)
        return process
    return scopes


def _before_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    # Registered with retval=True (saves SQLAlchemy's wrapper call): return both as given.
    scopes = _context_scopes.get()
    if _process_scopes:
        scopes = _targets()
    if not scopes or _suspend.get():
        return statement, parameters
    engine = conn.engine
    found = _resolver.resolve_with_caller(1)
    site, caller = found if found is not None else (None, None)
    try:
        connection = id(conn.connection.dbapi_connection)
    except Exception:  # a closed or invalidated connection: still record the statement
        connection = 0
    try:
        compiled = context.compiled
        key = orm_key(context.execution_options) if compiled is not None else None
    except AttributeError:  # no execution context (or a custom one)
        compiled = key = None
    record = StatementRecord(
        next(_seq),
        statement,
        parameters,
        executemany,
        site,
        connection,
        engine,
        engine.dialect.name,
        key,
        compiled,
        _ignored.get(),
    )
    for scope in scopes:
        if scope.engines is None or engine in scope.engines:
            scope.log.statements.append(record)
    if context is not None:
        setattr(context, _RECORD_ATTR, record)
        if compiled is not None:
            info = _info_cache.get(compiled)
            if info is None:
                info = _info_cache[compiled] = statement_info(compiled)
            if info is not NO_INFO:
                _watch_eager_loads(info, record, scopes)
    record.caller = caller
    record.start_ns = _perf_ns()
    return statement, parameters


def _watch_eager_loads(
    info: StatementInfo, record: StatementRecord, scopes: tuple[Capture, ...]
) -> None:
    """Count the root objects of a joined collection load; track reads of eager-loaded
    relationships (for the unused-eager-load check)."""
    if info.joined_root is not None:
        record.joined_root = info.joined_root
        record.loaded_parents = 0
        _counting.set(record)
        mapper = info.root_mapper
        if mapper not in _load_listeners:
            with _lock:
                if mapper not in _load_listeners:
                    from sqlalchemy import event

                    event.listen(mapper, "load", _on_load, propagate=True)
                    _load_listeners.add(mapper)
    for cls, key, label in info.eager_attributes:
        tracker = _trackers.get((cls, key))
        if tracker is None:
            with _lock:
                tracker = _trackers.get((cls, key))
                if tracker is None:
                    tracker = _TouchTracker.install(cls, key, label)
                    if tracker is None:
                        continue
                    _trackers[(cls, key)] = tracker
        for scope in scopes:
            scope.log.eager_touches.setdefault(label, 0)


def _on_load(target: Any, query_context: Any) -> None:
    record = _counting.get()
    if record is None:
        return
    compiled = record._live
    if compiled is None or getattr(query_context, "compile_state", None) is not getattr(
        compiled, "compile_state", False
    ):
        return
    root = record.joined_root
    if isinstance(root, type) and isinstance(target, root):
        record.loaded_parents += 1


def _touch(label: str) -> None:
    for scope in _targets():
        touches = scope.log.eager_touches
        touches[label] = touches.get(label, 0) + 1


class _TouchTracker:
    """Stands in for an eager-loaded relationship's class attribute while captures are
    open: reads through instances are counted, everything else is delegated."""

    __slots__ = ("classes", "key", "label", "original")

    def __init__(self, original: Any, key: str, label: str) -> None:
        self.original = original
        self.key = key
        self.label = label
        self.classes: list[type] = []

    @classmethod
    def install(cls, owner: type, key: str, label: str) -> _TouchTracker | None:
        original = owner.__dict__.get(key)
        if original is None or not hasattr(original, "__get__"):
            return None
        tracker = cls(original, key, label)
        try:
            mapper = owner.__mapper__  # type: ignore[attr-defined]
            classes = [m.class_ for m in mapper.self_and_descendants]
        except AttributeError:
            classes = [owner]
        for klass in classes:
            if klass.__dict__.get(key) is not None:
                # type.__setattr__: bypass declarative's attribute interception
                type.__setattr__(klass, key, _Tracked(klass.__dict__[key], tracker))
                tracker.classes.append(klass)
        return tracker

    def remove(self) -> None:
        for klass in self.classes:
            current = klass.__dict__.get(self.key)
            if isinstance(current, _Tracked):
                type.__setattr__(klass, self.key, current.original)
        self.classes.clear()


class _Tracked:
    """The descriptor installed by :class:`_TouchTracker` on one class."""

    __slots__ = ("original", "tracker")

    def __init__(self, original: Any, tracker: _TouchTracker) -> None:
        self.original = original
        self.tracker = tracker

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is not None:
            _touch(self.tracker.label)
        return self.original.__get__(obj, owner)

    def __set__(self, obj: Any, value: Any) -> None:
        self.original.__set__(obj, value)

    def __delete__(self, obj: Any) -> None:
        self.original.__delete__(obj)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


def _after_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    end = _perf_ns()
    record = context.__dict__.pop(_RECORD_ATTR, None) if context is not None else None
    if record is None:
        return
    record.duration_ns = end - record.start_ns
    try:
        record.rowcount = cursor.rowcount
    except Exception:  # some drivers raise on rowcount after certain statements
        record.rowcount = -1


def _handle_error(exception_context: Any) -> None:
    end = _perf_ns()
    context = exception_context.execution_context
    record = context.__dict__.pop(_RECORD_ATTR, None) if context is not None else None
    if record is None:
        return
    record.duration_ns = end - record.start_ns
    record.error = type(exception_context.original_exception).__name__


def _boundary(kind: str) -> Callable[[Any], None]:
    def listener(conn: Any) -> None:
        scopes = _targets()
        if not scopes or _suspend.get():
            return
        try:
            connection = id(conn.connection.dbapi_connection)
        except Exception:
            connection = 0
        for scope in scopes:
            scope.log.boundaries.append(Boundary(len(scope.log.statements), kind, connection))

    listener.__name__ = f"_dbprobe_{kind}"
    return listener


_commit = _boundary("commit")
_rollback = _boundary("rollback")


def _install() -> None:
    global _installed
    with _lock:
        _installed += 1
        if _installed > 1:
            return
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", _before_cursor_execute, retval=True)
        event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
        event.listen(Engine, "handle_error", _handle_error)
        event.listen(Engine, "commit", _commit)
        event.listen(Engine, "rollback", _rollback)


def _uninstall() -> None:
    global _installed
    with _lock:
        _installed -= 1
        if _installed > 0:
            return
        _installed = 0
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        for name, fn in (
            ("before_cursor_execute", _before_cursor_execute),
            ("after_cursor_execute", _after_cursor_execute),
            ("handle_error", _handle_error),
            ("commit", _commit),
            ("rollback", _rollback),
        ):
            if event.contains(Engine, name, fn):
                event.remove(Engine, name, fn)
        for mapper in _load_listeners:
            if event.contains(mapper, "load", _on_load):
                event.remove(mapper, "load", _on_load)
        _load_listeners.clear()
        for tracker in _trackers.values():
            tracker.remove()
        _trackers.clear()
        _info_cache.clear()


def _engines_of(target: Any) -> frozenset[Any] | None:
    """The sync Engine(s) behind an Engine, Connection, AsyncEngine, Session or
    AsyncSession; ``None`` for "every engine"."""
    if target is None:
        return None
    targets = target if isinstance(target, (list, tuple, set, frozenset)) else [target]
    engines: set[Any] = set()
    for item in targets:
        sync = getattr(item, "sync_engine", None) or getattr(item, "sync_session", None) or item
        if hasattr(sync, "get_bind") and hasattr(sync, "identity_map"):  # a Session
            binds = [getattr(sync, "bind", None), *getattr(sync, "_Session__binds", {}).values()]
            binds = [b for b in binds if b is not None]
            if not binds:
                raise TypeError("dbprobe.capture(session): the session is not bound to an engine")
            for bind in binds:
                engines |= _engines_of(getattr(bind, "engine", bind)) or set()
            continue
        engine = getattr(sync, "engine", None)
        if engine is None or not hasattr(engine, "dialect"):
            raise TypeError(
                f"dbprobe.capture() takes an Engine, Connection, Session or their async "
                f"forms, not {type(item).__name__}"
            )
        engines.add(engine)
    return frozenset(engines)


class Capture:
    """A capture scope: a context manager (``with dbprobe.capture() as log``), an async
    context manager, and a decorator (each call of the decorated function runs in a
    fresh scope; the last call's log is ``fn.dbprobe_log``).

    target: an Engine / AsyncEngine / Connection / Session / AsyncSession (or a list of
    them) to capture only their statements; default every engine. all_threads: record
    statements from every thread and task of the process, not only this context's.
    app_paths: extra directories that count as application code for call sites.
    name: a label for the log (the pytest plugin uses the test's node id).
    root: directory that reported locations are relative to (default: the project's).
    verify_fixes: as a decorator, re-run the function with each suggested loader fix
    applied and record the statement counts (only for functions safe to run twice).
    """

    def __init__(
        self,
        target: Any = None,
        *,
        all_threads: bool = False,
        app_paths: Iterable[str] = (),
        name: str | None = None,
        root: str | None = None,
        verify_fixes: bool = False,
    ) -> None:
        self.engines = _engines_of(target)
        self.verify_fixes = verify_fixes
        self.all_threads = all_threads
        self.app_paths = tuple(app_paths)
        self.name = name
        self.root = root
        self.log = QueryLog(name=name, root=root)
        self._token: contextvars.Token[tuple[Capture, ...]] | None = None
        self._active = False

    # -- context manager ---------------------------------------------------------------
    def start(self) -> QueryLog:
        global _process_scopes
        if self._active:
            raise RuntimeError("this capture scope is already active")
        if self.app_paths:
            configure_call_sites(self.app_paths)
        _install()
        self._active = True
        self.log.started_ns = _perf_ns()
        if self.all_threads:
            with _lock:
                _process_scopes = (*_process_scopes, self)
        else:
            self._token = _context_scopes.set((*_context_scopes.get(), self))
        return self.log

    def stop(self) -> None:
        global _process_scopes
        if not self._active:
            return
        self._active = False
        self.log.ended_ns = _perf_ns()
        try:
            if self.all_threads:
                with _lock:
                    _process_scopes = tuple(s for s in _process_scopes if s is not self)
            elif self._token is not None:
                try:
                    _context_scopes.reset(self._token)
                except ValueError:  # exited in another context: remove just this scope
                    _context_scopes.set(tuple(s for s in _context_scopes.get() if s is not self))
                self._token = None
        finally:
            _uninstall()

    def __enter__(self) -> QueryLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> QueryLog:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    # -- decorator ---------------------------------------------------------------------
    def _fresh(self) -> Capture:
        clone = Capture(all_threads=self.all_threads, app_paths=self.app_paths, name=self.name)
        clone.verify_fixes = False
        clone.engines = self.engines
        clone.root = self.root
        clone.log.root = self.root
        return clone

    def __call__(self, fn: F) -> F:
        """Decorate ``fn``: each call runs in a fresh scope, whose log is then
        ``fn.dbprobe_log``. With ``verify_fixes=True`` the call is repeated once per
        applicable N+1 loader fix (see :mod:`dbprobe.capture.verify`), so decorate only
        functions that are safe to run more than once."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                scope = self._fresh()
                try:
                    async with scope:
                        return await fn(*args, **kwargs)
                finally:
                    async_wrapper.dbprobe_log = scope.log  # type: ignore[attr-defined]
                    if self.verify_fixes:
                        from dbprobe.capture.verify import verify_coroutine

                        findings = scope.log.findings()
                        scope.log.verifications.update(
                            await verify_coroutine(
                                fn, args, kwargs, findings, len(scope.log), self._fresh
                            )
                        )

            async_wrapper.dbprobe_log = None  # type: ignore[attr-defined]
            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scope = self._fresh()
            try:
                with scope:
                    return fn(*args, **kwargs)
            finally:
                wrapper.dbprobe_log = scope.log  # type: ignore[attr-defined]
                if self.verify_fixes:
                    from dbprobe.capture.verify import verify_callable

                    findings = scope.log.findings()
                    scope.log.verifications.update(
                        verify_callable(fn, args, kwargs, findings, len(scope.log), self._fresh)
                    )

        wrapper.dbprobe_log = None  # type: ignore[attr-defined]
        return cast(F, wrapper)


def capture(
    target: Any = None,
    *,
    all_threads: bool = False,
    app_paths: Iterable[str] = (),
    name: str | None = None,
    root: str | None = None,
    verify_fixes: bool = False,
) -> Capture:
    """Capture SQLAlchemy statements: ``with dbprobe.capture() as log: ...`` (every
    engine) or ``dbprobe.capture(engine_or_session)``; also ``async with`` and
    ``@dbprobe.capture()``. See :class:`Capture` for the arguments."""
    return Capture(
        target,
        all_threads=all_threads,
        app_paths=app_paths,
        name=name,
        root=root,
        verify_fixes=verify_fixes,
    )


class IgnoreBlock(contextlib.ContextDecorator):
    """``with dbprobe.ignore():`` — statements run inside are still recorded (and
    counted) but no detector reports them. ``rules`` limits that to some rule ids."""

    def __init__(self, *rules: str) -> None:
        self.rules = frozenset(rules) if rules else frozenset({"*"})
        self._tokens: list[contextvars.Token[frozenset[str] | None]] = []

    def __enter__(self) -> IgnoreBlock:
        current = _ignored.get()
        merged = self.rules if current is None else current | self.rules
        self._tokens.append(_ignored.set(merged))
        return self

    def __exit__(self, *exc: object) -> None:
        _ignored.reset(self._tokens.pop())


def ignore(*rules: str) -> IgnoreBlock:
    """``with dbprobe.ignore():`` (all rules) or ``dbprobe.ignore("n-plus-one")``; also a
    decorator."""
    return IgnoreBlock(*rules)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Statements run inside (in this context) are not recorded by any scope; dbprobe's
    own EXPLAIN calls and fix verification use it."""
    token = _suspend.set(True)
    try:
        yield
    finally:
        _suspend.reset(token)
