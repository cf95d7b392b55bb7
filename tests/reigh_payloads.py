"""Task rows' `params` exactly as Reigh's create-task resolvers build them (banodoco/reigh-app at 3a6fd3d8).

This module stands for the app: it imports nothing from the worker (`source`, `Wan2GP`). Each builder transcribes
one resolver in `supabase/functions/create-task/resolvers/` (paths below are relative to that folder unless they
start with `src/`), with the resolver's own defaults, and returns what lands in `tasks.params` after JSON
serialisation (keys whose TS value is `undefined` are absent; the nested copies are real copies).

Inputs a builder does not get are treated as absent from the resolver's `input`, except where `frontend_defaults`
is True (the default): then the values the app's frontend always sends (and which differ from the resolver's
fallbacks) are filled in, with the frontend file each comes from cited next to it. Seeds are explicit so tests
are deterministic (the app would draw a random one when `random_seed` is set). Ids (`run_id`, orchestrator task
ids) are generated the way the app generates them unless given.

Field-by-field meaning: docs/reigh_payloads.md.
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

# resolvers/shared/taskContracts.ts L1-4
ORCHESTRATION_CONTRACT_VERSION = 3
TASK_VIEW_CONTRACT_VERSION = 1
TASK_PAYLOAD_CONTRACT_VERSION = 1
TASK_FAMILY_CONTRACT_VERSION = 1

# resolvers/shared/seed.ts L10
MAX_SEED_32_BIT = 0x7FFFFFFF

# resolvers/shared/resolution.ts L1-14
DEFAULT_ASPECT_RATIO = "1:1"
ASPECT_RATIO_TO_RESOLUTION = {
    "21:9": "1024x438",
    "16:9": "902x508",
    "4:3": "768x576",
    "3:2": "768x512",
    "1:1": "670x670",
    "2:3": "512x768",
    "3:4": "576x768",
    "9:16": "508x902",
    "9:21": "438x1024",
    "Square": "670x670",
}

# resolvers/travelBetweenImages.ts L70-82 (DEFAULT_TRAVEL_BETWEEN_IMAGES_VALUES)
TRAVEL_DEFAULTS: dict[str, Any] = {
    "model_name": "wan_2_2_i2v_lightning_baseline_2_2_2",
    "seed": 789,
    "steps": 20,
    "after_first_post_generation_saturation": 1,
    "after_first_post_generation_brightness": 0,
    "debug": False,
    "enhance_prompt": False,
    "show_input_images": True,
    "generation_mode": "batch",
    "dimension_source": "project",
    "amount_of_motion": 0.5,
}

# resolvers/joinClips.ts L113-127 (TASK_DEFAULTS)
JOIN_DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "gap_frame_count": 23,
    "context_frame_count": 15,
    "replace_mode": True,
    "enhance_prompt": False,
    "model": "wan_2_2_vace_lightning_baseline_2_2_2",
    "num_inference_steps": 6,
    "guidance_scale": 3.0,
    "seed": -1,
    "negative_prompt": "",
    "priority": 0,
    "motion_mode": "basic",
    "selected_phase_preset_id": "__builtin_vace_default__",
}

# Model names the travel frontend picks (src/tools/.../services/generateVideo/modelPhase.ts L15, L34-42):
# basic mode and advanced 3-phase -> 2_2_2; advanced 2-phase -> 3_3.
WAN_I2V_BASIC_MODEL = "wan_2_2_i2v_lightning_baseline_2_2_2"
WAN_I2V_ADVANCED_2PHASE_MODEL = "wan_2_2_i2v_lightning_baseline_3_3"

_LIGHTX2V_I2V_HIGH = (
    "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/loras/"
    "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
)
_LIGHTX2V_I2V_LOW = (
    "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/loras/"
    "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"
)
_LIGHTNING_T2V_HIGH = (
    "https://huggingface.co/lightx2v/Wan2.2-Lightning/resolve/main/Wan2.2-T2V-A14B-4steps-lora-250928/"
    "high_noise_model.safetensors"
)
_LIGHTNING_T2V_LOW = (
    "https://huggingface.co/lightx2v/Wan2.2-Lightning/resolve/main/Wan2.2-T2V-A14B-4steps-lora-250928/"
    "low_noise_model.safetensors"
)
_MOTION_SCALE_HIGH = (
    "https://huggingface.co/peteromallet/random_junk/resolve/main/motion_scale_000006500_high_noise.safetensors"
)


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers (each a transcription of the TS helper cited)
# ---------------------------------------------------------------------------------------------------------------


def _js_numbers(value: Any) -> Any:
    """JS has one number type: `JSON.stringify(5.0)` is `5`, and NaN/Infinity become null."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {key: _js_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_js_numbers(item) for item in value]
    return value


def _as_json(value: Any) -> Any:
    """What survives `JSON.stringify` + jsonb: tuples become lists, shared sub-objects become copies, integral
    numbers are written without a fraction (so `guidance_scale: 3.0` in TS arrives as `3`)."""
    return json.loads(json.dumps(_js_numbers(value)))


def _drop_undefined(record: dict[str, Any]) -> dict[str, Any]:
    """Keys whose TS value is `undefined` vanish in JSON (None here stands for `undefined`; use `_NULL` for null)."""
    return {key: (None if value is _NULL else value) for key, value in record.items() if value is not None}


class _Null:
    """A JSON null that must be kept (e.g. read_contract.selected_phase_preset_id: `?? null`)."""


_NULL = _Null()


def generate_run_id(now: datetime | None = None) -> str:
    """resolvers/shared/ids.ts L12-14: `new Date().toISOString()` without `-:.TZ` (17 digits, UTC)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


def generate_task_id(prefix: str, now: datetime | None = None) -> str:
    """resolvers/shared/ids.ts L16-20: `<prefix>_<runId[2:10]>_<first 6 chars of a uuid>`."""
    return f"{prefix}_{generate_run_id(now)[2:10]}_{str(uuid.uuid4())[:6]}"


def resolve_seed(seed: int | None, fallback: int | None) -> int:
    """resolvers/shared/seed.ts L16-42 with randomize=False: `seed ?? fallback`, range-checked."""
    resolved = seed if seed is not None else fallback
    if resolved is None:
        raise ValueError("builders take explicit seeds; the app would draw a random one here")
    if not (0 <= resolved <= MAX_SEED_32_BIT):
        raise ValueError(f"Seed must be between 0 and {MAX_SEED_32_BIT}")
    return resolved


def resolve_resolution(resolution: str | None, aspect_ratio: str | None) -> str:
    """resolvers/shared/resolution.ts L45-67: a custom resolution wins, else the project's aspect ratio."""
    if resolution and resolution.strip():
        return resolution.strip()
    key = aspect_ratio if aspect_ratio is not None else DEFAULT_ASPECT_RATIO
    return ASPECT_RATIO_TO_RESOLUTION.get(key, ASPECT_RATIO_TO_RESOLUTION[DEFAULT_ASPECT_RATIO])


def expand_array_to_count(values: list[Any] | None, count: int) -> list[Any] | None:
    """resolvers/travelBetweenImages.ts L99-106: only a single value is repeated; other lengths pass unchanged."""
    if not values:
        return values
    if len(values) == count:
        return values
    if len(values) == 1:
        return [values[0]] * count
    return values


