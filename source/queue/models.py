"""The values the queue hands out: task rows, child specifications, worker rows, and the queue's errors.

Rows are parsed once, at the backend boundary, into these frozen dataclasses: JSON columns are dicts, timestamps are
timezone-aware UTC datetimes, booleans are bools, whatever the backend stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


# The statuses of a task row: the Reigh strings, stored verbatim in `status`.
class TaskStatus(StrEnum):
    QUEUED = "Queued"
    IN_PROGRESS = "In Progress"
    COMPLETE = "Complete"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        # Upstream rows spell statuses loosely ("cancelled", "canceled", "error", "in_progress").
        if not isinstance(value, str):
            return None
        key = value.strip().lower().replace("_", " ")
        aliases = {"canceled": cls.CANCELLED, "error": cls.FAILED, "completed": cls.COMPLETE}
        for status in cls:
            if status.value.lower() == key:
                return status
        return aliases.get(key)

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED)

    @classmethod
    def parse(cls, text: str) -> TaskStatus:
        """The stored spelling and the ones people type (`queued`, `in_progress`, `in-progress`, `canceled`); an
        unknown one is an error listing the known statuses."""
        status = cls._missing_(text.replace("-", " ")) if isinstance(text, str) else None
        if status is None:
            known = ", ".join(status.value for status in cls)
            raise ValueError(f"status: expected one of {known}; got {text!r}")
        return status


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED})


@dataclass(frozen=True)
class TaskRecord:
    """One row of `tasks`."""

    id: str
    task_type: str
    params: dict[str, Any]
    status: TaskStatus
    dependant_on: str | None
    depends_on: tuple[str, ...]
    output_location: str | None
    project_id: str | None
    worker_id: str | None
    attempts: int
    max_attempts: int
    priority: int
    error_message: str | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    parent_id: str | None
    role: str | None
    segment_index: int | None
    created_at: datetime | None
    updated_at: datetime | None
    generation_started_at: datetime | None
    generation_processed_at: datetime | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    # Additions beyond the Reigh columns (keep new fields at the end, with defaults).
    awaiting_children: bool = False
    completes_parent: bool = False
    available_at: datetime | None = None
    # Set when a column of the row could not be decoded (source.queue.rows): the worker fails such a task at once.
    decode_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO-8601 strings)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, TaskStatus):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


@dataclass(frozen=True)
class ChildSpec:
    """A task an orchestrator creates. `(parent, role, segment_index)` is its identity: enqueuing it twice returns
    the first row. `depends_on` holds ids of existing tasks or `"role:index"` / `"role"` references to siblings given
    earlier in the same call (or created by an earlier run of the same orchestrator)."""

    task_type: str
    params: dict[str, Any]
    role: str
    segment_index: int | None = None
    depends_on: tuple[str, ...] = ()
    completes_parent: bool = False

    @property
    def key(self) -> str:
        return child_key(self.role, self.segment_index)


def child_key(role: str, segment_index: int | None) -> str:
    """The sibling reference a ChildSpec answers to: "segment:2", or "stitch" when it has no index."""
    return role if segment_index is None else f"{role}:{segment_index}"


@dataclass(frozen=True)
class WorkerRecord:
    """One row of `workers`."""

    id: str
    status: str
    last_heartbeat: datetime | None
    current_task_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "last_heartbeat": self.last_heartbeat.isoformat() if self.last_heartbeat else None,
            "current_task_id": self.current_task_id,
            "metadata": self.metadata,
            "started_at": self.started_at.isoformat() if self.started_at else None,
        }


class QueueError(Exception):
    """Base of the queue's own errors."""


class TaskNotFound(QueueError, KeyError):
    """No task with that id."""

    def __init__(self, task_id: str, where: str = "task id") -> None:
        super().__init__(f"{where}: no task with id {task_id!r}")
        self.task_id = task_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TaskStateError(QueueError):
    """The task is not in a state that allows the operation (e.g. retrying a Complete task)."""


class TaskNotOwned(TaskStateError):
    """The worker no longer holds the task: its lease expired and was reclaimed, or it was cancelled meanwhile."""


class QueueUnavailable(QueueError):
    """The database could not be reached (or stayed locked); the caller may try again later."""


class QueueRefused(QueueError):
    """The server answered and refused (no such database, unknown role, wrong password, a malformed URL): trying
    again cannot help, so it is reported at once instead of retried."""


class IncompatibleSchema(QueueError):
    """The database holds a `tasks` table this code cannot work with as it is (and must not alter)."""


class RowRefused(QueueError, ValueError):
    """The database's own constraints refused a row the queue wrote (on Reigh's schema: a task_type that is not a row
    of task_types, a missing project_id). The message names the column or constraint."""


class InvalidQueueUrl(QueueError, ValueError):
    """A database URL the queue cannot open."""


class WorkerIdInUse(QueueError):
    """Another live process holds this worker id (its heartbeat is recent)."""

    def __init__(self, holder: WorkerRecord) -> None:
        beat = holder.last_heartbeat.isoformat() if holder.last_heartbeat else "never"
        host = holder.metadata.get("hostname", "?")
        pid = holder.metadata.get("pid", "?")
        super().__init__(
            f"worker id {holder.id!r} is held by a live worker (host {host}, pid {pid}, status {holder.status}, last "
            f"heartbeat {beat}); give this worker another --worker-id, or stop the other one"
        )
        self.holder = holder
