"""Migrations (fresh, idempotent, an existing v1 database upgraded in place, a legacy upstream SQLite file), the
named-statement loader and database URLs."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from source.queue import InvalidQueueUrl, TaskStatus, open_queue, redact_url, resolve_db_url, sqlfiles
from source.queue.sqlfiles import Statement, load_migrations, load_queries, parse_named_statements
from source.queue.testing import (
    REQUIRE_POSTGRES_ENV,
    ManualClock,
    postgres_admin_url,
    postgres_required,
    with_credentials,
    with_database,
    with_search_path,
)
from source.queue.urls import parse_db_url


def test_migrate_is_idempotent_and_reports_the_version(queue_url: str) -> None:
    first = open_queue(queue_url)
    second = open_queue(queue_url)
    try:
        assert first.migrate() == 3
        assert second.migrate() == 3
        assert first.migrate() == 3
    finally:
        first.close()
        second.close()


def _insert_v1_rows(queue_url: str) -> None:
    """Rows written the way a v1 (Reigh-shaped) database holds them, with the driver directly."""
    rows = [
        ("a", "travel_segment", '{"prompt": "first"}', "Complete", None, "a.mp4", "2024-01-01T00:00:00.000000Z"),
        ("b", "travel_segment", '{"prompt": "second"}', "Queued", "a", None, "2024-01-01T00:00:01.000000Z"),
        ("c", "travel_stitch", '{"prompt": "third"}', "Queued", "b", None, "2024-01-01T00:00:02.000000Z"),
    ]
    parsed = parse_db_url(queue_url)
    if parsed.backend == "sqlite":
        with sqlite3.connect(parsed.sqlite_path) as connection:
            connection.executemany(
                "INSERT INTO tasks (id, task_type, params, status, dependant_on, output_location, project_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, 'p', ?)",
                rows,
            )
        return
    import psycopg

    with psycopg.connect(queue_url) as connection:
        for row in rows:
            connection.execute(
                "INSERT INTO tasks (id, task_type, params, status, dependant_on, output_location, project_id, "
                "created_at) VALUES (%s, %s, %s::jsonb, %s, %s, %s, 'p', %s::timestamptz)",
                row,
            )


def test_a_v1_database_is_upgraded_in_place(queue_url: str) -> None:
    old = open_queue(queue_url)
    assert old.migrate(target_version=1) == 1
    old.close()
    _insert_v1_rows(queue_url)

    queue = open_queue(queue_url)
    try:
        assert queue.migrate() == 3
        b = queue.get("b")
        assert (b.params, b.status, b.dependant_on, b.project_id) == ({"prompt": "second"}, TaskStatus.QUEUED, "a", "p")
        assert (b.priority, b.max_attempts, b.attempts, b.parent_id) == (0, 3, 0, None)
        assert b.created_at is not None and b.created_at.year == 2024
        # the old single-column chain still gates claims after the upgrade
        task = queue.claim("w1", lease_seconds=30)
        assert task is not None and task.id == "b"
        assert queue.claim("w1", lease_seconds=30) is None
        queue.fail("b", "w1", "bad")
        assert queue.get("c").status is TaskStatus.FAILED
    finally:
        queue.close()


def test_a_legacy_upstream_sqlite_file_gains_the_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "legacy.db"
    with sqlite3.connect(path) as connection:  # the upstream worker's table: no worker_id, attempts, error_message
        connection.execute(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, task_type TEXT NOT NULL, params TEXT NOT NULL, "
            "status TEXT NOT NULL DEFAULT 'Queued', dependant_on TEXT NULL, output_location TEXT NULL, "
            "created_at TEXT NOT NULL, updated_at TEXT NULL, generation_started_at TEXT NULL, "
            "generation_processed_at TEXT NULL, project_id TEXT NOT NULL)"
        )
        connection.execute(
            "INSERT INTO tasks (id, task_type, params, status, created_at, project_id) "
            "VALUES ('old', 'generate_video', '{}', 'Queued', '2025-01-01T00:00:00Z', 'default_project_id')"
        )
    queue = open_queue(f"sqlite:///{path}")
    try:
        assert queue.migrate() == 3
        task = queue.claim("w1", lease_seconds=30)
        assert task is not None and task.id == "old" and task.attempts == 0
        queue.complete("old", "w1", output_location="done.mp4")
        assert queue.get("old").status is TaskStatus.COMPLETE
    finally:
        queue.close()


def test_both_backends_define_the_same_statements() -> None:
    sqlite_queries, postgres_queries = load_queries("sqlite"), load_queries("postgres")
    assert set(sqlite_queries) == set(postgres_queries)
    assert (
        [m.version for m in load_migrations("sqlite")] == [m.version for m in load_migrations("postgres")] == [1, 2, 3]
    )


def test_named_statement_parser() -> None:
    text = (
        "-- header comment\n\n-- name: first\n-- what it does\nSELECT 1;\n\n-- name: second\n"
        "-- application_name: claim_task\nSELECT\n  2\n"
    )
    assert parse_named_statements(text, source="x.sql") == [
        Statement("first", "SELECT 1", None),
        Statement("second", "SELECT\n  2", "claim_task"),
    ]
    with pytest.raises(ValueError, match="more than once"):
        parse_named_statements("-- name: a\n-- application_name: x\n-- application_name: y\nSELECT 1", source="x.sql")
    with pytest.raises(ValueError, match="defined twice"):
        parse_named_statements("-- name: a\nSELECT 1\n-- name: a\nSELECT 2", source="x.sql")
    with pytest.raises(ValueError, match="before the first"):
        parse_named_statements("SELECT 1\n-- name: a\nSELECT 2", source="x.sql")
    with pytest.raises(ValueError, match="is empty"):
        parse_named_statements("-- name: a\n-- only a comment\n", source="x.sql")


@pytest.mark.parametrize(
    ("url", "backend", "path"),
    [
        ("sqlite:///tasks.db", "sqlite", "tasks.db"),
        ("sqlite:////var/lib/hw/tasks.db", "sqlite", "/var/lib/hw/tasks.db"),
        ("data/tasks.sqlite", "sqlite", "data/tasks.sqlite"),
        ("postgres://u:pw@db:5432/q", "postgres", None),
        ("postgresql://u@db/q", "postgres", None),
    ],
)
def test_database_urls(url: str, backend: str, path: str | None) -> None:
    parsed = parse_db_url(url)
    assert parsed.backend == backend
    assert (str(parsed.sqlite_path) if parsed.sqlite_path else None) == path
    if backend == "postgres":
        assert parsed.url.startswith("postgresql://")


def test_bad_database_urls_say_what_is_accepted() -> None:
    with pytest.raises(InvalidQueueUrl, match="in-memory"):
        parse_db_url("sqlite:///:memory:")
    with pytest.raises(InvalidQueueUrl, match=r"expected sqlite:///relative") as error:
        parse_db_url("mysql://root:hunter2@db/q")
    assert "hunter2" not in str(error.value)


def test_password_redaction_and_default_url() -> None:
    assert redact_url("postgresql://user:s3cret@host:5432/db") == "postgresql://user:***@host:5432/db"
    assert redact_url("postgresql://host/db?password=s3cret&sslmode=require") == (
        "postgresql://host/db?password=***&sslmode=require"
    )
    assert resolve_db_url(None, {}) == "sqlite:///tasks.db"
    assert resolve_db_url(None, {"DATABASE_URL": "postgresql://a/b"}) == "postgresql://a/b"
    assert resolve_db_url(None, {"DATABASE_URL": "postgresql://a/b", "HW_DB_URL": "sqlite:///x.db"}) == "sqlite:///x.db"
    assert resolve_db_url("sqlite:///given.db", {"HW_DB_URL": "sqlite:///x.db"}) == "sqlite:///given.db"


@contextmanager
def _silent_tcp_server(*, close_at_once: bool) -> Iterator[tuple[int, list[float]]]:
    """A local TCP port that takes connections and either closes each at once (a server restarting) or never says a
    word (a hung server, a firewall that drops): (port, when each connection was accepted)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[float] = []
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(time.monotonic())
            connection.close() if close_at_once else held.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        for connection in held:
            connection.close()


