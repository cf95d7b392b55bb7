"""`wan_2_2_i2v`: Reigh's name for two different payloads. Its travel tool's turbo mode enqueues a whole travel run
under this type (`params.orchestrator_details`, resolvers/travelBetweenImages.ts), which runs exactly as a
travel_orchestrator; a row without orchestrator_details is a plain image-to-video generation (default model i2v_2_2)."""

from __future__ import annotations

from typing import Any

from source.tasks.context import TaskContext, TaskOutcome
from source.tasks.generation import handle_generation, parse_generation
from source.tasks.travel_orchestrator import handle_travel_orchestrator, parse_orchestrator
from Wan2GP.catalog import Catalog


def is_travel_run(raw: Any) -> bool:
    return isinstance(raw, dict) and "orchestrator_details" in raw


def parse_wan_2_2_i2v(raw: Any, *, catalog: Catalog) -> object:
    if is_travel_run(raw):
        return parse_orchestrator(raw, catalog=catalog)
    return parse_generation(raw, task_type="wan_2_2_i2v", catalog=catalog)


def handle_wan_2_2_i2v(ctx: TaskContext) -> TaskOutcome:
    if is_travel_run(ctx.task.params):
        return handle_travel_orchestrator(ctx)
    return handle_generation(ctx)
