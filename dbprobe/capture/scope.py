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
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

from dbprobe.capture.callsite import CallSiteResolver
from dbprobe.capture.log import Boundary, QueryLog, StatementRecord
from dbprobe.capture.orm import StatementInfo, orm_execution, statement_info

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
# The resolver that configure_call_sites() set up (process-wide); directories a scope
# adds (its app_paths, [tool.dbprobe]) last until the last scope stops.
_configured_resolver = _resolver
_perf_ns = time.perf_counter_ns
_RECORD_ATTR = "_dbprobe_record"
# Per compiled statement: which eager loads to watch (computed once, dropped with the
# last scope). Compiled objects are SQLAlchemy's own cache entries, so this holds them
# no longer than a capture is open.
_info_cache: dict[Any, StatementInfo] = {}
_trackers: dict[tuple[type, str], _TouchTracker] = {}
_load_listening = False
# This context's activation number and last ORM statement (see _ContextState).
_state: contextvars.ContextVar[_ContextState | None] = contextvars.ContextVar(
    "dbprobe_state", default=None
)
_activations = itertools.count(1)
_get_ident = threading.get_ident
# asyncio's C helpers, bound when the first scope opens (no asyncio import before).
_get_running_loop: Callable[[], Any] | None = None
_current_task: Callable[[Any], Any] | None = None
# Frames above the listener that are always SQLAlchemy's (None: not checked yet).
_skip: int | None = None
# Context-bound scopes open anywhere in the process (for the unscoped-thread warning).
_open_context_scopes: set[Capture] = set()
_warned_unscoped = False
log = logging.getLogger("dbprobe.capture")


def resolver() -> CallSiteResolver:
    """The process-wide call-site resolver (its per-file decisions are shared)."""
    return _resolver


def configure_call_sites(app_paths: Iterable[str] = (), library_paths: Iterable[str] = ()) -> None:
    """Add application / library directories for call-site resolution (process-wide)."""
    global _configured_resolver
    _add_call_sites(app_paths, library_paths)
    _configured_resolver = _resolver


def _add_call_sites(app_paths: Iterable[str] = (), library_paths: Iterable[str] = ()) -> None:
    """Add directories until the last open scope stops."""
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


def _calibrate_skip() -> int:
    """How many frames above the listener can be skipped without looking. SQLAlchemy
    calls before_cursor_execute listeners from ``Connection._exec_single_context`` (or
    ``_exec_insertmany_context``), called by ``Connection._execute_context``, called by
    one of its ``_execute_*`` / ``_exec_driver_sql`` methods: three frames that are
    always SQLAlchemy's, whatever the application called. Checked once per process (the
    three frames must be in SQLAlchemy's directory); 0, walk every frame, otherwise."""
    global _skip
    if _skip is None:
        root = _sqlalchemy_dir()
        frames: list[str] = []
        frame: Any = sys._getframe(1)  # the listener
        for _ in range(3):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            frames.append(frame.f_code.co_filename)
        _skip = 3 if root and len(frames) == 3 and all(f.startswith(root) for f in frames) else 0
    return _skip


def _sqlalchemy_dir() -> str | None:
    module = sys.modules.get("sqlalchemy")
    file = getattr(module, "__file__", None)
    return os.path.dirname(file) + os.sep if file else None


class _ContextState:
    """Per thread / asyncio task state, kept in one context variable: the activation
    number of the context and the ORM statement it ran last (whose "load" events give
    its runid). A context inherited from another thread or task (``copy_context()``,
    a task created by another) gets its own state at its first statement."""

    __slots__ = ("activation", "loading", "task", "thread")

    def __init__(self, thread: int, task: int) -> None:
        self.thread = thread
        self.task = task
        self.activation = next(_activations)
        self.loading: StatementRecord | None = None


def _context_state() -> _ContextState:
    thread = _get_ident()
    loop = _get_running_loop() if _get_running_loop is not None else None
    task = 0 if loop is None else id(_current_task(loop))  # type: ignore[misc]
    state = _state.get()
    if state is None or state.thread != thread or state.task != task:
        state = _ContextState(thread, task)
        _state.set(state)
    return state


def _activation_number() -> int:
    """The activation of the current context: a number per thread or asyncio task that
    runs statements (a context inherited from another thread or task gets its own)."""
    return _context_state().activation