def path_loras_to_strength_record(loras: list[dict[str, Any]] | None) -> dict[str, float]:
    """resolvers/shared/loras.ts L66-79 (and travelBetweenImages.ts L150-158, which keeps empty paths too)."""
    return {lora["path"]: lora["strength"] for lora in loras or [] if lora.get("path")}


def _js_number(value: Any) -> float:
    """`Number(x) || 0` as used for lora_multipliers (individualTravelSegment.ts L313)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text) if text else 0.0
        except ValueError:
            number = math.nan  # e.g. a ramp "0.1,0.3,0.5" -> NaN -> 0
    return 0.0 if math.isnan(number) or number == 0 else number


def build_orchestration_contract(
    *,
    task_family: str,
    orchestrator_task_id: str | None = None,
    run_id: str | None = None,
    parent_generation_id: str | None = None,
    child_generation_id: str | None = None,
    child_order: int | None = None,
    shot_id: str | None = None,
    based_on: str | None = None,
    create_as_generation: bool | None = None,
    generation_routing: str | None = None,
    sibling_lookup: str | None = None,
    segment_regen_mode: str | None = None,
) -> dict[str, Any]:
    """resolvers/shared/taskContracts.ts L120-141: only the truthy/typed inputs become keys."""
    contract: dict[str, Any] = {"contract_version": ORCHESTRATION_CONTRACT_VERSION, "task_family": task_family}
    optional: list[tuple[str, Any]] = [
        ("orchestrator_task_id", orchestrator_task_id),
        ("run_id", run_id),
        ("parent_generation_id", parent_generation_id),
        ("child_generation_id", child_generation_id),
    ]
    for key, value in optional:
        if value:
            contract[key] = value
    if isinstance(child_order, int):
        contract["child_order"] = child_order
    if shot_id:
        contract["shot_id"] = shot_id
    if based_on:
        contract["based_on"] = based_on
    if isinstance(create_as_generation, bool):
        contract["create_as_generation"] = create_as_generation
    for key, value in (
        ("generation_routing", generation_routing),
        ("sibling_lookup", sibling_lookup),
        ("segment_regen_mode", segment_regen_mode),
    ):
        if value:
            contract[key] = value
    return contract


def build_task_view_contract(
    *,
    input_images: list[str],
    prompt: str | None = None,
    enhanced_prompt: str | None = None,
    negative_prompt: str | None = None,
    model_name: str | None = None,
    resolution: str | None = None,
) -> dict[str, Any]:
    """resolvers/shared/taskContracts.ts L143-156: strings kept only when non-blank."""

    def non_empty(value: Any) -> bool:
        return isinstance(value, str) and value.strip() != ""

    contract: dict[str, Any] = {
        "contract_version": TASK_VIEW_CONTRACT_VERSION,
        "input_images": [image for image in input_images if non_empty(image)],
    }
    for key, value in (
        ("prompt", prompt),
        ("enhanced_prompt", enhanced_prompt),
        ("negative_prompt", negative_prompt),
        ("model_name", model_name),
        ("resolution", resolution),
    ):
        if non_empty(value):
            contract[key] = value
    return contract


def compose_task_family_payload(
    *,
    task_family: str,
    orchestrator_details: dict[str, Any],
    orchestration_contract: dict[str, Any],
    task_view_contract: dict[str, Any],
    family_contract: dict[str, Any],
) -> dict[str, Any]:
    """resolvers/shared/taskContracts.ts L158-184: the details spread at the top AND nested once more."""
    return {
        **orchestrator_details,
        "contract_version": TASK_PAYLOAD_CONTRACT_VERSION,
        "task_family": task_family,
        "orchestrator_details": copy.deepcopy(orchestrator_details),
        "orchestration_contract": orchestration_contract,
        "task_view_contract": task_view_contract,
        "family_contract": family_contract,
    }


def queued_row(project_id: str, task_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """`buildQueuedTask` (e.g. travelBetweenImages.ts L84-97): the row create-task inserts (created_at: now())."""
    return {
        "project_id": project_id,
        "task_type": task_type,
        "params": params,
        "status": "Queued",
        "dependant_on": None,
    }


# ---------------------------------------------------------------------------------------------------------------
# phase_config as the app's presets make them
# ---------------------------------------------------------------------------------------------------------------


def _with_user_loras(
    config: dict[str, Any], user_loras: list[dict[str, Any]] | None, *, multi_stage_aware: bool
) -> dict[str, Any]:
    """User LoRAs appended to every phase, multiplier as `strength.toFixed(2)`.

    multi_stage_aware: src/shared/types/phaseConfig.ts L154-209 (buildBasicModePhaseConfig: an `isMultiStage` LoRA
    gives its `path` to early phases and its `lowNoisePath` to the last). Otherwise resolvers/joinClips.ts L197-216
    / src/shared/lib/vaceDefaults.ts L81-103 (buildPhaseConfigWithLoras: same LoRA list in every phase).
    """
    config = copy.deepcopy(config)
    if not user_loras:
        return config
    phases = config["phases"]
    for index, phase in enumerate(phases):
        is_last = index == len(phases) - 1
        for lora in user_loras:
            url = lora.get("path")
            if multi_stage_aware and lora.get("isMultiStage"):
                url = lora.get("lowNoisePath") if is_last else lora.get("path")
            if url:
                phase["loras"].append({"url": url, "multiplier": f"{lora['strength']:.2f}"})
    return config


def lightning_i2v_2phase_config(
    user_loras: list[dict[str, Any]] | None = None, *, with_mode: bool = False
) -> dict[str, Any]:
    """The built-in I2V preset "Basic" (`__builtin_default_i2v__`): DEFAULT_PHASE_CONFIG,
    src/shared/types/phaseConfig.ts L53-81 (preset wiring: src/tools/travel-between-images/components/
    MotionControl.constants.ts L4-14). 2 phases, steps [3, 3], lightx2v I2V high/low LoRAs. User LoRAs as
    buildBasicModePhaseConfig adds them (phaseConfig.ts L154-209). It has no `mode` key, so `with_mode` is a no-op
    kept for symmetry with the 3-phase helper."""
    config = {
        "num_phases": 2,
        "steps_per_phase": [3, 3],
        "flow_shift": 5.0,
        "sample_solver": "euler",
        "model_switch_phase": 1,
        "phases": [
            {"phase": 1, "guidance_scale": 1.0, "loras": [{"url": _LIGHTX2V_I2V_HIGH, "multiplier": "1.2"}]},
            {"phase": 2, "guidance_scale": 1.0, "loras": [{"url": _LIGHTX2V_I2V_LOW, "multiplier": "1.0"}]},
        ],
    }
    del with_mode
    return _as_json(_with_user_loras(config, user_loras, multi_stage_aware=True))


def lightning_vace_3phase_config(
    user_loras: list[dict[str, Any]] | None = None, *, with_mode: bool = False
) -> dict[str, Any]:
    """The built-in VACE preset "Basic" (`__builtin_default_vace__`): DEFAULT_VACE_PHASE_CONFIG,
    src/shared/types/phaseConfig.ts L86-125. 3 phases, steps [2, 2, 2], model_switch_phase 2, Lightning T2V
    high/high/low LoRAs, guidance 3/1/1. The travel frontend strips `mode` before sending
    (segmentSettingsUtils.ts L97-100, L126; pairPayload.ts L185, L258), hence with_mode=False."""
    config: dict[str, Any] = {
        "num_phases": 3,
        "steps_per_phase": [2, 2, 2],
        "flow_shift": 5.0,
        "sample_solver": "euler",
        "model_switch_phase": 2,
        "phases": [
            {"phase": 1, "guidance_scale": 3.0, "loras": [{"url": _LIGHTNING_T2V_HIGH, "multiplier": "0.75"}]},
            {"phase": 2, "guidance_scale": 1.0, "loras": [{"url": _LIGHTNING_T2V_HIGH, "multiplier": "1.0"}]},
            {"phase": 3, "guidance_scale": 1.0, "loras": [{"url": _LIGHTNING_T2V_LOW, "multiplier": "1.0"}]},
        ],
    }
    if with_mode:
        config["mode"] = "vace"
    return _as_json(_with_user_loras(config, user_loras, multi_stage_aware=True))


def join_vace_3phase_config(user_loras: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The join/edit VACE default (`__builtin_vace_default__`): resolvers/joinClips.ts L129-180, identical to
    src/shared/lib/vaceDefaults.ts L8-41. 3 phases, steps [2, 2, 5], each phase also carries the motion_scale LoRA
    at "1.25", and it keeps `mode: "vace"`. User LoRAs per joinClips.ts L197-216."""
    config = {
        "num_phases": 3,
        "steps_per_phase": [2, 2, 5],
        "flow_shift": 5.0,
        "sample_solver": "euler",
        "model_switch_phase": 2,
        "mode": "vace",
        "phases": [
            {
                "phase": 1,
                "guidance_scale": 3.0,
                "loras": [
                    {"url": _LIGHTNING_T2V_HIGH, "multiplier": "0.75"},
                    {"url": _MOTION_SCALE_HIGH, "multiplier": "1.25"},
                ],
            },
            {
                "phase": 2,
                "guidance_scale": 1.0,
                "loras": [
                    {"url": _LIGHTNING_T2V_HIGH, "multiplier": "1.0"},
                    {"url": _MOTION_SCALE_HIGH, "multiplier": "1.25"},
                ],
            },
            {
                "phase": 3,
                "guidance_scale": 1.0,
                "loras": [
                    {"url": _LIGHTNING_T2V_LOW, "multiplier": "1.0"},
                    {"url": _MOTION_SCALE_HIGH, "multiplier": "1.25"},
                ],
            },
        ],
    }
    return _as_json(_with_user_loras(config, user_loras, multi_stage_aware=False))


