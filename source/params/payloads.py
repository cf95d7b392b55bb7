"""Typed payloads of the task types (upstream_worker_spec §3, §4, §7).

Known keys are typed; unknown keys are kept (`model_extra`), because Reigh adds fields; JSON null means "not given".
Parse with `source.params.errors.parse_model(Model, data, root=...)` so a bad payload becomes one PayloadError that
names the field path and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from source.params.base import (
    ControlNetWeight,
    FlowShift,
    Fps,
    Frames,
    Guidance,
    Integer,
    Location,
    LoraStrength,
    Number,
    Overlap,
    PayloadModel,
    PhaseIndex,
    PostBrightness,
    PostSaturation,
    Resolution,
    Seed,
    SegmentCount,
    Steps,
    Strength,
    SwitchThreshold,
    TextOrEmpty,
    within,
)
from source.params.errors import Expected
from source.params.phase_config import PhaseConfig, SolverName
from Wan2GP import limits
from Wan2GP.upstream_settings import NOT_IMPLEMENTED_PARAMS

MAX_LORAS = 64  # LoRAs in one generation (real runs use up to a handful)


def _wgp_multiplier_token(value: Any) -> str:
    """One LoRA's WGP multiplier token: a number, "a;b[;c]" per phase, each part a number or a comma list."""
    expected = (
        'a LoRA multiplier: a number, or per-phase values such as "0.75;1.0;0" (each may be a comma list), '
        f"every value {limits.LORA_MULTIPLIER.span}"
    )
    if isinstance(value, bool):
        raise Expected(expected)
    if isinstance(value, int | float):
        if not limits.LORA_MULTIPLIER.contains(value):
            raise Expected(expected)
        return str(value)
    if not isinstance(value, str) or not value.strip() or " " in value.strip() or len(value) > 4096:
        raise Expected(expected)
    for part in value.strip().replace(";", ",").split(","):
        try:
            number = float(part)
        except ValueError:
            raise Expected(expected) from None
        if not limits.LORA_MULTIPLIER.contains(number):
            raise Expected(expected)
    return value.strip()


def _wgp_multiplier_string(value: Any) -> str:
    """`loras_multipliers` as WGP takes it: one whitespace-separated token per LoRA (a list is joined by spaces)."""
    if isinstance(value, list | tuple):
        return " ".join(_wgp_multiplier_token(item) for item in value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _wgp_multiplier_token(value)
    if not isinstance(value, str):
        raise Expected("a multiplier string with one token per LoRA, or a list of them")
    for token in value.replace("|", " ").split():
        _wgp_multiplier_token(token)
    return value


def _guidance_phases(value: int) -> int:
    if value not in (1, 2, 3):
        raise Expected("1, 2 or 3")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise Expected("an integer >= 0")
    return value


MultiplierToken = Annotated[str, BeforeValidator(_wgp_multiplier_token)]
MultiplierString = Annotated[str, BeforeValidator(_wgp_multiplier_string)]
GuidancePhases = Annotated[Integer, AfterValidator(_guidance_phases)]
NonNegativeInt = Annotated[Integer, AfterValidator(_non_negative)]


_REIGH_SENDS = frozenset({"cfg_star_switch", "cfg_zero_step"})


class WgpGenerationFields(PayloadModel):
    """Generation parameters in WGP's names, accepted at every level of a payload (upstream
    extract_orchestrator_parameters copies them from orchestrator_details into segments)."""

    model: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    resolution: Resolution | None = None
    video_length: Frames | None = None
    seed: Seed | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    guidance2_scale: Guidance | None = None
    guidance3_scale: Guidance | None = None
    guidance_phases: GuidancePhases | None = None
    switch_threshold: SwitchThreshold | None = None
    switch_threshold2: SwitchThreshold | None = None
    model_switch_phase: PhaseIndex | None = None
    flow_shift: FlowShift | None = None
    sample_solver: SolverName | None = None
    activated_loras: Annotated[list[Location], Field(max_length=MAX_LORAS)] | None = None
    loras_multipliers: MultiplierString | None = None
    lora_names: Annotated[list[Location], Field(max_length=MAX_LORAS)] | None = None  # Reigh's name for activated_loras
    # Reigh's per-LoRA list form of loras_multipliers
    lora_multipliers: Annotated[list[MultiplierToken], Field(max_length=MAX_LORAS)] | None = None
    additional_loras: Annotated[dict[Location, LoraStrength], Field(max_length=MAX_LORAS)] | None = (
        None  # {url: multiplier}
    )
    video_prompt_type: str | None = None
    control_net_weight: ControlNetWeight | None = None
    control_net_weight2: ControlNetWeight | None = None
    image_start: Location | None = None
    image_end: Location | None = None
    video_guide: Location | None = None
    video_mask: Location | None = None
    phase_config: PhaseConfig | None = None

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "lora_multipliers_by_url": "Reigh's per-URL copy of the phase_config's LoRA strengths (sent as "
            "lora_multipliers objects); the phase_config itself is what runs"
        }
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_not_implemented(cls, data: Any) -> Any:
        # Upstream settings the engine does not implement: asked for explicitly, the task fails naming them rather
        # than running without them. Reigh's app sends CFG-zero*'s two keys (switched off) in every travel payload and
        # our orchestrator copies them onto segment rows: those pass, reported as not used (NOT_USED).
        if isinstance(data, dict):
            refused = sorted(str(key) for key in data if key in NOT_IMPLEMENTED_PARAMS and key not in _REIGH_SENDS)
            if refused:
                raise ValueError(f"{', '.join(refused)}: not implemented by this engine; leave out of the payload")
        return data

    @model_validator(mode="before")
    @classmethod
    def _reigh_multiplier_objects(cls, data: Any) -> Any:
        # Reigh's individual segments send lora_multipliers as [{url, multiplier}] derived from the phase_config.
        multipliers = data.get("lora_multipliers") if isinstance(data, dict) else None
        if isinstance(multipliers, list) and multipliers and all(isinstance(item, dict) for item in multipliers):
            data = {key: value for key, value in data.items() if key != "lora_multipliers"}
            data["lora_multipliers_by_url"] = multipliers
        return data


