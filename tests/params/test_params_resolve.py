"""Precedence with provenance (source/params/resolve.py)."""

from __future__ import annotations

import pytest

from source.params import (
    SYSTEM_DEFAULTS,
    GenerationTaskParams,
    PayloadError,
    TravelSegmentParams,
    parse_model,
    plan_from_resolved,
    resolve_payload,
)
from Wan2GP.catalog import load_catalog

PHASES_2 = {
    "steps_per_phase": [3, 3],
    "phases": [
        {"guidance_scale": 2, "loras": [{"url": "https://x/high.safetensors", "multiplier": "1.2"}]},
        {"guidance_scale": 1, "loras": [{"url": "https://x/low.safetensors", "multiplier": "1.0"}]},
    ],
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def segment(**top) -> TravelSegmentParams:
    data = {
        "segment_index": 0,
        "orchestrator_details": {
            "num_new_segments_to_generate": 1,
            "segment_frames_expanded": [61],
            "model_name": "wan_2_2_vace_lightning_baseline_2_2_2",
            "parsed_resolution_wh": "768x576",
            "seed_base": 789,
            "negative_prompt": "orchestrator negative",
            "guidance_scale": 4,
            "flow_shift": 3,
            "steps": 30,
        },
    }
    data.update(top)
    return parse_model(TravelSegmentParams, data)


def test_precedence_order_and_sources(catalog):
    model = catalog.get("wan_2_2_vace_lightning_baseline_2_2_2")
    resolved = resolve_payload(
        segment(
            segment_frames_target=65,
            flow_shift=4,
            base_prompt="",  # empty means not given
            individual_segment_params={"num_frames": 33, "base_prompt": "individual prompt", "flow_shift": 6},
        ),
        model,
    )
    # Reigh's basic-mode `steps` is num_inference_steps when nothing closer says otherwise (upstream §7).
    assert resolved["num_inference_steps"].value == 30
    assert resolved.source("num_inference_steps") == "orchestrator_details.steps"
    assert resolved.value("seed") == 789 and resolved.source("seed") == "orchestrator_details.seed_base"
    assert resolved.value("guidance_scale") == 4 and resolved["guidance_scale"].layer == "orchestrator_details"
    assert resolved.value("negative_prompt") == "orchestrator negative"
    assert resolved.value("resolution") == "768x576"
    assert resolved.value("flow_shift") == 6 and resolved.source("flow_shift") == "individual_segment_params.flow_shift"
    assert (
        resolved.value("video_length") == 33
        and resolved.source("video_length") == "individual_segment_params.num_frames"
    )
    assert resolved.value("prompt") == "individual prompt"
    assert resolved.value("sample_solver") == "euler" and resolved["sample_solver"].layer == "model"
    assert resolved.value("model") == "wan_2_2_vace_lightning_baseline_2_2_2"
    rendered = resolved.render()
    assert "flow_shift" in rendered and "<- individual_segment_params.flow_shift" in rendered


def test_system_defaults_without_a_model():
    resolved = resolve_payload(parse_model(GenerationTaskParams, {"prompt": "a cat"}))
    for name, value in SYSTEM_DEFAULTS.items():
        if name != "prompt":
            assert resolved.value(name) == value and resolved.source(name) == "system defaults"
    assert resolved.value("prompt") == "a cat" and resolved.source("prompt") == "prompt"
    plan = plan_from_resolved(resolved)
    # the engine's fallbacks (WGP factory defaults), so the explainer says what the engine will do
    assert plan.num_inference_steps == 30 and plan.sample_solver == "unipc" and plan.flow_shift == 5.0


def test_two_expert_models_default_to_two_phases(catalog):
    model = catalog.get("vace_14B_fake_cocktail_2_2")
    settings = {key: value for key, value in model.settings.items() if key != "guidance_phases"}
    bare = model.model_copy(update={"settings": settings})
    resolved = resolve_payload(parse_model(GenerationTaskParams, {}), bare)
    assert resolved.value("guidance_phases") == 2
    assert resolved.source("guidance_phases") == "model vace_14B_fake_cocktail_2_2 (2 expert(s))"


def test_zero_is_a_value_and_steps_alias_for_plain_tasks():
    resolved = resolve_payload(parse_model(GenerationTaskParams, {"seed": 0, "steps": 8}))
    assert resolved.value("seed") == 0 and resolved.source("seed") == "seed"
    assert resolved.value("num_inference_steps") == 8 and resolved.source("num_inference_steps") == "steps"


def test_phase_config_beats_its_layer_and_loses_to_higher_layers(catalog):
    model = catalog.get("wan_2_2_vace_lightning_baseline_2_2_2")
    payload = segment(guidance2_scale=7)
    payload = parse_model(
        TravelSegmentParams,
        {**payload.given(), "orchestrator_details": {**payload.orchestrator.given(), "phase_config": PHASES_2}},
    )
    resolved = resolve_payload(payload, model)
    assert (
        resolved.value("guidance_scale") == 2
        and resolved.source("guidance_scale") == "orchestrator_details.phase_config"
    )
    assert resolved.value("guidance2_scale") == 7 and resolved.source("guidance2_scale") == "guidance2_scale"
    assert resolved.value("guidance_phases") == 2 and resolved.value("model_switch_phase") == 1
    assert resolved.value("loras_multipliers") == "1.2;0 0;1.0"
    plan = plan_from_resolved(resolved)
    assert [s.expert for s in plan.steps] == ["high"] * 3 + ["low"] * 3
    assert [s.guidance for s in plan.steps] == [2, 2, 2, 7, 7, 7]
    # the model's 3-phase switch_threshold2 lingers in the resolved values but a 2-phase plan ignores it
    assert resolved.value("switch_threshold2") == 558 and plan.switch_threshold2 is None


def test_model_loras_run_first_in_the_plan_as_in_the_engine(catalog):
    model = catalog.get("optimised-t2i")
    plain = resolve_payload(
        parse_model(GenerationTaskParams, {"activated_loras": ["mine.safetensors"], "loras_multipliers": "0.3"}), model
    )
    # what the engine receives: the payload's own LoRAs (it adds the model's built-in ones itself)
    assert plain.value("activated_loras") == ["mine.safetensors"] and plain.value("loras_multipliers") == "0.3"
    plan = plan_from_resolved(plain)
    assert plan.lora_names == (*model.loras, "mine.safetensors")
    assert plan.lora_multipliers == ("1.0", "0.2", "0.5", "0.5", "0.3")
    assert plan.steps[0].lora_multipliers == (1.0, 0.2, 0.5, 0.5, 0.3)
    missing_token = plan_from_resolved(
        resolve_payload(
            parse_model(GenerationTaskParams, {"activated_loras": ["a", "b"], "loras_multipliers": "0.3"}), model
        )
    )
    assert missing_token.steps[0].lora_multipliers == (1.0, 0.2, 0.5, 0.5, 0.3, 1.0)

    with_phases = resolve_payload(parse_model(GenerationTaskParams, {"phase_config": PHASES_2}), model)
    assert with_phases.value("activated_loras") == ["https://x/high.safetensors", "https://x/low.safetensors"]
    assert any("built-in LoRAs" in w for w in with_phases.warnings)
    assert len(plan_from_resolved(with_phases).lora_names) == 6


def test_reigh_lora_spellings():
    resolved = resolve_payload(
        parse_model(GenerationTaskParams, {"lora_names": ["a", "b"], "lora_multipliers": ["1;0", "0;1"]})
    )
    assert resolved.value("activated_loras") == ["a", "b"] and resolved.value("loras_multipliers") == "1;0 0;1"
    legacy = resolve_payload(parse_model(GenerationTaskParams, {"additional_loras": {"c": 0.7}}))
    assert legacy.value("activated_loras") == ["c"] and legacy.value("loras_multipliers") == "0.7"


def test_plan_errors_name_the_payload_field_they_came_from():
    payload = segment(loras_multipliers="0.5;1;0", activated_loras=["a"])
    with pytest.raises(PayloadError) as error:
        plan_from_resolved(resolve_payload(payload))
    assert str(error.value).startswith("loras_multipliers[0]: ")
    assert "guidance_phases is 1" in str(error.value)
    nested = segment()
    nested = parse_model(
        TravelSegmentParams,
        {
            **nested.given(),
            "orchestrator_details": {
                **nested.orchestrator.given(),
                "guidance_phases": 3,
                "switch_threshold": 500,
                "switch_threshold2": 900,
            },
        },
    )
    with pytest.raises(PayloadError) as error:
        plan_from_resolved(resolve_payload(nested))
    assert error.value.path == "orchestrator_details.switch_threshold2"