def _open_in_threads(*attempts: tuple[str, float]) -> list[tuple[BaseException | None, float]]:
    """open_queue(url, connect_timeout=timeout) for each attempt, all at once in threads (they wait on sockets, not
    the CPU), given 20 s: an attempt without a connect timeout would wait on a silent server forever."""
    import threading

    outcomes: list[dict[str, object]] = [{} for _ in attempts]

    def probe(url: str, timeout: float, outcome: dict[str, object]) -> None:
        started = time.monotonic()
        try:
            open_queue(url, connect_timeout=timeout)
        except Exception as error:  # noqa: BLE001 - returned to the test
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    threads = [
        threading.Thread(target=probe, args=(*attempt, outcome), daemon=True)
        for attempt, outcome in zip(attempts, outcomes, strict=True)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "the probe still waits on a server that never answers"
    return [(outcome.get("error"), float(outcome["seconds"])) for outcome in outcomes]


def test_the_probe_bounds_each_attempt_and_backs_off_between_them() -> None:
    """A silent server (a hung database, a firewall that drops) and one that hangs up on every connection (a database
    restarting), probed at once."""
    from source.queue import QueueUnavailable

    with (
        _silent_tcp_server(close_at_once=False) as (silent_port, silent_accepts),
        _silent_tcp_server(close_at_once=True) as (closing_port, closing_accepts),
    ):
        (silent_error, silent_seconds), (closing_error, closing_seconds) = _open_in_threads(
            (f"postgresql://user:topsecret@127.0.0.1:{silent_port}/db", 5.0),
            (f"postgresql://user:topsecret@127.0.0.1:{closing_port}/db", 4.0),
        )
    # silent: the first attempt waits the 4 whole seconds left, the last one libpq's minimum of 2: two attempts
    assert isinstance(silent_error, QueueUnavailable) and str(silent_error).endswith("connection timeout expired")
    assert len(silent_accepts) == 2 and 5.0 <= silent_seconds <= 9.0
    # hanging up: attempts 0.25, 0.5, 1, 2 and 2 s apart, exponential from a quarter second, capped at 2 s
    assert isinstance(closing_error, QueueUnavailable)
    assert "server closed the connection unexpectedly" in str(closing_error)
    assert "topsecret" not in str(closing_error) and 4.0 <= closing_seconds <= 7.5
    waits = [later - earlier for earlier, later in pairwise(closing_accepts)]
    assert 5 <= len(closing_accepts) <= 8, waits
    assert 0.15 <= waits[0] <= 0.5 and 1.5 <= max(waits) <= 2.5, waits


def test_unreachable_postgres_fails_fast_without_leaking_the_password() -> None:
    from source.queue import QueueUnavailable

    with pytest.raises(QueueUnavailable) as error:
        open_queue("postgresql://user:topsecret@127.0.0.1:1/nothing?connect_timeout=1", connect_timeout=1.0)
    assert "topsecret" not in str(error.value) and "127.0.0.1:1" in str(error.value)


@pytest.mark.postgres
def test_a_database_that_refuses_the_url_fails_at_once_naming_it_without_the_password(
    postgres_database_url: str,
) -> None:
    from source.queue import QueueRefused
    from source.queue.testing import with_credentials, with_database

    missing = with_credentials(with_database(postgres_database_url, "hw_no_such_database"), "postgres", "topsecret")
    unknown_role = with_credentials(postgres_database_url, "no_such_role", "topsecret")
    for url, reason in ((missing, 'database "hw_no_such_database" does not exist'), (unknown_role, "no_such_role")):
        started = time.monotonic()
        with pytest.raises(QueueRefused) as error:
            open_queue(url, connect_timeout=15.0)
        assert time.monotonic() - started < 2.0  # not retried for connect_timeout: it cannot get better
        assert reason in str(error.value) and "topsecret" not in str(error.value)
        assert "\n" not in str(error.value)


@pytest.mark.postgres
def test_a_reigh_style_postgres_table_with_uuid_ids_is_adopted(postgres_database_url: str) -> None:
    import uuid

    import psycopg

    from source.queue import ChildSpec
    from source.queue.testing import temporary_schema

    with temporary_schema(postgres_database_url) as url:
        with psycopg.connect(url, autocommit=True) as connection:  # as a Supabase project created by Reigh
            connection.execute(
                "CREATE TABLE tasks (id uuid PRIMARY KEY, task_type text NOT NULL, params jsonb NOT NULL, "
                "status text NOT NULL DEFAULT 'Queued', dependant_on uuid NULL, output_location text, project_id uuid, "
                "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz, "
                "generation_started_at timestamptz, generation_processed_at timestamptz)"
            )
            connection.execute(
                "CREATE TABLE workers (id text PRIMARY KEY, status text NOT NULL, metadata jsonb, "
                "last_heartbeat timestamptz, created_at timestamptz DEFAULT now())"
            )
        queue = open_queue(url)
        try:
            assert queue.migrate() == 3
            project = str(uuid.uuid4())
            parent_id = queue.enqueue("travel_orchestrator", {}, project_id=project)
            task = queue.claim("w1", lease_seconds=30)
            assert task is not None and task.id == parent_id and isinstance(task.id, str)
            segment, stitch = queue.enqueue_children(
                parent_id,
                [
                    ChildSpec("travel_segment", {}, role="segment", segment_index=0),
                    ChildSpec("travel_stitch", {}, role="stitch", depends_on=("segment:0",), completes_parent=True),
                ],
            )
            queue.await_children(parent_id, "w1", "waiting")
            assert queue.get(stitch).dependant_on == segment and queue.get(stitch).project_id == project
            claimed = queue.claim("w1", lease_seconds=30)
            assert claimed is not None and claimed.id == segment
            queue.fail(segment, "w1", "boom")
            assert queue.get(stitch).error_message == f"dependency {segment} failed: boom"
            assert queue.get(parent_id).status is TaskStatus.FAILED
            queue.register_worker("w1", session_id="s1", metadata={}, stale_seconds=30)
            assert queue.beat_worker("w1", session_id="s1", status="idle", current_task_id=None, metadata={})
            assert [worker.id for worker in queue.list_workers()] == ["w1"]
        finally:
            queue.close()


@pytest.mark.postgres
def test_a_reigh_table_from_before_uuid_array_dependencies_is_refused_not_altered(postgres_database_url: str) -> None:
    import psycopg

    from source.queue import IncompatibleSchema
    from source.queue.testing import temporary_schema

    with temporary_schema(postgres_database_url) as url:
        with psycopg.connect(url, autocommit=True) as connection:  # Reigh before 20260121000000: one uuid
            connection.execute(
                "CREATE TYPE task_status AS ENUM ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled')"
            )
            connection.execute(
                "CREATE TABLE tasks (id uuid PRIMARY KEY, task_type text NOT NULL, params jsonb NOT NULL, "
                "status task_status NOT NULL DEFAULT 'Queued', dependant_on uuid NULL, project_id uuid NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())"
            )
        with pytest.raises(IncompatibleSchema, match=r"dependant_on is uuid, not uuid\[\].*20260121000000"):
            open_queue(url)
        with psycopg.connect(url) as connection:
            columns = connection.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'tasks'"
            ).fetchone()
            tables = connection.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchone()
        assert columns == (7,) and tables == (1,)


