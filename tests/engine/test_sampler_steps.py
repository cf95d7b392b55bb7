"""The denoising loop's exact per-step properties, on the tiny models and on the solvers alone.

The comparisons with diffusers' pipelines (test_equivalence*.py) prove whole runs; these pin what those cannot see:
the timestep each token is fed, euler's float32 step sizes, DPM-Solver++ against an independent float64 implementation
(no diffusers pipeline takes our sigma grid with it), and Wan2GP's i2v start-frame re-noising, which diffusers does
not do at all.
"""

from __future__ import annotations

import copy
import math
import threading
from typing import Any

import numpy as np
import pytest
import torch
from engine_helpers import forward_log, gradient_image

from Wan2GP.engine import WanEngine
from Wan2GP.loading import LoadedModel
from Wan2GP.sampler import (
    Conditioning,
    DenoiseResult,
    EulerSolver,
    GenerationCancelled,
    denoise,
    expert_for_step,
    make_solver,
    model_timestep_for,
    needs_negative_prompt,
    token_timesteps,
)
from Wan2GP.schedule import GenerationPlan, StepPlan, build_plan
from Wan2GP.text import TEXT_LENGTH

PROMPT = "a lighthouse on a cliff at dusk"


def _plan(engine: WanEngine, **params: object) -> GenerationPlan:
    return engine.resolve({"model": "wan_tiny_t2v", "prompt": PROMPT, **params}).plan


# -- per-token timesteps (Wan 2.2 5B's clean start frame) --------------------------------------------------------------


@pytest.mark.parametrize("clean_frames", [0, 1, 2])
def test_token_timesteps_are_zero_on_the_clean_frames_tokens_only(clean_frames: int) -> None:
    # 3 latent frames of 4x6 with 2x2 patches: 6 tokens per frame, frame by frame
    values = token_timesteps(909.25, (1, 48, 3, 4, 6), (1, 2, 2), clean_frames)
    assert values.shape == (1, 18) and values.dtype == torch.float32
    assert values[0].tolist() == [0.0] * (6 * clean_frames) + [909.25] * (6 * (3 - clean_frames))


def test_token_timesteps_count_tokens_per_patch_row_and_column() -> None:
    values = token_timesteps(500.0, (1, 16, 2, 6, 8), (1, 3, 2), 1)  # 2 x 4 = 8 tokens per frame
    assert values[0].tolist() == [0.0] * 8 + [500.0] * 8


def test_token_timesteps_refuse_a_temporal_patch_other_than_one() -> None:
    with pytest.raises(ValueError, match=r"patch_size: expected a temporal patch of 1 .*got \(2, 2, 2\)"):
        token_timesteps(500.0, (1, 16, 2, 4, 4), (2, 2, 2), 1)


# -- timesteps, experts, negative prompt -------------------------------------------------------------------------------


def test_euler_feeds_float_timesteps_and_multistep_solvers_truncated_ones(engine: WanEngine) -> None:
    euler = _plan(engine, sample_solver="euler", num_inference_steps=6)
    unipc = _plan(engine, sample_solver="unipc", num_inference_steps=6)
    assert model_timestep_for(euler, euler.steps[1]) == euler.steps[1].timestep != int(euler.steps[1].timestep)
    fed = [model_timestep_for(unipc, step) for step in unipc.steps]
    assert fed == [float(math.floor(step.timestep)) for step in unipc.steps]
    assert fed[0] == 999.0  # 999.8 truncated, not rounded


def test_a_one_expert_model_runs_low_noise_steps_on_its_only_transformer(engine: WanEngine) -> None:
    plan = engine.resolve(
        {"model": "wan_tiny_t2v_2_2", "prompt": PROMPT, "guidance_phases": 2, "switch_threshold": 800}
    ).plan
    low_step = next(step for step in plan.steps if step.expert == "low")
    high, low = torch.nn.Identity(), torch.nn.Identity()
    assert expert_for_step(low_step, {"high": high, "low": low}) == "low"
    assert expert_for_step(low_step, {"high": high}) == "high"
    assert expert_for_step(plan.steps[0], {"high": high, "low": low}) == "high"


