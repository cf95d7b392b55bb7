"""The multi-phase denoising loop, written out in one function (``denoise``), readable top to bottom.

Everything that varies per step (timestep, phase, guidance, expert, LoRA strengths) comes from the
``GenerationPlan`` computed by ``Wan2GP.schedule``; this module only executes it. No diffusers pipeline can do this:
3 guidance phases, per-phase CFG, an expert switch at an arbitrary phase and per-step LoRA strengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from Wan2GP.schedule import GenerationPlan, StepPlan

NUM_TRAIN_TIMESTEPS = 1000
EXPERTS = ("high", "low")


class GenerationCancelled(RuntimeError):
    """The cancel event was set; the generation stopped between two denoising steps."""


class CancelFlag(Protocol):
    """What the loop reads between steps: a threading.Event, or a context-parallel group's shared flag."""

    def is_set(self) -> bool: ...


class StepStrengths(Protocol):
    """What the loop needs from a LoRA runtime (Wan2GP.loras.LoraRuntime)."""

    def set_step_strengths(self, expert: str, strengths: tuple[float, ...]) -> None: ...


# ---------------------------------------------------------------------------------------------------------------------
# Solvers: x_{i+1} = step(v_i, i, x_i). All consume the plan's explicit sigmas; none recomputes a schedule.


class EulerSolver:
    """Upstream Wan2GP's euler (upstream_engine_spec §9.1): dt = (t_i - t_{i+1}) / 1000 from the float32 timesteps,
    the last dt = t_N / 1000 (landing on sigma 0), x <- x - v * dt in float32."""

    def __init__(self, plan: GenerationPlan) -> None:
        timesteps = np.asarray(plan.timesteps, dtype=np.float32)
        following = np.append(timesteps[1:], np.float32(0.0))
        # float32 differences, then a float64 Python scalar, exactly as upstream's `tensor.item() / 1000`.
        self._dts = [
            float(current - nxt) / NUM_TRAIN_TIMESTEPS for current, nxt in zip(timesteps, following, strict=True)
        ]

    def step(self, velocity: torch.Tensor, index: int, latents: torch.Tensor) -> torch.Tensor:
        return latents - velocity * self._dts[index]


class DiffusersSolver:
    """UniPC (bh2, order 2, x0-prediction) or DPM-Solver++(2M) from diffusers in flow-prediction mode, with the
    plan's sigmas installed explicitly so that the grid is ours, not the scheduler's."""

    def __init__(self, plan: GenerationPlan, device: torch.device, generator: torch.Generator) -> None:
        sigmas = np.asarray(plan.sigmas, dtype=np.float64)
        flow_args: dict[str, Any] = dict(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=1.0,  # the plan's sigmas are already shifted
            solver_order=2,
            lower_order_final=True,
            final_sigmas_type="zero",
        )
        if plan.sample_solver == "unipc":
            scheduler: Any = UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, **flow_args)
            # set_timesteps(sigmas=...) takes our grid as is (shift 1 is the identity). It needs a numpy array (it does
            # arithmetic on it) despite its list annotation, and it appends the final 0 itself.
            scheduler.set_timesteps(sigmas=sigmas[:-1].copy(), device=device)
        else:
            algorithm = "sde-dpmsolver++" if plan.sample_solver == "dpm++_sde" else "dpmsolver++"
            scheduler = DPMSolverMultistepScheduler(algorithm_type=algorithm, solver_type="midpoint", **flow_args)
            # This scheduler has no `sigmas=` argument: let it size its state, then install our grid.
            scheduler.set_timesteps(num_inference_steps=plan.num_inference_steps, device=device)
            scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float32)
            scheduler.timesteps = torch.tensor(np.asarray(plan.timesteps), dtype=torch.float32, device=device)
        scheduler.set_begin_index(0)
        self._scheduler = scheduler
        self._timesteps = scheduler.timesteps
        self._generator = generator if plan.sample_solver == "dpm++_sde" else None

    def step(self, velocity: torch.Tensor, index: int, latents: torch.Tensor) -> torch.Tensor:
        extra = {"generator": self._generator} if self._generator is not None else {}
        return self._scheduler.step(velocity, self._timesteps[index], latents, return_dict=False, **extra)[0]


def make_solver(
    plan: GenerationPlan, device: torch.device, generator: torch.Generator
) -> EulerSolver | DiffusersSolver:
    if plan.sample_solver == "euler":
        return EulerSolver(plan)
    return DiffusersSolver(plan, device, generator)


# ---------------------------------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class Conditioning:
    """Everything besides the noisy latents that the transformer gets, constant over the run."""

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None  # None when no step has guidance != 1
    image_channels: torch.Tensor | None = None  # i2v: (1, 20, T, h, w), concatenated after the latents
    first_frame_latents: torch.Tensor | None = None  # i2v: clean start-frame latents, re-injected every step
    # e.g. VACE control_hidden_states and their scale; Wan 2.1 i2v's CLIP tokens (encoder_hidden_states_image)
    model_kwargs: Mapping[str, torch.Tensor] | None = None
    reference_frames: int = 0  # VACE: leading latent frames that hold reference images, dropped from the result
    # ti2v (Wan 2.2 5B) with a start image: its clean latent frame (1, z, 1, h, w) stands as the first latent frame
    # before every forward, where its tokens get timestep 0 (the rest the step's), and in the result.
    clean_first_frame: torch.Tensor | None = None


@dataclass(frozen=True)
class DenoiseResult:
    latents: torch.Tensor  # (1, z, T, h, w) float32
    forward_passes: dict[str, int]


