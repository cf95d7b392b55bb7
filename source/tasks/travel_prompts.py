"""enhance_prompt: the prompt model writes each travel segment's prompt from its start and end keyframes.

It runs inside the orchestrator, before the segments are enqueued, rather than as a task of its own that the segments
depend on: the prompts are then in the segment rows from the moment they exist, so a retried segment regenerates with
exactly the same prompt and nothing runs the model twice, and no segment waits on one more row or reads its prompt back
from another row's output. An orchestrator that runs again after its segments were created (a crash, a retry) finds
them and does not run the model: enqueueing is idempotent and keeps the rows it made.

A segment with a non-empty `enhanced_prompts_expanded[i]` keeps it. A segment whose keyframes cannot be read, or whose
prompt the model fails to write, gets its base prompt (else a fixed default) and a warning naming it; when the model
itself cannot be loaded the whole run goes on with base prompts, unless the worker runs with --no-prompt-fallback. The
orchestrator's result says which segments were not enhanced and why. On Reigh's edge backend the prompts also go to the
app (update-shot-pair-prompts, non-fatal), and the picture the model saw for each segment is kept beside the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from source.params.payloads import OrchestratorDetails
from source.tasks.context import TaskContext, TaskInputError, TransientTaskError
from source.tasks.travel_plan import pick_text
from source.tasks.travel_support import fetch_input
from Wan2GP.prompt_text import DEFAULT_BASE_PROMPT


@dataclass(frozen=True)
class SegmentPrompts:
    """The enhanced prompt of every segment ("" where there is none), and what happened to the ones asked for."""

    enhanced: list[str]
    written: list[int] = field(default_factory=list)  # segments whose prompt the model wrote in this run
    not_enhanced: dict[int, str] = field(default_factory=dict)  # segment -> why it runs with its base prompt

    def summary(self) -> dict[str, Any]:
        return {"written": self.written, "not_enhanced": {str(k): v for k, v in self.not_enhanced.items()}}


def segment_prompts(
    ctx: TaskContext, details: OrchestratorDetails, *, count: int, frames: list[int], fps: float
) -> SegmentPrompts:
    """The enhanced prompts of a run's `count` segments (`frames` each, at `fps`), written by the prompt model
    where the payload asks for it and does not give them."""
    given = [pick_text(details.enhanced_prompts_expanded, i, "").strip() for i in range(count)]
    needed = [i for i in range(count) if not given[i]]
    if not details.enhance_prompt or not needed:
        return SegmentPrompts(enhanced=given)
    if ctx.queue.children(ctx.task.id):
        logger.info("enhance_prompt: this run's segments exist already and keep their prompts; the model is not run")
        return SegmentPrompts(enhanced=given)

    from Wan2GP.prompt_writer import PromptRequest, PromptWriterUnavailable  # torch: only when prompts are written

    images = list(details.input_image_paths_resolved or [])
    debug_dir = ctx.output_dir / "prompt_enhancement" / ctx.task.id
    requests: dict[int, PromptRequest] = {}
    not_enhanced: dict[int, str] = {}
    keyframes: dict[int, Path] = {}
    for index in needed:
        base = _base_prompt(details, index)
        try:
            start = _keyframe(ctx, images, index, keyframes)
            end = _keyframe(ctx, images, index + 1, keyframes) if index + 1 < len(images) else None
        except (TaskInputError, TransientTaskError) as error:
            not_enhanced[index] = f"keyframe not readable: {error}"
            continue
        requests[index] = PromptRequest(
            start_image=start,
            end_image=end,
            base_prompt=base,
            frames=frames[index],
            fps=fps,
            debug_image=debug_dir / f"segment_{index:02d}.jpg",
        )

    written: dict[int, str] = {}
    if requests:
        ctx.report_stage(f"writing {len(requests)} prompts with the prompt model")
        try:
            outcomes = ctx.services.engine().write_prompts(
                list(requests.values()),
                on_prompt=lambda done, total: ctx.report_progress(done, total, "writing prompts"),
            )
        except PromptWriterUnavailable as error:
            if not ctx.settings.prompt_fallback:
                raise TransientTaskError(f"enhance_prompt: the prompt model is not available ({error})") from error
            logger.warning("enhance_prompt: the prompt model is not available ({}); using the base prompts", error)
            outcomes = None
            for index in requests:
                not_enhanced[index] = f"prompt model not available: {error}"
        if outcomes is not None:
            for index, outcome in zip(requests, outcomes, strict=True):
                if outcome.prompt:
                    written[index] = outcome.prompt
                else:
                    not_enhanced[index] = f"prompt model failed: {outcome.error}"

    enhanced = list(given)
    for index in needed:
        if index in written:
            enhanced[index] = written[index]
        else:
            enhanced[index] = _base_prompt(details, index) or DEFAULT_BASE_PROMPT
            logger.warning(
                "enhance_prompt: segment {} keeps its base prompt ({})", index, not_enhanced.get(index, "not written")
            )
    if written:
        logger.info("enhance_prompt: the prompt model wrote the prompts of segments {}", sorted(written))
        _share(ctx, details, [written.get(i, "") for i in range(count)])
    return SegmentPrompts(enhanced=enhanced, written=sorted(written), not_enhanced=dict(sorted(not_enhanced.items())))


def _keyframe(ctx: TaskContext, images: list[str], index: int, fetched: dict[int, Path]) -> Path:
    if index not in fetched:
        field = f"orchestrator_details.input_image_paths_resolved[{index}]"
        fetched[index] = fetch_input(ctx, images[index], ctx.work_dir / f"keyframe_{index}", field=field, kind="image")
    return fetched[index]


def _base_prompt(details: OrchestratorDetails, index: int) -> str:
    return pick_text(details.base_prompts_expanded, index, details.base_prompt).strip()


def _share(ctx: TaskContext, details: OrchestratorDetails, prompts: list[str]) -> None:
    """The app's copy (Reigh: the shot's pair prompts); a failure here never fails the run."""
    if not details.shot_id:
        return
    shared = ctx.queue.share_prompts(ctx.task.id, details.shot_id, prompts)
    logger.info("enhance_prompt: prompts {} with the app", "shared" if shared else "not shared (no app to tell)")
