"""Image-to-video and VACE against independent implementations: diffusers' WanImageToVideoPipeline and
WanVACEPipeline on the same tiny weights, seed, sigmas and prompt, compared on the final latents.

With random weights every output is noise, so only such a comparison catches a conditioning built wrong (channels
swapped, a normalisation dropped, a mask one frame off). Each comparison is parametrised with deliberately broken
versions of our conditioning (`BREAKS`), which must then NOT match: the tests are known to bite.

Where we follow Wan2GP on purpose and diffusers does not, the comparison turns that behaviour off and a test of its
own checks it: i2v start-frame re-injection (`WanEngine(reinject_start_frame=False)` here; on by default, checked by
`test_reinjection_makes_frame_0_exactly_the_start_latent`), and VACE's grey fill of masked guide pixels (the "M" letter
of video_prompt_type, left out here; checked in test_generate.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline, WanVACEPipeline
from engine_helpers import (
    BROKEN_GAP,
    FixedSigmasEuler,
    assert_matches_diffusers,
    forward_log,
    frames_video,
    gradient_image,
)
from lora_fixtures import make_lora_spec, write_original

import Wan2GP.engine as engine_module
from Wan2GP.conditioning import ImageCondition, VaeCodec, reference_pixels
from Wan2GP.engine import RenderedVideo, WanEngine
from Wan2GP.loading import LoadedModel
from Wan2GP.text import TEXT_LENGTH
from Wan2GP.video_io import read_video

PROMPT = "a lighthouse on a cliff at dusk"
NEGATIVE = "blurry noise"


@contextmanager
def broken(kind: str | None) -> Iterator[None]:
    """Our conditioning with one realistic bug planted (None: as it is)."""
    if kind is None:
        yield
        return
    patch = pytest.MonkeyPatch()
    if kind == "i2v: mask and image-latent channels swapped":
        original_image = engine_module.build_image_condition

        def swapped(*args, **kwargs) -> ImageCondition:  # noqa: ANN002, ANN003
            condition = original_image(*args, **kwargs)
            channels = torch.cat([condition.channels[:, 4:], condition.channels[:, :4]], dim=1)
            return ImageCondition(channels=channels, first_frame_latents=condition.first_frame_latents)

        patch.setattr(engine_module, "build_image_condition", swapped)
    elif kind == "latent normalisation skipped":
        patch.setattr(VaeCodec, "encode", lambda self, pixels: self.vae.encode(pixels.unsqueeze(0)).latent_dist.mode())
    elif kind == "i2v: end-frame mask on the wrong latent frame":
        original_image = engine_module.build_image_condition

        def shifted(*args, **kwargs) -> ImageCondition:  # noqa: ANN002, ANN003
            condition = original_image(*args, **kwargs)
            channels = condition.channels.clone()
            channels[:, :4] = torch.roll(channels[:, :4], shifts=-1, dims=2)
            return ImageCondition(channels=channels, first_frame_latents=condition.first_frame_latents)

        patch.setattr(engine_module, "build_image_condition", shifted)
    elif kind in ("vace: inactive and reactive swapped", "vace: mask unshuffled transposed"):
        original_vace = engine_module.build_vace_context

        def wrong(*args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
            context = original_vace(*args, **kwargs)
            if kind == "vace: inactive and reactive swapped":
                return torch.cat([context[:, 16:32], context[:, :16], context[:, 32:]], dim=1)
            mask = (
                context[:, 32:].reshape(1, 8, 8, *context.shape[2:]).transpose(1, 2).reshape(1, 64, *context.shape[2:])
            )
            return torch.cat([context[:, :32], mask], dim=1)

        patch.setattr(engine_module, "build_vace_context", wrong)
    else:
        raise AssertionError(kind)
    try:
        yield
    finally:
        patch.undo()


def _scheduler(sigmas: list[float]) -> FixedSigmasEuler:
    scheduler = FixedSigmasEuler(shift=1.0)
    scheduler.fixed_sigmas = np.asarray(sigmas[:-1])
    return scheduler


def _our_params(model_id: str, **specific: object) -> dict[str, object]:
    """The engine's side of a comparison: what both sides share, then the case's own settings."""
    shared = dict(prompt=PROMPT, negative_prompt=NEGATIVE, video_length=9, num_inference_steps=4, sample_solver="euler")
    return {"model": model_id, **shared, "flow_shift": 5, **specific}


def _pipeline(pipeline_class: type, model: LoadedModel, ours: RenderedVideo, boundary_ratio: float | None):  # noqa: ANN202
    """diffusers' pipeline on the engine's own modules, fed the sigmas our plan used."""
    return pipeline_class(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=model.vae,
        scheduler=_scheduler(list(ours.request.plan.sigmas)),
        transformer=model.transformers["high"],
        transformer_2=model.transformers["low"] if boundary_ratio is not None else None,
        boundary_ratio=boundary_ratio,
    )


def _reference_latents(pipe: Any, ours: RenderedVideo, **call: object) -> torch.Tensor:
    """The pipeline's final latents for the case's own arguments, with the same prompt, frames, steps and seed."""
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_frames=9,
        num_inference_steps=4,
        generator=torch.Generator("cpu").manual_seed(ours.request.seed),
        output_type="latent",
        max_sequence_length=TEXT_LENGTH,
        **call,
    ).frames


# -- image-to-video ---------------------------------------------------------------------------------------------------

I2V_CASES = [
    # (model, boundary_ratio, end image?). Wan 2.2 i2v always has two experts; boundary None runs one of them for
    # every step (one guidance phase, no switch), as a one-expert model would. With 0.812 both switch at t = 812.
    ("wan_tiny_i2v_2_2", None, False),
    ("wan_tiny_i2v_2_2", 0.812, False),
    ("wan_tiny_i2v_2_2", 0.812, True),
]
I2V_BREAKS = [
    None,
    "i2v: mask and image-latent channels swapped",
    "latent normalisation skipped",
    "i2v: end-frame mask on the wrong latent frame",
]


# Every case with every break that means something for it (an end-frame mask exists only with an end image).
I2V_PAIRS = [
    (*case, kind)
    for case in I2V_CASES
    for kind in I2V_BREAKS
    if case[2] or kind != "i2v: end-frame mask on the wrong latent frame"
]


@pytest.mark.parametrize(("model_id", "boundary_ratio", "with_end", "kind"), I2V_PAIRS)
def test_i2v_matches_wan_image_to_video_pipeline(
    diffusers_like_engine: WanEngine, model_id: str, boundary_ratio: float | None, with_end: bool, kind: str | None
) -> None:
    start, end = gradient_image(64, 48), gradient_image(64, 48, phase=2.0)
    params = _our_params(model_id, resolution="64x48", guidance_scale=3.0, image_start=start, seed=21)
    if boundary_ratio is not None:
        params.update(guidance_phases=2, guidance2_scale=2.0, switch_threshold=812, model_switch_phase=1)
    else:
        params.update(guidance_phases=1)
    if with_end:
        params["image_end"] = end
    with broken(kind):
        ours = diffusers_like_engine.render(diffusers_like_engine.resolve(params))

    model = diffusers_like_engine.load(model_id)
    pipe = _pipeline(WanImageToVideoPipeline, model, ours, boundary_ratio)
    with forward_log(model.transformers) as log:
        reference = _reference_latents(
            pipe,
            ours,
            image=start,
            last_image=end if with_end else None,
            height=48,
            width=64,
            guidance_scale=3.0,
            guidance_scale_2=2.0 if boundary_ratio is not None else None,
        )
    if boundary_ratio is not None:  # both split the four steps 2 + 2 between the experts
        assert log.calls == ["high"] * 4 + ["low"] * 4 and ours.forward_passes == {"high": 4, "low": 4}
    else:
        assert log.calls == ["high"] * 8 and ours.forward_passes == {"high": 8, "low": 0}
    assert_matches_diffusers(ours.latents, reference, kind)


def test_reinjection_makes_frame_0_exactly_the_start_latent(
    engine: WanEngine, diffusers_like_engine: WanEngine
) -> None:
    # Wan2GP's behaviour, on by default: the first latent frame ends as the clean encoding of the start image.
    start = gradient_image(64, 64)
    params = dict(model="wan_tiny_i2v_2_2", prompt=PROMPT, image_start=start, seed=4)
    with_reinjection = engine.render(engine.resolve(params))
    without = diffusers_like_engine.render(diffusers_like_engine.resolve(params))
    codec = VaeCodec(engine.load("wan_tiny_i2v_2_2").vae)
    with torch.inference_mode():
        start_latent = codec.encode(
            torch.from_numpy(np.asarray(start, dtype=np.float32)).permute(2, 0, 1)[:, None] / 127.5 - 1
        )
    assert torch.allclose(with_reinjection.latents[:, :, :1], start_latent, atol=1e-6)
    assert (without.latents[:, :, :1] - start_latent).abs().max() > BROKEN_GAP  # diffusers leaves it to the model


# -- VACE -------------------------------------------------------------------------------------------------------------


def _guide(tmp_path: Path) -> tuple[Path, list[PIL.Image.Image]]:
    rng = np.random.default_rng(3)
    base = np.asarray(gradient_image(64, 64), dtype=np.float32)
    frames = np.stack([np.clip(base + rng.normal(0, 30, size=base.shape), 0, 255) for _ in range(9)]).astype(np.uint8)
    path = frames_video(tmp_path / "guide.mp4", frames)
    return path, [PIL.Image.fromarray(frame) for frame in read_video(path).frames]


def _mask(tmp_path: Path) -> tuple[Path, list[PIL.Image.Image]]:
    # black = keep the guide, white = generate; frames 0-1 and 8 kept. The shapes cut through 8x8 blocks (a kept
    # rectangle at odd offsets, a diagonal), so the order of the 64 mask channels matters.
    frames = np.zeros((9, 64, 64, 3), dtype=np.uint8)
    frames[2:8] = 255
    frames[3:6, 13:45, 5:27] = 0
    ys, xs = np.mgrid[0:64, 0:64]
    frames[6][xs > ys + 3] = 0
    path = frames_video(tmp_path / "mask.mp4", frames)
    return path, [PIL.Image.fromarray(frame) for frame in read_video(path).frames]


VACE_CASES = [
    # (model, boundary_ratio, guide?, mask?, control_net_weight, reference images). A mask without a guide has no
    # diffusers counterpart (WanVACEPipeline: "`mask` can only be passed if `video` is passed as well").
    ("wan_tiny_vace", None, True, True, 1.0, 0),
    ("wan_tiny_vace", None, True, False, 0.6, 0),  # guide only (all generated), weaker control
    ("wan_tiny_vace", None, True, True, 1.0, 2),  # two reference images ("I"), each a latent frame before the video
    ("wan_tiny_vace_2_2", 0.8, True, True, 1.3, 1),
]
VACE_BREAKS = [
    None,
    "vace: inactive and reactive swapped",
    "vace: mask unshuffled transposed",
    "latent normalisation skipped",
]


# Without a mask every mask channel is 1, so transposing their order changes nothing: that pair is left out.
VACE_PAIRS = [
    (*case, kind)
    for case in VACE_CASES
    for kind in VACE_BREAKS
    if case[3] or kind != "vace: mask unshuffled transposed"
]


@pytest.mark.parametrize(
    ("model_id", "boundary_ratio", "with_guide", "with_mask", "weight", "references", "kind"), VACE_PAIRS
)
def test_vace_matches_wan_vace_pipeline(
    engine: WanEngine,
    tmp_path: Path,
    model_id: str,
    boundary_ratio: float | None,
    with_guide: bool,
    with_mask: bool,
    weight: float,
    references: int,
    kind: str | None,
) -> None:
    guide_path, guide_frames = _guide(tmp_path)
    mask_path, mask_frames = _mask(tmp_path)
    # Images of the frame's size: both sides fit them unchanged (ours resize with Lanczos, diffusers bilinearly).
    reference_images = [gradient_image(64, 64, phase=1.0 + index) for index in range(references)]
    # no "M": grey fill is Wan2GP's, not diffusers'
    letters = ("V" if with_guide else "") + ("A" if with_mask else "") + ("I" if references else "")
    params = _our_params(
        model_id,
        resolution="64x64",
        guidance_scale=2.5,
        video_prompt_type=letters,
        control_net_weight=weight,
        seed=33,
    )
    if with_guide:
        params["video_guide"] = str(guide_path)
    if with_mask:
        params["video_mask"] = str(mask_path)
    if references:
        params["image_refs"] = reference_images
    if boundary_ratio is not None:
        params.update(guidance_phases=2, guidance2_scale=1.5, switch_threshold=800, model_switch_phase=1)
    else:
        params.update(guidance_phases=1)
    with broken(kind):
        ours = engine.render(engine.resolve(params))

    pipe = _pipeline(WanVACEPipeline, engine.load(model_id), ours, boundary_ratio)
    reference = _reference_latents(
        pipe,
        ours,
        video=guide_frames if with_guide else None,
        mask=mask_frames if with_mask else None,
        # diffusers prepends each reference in turn, so its time order is the list reversed; Wan's (and ours) is
        # the list's. (On the tiny model the order moves the latents by ~3e-4 only.)
        reference_images=list(reversed(reference_images)) or None,
        conditioning_scale=weight,
        height=64,
        width=64,
        guidance_scale=2.5,
        guidance_scale_2=1.5 if boundary_ratio is not None else None,
    )
    # diffusers' latent output keeps the reference frames in front; ours drops them as the decoder would
    assert_matches_diffusers(ours.latents, reference[:, :, references:], kind)


def test_a_reference_image_is_fitted_and_padded_white() -> None:
    wide = PIL.Image.new("RGB", (32, 8), (0, 0, 0))  # 4:1 into 64x64: 64x16, centred, white above and below
    pixels = reference_pixels(wide, 64, 64)
    assert pixels.shape == (3, 1, 64, 64)
    assert torch.all(pixels[:, 0, :24] == 1.0) and torch.all(pixels[:, 0, 40:] == 1.0)
    assert torch.all(pixels[:, 0, 24:40] == -1.0)


def test_the_breaks_are_real_bugs(engine: WanEngine) -> None:
    # Guards the guard: each planted bug changes our own output (a no-op "break" would make the negative cases vacuous).
    start = gradient_image(64, 64)
    base = dict(model="wan_tiny_i2v_2_2", prompt=PROMPT, image_start=start, image_end=gradient_image(64, 64, phase=1.0))
    clean = engine.render(engine.resolve(base)).latents
    for kind in I2V_BREAKS[1:]:
        with broken(kind):
            assert (engine.render(engine.resolve(base)).latents - clean).abs().max() > BROKEN_GAP, kind


# -- LoRA strengths ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model_id", "strength"), [("wan_tiny_t2v", 0.7), ("wan_tiny_t2v_2_2", 1.3)])
def test_a_constant_strength_lora_matches_diffusers_adapters(
    engine: WanEngine, tmp_path: Path, model_id: str, strength: float
) -> None:
    """An original-Wan (ComfyUI) file through our runtime equals the same file through diffusers' own LoRA loader
    (`load_lora_weights` + `set_adapters` at that weight), on every expert."""
    model = engine.load(model_id)
    spec = make_lora_spec(model.transformers["high"], seed=11, scale=0.4)
    path = write_original(spec, tmp_path / "style.safetensors")
    params = _our_params(
        model_id,
        resolution="64x64",
        guidance_scale=3.0,
        seed=5,
        activated_loras=[str(path)],
        loras_multipliers=str(strength),
    )
    two_experts = "low" in model.transformers
    if two_experts:
        params.update(guidance_phases=2, guidance2_scale=3.0, switch_threshold=800, model_switch_phase=1)
    ours = engine.render(engine.resolve(params))
    without = engine.render(engine.resolve({**params, "loras_multipliers": "0"}))

    pipe = _pipeline(WanPipeline, model, ours, 0.8 if two_experts else None)
    try:
        pipe.load_lora_weights(str(path), adapter_name="style")
        if two_experts:
            pipe.load_lora_weights(str(path), adapter_name="style", load_into_transformer_2=True)
        pipe.set_adapters(["style"], [strength])
        reference = _reference_latents(
            pipe, ours, height=64, width=64, guidance_scale=3.0, guidance_scale_2=3.0 if two_experts else None
        )
    finally:
        pipe.unload_lora_weights()  # the engine's session-wide transformers go back to their base modules
    assert (ours.latents - without.latents).abs().max() > BROKEN_GAP  # the LoRA matters at this strength
    assert_matches_diffusers(ours.latents, reference, None)