def model_timestep_for(plan: GenerationPlan, step: StepPlan) -> float:
    """The timestep value the transformer is fed. Upstream feeds euler's float timesteps as they are, but truncates
    the multistep solvers' (unipc, dpm++) to int64; the plan keeps floats, so the truncation happens here."""
    if plan.sample_solver == "euler":
        return step.timestep
    return float(math.floor(step.timestep))


def expert_for_step(step: StepPlan, transformers: Mapping[str, torch.nn.Module]) -> str:
    """The plan says "low" from the switch phase on; a single-expert model keeps its only transformer (upstream)."""
    return step.expert if step.expert in transformers else "high"


def token_timesteps(
    timestep: float, latent_shape: tuple[int, ...], patch_size: tuple[int, int, int], clean_frames: int
) -> torch.Tensor:
    """(1, tokens) float32: one timestep per transformer token, 0 on the tokens of the first `clean_frames` latent
    frames (already clean: Wan 2.2 5B's start image), `timestep` on the others. Tokens run frame by frame, then row
    by row, as the transformer flattens its patches; Wan's temporal patch is 1, so one latent frame is one token frame."""
    frames, height, width = latent_shape[2:]
    patch_frames, patch_height, patch_width = patch_size
    if patch_frames != 1:
        raise ValueError(f"patch_size: expected a temporal patch of 1 (every Wan transformer), got {patch_size}")
    per_frame = (height // patch_height) * (width // patch_width)
    values = torch.full((1, frames * per_frame), timestep, dtype=torch.float32)
    values[:, : clean_frames * per_frame] = 0.0
    return values


def denoise(
    *,
    plan: GenerationPlan,
    transformers: Mapping[str, torch.nn.Module],
    conditioning: Conditioning,
    latent_shape: tuple[int, ...],
    generator: torch.Generator,
    model_dtype: torch.dtype,
    loras: StepStrengths | None = None,
    cancel: CancelFlag | None = None,
    on_step: Callable[[StepPlan, str], None] | None = None,
) -> DenoiseResult:
    device = conditioning.prompt_embeds.device
    # The initial noise is the first thing drawn from the seeded generator: same seed, same noise.
    latents = torch.randn(latent_shape, generator=generator, device=device, dtype=torch.float32)
    solver = make_solver(plan, device, generator)
    model_kwargs = dict(conditioning.model_kwargs or {})
    first_frame = conditioning.first_frame_latents
    clean_first_frame = conditioning.clean_first_frame
    forward_passes = dict.fromkeys(EXPERTS, 0)

    for step in plan.steps:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(f"cancelled before step {step.index + 1}/{plan.num_inference_steps}")
        expert = expert_for_step(step, transformers)
        transformer = transformers[expert]
        if loras is not None:
            loras.set_step_strengths(expert, step.lora_multipliers)

        model_timestep = model_timestep_for(plan, step)
        sigma = model_timestep / NUM_TRAIN_TIMESTEPS
        if first_frame is not None:
            # i2v (upstream §9.9): the start frame is re-noised to the current noise level before every forward.
            frame_noise = torch.randn(first_frame.shape, generator=generator, device=device, dtype=torch.float32)
            latents[:, :, : first_frame.shape[2]] = first_frame * (1.0 - sigma) + frame_noise * sigma
        if clean_first_frame is not None:
            # ti2v: the start frame stays clean, and the model is told so by a timestep of 0 on its tokens. Written in
            # place (diffusers blends it into a copy): every solver works elementwise, so no other frame changes.
            latents[:, :, :1] = clean_first_frame
            patch_size = tuple(transformer.config.patch_size)
            timestep = token_timesteps(model_timestep, latents.shape, patch_size, clean_frames=1).to(device)
        else:
            # one value for every token (ti2v without a start image too: what diffusers' per-token timesteps amount
            # to there, without their per-token modulation tensors)
            timestep = torch.full((1,), model_timestep, dtype=torch.float32, device=device)

        model_input = latents
        if conditioning.image_channels is not None:
            model_input = torch.cat([latents, conditioning.image_channels], dim=1)
        model_input = model_input.to(model_dtype)

        conditional = _velocity(transformer, model_input, timestep, conditioning.prompt_embeds, model_kwargs)
        forward_passes[expert] += 1
        if step.guidance != 1.0:
            if conditioning.negative_embeds is None:
                raise RuntimeError(f"step {step.index} has guidance {step.guidance} but no negative prompt was encoded")
            # Separate forwards (not a batch of 2), combined in float32: Wan2GP's numerics.
            unconditional = _velocity(transformer, model_input, timestep, conditioning.negative_embeds, model_kwargs)
            forward_passes[expert] += 1
            noise_prediction = unconditional + step.guidance * (conditional - unconditional)
        else:
            noise_prediction = conditional  # guidance 1: the unconditional pass would cancel out, so skip it

        latents = solver.step(noise_prediction, step.index, latents)
        if on_step is not None:
            on_step(step, expert)

    if first_frame is not None:
        latents[:, :, : first_frame.shape[2]] = first_frame
    if clean_first_frame is not None:
        latents[:, :, :1] = clean_first_frame
    if conditioning.reference_frames:
        latents = latents[:, :, conditioning.reference_frames :]
    return DenoiseResult(latents=latents, forward_passes=forward_passes)


def _velocity(
    transformer: torch.nn.Module,
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    model_kwargs: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """One transformer forward; the flow velocity in float32."""
    output = transformer(
        hidden_states=model_input,
        timestep=timestep,
        encoder_hidden_states=context,
        return_dict=False,
        **model_kwargs,
    )[0]
    return output.float()


def needs_negative_prompt(plan: GenerationPlan) -> bool:
    return any(step.guidance != 1.0 for step in plan.steps)