def _before_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    # Registered with retval=True (saves SQLAlchemy's wrapper call): return both as given.
    scopes = _context_scopes.get()
    if _process_scopes:
        scopes = _targets()
    if not scopes or _suspend.get():
        if not scopes and _open_context_scopes and not _suspend.get():
            _unscoped_statement()
        return statement, parameters
    engine = conn.engine
    skip = _skip if _skip is not None else _calibrate_skip()
    found = _resolver.resolve_with_caller(1 + skip)
    site, caller = found if found is not None else (None, None)
    try:
        connection = id(conn._dbapi_connection.dbapi_connection)
    except Exception:  # a closed or invalidated connection: still record the statement
        connection = 0
    key = parent_runid = None
    try:
        compiled = context.compiled
        if compiled is not None:
            key, parent_runid = orm_execution(context.execution_options)
    except AttributeError:  # no execution context (or a custom one)
        compiled = None
    # The activation of this context (inlined _context_state(): it runs every statement;
    # both asyncio helpers are bound by _install before any scope can be open).
    thread = _get_ident()
    loop = _get_running_loop()  # type: ignore[misc]
    task = 0 if loop is None else id(_current_task(loop))  # type: ignore[misc]
    state = _state.get()
    if state is None or state.thread != thread or state.task != task:
        state = _ContextState(thread, task)
        _state.set(state)
    record = StatementRecord(
        next(_seq),
        statement,
        parameters,
        executemany,
        site,
        connection,
        engine,
        None,
        key,
        compiled,
        _ignored.get(),
        state.activation,
        parent_runid,
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
            if info.orm_select:
                # The ORM "load" event tells which load run this statement's objects get.
                state.loading = record
                if not _load_listening:
                    _listen_loads()
                if info.watch:
                    _watch_eager_loads(info, record, scopes)
    record.caller = caller
    record.start_ns = _perf_ns()
    return statement, parameters


def _unscoped_statement() -> None:
    """A statement ran in a thread or task that has no capture scope while a scope is
    open in another context (a ThreadPoolExecutor worker does not inherit contextvars):
    count it on the open scopes and say so once."""
    global _warned_unscoped
    for scope in tuple(_open_context_scopes):
        scope.log.unrecorded += 1
    if not _warned_unscoped:
        _warned_unscoped = True
        log.warning(
            "dbprobe.capture(): a statement ran in a thread or task without a capture "
            "scope while one is open elsewhere, and was not recorded (worker threads do "
            "not inherit the scope); use dbprobe.capture(all_threads=True) to record "
            "every thread"
        )


def _watch_eager_loads(
    info: StatementInfo, record: StatementRecord, scopes: tuple[Capture, ...]
) -> None:
    """Count the root objects of a joined collection load; track reads of eager-loaded
    relationships (for the unused-eager-load check)."""
    if info.joined_root is not None:
        record.joined_root = info.joined_root
        record.loaded_parents = 0
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


def _listen_loads() -> None:
    global _load_listening
    with _lock:
        if _load_listening or not _installed:
            return
        from sqlalchemy import event
        from sqlalchemy.orm import Mapper

        event.listen(Mapper, "load", _on_load)
        _load_listening = True


def _on_load(target: Any, query_context: Any) -> None:
    """ORM ``load`` event (every new object an ORM query loads): the first object of the
    statement this context last ran gives that statement's load run (``runid``); objects
    of a joined collection load's root entity are counted."""
    state = _state.get()
    if state is None:
        return
    record = state.loading
    if record is None:
        return
    compiled = record._live
    if compiled is None or query_context.compile_state is not getattr(
        compiled, "compile_state", False
    ):
        return
    if record.runid is None:
        record.runid = query_context.runid
    root = record.joined_root
    if root is None:
        state.loading = None  # nothing more to learn from this statement's objects
    elif isinstance(root, type) and isinstance(target, root):
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
        global _get_running_loop, _current_task
        if _get_running_loop is None:
            import asyncio

            _get_running_loop, _current_task = asyncio._get_running_loop, asyncio.current_task
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", _before_cursor_execute, retval=True)
        event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
        event.listen(Engine, "handle_error", _handle_error)
        event.listen(Engine, "commit", _commit)
        event.listen(Engine, "rollback", _rollback)


def _uninstall() -> None:
    global _installed, _load_listening, _resolver
    with _lock:
        _installed -= 1
        if _installed > 0:
            return
        _installed = 0
        _resolver = _configured_resolver  # a scope's own directories end with it
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
        if _load_listening:
            from sqlalchemy.orm import Mapper

            if event.contains(Mapper, "load", _on_load):
                event.remove(Mapper, "load", _on_load)
            _load_listening = False
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
    app_paths / library_paths: extra directories that count as application / library
    code for call sites, added to ``app_paths`` / ``library_paths`` of
    ``[tool.dbprobe]`` in the project's pyproject.toml (read when the scope starts,
    unless ``use_project_config=False``).
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
        library_paths: Iterable[str] = (),
        use_project_config: bool = True,
    ) -> None:
        self.engines = _engines_of(target)
        self.verify_fixes = verify_fixes
        self.all_threads = all_threads
        self.app_paths = tuple(app_paths)
        self.library_paths = tuple(library_paths)
        self.use_project_config = use_project_config
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
        app_paths, library_paths = self.app_paths, self.library_paths
        if self.use_project_config:
            project = _project_call_sites()
            app_paths = (*project[0], *app_paths)
            library_paths = (*project[1], *library_paths)
        with _lock:
            if app_paths or library_paths:
                _add_call_sites(app_paths, library_paths)
            _install()
        self._active = True
        self.log.started_ns = _perf_ns()
        if self.all_threads:
            with _lock:
                _process_scopes = (*_process_scopes, self)
        else:
            self._token = _context_scopes.set((*_context_scopes.get(), self))
            with _lock:
                _open_context_scopes.add(self)
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
                with _lock:
                    _open_context_scopes.discard(self)
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
        clone = Capture(
            all_threads=self.all_threads,
            app_paths=self.app_paths,
            name=self.name,
            library_paths=self.library_paths,
            use_project_config=self.use_project_config,
        )
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
                        result = await fn(*args, **kwargs)
                finally:
                    async_wrapper.dbprobe_log = scope.log  # type: ignore[attr-defined]
                if self.verify_fixes:  # only after a call that returned
                    await self._verify_async(fn, args, kwargs, scope)
                return result

            async_wrapper.dbprobe_log = None  # type: ignore[attr-defined]
            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scope = self._fresh()
            try:
                with scope:
                    result = fn(*args, **kwargs)
            finally:
                wrapper.dbprobe_log = scope.log  # type: ignore[attr-defined]
            if self.verify_fixes:  # only after a call that returned
                self._verify_sync(fn, args, kwargs, scope)
            return result

        wrapper.dbprobe_log = None  # type: ignore[attr-defined]
        return cast(F, wrapper)

    def _verify_sync(self, fn: Callable[..., Any], args: Any, kwargs: Any, scope: Capture) -> None:
        from dbprobe.capture.verify import verify_callable

        try:
            findings = scope.log.findings()
            scope.log.verifications.update(
                verify_callable(fn, args, kwargs, findings, len(scope.log), self._fresh)
            )
        except Exception:  # verification is extra: never fail the decorated call
            log.exception("dbprobe: verifying the fixes of %r failed", fn)

    async def _verify_async(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, scope: Capture
    ) -> None:
        from dbprobe.capture.verify import verify_coroutine

        try:
            findings = scope.log.findings()
            scope.log.verifications.update(
                await verify_coroutine(fn, args, kwargs, findings, len(scope.log), self._fresh)
            )
        except Exception:  # verification is extra: never fail the decorated call
            log.exception("dbprobe: verifying the fixes of %r failed", fn)


