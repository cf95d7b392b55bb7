"""What the transformer sees besides the noisy latents: i2v image conditioning (with Wan 2.1's CLIP image tokens),
Wan 2.2 5B's start-frame latents and the VACE control context.

Layouts follow upstream Wan (upstream_engine_spec §3.6, §3.8, §9.8-§9.11). Pixel tensors are (C, F, H, W) in
[-1, 1]; latent tensors are (1, z, T, H/s, W/s) with T = (F - 1) // 4 + 1: z = 16 and s = 8 for every Wan VAE but
Wan 2.2 5B's (z = 48, s = 16).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan
from loguru import logger
from transformers import CLIPImageProcessorPil, CLIPVisionModel

from Wan2GP.video_io import DecodedVideo

# Upstream fills the masked (to-be-generated) pixels of a VACE guide with grey 127 before encoding ("M" process).
GUIDE_GREY_LEVEL = 127
MASK_THRESHOLD = 127.5
I2V_MASK_CHANNELS = 4  # the first frame's mask is repeated 4x: one channel per frame folded into a latent frame
# Wan 2.1 i2v / flf2v condition on the CLIP tokens of the vision tower's penultimate layer (Wan's "use_31_block" of
# ViT-H/14's 32), not on its last layer's.
CLIP_HIDDEN_LAYER = -2


class VaeCodec:
    """The Wan VAE with Wan's per-channel latent normalisation: encode -> (mode - mean) / std, decode -> inverse."""

    def __init__(self, vae: AutoencoderKLWan) -> None:
        self.vae = vae
        z_dim = vae.config.z_dim
        self._mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
        self._std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
        self.spatial_factor = int(vae.config.scale_factor_spatial)
        self.temporal_factor = int(vae.config.scale_factor_temporal)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(C, F, H, W) pixels in [-1, 1] -> normalised float32 latents (1, z, T, h, w), using the posterior mode."""

        def encode_with(vae: AutoencoderKLWan) -> torch.Tensor:
            batch = pixels.unsqueeze(0).to(device=vae.device, dtype=vae.dtype)
            return vae.encode(batch).latent_dist.mode()

        mode = self._finite(encode_with, "encode").float()
        return (mode - self._mean.to(mode.device)) / self._std.to(mode.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (1, z, T, h, w) -> (C, F, H, W) float32 pixels in [-1, 1]."""
        latents = latents.float()
        raw = latents * self._std.to(latents.device) + self._mean.to(latents.device)

        def decode_with(vae: AutoencoderKLWan) -> torch.Tensor:
            return vae.decode(raw.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]

        return self._finite(decode_with, "decode")[0].float()

    def _finite(self, run: Callable[[AutoencoderKLWan], torch.Tensor], stage: str) -> torch.Tensor:
        """`run` on the VAE; where a float16 VAE overflowed (fp16 tops out at 65504, where bf16 and fp32 reach 3e38:
        an inf turns into NaNs at the next norm), `run` again on a float32 copy of it, for this call only."""
        output = run(self.vae)
        if self.vae.dtype != torch.float16 or bool(torch.isfinite(output).all()):
            return output
        logger.warning("the float16 VAE overflowed in its {}: running it again in float32", stage)
        del output
        return run(copy.deepcopy(self.vae).float())


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // 4 + 1


# ---------------------------------------------------------------------------------------------------------------------
# Images


def load_image(source: Path | str | PIL.Image.Image) -> PIL.Image.Image:
    if isinstance(source, PIL.Image.Image):
        return source.convert("RGB")
    with PIL.Image.open(Path(source)) as image:
        return image.convert("RGB")


