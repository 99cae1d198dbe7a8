#!/usr/bin/env python
"""Generate the threaded form of dbprobe's pool driver from its asyncio source.

    python tools/async_to_sync.py           # rewrite dbprobe/pool/_sync.py
    python tools/async_to_sync.py --check   # exit 1 when _sync.py is not up to date (CI)

The transformation is mechanical, on the syntax tree: ``async def`` → ``def``,
``await x`` → ``x``, ``async with``/``async for`` → ``with``/``for``; names are renamed
through :data:`RENAMES` (in code and in docstrings), imports through
:data:`MODULE_RENAMES`; definitions decorated ``@async_only`` and imports of
:data:`DROP_IMPORTS` are left out. The result is formatted with ``ruff format`` so it
reads like the source. Comments do not survive (the source is where to read them).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "dbprobe" / "pool" / "_async.py"
TARGET = ROOT / "dbprobe" / "pool" / "_sync.py"

RENAMES = {
    "AEvent": "Event",
    "ASYNC_SQLALCHEMY_DRIVER": "SQLALCHEMY_DRIVER",
    "AWorkers": "Workers",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncDriver": "Driver",
    "AsyncPoolAdapter": "PoolAdapter",
    "PSYCOPG_ASYNC_KIND": "PSYCOPG_KIND",
    "PsycopgAsyncAdapter": "PsycopgAdapter",
    "SQLALCHEMY_ASYNC_KIND": "SQLALCHEMY_KIND",
    "SqlalchemyAsyncAdapter": "SqlalchemyAdapter",
    "arun_blocking": "run_blocking",
    "asleep": "sleep",
    "create_async_engine": "create_engine",
    "sqlalchemy_async_connect_args": "sqlalchemy_connect_args",
}
MODULE_RENAMES = {"sqlalchemy.ext.asyncio": "sqlalchemy"}
DROP_IMPORTS = {"asyncio", "asyncpg"}
ASYNC_ONLY = "async_only"
WORDS = {
    "asyncio form": "threaded form",
    "asyncio tasks": "threads",
    "``AsyncEngine``": "``Engine``",
    "``AsyncAdaptedQueuePool``": "``QueuePool``",
}

HEADER = '''"""The load driver and the pool adapters, threaded form.

GENERATED from ``dbprobe/pool/_async.py`` by ``tools/async_to_sync.py``: do not edit.
Edit the asyncio source and run ``python tools/async_to_sync.py``.
"""
'''

_WORD_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, RENAMES), key=len)[::-1]) + r")\b")


def _rename_text(value: str) -> str:
    for old, new in WORDS.items():
        value = value.replace(old, new)
    return _WORD_RE.sub(lambda m: RENAMES[m.group(1)], value)


def _is_async_only(node: ast.AST) -> bool:
    decorators = getattr(node, "decorator_list", [])
    return any(isinstance(d, ast.Name) and d.id == ASYNC_ONLY for d in decorators)


class AsyncToSync(ast.NodeTransformer):
    """The syntax-tree rewrite described in the module docstring."""

    def visit_Module(self, node: ast.Module) -> ast.AST:
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the source's docstring; the header replaces it
        node.body = [n for n in body if not _is_async_only(n)]
        self.generic_visit(node)
        node.body = [n for n in node.body if not _empty_import(n)]
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = [n for n in node.body if not _is_async_only(n)] or [ast.Pass()]
        node.name = RENAMES.get(node.name, node.name)
        self.generic_visit(node)
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        new = ast.FunctionDef(
            name=RENAMES.get(node.name, node.name),
            args=node.args,
            body=node.body,
            decorator_list=node.decorator_list,
            returns=node.returns,
            type_comment=node.type_comment,
            type_params=getattr(node, "type_params", []),
        )
        ast.copy_location(new, node)
        self.generic_visit(new)
        return new

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = RENAMES.get(node.name, node.name)
        self.generic_visit(node)
        return node

    def visit_Await(self, node: ast.Await) -> ast.AST:
        return self.visit(node.value)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        new = ast.With(items=node.items, body=node.body, type_comment=node.type_comment)
        ast.copy_location(new, node)
        self.generic_visit(new)
        return new

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        new = ast.For(
            target=node.target,
            iter=node.iter,
            body=node.body,
            orelse=node.orelse,
            type_comment=node.type_comment,
        )
        ast.copy_location(new, node)
        self.generic_visit(new)
        return new

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = RENAMES.get(node.id, node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        node.attr = RENAMES.get(node.attr, node.attr)
        self.generic_visit(node)
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str):
            node.value = _rename_text(node.value)
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        node.names = [a for a in node.names if a.name.split(".")[0] not in DROP_IMPORTS]
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        module = node.module or ""
        if module.split(".")[0] in DROP_IMPORTS:
            node.names = []
            return node
        node.module = MODULE_RENAMES.get(module, module)
        names = []
        for alias in node.names:
            if alias.name == ASYNC_ONLY:
                continue
            alias.name = RENAMES.get(alias.name, alias.name)
            names.append(alias)
        node.names = names
        return node


def _empty_import(node: ast.AST) -> bool:
    return isinstance(node, (ast.Import, ast.ImportFrom)) and not node.names


def _ruff_format(code: str, filename: Path) -> str:
    cmd = [sys.executable, "-m", "ruff"]
    probe = subprocess.run([*cmd, "--version"], capture_output=True, check=False)
    if probe.returncode != 0:
        cmd = ["ruff"]
    fixed = subprocess.run(
        [*cmd, "check", "--fix", "--exit-zero", "--quiet", "--stdin-filename", str(filename)],
        input=code,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if fixed.stdout:
        code = fixed.stdout
    out = subprocess.run(
        [*cmd, "format", "--stdin-filename", str(filename), "-"],
        input=code,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout


def generate(source: Path = SOURCE) -> str:
    """The threaded module's text, generated from ``source``."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    tree = AsyncToSync().visit(tree)
    ast.fix_missing_locations(tree)
    remaining = [n for n in ast.walk(tree) if isinstance(n, (ast.Await, ast.AsyncFunctionDef))]
    if remaining:
        raise SystemExit(f"async constructs left after the transformation: {remaining}")
    body = ast.unparse(tree)
    return _ruff_format(HEADER + "\n" + body + "\n", TARGET)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    code = generate()
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if args.check:
        if code != current:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                code.splitlines(keepends=True),
                str(TARGET.relative_to(ROOT)),
                "generated",
            )
            sys.stderr.write("".join(diff))
            sys.stderr.write(
                f"\n{TARGET.relative_to(ROOT)} is stale: run python tools/async_to_sync.py\n"
            )
            return 1
        return 0
    if code != current:
        TARGET.write_text(code, encoding="utf-8")
        print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
