"""Plain generation tasks (`t2v`, `i2v`, `vace`, `generate_video` and the 2.2 variants): one row, one video,
straight to the engine. Lets an app queue a single clip without a travel run."""

from __future__ import annotations

from typing import Any

from source.params.payloads import GenerationTaskParams
from source.tasks.context import TaskContext, TaskOutcome, parse_params
from source.tasks.travel_support import (
    fetch_input,
    fetch_loras,
    load_model_definition,
    run_engine,
)
from Wan2GP.catalog import ModelDefinition

# Default model per task type when the row names none. Upstream mapped `i2v` to a model that does not exist
# (`i2v_14B`, §10.21); every entry here is in Wan2GP/defaults and a test checks that.
DEFAULT_MODEL_BY_TASK_TYPE: dict[str, str] = {
    "generate_video": "t2v",
    "t2v": "t2v",
    "t2v_22": "t2v_2_2",
    "i2v": "i2v_2_2",
    "i2v_22": "i2v_2_2",
    "vace": "vace_14B",
    "vace_21": "vace_14B",
    "vace_22": "wan_2_2_vace_lightning_baseline_2_2_2",
}

_INPUT_FILES = {"image_start": "image", "image_end": "image", "video_guide": "video", "video_mask": "video"}


def parse_generation(raw: Any, task_type: str) -> tuple[GenerationTaskParams, ModelDefinition]:
    """The payload and its model (the row's, else the task type's default); TaskInputError naming the field."""
    params = parse_params(GenerationTaskParams, raw, prefix="")
    return params, load_model_definition(params.model or DEFAULT_MODEL_BY_TASK_TYPE[task_type], field="model")


def handle_generation(ctx: TaskContext) -> TaskOutcome:
    params, model = parse_generation(ctx.task.params, ctx.task.task_type)
    request = params.wgp_params()
    request["model"] = model.id
    for name, kind in _INPUT_FILES.items():
        if request.get(name):
            request[name] = str(fetch_input(ctx, str(request[name]), ctx.work_dir / name, field=name, kind=kind))
    if request.get("image_refs"):  # VACE reference images: each fetched and checked like any other input image
        request["image_refs"] = [
            str(
                fetch_input(
                    ctx, str(source), ctx.work_dir / f"image_ref_{index}", field=f"image_refs[{index}]", kind="image"
                )
            )
            for index, source in enumerate(request["image_refs"])
        ]
    if params.lora_sources():
        request["activated_loras"] = [str(p) for p in fetch_loras(ctx, params.lora_sources(), field="activated_loras")]
    result = run_engine(ctx, request)
    stored = ctx.services.storage().store(result.path, task_type=ctx.task.task_type, task_id=ctx.task.id)
    return TaskOutcome(
        output_location=stored.location,
        result={
            "frames": result.frames,
            "width": result.width,
            "height": result.height,
            "fps": result.fps,
            "seed": result.seed,
            "model": result.model,
            "forward_passes": result.forward_passes,
            "timings": result.timings,
            "thumbnail": stored.thumbnail,
        },
    )
