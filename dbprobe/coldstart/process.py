"""Process-level cold start: what a freshly started service pays before its first query.

A fresh interpreter (``sys.executable -c``) stamps its own phases on the system-wide
monotonic clock and reports them on stdout; the parent stamps the moment before it
spawns the child. Phases, contiguous so they add up to ``total`` exactly:

``interpreter``   spawn until the child's first statement (fork/exec, Python start-up,
                  ``site``)
``imports``       the user's modules (``--import``), in the order given
``driver_import`` the driver (SQLAlchemy: ``import sqlalchemy`` and ``create_engine``,
                  which loads the dialect and its DBAPI module)
``connect``       the first connection (SQLAlchemy: ``engine.connect()``, dialect
                  initialisation included; async drivers: creating the event loop too)
``first_query``   ``SELECT 1``

The connection string reaches the child on stdin, never on its command line.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from dbprobe.coldstart.params import ConnectParams
from dbprobe.connect import connect_error
from dbprobe.errors import DbprobeError, UsageError
from dbprobe.urls import DatabaseTarget

PROCESS_PHASES = ("interpreter", "imports", "driver_import", "connect", "first_query")
_NS_PER_MS = 1_000_000

# Kept free of any import the phases measure: ``time`` and ``sys`` are built in.
CHILD_SCRIPT = r"""
import time
_t0 = time.monotonic_ns()
import sys
_marks = [("start", _t0)]
def _mark(name):
    _marks.append((name, time.monotonic_ns()))
def _report():
    sys.stdout.write("".join("mark\t%s\t%d\n" % m for m in _marks))
    sys.stdout.flush()
_cfg, _imports = {}, []
for _line in sys.stdin.read().splitlines():
    _key, _sep, _value = _line.partition("\t")
    if _key == "import":
        _imports.append(_value)
    elif _key:
        _cfg[_key] = _value
_stage = "import " + (_imports[0] if _imports else "")
class _ImportsChecked(Exception):
    pass
try:
    import importlib
    for _module in _imports:
        _stage = "import " + _module
        importlib.import_module(_module)
    _mark("imports")
    _driver = _cfg["driver"]
    if _driver == "none":  # an import check only
        raise _ImportsChecked
    _stage = "driver_import"
    _timeout = float(_cfg["timeout"])
    if _driver == "psycopg":
        import psycopg
    elif _driver == "asyncpg":
        import asyncio
        import asyncpg
    elif _driver == "sqlalchemy":
        import sqlalchemy
        _engine = sqlalchemy.create_engine(_cfg["sqlalchemy_url"])
    else:
        import asyncio
        import sqlalchemy
        from sqlalchemy.ext.asyncio import create_async_engine
        _engine = create_async_engine(
            "postgresql+asyncpg://",
            connect_args={"dsn": _cfg["asyncpg_dsn"], "timeout": _timeout},
        )
    _mark("driver_import")
    _stage = "connect"
    if _driver == "psycopg":
        _conn = psycopg.connect(_cfg["conninfo"], autocommit=True)
        _mark("connect")
        _stage = "first_query"
        _conn.execute("SELECT 1").fetchone()
        _mark("first_query")
        _conn.close()
    elif _driver == "asyncpg":
        async def _main():
            global _stage
            conn = await asyncpg.connect(dsn=_cfg["asyncpg_dsn"], timeout=_timeout)
            _mark("connect")
            _stage = "first_query"
            try:
                await conn.fetchval("SELECT 1")
                _mark("first_query")
            finally:
                await conn.close()
        asyncio.run(_main())
    elif _driver == "sqlalchemy":
        try:
            with _engine.connect() as _conn:
                _mark("connect")
                _stage = "first_query"
                _conn.execute(sqlalchemy.text("SELECT 1")).scalar_one()
                _mark("first_query")
        finally:
            _engine.dispose()
    else:
        async def _main():
            global _stage
            try:
                conn = await _engine.connect()
                _mark("connect")
                _stage = "first_query"
                try:
                    (await conn.execute(sqlalchemy.text("SELECT 1"))).scalar_one()
                    _mark("first_query")
                finally:
                    await conn.close()
            finally:
                await _engine.dispose()
        asyncio.run(_main())
except _ImportsChecked:
    pass
except BaseException as _exc:
    _report()
    _text = " ".join(str(_exc).split())
    sys.stdout.write("error\t%s\t%s\t%s\n" % (_stage, type(_exc).__name__, _text))
    sys.stdout.flush()
    sys.exit(3)