def capture(
    target: Any = None,
    *,
    all_threads: bool = False,
    app_paths: Iterable[str] = (),
    name: str | None = None,
    root: str | None = None,
    verify_fixes: bool = False,
    library_paths: Iterable[str] = (),
    use_project_config: bool = True,
) -> Capture:
    """Capture SQLAlchemy statements: ``with dbprobe.capture() as log: ...`` (every
    engine) or ``dbprobe.capture(engine_or_session)``; also ``async with`` and
    ``@dbprobe.capture()``. See :class:`Capture` for the arguments.

    A plain scope records the statements of its own context: the thread that opened it
    and the asyncio tasks started inside it. Worker threads (``ThreadPoolExecutor``,
    ``threading.Thread``) do not inherit it: their statements are counted in
    ``log.unrecorded`` (and logged once) but not recorded; ``all_threads=True`` records
    every thread of the process."""
    return Capture(
        target,
        all_threads=all_threads,
        app_paths=app_paths,
        name=name,
        root=root,
        verify_fixes=verify_fixes,
        library_paths=library_paths,
        use_project_config=use_project_config,
    )


def _project_call_sites() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``app_paths`` and ``library_paths`` of ``[tool.dbprobe]`` (cached by file and
    mtime; none when there is no pyproject.toml or it cannot be read)."""
    from dbprobe.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        log.warning("dbprobe.capture(): [tool.dbprobe] ignored: %s", exc)
        return (), ()
    return config.app_paths, config.library_paths


class IgnoreBlock:
    """``with dbprobe.ignore():`` — statements run inside are still recorded (and
    counted) but no detector reports them. ``rules`` limits that to some rule ids.

    As a decorator (``@dbprobe.ignore("n-plus-one")``) each call enters a block of its
    own, inside the call: on an ``async def`` the block covers the coroutine's body, and
    two threads or tasks calling the same function never share a block."""

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

    def __call__(self, fn: F) -> F:
        rules = tuple(self.rules - {"*"})
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with IgnoreBlock(*rules):
                    return await fn(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with IgnoreBlock(*rules):
                return fn(*args, **kwargs)

        return cast(F, wrapper)


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
