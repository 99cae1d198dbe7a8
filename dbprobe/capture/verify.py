"""Fix verification: run the same code again with the suggested loader option applied
and measure the statement count before and after.

Only code that is safe to run twice may be re-run: a callable the user decorates with
``@dbprobe.capture(verify_fixes=True)``, or a pytest test when ``--dbprobe-verify-fixes``
is given (the whole test protocol runs again, fixtures included, so a test whose
database is cloned per test starts from the same data). Re-runs happen only for
``n-plus-one`` findings on a lazy relationship, whose fix is a loader option that
dbprobe can apply by itself: a ``do_orm_execute`` hook adds it to every top-level ORM
SELECT that returns objects of the fix's root entity during the re-run (not to a count
or a column query of that entity). A re-run that raises is recorded as
``{"fix": ..., "error": "..."}`` and never reaches the caller. The result goes into the finding's
evidence::

    "verified": {"fix": "joinedload(Order.customer)", "queries_before": 26,
                 "queries_after": 1, "n_plus_one_remaining": false}
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from dbprobe.analysis.nplusone import LoaderFix
from dbprobe.report.model import Finding

__all__ = [
    "MAX_RERUNS",
    "build_loader_option",
    "failed",
    "fixes_to_verify",
    "loader_fix_applied",
    "verification_key",
    "verify_callable",
]

MAX_RERUNS = 5
"""At most this many re-runs (one per distinct fix) per scope."""


def verification_key(finding: Finding) -> str:
    return f"{finding.fingerprint}@{finding.location}"


def fixes_to_verify(findings: Sequence[Finding]) -> list[tuple[Finding, LoaderFix]]:
    """The N+1 findings whose fix is a loader option dbprobe can apply (at most
    :data:`MAX_RERUNS`, one per distinct fix)."""
    out: list[tuple[Finding, LoaderFix]] = []
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for finding in findings:
        raw = finding.evidence.get("loader_fix") if finding.rule == "n-plus-one" else None
        if not isinstance(raw, Mapping):
            continue
        fix = LoaderFix(
            tuple(raw["path"]), tuple(raw["strategies"]), raw.get("recursion_depth") or None
        )
        key = (fix.path, fix.strategies)
        if key in seen:
            continue
        seen.add(key)
        out.append((finding, fix))
        if len(out) >= MAX_RERUNS:
            break
    return out


def build_loader_option(root_class: type, fix: LoaderFix) -> Any:
    """The SQLAlchemy loader option for ``fix``, walking the path from ``root_class``."""
    from sqlalchemy import orm

    functions = {
        "joined": "joinedload",
        "selectin": "selectinload",
        "subquery": "subqueryload",
        "immediate": "immediateload",
    }
    if fix.recursion_depth:
        attribute = getattr(root_class, fix.path[0].partition(".")[2])
        return orm.selectinload(attribute, recursion_depth=fix.recursion_depth)
    option: Any = None
    current: Any = root_class
    for step, strategy in zip(fix.path, fix.strategies, strict=False):
        attribute = getattr(current, step.partition(".")[2])
        name = functions[strategy]
        option = (
            getattr(orm, name)(attribute) if option is None else getattr(option, name)(attribute)
        )
        current = attribute.property.mapper.class_
    return option


def _selects_entity(statement: Any, class_: type) -> bool:
    """The statement returns whole ``class_`` objects (a loader option applies to it):
    ``select(Order)``, not ``select(func.count()).select_from(Order)`` nor
    ``select(Order.id)``."""
    try:
        descriptions = statement.column_descriptions
    except Exception:
        return False
    return any(d.get("expr") is class_ for d in descriptions)


@contextlib.contextmanager
def loader_fix_applied(fixes: Sequence[LoaderFix]) -> Iterator[None]:
    """While active, every top-level ORM SELECT of a fix's root entity (any Session,
    sync or async) gets the fix's loader option."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    by_root: dict[str, list[LoaderFix]] = {}
    for fix in fixes:
        by_root.setdefault(fix.root, []).append(fix)

    def add_options(state: Any) -> None:
        if not state.is_select or state.is_relationship_load or state.is_column_load:
            return
        mapper = state.bind_mapper
        if mapper is None:
            return
        wanted = by_root.get(mapper.class_.__name__)
        if wanted and _selects_entity(state.statement, mapper.class_):
            options = [build_loader_option(mapper.class_, fix) for fix in wanted]
            state.statement = state.statement.options(*options)

    event.listen(Session, "do_orm_execute", add_options)
    try:
        yield
    finally:
        event.remove(Session, "do_orm_execute", add_options)


def summarize(
    fix: LoaderFix, finding: Finding, before: int, after_log: Any, root: str | None
) -> dict[str, Any]:
    """The ``verified`` evidence of one re-run."""
    remaining = any(
        r.fingerprint == finding.fingerprint and r.location(root) == finding.location
        for r in after_log.statements
        if r.orm is not None and r.orm.lazy
    )
    return {
        "fix": fix.expression(),
        "queries_before": before,
        "queries_after": len(after_log.statements),
        "n_plus_one_remaining": remaining,
    }


def verify_callable(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    findings: Sequence[Finding],
    before: int,
    make_scope: Callable[[], Any],
    root: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Re-run a synchronous callable once per applicable fix; returns ``verified``
    evidence keyed by :func:`verification_key`."""
    out: dict[str, dict[str, Any]] = {}
    for finding, fix in fixes_to_verify(findings):
        scope = make_scope()
        try:
            with loader_fix_applied([fix]), scope as after_log:
                fn(*args, **kwargs)
        except Exception as exc:  # the re-run failed: say so, never fail the caller
            out[verification_key(finding)] = failed(fix, exc)
            continue
        out[verification_key(finding)] = summarize(fix, finding, before, after_log, root)
    return out


def failed(fix: LoaderFix, exc: BaseException) -> dict[str, Any]:
    """The ``verified`` evidence of a re-run that raised (literals redacted)."""
    from dbprobe.capture.explain import safe_error_text

    return {"fix": fix.expression(), "error": safe_error_text(exc)}


async def verify_coroutine(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    findings: Sequence[Finding],
    before: int,
    make_scope: Callable[[], Any],
    root: str | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`verify_callable` for a coroutine function."""
    out: dict[str, dict[str, Any]] = {}
    for finding, fix in fixes_to_verify(findings):
        scope = make_scope()
        try:
            with loader_fix_applied([fix]):
                async with scope as after_log:
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        await result
        except Exception as exc:  # the re-run failed: say so, never fail the caller
            out[verification_key(finding)] = failed(fix, exc)
            continue
        out[verification_key(finding)] = summarize(fix, finding, before, after_log, root)
    return out