@pytest.mark.postgres
def test_a_reigh_table_without_dependencies_is_refused_saying_what_to_apply(postgres_database_url: str) -> None:
    import psycopg

    from source.queue import IncompatibleSchema
    from source.queue.testing import temporary_schema

    with temporary_schema(postgres_database_url) as url:
        with psycopg.connect(url, autocommit=True) as connection:  # Reigh's enum, but no dependant_on at all
            connection.execute("CREATE TYPE task_status AS ENUM ('Queued', 'Complete')")
            connection.execute("CREATE TABLE tasks (id uuid PRIMARY KEY, status task_status NOT NULL)")
        with pytest.raises(IncompatibleSchema) as caught:
            open_queue(url)
    assert str(caught.value) == (
        "this is Reigh's tasks table, but dependant_on is missing, not uuid[]: apply Reigh's migrations up to "
        "20260121000000_support_multiple_dependencies.sql first"
    )


def test_the_environment_gives_the_url_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HW_DB_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "  ")
    assert resolve_db_url() == "sqlite:///tasks.db"  # blank is not set
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/db")
    assert resolve_db_url() == "postgresql://env/db"


@pytest.mark.parametrize(
    ("value", "required"), [("1", True), (" TRUE ", True), ("yes", True), ("no", False), ("", False)]
)
def test_require_postgres_reads_yes_or_no(monkeypatch: pytest.MonkeyPatch, value: str, required: bool) -> None:
    monkeypatch.setenv(REQUIRE_POSTGRES_ENV, value)
    assert postgres_required() is required
    monkeypatch.delenv(REQUIRE_POSTGRES_ENV)
    assert postgres_required() is False