# Reigh's task-family envelope (resolvers/shared/taskContracts.ts composeTaskFamilyPayload): the app's own contracts.
REIGH_ENVELOPE: Mapping[str, str] = MappingProxyType(
    {
        "contract_version": "the app's payload contract version",
        "task_family": "the app's task family name",
        "orchestration_contract": "the app's routing contract, read back by the app",
        "task_view_contract": "what the app shows in its task list",
        "family_contract": "the app's family contract, read back by the app",
    }
)
# What the app's motion controls leave in a payload once their effect is in the phase_config it sends.
UI_STATE: Mapping[str, str] = MappingProxyType(
    {
        "advanced_mode": "UI state: advanced mode arrives as a phase_config",
        "motion_mode": "UI state: the motion preset arrives as a phase_config",
        "selected_phase_preset_id": "UI state: the preset arrives as a phase_config",
        "amount_of_motion": "UI state: the app folds the amount of motion into the phase_config's LoRA strengths",
    }
)


# The knobs a GenerationSpec carries (engine names); prompts, frames, seed and inputs are per segment.
GENERATION_KNOBS = (
    "num_inference_steps",
    "guidance_scale",
    "guidance2_scale",
    "guidance3_scale",
    "guidance_phases",
    "switch_threshold",
    "switch_threshold2",
    "model_switch_phase",
    "flow_shift",
    "sample_solver",
    "control_net_weight",
)


class GenerationSpec(PayloadModel):
    """Generation knobs given by the payload (None: the engine uses the model definition's setting), the LoRAs
    (URLs or files, one multiplier token each) and where each value came from."""

    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    guidance2_scale: Guidance | None = None
    guidance3_scale: Guidance | None = None
    guidance_phases: GuidancePhases | None = None
    switch_threshold: SwitchThreshold | None = None
    switch_threshold2: SwitchThreshold | None = None
    model_switch_phase: PhaseIndex | None = None
    flow_shift: FlowShift | None = None
    sample_solver: SolverName | None = None
    control_net_weight: ControlNetWeight | None = None
    lora_names: Annotated[list[Location], Field(max_length=MAX_LORAS)] = Field(default_factory=list)
    lora_multipliers: Annotated[list[MultiplierToken], Field(max_length=MAX_LORAS)] = Field(default_factory=list)
    sources: dict[str, str] = Field(default_factory=dict)

    def wgp_params(self) -> dict[str, Any]:
        """The knobs that were given, in WGP names (LoRAs excluded: they must be fetched first)."""
        return {name: getattr(self, name) for name in GENERATION_KNOBS if getattr(self, name) is not None}


class VaceImageRef(PayloadModel):
    segment_idx_for_naming: Integer | None = None
    original_path: Location | None = None
    strength_to_apply: Strength | None = None
    type: str | None = None


class PathLora(PayloadModel):
    """A LoRA as the app lists it (its PathLoraConfig `{path, strength}`): a pair's `loras_per_segment_expanded[i][j]`,
    an edit tool's `loras[j]`."""

    path: Location
    strength: LoraStrength = 1.0


