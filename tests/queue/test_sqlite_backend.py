"""The embedded backend's own promises, on a real SQLite file: one connection per thread, reused and all released by
close(); readers that never wait for a writer (WAL); a file that may live in a folder not made yet; times stored
as UTC whatever the machine's zone."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from source.queue import QueueUnavailable, TaskQueue, TaskStatus, open_queue
from source.queue.testing import ManualClock


@pytest.fixture
def sqlite_queue(tmp_path: Path) -> Iterator[TaskQueue]:
    queue = open_queue(f"sqlite:///{tmp_path / 'tasks.db'}")
    queue.migrate()
    yield queue
    queue.close()


def _open_files(queue: TaskQueue) -> int:
    """How many of this process's file descriptors point at the queue's database file (or its -wal, -shm)."""
    database = str(queue.path)  # type: ignore[attr-defined]
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        count += target.startswith(database)
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_each_thread_reuses_one_connection_and_close_releases_them_all(sqlite_queue: TaskQueue) -> None:
    task_id = sqlite_queue.enqueue("t", {})
    before = _open_files(sqlite_queue)
    for _ in range(40):  # a worker polls for hours: its calls must not each open the file again
        assert sqlite_queue.get(task_id).status is TaskStatus.QUEUED
        sqlite_queue.count_ready()
    assert _open_files(sqlite_queue) == before

    def poll() -> None:
        for _ in range(5):
            sqlite_queue.count_ready()

    threads = [threading.Thread(target=poll) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _open_files(sqlite_queue) > before, "each thread has its own connection"
    sqlite_queue.close()  # from the main thread, for the other threads' connections too
    assert _open_files(sqlite_queue) == 0


def test_a_closed_queue_opens_again_on_its_next_use(sqlite_queue: TaskQueue) -> None:
    task_id = sqlite_queue.enqueue("t", {})
    sqlite_queue.close()
    assert sqlite_queue.get(task_id).id == task_id


def test_readers_do_not_wait_for_a_writer(sqlite_queue: TaskQueue) -> None:
    task_id = sqlite_queue.enqueue("t", {})
    other = sqlite3.connect(sqlite_queue.path, isolation_level=None, check_same_thread=False)  # type: ignore[attr-defined]
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock ...
    release = threading.Timer(2.0, lambda: other.execute("ROLLBACK"))  # ... for 2 s (a bug waits for it)
    release.start()
    try:
        started = time.monotonic()
        assert sqlite_queue.get(task_id).id == task_id
        assert [task.id for task in sqlite_queue.list_tasks()] == [task_id]
        assert time.monotonic() - started < 1.0
    finally:
        release.cancel()
        release.join()
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def test_the_file_may_be_in_folders_that_do_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "tasks.db"
    queue = open_queue(f"sqlite:///{path}")
    try:
        assert queue.migrate() == queue.latest_version
        assert path.is_file()
    finally:
        queue.close()


def test_a_path_sqlite_cannot_open_is_unavailable_naming_it(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path}")  # a folder, not a file
    try:
        with pytest.raises(QueueUnavailable, match=f"^cannot open SQLite database {tmp_path}: unable to open"):
            queue.migrate()
    finally:
        queue.close()


def test_the_queues_clock_is_stored_as_utc_whatever_the_machines_zone(tmp_path: Path, monkeypatch) -> None:
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    clock = ManualClock(start)
    queue = open_queue(f"sqlite:///{tmp_path / 'tasks.db'}", clock=clock)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        queue.migrate()
        task_id = queue.enqueue("t", {"at": start})
        task = queue.claim("w1", lease_seconds=60)
        assert task is not None
        assert (task.generation_started_at, task.lease_expires_at) == (start, start + timedelta(seconds=60))
        assert queue.get(task_id).params == {"at": "2026-06-01 12:00:00+00:00"}
    finally:
        queue.close()
        monkeypatch.undo()
        time.tzset()
