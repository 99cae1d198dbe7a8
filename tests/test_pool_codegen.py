"""The threaded driver is generated from the asyncio source, and is up to date."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import async_to_sync  # noqa: E402


def _has_ruff() -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "ruff", "--version"], capture_output=True, check=False
    )
    return probe.returncode == 0 or shutil.which("ruff") is not None


def test_generated_sync_module_is_up_to_date() -> None:
    if not _has_ruff():
        pytest.skip("ruff (dev extra) formats the generated module")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "async_to_sync.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_transformer_drops_await_async_only_and_renames() -> None:
    source = textwrap.dedent(
        '''
        import asyncio
        import asyncpg
        from sqlalchemy.ext.asyncio import create_async_engine
        from dbprobe.pool._compat import AWorkers, asleep, async_only

        class SqlalchemyAsyncAdapter:
            """Uses create_async_engine."""
            async def open(self) -> None:
                self.engine = create_async_engine("x")
                await asleep(0.1)
                async with self.engine.connect() as conn:
                    await conn.close()

        @async_only
        class AsyncpgAdapter:
            async def open(self) -> None:
                self.pool = await asyncpg.create_pool()
        '''
    )
    tree = async_to_sync.AsyncToSync().visit(ast.parse(source))
    ast.fix_missing_locations(tree)
    code = ast.unparse(tree)
    assert "await" not in code and "async " not in code
    assert "asyncpg" not in code and "asyncio" not in code and "async_only" not in code
    assert "class SqlalchemyAdapter" in code
    assert "from sqlalchemy import create_engine" in code
    assert "Uses create_engine." in code
    assert "sleep(0.1)" in code and "asleep" not in code
    assert "with self.engine.connect() as conn" in code
    assert "Workers" in code and "AWorkers" not in code


def test_sync_module_has_no_asyncpg_and_the_threaded_names() -> None:
    from dbprobe.pool import _sync

    assert hasattr(_sync, "SqlalchemyAdapter")
    assert hasattr(_sync, "PsycopgAdapter")
    assert hasattr(_sync, "Driver")
    assert not hasattr(_sync, "AsyncpgAdapter")
    assert _sync.SqlalchemyAdapter.kind == "sqlalchemy"
    assert _sync.PsycopgAdapter.kind == "psycopg"
    text = (ROOT / "dbprobe" / "pool" / "_sync.py").read_text()
    assert "GENERATED" in text and "await " not in text


def test_generated_docstrings_name_the_threaded_classes() -> None:
    # the threaded SQLAlchemy adapter is an Engine with a QueuePool, not the asyncio
    # AsyncEngine / AsyncAdaptedQueuePool its source describes
    from dbprobe.pool import _sync

    doc = _sync.SqlalchemyAdapter.__doc__ or ""
    assert "``Engine``" in doc and "``QueuePool``" in doc
    assert "Async" not in doc
