"""`travel_segment`: generate one segment of a travel run.

i2v models get the segment's start and end keyframes as `image_start`/`image_end`. VACE models get a guide video and
a mask: the frames carried over from the previous segment's tail and the end keyframe are fixed (mask black), the rest
is generated (mask white). The segment's real frame count is checked against the plan and stored with its result, so
the stitch can verify the total (upstream assumed lengths and got them wrong, §10.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from source.media.colour import adjust_colour
from source.media.guide import build_vace_guide
from source.media.video import probe_video, read_frames
from source.params.travel import SegmentTaskParams
from source.tasks.context import TaskContext, TaskInputError, TaskOutcome, TransientTaskError, parse_params
from source.tasks.travel_plan import guidance_source_frames
from source.tasks.travel_support import (
    fetch_input,
    fetch_loras,
    load_model_definition,
    run_engine,
    travel_model_for,
)
from Wan2GP import limits
from Wan2GP.catalog import Catalog, ModelDefinition


def parse_segment(raw: Any, *, catalog: Catalog) -> tuple[SegmentTaskParams, ModelDefinition]:
    params = parse_params(SegmentTaskParams, raw, prefix="")
    return params, load_model_definition(catalog, params.model_name, field="model_name")


def handle_travel_segment(ctx: TaskContext) -> TaskOutcome:
    params, model = parse_segment(ctx.task.params, catalog=ctx.services.catalog)
    return generate_segment(ctx, params, model)


def generate_segment(ctx: TaskContext, params: SegmentTaskParams, model: ModelDefinition) -> TaskOutcome:
    """Generate one travel segment as `params` describe it (a row our orchestrator wrote, or an individual segment
    turned into one), check its frame count, post-process it and store it."""
    frames = params.segment_frames_target
    width, height = limits.parse_resolution(params.parsed_resolution_wh)
    work_dir = ctx.work_dir

    # Separate folders: two keyframe URLs may share a file name (".../a/image.png", ".../b/image.png").
    if (frames - 1) % 4:
        # The engine makes 4n+1 frames; any other count would come out shorter than planned, every attempt.
        raise TaskInputError(
            f"segment_frames_target: expected a frame count of the form 4n+1 (5, 9, ... 81), got {frames}"
        )
    start_image = (
        fetch_input(ctx, params.start_image_url, work_dir / "start", field="start_image_url", kind="image")
        if params.start_image_url
        else None
    )
    end_image = (
        fetch_input(ctx, params.end_image_url, work_dir / "end", field="end_image_url", kind="image")
        if params.end_image_url
        else None
    )
    generation = params.generation
    lora_paths = fetch_loras(ctx, list(generation.lora_names), field="generation.lora_names")

    request: dict = {
        "model": model.id,
        "prompt": params.base_prompt,
        "negative_prompt": params.negative_prompt,
        "resolution": f"{width}x{height}",
        "video_length": frames,
        "seed": params.seed_to_use,
        **generation.wgp_params(),
        "activated_loras": [str(p) for p in lora_paths],
        "loras_multipliers": list(generation.lora_multipliers),
    }
    # Rows written by our orchestrator say the mode; a segment row from elsewhere gets it from what the model is.
    mode = params.travel_mode or travel_model_for(ctx.services.catalog, model, None, field="params")[1]
    if mode == "vace":
        # Only a chained segment carries the previous tail (the plan then gives it no start keyframe); independent
        # segments also overlap their neighbours, but only the stitch uses that.
        carries_tail = params.frame_overlap_from_previous > 0 and start_image is None
        previous_tail = _previous_tail(ctx, params) if carries_tail else None
        structure = _structure_frames(ctx, params) if params.travel_guidance is not None else None
        guide = build_vace_guide(
            frames=frames,
            width=width,
            height=height,
            start_image=start_image,
            end_image=end_image,
            previous_tail=previous_tail,
            out_dir=work_dir,
            fps=params.fps_helpers,
            name=f"seg{params.segment_index:02d}",
            strength_adjustment=params.subsequent_starting_strength_adjustment,
            desaturate=params.desaturate_subsequent_starting_frames,
            # Reigh's payload means positive = darker for these carried frames; the media helper means brighter.
            brightness=-params.adjust_brightness_subsequent_starting_frames,
            structure=structure,
        )
        logger.info(f"VACE guide: {guide.frames} frames, fixed {list(guide.fixed_frames)}")
        request.update(video_guide=str(guide.guide), video_mask=str(guide.mask), video_prompt_type="VM")
        if structure is not None and params.travel_guidance.strength is not None:
            request["control_net_weight"] = params.travel_guidance.strength
    else:
        request.update(
            image_start=str(start_image) if start_image else None, image_end=str(end_image) if end_image else None
        )

    result = run_engine(ctx, request)
    info = probe_video(result.path)
    if info.frames != frames:
        raise TransientTaskError(f"segment {params.segment_index}: engine wrote {info.frames} frames, planned {frames}")
    output = _after_first_colour(params, result.path, ctx.work_dir)
    stored = ctx.store_output(output)
    return TaskOutcome(
        output_location=stored.location,
        result={
            "segment_index": params.segment_index,
            "frames": info.frames,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "seed": result.seed,
            "forward_passes": result.forward_passes,
            "timings": result.timings,
            "thumbnail": stored.thumbnail,
        },
    )


def _structure_frames(ctx: TaskContext, params: SegmentTaskParams) -> list[np.ndarray | None]:
    """The structure-guidance frame for each of the segment's frames (None where no guidance video covers it): the
    guidance videos fetched like any input, laid on the run's timeline from this segment's timeline_start."""
    guidance = params.travel_guidance
    sources = [
        read_frames(
            fetch_input(
                ctx,
                video.path,
                ctx.work_dir / f"guidance_{index}",
                field=f"travel_guidance.videos[{index}].path",
                kind="video",
            )
        )
        for index, video in enumerate(guidance.videos)
    ]
    mapping = guidance_source_frames(
        guidance.videos,
        [len(frames) for frames in sources],
        timeline_start=params.timeline_start,
        frames=params.segment_frames_target,
    )
    guided = sum(entry is not None for entry in mapping)
    logger.info(f"travel guidance ({guidance.kind}/{guidance.mode}): {guided} of {len(mapping)} frames guided")
    return [None if entry is None else sources[entry[0]][entry[1]] for entry in mapping]


def _after_first_colour(params: SegmentTaskParams, video: Path, work_dir: Path) -> Path:
    """Every segment after the first gets the run's post-generation saturation and brightness (Reigh's
    after_first_post_generation_*; 1 and 0 change nothing; a negative saturation means "off", as upstream)."""
    saturation = params.after_first_post_generation_saturation
    brightness = params.after_first_post_generation_brightness or 0.0
    if saturation is None or saturation < 0:
        saturation = 1.0
    if params.segment_index == 0 or (saturation == 1.0 and brightness == 0.0):
        return video
    logger.info(f"segment {params.segment_index}: saturation x{saturation:g}, brightness {brightness:+g}")
    adjusted = work_dir / f"{video.stem}_colour.mp4"
    # The payload's bounds (limits.POST_SATURATION / POST_BRIGHTNESS) are the range adjust_colour applies.
    adjust_colour(video, adjusted, saturation=saturation, brightness=brightness)
    return adjusted


def _previous_tail(ctx: TaskContext, params: SegmentTaskParams):
    """The last `overlap` frames of the previous segment, read from its stored output."""
    previous_id = ctx.task.dependant_on
    if previous_id is None:
        raise TaskInputError(
            f"frame_overlap_from_previous: segment {params.segment_index} carries "
            f"{params.frame_overlap_from_previous} frames but depends on no previous segment"
        )
    previous = ctx.queue.get(previous_id)
    if not previous.output_location:
        raise TransientTaskError(f"previous segment {previous_id} has no output yet")
    video = fetch_input(
        ctx,
        previous.output_location,
        ctx.work_dir / "previous",
        field="previous segment output",
        kind="video",
        own_output=True,
    )
    frames = read_frames(Path(video))
    overlap = params.frame_overlap_from_previous
    if len(frames) < overlap:
        raise TaskInputError(
            f"frame_overlap_from_previous: expected at most {len(frames)} (the previous segment's length), got {overlap}"
        )
    return frames[-overlap:]
