"""The rest of the Wan family on tiny random-weight models: Wan 2.1 i2v (with CLIP image tokens), flf2v, Wan 2.2
TI2V 5B (48-channel VAE, start image as the clean first latent frame) and the 1.3B t2v / VACE.

Conditioning is checked against an independent implementation, diffusers' own pipelines on the same tiny weights,
seed, sigmas and prompt, compared on the final latents (as in test_equivalence_conditioning.py). Each comparison is
parametrised with deliberately broken versions of our conditioning (`BREAKS`), which must then NOT match: the tests
are known to bite. Every new tiny model also generates a real mp4 through the engine, checked with ffprobe.
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
from diffusers import WanImageToVideoPipeline, WanPipeline
from engine_helpers import BROKEN_GAP, FixedSigmasEuler, assert_matches_diffusers, ffprobe, gradient_image
from transformers import CLIPImageProcessorPil, CLIPVisionModel

import Wan2GP.conditioning as conditioning_module
import Wan2GP.engine as engine_module
import Wan2GP.sampler as sampler_module
from Wan2GP.conditioning import VaeCodec, image_to_pixels
from Wan2GP.engine import InvalidGenerationParams, RenderedVideo, WanEngine
from Wan2GP.loading import LoadedModel, needed_subfolders
from Wan2GP.sampler import Conditioning
from Wan2GP.text import TEXT_LENGTH
from Wan2GP.tiny import CLIP_TOKENS
from Wan2GP.wgp import generate_video

PROMPT = "a lighthouse on a cliff at dusk"
NEGATIVE = "blurry noise"
FRAMES = 9


@contextmanager
def broken(kind: str | None) -> Iterator[None]:
    """Our conditioning with one realistic bug planted (None: as it is)."""
    patch = pytest.MonkeyPatch()
    original_clip = engine_module.clip_image_tokens
    if kind is None:
        pass
    elif kind == "clip: last layer instead of the penultimate":
        patch.setattr(conditioning_module, "CLIP_HIDDEN_LAYER", -1)
    elif kind == "clip: a black frame's tokens instead of the start image's":
        patch.setattr(
            engine_module,
            "clip_image_tokens",
            lambda encoder, processor, images: original_clip(
                encoder, processor, [PIL.Image.new("RGB", images[0].size), *images[1:]]
            ),
        )
    elif kind == "flf2v: the end image's tokens dropped (the start image's twice)":
        patch.setattr(
            engine_module,
            "clip_image_tokens",
            lambda encoder, processor, images: original_clip(encoder, processor, [images[0], images[0]]),
        )
    elif kind == "flf2v: first and last image's tokens swapped":
        patch.setattr(
            engine_module,
            "clip_image_tokens",
            lambda encoder, processor, images: original_clip(encoder, processor, images[::-1]),
        )
    elif kind == "latent normalisation skipped":
        patch.setattr(VaeCodec, "encode", lambda self, pixels: self.vae.encode(pixels.unsqueeze(0)).latent_dist.mode())
    elif kind == "ti2v: the start frame's tokens get the step's timestep":
        original_timesteps = sampler_module.token_timesteps
        patch.setattr(
            sampler_module,
            "token_timesteps",
            lambda timestep, shape, patch_size, clean_frames: original_timesteps(timestep, shape, patch_size, 0),
        )
    elif kind == "ti2v: no start image taken as a zero first latent frame":
        original_conditioning = WanEngine._conditioning

        def zero_start(self: WanEngine, request: Any, model: LoadedModel, codec: VaeCodec) -> Conditioning:
            condition = original_conditioning(self, request, model, codec)
            shape = (1, model.vae.config.z_dim, 1, request.height // 16, request.width // 16)
            return Conditioning(
                prompt_embeds=condition.prompt_embeds,
                negative_embeds=condition.negative_embeds,
                clean_first_frame=torch.zeros(shape),
            )

        patch.setattr(WanEngine, "_conditioning", zero_start)
    else:
        raise AssertionError(kind)
    try:
        yield
    finally:
        patch.undo()


def _render(engine: WanEngine, model_id: str, kind: str | None, **specific: object) -> RenderedVideo:
    params = dict(prompt=PROMPT, negative_prompt=NEGATIVE, video_length=FRAMES, num_inference_steps=4)
    params.update(sample_solver="euler", flow_shift=5, guidance_phases=1, guidance_scale=3.0, seed=21)
    with broken(kind):
        return engine.render(engine.resolve({"model": model_id, **params, **specific}))


def _pipeline(pipeline_class: type, model: LoadedModel, ours: RenderedVideo, **components: Any) -> Any:
    """diffusers' pipeline on the engine's own modules, fed the sigmas our plan used."""
    scheduler = FixedSigmasEuler(shift=1.0)
    scheduler.fixed_sigmas = np.asarray(ours.request.plan.sigmas[:-1])
    return pipeline_class(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=model.vae,
        scheduler=scheduler,
        transformer=model.transformers["high"],
        **components,
    )


def _reference_latents(pipe: Any, ours: RenderedVideo, **call: object) -> torch.Tensor:
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_frames=FRAMES,
        num_inference_steps=4,
        guidance_scale=3.0,
        height=ours.request.height,
        width=ours.request.width,
        generator=torch.Generator("cpu").manual_seed(ours.request.seed),
        output_type="latent",
        max_sequence_length=TEXT_LENGTH,
        **call,
    ).frames


class StartImageClipPipeline(WanImageToVideoPipeline):
    """diffusers' i2v pipeline with an end image CLIP-encodes both images, which only an FLF2V transformer (its
    position embedding over two images' tokens) can take: a Wan 2.1 i2v transformer fails on the batch of two.
    Wan's i2v conditions on the start image's tokens alone, so the reference does too; the rest is diffusers'."""

    def encode_image(self, image: Any, device: torch.device | None = None) -> torch.Tensor:
        return super().encode_image(image[0] if isinstance(image, list) else image, device)


