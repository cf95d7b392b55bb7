"""phase_config -> WGP parameters -> plan (source/params/phase_config.py)."""

from __future__ import annotations

import pytest

from source.params import PayloadError, PhaseConfig, PhaseLora, PhaseSpec, parse_model, phase_config_to_wgp, plan_for
from Wan2GP.schedule import PlanError

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


# ---- defaults a caller relies on -------------------------------------------------------------------------------------


def test_three_phases_without_step_counts_run_2_2_2_with_default_guidance():
    wgp = convert({"phases": [{}, {}, {}]})
    assert wgp.steps_per_phase == (2, 2, 2) and wgp.num_inference_steps == 6
    # upstream's defaults: guidance 3 for the first phase, 1 for the others
    assert (wgp.guidance_scale, wgp.guidance2_scale, wgp.guidance3_scale) == (3.0, 1.0, 1.0)
    assert (wgp.sample_solver, wgp.flow_shift, wgp.model_switch_phase) == ("euler", 5.0, 2)
    assert (wgp.switch_threshold, wgp.switch_threshold2) == (917.4817575573454, 663.2310443522647)
    assert wgp.lora_names == () and wgp.lora_multipliers == () and wgp.warnings == ()


def test_two_phases_need_their_own_step_counts():
    with pytest.raises(PayloadError) as error:
        convert({"phases": [{}, {}]})
    assert str(error.value) == (
        "phase_config.steps_per_phase: expected one step count per phase (2 entries, like phase_config.phases), "
        "got [2, 2, 2]"
    )


def test_missing_phases_is_an_error_naming_phases():
    with pytest.raises(PayloadError) as error:
        convert({"steps_per_phase": [3, 3]})
    assert str(error.value) == "phase_config.phases: expected a list of 2 or 3 phases, got []"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps_per_phase": [6], "phases": [{}]}, "phase_config.phases: expected 2 or 3 phases, got 1"),
        (
            {"num_phases": 1, "steps_per_phase": [6], "phases": [{}]},
            "phase_config.num_phases: expected 2 or 3 phases, got 1",
        ),
        (
            {"num_phases": 2, "steps_per_phase": [6], "phases": [{}]},
            "phase_config.num_phases: expected 2 or 3 phases, got 2",
        ),
    ],
)
def test_one_phase_is_refused_naming_the_field_the_user_wrote(data, message):
    with pytest.raises(PayloadError) as error:
        convert(data)
    assert str(error.value) == message


def test_the_num_phases_warning_says_what_was_used():
    wgp = convert(two_phase_config(num_phases=3), root="orchestrator_details.phase_config")
    assert wgp.warnings == (
        "orchestrator_details.phase_config.num_phases is 3 but steps_per_phase and phases describe 2 phases; using 2",
    )
    assert convert(two_phase_config(num_phases=2)).warnings == ()
    unset = two_phase_config()
    del unset["num_phases"]
    assert convert(unset).warnings == ()


def test_the_phase_number_warning_names_the_entry_and_the_phase_it_runs_as():
    config = seed_001_config()
    config["phases"][1]["phase"] = 3
    assert convert(config).warnings == (
        "phase_config.phases[1].phase is 3; phases are applied in list order, so it runs as phase 2",
    )
    assert convert(seed_001_config()).warnings == ()  # phases numbered 1, 2, 3 in order: nothing to say


def test_a_model_switch_phase_beyond_the_phases_is_refused_with_the_range():
    with pytest.raises(PayloadError) as error:
        convert(two_phase_config(model_switch_phase=3))
    assert str(error.value) == (
        "phase_config.model_switch_phase: expected a phase from 1 to 2 (the phase whose end switches to the "
        "low-noise expert; 2 = never), got 3"
    )


