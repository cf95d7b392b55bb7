"""The payloads the travel handlers exchange: what the orchestrator receives, and what it writes into the rows of its
segment and stitch children.

The orchestrator resolves the generation knobs ONCE (orchestrator_details plus its phase_config, checked against the
model's plan) into a `GenerationSpec` that every segment row carries, so segments never re-parse the phase_config
(upstream parsed it in three places, §10.26).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from source.params.base import Frames, Integer, Location, Overlap, Resolution, within
from source.params.payloads import (
    GenerationSpec,
    OrchestratorDetails,
    TravelGuidance,
    TravelOrchestratorParams,
    TravelSegmentParams,
    TravelStitchParams,
)
from source.params.resolve import PayloadLevels, checked_generation
from Wan2GP import limits
from Wan2GP.catalog import ModelDefinition

__all__ = [
    "GenerationSpec",
    "SegmentTaskParams",
    "StitchTaskParams",
    "TravelOrchestratorParams",
    "generation_params_from_details",
]


class SegmentTaskParams(TravelSegmentParams):
    """`params` of a travel_segment row written by our orchestrator (upstream fields are accepted too)."""

    model_name: str
    travel_mode: Literal["vace", "i2v"] | None = None
    parsed_resolution_wh: Resolution
    segment_frames_target: Frames
    start_image_url: Location | None = None
    end_image_url: Location | None = None
    base_prompt: str = ""
    negative_prompt: str = ""
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    # The app's links, so it can attach the segment's video to its shot and pair (Reigh reads them off the row).
    shot_id: str | None = None
    pair_shot_generation_id: str | None = None
    # Structure guidance as this segment applies it (the pair's strength and treatment already folded in), and
    # where the segment starts on the run's timeline, which the guidance videos are laid on.
    travel_guidance: TravelGuidance | None = None
    timeline_start: Annotated[Integer, within(limits.TIMELINE_FRAME)] = 0
    # The keys of the run's orchestrator_details that Reigh's complete_task reads off a segment row (per-segment
    # prompts, frames, keyframe ids); not a generation level: `generation` holds what the segment runs with.
    orchestrator_details: dict[str, Any] | None = None  # type: ignore[assignment]

    @property
    def orchestrator(self) -> None:  # type: ignore[override]
        return None


class StitchTaskParams(TravelStitchParams):
    """`params` of a travel_stitch row written by our orchestrator."""

    orchestrator_task_id_ref: str
    orchestrator_run_id: str
    segment_frames: Annotated[list[Frames], Field(max_length=limits.MAX_SEGMENTS)] | None = None  # 4n+1 each
    # Σ segment_frames − Σ overlaps, asserted by the stitch
    expected_final_frames: Annotated[Integer, within(limits.STITCHED_FRAMES)] | None = None
    regenerate_anchors: bool = False
    frame_overlap_settings_expanded: Annotated[list[Overlap], Field(max_length=limits.MAX_SEGMENTS)] = Field(
        default_factory=list
    )


def generation_params_from_details(
    details: OrchestratorDetails, model: ModelDefinition, segment_index: int = 0
) -> tuple[GenerationSpec, list[str]]:
    """Resolve what segment `segment_index` generates with: orchestrator_details (its plain generation keys, then its
    phase_config), then that pair's overrides (phase_configs_expanded, loras_per_segment_expanded). The full plan is
    checked against the model now, so a bad combination fails the orchestrator instead of the segment. Returns the
    spec the segment row carries (every value with the field it came from) and the plan's warnings.

    Raises PayloadError naming the field (e.g. `orchestrator_details.phase_configs_expanded[1].steps_per_phase`)."""
    levels = PayloadLevels(orchestrator=details, pair_index=segment_index)
    spec, _, plan = checked_generation(levels, model)
    return spec, list(plan.warnings)
