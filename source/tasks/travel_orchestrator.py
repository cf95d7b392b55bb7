"""`travel_orchestrator`: plan a travel run and enqueue its segments and the stitch.

The orchestrator does no generation. It validates the payload, parses the phase_config once, plans every segment
(source.tasks.travel_plan) and enqueues the children through the queue's idempotent child API, keyed by
(orchestrator, role, segment index): re-running a crashed orchestrator finds the children it already made and
creates none twice. It then waits, In Progress and without a lease, until the queue's child hook completes it with the
stitch's output (or fails it with the first child failure).

Seed policy: every segment uses the same seed, `seed_base` (upstream's behaviour since it dropped `seed_base + index`;
Reigh users rely on it). A `seed_base` of -1 draws ONE random seed here, stored in every segment row, so a retried
segment regenerates the same video.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

from loguru import logger

from source.params.errors import PayloadError
from source.params.payloads import OrchestratorDetails, TravelGuidance
from source.params.travel import (
    GenerationSpec,
    SegmentTaskParams,
    StitchTaskParams,
    TravelOrchestratorParams,
    generation_params_from_details,
)
from source.queue import ChildSpec
from source.tasks.context import TaskContext, TaskInputError, TaskOutcome, parse_params
from source.tasks.travel_plan import TravelPlan, TravelPlanError, plan_travel
from source.tasks.travel_prompts import SegmentPrompts, segment_prompts
from source.tasks.travel_support import generation_size, load_model_definition, travel_model_for
from Wan2GP import limits
from Wan2GP.catalog import Catalog, ModelDefinition


class ParsedTravel(NamedTuple):
    """A travel payload checked as far as it can be without I/O."""

    params: TravelOrchestratorParams
    model: ModelDefinition  # what the segments generate with (model_type may have picked model_name's counterpart)
    mode: str  # "vace" or "i2v"
    generations: list[GenerationSpec]  # one per segment: orchestrator_details + that pair's overrides
    warnings: list[str]


def parse_orchestrator(raw: Any, *, catalog: Catalog) -> ParsedTravel:
    """The payload, its model and travel mode, and what every segment will generate with (each segment's plan checked
    against the model), with the plans' warnings; TaskInputError naming the field."""
    params = parse_params(TravelOrchestratorParams, raw, prefix="")
    details = params.orchestrator_details
    requested = load_model_definition(catalog, details.model_name, field="orchestrator_details.model_name")
    model, mode = travel_model_for(catalog, requested, details.model_type)
    guidance = details.travel_guidance
    if guidance is not None and guidance.active and mode != "vace":
        raise TaskInputError(
            f"orchestrator_details.travel_guidance: {guidance.kind} guidance needs a VACE model; {model.id!r} is an "
            f'{mode} model (send model_type "vace" with a model that has a VACE counterpart, or a VACE model_name)'
        )
    generations: list[GenerationSpec] = []
    warnings: list[str] = []
    try:
        for index in range(max(details.segment_count, 0)):
            spec, notes = generation_params_from_details(details, model, index)
            generations.append(spec)
            warnings += [note for note in notes if note not in warnings]
    except PayloadError as error:
        raise TaskInputError(str(error)) from error
    return ParsedTravel(params, model, mode, generations, warnings)


class RunPlan(NamedTuple):
    """A travel run planned: every segment's frames, keyframes and prompt, at one size, fps and seed."""

    plan: TravelPlan
    width: int
    height: int
    fps: int
    seed: int
    run_id: str
    prompts: SegmentPrompts


def handle_travel_orchestrator(ctx: TaskContext) -> TaskOutcome:
    parsed = parse_orchestrator(ctx.task.params, catalog=ctx.services.catalog)
    for warning in parsed.warnings:
        logger.warning(warning)
    details = parsed.params.orchestrator_details
    if details.segment_count <= 0:  # upstream §3.1: nothing to generate, the task succeeds vacuously
        return TaskOutcome(message="num_new_segments_to_generate <= 0: nothing to generate", result={"segments": 0})

    run = plan_run(ctx, parsed)
    children = [*segment_children(ctx, parsed, run), stitch_child(ctx, parsed, run)]
    child_ids = ctx.queue.enqueue_children(ctx.task.id, children)
    plan = run.plan
    message = (
        f"Enqueued {len(plan.segments)} {parsed.mode} segments and a stitch for run {run.run_id}; "
        f"the final video will have {plan.final_frames} frames at {run.width}x{run.height}, {run.fps} fps"
    )
    logger.info(message)
    return TaskOutcome(
        awaiting_children=True,
        message=message,
        result={
            "expected_final_frames": plan.final_frames,
            "segment_frames": [s.frames for s in plan.segments],
            "overlaps": list(plan.overlaps),
            "mode": parsed.mode,
            "seed": run.seed,
            "child_ids": child_ids,
            **({"prompt_enhancement": run.prompts.summary()} if details.enhance_prompt else {}),
        },
    )