def test_model_switch_phase_equal_to_the_phase_count_keeps_the_high_noise_expert():
    wgp = convert(two_phase_config(model_switch_phase=2))
    assert wgp.model_switch_phase == 2
    assert {s.expert for s in plan_for(wgp).steps} == {"high"}
    three = seed_001_config()
    three["model_switch_phase"] = 1
    assert [s.expert for s in plan_for(convert(three)).steps] == ["high"] * 2 + ["low"] * 4


def test_three_phase_guidance_defaults_apply_per_phase():
    config = seed_001_config()
    del config["phases"][0]["guidance_scale"], config["phases"][2]["guidance_scale"]
    config["phases"][1]["guidance_scale"] = 2
    wgp = convert(config)
    assert (wgp.guidance_scale, wgp.guidance2_scale, wgp.guidance3_scale) == (3.0, 2, 1.0)
    assert [s.guidance for s in plan_for(wgp).steps] == [3, 3, 2, 2, 1, 1]


def test_uneven_step_counts_set_the_thresholds_between_those_steps():
    wgp = convert(two_phase_config(steps_per_phase=[1, 5]))
    plan = plan_for(wgp)
    assert [s.phase for s in plan.steps] == [1, 2, 2, 2, 2, 2]
    assert wgp.switch_threshold == (plan.timesteps[0] + plan.timesteps[1]) / 2
    three = seed_001_config()
    three["steps_per_phase"] = [1, 3, 2]
    assert [s.phase for s in plan_for(convert(three)).steps] == [1, 2, 2, 2, 3, 3]


# ---- LoRAs -----------------------------------------------------------------------------------------------------------


def test_lora_names_keep_first_seen_order_and_absent_phases_get_zero():
    config = seed_001_config()
    config["phases"][0]["loras"].append({"url": STYLE, "multiplier": 0.5})
    config["phases"][2]["loras"].insert(0, {"url": STYLE, "multiplier": "0.25"})
    wgp = convert(config)
    assert wgp.lora_names == (HIGH, STYLE, LOW)
    assert wgp.lora_multipliers == ("0.75;1.0;0", "0.5;0;0.25", "0;0;1.0")
    assert wgp.as_wgp_params()["activated_loras"] == [HIGH, STYLE, LOW]


def test_lora_urls_are_matched_without_surrounding_spaces():
    config = two_phase_config()
    config["phases"][1]["loras"] = [{"url": f" {HIGH} ", "multiplier": 0.5}]
    wgp = convert(config)
    assert wgp.lora_names[0] == HIGH and wgp.lora_multipliers[0] == "1.2;0.5"


def test_a_lora_twice_in_one_phase_is_an_error_naming_the_second():
    config = two_phase_config()
    config["phases"][0]["loras"].append({"url": STYLE, "multiplier": 1})
    with pytest.raises(PayloadError) as error:
        convert(config)
    assert (
        str(error.value)
        == f'phase_config.phases[0].loras[2].url: expected each LoRA at most once per phase, got "{STYLE}"'
    )


def test_a_comma_list_of_the_wrong_length_says_how_many_values_the_phase_needs():
    config = two_phase_config(steps_per_phase=[2, 4])
    config["phases"][0]["loras"] = [{"url": HIGH, "multiplier": "1,0.9,0.8"}]
    with pytest.raises(PayloadError) as error:
        convert(config)
    assert str(error.value) == (
        "phase_config.phases[0].loras[0].multiplier: expected 2 comma-separated values (one per step of phase 1), "
        'got 3 values in, got "1,0.9,0.8"'
    )
    config["phases"][0]["loras"] = [{"url": HIGH, "multiplier": "1,0.5"}]  # one per step: fine
    config["phases"][1]["loras"] = [{"url": HIGH, "multiplier": "0.5"}]  # one value for the whole phase: fine
    assert convert(config).lora_multipliers == ("1,0.5;0.5",)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (1, "1"),
        (1.25, "1.25"),
        (-10, "-10"),
        (10.0, "10.0"),
        (" 0.5 ", "0.5"),
        ("1, 0.5 ,0", "1,0.5,0"),
        ("-10", "-10"),
    ],
)
def test_multipliers_are_kept_as_wgp_text_without_spaces(given, kept):
    assert parse_model(PhaseLora, {"url": STYLE, "multiplier": given}, "lora").multiplier == kept


