"""Rows written by someone else's app, run by the real worker loop over a real SQLite file and a real PostgreSQL.

Each test writes the hostile row with plain SQL, as another app would (the queue's own enqueue refuses most of them),
and checks that the worker fails that task with a reason, runs the healthy task queued behind it, and writes nothing
outside its folders.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from loop_helpers import in_process_settings

from source.queue import TaskQueue, TaskStatus, WorkerIdInUse, open_queue
from source.queue.testing import ManualClock
from source.tasks import WorkerServices, default_registry
from source.tasks.context import make_work_dir, remove_stale_work_dirs
from source.worker import EXIT_STARTUP_FAILED, run

pytestmark = pytest.mark.usefixtures("restore_loguru")


def _run(url: str, tmp_path: Path, **overrides: Any) -> int:
    return run(
        in_process_settings(url, tmp_path, **overrides),
        registry=default_registry(),
        services=WorkerServices(),
        install_signal_handlers=False,
    )


def _insert_sqlite(url: str, task_id: str, params_sql: str, *, task_type: str = "debug_sleep") -> None:
    """A row as another app writes it: params given as an SQL expression, no dependencies, not yet classified."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
        connection.execute(
            "INSERT INTO tasks (id, task_type, params, status, created_at, updated_at) "
            f"VALUES (?, ?, {params_sql}, 'Queued', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), NULL)",
            (task_id, task_type),
        )


SQLITE_POISON = {
    "not-json": ("'{not json'", "params: not valid JSON"),
    "empty": ("''", "params: empty text"),
    "deep": ("?3", "params: JSON nested deeper than 64 levels"),
    "invalid-utf8": ("CAST(X'7B2261223A2280FF227D' AS TEXT)", "params: not valid UTF-8 text"),
    "surrogate": ('\'{"a": "\\ud800"}\'', "params.a: text contains a lone surrogate"),
    "nul": ('\'{"a": "x\\u0000y"}\'', "params.a: text contains a NUL character"),
    "huge": ("?4", "params: 3145742 bytes of JSON; at most 2097152 are accepted"),
    "array": ("'[1, 2]'", "params: expected a JSON object, got a JSON list"),
}


def test_poison_rows_fail_with_the_reason_and_the_task_behind_them_runs(
    sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    huge = json.dumps({"prompt": "x" * (3 * 1024 * 1024)})
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as connection:
        for task_id, (params_sql, _reason) in SQLITE_POISON.items():
            sql = params_sql.replace("?3", "?").replace("?4", "?")
            extra = (deep,) if params_sql == "?3" else (huge,) if params_sql == "?4" else ()
            connection.execute(
                "INSERT INTO tasks (id, task_type, params, status, created_at) "
                f"VALUES (?, 'debug_sleep', {sql}, 'Queued', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (task_id, *extra),
            )
    healthy = sqlite_queue.enqueue("debug_sleep", {"seconds": 0, "steps": 1})

    # Listing, showing and cancelling such rows works before any worker touches them.
    listed = {task.id: task for task in sqlite_queue.list_tasks()}
    assert listed["invalid-utf8"].decode_error == "params: not valid UTF-8 text"
    assert sqlite_queue.cancel("empty", "cleaning up") == ["empty"]

    assert _run(sqlite_url, tmp_path) == 0

    for task_id, (_sql, reason) in SQLITE_POISON.items():
        task = sqlite_queue.get(task_id)
        if task_id == "empty":
            assert task.status is TaskStatus.CANCELLED
            continue
        assert task.status is TaskStatus.FAILED, task_id
        assert task.attempts == 1, f"{task_id}: an undecodable row is never retried"
        assert task.error_message.startswith(f"the task row cannot be read: {reason}"), task.error_message
    assert sqlite_queue.get(healthy).status is TaskStatus.COMPLETE


@pytest.mark.postgres
def test_postgres_rows_nested_2000_deep_or_megabytes_long_fail_alone(
    postgres_database_url: str, tmp_path: Path
) -> None:
    import psycopg

    from source.queue.testing import temporary_schema

    with temporary_schema(postgres_database_url) as url:
        queue = open_queue(url)
        try:
            queue.migrate()
            deep = '{"a": ' + "[" * 2000 + "]" * 2000 + "}"  # PostgreSQL's jsonb takes it; Python's json does not
            huge = json.dumps({"prompt": "x" * (3 * 1024 * 1024)})
            with psycopg.connect(url, autocommit=True) as connection:
                for task_id, params in (("deep", deep), ("huge", huge)):
                    connection.execute(
                        "INSERT INTO tasks (id, task_type, params, status) VALUES (%s, 'debug_sleep', %s::jsonb, "
                        "'Queued')",
                        (task_id, params),
                    )
            healthy = queue.enqueue("debug_sleep", {"seconds": 0, "steps": 1})
            assert {task.id for task in queue.list_tasks()} == {"deep", "huge", healthy}
            assert _run(url, tmp_path) == 0
            assert queue.get("deep").error_message == (
                "the task row cannot be read: params: JSON nested deeper than 64 levels"
            )
            assert queue.get("huge").error_message.startswith("the task row cannot be read: params: 31457")
            assert queue.get(healthy).status is TaskStatus.COMPLETE
        finally:
            queue.close()


def test_a_task_id_with_dot_dots_writes_and_deletes_nothing_outside(
    sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path
) -> None:
    victim = tmp_path / "x" / "victim"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    # What `cli enqueue --id` used to pass through: the victim, seen from the worker's scratch root.
    hostile_id = os.path.relpath(victim, tmp_path / "outputs" / ".work")
    assert hostile_id.startswith("../")
    with pytest.raises(ValueError, match="task_id: expected 1 to 128 characters"):
        sqlite_queue.enqueue("debug_sleep", {}, task_id=hostile_id)
    _insert_sqlite(sqlite_url, hostile_id, '\'{"seconds": 0, "steps": 1}\'')
    before = sorted(str(path) for path in tmp_path.rglob("*") if "outputs" not in path.parts)

    assert _run(sqlite_url, tmp_path) == 0

    task = sqlite_queue.get(hostile_id)
    assert task.status is TaskStatus.COMPLETE
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "x" / "victim.json").exists()
    after = sorted(str(path) for path in tmp_path.rglob("*") if "outputs" not in path.parts)
    assert after == before, "nothing outside outputs/ was created or removed"
    written = Path(task.output_location)
    assert written.is_relative_to(tmp_path / "outputs" / "debug") and written.name.endswith(".json")


