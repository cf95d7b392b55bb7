"""The seeds' configurations as task payloads: each runs through payload validation, resolution and the plan.
Later issues run the same files end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from source.cli.plan import explain_payload
from source.params import (
    TravelOrchestratorParams,
    TravelSegmentParams,
    levels_of,
    parse_model,
    plan_from_resolved,
    redact,
    resolve_generation,
)
from Wan2GP.catalog import load_catalog
from Wan2GP.schedule import GenerationPlan

HERE = Path(__file__).resolve().parent
PARAMS_MODELS = {"travel_orchestrator": TravelOrchestratorParams, "travel_segment": TravelSegmentParams}
HIGH_22 = "https://huggingface.co/lightx2v/Wan2.2-Lightning/resolve/main/Wan2.2-T2V-A14B-4steps-lora-250928/high_noise_model.safetensors"
LOW_22 = "https://huggingface.co/lightx2v/Wan2.2-Lightning/resolve/main/Wan2.2-T2V-A14B-4steps-lora-250928/low_noise_model.safetensors"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def load(name: str) -> dict:
    return json.loads((HERE / name).read_text())


def run_through(name: str, catalog) -> tuple[object, GenerationPlan, dict]:
    row = load(name)
    payload = parse_model(PARAMS_MODELS[row["task_type"]], row["params"])
    levels = levels_of(payload)
    model = catalog.get(levels.model_name(), warn=False)
    resolved = resolve_generation(levels, model)
    plan = plan_from_resolved(resolved)
    # the plan explainer says the same thing about the same file
    explained = explain_payload(row, catalog=catalog).plan
    assert replace(explained, warnings=()) == replace(plan, warnings=())
    return payload, plan, resolved.as_params()


def test_every_reproducer_file_is_covered():
    assert {path.name for path in HERE.glob("*.json")} == {
        "seed_000_i2v_lightning_2phase.json",
        "seed_001_run1_no_phase_config.json",
        "seed_001_run2_3phase.json",
    }
    for path in HERE.glob("*.json"):
        row = json.loads(path.read_text())
        assert row["task_type"] in PARAMS_MODELS and isinstance(row["params"], dict) and row["description"]


def test_seed_000_two_phase_switches_to_the_low_noise_expert(catalog):
    payload, plan, params = run_through("seed_000_i2v_lightning_2phase.json", catalog)
    assert params["model"] == "wan_2_2_i2v_lightning_baseline_2_2_2"
    assert params["video_length"] == 81 and params["resolution"] == "902x508" and params["seed"] == 12345
    assert plan.guidance_phases == 2 and plan.model_switch_phase == 1
    assert plan.switch_threshold == 826.1000160879601
    assert [s.guidance for s in plan.steps] == [1.0] * 6
    # upstream's default model_switch_phase=2 kept this run on the high-noise expert for all 6 steps
    assert [s.expert for s in plan.steps] == ["high"] * 3 + ["low"] * 3
    assert plan.expert_switch_step() == 3
    assert plan.lora_multipliers == ("1.2;0", "0.5;0.8", "0;1.0")
    assert [s.lora_multipliers for s in plan.steps] == [(1.2, 0.5, 0.0)] * 3 + [(0.0, 0.8, 1.0)] * 3


def test_seed_001_run_1_without_phase_config(catalog):
    payload, plan, params = run_through("seed_001_run1_no_phase_config.json", catalog)
    details = payload.orchestrator_details
    assert details.segment_frames_expanded == [61, 61] and details.frame_overlap_expanded == [6]
    assert details.steps == 6 and details.phase_config is None
    assert params["seed"] == 789 and params["resolution"] == "768x576"
    assert params["negative_prompt"] == "cut, blurry, fade"
    assert params["model"] == "lightning_baseline_2_2_2"  # the name the payload used; the catalog resolves the alias
    assert plan.num_inference_steps == 6 and plan.sample_solver == "euler" and plan.flow_shift == 5
    assert [s.phase for s in plan.steps] == [1, 1, 2, 2, 3, 3]
    assert [s.guidance for s in plan.steps] == [3, 3, 1, 1, 1, 1]
    assert [s.expert for s in plan.steps] == ["high"] * 4 + ["low"] * 2
    assert plan.lora_names == () and all(s.lora_multipliers == () for s in plan.steps)
    assert (
        redact(load("seed_001_run1_no_phase_config.json"))["params"]["orchestrator_details"]["openai_api_key"] == "***"
    )


def test_seed_001_run_2_three_phases_two_loras(catalog):
    payload, plan, params = run_through("seed_001_run2_3phase.json", catalog)
    assert payload.orchestrator_details.segment_frames_expanded == [53, 45]
    assert params["activated_loras"] == [HIGH_22, LOW_22]
    assert params["loras_multipliers"] == "0.75;1.0;0 0;0;1.0"
    assert plan.lora_multipliers == ("0.75;1.0;0", "0;0;1.0")
    assert [f"{t:.1f}" for t in plan.timesteps] == ["1000.0", "952.4", "882.5", "769.7", "556.8", "5.0"]
    assert (plan.switch_threshold, plan.switch_threshold2) == (917.4817575573454, 663.2310443522647)
    assert [s.lora_multipliers[0] for s in plan.steps] == [0.75, 0.75, 1, 1, 0, 0]
    assert [s.lora_multipliers[1] for s in plan.steps] == [0, 0, 0, 0, 1, 1]
    assert [s.guidance for s in plan.steps] == [3, 3, 1, 1, 1, 1]
    assert [s.expert for s in plan.steps] == ["high"] * 4 + ["low"] * 2
    assert plan.warnings == ()
