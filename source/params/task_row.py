"""The statuses of a task row, as Reigh stores them (upstream_worker_spec §1.2)."""

from __future__ import annotations

from enum import StrEnum


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
