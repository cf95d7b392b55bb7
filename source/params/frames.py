"""Payloads of the task types that work on single frames: `extract_frame` (one frame of another task's video, as a
PNG). `wan_2_2_t2i` takes the plain generation payload (`GenerationTaskParams`)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, ClassVar

from pydantic import StringConstraints

from source.params.base import Integer, PayloadModel, within
from Wan2GP import limits
from Wan2GP.limits import Bound

# The longest video a task of ours writes: a stitched travel run (limits.STITCHED_FRAMES).
MAX_VIDEO_FRAMES = int(limits.STITCHED_FRAMES.high)
FRAME_INDEX = Bound(-MAX_VIDEO_FRAMES, MAX_VIDEO_FRAMES - 1, "an integer")
MAX_TASK_ID_LENGTH = 200  # uuids are 36 characters; Reigh's readable ids a few dozen

FrameIndex = Annotated[Integer, within(FRAME_INDEX)]
TaskId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TASK_ID_LENGTH)]


class ExtractFrameParams(PayloadModel):
    """`params` of `extract_frame`. `frame_index` counts from 0; a negative one counts from the end, as upstream did
    (-1 is the last frame)."""

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"output_dir": "upstream's output folder; this worker's storage decides where outputs go"}
    )

    input_video_task_id: TaskId
    frame_index: FrameIndex = 0