class PairMotionSettings(PayloadModel):
    """`motion_settings_expanded[i]`: what the app's pair settings form changed for one pair."""

    # UI state: the app folds the amount of motion into the phase_config's LoRA strengths before it sends them.
    amount_of_motion: Number | None = None
    motion_mode: str | None = None
    # Structure guidance of this pair (used when the run has travel_guidance).
    structure_motion_strength: ControlNetWeight | None = None
    structure_treatment: Literal["adjust", "clip"] | None = None
    structure_canny_intensity: Number | None = None
    structure_depth_contrast: Number | None = None
    uni3c_end_percent: Number | None = None

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "amount_of_motion": UI_STATE["amount_of_motion"],
            "motion_mode": UI_STATE["motion_mode"],
            "structure_canny_intensity": "applies to canny guidance, which this worker does not run",
            "structure_depth_contrast": "applies to depth guidance, which this worker does not run",
            "uni3c_end_percent": "applies to uni3c guidance, which this worker does not run",
        }
    )


# The structure-guidance kinds and modes this worker runs (travel_guidance.kind / .mode).
SUPPORTED_GUIDANCE = {"none": (), "vace": ("raw",)}


class GuidanceVideo(PayloadModel):
    """One structure video laid on the output timeline: frames [start_frame, end_frame) of the run are guided by
    source frames [source_start_frame, source_end_frame); `adjust` resamples the source to fit, `clip` maps 1:1."""

    path: Location
    start_frame: Annotated[Integer, within(limits.TIMELINE_FRAME)] = 0
    end_frame: Annotated[Integer, within(limits.STITCHED_FRAMES)] | None = None
    treatment: Literal["adjust", "clip"] = "adjust"
    source_start_frame: Annotated[Integer, within(limits.TIMELINE_FRAME)] = 0
    source_end_frame: Annotated[Integer, within(limits.STITCHED_FRAMES)] | None = None

    @field_validator("end_frame", "source_end_frame")
    @classmethod
    def _after_start(cls, value: int | None, info: ValidationInfo) -> int | None:
        start_name = "start_frame" if info.field_name == "end_frame" else "source_start_frame"
        start = info.data.get(start_name)
        if value is not None and isinstance(start, int) and value <= start:
            raise Expected(f"a frame after {start_name} ({start}; the range is half-open)")
        return value


def _supported_guidance() -> str:
    return "; ".join(
        f"kind {kind!r}" + (f" with mode {' or '.join(repr(m) for m in modes)}" if modes else "")
        for kind, modes in SUPPORTED_GUIDANCE.items()
    )


class TravelGuidance(PayloadModel):
    """`travel_guidance`: structure guidance for a travel run (the app's TravelGuidance union). Only the kinds and
    modes in SUPPORTED_GUIDANCE run here; any other fails the task at once, naming what is supported."""

    kind: str
    mode: str | None = None
    videos: Annotated[list[GuidanceVideo], Field(max_length=limits.MAX_SEGMENTS)] = Field(
        default_factory=list, validate_default=True
    )
    strength: ControlNetWeight | None = None  # VACE's context scale over the guided frames (default 1)
    canny_intensity: Number | None = None
    depth_contrast: Number | None = None

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "canny_intensity": "applies to canny guidance, which this worker does not run",
            "depth_contrast": "applies to depth guidance, which this worker does not run",
        }
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in SUPPORTED_GUIDANCE:
            raise Expected(f"a guidance kind this worker runs ({_supported_guidance()})")
        return value

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str | None, info: ValidationInfo) -> str | None:
        modes = SUPPORTED_GUIDANCE.get(info.data.get("kind", ""), ())
        if modes and value not in modes:
            raise Expected(
                f"a mode whose preprocessing this worker ships ({_supported_guidance()}); "
                "flow, canny and depth need preprocessors that are not installed"
            )
        return value

    @field_validator("videos")
    @classmethod
    def _has_videos(cls, value: list[GuidanceVideo], info: ValidationInfo) -> list[GuidanceVideo]:
        if info.data.get("kind") not in (None, "none") and not value:
            raise Expected("at least one guidance video {path, start_frame, end_frame, ...}")
        return value

    @property
    def active(self) -> bool:
        return self.kind != "none"


class ContinuationConfig(PayloadModel):
    """`continuation_config`: how consecutive segments continue each other. Only `guide_overlap_masked` (VACE: the
    previous segment's tail frames are fixed in the next one's guide) exists in this worker."""

    strategy: Literal["guide_overlap_masked"]
    overlap_frames: Overlap | None = None


