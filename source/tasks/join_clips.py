"""Join clips with VACE-generated bridges: `join_clips_orchestrator`, `join_clips_segment` (one bridge) and
`join_final_stitch` (clips and bridges spliced into one video). `edit_video_orchestrator` reuses the same plan and
children (source/tasks/edit_video.py).

The chain. Bridge j is generated from the boundary frames of clip j and clip j+1 only, so no bridge waits for another:
the orchestrator enqueues every bridge without dependencies (several workers can take them at once) and one final
task that depends on all of them and completes the orchestrator. Upstream's older chain (join j+1 bridging the
output of join j) re-encoded the growing video once per join and serialised the work; nothing here needs it.

A bridge is a VACE generation of  c + G + c  frames (c = context_frame_count, G = generated frames):

    guide:  clip j[a - c : a]  |  G grey frames  |  clip j+1[b : b + c]        mask: black | white | black

Insert mode (replace_mode false): a = end of clip j, b = 0; the bridge adds G frames between the clips.
Replace mode (replace_mode true, Reigh's default): the bridge takes the place of the last  r1 = G // 2  frames of clip
j and the first  r2 = G - r1  frames of clip j+1 (a = end - r1, b = r2), so the clips keep their timeline positions.

The final task writes  clip 0 kept, bridge 0, clip 1 kept, ...  where a clip's kept span is what no bridge replaced,
and cross-fades the c context frames at each side of each bridge with the clip frames they stand for (no sharpening;
the fade ends on the clip's own frame, so every clip frame beyond it reaches the output unchanged).

THE FRAME-COUNT CONTRACT (docs/join_clips.md), computed by the orchestrator before anything is generated, written into
the final task's row and asserted by it before and after writing the video:

    final_frames = Σ_i L_i + Σ_j (0 if replace_mode else G_j)

L_i: the frames of clip i (edit_video: of the kept stretch i of the source). VACE generates 4n+1 frames, so G is the
requested gap_frame_count g made to fit, as upstream's vace_quantization does: the  (c_before + g + c_after - 1) mod 4
frames over the last 4n+1 are taken off the gap; if that would leave no frame to generate, 4 are added back (upstream
then asked the engine for a length it could not make). Example: c = 15, g = 23 gives 53 frames, G = 23; c = 8, g = 20
gives G = 17. c_before = c_after = c, except where a clip between two insert-mode joins is shorter than both contexts
together: the joins then share it (see plan_joins).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from source.media.guide import write_vace_guide
from source.media.join import FrameSpan, read_span, splice_spans
from source.media.video import MediaError, VideoInfo, probe_video
from source.params.errors import PayloadError
from source.params.join import (
    DEFAULT_VACE_MODEL,
    BridgeSeam,
    BridgeTaskParams,
    ClipSpan,
    JoinClipsDetails,
    JoinClipsOrchestratorParams,
    JoinFinalParams,
    JoinOverrides,
    JoinRunSettings,
    join_generation,
)
from source.params.payloads import GenerationSpec
from source.queue import ChildSpec, TaskStatus
from source.storage.paths import safe_component
from source.tasks.context import TaskContext, TaskInputError, TaskOutcome, TransientTaskError, parse_params
from source.tasks.travel_support import fetch_input, fetch_loras, generation_size, load_model_definition, run_engine
from Wan2GP import limits
from Wan2GP.catalog import Catalog, ModelDefinition

BRIDGE_ROLE = "bridge"
FINAL_ROLE = "final"
BRIDGE_TASK = "join_clips_segment"
FINAL_TASK = "join_final_stitch"

# ---------------------------------------------------------------------------------------------------------------------
# Planning: pure functions, no I/O.


class JoinPlanError(ValueError):
    """A join that cannot be planned; the message names the field."""


def bridge_gap_frames(context_before: int, gap: int, context_after: int) -> int:
    """G such that context_before + G + context_after is 4n+1 (see the module docstring)."""
    fitted = gap - (context_before + gap + context_after - 1) % 4
    return fitted if fitted >= 1 else fitted + 4


@dataclass(frozen=True)
class JoinRequest:
    """What one join asks for, with the payload fields the values came from (for error messages)."""

    context: int
    gap: int
    replace: bool
    context_field: str
    gap_field: str


@dataclass(frozen=True)
class BridgePlan:
    index: int
    context_before: ClipSpan | None  # the kept frames of clip j the bridge starts with
    context_after: ClipSpan | None  # the kept frames of clip j+1 it ends with
    gap_frames: int  # G: generated
    replaced_before: int  # frames at the end of clip j the bridge replaces (replace mode)
    replaced_after: int  # frames at the start of clip j+1 it replaces

    @property
    def frames(self) -> int:
        return _frames(self.context_before) + self.gap_frames + _frames(self.context_after)

    def seam(self) -> BridgeSeam:
        return BridgeSeam(
            frames=self.frames,
            context_before=_frames(self.context_before),
            context_after=_frames(self.context_after),
        )


@dataclass(frozen=True)
class JoinPlan:
    kept: tuple[ClipSpan, ...]  # what the final video keeps of each clip
    bridges: tuple[BridgePlan, ...]

    @property
    def final_frames(self) -> int:
        """The contract: Σ kept clip frames + Σ G (each bridge's context frames are cross-faded into the clips)."""
        return sum(span.frames for span in self.kept) + sum(bridge.gap_frames for bridge in self.bridges)


def _frames(span: ClipSpan | None) -> int:
    return span.frames if span is not None else 0


def _sub_span(span: ClipSpan, start: int, stop: int) -> ClipSpan | None:
    """Frames [start, stop) counted from the span's own first frame (None when empty)."""
    if stop <= start:
        return None
    return ClipSpan(url=span.url, start=span.start + start, stop=span.start + stop, reverse=span.reverse)


def plan_joins(clips: Sequence[ClipSpan], joins: Sequence[JoinRequest], clip_names: Sequence[str]) -> JoinPlan:
    """Plan the bridges between consecutive clips (`joins[j]` between clips j and j+1) and what is kept of each clip.

    A clip between two insert-mode joins whose contexts together are longer than it gives each join a share (the
    app caps an edit's context below its shortest kept stretch, not below half of it); the gap is then fitted to the
    shortened contexts. Anything else that does not fit raises JoinPlanError naming the field: a context longer than
    a clip's kept frames, replaced frames that leave nothing of a clip, a replace-mode join squeezed."""
    if len(joins) != len(clips) - 1:
        raise JoinPlanError(f"joins: expected {len(clips) - 1} (one between each two clips), got {len(joins)}")
    replaced = []  # (frames replaced at the end of clip j, at the start of clip j+1); only replace mode replaces
    for join in joins:
        if join.context < 0 or join.gap < 1:
            raise JoinPlanError(
                f"{join.gap_field}: expected a gap >= 1 and a context >= 0, got {join.gap}, {join.context}"
            )
        gap = bridge_gap_frames(join.context, join.gap, join.context)
        replaced.append((gap // 2, gap - gap // 2) if join.replace else (0, 0))

    kept: list[ClipSpan] = []
    contexts = [[join.context, join.context] for join in joins]  # frames of clip j, of clip j+1 each bridge keeps
    for index, clip in enumerate(clips):
        before = joins[index - 1] if index > 0 else None  # the join at the clip's start
        after = joins[index] if index < len(joins) else None  # the join at its end
        head = replaced[index - 1][1] if before else 0
        tail = replaced[index][0] if after else 0
        free = clip.frames - head - tail
        context_head = before.context if before else 0
        context_tail = after.context if after else 0
        named = after or before
        if free < max(1, context_head, context_tail) or (
            context_head + context_tail > free and any(join.replace for join in (before, after) if join)
        ):
            raise JoinPlanError(
                f"{named.context_field}: expected a context (or gap) that fits every clip: {clip_names[index]} has "  # type: ignore[union-attr]
                f"{clip.frames} frames, but its joins keep {context_head} context frames and replace {head} at its "
                f"start and keep {context_tail} and replace {tail} at its end"
            )
        if context_head + context_tail > free:  # insert mode on both sides: share the clip
            context_head = min(context_head, max(free - context_tail, free // 2))
            context_tail = free - context_head
            contexts[index - 1][1], contexts[index][0] = context_head, context_tail
        kept.append(_sub_span(clip, head, clip.frames - tail))  # type: ignore[arg-type]  # free >= 1: never empty

    bridges = []
    for index, join in enumerate(joins):
        before_frames, after_frames = contexts[index]
        # Replace mode never shares a clip, so its contexts are the requested ones and its gap the one replaced.
        gap = bridge_gap_frames(before_frames, join.gap, after_frames)
        if before_frames + gap + after_frames > limits.MAX_FRAMES:
            raise JoinPlanError(
                f"{join.gap_field}: expected context + gap + context of at most {limits.MAX_FRAMES} frames (one "
                f"generation), got {before_frames + gap + after_frames}"
            )
        before, after = kept[index], kept[index + 1]
        bridges.append(
            BridgePlan(
                index=index,
                context_before=_sub_span(before, before.frames - before_frames, before.frames),
                context_after=_sub_span(after, 0, after_frames),
                gap_frames=gap,
                replaced_before=replaced[index][0],
                replaced_after=replaced[index][1],
            )
        )
    return JoinPlan(kept=tuple(kept), bridges=tuple(bridges))


# ---------------------------------------------------------------------------------------------------------------------
# Per-join settings: the run's details, then that join's per_join_settings entry.


def pick_setting(
    details: JoinRunSettings, override: JoinOverrides | None, name: str, *, root: str, override_root: str
) -> tuple[Any, str]:
    """The join's value for `name` if its per_join_settings entry gives one, else the run's; with its field path."""
    if override is not None and getattr(override, name) is not None:
        return getattr(override, name), f"{override_root}.{name}"
    return getattr(details, name), f"{root}.{name}"


@dataclass(frozen=True)
class BridgeSettings:
    request: JoinRequest
    model: ModelDefinition
    generation: GenerationSpec
    prompt: str
    negative_prompt: str
    seed: int | None  # None: the run's seed
    size: tuple[int, int] | None  # generation size asked for (None: the first clip's)
    size_field: str
    warnings: tuple[str, ...] = field(default=())


def bridge_settings(
    details: JoinRunSettings,
    override: JoinOverrides | None,
    *,
    catalog: Catalog,
    request: JoinRequest,
    root: str,
    override_root: str,
    prompt: str | None = None,
) -> BridgeSettings:
    """One join's generation: the run's details, then the join's per_join_settings entry (see join_generation);
    `prompt` (an edit portion's own prompt) wins over both."""

    def pick(name: str) -> tuple[Any, str]:
        return pick_setting(details, override, name, root=root, override_root=override_root)

    model_id, model_field = pick("model")
    model = load_model_definition(catalog, model_id or DEFAULT_VACE_MODEL, field=model_field)
    if not model.is_vace:
        raise TaskInputError(
            f"{model_field}: expected a VACE model (a bridge is generated from a guide and a mask), got {model.id!r}"
        )
    try:
        generation, warnings = join_generation(details, override, model, root=root, override_root=override_root)
    except PayloadError as error:
        raise TaskInputError(str(error)) from error
    resolution, size_field = pick("resolution")
    size = None
    if resolution and not details.use_input_video_resolution:
        size = limits.parse_resolution(resolution)
    seed = pick("seed")[0]
    return BridgeSettings(
        request=request,
        model=model,
        generation=generation,
        prompt=prompt if prompt is not None else pick("prompt")[0] or "",
        negative_prompt=pick("negative_prompt")[0] or "",
        seed=seed if seed is not None and seed >= 0 else None,
        size=size,
        size_field=size_field,
        warnings=tuple(warnings),
    )


def _join_request(details: JoinClipsDetails, override: JoinOverrides | None, index: int) -> JoinRequest:
    roots = {"root": "orchestrator_details", "override_root": f"orchestrator_details.per_join_settings[{index}]"}
    context, context_field = pick_setting(details, override, "context_frame_count", **roots)
    gap, gap_field = pick_setting(details, override, "gap_frame_count", **roots)
    replace, _field = pick_setting(details, override, "replace_mode", **roots)
    return JoinRequest(context, gap, replace, context_field=context_field, gap_field=gap_field)


def parse_join_orchestrator(raw: Any, *, catalog: Catalog) -> tuple[JoinClipsOrchestratorParams, list[BridgeSettings]]:
    """The payload and every join's settings (models and phase plans checked); TaskInputError naming the field."""
    params = parse_params(JoinClipsOrchestratorParams, raw, prefix="")
    details = params.orchestrator_details
    joins = 1 if details.loop_first_clip else len(details.clip_list) - 1
    settings = []
    for index in range(joins):
        override = details.per_join_settings[index] if index < len(details.per_join_settings) else None
        settings.append(
            bridge_settings(
                details,
                override,
                catalog=catalog,
                request=_join_request(details, override, index),
                root="orchestrator_details",
                override_root=f"orchestrator_details.per_join_settings[{index}]",
            )
        )
    return params, settings


# ---------------------------------------------------------------------------------------------------------------------
# Orchestrators (join_clips here, edit_video in its own module): probe, plan, enqueue.


def warn_unused_settings(details: JoinRunSettings) -> None:
    """A WARNING for each setting the user turned on that this worker does not honour (NOT_USED says why)."""
    for name in ("enhance_prompt", "audio_url", "vid2vid_init_strength"):
        if getattr(details, name):
            logger.warning(f"orchestrator_details.{name} is ignored: {JoinRunSettings.NOT_USED[name]}")


def fetch_clip(ctx: TaskContext, url: str, index: int, *, field: str) -> tuple[Path, VideoInfo]:
    path = fetch_input(ctx, url, ctx.work_dir / "clips" / str(index), field=field, kind="video")
    return path, probe_video(path)


def enqueue_join_run(
    ctx: TaskContext,
    *,
    plan: JoinPlan,
    settings: Sequence[BridgeSettings],
    first_clip: VideoInfo,
    fps: float,
    run_id: str,
    keep_bridging_images: bool,
) -> TaskOutcome:
    """Enqueue one bridge per join and the final task, and wait for the final task to complete the orchestrator."""
    out_width, out_height = first_clip.width // 2 * 2, first_clip.height // 2 * 2  # yuv420p needs even sides
    run_seed = random.randint(0, 999_999_999)  # for joins without a seed; stored in their rows, so a retry repeats it
    children: list[ChildSpec] = []
    for bridge, setting in zip(plan.bridges, settings, strict=True):
        width, height = generation_size(
            setting.size or (first_clip.width, first_clip.height), bridge.frames, field=setting.size_field
        )
        for warning in setting.warnings:
            logger.warning(f"join {bridge.index}: {warning}")
        payload = BridgeTaskParams(
            orchestrator_task_id_ref=ctx.task.id,
            orchestrator_run_id=run_id,
            project_id=ctx.task.project_id,
            join_index=bridge.index,
            context_before=bridge.context_before,
            context_after=bridge.context_after,
            gap_frames=bridge.gap_frames,
            keep_bridging_images=keep_bridging_images,
            model_name=setting.model.id,
            resolution=f"{width}x{height}",
            fps=fps,
            prompt=setting.prompt,
            negative_prompt=setting.negative_prompt,
            seed=setting.seed if setting.seed is not None else run_seed,
            generation=setting.generation,
        )
        children.append(
            ChildSpec(
                task_type=BRIDGE_TASK,
                params=payload.model_dump(mode="json", exclude_none=True),
                role=BRIDGE_ROLE,
                segment_index=bridge.index,
            )
        )
    final = JoinFinalParams(
        orchestrator_task_id_ref=ctx.task.id,
        orchestrator_run_id=run_id,
        project_id=ctx.task.project_id,
        clips=list(plan.kept),
        bridges=[bridge.seam() for bridge in plan.bridges],
        expected_final_frames=plan.final_frames,
        resolution=f"{out_width}x{out_height}",
        fps=fps,
    )
    children.append(
        ChildSpec(
            task_type=FINAL_TASK,
            params=final.model_dump(mode="json", exclude_none=True),
            role=FINAL_ROLE,
            depends_on=tuple(f"{BRIDGE_ROLE}:{bridge.index}" for bridge in plan.bridges),
            completes_parent=True,
        )
    )
    child_ids = ctx.queue.enqueue_children(ctx.task.id, children)
    message = (
        f"Enqueued {len(plan.bridges)} bridges ({', '.join(str(b.frames) for b in plan.bridges)} frames) and the "
        f"final join for run {run_id}; the result will have {plan.final_frames} frames at {out_width}x{out_height}"
    )
    logger.info(message)
    return TaskOutcome(
        awaiting_children=True,
        message=message,
        result={
            "expected_final_frames": plan.final_frames,
            "bridge_frames": [bridge.frames for bridge in plan.bridges],
            "gap_frames": [bridge.gap_frames for bridge in plan.bridges],
            "kept_frames": [span.frames for span in plan.kept],
            "child_ids": child_ids,
        },
    )


def handle_join_clips_orchestrator(ctx: TaskContext) -> TaskOutcome:
    params, settings = parse_join_orchestrator(ctx.task.params, catalog=ctx.services.catalog)
    details = params.orchestrator_details
    warn_unused_settings(details)
    spans, names, infos = [], [], []
    clips = details.clip_list[:1] if details.loop_first_clip else details.clip_list
    if len(clips) < len(details.clip_list):
        logger.info("loop_first_clip: clip_list[0] is joined to itself played backwards; the other clips are not read")
    for index, clip in enumerate(clips):
        ctx.report_progress(index, len(clips), f"probing clip {index}")
        _path, info = fetch_clip(ctx, clip.url, index, field=f"orchestrator_details.clip_list[{index}].url")
        spans.append(ClipSpan(url=clip.url, start=0, stop=info.frames))
        names.append(f"clip_list[{index}]")
        infos.append(info)
    if details.loop_first_clip:
        spans.append(ClipSpan(url=details.clip_list[0].url, start=0, stop=infos[0].frames, reverse=True))
        names.append("clip_list[0] played backwards")
    try:
        plan = plan_joins(spans, [setting.request for setting in settings], names)
    except JoinPlanError as error:
        raise TaskInputError(str(error)) from error
    for index, info in enumerate(infos[1:], start=1):
        if abs(info.fps - infos[0].fps) > 0.01:
            logger.warning(
                f"clip_list[{index}] runs at {info.fps} fps, clip_list[0] at {infos[0].fps}: "
                "frames are joined as they are, not resampled"
            )
    fps = details.fps if details.fps and not details.use_input_video_fps else infos[0].fps or 16
    return enqueue_join_run(
        ctx,
        plan=plan,
        settings=settings,
        first_clip=infos[0],
        fps=fps,
        run_id=details.run_id or ctx.task.id,
        keep_bridging_images=details.keep_bridging_images,
    )


# ---------------------------------------------------------------------------------------------------------------------
# join_clips_segment: one bridge.


def parse_bridge(raw: Any, *, catalog: Catalog) -> tuple[BridgeTaskParams, ModelDefinition]:
    params = parse_params(BridgeTaskParams, raw, prefix="")
    return params, load_model_definition(catalog, params.model_name, field="model_name")


def _span_frames(ctx: TaskContext, span: ClipSpan | None, *, field: str) -> np.ndarray | None:
    if span is None:
        return None
    path = fetch_input(ctx, span.url, ctx.work_dir / field, field=f"{field}.url", kind="video")
    try:
        return read_span(FrameSpan(Path(path), span.start, span.stop, span.reverse))
    except MediaError as error:
        raise TaskInputError(f"{field}: {error}") from None


def bridge_slots(before: np.ndarray | None, gap: int, after: np.ndarray | None, *, keep_bridging_images: bool) -> list:
    """The guide's frames: the context before, `gap` frames to generate (None), the context after. With
    keep_bridging_images, the last frame before and the first frame after are also pinned at 1/3 and 2/3 of the gap
    (upstream's anchors) when the gap has room for both."""
    before_frames = list(before) if before is not None else []
    after_frames = list(after) if after is not None else []
    gap_slots: list[np.ndarray | None] = [None] * gap
    first, second = gap // 3, gap * 2 // 3
    if keep_bridging_images and before_frames and after_frames and gap >= 3 and first < second:
        gap_slots[first], gap_slots[second] = before_frames[-1], after_frames[0]
    return [*before_frames, *gap_slots, *after_frames]


def handle_join_clips_segment(ctx: TaskContext) -> TaskOutcome:
    params, model = parse_bridge(ctx.task.params, catalog=ctx.services.catalog)
    width, height = limits.parse_resolution(params.resolution)
    before = _span_frames(ctx, params.context_before, field="context_before")
    after = _span_frames(ctx, params.context_after, field="context_after")
    slots = bridge_slots(before, params.gap_frames, after, keep_bridging_images=params.keep_bridging_images)
    guide = write_vace_guide(
        slots, width=width, height=height, out_dir=ctx.work_dir, fps=params.fps, name=f"bridge{params.join_index:02d}"
    )
    generation = params.generation
    lora_paths = fetch_loras(ctx, list(generation.lora_names), field="generation.lora_names")
    request = {
        "model": model.id,
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "resolution": params.resolution,
        "video_length": params.frames,
        "seed": params.seed,
        **generation.wgp_params(),
        "activated_loras": [str(path) for path in lora_paths],
        "loras_multipliers": list(generation.lora_multipliers),
        "video_guide": str(guide.guide),
        "video_mask": str(guide.mask),
        "video_prompt_type": "VM",
    }
    result = run_engine(ctx, request)
    info = probe_video(result.path)
    if info.frames != params.frames:
        raise TransientTaskError(
            f"bridge {params.join_index}: engine wrote {info.frames} frames, planned {params.frames}"
        )
    stored = ctx.store_output(result.path)
    return TaskOutcome(
        output_location=stored.location,
        result={
            "join_index": params.join_index,
            "frames": info.frames,
            "context_before": _frames(params.context_before),
            "gap_frames": params.gap_frames,
            "context_after": _frames(params.context_after),
            "width": info.width,
            "height": info.height,
            "seed": result.seed,
            "forward_passes": result.forward_passes,
            "timings": result.timings,
            "thumbnail": stored.thumbnail,
        },
    )


# ---------------------------------------------------------------------------------------------------------------------
# join_final_stitch: clips and bridges into one video.


def parse_final(raw: Any) -> JoinFinalParams:
    return parse_params(JoinFinalParams, raw, prefix="")


def handle_join_final_stitch(ctx: TaskContext) -> TaskOutcome:
    params = parse_final(ctx.task.params)
    seams = params.bridges
    bridges = sorted(
        (child for child in ctx.queue.children(params.orchestrator_task_id_ref) if child.role == BRIDGE_ROLE),
        key=lambda child: child.segment_index,
    )
    indices = [child.segment_index for child in bridges]
    if indices != list(range(len(seams))):
        raise TaskInputError(f"bridges: expected bridge tasks 0..{len(seams) - 1}, found {indices}")
    not_done = [f"{c.segment_index} ({c.status})" for c in bridges if c.status != TaskStatus.COMPLETE]
    if not_done:
        raise TransientTaskError(f"bridges not complete: {', '.join(not_done)}")
    for child, seam in zip(bridges, seams, strict=True):
        reported = (child.result or {}).get("frames")  # a backend without results (Reigh's edge API) has none
        if isinstance(reported, int) and reported != seam.frames:
            raise TaskInputError(
                f"bridges[{child.segment_index}].frames: bridge task reports {reported}, planned {seam.frames}"
            )
    spliced = sum(clip.frames for clip in params.clips) + sum(
        s.frames - s.context_before - s.context_after for s in seams
    )
    if spliced != params.expected_final_frames:
        raise TaskInputError(
            f"expected_final_frames: the kept clips and bridges splice to {spliced} frames, not the contracted "
            f"{params.expected_final_frames}"
        )

    paths: dict[str, Path] = {}
    spans: list[FrameSpan] = []
    overlaps: list[int] = []
    # One total for the whole task: a step per clip or bridge fetched, then one per span spliced.
    fetches = len(params.clips) + len(bridges)
    steps = 2 * fetches
    for index, clip in enumerate(params.clips):
        ctx.report_progress(len(spans), steps, f"fetching clip {index}")
        if clip.url not in paths:
            paths[clip.url] = fetch_input(
                ctx, clip.url, ctx.work_dir / "clips" / str(len(paths)), field=f"clips[{index}].url", kind="video"
            )
        spans.append(FrameSpan(paths[clip.url], clip.start, clip.stop, clip.reverse))
        if index < len(bridges):
            child, seam = bridges[index], seams[index]
            ctx.report_progress(len(spans), steps, f"fetching bridge {index}")
            video = fetch_input(
                ctx,
                child.output_location or "",
                ctx.work_dir / "bridges" / str(index),
                field=f"bridge {index} output",
                kind="video",
                own_output=True,
            )
            spans.append(FrameSpan(Path(video), 0, seam.frames))
            overlaps += [seam.context_before, seam.context_after]

    width, height = limits.parse_resolution(params.resolution)
    out_path = ctx.work_dir / f"join_{safe_component(params.orchestrator_run_id)}_final.mp4"
    try:
        splice_spans(
            spans,
            overlaps,
            out_path,
            width=width,
            height=height,
            fps=params.fps,
            expected_frames=params.expected_final_frames,
            progress=lambda done, _total: ctx.report_progress(fetches + done, steps, "splicing"),
        )
    except MediaError as error:
        raise TaskInputError(f"clips: {error}") from error
    info = probe_video(out_path)
    if info.frames != params.expected_final_frames:
        raise TransientTaskError(f"joined video has {info.frames} frames, contracted {params.expected_final_frames}")
    stored = ctx.store_output(out_path)
    return TaskOutcome(
        output_location=stored.location,
        result={
            "frames": info.frames,
            "expected_final_frames": params.expected_final_frames,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "bridges": [child.id for child in bridges],
            "thumbnail": stored.thumbnail,
        },
    )