# -- Wan 2.1 image-to-video with CLIP ---------------------------------------------------------------------------------

CLIP_BREAKS = [
    None,
    "clip: last layer instead of the penultimate",
    "clip: a black frame's tokens instead of the start image's",
    "latent normalisation skipped",
]
# Every break with the start image alone; with an end image too, the clean case and the one about which image's
# tokens the model sees.
I2V_PAIRS = [(False, kind) for kind in CLIP_BREAKS] + [(True, None), (True, CLIP_BREAKS[2])]


@pytest.mark.parametrize(("with_end", "kind"), I2V_PAIRS)
def test_i2v_matches_wan_image_to_video_pipeline_with_clip(
    diffusers_like_engine: WanEngine, with_end: bool, kind: str | None
) -> None:
    start, end = gradient_image(64, 48), gradient_image(64, 48, phase=2.0)
    images = {"image_start": start, **({"image_end": end} if with_end else {})}
    ours = _render(diffusers_like_engine, "wan_tiny_i2v", kind, resolution="64x48", **images)

    model = diffusers_like_engine.load("wan_tiny_i2v")
    clip = dict(image_encoder=model.image_encoder, image_processor=model.image_processor)
    pipe = _pipeline(StartImageClipPipeline, model, ours, **clip)
    reference = _reference_latents(pipe, ours, image=start, last_image=end if with_end else None)
    assert_matches_diffusers(ours.latents, reference, kind)


FLF2V_BREAKS = [
    None,
    "flf2v: the end image's tokens dropped (the start image's twice)",
    "flf2v: first and last image's tokens swapped",
    "clip: last layer instead of the penultimate",
]


@pytest.mark.parametrize("kind", FLF2V_BREAKS)
def test_flf2v_matches_wan_image_to_video_pipeline_with_both_images_clip_encoded(
    diffusers_like_engine: WanEngine, kind: str | None
) -> None:
    start, end = gradient_image(64, 48), gradient_image(64, 48, phase=2.0)
    ours = _render(diffusers_like_engine, "wan_tiny_flf2v", kind, resolution="64x48", image_start=start, image_end=end)

    model = diffusers_like_engine.load("wan_tiny_flf2v")
    clip = dict(image_encoder=model.image_encoder, image_processor=model.image_processor)
    reference = _reference_latents(
        _pipeline(WanImageToVideoPipeline, model, ours, **clip), ours, image=start, last_image=end
    )
    assert_matches_diffusers(ours.latents, reference, kind)


