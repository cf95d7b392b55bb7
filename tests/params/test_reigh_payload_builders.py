"""Self-checks for tests/reigh_payloads.py: each assertion is a structural fact of Reigh's create-task resolvers
(banodoco/reigh-app at 3a6fd3d8, paths relative to supabase/functions/create-task/resolvers/), cited by line, so a
wrong transcription fails here before it misleads a worker test."""

from __future__ import annotations

import re

import pytest
from reigh_payloads import (
    WAN_I2V_ADVANCED_2PHASE_MODEL,
    edit_video_params,
    edit_video_portion,
    generate_run_id,
    generate_task_id,
    individual_travel_segment_params,
    join_clips_params,
    join_vace_3phase_config,
    lightbox_edit_phase_config,
    lightning_i2v_2phase_config,
    lightning_vace_3phase_config,
    travel_between_images_params,
    travel_between_images_task,
)

IMAGES = ["http://127.0.0.1/storage/a.png", "http://127.0.0.1/storage/b.png", "http://127.0.0.1/storage/c.png"]
IDS = {"run_id": "20260411120000000", "orchestrator_task_id": "sm_travel_orchestrator_26041112_abc123"}
CONTRACT_KEYS = {"contract_version", "task_family", "orchestrator_details", "orchestration_contract"}
CONTRACT_KEYS |= {"task_view_contract", "family_contract"}


def travel(**overrides):
    kwargs = {"base_prompts": ["a lighthouse"], "segment_frames": [61], "frame_overlap": [10], **IDS, **overrides}
    return travel_between_images_params(IMAGES, **kwargs)


# ---- travel_between_images (travelBetweenImages.ts) -----------------------------------------------------------


def test_travel_params_wrap_the_composed_payload_under_orchestrator_details():
    params = travel(parent_generation_id="parent-1", generation_name="take 2")
    # L327-338: tool_type, orchestrator_details, and parent_generation_id / generation_name only when given
    assert set(params) == {"tool_type", "orchestrator_details", "parent_generation_id", "generation_name"}
    assert params["tool_type"] == "travel-between-images"
    assert set(travel()) == {"tool_type", "orchestrator_details"}


def test_travel_details_are_spread_and_nested_again():
    details = travel()["orchestrator_details"]
    # taskContracts.ts L175-183: {...details, contract_version, task_family, orchestrator_details: details, ...}
    nested = details["orchestrator_details"]
    assert {key: value for key, value in details.items() if key not in CONTRACT_KEYS} == nested
    assert "orchestrator_details" not in nested and "orchestration_contract" not in nested
    assert details["contract_version"] == 1 and details["task_family"] == "travel_between_images"


def test_travel_contracts():
    details = travel(shot_id="shot-1", parent_generation_id="parent-1")
    details = details["orchestrator_details"]
    # taskContracts.ts L1, L120-141; travelBetweenImages.ts L282-290
    assert details["orchestration_contract"] == {
        "contract_version": 3,
        "task_family": "travel_between_images",
        "orchestrator_task_id": IDS["orchestrator_task_id"],
        "run_id": IDS["run_id"],
        "parent_generation_id": "parent-1",
        "shot_id": "shot-1",
        "generation_routing": "orchestrator",
        "sibling_lookup": "run_id",
    }
    family = details["family_contract"]
    # taskContracts.ts L220-240; travelBetweenImages.ts L254-257, L298-304
    assert set(family) == {
        "contract_version",
        "segment_regen_mode",
        "image_count",
        "segment_count",
        "has_pair_ids",
        "read_contract",
    }
    assert (family["image_count"], family["segment_count"], family["has_pair_ids"]) == (3, 2, False)
    assert family["segment_regen_mode"] == "segment_regen_from_order"
    # travelBetweenImages.ts L268: `selected_phase_preset_id ?? null` keeps an explicit null
    assert family["read_contract"]["selected_phase_preset_id"] is None
    assert "selected_phase_preset_id" in family["read_contract"]
    # taskContracts.ts L149: base_prompt "" (what the frontend sends) leaves task_view_contract without a prompt
    assert "prompt" not in details["task_view_contract"]