def frame_image(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """An RGB image Lanczos-resized to exactly W x H: a start or end frame as every encoder of it sees it.

    Upstream's UI keeps the image's aspect ratio at the requested pixel budget; Headless-Wan2GP pre-resizes start and
    end images to the exact requested size, and so do we: the output size is always the requested one.
    """
    if image.size != (width, height):
        image = image.resize((width, height), PIL.Image.Resampling.LANCZOS)
    return image


def black_frame(width: int, height: int) -> PIL.Image.Image:
    """What an i2v model is given for a start image it was not given: a black frame (-1), as upstream."""
    return PIL.Image.new("RGB", (width, height), (0, 0, 0))


def image_to_pixels(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """RGB image -> (3, 1, H, W) float32 in [-1, 1], Lanczos-resized to exactly W x H (`frame_image`)."""
    array = np.asarray(frame_image(image, width, height), dtype=np.float32)  # (H, W, 3)
    pixels = torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0
    return pixels.unsqueeze(1)


@dataclass(frozen=True)
class ImageCondition:
    """i2v / flf2v conditioning (Wan 2.1 and 2.2): ``channels`` (1, 20, T, h, w) = [mask(4), image latents(16)],
    concatenated after the 16 noise channels, and the clean latent of the start frame, re-injected at every step
    (upstream §9.9)."""

    channels: torch.Tensor
    first_frame_latents: torch.Tensor  # (1, z, 1, h, w)


def build_image_condition(
    codec: VaeCodec,
    *,
    start: torch.Tensor | None,
    end: torch.Tensor | None,
    num_frames: int,
    width: int,
    height: int,
) -> ImageCondition:
    """``start``/``end``: (3, 1, H, W) pixels or None. No start image means a black (-1) first frame, as upstream.

    The video the VAE encodes is built on the VAE's device in its dtype: at 768x576x53 it is 281 MB of float32 that
    building on the host would fill, concatenate and copy over PCIe before every segment.
    """
    device, dtype = codec.device, codec.vae.dtype
    video = torch.zeros(3, num_frames, height, width, device=device, dtype=dtype)  # zeros are mid-grey in [-1, 1]
    if start is None:
        video[:, :1] = -1.0
    else:
        video[:, :1] = start.to(device=device, dtype=dtype)
    if end is not None:
        video[:, -1:] = end.to(device=device, dtype=dtype)
    image_latents = codec.encode(video)

    latent_h, latent_w = height // codec.spatial_factor, width // codec.spatial_factor
    known = torch.zeros(num_frames, latent_h, latent_w, device=image_latents.device)
    known[0] = 1.0
    if end is not None:
        known[-1] = 1.0
    # Fold pixel frames into latent frames: frame 0 repeated 4x, then groups of 4 -> (4, T, h, w).
    folded = torch.cat([known[:1].repeat(I2V_MASK_CHANNELS - 1, 1, 1), known], dim=0)
    mask = folded.view(latent_frames(num_frames), I2V_MASK_CHANNELS, latent_h, latent_w).transpose(0, 1)
    mask = mask.unsqueeze(0)

    channels = torch.cat([mask, image_latents], dim=1)
    return ImageCondition(channels=channels, first_frame_latents=image_latents[:, :, :1].clone())


@torch.no_grad()
def clip_image_tokens(
    encoder: CLIPVisionModel, processor: CLIPImageProcessorPil, images: list[PIL.Image.Image]
) -> torch.Tensor:
    """Wan 2.1 i2v / flf2v: the CLIP tokens of each image, (N, tokens, width) float32, for the transformer's
    ``encoder_hidden_states_image``. The processor resizes, crops and normalises as the model's repo says.

    i2v passes the start image alone; flf2v the first and the last frame, in that order, as a batch of two: its
    transformer folds them into one sequence with a position embedding over both (diffusers' WanImageEmbedding).
    """
    inputs = processor(images=images, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(device=encoder.device, dtype=encoder.dtype)
    hidden_states = encoder(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    return hidden_states[CLIP_HIDDEN_LAYER].float()


# ---------------------------------------------------------------------------------------------------------------------
# VACE


def _resized_frames(video: DecodedVideo, num_frames: int, width: int, height: int) -> np.ndarray:
    if video.num_frames < num_frames:
        raise ValueError(f"expected at least {num_frames} frames, got {video.num_frames}")
    frames = video.frames[:num_frames]
    if (video.width, video.height) == (width, height):
        return frames
    resized = [
        np.asarray(PIL.Image.fromarray(frame).resize((width, height), PIL.Image.Resampling.LANCZOS)) for frame in frames
    ]
    return np.stack(resized)


def guide_pixels(video: DecodedVideo, num_frames: int, width: int, height: int) -> torch.Tensor:
    """Guide video -> (3, F, H, W) float32 in [-1, 1] (first F frames, Lanczos-resized to W x H if needed)."""
    frames = _resized_frames(video, num_frames, width, height)
    return torch.from_numpy(frames.astype(np.float32)).permute(3, 0, 1, 2) / 127.5 - 1.0


def mask_values(video: DecodedVideo, num_frames: int, width: int, height: int, *, negate: bool) -> torch.Tensor:
    """Mask video -> (1, F, H, W) float32 in {0, 1}: white (1) = generate, black (0) = keep the guide pixels."""
    frames = _resized_frames(video, num_frames, width, height)
    grey = frames.astype(np.float32).mean(axis=-1)
    binary = (grey > MASK_THRESHOLD).astype(np.float32)
    if negate:
        binary = 1.0 - binary
    return torch.from_numpy(binary).unsqueeze(0)


def reference_pixels(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """A VACE reference image -> (3, 1, H, W) in [-1, 1]: scaled to fit inside W x H with its aspect ratio kept
    (Lanczos), centred on a white canvas, as Wan's VACE (and diffusers') prepares references."""
    scale = min(width / image.width, height / image.height)
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    if size != image.size:
        image = image.resize(size, PIL.Image.Resampling.LANCZOS)
    canvas = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(image, ((width - size[0]) // 2, (height - size[1]) // 2))
    return image_to_pixels(canvas, width, height)


def build_vace_context(
    codec: VaeCodec,
    *,
    guide: torch.Tensor | None,
    mask: torch.Tensor | None,
    grey_masked_pixels: bool,
    num_frames: int,
    width: int,
    height: int,
    references: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The 96-channel VACE context (1, 96, R + T, h, w): [VAE(guide*(1-m)), VAE(guide*m), 8x8-unshuffled mask].

    Missing guide: all zeros (mid-grey). Missing mask: all ones (generate everything, the guide is only a hint).
    Each reference image ((3, 1, H, W) pixels) comes first in time as one latent frame: [VAE(image), zeros] in the
    32 latent channels and a zero mask (upstream_engine_spec §3.8); the sampler strips those frames at the end.
    """
    # the masking arithmetic runs where the VAE is (full-size float32 videos; see build_image_condition)
    device = codec.device
    guide = torch.zeros(3, num_frames, height, width, device=device) if guide is None else guide.to(device)
    mask = torch.ones(1, num_frames, height, width, device=device) if mask is None else mask.to(device)
    if grey_masked_pixels:
        grey = GUIDE_GREY_LEVEL / 127.5 - 1.0
        guide = torch.where(mask > 0.5, torch.full_like(guide, grey), guide)

    inactive = codec.encode(guide * (1.0 - mask))
    reactive = codec.encode(guide * mask)

    factor = codec.spatial_factor
    latent_h, latent_w = height // factor, width // factor
    # (1, F, H, W) -> (64, F, h, w): each 8x8 pixel block becomes 64 channels, ordered (row in block, column in block).
    unshuffled = mask[0].view(num_frames, latent_h, factor, latent_w, factor).permute(2, 4, 0, 1, 3)
    unshuffled = unshuffled.reshape(factor * factor, num_frames, latent_h, latent_w)
    mask_latents = torch.nn.functional.interpolate(
        unshuffled.unsqueeze(0), size=(latent_frames(num_frames), latent_h, latent_w), mode="nearest-exact"
    )
    context = torch.cat([inactive, reactive, mask_latents], dim=1)
    for reference in reversed(references or []):  # the first reference ends up first in time
        latent = codec.encode(reference)
        frame = torch.cat([latent, torch.zeros_like(latent), torch.zeros_like(mask_latents[:, :, :1])], dim=1)
        context = torch.cat([frame, context], dim=2)
    return context
