"""`travel_stitch`: cross-fade the segments of a travel run into one mp4.

Segments are collected from the database (the orchestrator's children with role "segment", one per index), not from
a list of files on this worker, so the stitch can run on any worker. The total frame count is checked twice: against
the frames each segment stored with its result before any decoding, and against the written file.
"""

from __future__ import annotations

from typing import Any

from source.media.stitch import stitch_videos
from source.media.video import probe_video
from source.params.travel import StitchTaskParams
from source.queue import TaskStatus
from source.storage.paths import safe_component
from source.tasks.context import TaskContext, TaskInputError, TaskOutcome, TransientTaskError, parse_params
from source.tasks.travel_support import fetch_input


def parse_stitch(raw: Any) -> StitchTaskParams:
    return parse_params(StitchTaskParams, raw, prefix="")


def handle_travel_stitch(ctx: TaskContext) -> TaskOutcome:
    params = parse_stitch(ctx.task.params)
    parent_id = params.orchestrator_task_id_ref
    segments = sorted(
        (child for child in ctx.queue.children(parent_id) if child.role == "segment"),
        key=lambda child: child.segment_index,
    )
    expected_count = params.num_total_segments_generated
    indices = [child.segment_index for child in segments]
    if indices != list(range(expected_count)):
        raise TaskInputError(
            f"num_total_segments_generated: expected segments 0..{expected_count - 1}, found {indices}"
        )
    not_done = [f"{c.segment_index} ({c.status})" for c in segments if c.status != TaskStatus.COMPLETE]
    if not_done:
        raise TransientTaskError(f"segments not complete: {', '.join(not_done)}")

    overlaps = list(params.frame_overlap_settings_expanded)
    if len(overlaps) != expected_count - 1:
        raise TaskInputError(
            f"frame_overlap_settings_expanded: expected {expected_count - 1} values, got {len(overlaps)}"
        )
    # A backend whose rows keep no result (Reigh's edge API) leaves the check to the written file below.
    stored_frames = [(c.result or {}).get("frames") for c in segments]
    expected_total = params.expected_final_frames
    known = all(isinstance(frames, int) for frames in stored_frames)
    if expected_total is not None and known and sum(stored_frames) - sum(overlaps) != expected_total:
        raise TaskInputError(
            f"expected_final_frames: segments report {stored_frames} frames with overlaps {overlaps}, "
            f"which stitch to {sum(stored_frames) - sum(overlaps)}, not the contracted {expected_total}"
        )

    # One total for the whole task: a step per segment fetched, then a step per segment cross-faded.
    steps = 2 * len(segments)
    videos = []
    for fetched, child in enumerate(segments):
        ctx.report_progress(fetched, steps, f"fetching segment {child.segment_index}")
        videos.append(
            fetch_input(
                ctx,
                child.output_location,
                ctx.work_dir / "segments" / str(child.segment_index),
                field=f"segment {child.segment_index} output",
                kind="video",
                own_output=True,
            )
        )

    fps = params.fps_final_video
    # The run id comes from the payload: it names a file only through safe_component.
    out_path = ctx.work_dir / f"travel_{safe_component(params.orchestrator_run_id)}_final.mp4"
    stitched = stitch_videos(
        videos,
        overlaps,
        out_path,
        fps=fps,
        sharp_amount=params.crossfade_sharp_amt,
        regenerate_anchors=params.regenerate_anchors,
        expected_frames=expected_total,
        progress=lambda done, _total: ctx.report_progress(len(segments) + done, steps, "cross-fading"),
    )
    info = probe_video(stitched.path)
    if expected_total is not None and info.frames != expected_total:
        raise TransientTaskError(f"stitched video has {info.frames} frames, contracted {expected_total}")
    stored = ctx.store_output(stitched.path)
    return TaskOutcome(
        output_location=stored.location,
        result={
            "frames": info.frames,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "segments": [c.id for c in segments],
            "overlaps": overlaps,
            "thumbnail": stored.thumbnail,
        },
    )
