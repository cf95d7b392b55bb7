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
