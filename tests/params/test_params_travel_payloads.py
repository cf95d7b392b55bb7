"""source/params/travel.py and generation.py: the payloads the task handlers exchange."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from source.params import PayloadError, parse_model
from source.params.payloads import GenerationTaskParams
from source.params.resolve import generation_params
from source.params.travel import (
    GenerationSpec,
    SegmentTaskParams,
    StitchTaskParams,
    TravelOrchestratorParams,
    generation_params_from_details,
)
from Wan2GP.catalog import load_catalog

REPRODUCERS = Path(__file__).resolve().parents[1] / "reproducers"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def run2_details() -> dict:
    row = json.loads((REPRODUCERS / "seed_001_run2_3phase.json").read_text())
    return row["params"]["orchestrator_details"]


def test_generation_spec_from_a_three_phase_orchestrator(catalog):
    params = parse_model(TravelOrchestratorParams, {"orchestrator_details": run2_details()})
    spec, warnings = generation_params_from_details(
        params.orchestrator_details, catalog.get("lightning_baseline_2_2_2")
    )
    assert warnings == []
    assert spec.wgp_params() == {
        "num_inference_steps": 6,
        "guidance_scale": 3.0,
        "guidance2_scale": 1.0,
        "guidance3_scale": 1.0,
        "guidance_phases": 3,
        "switch_threshold": 917.4817575573454,
        "switch_threshold2": 663.2310443522647,
        "model_switch_phase": 2,
        "flow_shift": 5.0,
        "sample_solver": "euler",
    }
    assert spec.lora_multipliers == ["0.75;1.0;0", "0;0;1.0"]
    assert [name.rsplit("/", 1)[1] for name in spec.lora_names] == [
        "high_noise_model.safetensors",
        "low_noise_model.safetensors",
    ]
    assert spec.sources["switch_threshold"] == "orchestrator_details.phase_config"


def test_plain_orchestrator_keys_and_a_warning(catalog):
    details = run2_details()
    details["phase_config"]["num_phases"] = 2  # auto-corrected to 3
    details["control_net_weight"] = 0.8
    params = parse_model(TravelOrchestratorParams, {"orchestrator_details": details})
    spec, warnings = generation_params_from_details(params.orchestrator_details, catalog.get("wan_tiny_vace"))
    assert (
        spec.control_net_weight == 0.8
        and spec.sources["control_net_weight"] == "orchestrator_details.control_net_weight"
    )
    assert len(warnings) == 1 and "num_phases" in warnings[0]


def test_orchestrator_level_errors_name_the_field(catalog):
    details = run2_details()
    del details["phase_config"]
    details["lora_names"] = ["a.safetensors"]
    details["lora_multipliers"] = ["0.75;1.0;0"]
    details["guidance_phases"] = 2
    params = parse_model(TravelOrchestratorParams, {"orchestrator_details": details})
    with pytest.raises(PayloadError) as error:
        generation_params_from_details(params.orchestrator_details, catalog.get("wan_tiny_vace"))
    assert error.value.path == "orchestrator_details.lora_multipliers[0]"
    assert "guidance_phases is 2" in str(error.value)


def test_segment_row_round_trip():
    spec = GenerationSpec(num_inference_steps=4, lora_names=["x.safetensors"], lora_multipliers=["1;0"])
    segment = SegmentTaskParams(
        orchestrator_task_id_ref="orch",
        segment_index=1,
        model_name="wan_tiny_vace",
        travel_mode="vace",
        parsed_resolution_wh="64x64",
        segment_frames_target=9,
        frame_overlap_from_previous=2,
        start_image_url=None,
        base_prompt="a prompt",
        seed_to_use=5,
        generation=spec,
    )
    row = segment.model_dump(mode="json", exclude_none=True)
    json.dumps(row)
    again = parse_model(SegmentTaskParams, row)
    assert again == segment
    assert again.generation.wgp_params() == {"num_inference_steps": 4}
    with pytest.raises(PayloadError) as error:
        parse_model(SegmentTaskParams, {k: v for k, v in row.items() if k != "segment_frames_target"})
    assert error.value.path == "segment_frames_target"


def test_stitch_row():
    stitch = StitchTaskParams(
        orchestrator_task_id_ref="orch",
        orchestrator_run_id="run",
        num_total_segments_generated=2,
        frame_overlap_settings_expanded=[6],
        segment_frames=[61, 61],
        expected_final_frames=116,
    )
    assert parse_model(StitchTaskParams, stitch.model_dump(mode="json", exclude_none=True)) == stitch
    with pytest.raises(PayloadError) as error:
        parse_model(StitchTaskParams, {"orchestrator_run_id": "r", "num_total_segments_generated": 1})
    assert error.value.path == "orchestrator_task_id_ref"


def test_orchestrator_without_count_or_resolution():
    details = run2_details()
    del details["num_new_segments_to_generate"], details["parsed_resolution_wh"]
    details["frame_overlap_expanded"] = 4
    parsed = parse_model(TravelOrchestratorParams, {"orchestrator_details": details}).orchestrator_details
    assert parsed.segment_count == 2 and parsed.frame_overlap_expanded == [4]
    assert parsed.parsed_resolution_wh is None and parsed.model_type == "vace"


def test_generation_task_params_wgp_params():
    params = parse_model(
        GenerationTaskParams,
        {
            "model_name": "t2v",
            "prompt": "a fox",
            "steps": 8,
            "video_length": 17,
            "lora_names": ["https://x/a.safetensors"],
            "lora_multipliers": [0.5],
            "unknown_reigh_key": 1,
        },
    )
    assert params.model == "t2v"
    assert generation_params(params) == {
        "prompt": "a fox",
        "video_length": 17,
        "num_inference_steps": 8,
        "activated_loras": ["https://x/a.safetensors"],
        "loras_multipliers": "0.5",
    }
    assert generation_params(params)["activated_loras"] == ["https://x/a.safetensors"]
    phased = parse_model(
        GenerationTaskParams,
        {"num_inference_steps": 20, "phase_config": {"steps_per_phase": [2, 2], "phases": [{}, {}]}},
    )
    assert generation_params(phased)["num_inference_steps"] == 4 and generation_params(phased)["activated_loras"] == []


def test_a_segment_row_written_by_the_orchestrator_explains_like_the_orchestrator(catalog):
    from source.cli.plan import explain_payload

    details = parse_model(TravelOrchestratorParams, {"orchestrator_details": run2_details()}).orchestrator_details
    model = catalog.get("lightning_baseline_2_2_2")
    spec, _ = generation_params_from_details(details, model)
    row = SegmentTaskParams(
        model_name=model.id, parsed_resolution_wh="768x576", segment_frames_target=53, seed_to_use=789, generation=spec
    ).model_dump(mode="json", exclude_none=True)
    explained = explain_payload({"task_type": "travel_segment", "params": row}, catalog=catalog)
    assert explained.plan.lora_multipliers == ("0.75;1.0;0", "0;0;1.0")
    assert [s.expert for s in explained.plan.steps] == ["high"] * 4 + ["low"] * 2
    assert explained.resolved.source("switch_threshold") == "orchestrator_details.phase_config"
    assert explained.resolved.value("video_length") == 53


def _pair_phase_config(loras: list[dict]) -> dict:
    return {"num_phases": 2, "steps_per_phase": [1, 1], "phases": [{"loras": loras}, {"loras": []}]}


def test_loras_resolve_as_two_slots_per_level(catalog):
    # The run: a phase_config with a speed LoRA plus a listed style LoRA that is also in the phase_config.
    details = {
        "model_name": "wan_tiny_i2v_2_2",
        "segment_frames_expanded": [9, 9, 9],
        "frame_overlap_expanded": [2, 2],
        "phase_config": {
            "num_phases": 2,
            "steps_per_phase": [2, 2],
            "phases": [
                {"loras": [{"url": "speed", "multiplier": "1"}, {"url": "style", "multiplier": "0.2"}]},
                {"loras": []},
            ],
        },
        "additional_loras": {"style": 0.9},
        # Pair 1: its own phase_config without LoRAs. Pair 2: its own listed LoRA.
        "phase_configs_expanded": [None, _pair_phase_config([]), None],
        "loras_per_segment_expanded": [None, None, [{"path": "pair", "strength": 0.5}]],
    }
    params = parse_model(TravelOrchestratorParams, {"orchestrator_details": details})
    model = catalog.get("wan_tiny_i2v_2_2")
    specs = [generation_params_from_details(params.orchestrator_details, model, i)[0] for i in range(3)]
    # A LoRA in both slots runs once, at the listed strength.
    assert (specs[0].lora_names, specs[0].lora_multipliers) == (["speed", "style"], ["1;0", "0.9"])
    # The pair's phase_config replaces the run's phase LoRAs (with none), the listed slot stays.
    assert (specs[1].lora_names, specs[1].lora_multipliers) == (["style"], ["0.9"])
    assert specs[1].num_inference_steps == 2
    # The pair's listed LoRA replaces the run's listed slot, the run's phase LoRAs stay.
    assert (specs[2].lora_names, specs[2].lora_multipliers) == (["speed", "style", "pair"], ["1;0", "0.2;0", "0.5"])
    assert specs[2].sources["activated_loras"] == (
        "orchestrator_details.phase_config + orchestrator_details.loras_per_segment_expanded[2]"
    )
