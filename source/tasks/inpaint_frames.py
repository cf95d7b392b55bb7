"""`inpaint_frames`: regenerate frames [inpaint_start_frame, inpaint_end_frame) of one video with VACE, keep every
other frame, and output the whole video with its original frame count.

One generation covers a window of the video: up to context_frame_count kept frames before the range (mask black), the
range (mask white, grey guide), up to context_frame_count kept frames after it. VACE generates 4n+1 frames, so the
window is grown, never shrunk, to the next 4n+1: first with more kept frames after the range, then before it, and when
the video has none left on either side, with extra generated frames at the window's end that are thrown away. The
regenerated range is exactly the one asked for, and the output has exactly the source's frame count: source frames
outside the range, generated frames (resized to the source's size) inside it. Upstream returned only the generated
window, at whatever length VACE rounded it to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from source.media.guide import write_vace_guide
from source.media.images import resize_frames
from source.media.video import VideoWriter, probe_video, read_frames
from source.params.errors import PayloadError
from source.params.join import DEFAULT_VACE_MODEL, InpaintFramesParams
from source.params.resolve import generation_params
from source.tasks.context import TaskContext, TaskInputError, TaskOutcome, TransientTaskError, parse_params
from source.tasks.travel_support import fetch_input, fetch_loras, generation_size, load_model_definition, run_engine
from Wan2GP.catalog import Catalog, ModelDefinition

# Inputs this handler builds itself; a payload's own values for them would contradict the guide.
_OWN_KEYS = ("video_guide", "video_mask", "video_prompt_type", "image_start", "image_end", "image_refs")


@dataclass(frozen=True)
class InpaintWindow:
    start: int  # first source frame of the generation
    stop: int  # one past its last source frame
    padding: int  # generated frames after `stop`, thrown away

    @property
    def frames(self) -> int:
        return self.stop - self.start + self.padding


def plan_inpaint_window(total: int, start: int, end: int, context: int) -> InpaintWindow:
    """The 4n+1 generation window around frames [start, end) of a `total`-frame video (see the module docstring)."""
    before, after = min(context, start), min(context, total - end)
    missing = (1 - (before + end - start + after)) % 4
    more_after = min(missing, total - end - after)
    more_before = min(missing - more_after, start - before)
    return InpaintWindow(
        start=start - before - more_before,
        stop=end + after + more_after,
        padding=missing - more_after - more_before,
    )


def parse_inpaint(raw: Any, *, catalog: Catalog) -> tuple[InpaintFramesParams, ModelDefinition]:
    params = parse_params(InpaintFramesParams, raw, prefix="")
    field = "model" if params.model else "model_name" if params.model_name else "model"
    model = load_model_definition(catalog, params.model_id or DEFAULT_VACE_MODEL, field=field)
    if not model.is_vace:
        raise TaskInputError(f"{field}: expected a VACE model (inpainting needs a guide and a mask), got {model.id!r}")
    return params, model


def handle_inpaint_frames(ctx: TaskContext) -> TaskOutcome:
    params, model = parse_inpaint(ctx.task.params, catalog=ctx.services.catalog)
    source = fetch_input(ctx, params.video_path, ctx.work_dir / "source", field="video_path", kind="video")
    info = probe_video(source)
    start, end = params.inpaint_start_frame, params.inpaint_end_frame
    if end > info.frames:
        raise TaskInputError(
            f"inpaint_end_frame: expected at most {info.frames} (the video has {info.frames} frames; the range "
            f"[inpaint_start_frame, inpaint_end_frame) excludes its end), got {end}"
        )
    window = plan_inpaint_window(info.frames, start, end, params.context_frame_count)
    logger.info(
        f"inpaint frames [{start}, {end}) of {info.frames}: generating source frames [{window.start}, {window.stop})"
        f" + {window.padding} padding = {window.frames} frames"
    )
    frames = read_frames(source)
    out_width, out_height = info.width // 2 * 2, info.height // 2 * 2  # yuv420p needs even sides
    width, height = generation_size(params.resolution or (info.width, info.height), window.frames, field="resolution")
    slots = [
        *frames[window.start : start],
        *[None] * (end - start),
        *frames[end : window.stop],
        *[None] * window.padding,
    ]
    guide = write_vace_guide(
        slots, width=width, height=height, out_dir=ctx.work_dir, fps=info.fps or 16, name="inpaint"
    )

    try:
        request = generation_params(params)
    except PayloadError as error:
        raise TaskInputError(str(error)) from error
    for key in _OWN_KEYS:
        request.pop(key, None)
    if request.get("activated_loras"):
        sources = [str(source) for source in request["activated_loras"]]
        request["activated_loras"] = [str(p) for p in fetch_loras(ctx, sources, field="activated_loras")]
    request.update(
        model=model.id,
        resolution=f"{width}x{height}",
        video_length=window.frames,
        video_guide=str(guide.guide),
        video_mask=str(guide.mask),
        video_prompt_type="VM",
    )
    result = run_engine(ctx, request)
    generated = read_frames(result.path)
    if len(generated) != window.frames:
        raise TransientTaskError(f"engine wrote {len(generated)} frames, planned {window.frames}")

    out_path = ctx.work_dir / "inpainted.mp4"
    regenerated = generated[start - window.start : end - window.start]
    with VideoWriter(out_path, width=out_width, height=out_height, fps=info.fps or 16) as writer:
        for part in (frames[:start], regenerated, frames[end:]):
            if len(part):
                writer.write(resize_frames(part, (out_width, out_height)))
        written = writer.close()
    if written.frames != info.frames:
        raise TransientTaskError(f"inpainted video has {written.frames} frames, the source {info.frames}")
    stored = ctx.store_output(out_path)
    return TaskOutcome(
        output_location=stored.location,
        result={
            "frames": written.frames,
            "inpainted": [start, end],
            "generated_window": [window.start, window.stop],
            "padding_frames": window.padding,
            "generated_frames": window.frames,
            "width": written.width,
            "height": written.height,
            "fps": written.fps,
            "seed": result.seed,
            "forward_passes": result.forward_passes,
            "thumbnail": stored.thumbnail,
        },
    )
