"""Wan2GP/schedule.py: timesteps per solver, thresholds, phases, experts, guidance and LoRA strengths per step."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from Wan2GP.schedule import (
    SOLVERS,
    PlanError,
    build_plan,
    default_model_switch_phase,
    expand,
    multiplier_tokens,
    normalize_solver,
    phase_thresholds,
    sigmas,
    timesteps,
)


def euler_plan(**overrides):
    args = dict(num_inference_steps=6, sample_solver="euler", flow_shift=5, guidance_scale=3)
    args.update(overrides)
    return build_plan(**args)


# ---- timesteps ------------------------------------------------------------------------------------------------------


def test_euler_timesteps_match_the_seed_log():
    t = timesteps("euler", 6, 5)
    assert t.dtype == np.float64 and len(t) == 6
    assert [f"{x:.1f}" for x in t] == ["1000.0", "952.4", "882.5", "769.7", "556.8", "5.0"]
    assert t[-1] == pytest.approx(4.98008, abs=1e-5)  # the shifted image of t=1, not 0


def test_euler_thresholds_are_exact_float64_midpoints():
    assert phase_thresholds("euler", 6, 5, [2, 2, 2]) == (917.4817575573454, 663.2310443522647)
    assert phase_thresholds("euler", 6, 5, [3, 3]) == (826.1000160879601, None)


def test_unipc_and_dpm_thresholds_come_from_the_float32_grid():
    # the grid is built in float32 as upstream does (a float64 grid moves 1/6, 2/3 ... in the 8th digit)
    assert phase_thresholds("dpm++", 6, 5, [3, 3]) == (871.2121249066239, None)
    assert phase_thresholds("dpm++_sde", 6, 5, [2, 2, 2]) == (935.3146863640114, 773.8095283711037)
    assert phase_thresholds("unipc", 6, 5, [2, 2, 2]) == (935.0795950492998, 773.5173972916008)
    assert timesteps("dpm++", 6, 5)[1] == 961.5384562481084  # 961.538461538... from a float64 grid


@pytest.mark.parametrize(
    ("steps", "shift", "expected"),
    [
        (4, 5, [1000, 909.2, 714.9, 4.98]),
        (8, 3, [1000, 947.4, 882.5, 800.3, 692.8, 546.3, 334.9, 2.99]),
        (10, 2, [1000, 941.2, 875.1, 800.2, 714.7, 615.9, 500.7, 364.7, 201.4, 2.0]),
    ],
)
def test_more_euler_lists_from_the_engine_spec(steps, shift, expected):
    assert timesteps("euler", steps, shift) == pytest.approx(expected, abs=0.06)


def test_unipc_uses_the_0999_float32_grid_and_keeps_floats():
    t = timesteps("unipc", 6, 5)
    grid = np.linspace(0.999, 0.0, 7, dtype=np.float32)[:-1].astype(np.float64)
    assert t.tolist() == (1000 * (5 * grid / (1 + 4 * grid))).tolist()
    # upstream feeds int64-truncated values: 999, 961, 908, 833, 713, 499
    assert t.astype(np.int64).tolist() == [999, 961, 908, 833, 713, 499]
    assert timesteps("", 6, 5).tolist() == t.tolist()
    assert timesteps(None, 6, 5).tolist() == t.tolist()


def test_unipc_30_steps_switch_at_step_11_for_i2v_2_2():
    plan = build_plan(
        num_inference_steps=30,
        sample_solver="unipc",
        flow_shift=5,
        guidance_phases=2,
        guidance_scale=3.5,
        switch_threshold=900,
    )
    assert plan.phase_start_steps() == (11, 30)
    assert plan.expert_switch_step() == 11


@pytest.mark.parametrize("solver", ["dpm++", "dpm++_sde"])
def test_dpm_grids(solver):
    t = timesteps(solver, 6, 5)
    assert t.astype(np.int64).tolist() == [1000, 961, 909, 833, 714, 500]


def test_sigmas_are_timesteps_over_1000_plus_final_zero():
    for solver in SOLVERS:
        s = sigmas(solver, 7, 3.0)
        assert len(s) == 8 and s[-1] == 0.0
        assert s[:-1].tolist() == (timesteps(solver, 7, 3.0) / 1000).tolist()


@pytest.mark.parametrize("name", ["causvid", "lcm", "foo", 3])
def test_unknown_solvers_are_named_errors(name):
    with pytest.raises(PlanError) as error:
        normalize_solver(name)
    assert error.value.field == "sample_solver"
    assert "euler" in str(error.value) and "dpm++_sde" in str(error.value)


def test_solver_names_are_normalised():
    assert normalize_solver("") == "unipc"
    assert normalize_solver(" Euler ") == "euler"
    assert euler_plan(sample_solver="").sample_solver == "unipc"


TORCH_FREE = (
    "Wan2GP.schedule",
    "source.params",
    "source.cli.__main__",
    "source.queue",
    "source.worker",
    "source.tasks",
)


def test_the_layers_above_the_engine_import_without_torch() -> None:
    """DESIGN: no torch below the engine. Importing these one after the other in a fresh interpreter (so nothing a
    test imported before counts) leaves torch, diffusers, transformers and peft out of sys.modules: the CLI, the queue
    and the worker loop start in a second, and the plan command needs no GPU stack."""
    script = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules)\n"
        "    print(name, heavy)\n"
    )
    answer = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120)
    assert answer.stdout.splitlines() == [f"{name} []" for name in TORCH_FREE]


# ---- phases, experts, guidance ---------------------------------------------------------------------------------------


def test_three_phase_lightning_plan():
    plan = euler_plan(
        guidance_phases=3,
        guidance2_scale=1,
        guidance3_scale=1,
        switch_threshold=883,
        switch_threshold2=558,
        model_switch_phase=2,
    )
    assert [s.phase for s in plan.steps] == [1, 1, 2, 2, 3, 3]
    assert [s.guidance for s in plan.steps] == [3, 3, 1, 1, 1, 1]
    assert [s.expert for s in plan.steps] == ["high"] * 4 + ["low"] * 2
    assert plan.phase_start_steps() == (2, 4)


def test_two_phase_run_switches_expert_by_default():
    plan = euler_plan(guidance_phases=2, guidance_scale=1, guidance2_scale=1, switch_threshold=826.1000160879601)
    assert plan.model_switch_phase == 1
    assert [s.expert for s in plan.steps] == ["high"] * 3 + ["low"] * 3
    assert plan.warnings == ()


def test_upstream_default_of_2_never_switches_and_is_warned_about():
    plan = euler_plan(guidance_phases=2, switch_threshold=826.1, model_switch_phase=2)
    assert {s.expert for s in plan.steps} == {"high"}
    assert any("never used" in w for w in plan.warnings)


def test_threshold_equal_to_a_timestep_starts_the_next_phase_on_that_step():
    t = timesteps("euler", 6, 5)
    plan = euler_plan(guidance_phases=2, switch_threshold=float(t[2]))
    assert plan.phase_start_steps()[0] == 2


def test_guidance_defaults_to_previous_phase_and_zero_threshold_never_switches():
    plan = euler_plan(guidance_phases=3, guidance_scale=4, switch_threshold=900, switch_threshold2=0)
    assert [s.guidance for s in plan.steps] == [4] * 6
    assert plan.switch_threshold2 is None
    assert [s.phase for s in plan.steps] == [1, 1, 2, 2, 2, 2]
    assert any("phase 3 never starts" in w for w in plan.warnings)


def test_single_phase_ignores_thresholds():
    plan = euler_plan(switch_threshold=900, switch_threshold2=500)
    assert plan.switch_threshold is None and plan.switch_threshold2 is None
    assert {s.phase for s in plan.steps} == {1} and {s.expert for s in plan.steps} == {"high"}


def test_default_model_switch_phase():
    assert [default_model_switch_phase(n) for n in (1, 2, 3)] == [1, 1, 2]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"guidance_phases": 4}, "guidance_phases"),
        ({"guidance_phases": 0}, "guidance_phases"),
        ({"flow_shift": 0}, "flow_shift"),
        ({"flow_shift": -1}, "flow_shift"),
        ({"guidance_scale": "high"}, "guidance_scale"),
        ({"guidance2_scale": [1]}, "guidance2_scale"),
        ({"guidance_scale": True}, "guidance_scale"),
        ({"model_switch_phase": 0}, "model_switch_phase"),
        ({"guidance_phases": 3, "switch_threshold": 500, "switch_threshold2": 900}, "switch_threshold2"),
        ({"sample_solver": "causvid"}, "sample_solver"),
    ],
)
def test_invalid_inputs_name_the_field(overrides, field):
    with pytest.raises(PlanError) as error:
        euler_plan(**overrides)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")


def test_phase_thresholds_validation():
    with pytest.raises(PlanError, match=r"steps_per_phase\[1\]"):
        phase_thresholds("euler", 4, 5, [4, 0])
    with pytest.raises(PlanError, match="add up to 5"):
        phase_thresholds("euler", 6, 5, [2, 3])


# ---- LoRA multipliers ------------------------------------------------------------------------------------------------


def test_expand_examples_from_the_engine_spec():
    # pos accumulates 0.1 thirty times: after ten additions it is 0.9999999999999999, so the first value gets one
    # extra step and, as it then overshoots 2.0, the second one fewer (upstream's float accumulation, kept on purpose).
    assert expand([0.9, 0.8, 0.7], 30) == [0.9] * 11 + [0.8] * 9 + [0.7] * 10
    assert expand([1, 1.1], 3) == [1, 1, 1.1]
    assert expand([0.9, 0.8, 0.7, 0.6], 6) == [0.9, 0.9, 0.8, 0.7, 0.7, 0.6]
    assert expand([1.0], 0) == []


def test_seed_001_per_step_lora_strengths():
    plan = euler_plan(
        guidance_phases=3,
        guidance2_scale=1,
        guidance3_scale=1,
        switch_threshold=917.4817575573454,
        switch_threshold2=663.2310443522647,
        model_switch_phase=2,
        loras_multipliers="0.75;1.0;0 0;0;1.0",
    )
    assert [s.lora_multipliers[0] for s in plan.steps] == [0.75, 0.75, 1, 1, 0, 0]
    assert [s.lora_multipliers[1] for s in plan.steps] == [0, 0, 0, 0, 1, 1]
    assert plan.lora_multipliers == ("0.75;1.0;0", "0;0;1.0")


def test_shared_tokens_and_comma_lists_over_all_steps():
    plan = euler_plan(guidance_phases=2, switch_threshold=826.1, loras_multipliers=["0.5", 0.25, "1,0.5,0"])
    assert [s.lora_multipliers for s in plan.steps][0] == (0.5, 0.25, 1.0)
    assert [s.lora_multipliers[2] for s in plan.steps] == [1, 1, 0.5, 0.5, 0, 0]


def test_per_phase_comma_lists_are_stretched_over_that_phase():
    plan = euler_plan(guidance_phases=2, switch_threshold=826.1, loras_multipliers="0.9,0.8,0.7;0.6,0.5")
    assert [s.lora_multipliers[0] for s in plan.steps] == [0.9, 0.8, 0.7, 0.6, 0.6, 0.5]


def test_two_values_for_three_phases_are_padded_by_model_switch_phase():
    common = dict(guidance_phases=3, switch_threshold=917.48, switch_threshold2=663.23, loras_multipliers="1;0")
    switch_at_3 = euler_plan(model_switch_phase=2, **common)  # [a, a, b]
    assert [s.lora_multipliers[0] for s in switch_at_3.steps] == [1, 1, 1, 1, 0, 0]
    switch_at_2 = euler_plan(model_switch_phase=1, **common)  # [a, b, b]
    assert [s.lora_multipliers[0] for s in switch_at_2.steps] == [1, 1, 0, 0, 0, 0]


def test_two_values_for_two_phases_with_model_switch_phase_2_are_not_padded():
    plan = euler_plan(guidance_phases=2, switch_threshold=826.1, model_switch_phase=2, loras_multipliers="1;0")
    assert [s.lora_multipliers[0] for s in plan.steps] == [1, 1, 1, 0, 0, 0]


def test_missing_tokens_mean_one_and_extra_tokens_are_ignored_with_a_warning():
    plan = euler_plan(loras_multipliers="0.5", num_loras=2)
    assert plan.steps[0].lora_multipliers == (0.5, 1.0)
    assert plan.lora_multipliers == ("0.5", "1.0")
    extra = euler_plan(loras_multipliers="0.5 0.7", num_loras=1)
    assert extra.steps[0].lora_multipliers == (0.5,)
    assert any("ignored" in w for w in extra.warnings)


def test_wgp_string_comments_and_bar_separator():
    plan = euler_plan(loras_multipliers="# accelerators\n1 | 0.5")
    assert plan.steps[0].lora_multipliers == (1.0, 0.5)


def test_multiplier_errors_name_the_lora():
    with pytest.raises(PlanError) as too_many:
        euler_plan(guidance_phases=2, switch_threshold=826.1, loras_multipliers="1 0.75;1.0;0")
    assert too_many.value.field == "loras_multipliers[1]"
    with pytest.raises(PlanError) as not_a_number:
        euler_plan(loras_multipliers="1 abc")
    assert not_a_number.value.field == "loras_multipliers[1]"
    with pytest.raises(PlanError) as empty_part:
        euler_plan(guidance_phases=2, switch_threshold=826.1, loras_multipliers="1.0;")
    assert empty_part.value.field == "loras_multipliers[0]"


def test_json_dict_has_the_documented_keys():
    plan = euler_plan(guidance_phases=2, switch_threshold=826.1, loras_multipliers="1;0", lora_names=["a.safetensors"])
    out = plan.to_json_dict()
    for key in (
        "num_inference_steps",
        "guidance_phases",
        "sample_solver",
        "flow_shift",
        "model_switch_phase",
        "timesteps",
        "switch_threshold",
        "switch_threshold2",
        "lora_names",
        "lora_multipliers",
        "warnings",
        "steps",
    ):
        assert key in out
    assert out["steps"][3] == {
        "index": 3,
        "timestep": plan.timesteps[3],
        "phase": 2,
        "guidance": 3.0,
        "expert": "low",
        "lora_multipliers": [0.0],
    }
    assert out["lora_names"] == ["a.safetensors"]


# ---- properties ------------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(-10, 10), min_size=1, max_size=12), n=st.integers(0, 60))
def test_expand_properties(values, n):
    out = expand(values, n)
    assert len(out) == n
    indices = [values.index(v) for v in out]  # first index of each value
    positions = []
    position = 0.0
    for _ in range(n):
        positions.append(min(int(position), len(values) - 1))
        position += len(values) / n
    assert [values[i] for i in positions] == out
    assert positions == sorted(positions)  # never goes back
    if n >= len(values):
        assert set(positions) == set(range(len(values)))  # every value is used when stretching
    assert all(values[i] == v for i, v in zip(indices, out, strict=True))
    if n:
        assert out[0] == values[0]


@settings(max_examples=150, deadline=None)
@given(
    solver=st.sampled_from(SOLVERS),
    shift=st.floats(0.5, 20),
    counts=st.lists(st.integers(1, 8), min_size=2, max_size=3),
    switch_at_phase_3=st.booleans(),
)
def test_thresholds_reproduce_the_requested_phase_split(solver, shift, counts, switch_at_phase_3):
    n = sum(counts)
    th1, th2 = phase_thresholds(solver, n, shift, counts)
    switch_phase = 2 if switch_at_phase_3 and len(counts) == 3 else 1
    plan = build_plan(
        num_inference_steps=n,
        sample_solver=solver,
        flow_shift=shift,
        guidance_phases=len(counts),
        guidance_scale=1,
        switch_threshold=th1,
        switch_threshold2=th2,
        model_switch_phase=switch_phase,
    )
    phases = [s.phase for s in plan.steps]
    expected = [k + 1 for k, count in enumerate(counts) for _ in range(count)]
    assert phases == expected
    assert phases == sorted(phases)
    timesteps_ = [s.timestep for s in plan.steps]
    assert timesteps_ == sorted(timesteps_, reverse=True) and len(set(timesteps_)) == n
    experts = [s.expert for s in plan.steps]
    assert experts == sorted(experts)  # "high" ... then "low", never back
    assert experts.count("high") == sum(counts[:switch_phase])


# ---- what the errors and warnings tell the user ---------------------------------------------------------------------
# The project's rule: bad input gets a clear error that names the field and what was expected. These pin the field and
# the message text a caller (and the `plan` command) shows.


def plan_error(call, *args, **kwargs) -> PlanError:
    with pytest.raises(PlanError) as error:
        call(*args, **kwargs)
    return error.value


ACCEPTED_SOLVERS = '"euler", "unipc", "dpm++", "dpm++_sde" or "" (= unipc)'


@pytest.mark.parametrize(("name", "shown"), [("lcm", "'lcm'"), (3, "3"), (["euler"], "['euler']")])
def test_a_bad_solver_message_lists_every_accepted_name(name, shown):
    error = plan_error(normalize_solver, name)
    assert (error.field, error.reason) == ("sample_solver", f"expected one of {ACCEPTED_SOLVERS}, got {shown}")
    assert str(error) == f"sample_solver: expected one of {ACCEPTED_SOLVERS}, got {shown}"


def test_solver_names_ignore_case_and_surrounding_spaces():
    assert [normalize_solver(name) for name in ("DPM++", " dpm++_SDE\t", "UniPC", "  ")] == [
        "dpm++",
        "dpm++_sde",
        "unipc",
        "unipc",
    ]


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps", "expected an integer from 1 to 200, got 0"),
        ({"num_inference_steps": 201}, "num_inference_steps", "expected an integer from 1 to 200, got 201"),
        ({"num_inference_steps": 2.5}, "num_inference_steps", "expected an integer, got 2.5"),
        ({"num_inference_steps": "six"}, "num_inference_steps", "expected an integer, got 'six'"),
        ({"num_inference_steps": float("inf")}, "num_inference_steps", "expected an integer, got inf"),
        ({"num_inference_steps": True}, "num_inference_steps", "expected an integer, got True"),
        ({"flow_shift": 0}, "flow_shift", "expected a number from 0.001 to 100, got 0"),
        ({"flow_shift": 100.5}, "flow_shift", "expected a number from 0.001 to 100, got 100.5"),
        ({"flow_shift": float("nan")}, "flow_shift", "expected a number, got nan"),
        ({"guidance_scale": "high"}, "guidance_scale", "expected a number, got 'high'"),
        ({"guidance_scale": -0.5}, "guidance_scale", "expected a number from 0 to 50, got -0.5"),
        ({"guidance2_scale": 51}, "guidance2_scale", "expected a number from 0 to 50, got 51"),
        ({"guidance3_scale": None, "guidance2_scale": None, "guidance_scale": None}, "guidance_scale", None),
        ({"guidance3_scale": float("-inf")}, "guidance3_scale", "expected a number, got -inf"),
        ({"guidance_phases": 4}, "guidance_phases", "expected 1, 2 or 3, got 4"),
        ({"guidance_phases": 0}, "guidance_phases", "expected 1, 2 or 3, got 0"),
        ({"guidance_phases": 1.5}, "guidance_phases", "expected an integer, got 1.5"),
        ({"model_switch_phase": 0}, "model_switch_phase", "expected a phase from 1 to 1, got 0"),
        ({"model_switch_phase": 2}, "model_switch_phase", "expected a phase from 1 to 1, got 2"),
        ({"guidance_phases": 2, "model_switch_phase": 3}, "model_switch_phase", "expected a phase from 1 to 2, got 3"),
        ({"model_switch_phase": "one"}, "model_switch_phase", "expected an integer, got 'one'"),
        (
            {"guidance_phases": 2, "switch_threshold": -1},
            "switch_threshold",
            "expected a number from 0 to 1000, got -1",
        ),
        (
            {"guidance_phases": 3, "switch_threshold": 900, "switch_threshold2": 1000.5},
            "switch_threshold2",
            "expected a number from 0 to 1000, got 1000.5",
        ),
        ({"num_loras": "2"}, None, None),  # a numeric string is a number (payloads often carry them)
        ({"num_loras": "two"}, "num_loras", "expected an integer, got 'two'"),
    ],
)
def test_each_bad_input_names_its_field_and_the_expected_range(overrides, field, reason):
    if field is None:  # accepted
        euler_plan(**overrides)
        return
    error = plan_error(euler_plan, **overrides)
    assert error.field == field
    if reason is not None:
        assert error.reason == reason
        assert str(error) == f"{field}: {reason}"


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_inference_steps": 1},
        {"num_inference_steps": 200},
        {"num_inference_steps": "6"},
        {"num_inference_steps": np.int64(6)},
        {"num_inference_steps": 6.0},
        {"flow_shift": 0.001},
        {"flow_shift": 100},
        {"flow_shift": " 5 "},
        {"flow_shift": np.float32(5)},
        {"guidance_scale": 0},
        {"guidance_scale": 50},
        {"guidance_phases": 3, "switch_threshold": 1000, "switch_threshold2": 0},
        {"guidance_phases": 3, "model_switch_phase": 3},
    ],
)
def test_the_ends_of_every_range_are_accepted(overrides):
    plan = euler_plan(**overrides)
    assert len(plan.steps) == plan.num_inference_steps


def test_numbers_given_as_text_or_numpy_are_read_as_numbers():
    plan = euler_plan(num_inference_steps="4", flow_shift="3", guidance_scale=np.float64(2.5))
    assert (plan.num_inference_steps, plan.flow_shift, plan.guidance_scales) == (4, 3.0, (2.5, 2.5, 2.5))
    assert type(plan.num_inference_steps) is int and type(plan.flow_shift) is float


def test_a_threshold_of_1000_puts_every_step_in_phase_2():
    plan = euler_plan(guidance_phases=2, switch_threshold=1000)
    assert [s.phase for s in plan.steps] == [2] * 6
    assert plan.switch_threshold == 1000.0 and plan.expert_switch_step() == 0


def test_a_phase_3_threshold_above_phase_2_names_both_thresholds():
    error = plan_error(euler_plan, guidance_phases=3, switch_threshold=500, switch_threshold2=900)
    assert error.field == "switch_threshold2"
    assert error.reason == (
        "phase 3 would start (step 2, switch_threshold2=900.0) before phase 2 (switch_threshold=500.0); "
        "switch_threshold2 must be below switch_threshold"
    )


def test_equal_thresholds_give_phase_2_no_steps_with_a_warning():
    plan = euler_plan(guidance_phases=3, switch_threshold=900, switch_threshold2=900, model_switch_phase=2)
    assert [s.phase for s in plan.steps] == [1, 1, 3, 3, 3, 3]
    assert plan.phase_start_steps() == (2, 2)
    assert plan.warnings == ("phase 2 has no steps: phases 2 and 3 both start at step 2",)


def test_a_threshold_below_every_timestep_warns_that_the_phase_never_starts():
    two = euler_plan(guidance_phases=2, switch_threshold=1)
    assert {s.phase for s in two.steps} == {1} and two.phase_start_steps() == (6, 6)
    assert two.expert_switch_step() == 6  # the low-noise expert never runs
    assert two.warnings == ("phase 2 never starts (no timestep <= switch_threshold=1.0)",)
    three = euler_plan(guidance_phases=3, switch_threshold=900, switch_threshold2=2)
    assert three.warnings == ("phase 3 never starts (no timestep <= switch_threshold2=2.0)",)
    # no threshold at all (0 = never switch) for both: two warnings, phases 2 and 3 start at the end, not "no steps"
    never = euler_plan(guidance_phases=3, switch_threshold=0, switch_threshold2=0)
    assert never.warnings == (
        "phase 2 never starts (no timestep <= switch_threshold=None)",
        "phase 3 never starts (no timestep <= switch_threshold2=None)",
    )
    assert never.phase_start_steps() == (6, 6)


def test_model_switch_phase_equal_to_the_phase_count_warns_with_the_numbers():
    plan = euler_plan(guidance_phases=3, switch_threshold=900, switch_threshold2=600, model_switch_phase=3)
    assert {s.expert for s in plan.steps} == {"high"}
    assert plan.warnings == ("model_switch_phase=3 with 3 guidance phases: the low-noise expert is never used",)
    assert euler_plan(guidance_phases=3, switch_threshold=900, switch_threshold2=600).warnings == ()
    assert euler_plan(model_switch_phase=1).warnings == ()  # one phase: nothing to switch, nothing to warn about


def test_given_warnings_come_first_and_are_kept():
    plan = euler_plan(guidance_phases=2, switch_threshold=1, warnings=["from the payload"])
    assert plan.warnings[0] == "from the payload" and len(plan.warnings) == 2


def test_guidance_per_phase_uses_each_given_scale():
    plan = euler_plan(
        guidance_phases=3,
        guidance_scale=5,
        guidance2_scale=4,
        guidance3_scale=2,
        switch_threshold=900,
        switch_threshold2=600,
        model_switch_phase=2,
    )
    assert [s.guidance for s in plan.steps] == [5, 5, 4, 4, 2, 2]
    assert plan.guidance_scales == (5, 4, 2)
    only_third = euler_plan(
        guidance_phases=3, guidance_scale=5, guidance3_scale=2, switch_threshold=900, switch_threshold2=600
    )
    assert only_third.guidance_scales == (5, 5, 2)  # guidance2 defaults to guidance_scale


def test_two_phase_expert_switch_follows_model_switch_phase_1():
    plan = euler_plan(guidance_phases=2, switch_threshold=826.1, model_switch_phase=1)
    assert plan.expert_switch_step() == 3
    assert [s.expert for s in plan.steps] == ["high"] * 3 + ["low"] * 3


# ---- phase_thresholds --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [[], [1, 1, 1, 1]])
def test_phase_thresholds_take_one_to_three_counts(counts):
    error = plan_error(phase_thresholds, "euler", max(len(counts), 1), 5, counts)
    assert error.field == "steps_per_phase"
    assert error.reason == f"expected 1 to 3 step counts, got {len(counts)}"


def test_phase_thresholds_for_one_and_three_phases():
    assert phase_thresholds("euler", 6, 5, [6]) == (None, None)
    first, second = phase_thresholds("euler", 3, 5, [1, 1, 1])
    t = timesteps("euler", 3, 5)
    assert first == (t[0] + t[1]) / 2 and second == (t[1] + t[2]) / 2


def test_phase_thresholds_errors_say_what_was_expected():
    zero = plan_error(phase_thresholds, "euler", 4, 5, [4, 0])
    assert (zero.field, zero.reason) == ("steps_per_phase[1]", "expected a step count >= 1, got 0")
    text = plan_error(phase_thresholds, "euler", 4, 5, ["two", 2])
    assert (text.field, text.reason) == ("steps_per_phase[0]", "expected an integer, got 'two'")
    total = plan_error(phase_thresholds, "euler", 6, 5, [2, 3])
    assert (total.field, total.reason) == ("steps_per_phase", "the step counts add up to 5, expected 6")
    steps = plan_error(phase_thresholds, "euler", 0, 5, [1])
    assert steps.field == "num_inference_steps"


# ---- timesteps and sigmas --------------------------------------------------------------------------------------------


def test_one_step_runs_from_the_top_of_the_schedule():
    assert timesteps("euler", 1, 5).tolist() == [1000.0]
    assert timesteps("dpm++", 1, 5).tolist() == [1000.0]
    assert timesteps("unipc", 1, 1).tolist() == pytest.approx([999.0])


def test_flow_shift_1_leaves_the_grid_unshifted():
    assert timesteps("dpm++", 4, 1).tolist() == pytest.approx([1000, 750, 500, 250])
    assert timesteps("euler", 4, 1).tolist() == pytest.approx([1000, 667, 334, 1])


def test_timesteps_check_their_inputs():
    assert plan_error(timesteps, "lcm", 6, 5).field == "sample_solver"
    assert plan_error(timesteps, "euler", 0, 5).field == "num_inference_steps"
    assert plan_error(timesteps, "euler", 6, 0).field == "flow_shift"


def test_the_plan_carries_the_timesteps_and_sigmas_of_its_solver():
    plan = build_plan(num_inference_steps=5, sample_solver="dpm++", flow_shift=3, guidance_scale=1)
    assert plan.timesteps == tuple(timesteps("dpm++", 5, 3).tolist())
    assert plan.sigmas == tuple(sigmas("dpm++", 5, 3).tolist())
    assert [s.timestep for s in plan.steps] == list(plan.timesteps)
    assert [s.index for s in plan.steps] == [0, 1, 2, 3, 4]


# ---- expand and LoRA multipliers -------------------------------------------------------------------------------------


def test_expand_of_no_steps_and_of_no_values():
    assert expand([0.5, 1.0], -1) == []
    with pytest.raises(ValueError) as error:
        expand([], 3)
    assert str(error.value) == "expand() needs at least one value"


def test_expand_shrinks_a_long_list_by_skipping_values():
    assert expand([1, 2, 3, 4, 5, 6], 3) == [1, 3, 5]
    assert expand([1, 2, 3, 4], 4) == [1, 2, 3, 4]
    assert expand([7], 3) == [7, 7, 7]


def test_multiplier_tokens_grammar():
    assert multiplier_tokens(None) == []
    assert multiplier_tokens("") == []
    assert multiplier_tokens("1.0 0.5\n  # a comment\n0.25|0.1") == ["1.0", "0.5", "0.25", "0.1"]
    assert multiplier_tokens([" 1;0 ", 0.5, np.float32(0.25), 2, np.int64(3)]) == ["1;0", "0.5", "0.25", "2", "3"]


@pytest.mark.parametrize(("item", "shown"), [(True, "True"), (None, "None"), ([1], "[1]")])
def test_a_list_multiplier_that_is_not_a_number_names_its_index(item, shown):
    error = plan_error(multiplier_tokens, ["1.0", item])
    assert error.field == "loras_multipliers[1]"
    assert error.reason == f"expected a number or a multiplier string, got {shown}"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("abc", "expected a number or a comma list of numbers, got 'abc'"),
        ("1,x", "expected a number or a comma list of numbers, got '1,x'"),
        ("10.5", "expected numbers from -10 to 10, got '10.5'"),
        ("-11", "expected numbers from -10 to 10, got '-11'"),
        ("1,nan", "expected numbers from -10 to 10, got '1,nan'"),
        ("inf", "expected numbers from -10 to 10, got 'inf'"),
    ],
)
def test_a_bad_multiplier_value_says_what_was_expected(token, reason):
    error = plan_error(euler_plan, loras_multipliers=f"1 {token}")
    assert (error.field, error.reason) == ("loras_multipliers[1]", reason)


def test_multipliers_at_the_ends_of_the_range_are_used():
    plan = euler_plan(loras_multipliers="-10 10 0,10")
    assert plan.steps[0].lora_multipliers == (-10.0, 10.0, 0.0)
    assert plan.steps[5].lora_multipliers == (-10.0, 10.0, 10.0)


def test_too_many_phase_values_names_the_lora_and_the_phase_count():
    error = plan_error(euler_plan, guidance_phases=2, switch_threshold=826.1, loras_multipliers="1 0.75;1.0;0")
    assert error.field == "loras_multipliers[1]"
    assert error.reason == "'0.75;1.0;0' has 3 phase values but guidance_phases is 2 (at most 2)"
    one = plan_error(euler_plan, loras_multipliers="1;0")
    assert one.reason == "'1;0' has 2 phase values but guidance_phases is 1 (at most 1)"


def test_a_bad_value_in_a_later_phase_is_reported():
    error = plan_error(euler_plan, guidance_phases=2, switch_threshold=826.1, loras_multipliers="1;x")
    assert (error.field, error.reason) == (
        "loras_multipliers[0]",
        "expected a number or a comma list of numbers, got 'x'",
    )


def test_three_phase_values_and_per_phase_lists_over_three_phases():
    common = dict(guidance_phases=3, switch_threshold=917.48, switch_threshold2=663.23, model_switch_phase=2)
    plan = euler_plan(loras_multipliers="1;0.5;0 0.9,0.8;0;0.3,0.2", **common)
    assert [s.lora_multipliers for s in plan.steps] == [
        (1.0, 0.9),
        (1.0, 0.8),
        (0.5, 0.0),
        (0.5, 0.0),
        (0.0, 0.3),
        (0.0, 0.2),
    ]


def test_a_single_value_applies_to_every_step_of_every_phase():
    plan = euler_plan(guidance_phases=3, switch_threshold=917.48, switch_threshold2=663.23, loras_multipliers="0.7")
    assert [s.lora_multipliers for s in plan.steps] == [(0.7,)] * 6


def test_the_number_of_loras_comes_from_the_names_when_not_given():
    named = euler_plan(loras_multipliers="0.5 0.7 0.9", lora_names=["a", "b"])
    assert named.lora_names == ("a", "b") and named.lora_multipliers == ("0.5", "0.7")
    assert named.steps[0].lora_multipliers == (0.5, 0.7)
    assert named.warnings == ("3 LoRA multipliers for 2 LoRAs: the extra ones are ignored",)
    unnamed = euler_plan(loras_multipliers="0.5 0.7 0.9")
    assert unnamed.steps[0].lora_multipliers == (0.5, 0.7, 0.9) and unnamed.warnings == ()
    pad = euler_plan(loras_multipliers="", lora_names=["a", "b"])
    assert pad.lora_multipliers == ("1.0", "1.0") and pad.steps[0].lora_multipliers == (1.0, 1.0)
    explicit = euler_plan(loras_multipliers="0.5 0.7", num_loras=0, lora_names=["a"])
    assert explicit.steps[0].lora_multipliers == () and explicit.lora_multipliers == ()


def test_no_loras_gives_empty_multipliers_per_step():
    plan = euler_plan()
    assert plan.lora_multipliers == () and all(s.lora_multipliers == () for s in plan.steps)


# ---- the JSON form (the `plan --json` output) ------------------------------------------------------------------------


def test_the_json_form_of_a_plan_is_complete_and_plain():
    plan = euler_plan(
        guidance_phases=3,
        guidance2_scale=2,
        guidance3_scale=1,
        switch_threshold=917.48,
        switch_threshold2=663.23,
        model_switch_phase=2,
        loras_multipliers="1;0.5;0",
        lora_names=["a.safetensors"],
        warnings=["note"],
    )
    out = plan.to_json_dict()
    assert out == {
        "num_inference_steps": 6,
        "guidance_phases": 3,
        "sample_solver": "euler",
        "flow_shift": 5.0,
        "model_switch_phase": 2,
        "timesteps": list(plan.timesteps),
        "sigmas": list(plan.sigmas),
        "switch_threshold": 917.48,
        "switch_threshold2": 663.23,
        "guidance_scales": [3.0, 2.0, 1.0],
        "phase_start_steps": [2, 4],
        "expert_switch_step": 4,
        "lora_names": ["a.safetensors"],
        "lora_multipliers": ["1;0.5;0"],
        "warnings": ["note"],
        "steps": [step.to_json_dict() for step in plan.steps],
    }
    assert out["steps"][0] == {
        "index": 0,
        "timestep": 1000.0,
        "phase": 1,
        "guidance": 3.0,
        "expert": "high",
        "lora_multipliers": [1.0],
    }
    assert len(out["sigmas"]) == 7 and out["sigmas"][-1] == 0.0