_report()
"""


@dataclasses.dataclass(frozen=True)
class ProcessTimings:
    """One fresh process, phases in milliseconds (they add up to ``total``)."""

    interpreter: float
    imports: float
    driver_import: float
    connect: float
    first_query: float

    @property
    def total(self) -> float:
        return (
            self.interpreter + self.imports + self.driver_import + self.connect + self.first_query
        )

    def phases(self) -> dict[str, float]:
        out = dataclasses.asdict(self)
        out["total"] = self.total
        return out


def child_config(params: ConnectParams, driver: str, imports: Sequence[str]) -> str:
    """What the child reads on stdin (tab-separated lines; secrets stay off argv)."""
    lines = [
        f"driver\t{driver}",
        f"timeout\t{params.connect_timeout}",
        f"conninfo\t{params.libpq_conninfo()}",
        f"asyncpg_dsn\t{params.asyncpg_dsn()}",
        f"sqlalchemy_url\t{params.target().sqlalchemy_url('psycopg')}",
    ]
    lines += [f"import\t{module}" for module in imports]
    return "\n".join(lines) + "\n"


def measure(
    params: ConnectParams,
    driver: str,
    imports: Sequence[str] = (),
    *,
    python: str | None = None,
    cwd: str | None = None,
) -> ProcessTimings:
    """Start a fresh interpreter that imports ``imports`` and the driver, connects and
    runs ``SELECT 1``; its phases in ms.

    python: the interpreter (default ``sys.executable``); cwd: where the user's modules
    are importable from (default the current directory). Raises :class:`UsageError` when
    a module cannot be imported, :class:`ConnectError` when the connection fails.
    """
    t_spawn, marks = _run_child(
        child_config(params, driver, imports),
        f"the {driver} cold-start process",
        params.connect_timeout * 2 + 120.0,
        python=python,
        cwd=cwd,
        on_error=lambda stage, kind, text: _child_error(params, driver, stage, kind, text),
    )
    if "first_query" not in marks:
        raise DbprobeError(f"the {driver} cold-start process ended before its first query")
    return ProcessTimings(
        interpreter=(marks["start"] - t_spawn) / _NS_PER_MS,
        imports=(marks["imports"] - marks["start"]) / _NS_PER_MS,
        driver_import=(marks["driver_import"] - marks["imports"]) / _NS_PER_MS,
        connect=(marks["connect"] - marks["driver_import"]) / _NS_PER_MS,
        first_query=(marks["first_query"] - marks["connect"]) / _NS_PER_MS,
    )


def check_imports(
    imports: Sequence[str],
    *,
    python: str | None = None,
    cwd: str | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Import ``imports`` in a fresh interpreter, as :func:`measure` will, and connect
    nowhere: raises :class:`UsageError` naming the first module that cannot be
    imported. Run before any measurement so bad input fails first."""
    config = "driver\tnone\n" + "".join(f"import\t{module}\n" for module in imports)
    _run_child(
        config,
        "the import check process",
        timeout_s,
        python=python,
        cwd=cwd,
        on_error=lambda stage, kind, text: _child_error(None, "", stage, kind, text),
    )


def _run_child(
    config: str,
    what: str,
    timeout_s: float,
    *,
    python: str | None,
    cwd: str | None,
    on_error: Callable[[str, str, str], DbprobeError],
) -> tuple[int, dict[str, int]]:
    """Run :data:`CHILD_SCRIPT` with ``config`` on its stdin (never on its command
    line); the moment it was spawned and the marks it reported (monotonic ns)."""
    t_spawn = time.monotonic_ns()
    proc = subprocess.Popen(
        [python or sys.executable, "-c", CHILD_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd or os.getcwd(),
        text=True,
    )
    try:
        out, err = proc.communicate(config, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        raise DbprobeError(f"{what} did not finish within {timeout_s:.0f} s") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    marks: dict[str, int] = {}
    for line in out.splitlines():
        fields = line.split("\t")
        if fields[0] == "mark" and len(fields) == 3:
            marks[fields[1]] = int(fields[2])
        elif fields[0] == "error" and len(fields) >= 4:
            raise on_error(fields[1], fields[2], "\t".join(fields[3:]))
    if proc.returncode != 0:
        tail = " | ".join((err or "").strip().splitlines()[-2:]) or f"exit code {proc.returncode}"
        raise DbprobeError(f"{what} failed: {tail}")
    return t_spawn, marks


class _ChildFailure(Exception):
    """Carries the child's exception type and message for classification."""


def _child_error(
    params: ConnectParams | None, driver: str, stage: str, kind: str, text: str
) -> DbprobeError:
    if stage.startswith("import "):
        module = stage[len("import ") :]
        return UsageError(f"cannot import module {module!r} in a fresh process: {kind}: {text}")
    if stage == "driver_import":
        return UsageError(f"cannot import the {driver} driver in a fresh process: {kind}: {text}")
    if params is None:
        return DbprobeError(f"a fresh process failed at {stage}: {kind}: {text}")
    target = DatabaseTarget(host=params.host, port=params.port, user=params.user)
    builtin = getattr(builtins, kind, None)
    exc: BaseException
    if isinstance(builtin, type) and issubclass(builtin, OSError):
        exc = builtin(text)  # socket errors keep their meaning (refused, timed out)
    else:
        exc = _ChildFailure(f"{kind} {text}")
    error = connect_error(exc, target)
    return type(error)(f"{driver} in a fresh process: {error}")