def test_a_negative_prompt_is_needed_only_when_some_step_has_guidance(engine: WanEngine) -> None:
    assert not needs_negative_prompt(_plan(engine, guidance_scale=1))
    assert needs_negative_prompt(_plan(engine, guidance_scale=3))
    assert needs_negative_prompt(_plan(engine, guidance_scale=0.5))  # below 1 guides away from the prompt
    # guidance only in the last phase is enough
    two_phases = _plan(engine, guidance_phases=2, guidance_scale=1, guidance2_scale=2, switch_threshold=800)
    assert needs_negative_prompt(two_phases)


# -- solvers ------------------------------------------------------------------------------------------------------------


def test_euler_steps_are_float32_timestep_differences_and_land_on_sigma_zero(engine: WanEngine) -> None:
    plan = _plan(engine, sample_solver="euler", num_inference_steps=5)
    solver = EulerSolver(plan)
    timesteps = np.asarray(plan.timesteps, dtype=np.float32)
    following = [*timesteps[1:], np.float32(0.0)]
    latents = torch.zeros(1, 2, 1, 2, 2)
    for index in range(5):
        step = solver.step(torch.ones_like(latents), index, latents)  # x - v * dt with v = 1: -dt
        expected = float(timesteps[index] - following[index]) / 1000
        assert torch.all(step == -expected)
    assert solver.step(torch.ones(1), 4, torch.zeros(1)).item() == pytest.approx(-plan.timesteps[4] / 1000)


def _dpm_reference(sigmas: list[float], velocities: list[torch.Tensor], start: torch.Tensor, noises=None):  # noqa: ANN001, ANN202
    """DPM-Solver++(2M), midpoint, data prediction, in float64 (Lu et al. 2022; alpha = 1 - sigma for flow matching):
    first order on the first step, the last one lands on the prediction (sigma 0). ``noises``: the SDE variant's."""

    def lam(s: float) -> float:  # log(alpha / sigma); -inf at sigma 1, where a first-order step is the interpolation
        return -math.inf if s == 1.0 else math.log(1 - s) - math.log(s)

    x = start.double()
    previous = None
    for index, velocity in enumerate(velocities):
        sigma, target = sigmas[index], sigmas[index + 1]
        denoised = x - sigma * velocity.double()
        if target == 0.0:
            x = denoised
        else:
            h = lam(target) - lam(sigma)
            correction = 0.0
            if index > 0:
                r = (lam(sigma) - lam(sigmas[index - 1])) / h
                correction = (denoised - previous) / r
            if noises is None:
                x = target / sigma * x - (1 - target) * math.expm1(-h) * (denoised + 0.5 * correction)
            else:
                x = (
                    target / sigma * math.exp(-h) * x
                    + (1 - target) * -math.expm1(-2 * h) * (denoised + 0.5 * correction)
                    + target * math.sqrt(-math.expm1(-2 * h)) * noises[index].double()
                )
        previous = denoised
    return x.float()


def _solve(plan: GenerationPlan, velocities: list[torch.Tensor], start: torch.Tensor, seed: int) -> torch.Tensor:
    solver = make_solver(plan, torch.device("cpu"), torch.Generator("cpu").manual_seed(seed))
    latents = start.clone()
    for index, velocity in enumerate(velocities):
        latents = solver.step(velocity, index, latents)
    return latents