class OrchestratorDetails(WgpGenerationFields):
    """`params.orchestrator_details` of a travel_orchestrator task (every field of upstream_worker_spec §3.1)."""

    # Segments and frames (num_new_segments_to_generate defaults to the length of segment_frames_expanded)
    num_new_segments_to_generate: SegmentCount | None = None
    segment_frames_expanded: Annotated[list[Frames], Field(max_length=limits.MAX_SEGMENTS)]
    # One overlap per join (an int means the same for every join); required when there are 2+ segments.
    frame_overlap_expanded: Annotated[list[Overlap], Field(max_length=limits.MAX_SEGMENTS)] = Field(
        default_factory=list, validate_default=True
    )
    input_image_paths_resolved: Annotated[list[Location], Field(max_length=limits.MAX_SEGMENTS + 1)] = Field(
        default_factory=list
    )
    # Prompts
    base_prompts_expanded: list[TextOrEmpty] = Field(default_factory=list)
    negative_prompts_expanded: list[TextOrEmpty] = Field(default_factory=list)
    enhanced_prompts_expanded: list[TextOrEmpty] = Field(default_factory=list)
    base_prompt: str = ""
    text_before_prompts: str = ""
    text_after_prompts: str = ""
    enhance_prompt: bool = False
    vlm_device: str = "cuda"
    shot_id: str | None = None
    # Model and output
    model_name: str
    model_type: Literal["vace", "i2v"] | None = None  # upstream's default was "vace"; the model's architecture decides
    parsed_resolution_wh: Resolution | None = None  # the model's default resolution when absent
    seed_base: Seed = 12345  # the same seed for every segment (upstream commit 69527a5)
    fps_helpers: Fps = 16
    fps_final_video: Fps | None = None  # the stitched video's fps (default fps_helpers)
    steps: Steps | None = None  # Reigh's basic mode: num_inference_steps unless that or a phase_config says otherwise
    chain_segments: bool = True
    independent_segments: bool | None = None  # Reigh's spelling: the inverse of chain_segments (which wins if both)
    continuation_config: ContinuationConfig | None = None  # its overlap_frames is informational (frame_overlap rules)
    # Per-pair overrides (Reigh's pair_* inputs, sliced to the segment count; an entry may be null = no override).
    # Precedence for segment i: individual_segment_params > these > orchestrator_details (upstream's order).
    phase_configs_expanded: Annotated[list[PhaseConfig | None], Field(max_length=limits.MAX_SEGMENTS)] | None = None
    loras_per_segment_expanded: (
        Annotated[
            list[Annotated[list[PathLora], Field(max_length=MAX_LORAS)] | None], Field(max_length=limits.MAX_SEGMENTS)
        ]
        | None
    ) = None
    motion_settings_expanded: (
        Annotated[list[PairMotionSettings | None], Field(max_length=limits.MAX_SEGMENTS)] | None
    ) = None
    travel_guidance: TravelGuidance | None = None
    continue_from_video_resolved_path: Location | None = None
    # Stable Video Infinity
    use_svi: bool = False
    svi_strength: Strength | None = None
    svi_strength_1: Strength | None = None
    svi_strength_2: Strength | None = None
    svi_predecessor_video_url: Location | None = None
    # Run bookkeeping
    run_id: str | None = None
    main_output_dir_for_run: str | None = None
    parent_generation_id: str | None = None
    generation_name: str | None = None  # the app's name for the result; copied onto the segment rows for the app
    # The app's ids of each pair (segment i -> pair_shot_generation_ids[i]), written onto the segment rows
    pair_shot_generation_ids: Annotated[list[str | None], Field(max_length=limits.MAX_SEGMENTS)] | None = None
    # Post-processing of segments and of the overlap frames in the guide
    after_first_post_generation_saturation: PostSaturation | None = None
    after_first_post_generation_brightness: PostBrightness | None = None
    subsequent_starting_strength_adjustment: Strength = 0.0
    desaturate_subsequent_starting_frames: Strength = 0.0
    adjust_brightness_subsequent_starting_frames: Strength = 0.0
    # Stitch
    crossfade_sharp_amt: Strength = 0.3
    regenerate_anchors: bool = False
    upscale_factor: Strength = 0.0
    upscale_model_name: str | None = None
    vace_image_refs_to_prepare_by_worker: list[VaceImageRef] = Field(default_factory=list)
    # Structure / motion guidance (new form and legacy keys); uni3c_* keys are kept as extras
    structure_guidance: dict[str, Any] | None = None
    structure_video_path: Location | None = None
    structure_videos: list[dict[str, Any]] | None = None
    structure_type: str | None = None
    structure_video_type: str | None = None
    structure_video_treatment: Literal["adjust", "clip"] | None = None
    structure_video_motion_strength: Strength | None = None
    structure_canny_intensity: Strength | None = None
    structure_depth_contrast: Strength | None = None
    # Debugging and pass-through values
    debug_mode_enabled: bool = False
    skip_cleanup_enabled: bool = False
    cfg_star_switch: Integer = 0
    cfg_zero_step: Integer = -1
    params_json_str_override: str | None = None
    original_common_args: dict[str, Any] | None = None
    original_task_args: dict[str, Any] | None = None
    poll_interval: Number | None = None
    poll_timeout: Number | None = None
    poll_timeout_upscale: Number | None = None
    # Seen in payloads, ignored by the worker (upstream_worker_spec §3.1)
    advanced_mode: bool | None = None
    generation_mode: str | None = None
    motion_mode: str | None = None
    dimension_source: str | None = None
    selected_phase_preset_id: str | None = None
    input_image_generation_ids: list[Any] | None = None  # copied onto the segment rows (complete_task reads them)
    show_input_images: bool | None = None
    tool_type: str | None = None
    amount_of_motion: Number | None = None
    openai_api_key: str | None = None  # secret: redacted wherever params are shown

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **WgpGenerationFields.NOT_USED,
            "vlm_device": "the prompt model runs on the engine's device (--device)",
            "continue_from_video_resolved_path": "continuing an earlier video is not implemented",
            "svi_strength": "Stable Video Infinity is not implemented (use_svi must be false)",
            "svi_strength_1": "Stable Video Infinity is not implemented (use_svi must be false)",
            "svi_strength_2": "Stable Video Infinity is not implemented (use_svi must be false)",
            "svi_predecessor_video_url": "Stable Video Infinity is not implemented (use_svi must be false)",
            "main_output_dir_for_run": "outputs go to the worker's storage, never to a payload path",
            "upscale_factor": "the stitch does not upscale",
            "upscale_model_name": "the stitch does not upscale",
            "vace_image_refs_to_prepare_by_worker": "travel segments take no VACE reference images",
            "structure_type": "a legacy structure-guidance key: travel_guidance is what this worker reads",
            "structure_video_type": "a legacy structure-guidance key: travel_guidance is what this worker reads",
            "structure_video_treatment": "a legacy structure-guidance key: travel_guidance is what this worker reads",
            "structure_video_motion_strength": "a legacy structure-guidance key: travel_guidance is what this worker reads",
            "structure_canny_intensity": "a legacy structure-guidance key: travel_guidance is what this worker reads",
            "structure_depth_contrast": "a legacy structure-guidance key: travel_guidance is what this worker reads",
            "debug_mode_enabled": "debug output is the worker's --log-level, not a payload switch",
            "skip_cleanup_enabled": "scratch files are always removed",
            "cfg_star_switch": "CFG-zero* is not implemented",
            "cfg_zero_step": "CFG-zero* is not implemented",
            "params_json_str_override": "raw parameter overrides are refused by design",
            "original_common_args": "upstream's CLI bookkeeping",
            "original_task_args": "upstream's CLI bookkeeping",
            "poll_interval": "segments and stitch are scheduled by the queue, not polled",
            "poll_timeout": "segments and stitch are scheduled by the queue, not polled",
            "poll_timeout_upscale": "segments and stitch are scheduled by the queue, not polled",
            "advanced_mode": UI_STATE["advanced_mode"],
            "generation_mode": "UI state (batch / timeline / by-pair)",
            "motion_mode": UI_STATE["motion_mode"],
            "dimension_source": "UI state: the resolution arrives as parsed_resolution_wh",
            "selected_phase_preset_id": UI_STATE["selected_phase_preset_id"],
            "show_input_images": "no keyframe banner is drawn on outputs",
            "tool_type": "the app's tool name",
            "amount_of_motion": UI_STATE["amount_of_motion"],
            "openai_api_key": "no remote prompt enhancer is called (the value is redacted everywhere)",
            "continuation_config": "its strategy is checked (guide_overlap_masked only); overlaps come from "
            "frame_overlap_expanded",
            # Reigh's task-family envelope (composeTaskFamilyPayload): the app's own contracts, read back by the app.
            "orchestrator_details": "a copy of these same keys the app nests for itself",
            **REIGH_ENVELOPE,
            "generation_source": "the app's name for where the run came from",
            "orchestrator_task_id": "the row's own id is used",
            "random_seed": "the app resolved the seed already (seed_base)",
        }
    )

    @field_validator("use_svi")
    @classmethod
    def _no_svi(cls, value: bool) -> bool:
        if value:
            raise Expected("false: Stable Video Infinity chaining is not implemented in this worker")
        return value

    @field_validator("structure_guidance", "structure_video_path", "structure_videos")
    @classmethod
    def _legacy_guidance(cls, value: Any) -> Any:
        if value:
            raise Expected(
                'nothing: legacy structure guidance is not read; send travel_guidance {"kind": "vace", "mode": "raw", '
                '"videos": [{"path": ...}]} instead'
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _legacy_forms(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # A single overlap applies to every join.
        overlap, count = data.get("frame_overlap_expanded"), data.get("num_new_segments_to_generate")
        if count is None and isinstance(data.get("segment_frames_expanded"), list):
            count = len(data["segment_frames_expanded"])
        if isinstance(overlap, int) and not isinstance(overlap, bool) and isinstance(count, int):
            data["frame_overlap_expanded"] = [overlap] * max(count - 1, 0)
        # Legacy `independent_segments` is the inverse of chain_segments.
        if "chain_segments" not in data and isinstance(data.get("independent_segments"), bool):
            data["chain_segments"] = not data["independent_segments"]
        return data

    @field_validator(
        "segment_frames_expanded", "base_prompts_expanded", "negative_prompts_expanded", "frame_overlap_expanded"
    )
    @classmethod
    def _one_per_segment(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        count = info.data.get("num_new_segments_to_generate")
        if count is None and info.field_name != "segment_frames_expanded":
            frames = info.data.get("segment_frames_expanded")
            count = len(frames) if isinstance(frames, list) else None
        if not isinstance(count, int) or count <= 0:
            return value  # nothing to generate (the task succeeds vacuously) or already reported
        needed = count - 1 if info.field_name == "frame_overlap_expanded" else count
        optional = info.field_name in ("base_prompts_expanded", "negative_prompts_expanded")
        if len(value) < needed and not (optional and not value):
            what = "joins" if info.field_name == "frame_overlap_expanded" else "segments"
            raise Expected(f"at least {needed} entries (one per {what[:-1]}; {count} segments)")
        return value

    @property
    def segment_count(self) -> int:
        return (
            self.num_new_segments_to_generate
            if self.num_new_segments_to_generate is not None
            else len(self.segment_frames_expanded)
        )


class TravelOrchestratorParams(WgpGenerationFields):
    """`params` of a travel_orchestrator task: orchestrator_details plus top-level overrides."""

    orchestrator_details: OrchestratorDetails
    task_id: str | None = None
    orchestrator_task_id: str | None = None
    project_id: str | None = None
    run_id: str | None = None
    parent_generation_id: str | None = None  # carried to the segment and stitch rows (orchestrator_details' wins)

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **WgpGenerationFields.NOT_USED,
            "task_id": "the row's own id is used",
            "orchestrator_task_id": "the row's own id is used",
            "project_id": "the row's project_id column is used",
            "tool_type": "the app's tool name",
            "generation_name": "the app's variant name, read back by the app from the orchestrator row",
        }
    )


class IndividualSegmentParams(WgpGenerationFields):
    """`individual_segment_params`: per-segment overrides from the UI, highest precedence (upstream §4.1, §4.3)."""

    start_image_url: Location | None = None
    end_image_url: Location | None = None
    input_image_paths_resolved: Annotated[list[Location], Field(max_length=limits.MAX_SEGMENTS + 1)] | None = None
    num_frames: Frames | None = None
    seed_to_use: Seed | None = None
    base_prompt: str | None = None
    enhanced_prompt: str | None = None  # wins over base_prompt when not empty (as in travel)
    frame_overlap_from_previous: Overlap | None = None
    frame_overlap_with_next: Overlap | None = None
    after_first_post_generation_saturation: PostSaturation | None = None
    after_first_post_generation_brightness: PostBrightness | None = None
    pair_shot_generation_id: str | None = None

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **WgpGenerationFields.NOT_USED,
            "random_seed": "the app resolved the seed already (seed_to_use)",
            "amount_of_motion": UI_STATE["amount_of_motion"],
            "motion_mode": UI_STATE["motion_mode"],
            "advanced_mode": UI_STATE["advanced_mode"],
            "selected_phase_preset_id": UI_STATE["selected_phase_preset_id"],
            "continuation_config": "a segment run on its own continues nothing",
            "frame_overlap_from_previous": "overlaps come from the travel plan; a segment run on its own has none",
            "frame_overlap_with_next": "overlaps come from the travel plan; a segment run on its own has none",
            "start_image_generation_id": "the app's id of the start image, read back by the app",
            "end_image_generation_id": "the app's id of the end image, read back by the app",
            "start_image_variant_id": "the app's id of the start image variant, read back by the app",
            "end_image_variant_id": "the app's id of the end image variant, read back by the app",
        }
    )


