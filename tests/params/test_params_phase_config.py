"""phase_config -> WGP parameters -> plan (source/params/phase_config.py)."""

from __future__ import annotations

import pytest

from source.params import PayloadError, PhaseConfig, parse_model, phase_config_to_wgp, plan_for

HIGH = "https://huggingface.co/lightx2v/Wan2.2-Lightning/resolve/main/Wan2.2-T2V-A14B-4steps-lora-250928/high_noise_model.safetensors"
LOW = "https://huggingface.co/lightx2v/Wan2.2-Lightning/resolve/main/Wan2.2-T2V-A14B-4steps-lora-250928/low_noise_model.safetensors"
STYLE = "https://example.com/style.safetensors"


def seed_001_config() -> dict:
    return {
        "phases": [
            {"phase": 1, "guidance_scale": 3, "loras": [{"url": HIGH, "multiplier": "0.75"}]},
            {"phase": 2, "guidance_scale": 1, "loras": [{"url": HIGH, "multiplier": "1.0"}]},
            {"phase": 3, "guidance_scale": 1, "loras": [{"url": LOW, "multiplier": "1.0"}]},
        ],
        "flow_shift": 5,
        "num_phases": 3,
        "sample_solver": "euler",
        "steps_per_phase": [2, 2, 2],
        "model_switch_phase": 2,
    }


def two_phase_config(**overrides) -> dict:
    config = {
        "num_phases": 2,
        "steps_per_phase": [3, 3],
        "flow_shift": 5,
        "sample_solver": "euler",
        "phases": [
            {"guidance_scale": 1, "loras": [{"url": HIGH, "multiplier": 1.2}, {"url": STYLE, "multiplier": 0.5}]},
            {"guidance_scale": 1, "loras": [{"url": LOW, "multiplier": "1.0"}, {"url": STYLE, "multiplier": 0.8}]},
        ],
    }
    config.update(overrides)
    return config


def convert(data: dict, root: str = "phase_config"):
    return phase_config_to_wgp(parse_model(PhaseConfig, data, root), root=root)


def test_seed_001_three_phase_config():
    wgp = convert(seed_001_config())
    assert wgp.guidance_phases == 3 and wgp.num_inference_steps == 6
    assert (wgp.guidance_scale, wgp.guidance2_scale, wgp.guidance3_scale) == (3, 1, 1)
    assert (wgp.switch_threshold, wgp.switch_threshold2) == (917.4817575573454, 663.2310443522647)
    assert wgp.lora_names == (HIGH, LOW)
    assert wgp.lora_multipliers == ("0.75;1.0;0", "0;0;1.0")
    assert wgp.as_wgp_params()["loras_multipliers"] == "0.75;1.0;0 0;0;1.0"  # space-joined, never comma-joined
    plan = plan_for(wgp)
    assert [s.lora_multipliers[0] for s in plan.steps] == [0.75, 0.75, 1, 1, 0, 0]
    assert [s.lora_multipliers[1] for s in plan.steps] == [0, 0, 0, 0, 1, 1]
    assert [s.expert for s in plan.steps] == ["high"] * 4 + ["low"] * 2
    assert [s.guidance for s in plan.steps] == [3, 3, 1, 1, 1, 1]


def test_two_phase_config_defaults_model_switch_phase_to_1():
    wgp = convert(two_phase_config())
    assert wgp.model_switch_phase == 1
    assert wgp.switch_threshold == 826.1000160879601 and wgp.switch_threshold2 is None
    assert wgp.guidance3_scale is None and "guidance3_scale" not in wgp.as_wgp_params()
    assert wgp.lora_multipliers == ("1.2;0", "0.5;0.8", "0;1.0")
    plan = plan_for(wgp)
    assert [s.expert for s in plan.steps] == ["high"] * 3 + ["low"] * 3
    assert [s.lora_multipliers for s in plan.steps][2:4] == [(1.2, 0.5, 0.0), (0.0, 0.8, 1.0)]


def test_three_phase_default_model_switch_phase_is_2():
    config = seed_001_config()
    del config["model_switch_phase"]
    assert convert(config).model_switch_phase == 2


@pytest.mark.parametrize(
    ("solver", "expected"), [("unipc", "unipc"), ("", "unipc"), ("dpm++", "dpm++"), ("dpm++_sde", "dpm++_sde")]
)
def test_each_solver_gives_its_own_thresholds(solver, expected):
    wgp = convert(two_phase_config(sample_solver=solver))
    assert wgp.sample_solver == expected
    plan = plan_for(wgp)
    assert [s.phase for s in plan.steps] == [1, 1, 1, 2, 2, 2]
    assert plan.sample_solver == expected