def _velocities(count: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    rng = torch.Generator().manual_seed(3)
    start = torch.randn(1, 4, 2, 3, 3, generator=rng)
    return start, [torch.randn(1, 4, 2, 3, 3, generator=rng) for _ in range(count)]


def test_dpm_plus_plus_is_dpm_solver_2m_on_the_plans_sigmas(engine: WanEngine) -> None:
    # 6 steps: a first-order step, four second-order ones (solver order 2, not 3), the last onto the prediction
    plan = _plan(engine, sample_solver="dpm++", num_inference_steps=6)
    start, velocities = _velocities(6)
    ours = _solve(plan, velocities, start, seed=0)
    torch.testing.assert_close(ours, _dpm_reference(list(plan.sigmas), velocities, start), atol=2e-5, rtol=1e-5)


def test_dpm_plus_plus_sde_adds_the_seeded_generators_noise(engine: WanEngine) -> None:
    plan = _plan(engine, sample_solver="dpm++_sde", num_inference_steps=6)
    start, velocities = _velocities(6)
    draws = torch.Generator("cpu").manual_seed(11)
    noises = [torch.randn(start.shape, generator=draws) for _ in range(6)]  # one draw per step, in order
    ours = _solve(plan, velocities, start, seed=11)
    reference = _dpm_reference(list(plan.sigmas), velocities, start, noises)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)
    assert torch.equal(_solve(plan, velocities, start, seed=11), ours)
    assert (_solve(plan, velocities, start, seed=12) - ours).abs().max() > 1e-3


# -- the loop on a tiny model -------------------------------------------------------------------------------------------


def _t2v_inputs(engine: WanEngine, **params: object):  # noqa: ANN202
    plan = _plan(engine, num_inference_steps=4, **params)
    model = engine.load("wan_tiny_t2v")
    embeds = torch.randn(
        1, TEXT_LENGTH, model.transformers["high"].config.text_dim, generator=torch.Generator().manual_seed(1)
    )
    return plan, model, embeds


def _denoise(
    plan: GenerationPlan,
    model: LoadedModel,
    conditioning: Conditioning,
    *,
    shape: tuple[int, ...] = (1, 16, 1, 4, 4),
    **extra: Any,
) -> DenoiseResult:
    """denoise on the model's transformers in float32, its noise from seed 0."""
    return denoise(
        plan=plan,
        transformers=model.transformers,
        conditioning=conditioning,
        latent_shape=shape,
        generator=torch.Generator().manual_seed(0),
        model_dtype=torch.float32,
        **extra,
    )


def test_ti2v_start_frame_stands_clean_with_timestep_zero_on_its_tokens_at_every_step(engine: WanEngine) -> None:
    model = engine.load("wan_tiny_ti2v")
    plan = engine.resolve(
        {"model": "wan_tiny_ti2v", "prompt": PROMPT, "num_inference_steps": 3, "guidance_scale": 1}
    ).plan
    transformer = model.transformers["high"]
    embeds = torch.randn(1, TEXT_LENGTH, transformer.config.text_dim, generator=torch.Generator().manual_seed(1))
    clean = torch.randn(1, 48, 1, 4, 6, generator=torch.Generator().manual_seed(2))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = transformer.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append((kwargs["hidden_states"].clone(), kwargs["timestep"].clone())),
        with_kwargs=True,
    )
    try:
        result = _denoise(
            plan,
            model,
            Conditioning(prompt_embeds=embeds, negative_embeds=None, clean_first_frame=clean),
            shape=(1, 48, 3, 4, 6),
        )
    finally:
        hook.remove()
    assert len(seen) == 3
    for step, (hidden, timestep) in zip(plan.steps, seen, strict=True):
        assert torch.equal(hidden[:, :, :1], clean)  # the clean frame, not a noisy one, is what the model sees
        assert not torch.equal(hidden[:, :, 1:2], hidden[:, :, :1])
        # 4x6 latent pixels in 2x2 patches: 6 tokens per frame; the first frame's are at 0, the rest at the step's
        assert timestep.tolist() == [[0.0] * 6 + [np.float32(model_timestep_for(plan, step))] * 12]
    assert torch.equal(result.latents[:, :, :1], clean)
    assert not torch.equal(result.latents[:, :, 1:2], clean)  # only the first frame is the clean one