def test_test_database_urls_are_rewritten_part_by_part() -> None:
    assert with_credentials("postgresql://old:p@ss@db:5432/q?sslmode=off", "u", "pw") == (
        "postgresql://u:pw@db:5432/q?sslmode=off"
    )
    assert with_credentials("postgresql://db/q", "u", "pw") == "postgresql://u:pw@db/q"
    assert with_database("postgresql://u@db:5432/postgres?x=1", "other") == "postgresql://u@db:5432/other?x=1"
    assert with_search_path("postgresql://db/q?options=-cjit%3Doff&sslmode=off", "s1") == (
        "postgresql://db/q?sslmode=off&options=-csearch_path%3Ds1"
    )


def test_the_manual_clock_moves_only_when_told() -> None:
    start = datetime(2001, 1, 1, tzinfo=UTC)
    clock = ManualClock(start)
    assert clock() == start
    clock.advance(1.5)
    assert clock() == start + timedelta(seconds=1.5)
    assert abs(ManualClock()() - datetime.now(UTC)) < timedelta(seconds=5)


def test_the_test_server_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DATABASE_URL", " postgresql://db/x ")
    assert postgres_admin_url() == "postgresql://db/x"
    monkeypatch.setenv("TEST_DATABASE_URL", "  ")
    assert postgres_admin_url() is None
    monkeypatch.delenv("TEST_DATABASE_URL")
    assert postgres_admin_url() is None