# -- Wan 2.2 TI2V 5B --------------------------------------------------------------------------------------------------

TI2V_T2V_BREAKS = [None, "ti2v: no start image taken as a zero first latent frame"]
TI2V_I2V_BREAKS = [
    None,
    "ti2v: the start frame's tokens get the step's timestep",
    "latent normalisation skipped",
]


@pytest.mark.parametrize("kind", TI2V_T2V_BREAKS)
def test_ti2v_text_to_video_matches_wan_pipeline_with_expanded_timesteps(engine: WanEngine, kind: str | None) -> None:
    # 96x64: 6x4 latent pixels, 3x2 tokens per frame (sides multiples of 32 for the 48-channel VAE and patch 2)
    ours = _render(engine, "wan_tiny_ti2v", kind, resolution="96x64")
    assert ours.latents.shape == (1, 48, 3, 4, 6)

    model = engine.load("wan_tiny_ti2v")
    reference = _reference_latents(_pipeline(WanPipeline, model, ours, expand_timesteps=True), ours)
    assert_matches_diffusers(ours.latents, reference, kind)


@pytest.mark.parametrize("kind", TI2V_I2V_BREAKS)
def test_ti2v_image_to_video_matches_wan_image_to_video_pipeline_with_expanded_timesteps(
    engine: WanEngine, kind: str | None
) -> None:
    start = gradient_image(96, 64)
    ours = _render(engine, "wan_tiny_ti2v", kind, resolution="96x64", image_start=start)

    model = engine.load("wan_tiny_ti2v")
    pipe = _pipeline(WanImageToVideoPipeline, model, ours, expand_timesteps=True)
    reference = _reference_latents(pipe, ours, image=start)
    assert_matches_diffusers(ours.latents, reference, kind)


def test_ti2v_first_latent_frame_is_exactly_the_start_image(engine: WanEngine) -> None:
    start = gradient_image(96, 64, phase=1.0)
    ours = _render(engine, "wan_tiny_ti2v", None, resolution="96x64", image_start=start)
    codec = VaeCodec(engine.load("wan_tiny_ti2v").vae)
    with torch.inference_mode():
        start_latent = codec.encode(image_to_pixels(start, 96, 64))
    assert start_latent.shape == (1, 48, 1, 4, 6)
    assert torch.equal(ours.latents[:, :, :1], start_latent)
    text_only = _render(engine, "wan_tiny_ti2v", None, resolution="96x64")
    assert (text_only.latents[:, :, 1:] - ours.latents[:, :, 1:]).abs().max() > BROKEN_GAP  # the image conditions


# -- the tiny models: shapes, components, loading ---------------------------------------------------------------------