def test_each_step_sets_the_lora_strengths_of_its_expert_before_its_forwards(engine: WanEngine) -> None:
    plan = build_plan(
        num_inference_steps=4,
        sample_solver="euler",
        flow_shift=5.0,
        guidance_phases=2,
        guidance_scale=1.0,
        guidance2_scale=1.0,
        switch_threshold=900.0,
        loras_multipliers="0.5,0.75;0 1;0.25",
        num_loras=2,
    )
    model = engine.load("wan_tiny_t2v_2_2")
    embeds = torch.randn(
        1, TEXT_LENGTH, model.transformers["high"].config.text_dim, generator=torch.Generator().manual_seed(1)
    )
    with forward_log(model.transformers) as log:

        class Recorder:  # writes into the forward log, so the order of strengths and forwards shows
            def set_step_strengths(self, expert: str, strengths: tuple[float, ...]) -> None:
                log.calls.append(f"strengths {expert} {strengths}")

        def done(step: StepPlan, expert: str) -> None:  # the progress callback: after each step, naming its expert
            log.calls.append(f"done {step.index} {expert}")

        conditioning = Conditioning(prompt_embeds=embeds, negative_embeds=None)
        _denoise(plan, model, conditioning, loras=Recorder(), on_step=done)
    assert [step.lora_multipliers for step in plan.steps] == [(0.5, 1.0), (0.75, 1.0), (0.0, 0.25), (0.0, 0.25)]
    expected: list[str] = []
    for step in plan.steps:
        expected += [
            f"strengths {step.expert} {step.lora_multipliers}",
            step.expert,
            f"done {step.index} {step.expert}",
        ]
    assert log.calls == expected
    assert [call for call in log.calls if call in ("high", "low")] == ["high", "high", "low", "low"]


def test_a_step_with_guidance_and_no_negative_prompt_is_refused(engine: WanEngine) -> None:
    plan, model, embeds = _t2v_inputs(engine, guidance_scale=3)
    with pytest.raises(RuntimeError, match="step 0 has guidance 3.0 but no negative prompt was encoded"):
        _denoise(plan, model, Conditioning(prompt_embeds=embeds, negative_embeds=None))


def test_an_sde_run_draws_its_step_noise_from_the_runs_generator_not_torchs_global_one(engine: WanEngine) -> None:
    plan, model, embeds = _t2v_inputs(engine, guidance_scale=1, sample_solver="dpm++_sde")
    conditioning = Conditioning(prompt_embeds=embeds, negative_embeds=None)
    torch.manual_seed(1)
    first = _denoise(plan, model, conditioning).latents
    torch.manual_seed(2)  # the global generator moved elsewhere: a retried segment must not change
    assert torch.equal(_denoise(plan, model, conditioning).latents, first)


def test_leading_reference_frames_are_denoised_with_the_video_and_dropped_from_the_result(engine: WanEngine) -> None:
    plan, model, embeds = _t2v_inputs(engine, guidance_scale=1)

    def run(reference_frames: int) -> torch.Tensor:
        conditioning = Conditioning(prompt_embeds=embeds, negative_embeds=None, reference_frames=reference_frames)
        return _denoise(plan, model, conditioning, shape=(1, 16, 3, 4, 4)).latents

    whole = run(0)
    assert whole.shape[2] == 3
    assert torch.equal(run(1), whole[:, :, 1:])
    assert torch.equal(run(2), whole[:, :, 2:])


def test_cancel_names_the_step_it_stopped_before(engine: WanEngine) -> None:
    plan, model, embeds = _t2v_inputs(engine, guidance_scale=1)
    cancel = threading.Event()
    with pytest.raises(GenerationCancelled, match=r"cancelled before step 3/4"):
        _denoise(
            plan,
            model,
            Conditioning(prompt_embeds=embeds, negative_embeds=None),
            cancel=cancel,
            on_step=lambda step, expert: cancel.set() if step.index == 1 else None,
        )


