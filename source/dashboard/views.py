"""What the dashboard shows, computed from queue rows: one home for the shapes the pages and the JSON API share."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from source.queue import TaskQueue, TaskRecord, TaskStatus
from source.queue.present import progress_text, status_text, task_json
from source.storage.paths import within_roots

MAX_TREE_DEPTH = 4
THROUGHPUT_WINDOW = timedelta(hours=1)


def media_url(location: str | None, output_dir: Path) -> str | None:
    """Where the browser fetches an output: a bucket URL as it is, a local file only from inside the output folder
    (served under /files/), anything else not at all."""
    if not location:
        return None
    if location.startswith(("http://", "https://")):
        return location
    inside = within_roots(Path(location), [output_dir])
    return None if inside is None else "/files/" + quote(inside.relative_to(output_dir.resolve()).as_posix())


def eta_seconds(task: TaskRecord, now: datetime) -> float | None:
    """Time left at the pace so far: elapsed since the generation started x steps left / steps done."""
    progress = task.progress or {}
    step, total = progress.get("step"), progress.get("total")
    started = task.generation_started_at
    if task.status is not TaskStatus.IN_PROGRESS or started is None:
        return None
    if not isinstance(step, int) or not isinstance(total, int) or not 0 < step <= total:
        return None
    return max(0.0, (now - started).total_seconds() * (total - step) / step)


def model_of(task: TaskRecord) -> str:
    params, result = task.params or {}, task.result or {}
    details = params.get("orchestrator_details") if isinstance(params.get("orchestrator_details"), dict) else {}
    for value in (result.get("model"), params.get("model"), params.get("model_name"), details.get("model_name")):
        if isinstance(value, str) and value:
            return value
    return "(none)"


def task_summary(task: TaskRecord, *, now: datetime, output_dir: Path) -> dict[str, Any]:
    """One task as a row of the list: status, progress with ETA, output link, the first line of an error."""
    progress = task.progress or {}
    step, total = progress.get("step"), progress.get("total")
    percent = 100.0 * step / total if isinstance(step, int) and isinstance(total, int) and total > 0 else None
    failed = task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
    return {
        "id": task.id,
        "task_type": task.task_type,
        "role": task.role,
        "segment_index": task.segment_index,
        "status": task.status.value,
        "status_text": status_text(task),
        "progress": {"step": step, "total": total, "message": progress.get("message") or "", "percent": percent},
        "progress_text": progress_text(task),
        "eta_seconds": eta_seconds(task, now),
        "model": model_of(task),
        "attempts": f"{task.attempts}/{task.max_attempts}",
        "created_at": task.created_at.isoformat() if task.created_at else None,
        "updated_at": task.updated_at.isoformat() if task.updated_at else None,
        "error": (task.error_message or task.decode_error or "") if failed or task.decode_error else "",
        "output_url": media_url(task.output_location, output_dir),
        "output_location": task.output_location,
    }


def task_detail(queue: TaskQueue, task: TaskRecord, *, now: datetime, output_dir: Path) -> dict[str, Any]:
    """One task in full: the redacted row, its run tree, its video and thumbnail, the travel frame contract."""
    result = task.result or {}
    output = result.get("output") if isinstance(result.get("output"), dict) else {}
    thumbnail = result.get("thumbnail") or output.get("thumbnail")
    children = queue.children(task.id)
    return {
        **task_summary(task, now=now, output_dir=output_dir),
        "row": task_json(task),
        "error_full": task.error_message or task.decode_error or "",
        "thumbnail_url": media_url(thumbnail if isinstance(thumbnail, str) else None, output_dir),
        "frame_contract": frame_contract(task, children),
        "children": _tree(queue, children, now=now, output_dir=output_dir, depth=1),
    }


def _tree(queue: TaskQueue, children: list[TaskRecord], *, now: datetime, output_dir: Path, depth: int) -> list[dict]:
    """The run below a task: each child's summary with its own children, down to MAX_TREE_DEPTH."""
    tree = []
    for child in children:
        summary = task_summary(child, now=now, output_dir=output_dir)
        below = queue.children(child.id) if depth < MAX_TREE_DEPTH else []
        summary["children"] = _tree(queue, below, now=now, output_dir=output_dir, depth=depth + 1)
        tree.append(summary)
    return tree


def frame_contract(task: TaskRecord, children: list[TaskRecord]) -> dict[str, Any] | None:
    """A travel run's promise (Σ segment frames − Σ overlaps) next to what the stitch delivered. While the run waits
    the orchestrator's result holds the plan; once complete, its stitch's params do (the result then describes the
    output)."""
    result = task.result or {}
    stitch = next((child for child in children if child.task_type == "travel_stitch"), None)
    if "expected_final_frames" in result:
        plan = {
            "segment_frames": result.get("segment_frames"),
            "overlaps": result.get("overlaps"),
            "expected_final_frames": result.get("expected_final_frames"),
        }
    elif stitch is not None and "expected_final_frames" in (stitch.params or {}):
        plan = {
            "segment_frames": stitch.params.get("segment_frames"),
            "overlaps": stitch.params.get("frame_overlap_settings_expanded"),
            "expected_final_frames": stitch.params.get("expected_final_frames"),
        }
    else:
        return None
    delivered = (stitch.result or {}).get("frames") if stitch is not None else None
    return {**plan, "delivered_frames": delivered}


def throughput(tasks: Iterable[TaskRecord], *, now: datetime) -> list[dict[str, Any]]:
    """Per model, the tasks completed in the last hour and how long their generation took."""
    completed: dict[str, int] = {}
    durations: dict[str, list[float]] = {}  # only the tasks whose generation start is known
    for task in tasks:
        finished = task.generation_processed_at or task.updated_at
        if task.status is not TaskStatus.COMPLETE or finished is None or now - finished > THROUGHPUT_WINDOW:
            continue
        model = model_of(task)
        completed[model] = completed.get(model, 0) + 1
        if task.generation_started_at is not None:
            durations.setdefault(model, []).append((finished - task.generation_started_at).total_seconds())
    return [
        {
            "model": model,
            "completed_last_hour": count,
            "median_seconds": statistics.median(durations[model]) if model in durations else None,
        }
        for model, count in sorted(completed.items())
    ]


def worker_summary(worker: Any, *, now: datetime) -> dict[str, Any]:
    metadata = worker.metadata or {}
    return {
        "id": worker.id,
        "status": worker.status,
        "heartbeat_age_seconds": (now - worker.last_heartbeat).total_seconds() if worker.last_heartbeat else None,
        "current_task_id": worker.current_task_id,
        "current_model": metadata.get("current_model"),
        "handles": metadata.get("handles"),
        "started_at": worker.started_at.isoformat() if worker.started_at else None,
    }
