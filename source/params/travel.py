"""The payloads the travel handlers exchange: what the orchestrator receives, and what it writes into the rows of its
segment and stitch children.

The orchestrator resolves the generation knobs ONCE (orchestrator_details plus its phase_config, checked against the
model's plan) into a `GenerationSpec` that every segment row carries, so segments never re-parse the phase_config
(upstream parsed it in three places, §10.26).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from source.params.base import Frames, Integer, Location, Overlap, Resolution, within
from source.params.errors import PayloadError
from source.params.payloads import (
    GENERATION_KNOBS,
    GenerationSpec,
    OrchestratorDetails,
    TravelOrchestratorParams,
    TravelSegmentParams,
    TravelStitchParams,
)
from source.params.resolve import PayloadLevels, payload_layers, plan_from_resolved, resolve_generation, resolve_layers
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
    details: OrchestratorDetails, model: ModelDefinition
) -> tuple[GenerationSpec, list[str]]:
    """Resolve orchestrator_details (its plain generation keys, then its phase_config) into the GenerationSpec every
    segment carries, and check the full plan against the model now, so a bad combination fails the orchestrator
    instead of every segment. Returns the spec and the warnings (num_phases auto-correction, ...).

    Raises PayloadError naming the field (e.g. `orchestrator_details.phase_config.steps_per_phase`)."""
    levels = PayloadLevels(orchestrator=details)
    resolved = resolve_generation(levels, model)
    plan = plan_from_resolved(resolved)  # validates thresholds, multiplier strings, phases against the model
    own = resolve_layers(payload_layers(details, name="orchestrator_details", root="orchestrator_details"))
    values = own.as_params()
    lora_names = [str(name) for name in values.get("activated_loras") or []]
    tokens = str(values.get("loras_multipliers") or "").replace("|", " ").split()
    if len(tokens) > len(lora_names):
        raise PayloadError.at(
            own.source("loras_multipliers") or "orchestrator_details.loras_multipliers",
            f"expected at most {len(lora_names)} multipliers (one per LoRA), got {len(tokens)}",
        )
    tokens += ["1.0"] * (len(lora_names) - len(tokens))
    spec = GenerationSpec(
        **{name: values[name] for name in GENERATION_KNOBS if name in values},
        lora_names=lora_names,
        lora_multipliers=tokens,
        sources={name: entry.source for name, entry in own.items() if name != "model"},
    )
    return spec, list(plan.warnings)