def test_tiny_models_have_their_architectures_shapes(engine: WanEngine, cache_dir: Path) -> None:
    i2v = engine.load("wan_tiny_i2v")
    config = i2v.transformers["high"].config
    assert (config.in_channels, config.out_channels, config.image_dim, config.pos_embed_seq_len) == (36, 16, 32, None)
    assert config.added_kv_proj_dim == config.num_attention_heads * config.attention_head_dim
    assert isinstance(i2v.image_encoder, CLIPVisionModel) and isinstance(i2v.image_processor, CLIPImageProcessorPil)
    folder_names = sorted(path.name for path in i2v.weights_dir.iterdir() if path.is_dir())
    assert folder_names == sorted(needed_subfolders(i2v.definition))
    assert {"image_encoder", "image_processor"} <= set(folder_names)

    flf2v = engine.load("wan_tiny_flf2v").transformers["high"].config
    assert (flf2v.in_channels, flf2v.image_dim, flf2v.pos_embed_seq_len) == (36, 32, 2 * CLIP_TOKENS)

    ti2v = engine.load("wan_tiny_ti2v")
    vae = ti2v.vae.config
    assert (vae.z_dim, vae.scale_factor_spatial, vae.patch_size, vae.is_residual) == (48, 16, 2, True)
    assert len(vae.latents_mean) == len(vae.latents_std) == 48
    transformer = ti2v.transformers["high"].config
    assert (transformer.in_channels, transformer.out_channels, transformer.image_dim) == (48, 48, None)
    assert ti2v.image_encoder is None and "image_encoder" not in needed_subfolders(ti2v.definition)

    for model_id, transformer_class in (
        ("wan_tiny_t2v_1_3b", "WanTransformer3DModel"),
        ("wan_tiny_vace_1_3b", "WanVACETransformer3DModel"),
    ):
        model = engine.load(model_id)
        assert type(model.transformers["high"]).__name__ == transformer_class
        assert model.weights_dir == cache_dir / "tiny" / model_id


# -- generations through the engine: real mp4 files -------------------------------------------------------------------

GENERATIONS = [
    # (model, extra params, expected (frames, width, height, fps))
    ("wan_tiny_t2v_1_3b", dict(resolution="48x32", video_length=14), (13, 48, 32, 16)),
    ("wan_tiny_vace_1_3b", {}, (9, 64, 64, 16)),
    ("wan_tiny_i2v", dict(resolution="64x48", image_start="start.png"), (9, 64, 48, 16)),
    ("wan_tiny_i2v", dict(resolution="64x48", image_start="start.png", image_end="end.png"), (9, 64, 48, 16)),
    ("wan_tiny_flf2v", dict(image_start="start.png", image_end="end.png", video_length=13), (13, 64, 64, 16)),
    ("wan_tiny_ti2v", dict(resolution="96x64"), (9, 96, 64, 24)),
    # 80x48 snaps to multiples of 32 (the 48-channel VAE's 16 x patch 2), not of 16
    ("wan_tiny_ti2v", dict(resolution="80x48", image_start="start.png", video_length=17), (17, 64, 32, 24)),
]


@pytest.mark.parametrize(("model_id", "extra", "expected"), GENERATIONS)
def test_generates_an_mp4_with_the_right_frames_size_and_fps(
    engine: WanEngine, tmp_path: Path, model_id: str, extra: dict[str, object], expected: tuple[int, int, int, int]
) -> None:
    gradient_image(80, 60).save(tmp_path / "start.png")
    gradient_image(80, 60, phase=2.0).save(tmp_path / "end.png")
    params = {key: str(tmp_path / value) if key.startswith("image_") else value for key, value in extra.items()}
    result = generate_video(model=model_id, prompt=PROMPT, output_dir=tmp_path, engine=engine, **params)
    frames, width, height, fps = expected
    assert (result.frames, result.width, result.height, result.fps) == expected
    stream = ffprobe(result.path)
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (width, height, frames)
    assert stream["r_frame_rate"] == f"{fps}/1"


# -- which images each architecture takes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "images", "field", "message"),
    [
        ("wan_tiny_t2v_1_3b", ("image_start",), "image_start", "takes no start image"),
        ("wan_tiny_vace_1_3b", ("image_end",), "image_end", "takes no end image"),
        ("wan_tiny_ti2v", ("image_start", "image_end"), "image_end", "takes no end image"),
        ("wan_tiny_flf2v", ("image_start",), "image_end", "expected an end image"),
    ],
)
def test_images_an_architecture_does_not_take_are_refused(
    engine: WanEngine, tmp_path: Path, model_id: str, images: tuple[str, ...], field: str, message: str
) -> None:
    gradient_image(64, 64).save(tmp_path / "image.png")
    params = {"model": model_id, **dict.fromkeys(images, str(tmp_path / "image.png"))}
    with pytest.raises(InvalidGenerationParams, match=message) as error:
        engine.resolve(params)
    assert error.value.fields == (field,)
