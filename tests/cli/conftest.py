"""Fixtures for the admin CLI tests: real databases (as in tests/queue) and `python -m source.cli` runs.

Every backend test runs against a real SQLite file and a real PostgreSQL schema.

PostgreSQL comes from $TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres): one database is
created for the session and dropped at the end; each test gets its own empty schema. Without the variable the
Postgres cases are skipped with the reason, unless REQUIRE_POSTGRES=1 (CI), which makes them fail instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    with temporary_database(admin_url, prefix="hw_cli_test") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
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


REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        return self.stdout.strip().splitlines()[-1]

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., CliResult]:
    """Runs `python -m source.cli ARGS` from a scratch folder (so a default sqlite:///tasks.db lands there)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HW_") and key != "DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO_ROOT)

    def run(*args: str, stdin: str | None = None, extra_env: dict[str, str] | None = None) -> CliResult:
        completed = subprocess.run(
            [sys.executable, "-m", "source.cli", *args],
            cwd=tmp_path,
            env={**env, **(extra_env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run
