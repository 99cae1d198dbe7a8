"""The docker provider: a testcontainers ``PostgresContainer`` tuned like a local one.

Used only when a Docker engine answers. The container runs the official image
(``$DBPROBE_DOCKER_IMAGE``, default ``postgres:17-alpine``) with the same speed
settings as the local provider; testcontainers' Ryuk sidecar removes it if this
process dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from dbprobe.errors import ServerStartError
from dbprobe.pg.local import FAST_SETTINGS, ServerOptions
from dbprobe.pg.server import PostgresServer, read_version

log = logging.getLogger("dbprobe.pg")

DEFAULT_IMAGE = "postgres:17-alpine"
_engine_state: tuple[bool, str] | None = None


def docker_engine() -> tuple[bool, str]:
    """Whether a Docker engine answers, and why not (cached for the process)."""
    global _engine_state
    if _engine_state is not None:
        return _engine_state
    try:
        import docker
    except ImportError:
        _engine_state = (False, "the docker extra is not installed")
        return _engine_state
    try:
        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
        _engine_state = (True, "")
    except Exception as exc:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        text = str(exc)
        if "FileNotFoundError" in text or "No such file" in text:
            reason = "no socket there"
        elif "Connection refused" in text or "ConnectionRefused" in text:
            reason = "connection refused"
        elif "Permission denied" in text or "PermissionError" in text:
            reason = "permission denied"
        else:
            reason = (text.splitlines()[0] if text else type(exc).__name__)[:100]
        _engine_state = (False, f"no Docker engine answers at {where} ({reason})")
    return _engine_state


def _container_class() -> Any:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise ServerStartError(
                "testcontainers is not installed: pip install 'dbprobe[docker]'"
            ) from None
    return PostgresContainer


def _command(options: ServerOptions) -> str:
    settings = dict(FAST_SETTINGS)
    settings.pop("dynamic_shared_memory_type", None)
    settings["max_connections"] = str(options.max_connections)
    settings.update(options.settings)
    return "postgres " + " ".join(f"-c {k}={v}" for k, v in settings.items())


@contextlib.contextmanager
def run_docker(options: ServerOptions) -> Iterator[PostgresServer]:
    """Start a PostgreSQL container; stop and remove it afterwards."""
    ok, why = docker_engine()
    if not ok:
        raise ServerStartError(why)
    if options.ssl or options.hba is not None:
        raise ServerStartError("the docker provider does not support ssl or custom pg_hba")
    # Docker publishes the port on every interface: never without a password.
    password = options.password or secrets.token_urlsafe(18)
    image = os.environ.get("DBPROBE_DOCKER_IMAGE", DEFAULT_IMAGE)
    container = _container_class()(
        image, username="postgres", password=password, dbname="postgres", driver=None
    )
    container.with_command(_command(options))
    container.with_env(
        "POSTGRES_HOST_AUTH_METHOD", "scram-sha-256" if options.auth == "trust" else options.auth
    )
    start = time.perf_counter()
    try:
        container.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            container.stop()
        raise ServerStartError(f"docker container did not start: {exc}") from None
    try:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(5432))
        dsn = f"postgresql://postgres:{password}@{host}:{port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                    version = read_version(conn)
                    for ext in options.extensions:
                        with contextlib.suppress(psycopg.Error):
                            conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{ext}"')
                    with psycopg.connect(
                        dsn.rsplit("/", 1)[0] + "/template1", autocommit=True
                    ) as t1:
                        for ext in options.extensions:
                            with contextlib.suppress(psycopg.Error):
                                t1.execute(f'CREATE EXTENSION IF NOT EXISTS "{ext}"')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise ServerStartError("docker PostgreSQL did not accept connections") from None
                time.sleep(0.05)
        yield PostgresServer(
            provider="docker",
            host=host,
            port=port,
            user="postgres",
            password=password,
            database="postgres",
            version=version[0],
            version_num=version[1],
            timings={"start_s": time.perf_counter() - start},
        )
    finally:
        with contextlib.suppress(Exception):
            container.stop()