def plan_run(ctx: TaskContext, parsed: ParsedTravel) -> RunPlan:
    """The seed, every segment's plan, the size (checked before anything is enqueued) and the prompts (written by
    the prompt model where enhance_prompt asks for them)."""
    details, model = parsed.params.orchestrator_details, parsed.model
    seed = details.seed_base if details.seed_base >= 0 else random.randint(0, 999_999_999)
    # Upstream generates num_new_segments_to_generate segments and reads the per-segment lists by index, so longer
    # lists are allowed; the payload model has already checked that they are not shorter.
    count = details.segment_count
    overlaps = details.frame_overlap_expanded
    if isinstance(overlaps, list):  # Reigh sends one per segment (expandArrayToCount), the last one unused
        overlaps = overlaps[: max(count - 1, 0)]
    plan_inputs = dict(
        mode=parsed.mode,
        chain_segments=details.chain_segments,
        images=list(details.input_image_paths_resolved),
        segment_frames=list(details.segment_frames_expanded)[:count],
        overlaps=overlaps,
        base_prompt=details.base_prompt,
        base_prompts=list(details.base_prompts_expanded),
        negative_prompt=details.negative_prompt or "",
        negative_prompts=list(details.negative_prompts_expanded),
        text_before=details.text_before_prompts,
        text_after=details.text_after_prompts,
        seed=seed,
    )
    try:
        plan = plan_travel(**plan_inputs, enhanced_prompts=list(details.enhanced_prompts_expanded))
    except TravelPlanError as error:
        raise TaskInputError(str(error)) from error

    # Checked here, before any segment is enqueued, not by every segment's engine call.
    width, height = generation_size(
        details.parsed_resolution_wh or model.settings.get("resolution", limits.DEFAULT_RESOLUTION),
        max(segment.frames for segment in plan.segments),
        field="orchestrator_details.parsed_resolution_wh",
    )
    fps = details.fps_helpers or model.fps
    prompts = segment_prompts(ctx, details, count=count, frames=[s.frames for s in plan.segments], fps=fps)
    if prompts.written or prompts.not_enhanced:
        plan = plan_travel(**plan_inputs, enhanced_prompts=prompts.enhanced)
    return RunPlan(plan, width, height, fps, seed, details.run_id or ctx.task.id, prompts)


def segment_children(ctx: TaskContext, parsed: ParsedTravel, run: RunPlan) -> list[ChildSpec]:
    """One travel_segment row per segment: its plan, its generation and the app's link fields."""
    params, details = parsed.params, parsed.params.orchestrator_details
    plan = run.plan
    app_view = _details_the_app_reads(details)
    children = []
    for segment in plan.segments:
        payload = SegmentTaskParams(
            orchestrator_task_id_ref=ctx.task.id,
            parent_generation_id=details.parent_generation_id or params.parent_generation_id,
            shot_id=details.shot_id,
            pair_shot_generation_id=_at(details.pair_shot_generation_ids, segment.index),
            travel_guidance=_segment_guidance(details, segment.index, run_frames=plan.final_frames),
            timeline_start=segment.timeline_start,
            after_first_post_generation_saturation=details.after_first_post_generation_saturation,
            after_first_post_generation_brightness=details.after_first_post_generation_brightness,
            orchestrator_details=app_view,
            orchestrator_run_id=run.run_id,
            project_id=ctx.task.project_id,
            segment_index=segment.index,
            is_first_segment=segment.index == 0,
            is_last_segment=segment.index == len(plan.segments) - 1,
            model_name=parsed.model.id,
            travel_mode=parsed.mode,
            parsed_resolution_wh=f"{run.width}x{run.height}",
            segment_frames_target=segment.frames,
            frame_overlap_from_previous=segment.overlap_from_previous,
            frame_overlap_with_next=segment.overlap_with_next,
            start_image_url=segment.start_image,
            end_image_url=segment.end_image,
            base_prompt=segment.prompt,
            negative_prompt=segment.negative_prompt,
            seed_to_use=segment.seed,
            fps_helpers=run.fps,
            generation=parsed.generations[segment.index],
            subsequent_starting_strength_adjustment=details.subsequent_starting_strength_adjustment,
            desaturate_subsequent_starting_frames=details.desaturate_subsequent_starting_frames,
            adjust_brightness_subsequent_starting_frames=details.adjust_brightness_subsequent_starting_frames,
        )
        depends = (f"segment:{segment.index - 1}",) if segment.depends_on_previous else ()
        children.append(
            ChildSpec(
                task_type="travel_segment",
                params=payload.model_dump(mode="json", exclude_none=True),
                role="segment",
                segment_index=segment.index,
                depends_on=depends,
            )
        )
    return children