def lightbox_edit_phase_config() -> dict[str, Any]:
    """The fixed phase_config of the lightbox "edit video" flow: src/domains/media-lightbox/hooks/modes/
    videoEditingTaskPayload.ts L35-69. Same values as the VACE built-in preset (3 phases, steps [2, 2, 2], no
    motion_scale LoRA, no mode)."""
    return lightning_vace_3phase_config()


# ---------------------------------------------------------------------------------------------------------------
# travel_between_images -> travel_orchestrator (or wan_2_2_i2v in turbo mode)
# ---------------------------------------------------------------------------------------------------------------


def travel_task_type(turbo_mode: bool = False) -> str:
    """resolvers/travelBetweenImages.ts L322-323: turbo_mode === true -> wan_2_2_i2v, same params."""
    return "wan_2_2_i2v" if turbo_mode is True else "travel_orchestrator"


def travel_between_images_params(
    image_urls: list[str],
    *,
    base_prompts: list[str],
    segment_frames: list[int],
    frame_overlap: list[int],
    model_name: str | None = WAN_I2V_BASIC_MODEL,
    advanced_mode: bool | None = False,
    phase_config: dict[str, Any] | None = None,
    pair_phase_configs: list[dict[str, Any] | None] | None = None,
    pair_loras: list[list[dict[str, Any]] | None] | None = None,
    pair_motion_settings: list[dict[str, Any] | None] | None = None,
    loras: list[dict[str, Any]] | None = None,
    travel_guidance: dict[str, Any] | None = None,
    continuation_config: dict[str, Any] | None = None,
    shot_id: str | None = None,
    parent_generation_id: str | None = None,
    pair_shot_generation_ids: list[str] | None = None,
    image_generation_ids: list[str] | None = None,
    seed: int = 789,
    steps: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    amount_of_motion: float | None = None,
    motion_mode: str | None = None,
    selected_phase_preset_id: str | None = None,
    base_prompt: str | None = None,
    negative_prompts: list[str] | None = None,
    enhanced_prompts: list[str] | None = None,
    enhance_prompt: bool | None = None,
    text_before_prompts: str | None = None,
    text_after_prompts: str | None = None,
    model_type: str | None = None,
    debug: bool | None = None,
    show_input_images: bool | None = None,
    generation_mode: str | None = None,
    dimension_source: str | None = None,
    independent_segments: bool | None = None,
    generation_name: str | None = None,
    main_output_dir_for_run: str | None = None,
    after_first_post_generation_saturation: float | None = None,
    after_first_post_generation_brightness: float | None = None,
    resolution: str | None = "64x64",
    aspect_ratio: str | None = None,
    run_id: str | None = None,
    orchestrator_task_id: str | None = None,
    frontend_defaults: bool = True,
) -> dict[str, Any]:
    """A travel_orchestrator / wan_2_2_i2v row's params: resolvers/travelBetweenImages.ts L160-306 and L308-342.

    `parent_generation_id` stands for the resolver's `ensure_shot_parent_generation` RPC result (L108-131): pass
    the id the app would get for `shot_id`. `resolution` is the custom resolution; None falls back to the
    project's `aspect_ratio` (L315-318). Inputs the resolver reads but ignores (`image_variant_ids`,
    `chain_segments`, `regenerate_anchors`, `structure_guidance`, `structure_videos`, `stitch_config`) are not
    parameters here: they never reach params.

    frontend_defaults fills what src/tools/travel-between-images/components/ShotEditor/services/generateVideo/
    requestBody.ts L108-151 always sends when the caller leaves it None: model_type "i2v" (policy.travelMode),
    negative_prompts [""] per pair, debug False, show_input_images False (DEFAULT_STEERABLE_MOTION_SETTINGS,
    src/shared/types/steerableMotion.ts L11-17), enhance_prompt False, generation_mode "timeline" (tool default,
    src/tools/travel-between-images/settings.ts L178), motion_mode "basic", amount_of_motion 0.5 (UI 50 / 100,
    segmentSettingsUtils.ts L123-124), independent_segments = not continuation_config, base_prompt "".
    """
    if not image_urls or not base_prompts or not segment_frames or not frame_overlap:
        raise ValueError("image_urls, base_prompts, segment_frames and frame_overlap are required (L133-148)")
    if frontend_defaults:
        pairs = max(1, len(image_urls) - 1)
        model_type = model_type if model_type is not None else "i2v"
        negative_prompts = negative_prompts if negative_prompts is not None else [""] * pairs
        debug = debug if debug is not None else False
        show_input_images = show_input_images if show_input_images is not None else False
        if enhanced_prompts is None and enhance_prompt is None:
            enhance_prompt = False
        generation_mode = generation_mode if generation_mode is not None else "timeline"
        motion_mode = motion_mode if motion_mode is not None else ("advanced" if advanced_mode else "basic")
        amount_of_motion = amount_of_motion if amount_of_motion is not None else 0.5
        independent_segments = independent_segments if independent_segments is not None else not continuation_config
        base_prompt = base_prompt if base_prompt is not None else ""

    final_resolution = resolve_resolution(resolution, aspect_ratio)
    run_id = run_id or generate_run_id()
    task_id = orchestrator_task_id or generate_task_id("sm_travel_orchestrator")  # L320

    # L167-181
    num_segments = max(1, len(image_urls) - 1)
    base_prompts_expanded = expand_array_to_count(base_prompts, num_segments) or []
    negative_prompts_expanded = (
        expand_array_to_count(negative_prompts, num_segments) if negative_prompts is not None else [""] * num_segments
    )
    if enhanced_prompts is not None:
        enhanced_prompts_expanded = expand_array_to_count(enhanced_prompts, num_segments)
    else:
        enhanced_prompts_expanded = [""] * num_segments if enhance_prompt else None
    segment_frames_expanded = expand_array_to_count(segment_frames, num_segments) or []
    frame_overlap_expanded = expand_array_to_count(frame_overlap, num_segments) or []
    final_seed = resolve_seed(seed, TRAVEL_DEFAULTS["seed"])
    final_model_name = model_name if model_name is not None else TRAVEL_DEFAULTS["model_name"]

    def any_set(values: list[Any] | None) -> bool:
        return bool(values) and any(value is not None for value in values)

    # L183-237 (None = undefined = absent; `...(cond ? {k: v} : {})` spreads transcribed as conditionals)
    payload: dict[str, Any] = {
        "generation_source": "batch",
        "orchestrator_task_id": task_id,
        "run_id": run_id,
        "input_image_paths_resolved": list(image_urls),
    }
    if image_generation_ids:
        payload["input_image_generation_ids"] = image_generation_ids
    if pair_shot_generation_ids:
        payload["pair_shot_generation_ids"] = pair_shot_generation_ids
    payload["num_new_segments_to_generate"] = num_segments
    payload["base_prompts_expanded"] = base_prompts_expanded
    payload["base_prompt"] = base_prompt
    payload["negative_prompts_expanded"] = negative_prompts_expanded
    if enhanced_prompts_expanded is not None:
        payload["enhanced_prompts_expanded"] = enhanced_prompts_expanded
    if any_set(pair_phase_configs):
        payload["phase_configs_expanded"] = pair_phase_configs[:num_segments]  # type: ignore[index]
    if any_set(pair_loras):
        payload["loras_per_segment_expanded"] = pair_loras[:num_segments]  # type: ignore[index]
    if any_set(pair_motion_settings):
        payload["motion_settings_expanded"] = pair_motion_settings[:num_segments]  # type: ignore[index]
    payload["segment_frames_expanded"] = segment_frames_expanded
    payload["frame_overlap_expanded"] = frame_overlap_expanded
    if continuation_config:
        payload["continuation_config"] = continuation_config
    payload["parsed_resolution_wh"] = final_resolution
    payload["model_name"] = final_model_name
    payload["model_type"] = model_type
    payload["seed_base"] = final_seed
    if not advanced_mode:
        payload["steps"] = steps if steps is not None else TRAVEL_DEFAULTS["steps"]
    if num_inference_steps is not None:
        payload["num_inference_steps"] = num_inference_steps
    if guidance_scale is not None:
        payload["guidance_scale"] = guidance_scale

    def or_default(value: Any, key: str) -> Any:
        return value if value is not None else TRAVEL_DEFAULTS[key]

    payload["after_first_post_generation_saturation"] = or_default(
        after_first_post_generation_saturation, "after_first_post_generation_saturation"
    )
    payload["after_first_post_generation_brightness"] = or_default(
        after_first_post_generation_brightness, "after_first_post_generation_brightness"
    )
    payload["debug_mode_enabled"] = or_default(debug, "debug")
    payload["shot_id"] = shot_id
    if parent_generation_id:
        payload["parent_generation_id"] = parent_generation_id
    if main_output_dir_for_run:
        payload["main_output_dir_for_run"] = main_output_dir_for_run
    payload["enhance_prompt"] = or_default(enhance_prompt, "enhance_prompt")
    payload["show_input_images"] = or_default(show_input_images, "show_input_images")
    payload["generation_mode"] = or_default(generation_mode, "generation_mode")
    payload["dimension_source"] = or_default(dimension_source, "dimension_source")
    if advanced_mode:
        payload["regenerate_anchors"] = False
    else:
        payload["amount_of_motion"] = or_default(amount_of_motion, "amount_of_motion")
    payload["advanced_mode"] = advanced_mode if advanced_mode is not None else False
    payload["generation_name"] = generation_name
    payload["independent_segments"] = independent_segments if independent_segments is not None else True
    if text_before_prompts:
        payload["text_before_prompts"] = text_before_prompts
    if text_after_prompts:
        payload["text_after_prompts"] = text_after_prompts
    if motion_mode:
        payload["motion_mode"] = motion_mode

    # L239-252
    if travel_guidance:
        payload["travel_guidance"] = travel_guidance
    additional_loras = {lora["path"]: lora["strength"] for lora in loras} if loras else None
    if additional_loras:
        payload["additional_loras"] = additional_loras
    if phase_config:
        payload["phase_config"] = phase_config
    if selected_phase_preset_id:
        payload["selected_phase_preset_id"] = selected_phase_preset_id
    payload = _drop_undefined(payload)

    # L254-277
    has_pair_ids = bool(pair_shot_generation_ids)
    regen_mode = "segment_regen_from_pair" if has_pair_ids else "segment_regen_from_order"
    prompt = base_prompt if base_prompt is not None else base_prompts[0]
    read_contract = _drop_undefined(
        {
            "contract_version": TASK_FAMILY_CONTRACT_VERSION,
            "prompt": prompt,
            "enhanced_prompt": enhanced_prompts_expanded[0] if enhanced_prompts_expanded else None,
            "negative_prompt": negative_prompts[0] if negative_prompts else None,
            "model_name": final_model_name,
            "resolution": final_resolution,
            "enhance_prompt": or_default(enhance_prompt, "enhance_prompt"),
            "motion_mode": motion_mode if motion_mode is not None else "basic",
            "selected_phase_preset_id": selected_phase_preset_id if selected_phase_preset_id is not None else _NULL,
            "advanced_mode": advanced_mode if advanced_mode is not None else False,
            "amount_of_motion": or_default(amount_of_motion, "amount_of_motion"),
            "phase_config": phase_config,
            "additional_loras": additional_loras,
            "segment_frames_expanded": segment_frames_expanded,
            "frame_overlap_expanded": frame_overlap_expanded,
            "continuation_config": continuation_config,
            "travel_guidance": travel_guidance,
        }
    )

    # L279-305
    details = compose_task_family_payload(
        task_family="travel_between_images",
        orchestrator_details=payload,
        orchestration_contract=build_orchestration_contract(
            task_family="travel_between_images",
            orchestrator_task_id=task_id,
            run_id=run_id,
            parent_generation_id=parent_generation_id,
            shot_id=shot_id,
            generation_routing="orchestrator",
            sibling_lookup="run_id",
        ),
        task_view_contract=build_task_view_contract(
            input_images=list(image_urls),
            prompt=prompt,
            negative_prompt=negative_prompts[0] if negative_prompts else None,
            model_name=model_name,
            resolution=final_resolution,
        ),
        family_contract={
            "contract_version": TASK_FAMILY_CONTRACT_VERSION,
            "segment_regen_mode": regen_mode,
            "image_count": len(image_urls),
            "segment_count": num_segments,
            "has_pair_ids": has_pair_ids,
            "read_contract": read_contract,
        },
    )

    # L327-338
    params: dict[str, Any] = {"tool_type": "travel-between-images", "orchestrator_details": details}
    if parent_generation_id:
        params["parent_generation_id"] = parent_generation_id
    if generation_name:
        params["generation_name"] = generation_name
    return _as_json(params)