@pytest.mark.parametrize("frontend_defaults", [True, False])
def test_basic_mode_defaults(frontend_defaults):
    details = travel(frontend_defaults=frontend_defaults)["orchestrator_details"]
    # L73 steps 20 and L81 amount_of_motion 0.5, written only when advanced_mode is falsy (L211, L228-230)
    assert details["steps"] == 20 and details["amount_of_motion"] == 0.5
    assert "regenerate_anchors" not in details
    assert details["advanced_mode"] is False and details["independent_segments"] is True  # L231, L233
    assert details["seed_base"] == 789 and details["generation_source"] == "batch"  # L72, L184, L210


def test_resolver_defaults_without_frontend_values():
    details = travel(frontend_defaults=False)["orchestrator_details"]
    # L70-82 fallbacks: show_input_images True, generation_mode "batch", dimension_source "project"
    assert (details["show_input_images"], details["generation_mode"], details["dimension_source"]) == (
        True,
        "batch",
        "project",
    )
    # L192, L209, L221: base_prompt / model_type / shot_id are `undefined` when not sent, so absent
    assert not {"base_prompt", "model_type", "shot_id", "motion_mode"} & set(details)
    assert details["negative_prompts_expanded"] == ["", ""]  # L169-170


def test_advanced_mode_drops_steps_and_motion_and_sets_regenerate_anchors():
    phase_config = lightning_i2v_2phase_config()
    params = travel(advanced_mode=True, phase_config=phase_config, model_name=WAN_I2V_ADVANCED_2PHASE_MODEL)
    details = params["orchestrator_details"]
    # L211 and L228-230
    assert "steps" not in details and "amount_of_motion" not in details
    assert details["regenerate_anchors"] is False and details["advanced_mode"] is True
    assert details["phase_config"] == phase_config  # L247-249
    # L270: the read contract still records amount_of_motion
    assert details["family_contract"]["read_contract"]["amount_of_motion"] == 0.5


def test_per_pair_lists_are_sliced_to_the_segment_count():
    config = lightning_vace_3phase_config()
    details = travel(
        pair_phase_configs=[None, config, config],
        pair_loras=[[{"path": "https://x/l.safetensors", "strength": 0.7}], None, None, None],
        pair_motion_settings=[None, None],
    )["orchestrator_details"]
    # L195-203: `.slice(0, numSegments)` when any entry is non-null; all-null lists are left out
    assert details["phase_configs_expanded"] == [None, config]
    assert details["loras_per_segment_expanded"] == [[{"path": "https://x/l.safetensors", "strength": 0.7}], None]
    assert "motion_settings_expanded" not in details


def test_expand_array_to_count_repeats_only_single_values():
    details = travel(segment_frames=[61, 45, 33], frame_overlap=[10])["orchestrator_details"]
    # L99-106: length 1 -> repeated; any other mismatched length passes through unchanged
    assert details["frame_overlap_expanded"] == [10, 10]
    assert details["segment_frames_expanded"] == [61, 45, 33]
    assert details["num_new_segments_to_generate"] == 2  # L167


def test_loras_become_a_path_to_strength_record():
    details = travel(loras=[{"path": "https://x/a.safetensors", "strength": 0.8}])["orchestrator_details"]
    assert details["additional_loras"] == {"https://x/a.safetensors": 0.8}  # L150-158, L243-246


def test_turbo_mode_gives_task_type_wan_2_2_i2v_with_the_same_params():
    kwargs = {"base_prompts": ["x"], "segment_frames": [61], "frame_overlap": [10], **IDS}
    turbo_type, turbo_params = travel_between_images_task(IMAGES, turbo_mode=True, **kwargs)
    plain_type, plain_params = travel_between_images_task(IMAGES, **kwargs)
    assert (turbo_type, plain_type) == ("wan_2_2_i2v", "travel_orchestrator")  # L322-323
    assert turbo_params == plain_params  # L327: one params builder for both


def test_resolution_seed_and_ids():
    # resolution.ts L51-67: no custom resolution -> the project's aspect ratio
    details = travel(resolution=None, aspect_ratio="16:9")["orchestrator_details"]
    assert details["parsed_resolution_wh"] == "902x508"
    # seed.ts L16-23, L35-39: outside 0..0x7fffffff is a validation error
    with pytest.raises(ValueError):
        travel(seed=2**31)
    # ids.ts L12-20
    assert re.fullmatch(r"\d{17}", generate_run_id())
    assert re.fullmatch(r"sm_travel_orchestrator_\d{8}_[0-9a-f]{6}", generate_task_id("sm_travel_orchestrator"))


