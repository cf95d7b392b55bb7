"""The queue: two database backends (an embedded SQLite file, PostgreSQL for fleets; on PostgreSQL either our own
schema or Reigh's, its tables used as they are and our extra state in the `headless` schema, see postgres.py), and
Reigh's edge functions for a pod that has a Supabase URL and a token but no database (`open_reigh_edge`, edge.py).

    queue = open_queue("sqlite:///tasks.db")      # or "postgresql://user:pw@host/db"
    queue.migrate()
    task_id = queue.enqueue("debug_sleep", {"seconds": 1})
    task = queue.claim("worker-1", lease_seconds=30)

Semantics (both backends): a claim is one atomic statement taking the oldest ready task (priority first) whose
dependencies are all Complete; leases expire and are reclaimed with an attempt cap; failing or cancelling a task
fails/cancels what depends on it, transitively, and its orchestrator; an orchestrator completes through an explicit
hook when its last child completes; children are keyed (orchestrator, role, segment index) so re-running an
orchestrator never duplicates them. The queue never imports torch or the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from source.queue.models import (
    ChildSpec,
    IncompatibleSchema,
    InvalidQueueUrl,
    QueueError,
    QueueRefused,
    QueueUnavailable,
    RowRefused,
    TaskNotFound,
    TaskNotOwned,
    TaskRecord,
    TaskStateError,
    TaskStatus,
    WorkerIdInUse,
    WorkerRecord,
)
from source.queue.urls import DEFAULT_DB_URL, parse_db_url, redact_url, resolve_db_url

__all__ = [
    "DEFAULT_DB_URL",
    "ChildSpec",
    "IncompatibleSchema",
    "InvalidQueueUrl",
    "QueueError",
    "QueueRefused",
    "QueueUnavailable",
    "RowRefused",
    "TaskNotFound",
    "TaskNotOwned",
    "TaskQueue",
    "TaskRecord",
    "TaskStateError",
    "TaskStatus",
    "WorkerIdInUse",
    "WorkerRecord",
    "open_queue",
    "open_reigh_edge",
    "redact_url",
    "resolve_db_url",
]


@runtime_checkable
class TaskQueue(Protocol):
    """What the worker, the task handlers and the admin CLI use. Implemented by `SqlTaskQueue` for both backends."""

    url: str
    dialect: str  # "sqlite", "postgres" (our schema) or "reigh" (Reigh's schema, untouched)

    @property
    def redacted_url(self) -> str: ...

    @property
    def latest_version(self) -> int: ...

    def migrate(self, *, target_version: int | None = None) -> int: ...

    def schema_version(self) -> int: ...

    def enqueue(
        self,
        task_type: str,
        params: dict[str, Any],
        *,
        task_id: str | None = None,
        dependant_on: str | None = None,
        depends_on: Sequence[str] = (),
        project_id: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
    ) -> str: ...

    def enqueue_children(self, parent_id: str, children: Sequence[ChildSpec]) -> list[str]: ...

    def claim(
        self, worker_id: str, *, lease_seconds: float, task_types: Sequence[str] | None = None
    ) -> TaskRecord | None: ...

    def count_ready(self, *, task_types: Sequence[str] | None = None) -> int: ...

    def refresh_readiness(self) -> None: ...

    def renew_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool: ...

    def report_progress(self, task_id: str, worker_id: str, *, step: int, total: int, message: str = "") -> None: ...

    def share_prompts(self, task_id: str, shot_id: str, prompts: Sequence[str]) -> bool: ...

    def complete(
        self, task_id: str, worker_id: str | None, *, output_location: str | None, result: dict[str, Any] | None = None
    ) -> None: ...

    def fail(
        self,
        task_id: str,
        worker_id: str | None,
        error_message: str,
        *,
        retryable: bool = False,
        retry_delay_seconds: float = 0.0,
    ) -> TaskStatus: ...

    def release(self, task_id: str, worker_id: str) -> None: ...

    def await_children(self, task_id: str, worker_id: str, message: str) -> None: ...

    def reclaim_expired(self, *, of_worker: str | None = None) -> int: ...

    def get(self, task_id: str) -> TaskRecord: ...

    def resolve_id(self, text: str) -> str: ...

    def children(self, parent_id: str) -> list[TaskRecord]: ...

    def list_tasks(
        self, *, status: TaskStatus | str | None = None, task_type: str | None = None, limit: int = 200
    ) -> list[TaskRecord]: ...

    def cancel(self, task_id: str, reason: str = "cancelled by admin") -> list[str]: ...

    def retry(self, task_id: str) -> list[str]: ...

    def stats(self) -> dict[str, Any]: ...

    def register_worker(
        self, worker_id: str, *, session_id: str, metadata: dict[str, Any], stale_seconds: float
    ) -> None: ...

    def beat_worker(
        self, worker_id: str, *, session_id: str, status: str, current_task_id: str | None, metadata: dict[str, Any]
    ) -> bool: ...

    def list_workers(self) -> list[WorkerRecord]: ...

    def close(self) -> None: ...


def open_queue(
    url: str,
    *,
    pool_size: int = 4,
    connect_timeout: float = 15.0,
    create: bool = True,
    clock: Callable[[], datetime] | None = None,
) -> TaskQueue:
    """Opens (but does not migrate) the queue at `url`: "sqlite:///path" (relative, or "sqlite:////abs/path") or
    "postgresql://...". Raises InvalidQueueUrl for anything else, QueueRefused at once when the server refuses the
    URL (no such database, bad credentials), and QueueUnavailable if PostgreSQL cannot be reached within
    `connect_timeout` seconds. `create=False`: a SQLite file that does not exist is an error instead
    of a new empty queue (a command that only reads must not turn a typo into a database). `clock`: where lease
    expiry, back-off and worker staleness take their time from (a function returning an aware datetime); None, the
    default, is the database's own clock (tests pass `testing.ManualClock` to move time instead of sleeping)."""
    parsed = parse_db_url(url)
    if parsed.backend == "sqlite":
        from source.queue.sqlite import SqliteTaskQueue

        assert parsed.sqlite_path is not None
        if not create and not parsed.sqlite_path.is_file():
            raise QueueUnavailable(
                f"no queue database at {parsed.sqlite_path} ({parsed.url}); check --db, or create it with "
                f"`python -m source.cli migrate --db {parsed.url}`"
            )
        return SqliteTaskQueue(parsed.url, parsed.sqlite_path, clock=clock)
    from source.queue.postgres import PostgresTaskQueue  # psycopg is only imported for Postgres URLs

    return PostgresTaskQueue(parsed.url, pool_size=pool_size, connect_timeout=connect_timeout, clock=clock)


def open_reigh_edge(supabase_url: str, token: str, *, timeout: float = 30.0) -> TaskQueue:
    """The queue behind Reigh's edge functions (a pod with a Supabase URL and an access token, no database URL).
    Raises QueueRefused when the token is refused, QueueUnavailable when the functions cannot be reached."""
    from source.queue.edge import ReighEdgeQueue  # the supabase client is only imported for this backend

    return ReighEdgeQueue(supabase_url, token, timeout=timeout)
