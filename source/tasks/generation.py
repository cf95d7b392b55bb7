"""Plain generation tasks (`t2v`, `i2v`, `vace`, `generate_video` and the 2.2 variants): one row, one video,
straight to the engine. Lets an app queue a single clip without a travel run.

`wan_2_2_t2i` is the same path with an image out: a text-to-video model asked for one frame, saved as a PNG. The
engine's 4n+1 frame rule floors a request of 1 frame at 5 (as upstream's WGP did), so 5 frames are generated and
the first is kept. That frame is taken from the decoded frames in memory, never from an encoded mp4, so the PNG holds
exactly what the VAE decoded (upstream went through H.264 first)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from source.params.payloads import GenerationTaskParams
from source.params.resolve import generation_params
from source.tasks.context import (
    TaskContext,
    TaskInputError,
    TaskOutcome,
    parse_params,
)
from source.tasks.travel_support import (
    engine_failures,
    engine_progress,
    fetch_input,
    fetch_loras,
    load_model_definition,
    run_engine,
    with_builtin_loras,
)
from Wan2GP.catalog import Catalog, ModelDefinition

# Default model per task type when the row names none. Upstream mapped `i2v` to a model that does not exist
# (`i2v_14B`, §10.21); every entry here is in Wan2GP/defaults and a test checks that.
DEFAULT_MODEL_BY_TASK_TYPE: dict[str, str] = {
    "generate_video": "t2v",
    "t2v": "t2v",
    "t2v_22": "t2v_2_2",
    "i2v": "i2v_2_2",
    "i2v_22": "i2v_2_2",
    "wan_2_2_i2v": "i2v_2_2",  # a plain row; a travel run under this type is wan_i2v.py's
    "vace": "vace_14B",
    "vace_21": "vace_14B",
    "vace_22": "wan_2_2_vace_lightning_baseline_2_2_2",
    "wan_2_2_t2i": "t2v_2_2",
}

# Task types whose output is one PNG image instead of a video (see the module docstring).
IMAGE_TASK_TYPES = frozenset({"wan_2_2_t2i"})

_INPUT_FILES = {"image_start": "image", "image_end": "image", "video_guide": "video", "video_mask": "video"}


def parse_generation(raw: Any, task_type: str, *, catalog: Catalog) -> tuple[GenerationTaskParams, ModelDefinition]:
    """The payload and its model (the row's, else the task type's default); TaskInputError naming the field."""
    params = parse_params(GenerationTaskParams, raw, prefix="")
    model = load_model_definition(catalog, params.model or DEFAULT_MODEL_BY_TASK_TYPE[task_type], field="model")
    if task_type in IMAGE_TASK_TYPES and (model.is_i2v or model.is_vace):
        raise TaskInputError(
            f"model: expected a text-to-video model for {task_type}, got {model.id!r} (architecture {model.architecture})"
        )
    return params, model


def handle_generation(ctx: TaskContext) -> TaskOutcome:
    params, model = parse_generation(ctx.task.params, ctx.task.task_type, catalog=ctx.services.catalog)
    request = generation_params(params)
    request["model"] = model.id
    image_out = ctx.task.task_type in IMAGE_TASK_TYPES
    if image_out:
        request["video_length"] = 1  # one image, whatever length the payload gives
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
    if request.get("activated_loras"):
        sources = [str(source) for source in request["activated_loras"]]
        request["activated_loras"] = [str(p) for p in fetch_loras(ctx, sources, field="activated_loras")]
    if image_out:
        return _generate_image(ctx, request)
    result = run_engine(ctx, request)
    stored = ctx.store_output(result.path)
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


def _generate_image(ctx: TaskContext, request: dict[str, Any]) -> TaskOutcome:
    rendered = _render(ctx, request)
    image = rendered.frames[0]
    png = ctx.work_dir / f"image_seed{rendered.request.seed}.png"
    Image.fromarray(image).save(png, format="PNG")
    stored = ctx.store_output(png)
    height, width, _channels = image.shape
    return TaskOutcome(
        output_location=stored.location,
        result={
            "frames": 1,
            "generated_frames": int(rendered.frames.shape[0]),
            "width": width,
            "height": height,
            "seed": rendered.request.seed,
            "model": rendered.request.model,
            "forward_passes": rendered.forward_passes,
            "timings": {**rendered.timings, "total": sum(rendered.timings.values())},
            "thumbnail": stored.thumbnail,
        },
    )


def _render(ctx: TaskContext, request: dict[str, Any]) -> Any:
    """The engine's decoded frames, without the mp4 `run_engine` writes; its LoRAs and failures handled the same way."""
    request = with_builtin_loras(ctx, request)
    engine = ctx.services.engine()
    with engine_failures(ctx):
        return engine.render(engine.resolve(request), progress=engine_progress(ctx), cancel=ctx.cancel_event)