def test_travel_guidance_and_continuation_pass_through():
    guidance = {
        "kind": "vace",
        "mode": "flow",
        "videos": [{"path": "http://x/v.mp4", "start_frame": 0, "end_frame": 61, "treatment": "adjust"}],
        "strength": 1,
    }
    continuation = {"strategy": "svi_latent_chaining", "overlap_frames": 4}
    details = travel(travel_guidance=guidance, continuation_config=continuation)["orchestrator_details"]
    assert details["travel_guidance"] == guidance  # L239-241
    assert details["continuation_config"] == continuation  # L206
    assert details["independent_segments"] is False  # requestBody.ts L149 (frontend sends it)


# ---- individual_travel_segment (individualTravelSegment.ts) -----------------------------------------------------


def segment(**overrides):
    kwargs = {"project_id": "project-1", "segment_index": 1, "parent_generation_id": "parent-1", **overrides}
    return individual_travel_segment_params(IMAGES[0], IMAGES[1], **kwargs)


def test_segment_orchestrator_details_are_not_nested_twice():
    params = segment()
    # L260-289 compose with the plain details, then L339 spreads it at the top level
    assert "orchestrator_details" not in params["orchestrator_details"]
    assert params["orchestrator_details"]["generation_source"] == "individual_segment"  # L227
    assert params["task_family"] == "individual_travel_segment" and params["contract_version"] == 1
    assert params["project_id"] == "project-1"  # L294
    assert "individual_segment_params" in params  # L340


def test_segment_contracts_and_routing():
    params = segment(child_generation_id="child-1", shot_id="shot-1")
    # L252, L263-272 (taskContracts.ts L120-141)
    assert params["orchestration_contract"] == {
        "contract_version": 3,
        "task_family": "individual_travel_segment",
        "parent_generation_id": "parent-1",
        "child_generation_id": "child-1",
        "child_order": 1,
        "shot_id": "shot-1",
        "generation_routing": "variant_child",
        "sibling_lookup": "orchestrator_task_id",
        "segment_regen_mode": "segment_regen_from_order",
    }
    assert segment()["family_contract"]["generation_routing"] == "child_generation"
    # L253-255: a variant id alone already counts as "has pair shot generation id"
    variant_only = segment(start_image_variant_id="variant-1")
    assert variant_only["family_contract"]["has_pair_shot_generation_id"] is True
    assert variant_only["family_contract"]["segment_regen_mode"] == "segment_regen_from_pair"


def test_segment_phase_config_derivations():
    config = lightning_vace_3phase_config()
    config["phases"][0]["loras"].append({"url": "https://x/ramp.safetensors", "multiplier": "0.1,0.3,0.5"})
    params = segment(phase_config=config, motion_mode="advanced")
    # L224-225: steps = sum(steps_per_phase); L232-238: flow shift, guidance per phase, phase count, switch
    assert params["num_inference_steps"] == 6
    assert (params["guidance_scale"], params["guidance2_scale"], params["guidance_phases"]) == (3, 1, 3)
    assert params["model_switch_phase"] == 2
    # L310-315: lora_multipliers is a flat list of {url, multiplier: number}; a ramp string -> NaN -> 0
    assert params["lora_multipliers"][:2] == [
        {"url": config["phases"][0]["loras"][0]["url"], "multiplier": 0.75},
        {"url": "https://x/ramp.safetensors", "multiplier": 0},
    ]
    assert len(params["lora_multipliers"]) == 4
    assert params["lora_names"] == [] and params["cfg_zero_step"] == -1 and params["cfg_star_switch"] == 0
    # L240 vs L351: top level/orchestrator_details infer advanced_mode, individual_segment_params does not
    assert params["advanced_mode"] is True and params["orchestrator_details"]["advanced_mode"] is True
    assert params["individual_segment_params"]["advanced_mode"] is False
    assert params["individual_segment_params"]["phase_config"] == config  # L358


def test_segment_defaults_without_phase_config():
    params = segment(frontend_defaults=False)
    # L224-225 (6 steps), L232-238 (5, euler, 1, 1, 2 phases, switch 1), L231 model, L319 49 frames
    assert params["num_inference_steps"] == 6 and params["flow_shift"] == 5 and params["sample_solver"] == "euler"
    assert (params["guidance_scale"], params["guidance2_scale"], params["guidance_phases"]) == (1, 1, 2)
    assert params["model_name"] == "wan_2_2_i2v_lightning_baseline_2_2_2" and params["num_frames"] == 49
    assert params["make_primary_variant"] is True  # L338
    assert params["additional_loras"] == {} and params["lora_multipliers"] == []  # L213-215, L315