def test_statement_file_errors_name_the_file_the_line_and_the_statement() -> None:
    def error(text: str) -> str:
        with pytest.raises(ValueError) as caught:
            parse_named_statements(text, source="q.sql")
        return str(caught.value)

    assert error("-- name: a\n-- only a comment\n") == "q.sql: statement 'a' is empty"
    assert error("-- name: a\n-- application_name: x\n-- application_name: y\nSELECT 1") == (
        "q.sql: statement 'a' names application_name more than once"
    )
    assert error("-- name: a\nSELECT 1\n-- name: b\nSELECT 2\n-- name: a\nSELECT 3") == (
        "q.sql:5: statement 'a' is defined twice"
    )
    assert error("-- comment\nSELECT 1\n-- name: a\nSELECT 2") == "q.sql:2: SQL before the first '-- name:' header"
    text = "-- name: a\nSELECT 1\n    -- an indented comment\nFROM t;\n-- name: b\n  -- application_name: claim_task  \nSELECT 2"
    assert parse_named_statements(text, source="q.sql") == [
        Statement("a", "SELECT 1\nFROM t", None),
        Statement("b", "SELECT 2", "claim_task"),
    ]


def _migrations_folder(tmp_path: Path, names: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "sql" / "test"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text(f"-- name: s1\nSELECT '{name}'\n-- name: s2\nSELECT 2\n")
    monkeypatch.setattr(sqlfiles.resources, "files", lambda package: tmp_path)


def test_migrations_load_in_version_order_and_other_files_are_ignored(tmp_path: Path, monkeypatch) -> None:
    names = ["migration_0002_second.sql", "queries.sql", "migration_0001_first_one.sql", "migration_3_bad.sql"]
    _migrations_folder(tmp_path, names, monkeypatch)
    migrations = load_migrations("test")
    assert [(migration.version, migration.title) for migration in migrations] == [(1, "first_one"), (2, "second")]
    assert [statement.name for statement in migrations[0].statements] == ["s1", "s2"]
    assert migrations[0].statements[0].sql == "SELECT 'migration_0001_first_one.sql'"


def test_a_gap_in_migration_versions_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _migrations_folder(tmp_path, ["migration_0001_a.sql", "migration_0003_c.sql"], monkeypatch)
    with pytest.raises(ValueError, match=r"^sql/test: migration versions must be 1\.\.N without gaps; found \[1, 3\]$"):
        load_migrations("test")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:topsecret@127.0.0.1:5432/postgres?sslmode=bogus",
        "postgresql://postgres:topsecret@127.0.0.1:5432/postgres?bogus=1",
    ],
)
def test_a_malformed_postgres_url_is_refused_at_once(url: str) -> None:
    from source.queue import QueueRefused

    started = time.monotonic()
    with pytest.raises(QueueRefused) as error:
        open_queue(url, connect_timeout=15.0)
    assert time.monotonic() - started < 2.0
    assert str(error.value).startswith("postgresql://postgres:***@127.0.0.1:5432/postgres?")
    assert "topsecret" not in str(error.value) and "\n" not in str(error.value)