def stitch_child(ctx: TaskContext, parsed: ParsedTravel, run: RunPlan) -> ChildSpec:
    """The travel_stitch row: it waits for EVERY segment (independent i2v segments can be generated by several
    workers at once) and completes the orchestrator with the final video."""
    params, details = parsed.params, parsed.params.orchestrator_details
    plan = run.plan
    stitch = StitchTaskParams(
        orchestrator_task_id_ref=ctx.task.id,
        parent_generation_id=details.parent_generation_id or params.parent_generation_id,
        orchestrator_run_id=run.run_id,
        project_id=ctx.task.project_id,
        num_total_segments_generated=len(plan.segments),
        frame_overlap_settings_expanded=list(plan.overlaps),
        segment_frames=[s.frames for s in plan.segments],
        expected_final_frames=plan.final_frames,
        crossfade_sharp_amt=details.crossfade_sharp_amt,
        regenerate_anchors=bool(details.regenerate_anchors),
        parsed_resolution_wh=f"{run.width}x{run.height}",
        fps_final_video=details.fps_final_video or run.fps,
    )
    return ChildSpec(
        task_type="travel_stitch",
        params=stitch.model_dump(mode="json", exclude_none=True),
        role="stitch",
        segment_index=None,
        depends_on=tuple(f"segment:{s.index}" for s in plan.segments),
        completes_parent=True,
    )


# Keys of orchestrator_details that Reigh's complete_task reads off a finished segment row to fill the generation it
# creates (prompt, frames, overlap and keyframe ids per segment; docs/reigh_payloads.md §7). Generation knobs are
# NOT copied: the segment's `generation` is what it runs with.
APP_READS_FROM_SEGMENTS = (
    "model_name",
    "num_new_segments_to_generate",
    "segment_frames_expanded",
    "frame_overlap_expanded",
    "base_prompts_expanded",
    "negative_prompts_expanded",
    "input_image_generation_ids",
    "pair_shot_generation_ids",
    "parent_generation_id",
    "shot_id",
    "run_id",
    "generation_name",
)


def _details_the_app_reads(details: OrchestratorDetails) -> dict[str, Any]:
    given = details.given()
    return {key: given[key] for key in APP_READS_FROM_SEGMENTS if key in given}


def _at(values: list[Any] | None, index: int) -> Any:
    return values[index] if values is not None and index < len(values) else None


def _segment_guidance(details: OrchestratorDetails, index: int, *, run_frames: int) -> TravelGuidance | None:
    """The run's travel_guidance as segment `index` applies it: an `adjust` video without an end_frame guides to the
    end of the run, and the pair's motion settings may change the strength and the videos' treatment (the app's
    pair_motion_settings)."""
    guidance = details.travel_guidance
    if guidance is None or not guidance.active:
        return None
    pair = _at(details.motion_settings_expanded, index)
    videos = []
    for video in guidance.videos:
        update: dict[str, Any] = {}
        if pair is not None and pair.structure_treatment is not None:
            update["treatment"] = pair.structure_treatment
        if video.end_frame is None and update.get("treatment", video.treatment) == "adjust":
            update["end_frame"] = max(run_frames, video.start_frame + 1)
        videos.append(video.model_copy(update=update))
    strength = pair.structure_motion_strength if pair is not None else None
    return guidance.model_copy(update={"videos": videos, **({"strength": strength} if strength is not None else {})})