@pytest.mark.parametrize(
    "given", [True, False, 10.5, -11, float("nan"), float("inf"), "1,", "", "1;0", [1], "11", "1,-10.5"]
)
def test_bad_multipliers_are_refused_with_the_expected_form(given):
    with pytest.raises(PayloadError) as error:
        parse_model(PhaseLora, {"url": STYLE, "multiplier": given}, "lora")
    assert error.value.path == "lora.multiplier"
    assert error.value.expected == 'a number or a comma list of numbers such as "0.9,0.8", each from -10 to 10'


def test_a_multiplier_text_longer_than_4096_characters_is_refused():
    longest = "10" + ",1" * 2047  # 4096 characters of valid numbers
    assert len(longest) == 4096
    assert parse_model(PhaseLora, {"url": STYLE, "multiplier": longest}, "lora").multiplier == longest
    with pytest.raises(PayloadError) as error:
        parse_model(PhaseLora, {"url": STYLE, "multiplier": longest + "0"}, "lora")
    assert error.value.path == "lora.multiplier"


def test_at_most_64_loras_per_phase():
    loras = [{"url": f"https://example.com/{i}.safetensors", "multiplier": 1} for i in range(64)]
    assert len(parse_model(PhaseSpec, {"loras": loras}, "phase").loras) == 64
    with pytest.raises(PayloadError) as error:
        parse_model(PhaseSpec, {"loras": [*loras, loras[0]]}, "phase")
    assert error.value.path == "phase.loras"


# ---- solver and step counts ------------------------------------------------------------------------------------------

SOLVER_EXPECTED = 'one of "euler", "unipc", "dpm++", "dpm++_sde" or "" (= unipc)'


@pytest.mark.parametrize("solver", ["causvid", 3, ["euler"]])
def test_a_bad_solver_lists_the_accepted_names(solver):
    with pytest.raises(PayloadError) as error:
        convert(two_phase_config(sample_solver=solver))
    assert error.value.path == "phase_config.sample_solver"
    assert error.value.expected == SOLVER_EXPECTED


def test_solver_names_are_normalised():
    assert convert(two_phase_config(sample_solver=" DPM++ ")).sample_solver == "dpm++"


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([], "1 to 3 step counts, one per phase"),
        ([1, 1, 1, 1], "1 to 3 step counts, one per phase"),
        ([100, 101], "step counts adding up to at most 200 (they add up to 201)"),
    ],
)
def test_step_count_lists_out_of_range_say_why(steps, expected):
    with pytest.raises(PayloadError) as error:
        convert(two_phase_config(steps_per_phase=steps))
    assert error.value.path == "phase_config.steps_per_phase"
    assert error.value.expected == expected


def test_step_counts_adding_up_to_200_are_accepted():
    wgp = convert(two_phase_config(steps_per_phase=[100, 100]))
    assert wgp.num_inference_steps == 200
    assert [s.phase for s in plan_for(wgp).steps].count(1) == 100


def test_at_most_three_phases():
    with pytest.raises(PayloadError) as error:
        convert({"phases": [{}, {}, {}, {}]})
    assert error.value.path == "phase_config.phases"


def test_keys_kept_but_not_used_are_reported_with_the_reason():
    config = parse_model(PhaseConfig, {**two_phase_config(), "mode": "i2v", "svi2pro": True}, "phase_config")
    unused = dict(config.unused_keys("phase_config"))
    assert unused["phase_config.svi2pro"] == "Stable Video Infinity is not implemented"
    assert "travel-mode" in unused["phase_config.mode"]


# ---- WGP parameters and plan_for -------------------------------------------------------------------------------------