def test_i2v_start_frame_is_renoised_to_each_steps_level_from_the_seeded_generator(engine: WanEngine) -> None:
    # Wan2GP (upstream §9.9): before every forward, latent frame 0 = start latent * (1 - sigma) + fresh noise * sigma,
    # the noise drawn from the seeded generator right after the initial latents; the other frames are the solver's.
    model = engine.load("wan_tiny_i2v_2_2")
    request = engine.resolve(
        {"model": "wan_tiny_i2v_2_2", "prompt": PROMPT, "image_start": gradient_image(64, 64), "guidance_phases": 1}
    )
    request_plan = request.plan
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(_module, _args, kwargs):  # noqa: ANN001, ANN202
        inputs.append((kwargs["hidden_states"].clone(), kwargs["timestep"].clone()))

    handle = model.transformers["high"].register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = engine.render(request)
    finally:
        handle.remove()
    steps = request_plan.num_inference_steps
    per_step = len(inputs) // steps
    assert per_step in (1, 2) and len(inputs) == per_step * steps

    hidden = inputs[0][0]
    first_frame = hidden[:, 20:36, :1].float()  # the image latents' first frame: the clean start latent
    generator = torch.Generator("cpu").manual_seed(request.seed)
    initial = torch.randn((1, 16, *hidden.shape[2:]), generator=generator)
    assert torch.equal(hidden[:, :16, 1:], initial[:, :, 1:])  # the other frames start as the initial noise
    for index, step in enumerate(request_plan.steps):
        noise = torch.randn(first_frame.shape, generator=generator)
        sigma = step.timestep / 1000
        model_input, timestep = inputs[index * per_step]
        torch.testing.assert_close(
            model_input[:, :16, :1], first_frame * (1 - sigma) + noise * sigma, atol=1e-6, rtol=0
        )
        assert timestep.tolist() == [np.float32(step.timestep)]
    # and the result ends on the clean start latent, in its first frame only
    assert torch.equal(result.latents[:, :, :1], first_frame)
    assert result.latents.shape[2] > 1 and not torch.equal(result.latents[:, :, 1:2], first_frame)


@pytest.mark.parametrize("guidance", [3.5, 0.5])  # below 1 too: only exactly 1 skips the unconditional pass
def test_a_bf16_models_velocities_are_combined_in_float32(engine: WanEngine, guidance: float) -> None:
    # Wan2GP's numerics: each forward's output widened to float32 before CFG and the solver, latents kept in float32.
    plan, model, embeds = _t2v_inputs(engine, guidance_scale=guidance, sample_solver="euler")
    transformer = copy.deepcopy(model.transformers["high"]).to(torch.bfloat16)
    outputs: list[torch.Tensor] = []
    transformer.register_forward_hook(lambda _module, _args, output: outputs.append(output[0].clone()))
    shape = (1, 16, 1, 4, 4)
    result = denoise(
        plan=plan,
        transformers={"high": transformer},
        conditioning=Conditioning(prompt_embeds=embeds.bfloat16(), negative_embeds=-embeds.bfloat16()),
        latent_shape=shape,
        generator=torch.Generator().manual_seed(0),
        model_dtype=torch.bfloat16,
    )
    assert result.latents.dtype == torch.float32 and len(outputs) == 8
    assert all(output.dtype == torch.bfloat16 for output in outputs)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    solver = EulerSolver(plan)
    for index, step in enumerate(plan.steps):
        conditional, unconditional = outputs[2 * index].float(), outputs[2 * index + 1].float()
        latents = solver.step(unconditional + step.guidance * (conditional - unconditional), index, latents)
    assert torch.equal(result.latents, latents)


def test_the_conditionings_extra_inputs_reach_every_forward(engine: WanEngine) -> None:
    """VACE's control states and Wan 2.1's CLIP tokens travel as Conditioning.model_kwargs: each forward gets them."""
    plan, model, embeds = _t2v_inputs(engine, guidance_scale=3)
    extra = {"attention_kwargs": {}}  # an input WanTransformer3DModel takes without changing its output
    seen: list[object] = []
    hook = model.transformers["high"].register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(kwargs.get("attention_kwargs", "missing")), with_kwargs=True
    )
    try:
        conditioning = Conditioning(prompt_embeds=embeds, negative_embeds=embeds, model_kwargs=extra)
        _denoise(plan, model, conditioning)
    finally:
        hook.remove()
    assert len(seen) == 2 * plan.num_inference_steps  # conditional and unconditional forwards alike
    assert all(value is extra["attention_kwargs"] for value in seen)
