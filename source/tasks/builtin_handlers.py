"""The generation task types this worker handles, registered on a worker's own registry."""

from __future__ import annotations

from source.tasks.generation import DEFAULT_MODEL_BY_TASK_TYPE, handle_generation
from source.tasks.registry import TaskRegistry
from source.tasks.travel_orchestrator import handle_travel_orchestrator
from source.tasks.travel_segment import handle_travel_segment
from source.tasks.travel_stitch import handle_travel_stitch


def register_all(registry: TaskRegistry) -> None:
    registry.register("travel_orchestrator", handle_travel_orchestrator)
    registry.register("travel_segment", handle_travel_segment)
    registry.register("travel_stitch", handle_travel_stitch)
    for task_type in DEFAULT_MODEL_BY_TASK_TYPE:
        registry.register(task_type, handle_generation)