def test_as_wgp_params_gives_every_wgp_name():
    wgp = convert(seed_001_config())
    assert wgp.as_wgp_params() == {
        "guidance_phases": 3,
        "num_inference_steps": 6,
        "guidance_scale": 3,
        "guidance2_scale": 1,
        "guidance3_scale": 1,
        "flow_shift": 5,
        "sample_solver": "euler",
        "model_switch_phase": 2,
        "switch_threshold": 917.4817575573454,
        "switch_threshold2": 663.2310443522647,
        "activated_loras": [HIGH, LOW],
        "loras_multipliers": "0.75;1.0;0 0;0;1.0",
    }
    two = convert(two_phase_config()).as_wgp_params()
    assert "switch_threshold2" not in two and "guidance3_scale" not in two


def test_plan_for_a_mapping_of_wgp_names():
    plan = plan_for(
        {
            "num_inference_steps": 4,
            "flow_shift": 3,
            "guidance_scale": 2,
            "sample_solver": "dpm++",
            "activated_loras": "a.safetensors b.safetensors",  # WGP's space-separated form
            "loras_multipliers": "0.5",
        },
        extra_warnings=("from the caller",),
    )
    assert (plan.num_inference_steps, plan.flow_shift, plan.sample_solver, plan.guidance_phases) == (4, 3, "dpm++", 1)
    assert plan.lora_names == ("a.safetensors", "b.safetensors")
    assert plan.lora_multipliers == ("0.5", "1.0")
    assert plan.warnings == ("from the caller",)


def test_plan_for_defaults_to_one_phase_without_loras():
    plan = plan_for({"num_inference_steps": 3, "flow_shift": 5, "guidance_scale": 1, "guidance_phases": None})
    assert plan.guidance_phases == 1 and plan.sample_solver == "unipc"
    assert plan.lora_names == () and plan.lora_multipliers == ()
    listed = plan_for(
        {
            "num_inference_steps": 3,
            "flow_shift": 5,
            "guidance_scale": 1,
            "activated_loras": ["x"],
            "loras_multipliers": None,
        }
    )
    assert listed.lora_names == ("x",) and listed.lora_multipliers == ("1.0",)


def test_plan_for_keeps_the_config_warnings_before_the_callers():
    wgp = convert(two_phase_config(num_phases=3))
    plan = plan_for(wgp, extra_warnings=("later",))
    assert plan.warnings == (*wgp.warnings, "later")


@pytest.mark.parametrize("missing", ["num_inference_steps", "flow_shift", "guidance_scale"])
def test_plan_for_names_the_first_missing_wgp_parameter(missing):
    values = {"num_inference_steps": 4, "flow_shift": 5, "guidance_scale": 1, missing: None}
    with pytest.raises(PlanError) as error:
        plan_for(values)
    assert (error.value.field, error.value.reason) == (missing, "expected a value, got nothing")
    with pytest.raises(PlanError) as all_missing:
        plan_for({})
    assert all_missing.value.field == "num_inference_steps"


def test_plan_for_ignores_multipliers_without_loras_and_says_so():
    # WGP's multipliers belong to the activated LoRAs: with none active there is nothing to weigh
    plan = plan_for({"num_inference_steps": 3, "flow_shift": 5, "guidance_scale": 1, "loras_multipliers": "0.5 1;0"})
    assert plan.lora_names == () and plan.lora_multipliers == ()
    assert all(s.lora_multipliers == () for s in plan.steps)
    assert plan.warnings == ("2 LoRA multipliers for 0 LoRAs: the extra ones are ignored",)


def test_errors_are_named_under_phase_config_by_default():
    with pytest.raises(PayloadError) as error:
        phase_config_to_wgp(parse_model(PhaseConfig, {"phases": [{}, {}]}, "phase_config"))
    assert error.value.path == "phase_config.steps_per_phase"
    warned = phase_config_to_wgp(parse_model(PhaseConfig, two_phase_config(num_phases=3), "phase_config"))
    assert warned.warnings[0].startswith("phase_config.num_phases is 3")
