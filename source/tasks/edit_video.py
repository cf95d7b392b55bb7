"""`edit_video_orchestrator`: regenerate the frame ranges in `portions_to_regenerate` of one source video.

The kept stretches of the source around the portions are the clips of a join run (source/tasks/join_clips.py), each
portion becomes a bridge between the stretch before and after it, and the same `join_clips_segment` and
`join_final_stitch` children do the work. The stretches are spans of the source video itself, so nothing is cut out
and re-encoded before the final task writes the result.

Portion [start_frame, end_frame) is removed and G frames are generated in its place, guided by context_frame_count
kept frames on each side; the stretches are clean (they hold no frame a bridge replaces), so the bridges insert:

    final_frames = N - Σ_j P_j + Σ_j G_j        (N source frames, P_j = end_frame - start_frame)

which is the join contract Σ L_i + Σ G_j over the kept stretches. G_j is the portion's gap_frame_count (else its
per_join_settings entry's, else the run's, else the portion's own length) made to fit 4n+1 as in join_clips. Reigh's
editor sends a gap near the portion's length, so the video keeps about its length.

`replace_mode` has no effect here: upstream used it to keep each portion's first and last frames as anchors, which only
existed because it read end_frame as inclusive; the app sends frame_count = end_frame - start_frame.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from source.params.join import ClipSpan, EditVideoOrchestratorParams, Portion
from source.tasks.context import TaskContext, TaskInputError, TaskOutcome, parse_params
from source.tasks.join_clips import (
    BridgeSettings,
    JoinPlanError,
    JoinRequest,
    bridge_settings,
    enqueue_join_run,
    fetch_clip,
    pick_setting,
    plan_joins,
    warn_unused_settings,
)
from Wan2GP.catalog import Catalog

ROOT = "orchestrator_details"


def _sorted_portions(params: EditVideoOrchestratorParams) -> list[tuple[int, Portion]]:
    """(index in the payload, portion), in timeline order (per_join_settings follow this order, as upstream)."""
    portions = params.orchestrator_details.portions_to_regenerate
    return sorted(enumerate(portions), key=lambda pair: pair[1].start_frame)


def parse_edit_video(raw: Any, *, catalog: Catalog) -> tuple[EditVideoOrchestratorParams, list[BridgeSettings]]:
    """The payload and every portion's bridge settings; TaskInputError naming the field."""
    params = parse_params(EditVideoOrchestratorParams, raw, prefix="")
    details = params.orchestrator_details
    settings = []
    for order, (index, portion) in enumerate(_sorted_portions(params)):
        override = details.per_join_settings[order] if order < len(details.per_join_settings) else None
        override_root = f"{ROOT}.per_join_settings[{order}]"
        portion_root = f"{ROOT}.portions_to_regenerate[{index}]"
        roots = {"root": ROOT, "override_root": override_root}
        context, context_field = pick_setting(details, override, "context_frame_count", **roots)
        # The portion's own gap, else its join's, else the run's, else as many frames as the portion had.
        gap, gap_field = pick_setting(details, override, "gap_frame_count", **roots)
        if portion.gap_frame_count is not None:
            gap, gap_field = portion.gap_frame_count, f"{portion_root}.gap_frame_count"
        elif gap is None:
            gap, gap_field = portion.end_frame - portion.start_frame, portion_root
        request = JoinRequest(context, gap, replace=False, context_field=context_field, gap_field=gap_field)
        settings.append(
            bridge_settings(
                details,
                override,
                catalog=catalog,
                request=request,
                root=ROOT,
                override_root=override_root,
                prompt=portion.prompt or None,
            )
        )
    return params, settings


def keeper_spans(url: str, total: int, portions: list[tuple[int, Portion]]) -> list[ClipSpan]:
    """The stretches of the source around the portions; TaskInputError naming the portion field that leaves no kept
    frame before, between or after the portions."""
    spans, kept_from = [], 0
    for index, portion in portions:
        root = f"{ROOT}.portions_to_regenerate[{index}]"
        if portion.end_frame > total - 1:
            raise TaskInputError(
                f"{root}.end_frame: expected at most {total - 1} (the source has {total} frames and a portion needs "
                f"kept frames after it), got {portion.end_frame}"
            )
        if portion.start_frame <= kept_from:
            where = "the video's first frame" if kept_from == 0 else f"the previous portion's end_frame ({kept_from})"
            raise TaskInputError(
                f"{root}.start_frame: expected more than {kept_from}, {where}: a portion needs kept frames before it, "
                f"got {portion.start_frame}"
            )
        spans.append(ClipSpan(url=url, start=kept_from, stop=portion.start_frame))
        kept_from = portion.end_frame
    spans.append(ClipSpan(url=url, start=kept_from, stop=total))
    return spans


def handle_edit_video_orchestrator(ctx: TaskContext) -> TaskOutcome:
    params, settings = parse_edit_video(ctx.task.params, catalog=ctx.services.catalog)
    details = params.orchestrator_details
    warn_unused_settings(details)
    url = details.source_video_url
    _path, info = fetch_clip(ctx, url, 0, field=f"{ROOT}.source_video_url")
    if details.source_video_total_frames is not None and details.source_video_total_frames != info.frames:
        logger.warning(
            f"{ROOT}.source_video_total_frames is {details.source_video_total_frames}; the video has {info.frames} "
            "frames, which are what the portions are checked against"
        )
    portions = _sorted_portions(params)
    keepers = keeper_spans(url, info.frames, portions)
    names = [f"the kept stretch [{span.start}, {span.stop}) of the source" for span in keepers]
    try:
        plan = plan_joins(keepers, [setting.request for setting in settings], names)
    except JoinPlanError as error:
        raise TaskInputError(str(error)) from error
    fps = details.fps if details.fps and not details.use_input_video_fps else info.fps or 16
    return enqueue_join_run(
        ctx,
        plan=plan,
        settings=settings,
        first_clip=info,
        fps=fps,
        run_id=details.run_id or ctx.task.id,
        keep_bridging_images=details.keep_bridging_images,
    )