def test_defaults_euler_and_shift_5_when_absent():
    config = two_phase_config()
    del config["sample_solver"], config["flow_shift"]
    wgp = convert(config)
    assert (wgp.sample_solver, wgp.flow_shift) == ("euler", 5.0)


def test_per_step_comma_lists():
    config = two_phase_config()
    config["phases"][0]["loras"] = [{"url": HIGH, "multiplier": "1.0, 0.9,0.8"}]
    config["phases"][1]["loras"] = [{"url": HIGH, "multiplier": "0.5,0.4,0.3"}]
    wgp = convert(config)
    assert wgp.lora_multipliers == ("1.0,0.9,0.8;0.5,0.4,0.3",)
    assert [s.lora_multipliers[0] for s in plan_for(wgp).steps] == [1.0, 0.9, 0.8, 0.5, 0.4, 0.3]


def test_comma_list_length_must_match_the_phase_steps():
    config = two_phase_config()
    config["phases"][1]["loras"][0]["multiplier"] = "1.0,0.5"
    with pytest.raises(PayloadError) as error:
        convert(config)
    assert error.value.path == "phase_config.phases[1].loras[0].multiplier"
    assert "3 comma-separated values" in str(error.value)


def test_null_lora_lists_and_blank_urls():
    config = two_phase_config()
    config["phases"][0]["loras"] = None
    config["phases"][1]["loras"] = [{"url": "  ", "multiplier": 1}, {"url": LOW, "multiplier": 1}]
    wgp = convert(config)
    assert wgp.lora_names == (LOW,) and wgp.lora_multipliers == ("0;1",)


def test_num_phases_is_auto_corrected_with_a_warning():
    wgp = convert(two_phase_config(num_phases=3))
    assert wgp.guidance_phases == 2
    assert len(wgp.warnings) == 1 and "num_phases is 3" in wgp.warnings[0]
    assert plan_for(wgp).warnings[0] == wgp.warnings[0]


def test_nested_root_is_used_in_messages():
    config = two_phase_config()
    config["phases"][0]["loras"][1]["multiplier"] = "lots"
    with pytest.raises(PayloadError) as error:
        convert(config, root="orchestrator_details.phase_config")
    assert str(error.value) == (
        "orchestrator_details.phase_config.phases[0].loras[1].multiplier: expected a number or a comma list of "
        'numbers such as "0.9,0.8", each from -10 to 10, got "lots"'
    )


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (
            lambda c: c.update(num_phases=4, steps_per_phase=[1, 1, 2, 2], phases=c["phases"] * 2),
            "phase_config.num_phases",
        ),
        (lambda c: c.update(num_phases="two"), "phase_config.num_phases"),
        (lambda c: c.update(steps_per_phase=[3, 0]), "phase_config.steps_per_phase[1]"),
        (lambda c: c.update(steps_per_phase=[3, -1]), "phase_config.steps_per_phase[1]"),
        (lambda c: c.update(steps_per_phase=[3, "x"]), "phase_config.steps_per_phase[1]"),
        (lambda c: c.update(steps_per_phase=[2, 2, 2]), "phase_config.steps_per_phase"),
        (lambda c: c.update(phases=[]), "phase_config.phases"),
        (lambda c: c.update(sample_solver="causvid"), "phase_config.sample_solver"),
        (lambda c: c.update(flow_shift=0), "phase_config.flow_shift"),
        (lambda c: c.update(model_switch_phase=0), "phase_config.model_switch_phase"),
        (lambda c: c["phases"][1].update(guidance_scale="strong"), "phase_config.phases[1].guidance_scale"),
        (lambda c: c["phases"][1]["loras"][0].pop("url"), "phase_config.phases[1].loras[0].url"),
        (lambda c: c["phases"][1]["loras"][0].pop("multiplier"), "phase_config.phases[1].loras[0].multiplier"),
        (lambda c: c["phases"][1]["loras"][0].update(multiplier=True), "phase_config.phases[1].loras[0].multiplier"),
        (lambda c: c["phases"][1]["loras"][0].update(multiplier="1;0"), "phase_config.phases[1].loras[0].multiplier"),
        (
            lambda c: c["phases"][1]["loras"].append({"url": LOW, "multiplier": 1}),
            "phase_config.phases[1].loras[2].url",
        ),
    ],
)
def test_malformed_configs_name_the_field(mutate, path):
    config = two_phase_config()
    mutate(config)
    with pytest.raises(PayloadError) as error:
        convert(config)
    assert error.value.path == path
    assert str(error.value).startswith(f"{path}: expected ")


def test_phase_numbers_out_of_order_are_reported():
    config = two_phase_config()
    config["phases"][0]["phase"] = 2
    assert any("phases[0].phase is 2" in w for w in convert(config).warnings)
