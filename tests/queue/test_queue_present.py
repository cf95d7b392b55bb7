"""How a task row is shown to people (CLI and dashboard alike): its status, its progress line, its JSON with secrets
redacted."""

from __future__ import annotations

import dataclasses

import pytest

from source.queue import ChildSpec, TaskQueue
from source.queue.present import progress_text, status_text, task_json


def test_task_json_has_every_column_with_secrets_redacted(queue: TaskQueue) -> None:
    task_id = queue.enqueue("t", {"prompt": "cat", "api_key": "sk-live-123"}, priority=2)
    task = queue.claim("w1", lease_seconds=30)
    assert task is not None
    queue.complete(task_id, "w1", output_location="/out.mp4", result={"token": "abc", "frames": 9})
    row = task_json(queue.get(task_id))
    assert row["params"] == {"prompt": "cat", "api_key": "***"}
    assert row["result"] == {"token": "***", "frames": 9}
    assert (row["id"], row["status"], row["priority"], row["output_location"]) == (task_id, "Complete", 2, "/out.mp4")
    assert isinstance(row["created_at"], str)


def test_status_text_says_when_an_orchestrator_waits_for_its_children(queue: TaskQueue) -> None:
    task_id = queue.enqueue("travel_orchestrator", {})
    assert status_text(queue.get(task_id)) == "Queued"
    queue.claim("w1", lease_seconds=30, task_types=["travel_orchestrator"])
    assert status_text(queue.get(task_id)) == "In Progress"
    queue.enqueue_children(task_id, [ChildSpec("travel_segment", {}, role="segment", segment_index=0)])
    queue.await_children(task_id, "w1", "waiting for segments")
    assert status_text(queue.get(task_id)) == "In Progress (awaiting children)"


@pytest.mark.parametrize(
    ("progress", "shown"),
    [
        ({"step": 3, "total": 4, "message": "denoising"}, "step 3/4 (75%) denoising"),
        ({"step": 1, "total": 3}, "step 1/3 (33%)"),
        ({"step": 1, "total": 1}, "step 1/1 (100%)"),
        ({"step": 2, "total": 0, "message": "starting"}, "starting"),
        ({"step": "2", "total": 4}, "-"),
        ({"step": 2, "total": 4.0, "message": "m"}, "m"),
        ({"message": "waiting for segments"}, "waiting for segments"),
        (None, "-"),
    ],
)
def test_progress_text(queue: TaskQueue, progress: dict | None, shown: str) -> None:
    task_id = queue.enqueue("t", {})
    task = queue.get(task_id)
    assert progress_text(dataclasses.replace(task, progress=progress)) == shown
