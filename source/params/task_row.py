"""A row of the `tasks` table as it arrives from a queue backend (upstream_worker_spec §1.2)."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from source.params.errors import Expected


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


class TaskRow(BaseModel):
    """One task row. `params` is the JSON payload (a JSON string, as SQLite stores it, is parsed). Extra columns that
    a backend adds are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    task_type: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    status: TaskStatus = TaskStatus.QUEUED
    dependant_on: str | None = None
    output_location: str | None = None
    project_id: str | None = None
    worker_id: str | None = None
    attempts: int = Field(default=0, ge=0)
    error_message: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    generation_started_at: datetime | None = None
    generation_processed_at: datetime | None = None

    @field_validator("id", "dependant_on", "project_id", "worker_id", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        # uuid columns come back as UUID objects from PostgreSQL and as text from SQLite.
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, bool | float | list | dict):
            raise Expected("an id (text or uuid)")
        return str(value)

    @field_validator("params", mode="before")
    @classmethod
    def _params_json(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, str | bytes):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise Expected("a JSON object") from None
        if not isinstance(value, dict):
            raise Expected("a JSON object")
        return value
