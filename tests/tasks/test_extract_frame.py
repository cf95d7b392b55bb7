"""`extract_frame` through the real worker loop: the PNG holds the chosen frame of another task's stored video, and
every way the input can be missing fails the row with a message naming the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from source.media import read_frames, write_frames
from source.queue import TaskStatus
from source.tasks import default_registry
from source.tasks.context import TaskInputError

FRAMES, HEIGHT, WIDTH = 12, 48, 64
APP_TASK_TYPE = "uploaded_video"  # a type this worker has no handler for: only the test finishes such rows


def _distinct_frames() -> np.ndarray:
    """Smooth frames (h264 keeps them close) that differ clearly from one another: a gradient whose slope and
    brightness change with the frame number."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    frames = [
        np.stack([xs * (1 + index / 4), ys * 3, np.full_like(xs, 20 * index)], axis=-1) for index in range(FRAMES)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


@pytest.fixture
def source_video(worker_env) -> Path:
    path = worker_env.tmp / "source.mp4"
    write_frames(_distinct_frames(), path, fps=16)
    return path


def _input_task(queue, *, output_location: str | None, status: TaskStatus = TaskStatus.COMPLETE) -> str:
    """A row another task type left behind, finished with `status`."""
    task_id = queue.enqueue(APP_TASK_TYPE, {}, project_id="p")
    if status == TaskStatus.QUEUED:
        return task_id
    assert queue.claim("app", lease_seconds=60, task_types=[APP_TASK_TYPE]).id == task_id
    if status == TaskStatus.COMPLETE:
        queue.complete(task_id, "app", output_location=output_location)
    else:
        queue.fail(task_id, "app", "the app's own failure")
    return task_id


def _extract(worker_env, params: dict) -> object:
    task_id = worker_env.queue.enqueue("extract_frame", params, project_id="p")
    assert worker_env.drain() == 0
    return worker_env.queue.get(task_id)


@pytest.mark.parametrize(("frame_index", "position"), [(5, 5), (0, 0), (-1, FRAMES - 1)])
def test_png_holds_the_chosen_frame_of_the_input_video(worker_env, source_video, frame_index, position):
    input_id = _input_task(worker_env.queue, output_location=str(source_video))
    task = _extract(worker_env, {"input_video_task_id": input_id, "frame_index": frame_index})

    assert task.status == TaskStatus.COMPLETE, task.error_message
    location = Path(task.output_location)
    assert location.parent == worker_env.settings.output_dir / "extract_frame"
    assert location.name == f"{task.id}_frame_{position}.png"
    with Image.open(location) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (WIDTH, HEIGHT))
        png = np.asarray(image).astype(int)
    decoded = read_frames(source_video).astype(int)
    assert np.array_equal(png, decoded[position])  # the decoded frame itself: PNG adds no loss
    assert np.abs(png - _distinct_frames()[position]).mean() < 3  # and it is what was written, within h264's loss
    for other in {0, position - 1, position + 1, FRAMES - 1} - {position, -1, FRAMES}:
        assert np.abs(png - decoded[other]).mean() > 8, f"frame {position} looks like frame {other}"
    assert task.result["frame_index"] == position
    assert task.result["requested_frame_index"] == frame_index
    assert (task.result["width"], task.result["height"], task.result["input_video_frames"]) == (WIDTH, HEIGHT, FRAMES)


@pytest.mark.parametrize("frame_index", [FRAMES, -FRAMES - 1])
def test_index_past_either_end_fails_naming_frame_index(worker_env, source_video, frame_index):
    input_id = _input_task(worker_env.queue, output_location=str(source_video))
    task = _extract(worker_env, {"input_video_task_id": input_id, "frame_index": frame_index})
    assert task.status == TaskStatus.FAILED
    assert task.error_message.startswith(f"frame_index: expected an index from -{FRAMES} to {FRAMES - 1}")
    assert task.attempts == 1  # bad input: never retried


def test_input_that_never_gives_a_video_fails_at_once_naming_the_field(worker_env, source_video):
    queue = worker_env.queue
    failed = _input_task(queue, output_location=None, status=TaskStatus.FAILED)
    no_output = _input_task(queue, output_location=None)
    garbage = worker_env.tmp / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    not_a_video = _input_task(queue, output_location=str(garbage))
    outside = worker_env.tmp.parent / "outside_the_roots.mp4"
    outside.write_bytes(source_video.read_bytes())
    outside_roots = _input_task(queue, output_location=str(outside))
    cases = {
        failed: "is Failed",
        no_output: "completed without an output",
        not_a_video: "cannot read video",
        outside_roots: "only read inside the allowed input roots",
        "00000000-0000-4000-8000-000000000000": "no task with id",
    }
    ids = {queue.enqueue("extract_frame", {"input_video_task_id": input_id}): why for input_id, why in cases.items()}
    assert worker_env.drain() == 0
    for task_id, why in ids.items():
        task = queue.get(task_id)
        assert task.status == TaskStatus.FAILED and task.attempts == 1, (why, task.error_message)
        assert task.error_message.startswith("input_video_task_id: ") and why in task.error_message


def test_input_not_finished_yet_is_retried_not_failed_as_bad_input(worker_env):
    pending = _input_task(worker_env.queue, output_location=None, status=TaskStatus.QUEUED)
    task_id = worker_env.queue.enqueue("extract_frame", {"input_video_task_id": pending}, max_attempts=2)
    assert worker_env.drain() == 0
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.FAILED and task.attempts == 2  # transient: every attempt used
    assert f"task {pending} is Queued, not Complete yet" in task.error_message


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "input_video_task_id: expected a value"),
        ({"input_video_task_id": " "}, "input_video_task_id: expected a non-empty string"),
        ({"input_video_task_id": "a", "frame_index": 1.5}, "frame_index: expected an integer"),
        ({"input_video_task_id": "a", "frame_index": 10**7}, "frame_index: expected an integer from"),
        ({"input_video_task_id": "a", "frame_index": True}, "frame_index: expected a number, not true/false"),
    ],
)
def test_bad_payload_is_refused_before_any_work(params, message):
    with pytest.raises(TaskInputError, match=f"^{message}"):
        default_registry().check("extract_frame", params)
