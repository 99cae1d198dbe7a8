"""URL parsing and masking (pure)."""

from __future__ import annotations

import pytest

from dbprobe.errors import BadUrlError
from dbprobe.urls import mask_secrets, parse_url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cr%40t@db.example:6543/shop?sslmode=require",
        "postgresql+psycopg://app:s3cr%40t@db.example:6543/shop?sslmode=require",
        "postgresql+asyncpg://app:s3cr%40t@db.example:6543/shop?ssl=require",
        "postgres://app:s3cr%40t@db.example:6543/shop?sslmode=require",
        "host=db.example port=6543 dbname=shop user=app password='s3cr@t' sslmode=require",
    ],
)
def test_every_form_parses_to_the_same_target(url: str) -> None:
    t = parse_url(url)
    assert (t.host, t.port, t.user, t.password, t.database) == (
        "db.example",
        6543,
        "app",
        "s3cr@t",
        "shop",
    )
    assert t.options["sslmode"] == "require"
    assert "s3cr" not in t.masked() and "***" in t.masked()
    assert "s3cr" not in repr(t)
    assert t.sqlalchemy_url("asyncpg").startswith("postgresql+asyncpg://app:s3cr%40t@")
    assert "ssl=require" in t.sqlalchemy_url("asyncpg")
    assert t.asyncpg_kwargs()["password"] == "s3cr@t"


def test_unix_socket_and_ipv6_hosts() -> None:
    t = parse_url("postgresql:///shop?host=/var/run/postgresql&port=5433")
    assert t.host == "/var/run/postgresql" and t.port == 5433 and t.database == "shop"
    assert "host=%2Fvar%2Frun%2Fpostgresql" in t.libpq_dsn()
    v6 = parse_url("postgresql://u@[::1]:5432/db")
    assert v6.host == "::1"
    assert "[::1]:5432" in v6.libpq_dsn()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root:pw@localhost/db", "not a PostgreSQL URL"),
        ("postgresql://u@host:99999/db", "[Pp]ort"),
        ("postgresql://u@host:abc/db", "malformed"),
        ("postgresql+oracle://u@h/db", "unsupported PostgreSQL driver"),
        ("just some words", "not a database URL"),
        ("", "empty"),
    ],
)
def test_bad_urls_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(BadUrlError, match=message) as info:
        parse_url(url)
    assert "pw" not in str(info.value)


def test_mask_secrets_in_free_text() -> None:
    text = "failed for postgresql://app:hunter2@db/x and password=hunter2 user=app"
    masked = mask_secrets(text)
    assert "hunter2" not in masked
    assert masked.count("***") == 2


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:se/cret@db/shop",
        "postgresql://app:se#cret@db/shop",
        "postgresql://app:se?cret@db/shop",
        "postgresql://app:12ab@db:notaport/shop",
    ],
)
def test_malformed_url_errors_never_quote_the_password(url: str) -> None:
    with pytest.raises(BadUrlError) as info:
        parse_url(url)
    secret = url.split(":")[2].split("@", maxsplit=1)[0]
    for fragment in (secret, "cret", "12ab"):
        assert fragment not in str(info.value)


def test_masked_hides_password_options() -> None:
    t = parse_url("postgresql://app:pw@db/shop?sslmode=verify-full&sslpassword=keypass")
    assert "keypass" not in t.masked()
    assert "sslmode=verify-full" in t.masked()
