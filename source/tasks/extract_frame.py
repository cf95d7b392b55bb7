"""`extract_frame`: one frame of another task's output video, saved as a PNG (lossless, so the image holds exactly
the decoded frame). Reigh's app uses it to turn a video into a still it can edit or travel from.

The input task is looked up in this worker's queue. Enqueue the row depending on it, so it is claimed only once that
task is Complete; claimed earlier, it is retried (transient) until the input completes or the attempts run out. An
input that failed, was cancelled, does not exist or completed without an output fails the row at once.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from source.media.video import MediaError, VideoInfo, probe_video, read_frame
from source.params.frames import ExtractFrameParams
from source.queue import TaskNotFound, TaskStatus
from source.tasks.context import TaskContext, TaskInputError, TaskOutcome, TransientTaskError, parse_params
from source.tasks.travel_support import fetch_input

FIELD = "input_video_task_id"


def parse_extract_frame(raw: Any) -> ExtractFrameParams:
    return parse_params(ExtractFrameParams, raw, prefix="")


def handle_extract_frame(ctx: TaskContext) -> TaskOutcome:
    params = parse_extract_frame(ctx.task.params)
    location = _input_video_location(ctx, params.input_video_task_id)
    video = fetch_input(ctx, location, ctx.work_dir / "input_video", field=FIELD, kind="video", own_output=True)
    info = probe_video(video)
    index = _frame_position(params, info)
    try:
        frame = read_frame(video, index)
    except MediaError as error:
        raise TaskInputError(f"{FIELD}: the output of task {params.input_video_task_id}: {error}") from None
    height, width, _channels = frame.shape
    png = ctx.work_dir / f"frame_{index}.png"  # stored as <task id>_frame_<index>.png, upstream's name
    Image.fromarray(frame).save(png, format="PNG")
    stored = ctx.store_output(png)
    return TaskOutcome(
        output_location=stored.location,
        result={
            "frame_index": index,
            "requested_frame_index": params.frame_index,
            "width": width,
            "height": height,
            "input_video_task_id": params.input_video_task_id,
            "input_video_frames": info.frames,
        },
    )


def _input_video_location(ctx: TaskContext, task_id: str) -> str:
    """Where the input task's video is; TaskInputError if it never will be, TransientTaskError if it may yet be."""
    if task_id == ctx.task.id:
        raise TaskInputError(f"{FIELD}: expected another task's id, got this task's own id {task_id!r}")
    try:
        source = ctx.queue.get(task_id)
    except TaskNotFound as error:
        raise TaskInputError(f"{FIELD}: expected the id of a task with an output video; {error}") from None
    if source.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise TaskInputError(f"{FIELD}: task {task_id} is {source.status.value}; it has no output video to read")
    if source.status != TaskStatus.COMPLETE:
        raise TransientTaskError(f"{FIELD}: task {task_id} is {source.status.value}, not Complete yet")
    if not source.output_location:
        raise TaskInputError(f"{FIELD}: task {task_id} completed without an output location")
    return source.output_location


def _frame_position(params: ExtractFrameParams, info: VideoInfo) -> int:
    """The 0-based position of `frame_index` in a video of `info.frames` frames (negative counts from the end)."""
    index = params.frame_index if params.frame_index >= 0 else info.frames + params.frame_index
    if not 0 <= index < info.frames:
        raise TaskInputError(
            f"frame_index: expected an index from {-info.frames} to {info.frames - 1} (the output of task "
            f"{params.input_video_task_id} has {info.frames} frames), got {params.frame_index}"
        )
    return index
