"""Parameter checking and resolution: names, types, geometry, defaults and precedence (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from Wan2GP.engine import InvalidGenerationParams, WanEngine
from Wan2GP.request import MAX_SEED
from Wan2GP.wgp import generate_video


def test_unknown_names_are_listed_and_nothing_runs(engine: WanEngine, tmp_path: Path) -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        generate_video(model="wan_tiny_t2v", prompt="a cat", output_dir=tmp_path, engine=engine, steps=4, guidance=3)
    assert set(caught.value.fields) == {"steps", "guidance"}
    assert "steps" in str(caught.value) and "guidance" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("resolution", ["64by64", "64x", "x64", "8x8", "-64x64", 64])
def test_bad_resolution_names_resolution(engine: WanEngine, resolution: object) -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve({"model": "wan_tiny_t2v", "resolution": resolution})
    assert caught.value.fields == ("resolution",)
    assert str(caught.value).startswith("resolution")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_inference_steps", "many"),
        ("num_inference_steps", 0),
        ("guidance_scale", "strong"),
        ("flow_shift", -1),
        ("sample_solver", "lcm"),
        ("guidance_phases", 4),
        ("activated_loras", "not-a-list.safetensors"),
        ("video_prompt_type", "VP"),
        ("output_filename", "../escape.mp4"),
    ],
)
def test_bad_values_name_their_field(engine: WanEngine, name: str, value: object) -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve({"model": "wan_tiny_t2v", name: value})
    assert caught.value.fields == (name,)
    assert name in str(caught.value)


def test_unknown_model_names_model(engine: WanEngine) -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve({"model": "no_such_model"})
    assert caught.value.fields == ("model",)
    assert "wan_tiny_t2v" in str(caught.value)  # the message lists the known models


def test_inputs_the_model_cannot_use_are_rejected(engine: WanEngine, tmp_path: Path) -> None:
    image = tmp_path / "start.png"
    image.write_bytes(b"not used")
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve({"model": "wan_tiny_t2v", "image_start": str(image)})
    assert caught.value.fields == ("image_start",)
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve({"model": "wan_tiny_i2v_2_2", "video_guide": str(image)})
    assert caught.value.fields == ("video_guide",)
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve({"model": "wan_tiny_i2v_2_2", "image_start": str(tmp_path / "missing.png")})
    assert caught.value.fields == ("image_start",)


def test_geometry_is_floored_like_upstream(engine: WanEngine) -> None:
    request = engine.resolve({"model": "wan_tiny_t2v", "resolution": "902x508", "video_length": 12})
    assert (request.width, request.height, request.num_frames) == (896, 496, 9)
    assert request.fps == 16
    assert engine.resolve({"model": "wan_tiny_t2v", "video_length": 2}).num_frames == 5  # minimum 5 frames


def test_vace_frame_minimum_applies_to_real_models_only(engine: WanEngine) -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve({"model": "vace_14B", "video_length": 9})
    assert caught.value.fields == ("video_length",)
    assert engine.resolve({"model": "vace_14B", "video_length": 17}).num_frames == 17
    assert engine.resolve({"model": "wan_tiny_vace", "video_length": 9}).num_frames == 9


def test_precedence_system_then_definition_then_caller(engine: WanEngine) -> None:
    from_definition = engine.resolve({"model": "wan_tiny_i2v_2_2"})
    plan = from_definition.plan
    assert (from_definition.width, from_definition.height, from_definition.num_frames) == (64, 64, 9)
    assert plan.num_inference_steps == 4 and plan.sample_solver == "euler" and plan.guidance_phases == 2
    assert [step.expert for step in plan.steps] == ["high", "high", "low", "low"]
    assert from_definition.seed == 12345

    overridden = engine.resolve(
        {"model": "wan_tiny_i2v_2_2", "num_inference_steps": 6, "sample_solver": "unipc", "seed": None}
    )
    assert overridden.plan.num_inference_steps == 6 and overridden.plan.sample_solver == "unipc"
    assert overridden.seed == 12345  # None means "not given": the model's seed applies

    # A value the definition does not set comes from the system defaults (WGP's control_net_weight 1.0).
    assert engine.resolve({"model": "wan_tiny_vace"}).control_net_weight == 1.0


def test_random_seed_is_drawn_and_reported(engine: WanEngine) -> None:
    seeds = {engine.resolve({"model": "wan_tiny_t2v", "seed": -1}).seed for _ in range(5)}
    assert all(0 <= seed <= MAX_SEED for seed in seeds)
    assert len(seeds) > 1


def test_bad_lora_multipliers_name_the_field(engine: WanEngine) -> None:
    with pytest.raises(InvalidGenerationParams) as caught:
        engine.resolve(
            {
                "model": "wan_tiny_i2v_2_2",
                "activated_loras": ["a.safetensors"],
                "loras_multipliers": "1;0;1",  # 3 phase values for a 2-phase model
            }
        )
    assert caught.value.fields == ("loras_multipliers",)
