"""The conditioning tensors themselves, on small hand-built inputs and the real tiny Wan VAE: pixel ranges and
layouts, the i2v mask channels, the VACE context's channel groups, mask unshuffle order and reference frames.

The comparisons with diffusers (test_equivalence_conditioning.py, test_wan_family.py) prove the whole chain on a few
cases; these pin each piece's exact layout, so a bug shows here as the wrong value at a known place.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from engine_helpers import gradient_image
from log_capture import captured_warnings

from Wan2GP.conditioning import (
    VaeCodec,
    black_frame,
    build_image_condition,
    build_vace_context,
    clip_image_tokens,
    frame_image,
    guide_pixels,
    image_to_pixels,
    latent_frames,
    load_image,
    mask_values,
    reference_pixels,
)
from Wan2GP.engine import WanEngine
from Wan2GP.video_io import DecodedVideo

GREY = 127 / 127.5 - 1.0  # upstream's grey fill: level 127, just under the mid-level 0


@pytest.fixture(scope="module")
def codec(engine: WanEngine) -> VaeCodec:
    """The real tiny Wan VAE (z = 16, 8x spatial, 4x temporal), kept alive by this module's reference."""
    return VaeCodec(engine.load("wan_tiny_vace").vae)


def _video(frames: np.ndarray) -> DecodedVideo:
    return DecodedVideo(frames=frames.astype(np.uint8), fps=16.0)


def _random_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


# -- VAE codec ----------------------------------------------------------------------------------------------------------


def test_codec_reports_the_vae_factors_and_device(codec: VaeCodec) -> None:
    assert (codec.spatial_factor, codec.temporal_factor) == (8, 4)
    assert codec.device == torch.device("cpu")