def travel_between_images_task(
    image_urls: list[str], *, turbo_mode: bool = False, **kwargs: Any
) -> tuple[str, dict[str, Any]]:
    """(task_type, params) as the resolver returns them (L322-338)."""
    return travel_task_type(turbo_mode), travel_between_images_params(image_urls, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# individual_travel_segment (frontend-created path, NOT the worker passthrough of L371-393)
# ---------------------------------------------------------------------------------------------------------------


def individual_travel_segment_params(
    start_image_url: str,
    end_image_url: str | None = None,
    *,
    project_id: str,
    segment_index: int,
    parent_generation_id: str,
    child_generation_id: str | None = None,
    shot_id: str | None = None,
    pair_shot_generation_id: str | None = None,
    start_image_generation_id: str | None = None,
    end_image_generation_id: str | None = None,
    start_image_variant_id: str | None = None,
    end_image_variant_id: str | None = None,
    model_name: str | None = None,
    model_type: str | None = None,
    base_prompt: str | None = None,
    enhanced_prompt: str | None = None,
    negative_prompt: str | None = None,
    num_frames: int | None = None,
    frame_overlap_from_previous: int | None = None,
    continuation_config: dict[str, Any] | None = None,
    seed: int = 789,
    random_seed: bool | None = None,
    amount_of_motion: float | None = None,
    advanced_mode: bool | None = None,
    phase_config: dict[str, Any] | None = None,
    motion_mode: str | None = None,
    selected_phase_preset_id: str | None = None,
    loras: list[dict[str, Any]] | None = None,
    travel_guidance: dict[str, Any] | None = None,
    generation_name: str | None = None,
    resolution: str | None = "64x64",
    aspect_ratio: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    make_primary_variant: bool | None = None,
    is_last_segment: bool | None = None,
    frontend_defaults: bool = True,
) -> dict[str, Any]:
    """An individual_travel_segment row's params: resolvers/individualTravelSegment.ts L197-369.

    `parent_generation_id` and `child_generation_id` stand for resolveSegmentGenerationRoute's result (L112-163):
    the child found at `pair_shot_generation_id` (or at child_order = segment_index), None for a new segment.
    `resolution` stands for input.parsed_resolution_wh (L165-179). `project_id` is the resolver's context project.

    frontend_defaults fills what the segment form sends (src/shared/components/SegmentSettingsForm/
    segmentSettingsUtils.ts L131-204 via src/domains/media-lightbox/components/submitSegmentTask.ts L189-249) when
    the caller leaves it None: model_type "i2v", base_prompt/negative_prompt "", num_frames 61, amount_of_motion
    0.5, motion_mode "basic", loras [], make_primary_variant False (DEFAULT_SEGMENT_SETTINGS,
    src/shared/types/segmentSettings.ts L79-94), frame_overlap_from_previous 0 unless a continuation_config is
    given, random_seed False (the form's default is True: then the app draws the seed, which tests cannot pin).
    """
    if segment_index < 0:
        raise ValueError("segment_index must be a non-negative number")  # L181-195
    if not start_image_url:
        raise ValueError("start_image_url is required")
    if frontend_defaults:
        model_type = model_type if model_type is not None else "i2v"
        base_prompt = base_prompt if base_prompt is not None else ""
        negative_prompt = negative_prompt if negative_prompt is not None else ""
        num_frames = num_frames if num_frames is not None else 61
        amount_of_motion = amount_of_motion if amount_of_motion is not None else 0.5
        motion_mode = motion_mode if motion_mode is not None else "basic"
        loras = loras if loras is not None else []
        make_primary_variant = make_primary_variant if make_primary_variant is not None else False
        if frame_overlap_from_previous is None and continuation_config is None:
            frame_overlap_from_previous = 0
        random_seed = random_seed if random_seed is not None else False

    final_resolution = resolve_resolution(resolution, aspect_ratio)
    # L204-215
    input_images = [start_image_url, end_image_url] if end_image_url else [start_image_url]
    final_seed = resolve_seed(seed, 789)
    additional_loras = path_loras_to_strength_record(loras) if loras else {}
    # L216-225
    pc = phase_config or {}
    phases = pc.get("phases") if isinstance(pc.get("phases"), list) else None

    def phase_guidance(index: int) -> Any:
        if phases is not None and len(phases) > index and phases[index].get("guidance_scale") is not None:
            return phases[index]["guidance_scale"]
        return None

    steps_per_phase = pc.get("steps_per_phase")
    default_steps = sum(steps_per_phase) if isinstance(steps_per_phase, list) else 6
    final_steps = num_inference_steps if num_inference_steps is not None else default_steps
    flow_shift = pc.get("flow_shift") if pc.get("flow_shift") is not None else 5
    sample_solver = pc.get("sample_solver") if pc.get("sample_solver") is not None else "euler"
    first_guidance = guidance_scale if guidance_scale is not None else phase_guidance(0)
    first_guidance = first_guidance if first_guidance is not None else 1
    second_guidance = phase_guidance(1) if phase_guidance(1) is not None else 1
    guidance_phases = pc.get("num_phases") if pc.get("num_phases") is not None else 2
    model_switch_phase = pc.get("model_switch_phase") if pc.get("model_switch_phase") is not None else 1
    final_model = model_name if model_name is not None else WAN_I2V_BASIC_MODEL
    final_motion_mode = motion_mode if motion_mode is not None else "basic"
    final_amount = amount_of_motion if amount_of_motion is not None else 0.5

    # L226-250
    orchestrator_details: dict[str, Any] = {
        "generation_source": "individual_segment",
        "parsed_resolution_wh": final_resolution,
        "input_image_paths_resolved": input_images,
        "seed_base": final_seed,
        "model_name": final_model,
        "flow_shift": flow_shift,
        "sample_solver": sample_solver,
        "guidance_scale": first_guidance,
        "guidance2_scale": second_guidance,
        "guidance_phases": guidance_phases,
        "num_inference_steps": final_steps,
        "model_switch_phase": model_switch_phase,
        "additional_loras": additional_loras,
        "advanced_mode": (
            advanced_mode if advanced_mode is not None else (motion_mode != "basic" and bool(phase_config))
        ),
        "motion_mode": final_motion_mode,
        "amount_of_motion": final_amount,
        "parent_generation_id": parent_generation_id,
        "fps_helpers": 16,
    }
    if model_type:
        orchestrator_details["model_type"] = model_type
    orchestrator_details["independent_segments"] = not continuation_config
    orchestrator_details["chain_segments"] = bool(continuation_config)
    if continuation_config:
        orchestrator_details["continuation_config"] = continuation_config
    if travel_guidance:
        orchestrator_details["travel_guidance"] = travel_guidance

    # L252-258
    routing = "variant_child" if child_generation_id else "child_generation"
    has_pair = bool(pair_shot_generation_id or start_image_variant_id or end_image_variant_id)
    regen_mode = "segment_regen_from_pair" if has_pair else "segment_regen_from_order"

    # L260-288: composeTaskFamilyPayload; for this family `orchestrator_details` is the plain details (no nesting)
    composed = compose_task_family_payload(
        task_family="individual_travel_segment",
        orchestrator_details=orchestrator_details,
        orchestration_contract=build_orchestration_contract(
            task_family="individual_travel_segment",
            parent_generation_id=parent_generation_id,
            child_generation_id=child_generation_id,
            child_order=segment_index,
            shot_id=shot_id,
            generation_routing=routing,
            sibling_lookup="orchestrator_task_id",
            segment_regen_mode=regen_mode,
        ),
        task_view_contract=build_task_view_contract(
            input_images=input_images,
            prompt=base_prompt,
            enhanced_prompt=enhanced_prompt,
            negative_prompt=negative_prompt,
            model_name=model_name,
            resolution=final_resolution,
        ),
        family_contract={
            "contract_version": TASK_FAMILY_CONTRACT_VERSION,
            "segment_regen_mode": regen_mode,
            "generation_routing": routing,
            "segment_index": segment_index,
            "has_end_image": bool(end_image_url),
            "has_pair_shot_generation_id": has_pair,
        },
    )

    clamped_frames = min(num_frames if num_frames is not None else 49, 81)
    # L290-338 (top level before the composed spread)
    params: dict[str, Any] = {
        "flow_shift": flow_shift,
        "lora_names": [],
        "model_name": final_model,
        "project_id": project_id,
        "shot_id": shot_id,
        "base_prompt": base_prompt if base_prompt is not None else "",
        "fps_helpers": 16,
        "seed_to_use": final_seed,
        "cfg_zero_step": -1,
        "sample_solver": sample_solver,
        "segment_index": segment_index,
        "guidance_scale": first_guidance,
        "cfg_star_switch": 0,
        "guidance2_scale": second_guidance,
        "guidance_phases": guidance_phases,
        "is_last_segment": is_last_segment if is_last_segment is not None else not end_image_url,
        "negative_prompt": negative_prompt if negative_prompt is not None else "",
        "is_first_segment": segment_index == 0,
        "additional_loras": additional_loras,
        # L310-315: a list of {url, multiplier:number} objects, flattened over all phases
        "lora_multipliers": [
            {"url": lora.get("url"), "multiplier": _js_number(lora.get("multiplier"))}
            for phase in phases or []
            for lora in phase.get("loras") or []
        ],
        "model_switch_phase": model_switch_phase,
        "num_inference_steps": final_steps,
        "parsed_resolution_wh": final_resolution,
        "num_frames": clamped_frames,
    }
    if frame_overlap_from_previous is not None:
        params["frame_overlap_from_previous"] = frame_overlap_from_previous
    params["amount_of_motion"] = final_amount
    params["orchestrator_details"] = orchestrator_details
    params["parent_generation_id"] = parent_generation_id
    if child_generation_id:
        params["child_generation_id"] = child_generation_id
    params["input_image_paths_resolved"] = input_images
    params["after_first_post_generation_saturation"] = 1
    params["after_first_post_generation_brightness"] = 0
    params["motion_mode"] = final_motion_mode
    for key, value in (
        ("enhanced_prompt", enhanced_prompt),
        ("continuation_config", continuation_config),
        ("travel_guidance", travel_guidance),
        ("start_image_generation_id", start_image_generation_id),
        ("end_image_generation_id", end_image_generation_id),
        ("pair_shot_generation_id", pair_shot_generation_id),
        ("generation_name", generation_name),
    ):
        if value:
            params[key] = value
    params["make_primary_variant"] = make_primary_variant if make_primary_variant is not None else True
    # L339: `...composedPayload` overrides same-named keys in place (JS spread == dict.update ordering)
    params.update(composed)
    # L340-367
    segment: dict[str, Any] = {
        "input_image_paths_resolved": input_images,
        "start_image_url": start_image_url,
    }
    if end_image_url:
        segment["end_image_url"] = end_image_url
    segment.update(
        {
            "base_prompt": base_prompt if base_prompt is not None else "",
            "negative_prompt": negative_prompt if negative_prompt is not None else "",
            "num_frames": clamped_frames,
            "seed_to_use": final_seed,
            "random_seed": random_seed if random_seed is not None else False,
            "amount_of_motion": final_amount,
            "motion_mode": final_motion_mode,
            "advanced_mode": advanced_mode if advanced_mode is not None else False,
        }
    )
    if frame_overlap_from_previous is not None:
        segment["frame_overlap_from_previous"] = frame_overlap_from_previous
    segment["additional_loras"] = additional_loras
    segment["after_first_post_generation_saturation"] = 1
    segment["after_first_post_generation_brightness"] = 0
    for key, value in (
        ("phase_config", phase_config),
        ("continuation_config", continuation_config),
        ("start_image_generation_id", start_image_generation_id),
        ("end_image_generation_id", end_image_generation_id),
        ("pair_shot_generation_id", pair_shot_generation_id),
        ("start_image_variant_id", start_image_variant_id),
        ("end_image_variant_id", end_image_variant_id),
        ("enhanced_prompt", enhanced_prompt),
        ("selected_phase_preset_id", selected_phase_preset_id),
    ):
        if value:
            segment[key] = value
    params["individual_segment_params"] = segment
    return _as_json(_drop_undefined(params))


# ---------------------------------------------------------------------------------------------------------------
# join_clips -> join_clips_orchestrator
# ---------------------------------------------------------------------------------------------------------------

# resolvers/joinClips.ts L222-235: the only per-join keys copied (plus `loras` -> additional_loras, L244-246)
_PER_JOIN_KEYS = (
    "prompt",
    "gap_frame_count",
    "context_frame_count",
    "replace_mode",
    "model",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "negative_prompt",
    "priority",
    "resolution",
    "fps",
)


def join_clips_params(
    clip_urls: list[str],
    *,
    clip_names: list[str | None] | None = None,
    mode: str = "multi_clip",
    video_edit: dict[str, Any] | None = None,
    per_join_settings: list[dict[str, Any]] | None = None,
    run_id: str | None = None,
    orchestrator_task_id: str | None = None,
    shot_id: str | None = None,
    prompt: str | None = None,
    context_frame_count: int | None = None,
    gap_frame_count: int | None = None,
    replace_mode: bool | None = None,
    keep_bridging_images: bool | None = None,
    enhance_prompt: bool | None = None,
    model: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 789,
    resolution: tuple[int, int] | list[int] | None = (64, 64),
    fps: int | None = None,
    negative_prompt: str | None = None,
    priority: int | None = None,
    loras: list[dict[str, Any]] | None = None,
    phase_config: dict[str, Any] | None = None,
    motion_mode: str | None = None,
    selected_phase_preset_id: str | None = None,
    parent_generation_id: str | None = None,
    tool_type: str | None = "join-clips",
    use_input_video_resolution: bool | None = None,
    use_input_video_fps: bool | None = None,
    vid2vid_init_strength: float | None = None,
    loop_first_clip: bool | None = None,
    based_on: str | None = None,
    audio_url: str | None = None,
    frontend_defaults: bool = True,
) -> dict[str, Any]:
    """A join_clips_orchestrator row's params: resolvers/joinClips.ts L293-416 (validation L251-291).

    The seed defaults to 789 so tests are deterministic; the app sends -1 ("random", TASK_DEFAULTS L122 and
    VACE_GENERATION_DEFAULTS.seed, src/shared/lib/vaceDefaults.ts L63-78). frontend_defaults fills what the Join
    Clips page sends (src/tools/join-clips/hooks/useJoinClipsGenerate.ts L87-150) when left None: one
    per_join_settings entry `{prompt}` per join, keep_bridging_images False, use_input_video_resolution/fps False,
    motion_mode "basic", selected_phase_preset_id "__builtin_vace_default__" (the page's tool default).

    Two app producers differ: the Join Clips page puts the prompt only into per_join_settings (leave `prompt`
    None and pass `per_join_settings=[{"prompt": ...}, ...]` to reproduce it), while the shot editor's "Join
    segments" (src/tools/travel-between-images/components/ShotEditor/hooks/actions/useJoinSegmentsHandler.ts
    L232-268) sends a top-level prompt, shot_id, parent_generation_id, tool_type "travel-between-images", clip
    names "Segment N" and no per_join_settings (use frontend_defaults=False and per_join_settings=None).
    """
    names = clip_names or [None] * len(clip_urls)
    clips = [{"url": url, **({"name": name} if name else {})} for url, name in zip(clip_urls, names, strict=True)]
    if len(clips) < 2:
        raise ValueError("At least two clips are required to create a join")  # L259-261
    if any(not clip["url"].strip() for clip in clips):
        raise ValueError("Clip URL cannot be empty")
    joins = len(clips) - 1
    if frontend_defaults:
        if per_join_settings is None:
            per_join_settings = [{"prompt": prompt if prompt is not None else ""} for _ in range(joins)]
        keep_bridging_images = keep_bridging_images if keep_bridging_images is not None else False
        use_input_video_resolution = use_input_video_resolution if use_input_video_resolution is not None else False
        use_input_video_fps = use_input_video_fps if use_input_video_fps is not None else False
        motion_mode = motion_mode if motion_mode is not None else "basic"
        selected_phase_preset_id = selected_phase_preset_id or JOIN_DEFAULTS["selected_phase_preset_id"]
    if per_join_settings is not None and len(per_join_settings) > joins:
        raise ValueError("per_join_settings length cannot exceed the number of joins")  # L267-273
    if mode == "video_edit" and not video_edit:
        raise ValueError("video_edit config is required when mode is video_edit")  # L275-277
    if video_edit is not None and not video_edit.get("source_video_url"):
        raise ValueError("video_edit.source_video_url is required when video_edit config is provided")
    join_mode = "video_edit_join" if mode == "video_edit" else "multi_clip_join"  # L288

    run_id = run_id or generate_run_id()  # L422
    task_id = orchestrator_task_id or generate_task_id("join_clips_orchestrator")  # L421
    final_phase_config = phase_config or join_vace_3phase_config(loras or [])  # L300

    def or_default(value: Any, key: str) -> Any:
        return value if value is not None else JOIN_DEFAULTS[key]

    # L302-337
    details: dict[str, Any] = {
        "orchestrator_task_id": task_id,
        "clip_list": clips,
        "run_id": run_id,
        "shot_id": shot_id,
        "prompt": or_default(prompt, "prompt"),
        "gap_frame_count": or_default(gap_frame_count, "gap_frame_count"),
        "context_frame_count": or_default(context_frame_count, "context_frame_count"),
        "replace_mode": or_default(replace_mode, "replace_mode"),
        "keep_bridging_images": keep_bridging_images,
        "enhance_prompt": or_default(enhance_prompt, "enhance_prompt"),
        "model": or_default(model, "model"),
        "num_inference_steps": or_default(num_inference_steps, "num_inference_steps"),
        "guidance_scale": or_default(guidance_scale, "guidance_scale"),
        "seed": seed if seed is not None else JOIN_DEFAULTS["seed"],
        "negative_prompt": or_default(negative_prompt, "negative_prompt"),
        "priority": or_default(priority, "priority"),
        "parent_generation_id": parent_generation_id,
        "phase_config": final_phase_config,
        "advanced_mode": True,
        "motion_mode": or_default(motion_mode, "motion_mode"),
        "selected_phase_preset_id": or_default(selected_phase_preset_id, "selected_phase_preset_id"),
    }
    if resolution:
        details["resolution"] = list(resolution)
    if fps:
        details["fps"] = fps
    if use_input_video_resolution is not None:
        details["use_input_video_resolution"] = use_input_video_resolution
    if use_input_video_fps is not None:
        details["use_input_video_fps"] = use_input_video_fps
    if audio_url:
        details["audio_url"] = audio_url
    if isinstance(vid2vid_init_strength, int | float) and vid2vid_init_strength > 0:
        details["vid2vid_init_strength"] = vid2vid_init_strength
    # L339-355
    if loop_first_clip:
        details["loop_first_clip"] = True
    if based_on:
        details["based_on"] = based_on
    if loras:
        details["additional_loras"] = path_loras_to_strength_record(loras)
    if video_edit:
        details["video_edit_mode"] = True
        for key in ("source_video_url", "source_video_fps", "source_video_duration", "source_video_total_frames"):
            details[key] = video_edit.get(key)
        details["portions_to_regenerate"] = video_edit.get("portions_to_regenerate")
    # L357-373
    overrides: list[dict[str, Any]] = []
    for index in range(joins):
        override = per_join_settings[index] if per_join_settings and index < len(per_join_settings) else None
        record: dict[str, Any] = {}
        if override:
            record = {key: override[key] for key in _PER_JOIN_KEYS if override.get(key) is not None}
            if override.get("loras"):
                record["additional_loras"] = path_loras_to_strength_record(override["loras"])
        overrides.append(record)
    if any(overrides):
        details["per_join_settings"] = overrides
    details = _drop_undefined(details)

    # L375-409
    resolution_display = f"{resolution[0]}x{resolution[1]}" if resolution else None
    overrides_count = len([item for item in per_join_settings or [] if item])
    payload = compose_task_family_payload(
        task_family="join_clips",
        orchestrator_details=details,
        orchestration_contract=build_orchestration_contract(
            task_family="join_clips",
            orchestrator_task_id=task_id,
            run_id=run_id,
            parent_generation_id=parent_generation_id,
            shot_id=shot_id,
            based_on=based_on,
            generation_routing="orchestrator",
            sibling_lookup="run_id",
        ),
        task_view_contract=build_task_view_contract(
            input_images=[clip["url"] for clip in clips],
            prompt=prompt,
            negative_prompt=negative_prompt,
            model_name=model,
            resolution=resolution_display,
        ),
        family_contract={
            "contract_version": TASK_FAMILY_CONTRACT_VERSION,
            "mode": join_mode,
            "run_id": run_id,
            "clips": [clip["url"] for clip in clips],
            "overrides_count": overrides_count,
            "has_audio": bool(audio_url),
        },
    )
    # L411-415
    params = {**payload, "parent_generation_id": parent_generation_id}
    if tool_type:
        params["tool_type"] = tool_type
    return _as_json(_drop_undefined(params))


# ---------------------------------------------------------------------------------------------------------------
# edit_video_orchestrator (the resolver passes the frontend's orchestrator_details through)
# ---------------------------------------------------------------------------------------------------------------


def edit_video_portion(
    start_seconds: float,
    end_seconds: float,
    *,
    fps: float,
    total_frames: int,
    gap_frame_count: int,
    prompt: str = "",
    producer: str = "lightbox",
) -> dict[str, Any]:
    """One `portions_to_regenerate` entry: src/shared/lib/video/replaceFrameRanges.ts L18-40. The lightbox renames
    the time keys to start_time_seconds / end_time_seconds (src/domains/media-lightbox/hooks/modes/
    useVideoEditingSelections.ts L159-170); the Edit Video tool keeps start_time / end_time."""
    start_frame = max(0, round(start_seconds * fps))
    end_frame = min(total_frames, round(end_seconds * fps))
    time_keys = ("start_time_seconds", "end_time_seconds") if producer == "lightbox" else ("start_time", "end_time")
    return {
        "start_frame": start_frame,
        "end_frame": end_frame,
        time_keys[0]: start_seconds,
        time_keys[1]: end_seconds,
        "frame_count": end_frame - start_frame,
        "gap_frame_count": gap_frame_count,
        "prompt": prompt,
    }


def _cap_context_frames(context_frame_count: int, total_frames: int, portions: list[dict[str, Any]]) -> int:
    """src/shared/lib/video/replaceFrameRanges.ts L42-71 and L91-103: below the shortest kept stretch."""
    ordered = sorted(portions, key=lambda portion: portion["start_frame"])
    shortest = total_frames
    keepers = []
    if ordered:
        keepers.append(ordered[0]["start_frame"])
        keepers += [nxt["start_frame"] - cur["end_frame"] for cur, nxt in zip(ordered, ordered[1:], strict=False)]
        keepers.append(total_frames - ordered[-1]["end_frame"])
    for length in keepers:
        if length > 0:
            shortest = min(shortest, length)
    return min(context_frame_count, max(1, shortest - 1))


def edit_video_params(
    source_video_url: str,
    portions_to_regenerate: list[dict[str, Any]],
    *,
    source_video_total_frames: int,
    source_video_fps: float = 16,
    producer: str = "lightbox",
    parent_generation_id: str | None = None,
    run_id: str | None = None,
    prompt: str = "",
    negative_prompt: str = "",
    enhance_prompt: bool = False,
    priority: int = 0,
    model: str = "wan_2_2_vace_lightning_baseline_2_2_2",
    resolution: tuple[int, int] | list[int] = (64, 64),
    seed: int = 789,
    context_frame_count: int = 8,
    gap_frame_count: int = 12,
    num_inference_steps: int = 6,
    guidance_scale: float = 3,
    loras: list[dict[str, Any]] | None = None,
    phase_config: dict[str, Any] | None = None,
    motion_mode: str = "basic",
    selected_phase_preset_id: str | None = "__builtin_vace_default__",
) -> dict[str, Any]:
    """An edit_video_orchestrator row's params: resolvers/editVideoOrchestrator.ts L26-40 wraps the
    `orchestrator_details` the frontend built, untouched. Two producers:

    - producer="lightbox" (media lightbox): src/domains/media-lightbox/hooks/modes/videoEditingTaskPayload.ts
      L71-134, called from useVideoEditing.ts L73-113 with fps 16 (L22), seed -1, 6 steps, guidance 3, the fixed
      3-phase config, replace_mode True; input = {orchestrator_details, tool_type "edit-video",
      parent_generation_id}.
    - producer="edit_tool" (Edit Video tool, replace mode): src/tools/edit-video/hooks/useReplaceMode.ts L276-346:
      the video's real fps, phase_config = saved or vaceDefaults DEFAULT_VACE_PHASE_CONFIG with user LoRAs merged
      in basic mode, plus motion_mode, selected_phase_preset_id and based_on (details and input).

    Defaults: context 8 / gap 12 are editVideoSettings' defaults (src/shared/settings/config/editVideoDefaults.ts
    L21-24); seed 789 instead of the app's -1 so tests are deterministic; resolution (64, 64) instead of the
    project's aspect-ratio tuple / [902, 508].
    """
    context = _cap_context_frames(context_frame_count, source_video_total_frames, portions_to_regenerate)
    details: dict[str, Any] = {
        "run_id": run_id or generate_run_id(),
        "priority": priority,
        "tool_type": "edit-video",
        "source_video_url": source_video_url,
        "source_video_fps": source_video_fps,
        "source_video_total_frames": source_video_total_frames,
        "portions_to_regenerate": portions_to_regenerate,
        "model": model,
        "resolution": list(resolution),
        "seed": seed,
        "context_frame_count": context,
        "gap_frame_count": gap_frame_count,
        "replace_mode": True,
        "keep_bridging_images": False,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "enhance_prompt": enhance_prompt,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
    }
    params: dict[str, Any] = {}
    if producer == "lightbox":
        details["phase_config"] = phase_config or lightbox_edit_phase_config()
        details["parent_generation_id"] = parent_generation_id
    elif producer == "edit_tool":
        base = phase_config or join_vace_3phase_config()
        details["phase_config"] = (
            base if motion_mode == "advanced" else _with_user_loras(base, loras, multi_stage_aware=False)
        )
        details["motion_mode"] = motion_mode
        details["selected_phase_preset_id"] = selected_phase_preset_id if selected_phase_preset_id else _NULL
        details["parent_generation_id"] = parent_generation_id
        details["based_on"] = parent_generation_id
    else:
        raise ValueError(f"unknown producer {producer!r}")
    if loras:
        details["loras"] = [{"path": lora["path"], "strength": lora["strength"]} for lora in loras]
    # resolvers/editVideoOrchestrator.ts L32-37
    params["orchestrator_details"] = _drop_undefined(details)
    params["tool_type"] = "edit-video"
    if parent_generation_id:
        params["parent_generation_id"] = parent_generation_id
        if producer == "edit_tool":
            params["based_on"] = parent_generation_id
    return _as_json(params)