class TravelSegmentParams(WgpGenerationFields):
    """`params` of a travel_segment (and individual_travel_segment) task (upstream_worker_spec §3.3)."""

    # References
    orchestrator_task_id_ref: str | None = None
    orchestrator_run_id: str | None = None
    project_id: str | None = None
    parent_generation_id: str | None = None
    segment_index: Annotated[Integer, within(limits.SEGMENT_INDEX)] = 0
    is_first_segment: bool | None = None
    is_last_segment: bool | None = None
    current_run_base_output_dir: str | None = None
    # Prompts and frames
    base_prompt: str | None = None
    segment_frames_target: Frames | None = None
    frame_overlap_from_previous: Overlap = 0
    frame_overlap_with_next: Overlap = 0
    vace_image_refs_to_prepare_by_worker: list[VaceImageRef] = Field(default_factory=list)
    parsed_resolution_wh: Resolution | None = None
    model_name: str | None = None
    # Generation
    seed_to_use: Seed | None = None
    cfg_star_switch: Integer = 0
    cfg_zero_step: Integer = -1
    params_json_str_override: str | None = None
    fps_helpers: Fps = 16
    # Guide and post-processing adjustments
    subsequent_starting_strength_adjustment: Strength = 0.0
    desaturate_subsequent_starting_frames: Strength = 0.0
    adjust_brightness_subsequent_starting_frames: Strength = 0.0
    after_first_post_generation_saturation: PostSaturation | None = None
    after_first_post_generation_brightness: PostBrightness | None = None
    # Flags
    segment_image_download_dir: str | None = None
    debug_mode_enabled: bool = False
    skip_cleanup_enabled: bool = False
    continue_from_video_resolved_path_for_guide: Location | None = None
    consolidated_end_anchor_idx: Integer | None = None
    consolidated_keyframe_positions: list[Integer] | None = None
    use_svi: bool = False
    svi2pro: bool | None = None
    structure_guidance: dict[str, Any] | None = None
    # Nested payloads
    orchestrator_details: OrchestratorDetails | None = None
    full_orchestrator_payload: OrchestratorDetails | None = None  # legacy name of orchestrator_details
    individual_segment_params: IndividualSegmentParams | None = None

    @property
    def orchestrator(self) -> OrchestratorDetails | None:
        return self.orchestrator_details or self.full_orchestrator_payload