def test_codec_latents_are_normalised_per_channel_and_decode_inverts_it(codec: VaeCodec) -> None:
    pixels = image_to_pixels(gradient_image(32, 16), 32, 16).repeat(1, 5, 1, 1)
    raw = codec.vae.encode(pixels.unsqueeze(0)).latent_dist.mode()
    mean = torch.tensor(codec.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(codec.vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents = codec.encode(pixels)
    assert latents.shape == (1, 16, 2, 2, 4) and latents.dtype == torch.float32
    torch.testing.assert_close(latents, (raw - mean) / std)
    # decode un-normalises before the VAE: it gives exactly what the VAE gives for the raw latents
    decoded = codec.decode(latents)
    assert decoded.shape == (3, 5, 16, 32) and decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, codec.vae.decode(raw, return_dict=False)[0][0], atol=1e-5, rtol=1e-5)


def test_codec_of_a_bfloat16_vae_takes_and_returns_float32(codec: VaeCodec) -> None:
    # Production VAEs may run in bf16: the codec casts the pixels in and hands float32 back either way.
    half = VaeCodec(copy.deepcopy(codec.vae).to(torch.bfloat16))
    pixels = image_to_pixels(gradient_image(32, 16), 32, 16)
    latents = half.encode(pixels)
    assert latents.dtype == torch.float32
    torch.testing.assert_close(latents, codec.encode(pixels), atol=0.1, rtol=0.05)
    decoded = half.decode(latents.to(torch.bfloat16))
    assert decoded.dtype == torch.float32 and decoded.shape == (3, 1, 16, 32)


def _overflowing_fp16_vae(codec: VaeCodec) -> torch.nn.Module:
    """A float16 copy of the tiny VAE whose encoder's and decoder's first convolutions output 65000 +- ~5e3, past
    fp16's 65504 in about half the positions, from weights and biases fp16 holds; fp32 carries them on."""
    vae = copy.deepcopy(codec.vae)
    with torch.no_grad():
        for conv in (vae.encoder.conv_in, vae.decoder.conv_in):
            conv.weight.mul_(1e4)
            conv.bias.fill_(65000.0)
    return vae.to(torch.float16)


def test_a_float16_vae_that_overflows_decodes_and_encodes_again_in_float32(codec: VaeCodec) -> None:
    """fp16 decodes the seed segment as fast as bf16 and 8x closer to fp32 (bench/README.md), but its range ends at
    65504: where a call's output is not finite, the codec runs it again on a float32 copy of the same weights."""
    overflowing = _overflowing_fp16_vae(codec)
    widened = VaeCodec(copy.deepcopy(overflowing).float())  # what the fallback computes: the fp16 weights, in fp32
    pixels = image_to_pixels(gradient_image(32, 16), 32, 16).repeat(1, 5, 1, 1)
    latents = torch.randn((1, 16, 2, 2, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the overflow is real: fp16's own output is not finite
        assert not torch.isfinite(overflowing.decode(latents.half(), return_dict=False)[0]).all()
    with captured_warnings() as warnings:
        decoded = VaeCodec(overflowing).decode(latents)
        encoded = VaeCodec(overflowing).encode(pixels)
    assert torch.isfinite(decoded).all() and torch.isfinite(encoded).all()
    torch.testing.assert_close(decoded, widened.decode(latents), atol=0, rtol=0)
    torch.testing.assert_close(encoded, widened.encode(pixels), atol=0, rtol=0)
    assert warnings == [
        "the float16 VAE overflowed in its decode: running it again in float32",
        "the float16 VAE overflowed in its encode: running it again in float32",
    ]
    assert overflowing.dtype == torch.float16, "the float32 copy is for that call only"


def test_a_float16_vae_that_stays_finite_is_used_as_it_is(codec: VaeCodec) -> None:
    half = VaeCodec(copy.deepcopy(codec.vae).to(torch.float16))
    latents = torch.randn((1, 16, 2, 2, 4), generator=torch.Generator().manual_seed(0))
    with captured_warnings() as warnings:
        decoded = half.decode(latents)
    reference = codec.decode(latents)
    assert warnings == [] and decoded.dtype == torch.float32
    # fp16 arithmetic, not a float32 rerun: near fp32's output, not equal to it
    assert 0 < float((decoded - reference).norm() / reference.norm()) < 1e-2


@pytest.mark.parametrize(("frames", "latent"), [(1, 1), (2, 1), (5, 2), (8, 2), (9, 3), (81, 21)])
def test_latent_frames_fold_four_pixel_frames_after_the_first(frames: int, latent: int) -> None:
    assert latent_frames(frames) == latent


# -- images -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_load_image_reads_a_path_or_an_image_as_rgb(tmp_path: Path, mode: str) -> None:
    image = PIL.Image.new(mode, (6, 4), 200 if mode in ("L", "P") else (200, 100, 50, 255))
    path = tmp_path / "image.png"
    image.save(path)
    for source in (path, str(path), image):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (6, 4)


def test_frame_image_is_exactly_the_requested_size_lanczos_resized() -> None:
    image = gradient_image(40, 30)
    framed = frame_image(image, 64, 48)
    assert framed.size == (64, 48)
    assert np.array_equal(np.asarray(framed), np.asarray(image.resize((64, 48), PIL.Image.Resampling.LANCZOS)))
    assert frame_image(image, 40, 30) is image  # already the size: untouched


def test_black_frame_is_all_black_rgb() -> None:
    frame = black_frame(6, 4)
    assert frame.mode == "RGB" and frame.size == (6, 4)
    assert not np.asarray(frame).any()


def test_image_to_pixels_maps_0_255_to_minus_1_1_channel_first() -> None:
    array = np.array([[[0, 255, 51], [255, 0, 102], [0, 0, 0]], [[10, 20, 30], [40, 50, 60], [255, 255, 255]]])
    pixels = image_to_pixels(PIL.Image.fromarray(array.astype(np.uint8)), 3, 2)
    assert pixels.shape == (3, 1, 2, 3) and pixels.dtype == torch.float32
    expected = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)[:, None] / 127.5 - 1.0
    assert torch.equal(pixels, expected)
    assert pixels[0, 0, 0, 0] == -1.0 and pixels[1, 0, 0, 0] == 1.0
    # another size: resized to exactly W x H first
    assert image_to_pixels(gradient_image(40, 30), 16, 8).shape == (3, 1, 8, 16)


# -- i2v image condition ----------------------------------------------------------------------------------------------


def _image_condition(codec: VaeCodec, *, with_start: bool, with_end: bool, num_frames: int):  # noqa: ANN202
    start = image_to_pixels(gradient_image(32, 16), 32, 16) if with_start else None
    end = image_to_pixels(gradient_image(32, 16, phase=2.0), 32, 16) if with_end else None
    condition = build_image_condition(codec, start=start, end=end, num_frames=num_frames, width=32, height=16)
    return condition, start, end


@pytest.mark.parametrize("num_frames", [5, 9])
def test_i2v_mask_marks_the_start_frame_in_all_four_channels_of_latent_frame_0(
    codec: VaeCodec, num_frames: int
) -> None:
    condition, _, _ = _image_condition(codec, with_start=True, with_end=False, num_frames=num_frames)
    frames = latent_frames(num_frames)
    assert condition.channels.shape == (1, 20, frames, 2, 4)
    mask = condition.channels[:, :4]
    assert torch.all(mask[:, :, 0] == 1.0)
    assert torch.all(mask[:, :, 1:] == 0.0)


@pytest.mark.parametrize("num_frames", [5, 9])
def test_i2v_mask_marks_the_end_frame_in_the_last_channel_of_the_last_latent_frame(
    codec: VaeCodec, num_frames: int
) -> None:
    # The last latent frame folds pixel frames F-4 .. F-1 into channels 0..3: only the end image (F-1) is known.
    condition, _, _ = _image_condition(codec, with_start=True, with_end=True, num_frames=num_frames)
    mask = condition.channels[0, :4]
    assert torch.all(mask[:, 0] == 1.0)
    expected_last = torch.tensor([0.0, 0.0, 0.0, 1.0]).view(4, 1, 1).expand(4, 2, 4)
    assert torch.equal(mask[:, -1], expected_last)
    assert torch.all(mask[:, 1:-1] == 0.0)


def test_i2v_image_latents_encode_start_grey_middle_and_end(codec: VaeCodec) -> None:
    condition, start, end = _image_condition(codec, with_start=True, with_end=True, num_frames=9)
    grey_middle = torch.zeros(3, 7, 16, 32)  # 0 is mid-grey in [-1, 1]
    expected = codec.encode(torch.cat([start, grey_middle, end], dim=1))
    torch.testing.assert_close(condition.channels[:, 4:], expected, atol=1e-6, rtol=0)
    # the re-injected start latent is the condition's first latent frame, which only the start image shapes
    assert condition.first_frame_latents.shape == (1, 16, 1, 2, 4)
    assert torch.equal(condition.first_frame_latents, condition.channels[:, 4:, :1])
    torch.testing.assert_close(condition.first_frame_latents, codec.encode(start), atol=1e-5, rtol=1e-5)


def test_i2v_without_start_image_conditions_on_a_black_first_frame(codec: VaeCodec) -> None:
    condition, _, _ = _image_condition(codec, with_start=False, with_end=False, num_frames=5)
    black = torch.full((3, 1, 16, 32), -1.0)
    expected = codec.encode(torch.cat([black, torch.zeros(3, 4, 16, 32)], dim=1))
    torch.testing.assert_close(condition.channels[:, 4:], expected, atol=1e-6, rtol=0)
    assert torch.all(condition.channels[:, :4, 0] == 1.0)  # the black frame still counts as the known start


def test_conditioning_is_built_on_the_vae_device(codec: VaeCodec) -> None:
    # A VAE on a GPU gets its masks beside its latents; the meta device stands in (shapes only, no compute).
    on_meta = VaeCodec(copy.deepcopy(codec.vae).to("meta"))
    pixels = torch.zeros(3, 1, 16, 32)
    condition = build_image_condition(on_meta, start=pixels, end=pixels, num_frames=5, width=32, height=16)
    assert condition.channels.device.type == "meta" and condition.channels.shape == (1, 20, 2, 2, 4)
    context = build_vace_context(
        on_meta, guide=None, mask=None, grey_masked_pixels=False, references=[pixels], **VACE_SIZE
    )
    assert context.device.type == "meta" and context.shape == (1, 96, 3, 2, 4)


def test_the_i2v_video_is_built_where_the_vae_is_in_its_dtype(codec: VaeCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    # At 768x576x53 the video is 281 MB of float32: built on the host it was filled, concatenated and copied to the
    # GPU before every segment. The meta device stands in for the GPU; the VAE runs in bf16 as the fast path's does.
    on_meta = VaeCodec(copy.deepcopy(codec.vae).to(device="meta", dtype=torch.bfloat16))
    encoded: list[torch.Tensor] = []
    original = VaeCodec.encode
    monkeypatch.setattr(VaeCodec, "encode", lambda self, pixels: encoded.append(pixels) or original(self, pixels))
    pixels = torch.zeros(3, 1, 16, 32)
    build_image_condition(on_meta, start=pixels, end=pixels, num_frames=5, width=32, height=16)
    assert [(video.device.type, video.dtype, tuple(video.shape)) for video in encoded] == [
        ("meta", torch.bfloat16, (3, 5, 16, 32))
    ]


# -- CLIP image tokens ------------------------------------------------------------------------------------------------


def test_clip_tokens_are_the_penultimate_layer_per_image_in_float32(engine: WanEngine) -> None:
    model = engine.load("wan_tiny_i2v")
    images = [gradient_image(64, 48), gradient_image(64, 48, phase=2.0)]
    tokens = clip_image_tokens(model.image_encoder, model.image_processor, images)
    assert tokens.dtype == torch.float32 and tokens.shape[0] == 2
    alone = clip_image_tokens(model.image_encoder, model.image_processor, images[1:])
    torch.testing.assert_close(tokens[1:], alone, atol=1e-5, rtol=1e-5)  # one row per image, in order
    # a bf16 tower gets its pixels in bf16 and still hands float32 tokens back
    half = copy.deepcopy(model.image_encoder).to(torch.bfloat16)
    half_tokens = clip_image_tokens(half, model.image_processor, images)
    assert half_tokens.dtype == torch.float32
    torch.testing.assert_close(half_tokens, tokens, atol=0.1, rtol=0.05)


# -- VACE inputs ------------------------------------------------------------------------------------------------------


def test_guide_pixels_takes_the_first_frames_in_minus_1_1_channel_first() -> None:
    frames = _random_frames(7, 16, 24)
    pixels = guide_pixels(_video(frames), 5, 24, 16)
    assert pixels.shape == (3, 5, 16, 24) and pixels.dtype == torch.float32
    expected = torch.from_numpy(frames[:5].astype(np.float32)).permute(3, 0, 1, 2) / 127.5 - 1.0
    assert torch.equal(pixels, expected)


def test_guide_pixels_lanczos_resizes_each_frame_to_the_output_size() -> None:
    frames = _random_frames(5, 12, 20)
    pixels = guide_pixels(_video(frames), 5, 32, 16)
    assert pixels.shape == (3, 5, 16, 32)
    for index, frame in enumerate(frames):
        resized = np.asarray(PIL.Image.fromarray(frame).resize((32, 16), PIL.Image.Resampling.LANCZOS))
        assert torch.equal(pixels[:, index], torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1)


def test_a_guide_of_exactly_the_needed_length_is_accepted_and_a_shorter_one_is_not() -> None:
    assert guide_pixels(_video(_random_frames(5, 8, 8)), 5, 8, 8).shape == (3, 5, 8, 8)
    with pytest.raises(ValueError, match="expected at least 5 frames, got 4"):
        guide_pixels(_video(_random_frames(4, 8, 8)), 5, 8, 8)
    with pytest.raises(ValueError, match="expected at least 5 frames, got 4"):
        mask_values(_video(_random_frames(4, 8, 8)), 5, 8, 8, negate=False)


def test_mask_values_threshold_the_grey_mean_at_mid_level() -> None:
    # per-pixel RGB: 127 and 128 grey sit either side of 127.5; pure red averages 85 (keep), yellow 170 (generate)
    colours = [(127, 127, 127), (128, 128, 128), (255, 0, 0), (255, 255, 0), (0, 0, 0), (255, 255, 255)]
    frame = np.array([colours], dtype=np.uint8)  # (1, 6, 3)
    frames = np.stack([frame, 255 - frame])
    mask = mask_values(_video(frames), 2, 6, 1, negate=False)
    assert mask.shape == (1, 2, 1, 6) and mask.dtype == torch.float32
    assert mask[0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert mask[0, 1, 0].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    negated = mask_values(_video(frames), 2, 6, 1, negate=True)
    assert torch.equal(negated, 1.0 - mask)


def test_mask_values_resizes_to_the_output_size_and_keeps_only_the_first_frames() -> None:
    frames = np.zeros((4, 4, 4, 3), dtype=np.uint8)
    frames[:, :, 2:] = 255  # right half white
    frames[3] = 255
    mask = mask_values(_video(frames), 3, 16, 8, negate=False)
    assert mask.shape == (1, 3, 8, 16)
    assert torch.all(mask[0, :, :, :6] == 0.0) and torch.all(mask[0, :, :, 10:] == 1.0)


def test_a_reference_image_of_the_frame_size_is_used_as_it_is() -> None:
    image = gradient_image(32, 16)
    assert torch.equal(reference_pixels(image, 32, 16), image_to_pixels(image, 32, 16))


def test_a_tall_reference_is_scaled_up_and_centred_between_white_columns() -> None:
    tall = PIL.Image.new("RGB", (8, 16), (0, 0, 0))  # 1:2 into 64x32: scaled 2x to 16x32, at columns 24..39
    pixels = reference_pixels(tall, 64, 32)
    assert pixels.shape == (3, 1, 32, 64)
    assert torch.all(pixels[:, 0, :, :24] == 1.0) and torch.all(pixels[:, 0, :, 40:] == 1.0)
    assert torch.all(pixels[:, 0, :, 24:40] == -1.0)


def test_a_reference_is_lanczos_scaled_to_fit() -> None:
    image = gradient_image(40, 30)  # 4:3 into 64x64: 64x48 at rows 8..55
    pixels = reference_pixels(image, 64, 64)
    scaled = image.resize((64, 48), PIL.Image.Resampling.LANCZOS)
    assert torch.equal(pixels[:, :, 8:56], image_to_pixels(scaled, 64, 48))


@pytest.mark.parametrize("size", [(200, 2), (2, 200)])
def test_a_reference_thinner_than_a_pixel_after_scaling_keeps_one_pixel_line(size: tuple[int, int]) -> None:
    strip = PIL.Image.new("RGB", size, (0, 0, 0))  # 64 / 200 scales its 2 pixels across to 0.64: kept as 1
    image = reference_pixels(strip, 64, 64)[:, 0]
    if size[0] < size[1]:
        image = image.transpose(1, 2)  # a column: look at it as a row
    black_rows = torch.all(image == -1.0, dim=(0, 2)).nonzero().flatten().tolist()
    assert black_rows == [31]  # (64 - 1) // 2
    assert torch.all(image[:, :31] == 1.0) and torch.all(image[:, 32:] == 1.0)


# -- VACE context -----------------------------------------------------------------------------------------------------

VACE_SIZE = dict(num_frames=5, width=32, height=16)  # 2 latent frames of 2x4


def _guide() -> torch.Tensor:
    return guide_pixels(_video(_random_frames(5, 16, 32, seed=7)), 5, 32, 16)


def test_vace_context_without_guide_or_mask_is_grey_and_all_generated(codec: VaeCodec) -> None:
    context = build_vace_context(codec, guide=None, mask=None, grey_masked_pixels=False, **VACE_SIZE)
    assert context.shape == (1, 96, 2, 2, 4)
    grey = codec.encode(torch.zeros(3, 5, 16, 32))
    torch.testing.assert_close(context[:, :16], grey, atol=1e-6, rtol=0)  # zeros * (1 - 1) = zeros
    torch.testing.assert_close(context[:, 16:32], grey, atol=1e-6, rtol=0)
    assert torch.all(context[:, 32:] == 1.0)


def test_vace_kept_pixels_are_inactive_and_generated_pixels_reactive(codec: VaeCodec) -> None:
    guide = _guide()
    keep = build_vace_context(codec, guide=guide, mask=torch.zeros(1, 5, 16, 32), grey_masked_pixels=False, **VACE_SIZE)
    encoded, nothing = codec.encode(guide), codec.encode(torch.zeros_like(guide))
    torch.testing.assert_close(keep[:, :16], encoded, atol=1e-6, rtol=0)
    torch.testing.assert_close(keep[:, 16:32], nothing, atol=1e-6, rtol=0)
    assert torch.all(keep[:, 32:] == 0.0)

    generate = build_vace_context(
        codec, guide=guide, mask=torch.ones(1, 5, 16, 32), grey_masked_pixels=False, **VACE_SIZE
    )
    torch.testing.assert_close(generate[:, :16], nothing, atol=1e-6, rtol=0)
    torch.testing.assert_close(generate[:, 16:32], encoded, atol=1e-6, rtol=0)


def test_vace_grey_fill_touches_only_the_masked_pixels(codec: VaeCodec) -> None:
    # "M": the pixels to generate are replaced by upstream's grey 127 before encoding, the kept ones are not
    guide = _guide()
    mask = torch.zeros(1, 5, 16, 32)
    mask[:, :, :, 16:] = 1.0  # right half generated
    context = build_vace_context(codec, guide=guide, mask=mask, grey_masked_pixels=True, **VACE_SIZE)
    kept, grey_half = guide.clone(), torch.zeros_like(guide)
    kept[..., 16:] = 0.0
    grey_half[..., 16:] = GREY
    torch.testing.assert_close(context[:, :16], codec.encode(kept), atol=1e-6, rtol=0)
    torch.testing.assert_close(context[:, 16:32], codec.encode(grey_half), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("frame", "latent_frame"), [(1, 0), (3, 1)])
def test_vace_mask_pixel_lands_in_channel_row_times_8_plus_column(
    codec: VaeCodec, frame: int, latent_frame: int
) -> None:
    # One generated pixel at row 8 + 3, column 16 + 5: latent pixel (1, 2), channel 3 * 8 + 5. Upstream samples the
    # 5 pixel frames' masks at frames 1 and 3 for the 2 latent frames ("nearest-exact").
    mask = torch.zeros(1, 5, 16, 32)
    mask[0, frame, 8 + 3, 16 + 5] = 1.0
    context = build_vace_context(codec, guide=None, mask=mask, grey_masked_pixels=False, **VACE_SIZE)
    mask_channels = context[0, 32:]
    assert mask_channels.shape == (64, 2, 2, 4)
    assert mask_channels.sum() == 1.0
    assert mask_channels[3 * 8 + 5, latent_frame, 1, 2] == 1.0


def test_vace_mask_of_a_frame_that_no_latent_frame_samples_is_dropped(codec: VaeCodec) -> None:
    mask = torch.zeros(1, 5, 16, 32)
    mask[0, [0, 2, 4]] = 1.0
    context = build_vace_context(codec, guide=None, mask=mask, grey_masked_pixels=False, **VACE_SIZE)
    assert torch.all(context[:, 32:] == 0.0)


def test_vace_references_come_first_in_time_in_list_order_with_zero_reactive_and_mask(codec: VaeCodec) -> None:
    guide, mask = _guide(), torch.ones(1, 5, 16, 32)
    references = [reference_pixels(gradient_image(32, 16, phase=1.0 + index), 32, 16) for index in range(2)]
    plain = build_vace_context(codec, guide=guide, mask=mask, grey_masked_pixels=False, **VACE_SIZE)
    context = build_vace_context(
        codec, guide=guide, mask=mask, grey_masked_pixels=False, references=references, **VACE_SIZE
    )
    assert context.shape == (1, 96, 4, 2, 4)
    for index, reference in enumerate(references):
        torch.testing.assert_close(context[:, :16, index : index + 1], codec.encode(reference), atol=1e-6, rtol=0)
        assert torch.all(context[:, 16:, index] == 0.0)
    assert torch.equal(context[:, :, 2:], plain)