def test_scratch_folders_stay_inside_the_work_root_and_are_unique(tmp_path: Path) -> None:
    root = tmp_path / "work"
    first = make_work_dir(root, "../../etc")
    second = make_work_dir(root, "../../etc")
    assert first != second and first.parent == root == second.parent  # one component each, never ".." itself
    assert first.resolve().is_relative_to(root.resolve()) and first.is_dir()

    old = make_work_dir(root, "left-by-a-killed-worker")
    long_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (long_ago, long_ago))
    assert remove_stale_work_dirs(root) == 1
    assert not old.exists() and first.exists()


def test_a_worker_id_held_by_a_live_worker_is_not_taken(sqlite_url: str, tmp_path: Path):
    clock = ManualClock()  # moved instead of slept on
    with closing(open_queue(sqlite_url, clock=clock)) as sqlite_queue:
        sqlite_queue.migrate()
        sqlite_queue.register_worker("pod-1", session_id="first", metadata={"pid": 1}, stale_seconds=30)
        with pytest.raises(WorkerIdInUse, match="worker id 'pod-1' is held by a live worker"):
            sqlite_queue.register_worker("pod-1", session_id="second", metadata={}, stale_seconds=30)
        assert not sqlite_queue.beat_worker(
            "pod-1", session_id="second", status="idle", current_task_id=None, metadata={}
        )
        # Once the holder's heartbeat is older than a lease it is presumed dead, and its id may be taken.
        clock.advance(0.3)
        sqlite_queue.register_worker("pod-1", session_id="second", metadata={}, stale_seconds=0.2)
        assert not sqlite_queue.beat_worker(
            "pod-1", session_id="first", status="idle", current_task_id=None, metadata={}
        )


def test_a_second_worker_with_the_same_id_neither_starts_nor_reclaims_the_live_task(
    sqlite_queue: TaskQueue, sqlite_url: str, tmp_path: Path
) -> None:
    long_task = sqlite_queue.enqueue("debug_sleep", {"seconds": 3, "steps": 30})
    settings = dict(worker_id="same-id", lease_seconds=1.0, heartbeat_seconds=0.1)
    first_exit: list[int] = []
    first = threading.Thread(target=lambda: first_exit.append(_run(sqlite_url, tmp_path, **settings)))
    first.start()
    try:
        deadline = time.monotonic() + 10
        while sqlite_queue.get(long_task).status is not TaskStatus.IN_PROGRESS:
            assert time.monotonic() < deadline, "the first worker never claimed its task"
            time.sleep(0.05)
        started = time.monotonic()
        assert _run(sqlite_url, tmp_path, **settings) == EXIT_STARTUP_FAILED
        waited = time.monotonic() - started
        assert 0.9 < waited < 3, f"waits about one lease for the holder to go stale, then gives up ({waited:.1f} s)"
        running = sqlite_queue.get(long_task)
        assert (running.status, running.attempts) == (TaskStatus.IN_PROGRESS, 0), "the live task was not reclaimed"
    finally:
        first.join(timeout=20)
    assert first_exit == [0]
    assert sqlite_queue.get(long_task).status is TaskStatus.COMPLETE