class IndividualTravelSegmentParams(WgpGenerationFields):
    """`params` of an individual_travel_segment row as Reigh's app writes it (resolvers/individualTravelSegment.ts):
    one segment regenerated on its own. Three levels, lowest first: `orchestrator_details` (the app's defaults for the
    segment: solver, guidance, steps, LoRAs), the top level, `individual_segment_params` (what the user set)."""

    orchestrator_details: OrchestratorOverrides | None = None
    individual_segment_params: IndividualSegmentParams | None = None
    model_name: str | None = None
    model_type: Literal["vace", "i2v"] | None = None
    parsed_resolution_wh: Resolution | None = None
    segment_index: Annotated[Integer, within(limits.SEGMENT_INDEX)] = 0
    is_first_segment: bool | None = None
    is_last_segment: bool | None = None
    start_image_url: Location | None = None
    end_image_url: Location | None = None
    input_image_paths_resolved: Annotated[list[Location], Field(max_length=2)] | None = None
    num_frames: Frames | None = None
    seed_to_use: Seed | None = None
    base_prompt: str | None = None
    enhanced_prompt: str | None = None
    fps_helpers: Fps = 16
    travel_guidance: TravelGuidance | None = None
    after_first_post_generation_saturation: PostSaturation | None = None
    after_first_post_generation_brightness: PostBrightness | None = None
    # The app's links, read back by complete_task from this same row (so they stay where the app put them).
    project_id: str | None = None
    shot_id: str | None = None
    parent_generation_id: str | None = None
    child_generation_id: str | None = None
    pair_shot_generation_id: str | None = None
    make_primary_variant: bool | None = None
    generation_name: str | None = None

    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **IndividualSegmentParams.NOT_USED,
            "frame_overlap_from_previous": "a segment run on its own carries no frames from a predecessor",
            "cfg_star_switch": "CFG-zero* is not implemented",
            "cfg_zero_step": "CFG-zero* is not implemented",
            "chain_segments": "a segment run on its own continues nothing",
            "independent_segments": "a segment run on its own continues nothing",
            "seed_base": "seed_to_use is the segment's seed",
            "generation_source": "the app's name for where the task came from",
            **REIGH_ENVELOPE,
            "start_image_generation_id": "the app's id of the start image, read back by the app",
            "end_image_generation_id": "the app's id of the end image, read back by the app",
        }
    )