def test_segment_frames_clamp_and_last_segment():
    params = individual_travel_segment_params(
        IMAGES[0], project_id="p", segment_index=0, parent_generation_id="parent-1", num_frames=121
    )
    assert params["num_frames"] == 81 and params["individual_segment_params"]["num_frames"] == 81  # L319, L346
    assert params["is_last_segment"] is True and params["is_first_segment"] is True  # L306, L308
    assert params["input_image_paths_resolved"] == [IMAGES[0]]  # L204-206
    assert "end_image_url" not in params["individual_segment_params"]  # L343
    # frontend default (segmentSettings.ts L90): makePrimaryVariant false
    assert params["make_primary_variant"] is False


def test_segment_loras_record_and_continuation():
    continuation = {"strategy": "svi_latent_chaining", "overlap_frames": 4}
    params = segment(
        loras=[{"path": "https://x/a.safetensors", "strength": 1.1}, {"path": "", "strength": 1}],
        continuation_config=continuation,
        frame_overlap_from_previous=4,
    )
    assert params["additional_loras"] == {"https://x/a.safetensors": 1.1}  # loras.ts L66-79 skips empty paths
    details = params["orchestrator_details"]
    # L246-248
    assert (details["independent_segments"], details["chain_segments"]) == (False, True)
    assert details["continuation_config"] == continuation == params["continuation_config"]
    assert params["frame_overlap_from_previous"] == 4  # L320-322


# ---- join_clips (joinClips.ts) ----------------------------------------------------------------------------------

CLIPS = ["http://127.0.0.1/storage/one.mp4", "http://127.0.0.1/storage/two.mp4", "http://127.0.0.1/storage/3.mp4"]


def test_join_defaults_and_contracts():
    params = join_clips_params(CLIPS, run_id="20260411120000000", frontend_defaults=False)
    # L302-326 with TASK_DEFAULTS L113-127
    assert (params["gap_frame_count"], params["context_frame_count"], params["replace_mode"]) == (23, 15, True)
    assert params["model"] == "wan_2_2_vace_lightning_baseline_2_2_2"
    assert (params["num_inference_steps"], params["guidance_scale"]) == (6, 3)
    assert params["advanced_mode"] is True and params["selected_phase_preset_id"] == "__builtin_vace_default__"
    assert params["clip_list"] == [{"url": url} for url in CLIPS]
    # L300 + L129-180: no phase_config and no loras -> the 3-phase VACE default, `mode` kept
    assert params["phase_config"] == join_vace_3phase_config() and params["phase_config"]["mode"] == "vace"
    assert params["phase_config"]["steps_per_phase"] == [2, 2, 5]
    # L382-415: composed at the top level (not under orchestrator_details as travel is)
    assert {key: value for key, value in params.items() if key not in CONTRACT_KEYS | {"tool_type"}} == params[
        "orchestrator_details"
    ]
    assert params["family_contract"] == {
        "contract_version": 1,
        "mode": "multi_clip_join",
        "run_id": "20260411120000000",
        "clips": CLIPS,
        "overrides_count": 0,
        "has_audio": False,
    }
    assert "per_join_settings" not in params  # L370-372: only when some join has an override
    assert "parent_generation_id" not in params  # L413: undefined -> absent


def test_join_loras_go_into_every_phase_and_additional_loras():
    params = join_clips_params(CLIPS[:2], loras=[{"path": "https://x/style.safetensors", "strength": 0.9}])
    # L197-216: appended to each phase with strength.toFixed(2); L345-347 also as a record
    assert all(
        phase["loras"][-1] == {"url": "https://x/style.safetensors", "multiplier": "0.90"}
        for phase in params["phase_config"]["phases"]
    )
    assert params["additional_loras"] == {"https://x/style.safetensors": 0.9}


