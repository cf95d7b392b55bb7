"""The generation task types this worker handles, registered on a worker's own registry with the payload check each
handler runs first (so `cli enqueue` refuses what the worker would)."""

from __future__ import annotations

from functools import partial

from source.tasks import diagnostic
from source.tasks.edit_video import handle_edit_video_orchestrator, parse_edit_video
from source.tasks.extract_frame import handle_extract_frame, parse_extract_frame
from source.tasks.generation import DEFAULT_MODEL_BY_TASK_TYPE, handle_generation, parse_generation
from source.tasks.individual_segment import handle_individual_travel_segment, parse_individual_segment
from source.tasks.inpaint_frames import handle_inpaint_frames, parse_inpaint
from source.tasks.join_clips import (
    handle_join_clips_orchestrator,
    handle_join_clips_segment,
    handle_join_final_stitch,
    parse_bridge,
    parse_final,
    parse_join_orchestrator,
)
from source.tasks.registry import TaskRegistry
from source.tasks.travel_orchestrator import handle_travel_orchestrator, parse_orchestrator
from source.tasks.travel_segment import handle_travel_segment, parse_segment
from source.tasks.travel_stitch import handle_travel_stitch, parse_stitch
from source.tasks.wan_i2v import handle_wan_2_2_i2v, parse_wan_2_2_i2v


def default_registry() -> TaskRegistry:
    """A new registry with the diagnostic task types and every generation task type this worker handles."""
    registry = TaskRegistry()
    diagnostic.register(registry)
    register_all(registry)
    return registry


def register_all(registry: TaskRegistry) -> None:
    registry.register("travel_orchestrator", handle_travel_orchestrator, check=parse_orchestrator)
    registry.register("travel_segment", handle_travel_segment, check=parse_segment)
    registry.register("travel_stitch", handle_travel_stitch, check=parse_stitch)
    registry.register("individual_travel_segment", handle_individual_travel_segment, check=parse_individual_segment)
    registry.register("join_clips_orchestrator", handle_join_clips_orchestrator, check=parse_join_orchestrator)
    registry.register("join_clips_segment", handle_join_clips_segment, check=parse_bridge)
    registry.register("join_final_stitch", handle_join_final_stitch, check=parse_final)
    registry.register("edit_video_orchestrator", handle_edit_video_orchestrator, check=parse_edit_video)
    registry.register("inpaint_frames", handle_inpaint_frames, check=parse_inpaint)
    registry.register("extract_frame", handle_extract_frame, check=parse_extract_frame)
    for task_type in DEFAULT_MODEL_BY_TASK_TYPE:
        registry.register(task_type, handle_generation, check=partial(parse_generation, task_type=task_type))
    # Reigh's turbo travel runs and plain i2v rows share this type (the plain form's default model is in the table).
    registry.register("wan_2_2_i2v", handle_wan_2_2_i2v, check=parse_wan_2_2_i2v, replace=True)