class TravelStitchParams(PayloadModel):
    """`params` of a travel_stitch task (upstream_worker_spec §3.4)."""

    orchestrator_task_id_ref: str | None = None
    orchestrator_run_id: str | None = None
    project_id: str | None = None
    parent_generation_id: str | None = None
    num_total_segments_generated: SegmentCount
    current_run_base_output_dir: str | None = None
    frame_overlap_settings_expanded: Annotated[list[Overlap], Field(max_length=limits.MAX_SEGMENTS)] = Field(
        default_factory=list
    )
    crossfade_sharp_amt: Strength = 0.3
    parsed_resolution_wh: Resolution | None = None
    fps_final_video: Fps = 16
    upscale_factor: Strength = 0.0
    upscale_model_name: str | None = None
    seed_for_upscale: Seed | None = None
    debug_mode_enabled: bool = False
    skip_cleanup_enabled: bool = False
    initial_continued_video_path: Location | None = None
    final_stitched_output_path: str | None = None
    poll_interval_from_orchestrator: Number = 15
    poll_timeout_from_orchestrator: Number = 1800
    orchestrator_details: OrchestratorDetails | None = None
    use_svi: bool = False

    @field_validator("frame_overlap_settings_expanded")
    @classmethod
    def _one_per_join(cls, value: list[int], info: ValidationInfo) -> list[int]:
        count = info.data.get("num_total_segments_generated")
        if isinstance(count, int) and count > 1 and len(value) < count - 1:
            raise Expected(f"at least {count - 1} overlaps (one per join; num_total_segments_generated={count})")
        return value