def test_join_per_join_settings():
    params = join_clips_params(
        CLIPS,
        per_join_settings=[{"prompt": "dissolve"}, {"gap_frame_count": 9, "loras": [{"path": "u", "strength": 1}]}],
    )
    # L218-249, L357-373
    assert params["per_join_settings"] == [{"prompt": "dissolve"}, {"gap_frame_count": 9, "additional_loras": {"u": 1}}]
    assert params["family_contract"]["overrides_count"] == 2  # L378-380
    with pytest.raises(ValueError):
        join_clips_params(CLIPS[:2], per_join_settings=[{}, {}])  # L267-273
    with pytest.raises(ValueError):
        join_clips_params(CLIPS[:1])  # L259-261


def test_join_video_edit_mode():
    edit = {"source_video_url": "http://x/src.mp4", "source_video_fps": 16, "portions_to_regenerate": []}
    params = join_clips_params(CLIPS[:2], mode="video_edit", video_edit=edit)
    assert params["video_edit_mode"] is True and params["source_video_url"] == "http://x/src.mp4"  # L348-355
    assert "source_video_duration" not in params  # undefined -> absent
    assert params["family_contract"]["mode"] == "video_edit_join"  # L288
    with pytest.raises(ValueError):
        join_clips_params(CLIPS[:2], mode="video_edit")  # L275-277


# ---- edit_video_orchestrator (editVideoOrchestrator.ts) ---------------------------------------------------------


def test_edit_video_wraps_frontend_details():
    portion = edit_video_portion(1.0, 2.0, fps=16, total_frames=80, gap_frame_count=12, prompt="a wave")
    params = edit_video_params("http://x/src.mp4", [portion], source_video_total_frames=80, parent_generation_id="g1")
    # editVideoOrchestrator.ts L32-37: orchestrator_details passed through, tool_type / parent_generation_id beside
    assert set(params) == {"orchestrator_details", "tool_type", "parent_generation_id"}
    details = params["orchestrator_details"]
    assert details["portions_to_regenerate"] == [portion]
    assert portion["start_frame"] == 16 and portion["start_time_seconds"] == 1.0  # replaceFrameRanges.ts L27-38
    assert details["context_frame_count"] == 8 and details["replace_mode"] is True
    assert details["phase_config"] == lightbox_edit_phase_config()  # videoEditingTaskPayload.ts L35-69, L124
    assert "based_on" not in params and "motion_mode" not in details
    tool = edit_video_params(
        "http://x/src.mp4", [portion], source_video_total_frames=80, parent_generation_id="g1", producer="edit_tool"
    )
    assert tool["based_on"] == "g1" and tool["orchestrator_details"]["based_on"] == "g1"  # useReplaceMode.ts L330-344
    assert tool["orchestrator_details"]["phase_config"]["steps_per_phase"] == [2, 2, 5]  # L284-287


def test_edit_video_caps_context_frames_below_the_shortest_kept_stretch():
    portion = edit_video_portion(0.25, 4.0, fps=16, total_frames=80, gap_frame_count=12)
    details = edit_video_params("http://x/src.mp4", [portion], source_video_total_frames=80)["orchestrator_details"]
    assert details["context_frame_count"] == 3  # replaceFrameRanges.ts L91-103: first kept stretch is 4 frames


# ---- phase_config presets ---------------------------------------------------------------------------------------


def test_preset_phase_configs():
    two = lightning_i2v_2phase_config()
    # src/shared/types/phaseConfig.ts L53-81
    assert (two["num_phases"], two["steps_per_phase"], two["model_switch_phase"]) == (2, [3, 3], 1)
    assert [phase["loras"][0]["multiplier"] for phase in two["phases"]] == ["1.2", "1.0"]
    three = lightning_vace_3phase_config()
    # phaseConfig.ts L86-125, with `mode` stripped as the travel frontend sends it (segmentSettingsUtils.ts L97-100)
    assert (three["num_phases"], three["steps_per_phase"], three["model_switch_phase"]) == (3, [2, 2, 2], 2)
    assert "mode" not in three and lightning_vace_3phase_config(with_mode=True)["mode"] == "vace"
    # phaseConfig.ts L154-209: a multi-stage LoRA sends its low-noise file to the last phase only
    lora = {"path": "https://x/high.safetensors", "lowNoisePath": "https://x/low.safetensors", "strength": 1}
    staged = lightning_i2v_2phase_config([{**lora, "isMultiStage": True}])
    assert [phase["loras"][-1]["url"] for phase in staged["phases"]] == [lora["path"], lora["lowNoisePath"]]
    assert staged["phases"][0]["loras"][-1]["multiplier"] == "1.00"