def test_which_connection_failures_are_worth_another_try() -> None:
    import psycopg

    from source.queue.postgres import _is_permanent

    for permanent in (
        psycopg.ProgrammingError('invalid URI query parameter: "bogus"'),
        psycopg.OperationalError('connection is bad: invalid sslmode value: "bogus"'),
        psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "u"'),
        psycopg.OperationalError('connection failed: FATAL:  database "nope" does not exist'),
    ):
        assert _is_permanent(permanent), permanent
    for transient in (
        psycopg.OperationalError("connection failed: FATAL:  sorry, too many clients already"),
        psycopg.OperationalError("connection failed: FATAL:  remaining connection slots are reserved"),
        psycopg.OperationalError("connection failed: FATAL:  the database system is starting up"),
        psycopg.OperationalError("connection failed: FATAL:  the database system is shutting down"),
        psycopg.OperationalError("connection failed: FATAL:  the database system is in recovery mode"),
        psycopg.OperationalError("connection failed: FATAL:  the database system is not yet accepting connections"),
        psycopg.OperationalError("connection failed: Connection refused"),
    ):
        assert not _is_permanent(transient), transient


@pytest.mark.postgres
def test_postgres_connections_are_named_and_the_pool_size_checked(postgres_database_url: str) -> None:
    import psycopg

    from source.queue.testing import temporary_schema

    with pytest.raises(ValueError, match="^pool_size: expected an integer >= 1; got 0$"):
        open_queue(postgres_database_url, pool_size=0)
    with temporary_schema(postgres_database_url) as url:
        ours = open_queue(url, pool_size=1)
        theirs = open_queue(url + "&application_name=their_app")
        try:
            ours.migrate()
            with psycopg.connect(postgres_database_url) as connection:
                names = {
                    row[0]
                    for row in connection.execute(
                        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
                    )
                }
            assert {"headless-wan2gp", "their_app"} <= names
        finally:
            ours.close()
            theirs.close()


@pytest.mark.postgres
def test_the_postgres_pool_holds_pool_size_connections_and_a_wait_for_one_ends_at_the_timeout(
    postgres_database_url: str,
) -> None:
    from source.queue import QueueUnavailable

    queue = open_queue(postgres_database_url, pool_size=2, connect_timeout=1.5)
    try:
        queue.migrate()
        pool = queue._pool  # every connection taken, as by two long transactions
        with pool.connection(timeout=5), pool.connection(timeout=5):
            started = time.monotonic()
            with pytest.raises(QueueUnavailable, match="is unavailable"):
                queue.list_tasks(limit=1)
            assert 1.0 <= time.monotonic() - started < 4.0  # connect_timeout, not the pool's own 30 s
        assert queue.list_tasks(limit=1) == []  # a connection came back: the queue works again
    finally:
        queue.close()


@pytest.mark.postgres
def test_a_database_that_stops_taking_connections_after_the_probe_fails_the_open_in_time(
    postgres_database_url: str,
) -> None:
    """The probe's connection goes through, the pool's never get an answer (the server's connection slots filled up
    in between): open_queue waits for the pool's first connection for connect_timeout, then says why."""
    import socket
    import threading

    from psycopg.conninfo import conninfo_to_dict

    from source.queue import QueueUnavailable

    target = conninfo_to_dict(parse_db_url(postgres_database_url).url)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def relay(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            return

    def serve() -> None:
        first = True
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            held.append(client)
            if first:  # the probe's connection: passed through to the real server
                first = False
                address = (target.get("host") or "127.0.0.1", int(target.get("port") or 5432))
                upstream = socket.create_connection(address)
                held.append(upstream)
                for pair in ((client, upstream), (upstream, client)):
                    threading.Thread(target=relay, args=pair, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    proxied = f"postgresql://{target.get('user', 'postgres')}@127.0.0.1:{port}/{target['dbname']}?sslmode=disable"
    try:
        ((error, seconds),) = _open_in_threads((proxied, 3.0))
    finally:
        listener.close()
        for connection in held:
            connection.close()
    assert isinstance(error, QueueUnavailable), error
    assert str(error).endswith("within 3 s (is the server up and the database created?)")
    assert f"127.0.0.1:{port}" in str(error)
    assert 2.5 <= seconds <= 6.0  # the probe, then the pool's wait of connect_timeout, not psycopg_pool's 30 s
