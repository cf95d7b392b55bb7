"""Throw-away PostgreSQL databases and schemas for tests (the test suites' fixtures build on these).

    with temporary_database("postgresql://postgres@127.0.0.1:5432/postgres") as database_url:
        with temporary_schema(database_url) as url:   # a URL whose search_path is a fresh, empty schema
            queue = open_queue(url)

Nothing here runs unless a test asks for it; `TEST_DATABASE_URL` names the server (see `postgres_admin_url`).

`ManualClock` is a clock for `open_queue(url, clock=...)` that moves only when told, so a test advances time past a
lease or a back-off instead of sleeping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TEST_DATABASE_URL_ENV = "TEST_DATABASE_URL"
REQUIRE_POSTGRES_ENV = "REQUIRE_POSTGRES"


class ManualClock:
    """A queue clock that stands still until `advance`d; it starts at the real time, so rows it stamps sit among
    rows stamped by the database's clock."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = datetime.now(UTC) if start is None else start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def postgres_admin_url() -> str | None:
    """$TEST_DATABASE_URL (a server the tests may create databases on), or None."""
    value = os.environ.get(TEST_DATABASE_URL_ENV, "").strip()
    return value or None


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_POSTGRES_ENV, "").strip().lower() in ("1", "true", "yes")


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


def with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


@contextmanager
def temporary_database(admin_url: str, *, prefix: str = "hw_test") -> Iterator[str]:
    """Creates a fresh database on the server of `admin_url`, yields its URL, drops it afterwards."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def temporary_schema(database_url: str, *, prefix: str = "t") -> Iterator[str]:
    """Creates an empty schema, yields a URL whose connections use it (search_path), drops it afterwards."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield with_search_path(database_url, name)
    finally:
        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
