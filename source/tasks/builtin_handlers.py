"""The generation task types this worker handles, registered on a worker's own registry with the payload check each
handler runs first (so `cli enqueue` refuses what the worker would)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

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
from Wan2GP.catalog import Catalog, load_catalog


def default_registry(catalog: Catalog | None = None) -> TaskRegistry:
    """A new registry with the diagnostic task types and every generation task type this worker handles. `catalog`:
    the model definitions the payload checks look models up in (the worker's, with its --defaults-dir; default: the
    bundled ones). The handlers themselves read the worker's catalog from their context."""
    registry = TaskRegistry()
    diagnostic.register(registry)
    register_all(registry, catalog if catalog is not None else load_catalog())
    return registry


def register_all(registry: TaskRegistry, catalog: Catalog) -> None:
    def with_catalog(parse: Callable[..., Any], **options: Any) -> Callable[[Any], Any]:
        return partial(parse, catalog=catalog, **options)

    registry.register("travel_orchestrator", handle_travel_orchestrator, check=with_catalog(parse_orchestrator))
    registry.register("travel_segment", handle_travel_segment, check=with_catalog(parse_segment))
    registry.register("travel_stitch", handle_travel_stitch, check=parse_stitch)
    registry.register(
        "individual_travel_segment", handle_individual_travel_segment, check=with_catalog(parse_individual_segment)
    )
    registry.register(
        "join_clips_orchestrator", handle_join_clips_orchestrator, check=with_catalog(parse_join_orchestrator)
    )
    registry.register("join_clips_segment", handle_join_clips_segment, check=with_catalog(parse_bridge))
    registry.register("join_final_stitch", handle_join_final_stitch, check=parse_final)
    registry.register("edit_video_orchestrator", handle_edit_video_orchestrator, check=with_catalog(parse_edit_video))
    registry.register("inpaint_frames", handle_inpaint_frames, check=with_catalog(parse_inpaint))
    registry.register("extract_frame", handle_extract_frame, check=parse_extract_frame)
    for task_type in DEFAULT_MODEL_BY_TASK_TYPE:
        registry.register(task_type, handle_generation, check=with_catalog(parse_generation, task_type=task_type))
    # Reigh's turbo travel runs and plain i2v rows share this type (the plain form's default model is in the table).
    registry.register("wan_2_2_i2v", handle_wan_2_2_i2v, check=with_catalog(parse_wan_2_2_i2v), replace=True)