class GenerationTaskParams(WgpGenerationFields):
    """`params` of a plain generation task (t2v, i2v, vace, generate_video ...): WGP's parameter names."""

    model_name: str | None = None  # Reigh's name for `model` (copied into `model` when that is absent)
    steps: Steps | None = None  # legacy: num_inference_steps when that is not given (upstream §7)
    image_refs: Annotated[list[Location], Field(max_length=MAX_LORAS)] | None = None
    output_filename: str | None = None
    task_id: str | None = None
    project_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _model_name_is_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model") is None and isinstance(data.get("model_name"), str):
            data = {**data, "model": data["model_name"]}
        return data

    @property
    def model_id(self) -> str | None:
        return self.model or self.model_name


# ---------------------------------------------------------------------------------------------------------------------
# Lenient views for explaining a plan: only what affects generation is typed, nothing is required, so a payload
# fragment (e.g. a phase_config nested under orchestrator_details) can be explained before it is complete.


class OrchestratorOverrides(WgpGenerationFields):
    model_name: str | None = None
    model_type: Literal["vace", "i2v"] | None = None
    parsed_resolution_wh: Resolution | None = None
    seed_base: Seed | None = None
    base_prompt: str | None = None
    steps: Steps | None = None
    phase_configs_expanded: Annotated[list[PhaseConfig | None], Field(max_length=limits.MAX_SEGMENTS)] | None = None
    loras_per_segment_expanded: (
        Annotated[
            list[Annotated[list[PathLora], Field(max_length=MAX_LORAS)] | None], Field(max_length=limits.MAX_SEGMENTS)
        ]
        | None
    ) = None

    # The keys Reigh's individual segments repeat here from their top level (the top level is what is read).
    NOT_USED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            **WgpGenerationFields.NOT_USED,
            **{
                key: "a copy of the top-level key, which is what is read"
                for key in (
                    "generation_source",
                    "input_image_paths_resolved",
                    "parent_generation_id",
                    "fps_helpers",
                    "independent_segments",
                    "chain_segments",
                    "continuation_config",
                    "travel_guidance",
                    "advanced_mode",
                    "motion_mode",
                    "amount_of_motion",
                )
            },
        }
    )


class GenerationOverrides(WgpGenerationFields):
    """Any task's params seen as generation overrides: top-level WGP keys, plus the nested levels."""

    model_name: str | None = None
    parsed_resolution_wh: Resolution | None = None
    seed_to_use: Seed | None = None
    segment_frames_target: Frames | None = None
    base_prompt: str | None = None
    orchestrator_details: OrchestratorOverrides | None = None
    full_orchestrator_payload: OrchestratorOverrides | None = None
    individual_segment_params: IndividualSegmentParams | None = None
    generation: GenerationSpec | None = None  # written into segment rows by our orchestrator
