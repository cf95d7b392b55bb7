"""What every part of the SQL queue stands on: a transaction over named statements, the backend hooks, the clock,
row decoding, and the id and lock helpers the parts share. `core.SqlTaskQueue` composes the parts (schema.py,
enqueue.py, dag.py, admin.py, workers.py) on this base; `sqlite.py` and `postgres.py` supply the connections.

Every public operation is one transaction. Write transactions take the database's write lock on SQLite
(BEGIN IMMEDIATE) and row locks on PostgreSQL; where an operation touches an orchestrator and its children it locks
the orchestrator row first, so two children finishing at once (or a child failing while another completes) see each
other's writes instead of both missing the moment the last child completes.
"""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from loguru import logger

from source.queue.models import TaskNotFound, TaskRecord, TaskStatus
from source.queue.rows import RowDecodeError, UndecodableText, decode_json
from source.queue.sqlfiles import load_migrations, load_queries

T = TypeVar("T")
Clock = Callable[[], datetime]

TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_WRITE_RETRIES = 5  # PostgreSQL deadlock / serialization conflicts are retried as a whole transaction


class RetryableConflict(Exception):
    """Raised by a backend when the database aborted a transaction that can simply be run again."""


class Transaction(ABC):
    """Runs the backend's named statements inside one open transaction."""

    @abstractmethod
    def rows(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    @abstractmethod
    def execute_script_statement(self, sql: str) -> None:
        """Runs one migration statement (no parameters)."""

    def one(self, name: str, **params: Any) -> dict[str, Any] | None:
        found = self.rows(name, params)
        return found[0] if found else None

    def all(self, name: str, **params: Any) -> list[dict[str, Any]]:
        return self.rows(name, params)

    def run(self, name: str, **params: Any) -> None:
        self.rows(name, params)


class QueueBase(ABC):
    """The TaskQueue protocol over SQL; subclasses provide transactions and value decoding. `dialect` names the
    statement files: "sqlite", "postgres" (our own schema) or "reigh" (Reigh's tables, untouched, plus ours in the
    `headless` schema).

    `clock`: None (the default) lets the database's clock decide lease expiry, back-off and worker staleness, as
    every statement that decides them falls back to it (PostgreSQL's now(), so workers on many machines agree);
    a function returning an aware datetime makes those statements use its time instead (tests move time rather
    than sleep)."""

    backend: ClassVar[str]
    # Reigh's tasks table keys rows by uuid: any other id names no task there (and must not reach a uuid cast).
    task_ids_are_uuids: bool = False

    def __init__(self, url: str, dialect: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.dialect = dialect
        self._clock = clock
        self._queries = load_queries(dialect)
        self._migrations = load_migrations(dialect)

    def _now(self) -> datetime | None:
        """The `now` parameter of the statements that decide time: None means the database's own clock."""
        if self._clock is None:
            return None
        moment = self._clock()
        if moment.tzinfo is None:
            raise ValueError(f"clock: expected a timezone-aware datetime; got {moment!r}")
        return moment

    # ---------------------------------------------------------------------------------------------- backend hooks

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Transaction]: ...

    @abstractmethod
    def _json_text(self, value: Any) -> str | bytes | None:
        """A JSON column as the backend returned it -> its text (decoded by rows.decode_json, never here)."""

    @abstractmethod
    def _decode_time(self, value: Any) -> datetime | None: ...

    @abstractmethod
    def _decode_list(self, value: Any) -> list[str]: ...

    def _migration_statement_applies(self, tx: Transaction, sql: str) -> bool:
        """Whether a migration statement still has work to do (SQLite skips ADD COLUMN for existing columns)."""
        return True

    @abstractmethod
    def close(self) -> None: ...

    @property
    def redacted_url(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redacted_url!r})"

    # ---------------------------------------------------------------------------------------------- plumbing

    def _read(self, operation: Callable[[Transaction], T]) -> T:
        with self._transaction(write=False) as tx:
            return operation(tx)

    def _write(self, operation: Callable[[Transaction], T]) -> T:
        for attempt in range(1, _WRITE_RETRIES + 1):
            try:
                with self._transaction(write=True) as tx:
                    return operation(tx)
            except RetryableConflict as conflict:
                if attempt == _WRITE_RETRIES:
                    raise
                logger.debug("transaction conflict ({}); running it again (attempt {})", conflict, attempt + 1)
        raise AssertionError("unreachable")

    def _task_from_row(self, row: Mapping[str, Any]) -> TaskRecord:
        """The row as a TaskRecord. Never raises on bad data (rows.py): what cannot be decoded is named in
        `decode_error`, and defaults stand in for it so the row can still be listed, shown, cancelled or failed."""
        problems: list[str] = []

        def text(name: str) -> Any:
            value = row.get(name)
            if isinstance(value, UndecodableText):
                problems.append(f"{name}: not valid UTF-8 text")
            return value

        def json_column(name: str) -> Any:
            try:
                return decode_json(self._json_text(row.get(name)), name)
            except RowDecodeError as error:
                problems.append(str(error))
                return None

        def number(name: str, default: int) -> int:
            value = row.get(name)
            if value is None:
                return default
            try:
                return int(value)
            except (TypeError, ValueError):
                problems.append(f"{name}: expected an integer")
                return default

        def moment(name: str) -> datetime | None:
            try:
                return self._decode_time(row.get(name))
            except (TypeError, ValueError):
                problems.append(f"{name}: expected a timestamp")
                return None

        status_text = text("status")
        try:
            status = TaskStatus.parse(status_text)
        except ValueError:  # upstream's loose spellings ("error", "canceled", ...) are parsed, not refused
            problems.append(f"status: {str(status_text)[:40]!r} is not a known status")
            status = TaskStatus.FAILED
        params = json_column("params")
        if params is not None and not isinstance(params, dict):
            problems.append(f"params: expected a JSON object, got a JSON {type(params).__name__}")
            params = None
        try:
            depends_on = tuple(self._decode_list(row.get("depends_on_list")))
        except (TypeError, ValueError):
            problems.append("dependencies: cannot be read")
            depends_on = ()
        segment_index = row.get("segment_index")
        return TaskRecord(
            id=str(text("id")),
            task_type=str(text("task_type")),
            params=params or {},
            status=status,
            dependant_on=text("dependant_on"),
            depends_on=depends_on,
            output_location=text("output_location"),
            project_id=text("project_id"),
            worker_id=text("worker_id"),
            attempts=number("attempts", 0),
            max_attempts=number("max_attempts", 3),
            priority=number("priority", 0),
            error_message=text("error_message"),
            progress=dict_or_none(json_column("progress")),
            result=dict_or_none(json_column("result")),
            parent_id=text("parent_id"),
            role=text("role"),
            segment_index=None if segment_index is None else number("segment_index", 0),
            created_at=moment("created_at"),
            updated_at=moment("updated_at"),
            generation_started_at=moment("generation_started_at"),
            generation_processed_at=moment("generation_processed_at"),
            lease_expires_at=moment("lease_expires_at"),
            heartbeat_at=moment("heartbeat_at"),
            awaiting_children=bool(row.get("awaiting_children")),
            completes_parent=bool(row.get("completes_parent")),
            available_at=moment("available_at"),
            decode_error="; ".join(problems) or None,
        )

    def _get_locked(self, tx: Transaction, task_id: str, *, where: str = "task id") -> TaskRecord:
        row = tx.one("lock_task", task_id=task_id)
        if row is None:
            raise TaskNotFound(task_id, where)
        return self._task_from_row(row)

    def _id_is_possible(self, task_id: str) -> bool:
        """Whether `task_id` can name a row at all: on a uuid-keyed table anything else is no task (and must not
        reach a uuid cast)."""
        return not self.task_ids_are_uuids or _is_uuid(task_id)

    def _known_id(self, task_id: str, where: str = "task id") -> str:
        """An id given from outside, checked before it reaches SQL."""
        if not self._id_is_possible(task_id):
            raise TaskNotFound(task_id, where)
        return task_id

    def _lock_parent_then_task(self, tx: Transaction, task_id: str) -> TaskRecord:
        """Locks the orchestrator before its child (the order every write uses), then returns the child."""
        row = tx.one("get_task", task_id=task_id)
        if row is None:
            raise TaskNotFound(task_id)
        if row["parent_id"]:
            tx.one("lock_task", task_id=row["parent_id"])
        return self._get_locked(tx, task_id)

    def _children(self, tx: Transaction, parent_id: str) -> list[TaskRecord]:
        return [self._task_from_row(row) for row in tx.all("children_of", parent_id=parent_id)]


def dict_or_none(value: Any) -> dict[str, Any] | None:
    """Our own JSON columns (progress, result, metadata) hold objects; anything else reads as absent."""
    return value if isinstance(value, dict) else None


def unique(values: Sequence[str | None]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        if value:
            seen.setdefault(value, None)
    return list(seen)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def check_positive(value: Any, where: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{where}: expected a positive number of seconds; got {value!r}")
