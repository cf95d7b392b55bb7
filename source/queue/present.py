"""How a queue row is shown to people, the same in the CLI and the dashboard: status, progress, redacted JSON."""

from __future__ import annotations

from typing import Any

from source.params.redact import redact
from source.queue import TaskRecord, TaskStatus


def task_json(task: TaskRecord) -> dict[str, Any]:
    """A task row for scripts: every column, params and result redacted."""
    row = task.to_dict()
    row["params"] = redact(task.params)
    row["result"] = redact(task.result)
    return row


def status_text(task: TaskRecord) -> str:
    if task.status is TaskStatus.IN_PROGRESS and task.awaiting_children:
        return "In Progress (awaiting children)"
    return task.status.value


def progress_text(task: TaskRecord) -> str:
    progress = task.progress or {}
    step, total = progress.get("step"), progress.get("total")
    message = progress.get("message") or ""
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        return f"step {step}/{total} ({100 * step / total:.0f}%)" + (f" {message}" if message else "")
    return message or "-"
