"""Fixtures shared by every test area.

Backend tests run against a real SQLite file and a real PostgreSQL schema. PostgreSQL comes from $TEST_DATABASE_URL
(e.g. postgresql://postgres@127.0.0.1:5432/postgres): one database is created for the session and dropped at the end;
each test gets its own empty schema. Without the variable the Postgres cases are skipped with the reason, unless
REQUIRE_POSTGRES=1 (set by .ci/run), which makes them fail instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from source.queue import TaskQueue, open_queue
from source.queue.testing import (
    REQUIRE_POSTGRES_ENV,
    TEST_DATABASE_URL_ENV,
    postgres_admin_url,
    postgres_required,
    temporary_database,
    temporary_schema,
)


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    admin_url = postgres_admin_url()
    if admin_url is None:
        reason = f"PostgreSQL tests need {TEST_DATABASE_URL_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
        if postgres_required():
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}")
        pytest.skip(reason)
    with temporary_database(admin_url, prefix="hw_test") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
        return
    database_url = request.getfixturevalue("postgres_database_url")
    with temporary_schema(database_url) as url:
        yield url


@pytest.fixture
def queue(queue_url: str) -> Iterator[TaskQueue]:
    opened = open_queue(queue_url)
    opened.migrate()
    yield opened
    opened.close()
