"""inpaint_frames: the 4n+1 window around the range (planned as a pure function), and end to end with the tiny VACE
model: the output has the source's frame count, frames outside the range are the source's, frames inside are new."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from source.media.video import read_frames, write_frames
from source.queue import TaskStatus
from source.tasks.inpaint_frames import InpaintWindow, plan_inpaint_window

SIZE = 64
TOLERANCE = 2.5  # codec error on a channel mean; neighbouring source frames differ by 8


@pytest.mark.parametrize(
    ("total", "start", "end", "context", "window"),
    [
        (20, 8, 12, 3, InpaintWindow(5, 18, 0)),  # 3+4+3 = 10 -> 13: three more kept frames after the range
        (20, 8, 11, 3, InpaintWindow(5, 14, 0)),  # 3+3+3 = 9 is already 4n+1
        (10, 6, 10, 2, InpaintWindow(1, 10, 0)),  # nothing after the range: the extra kept frames come before it
        (10, 2, 10, 2, InpaintWindow(0, 10, 3)),  # no kept frame left on either side: 3 generated frames thrown away
        (30, 0, 30, 8, InpaintWindow(0, 30, 3)),  # the whole video
        (20, 5, 6, 0, InpaintWindow(5, 6, 0)),  # one frame, no context
    ],
)
def test_the_window_grows_to_4n_plus_1_and_never_shrinks(total, start, end, context, window):
    planned = plan_inpaint_window(total, start, end, context)
    assert planned == window
    assert (planned.frames - 1) % 4 == 0
    assert planned.start <= max(0, start - context) and planned.stop >= min(total, end + context)


def write_source(path: Path, frames: int) -> np.ndarray:
    k = np.arange(frames)
    colours = np.stack([40 + 8 * k, 220 - 8 * k, np.full(frames, 20)], axis=1)
    pixels = np.broadcast_to(colours.astype(np.uint8)[:, None, None, :], (frames, SIZE, SIZE, 3)).copy()
    write_frames(pixels, path, fps=16)
    return read_frames(path).reshape(frames, -1, 3).mean(axis=1)


def _run(worker_env, params: dict):
    task_id = worker_env.queue.enqueue("inpaint_frames", params, project_id="p")
    assert worker_env.drain() == 0
    return worker_env.queue.get(task_id)


@pytest.mark.slow
def test_inpainting_keeps_every_frame_outside_the_range_and_the_frame_count(worker_env, ffprobe):
    source = worker_env.tmp / "source.mp4"
    src = write_source(source, 20)
    padded_source = worker_env.tmp / "short.mp4"
    short = write_source(padded_source, 10)
    inner = worker_env.queue.enqueue(
        "inpaint_frames",
        {"video_path": str(source), "inpaint_start_frame": 8, "inpaint_end_frame": 12, "context_frame_count": 3,
         "model": "wan_tiny_vace", "prompt": "a bird", "seed": 3},
        project_id="p",
    )  # fmt: skip
    # Range reaching the end, no room to grow the window: padding frames are generated and dropped.
    tail = worker_env.queue.enqueue(
        "inpaint_frames",
        {"video_path": str(padded_source), "inpaint_start_frame": 2, "inpaint_end_frame": 10,
         "context_frame_count": 2, "model_name": "wan_tiny_vace", "resolution": [64, 64]},
        project_id="p",
    )  # fmt: skip
    assert worker_env.drain() == 0

    for task_id, source_means, (start, end), generated in ((inner, src, (8, 12), 13), (tail, short, (2, 10), 13)):
        task = worker_env.queue.get(task_id)
        assert task.status == TaskStatus.COMPLETE, task.error_message
        assert int(ffprobe(task.output_location)["nb_read_frames"]) == len(source_means) == task.result["frames"]
        assert task.result["generated_frames"] == generated
        output = read_frames(Path(task.output_location)).reshape(len(source_means), -1, 3).mean(axis=1)
        for index in range(len(source_means)):
            nearest = np.abs(output[index] - source_means).max(axis=1)
            if start <= index < end:
                assert nearest.min() > 40, f"frame {index} should be generated"
            else:
                assert nearest[index] < TOLERANCE, f"frame {index} should be the source's"
    assert worker_env.queue.get(tail).result["padding_frames"] == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inpaint_end_frame": 25}, "inpaint_end_frame: expected at most 20 (the video has 20 frames"),
        ({"inpaint_start_frame": 12}, "inpaint_end_frame: expected more than inpaint_start_frame (12)"),
        ({"model": "wan_tiny_t2v"}, "model: expected a VACE model"),
        ({"video_path": "/elsewhere/video.mp4"}, "video_path:"),
    ],
)
def test_bad_input_fails_naming_the_field(worker_env, change, message):
    source = worker_env.tmp / "source.mp4"
    write_source(source, 20)
    params = {"video_path": str(source), "inpaint_start_frame": 8, "inpaint_end_frame": 12, "model": "wan_tiny_vace"}
    task = _run(worker_env, {**params, **change})
    assert task.status == TaskStatus.FAILED and task.attempts <= 1
    assert task.error_message.startswith(message), task.error_message
