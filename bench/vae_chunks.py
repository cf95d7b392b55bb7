"""The Wan VAE's decode and encode at the seed segment's size, by dtype and by latent frames per call (H200).

diffusers runs the Wan VAE's causal 3-D convolutions one latent frame per call (4 video frames), carrying each
convolution's last frames over in a cache, so the convolutions near the latent resolution see a few thousand positions
per call. `ChunkedCodec(vae, n)` gives the decoder n latent frames (the encoder 4n video frames) per call after the
first frame: the same arithmetic (the cache carries the same frames), fewer and larger convolutions, n times the
working memory; n = 1 is the engine's VaeCodec, diffusers' loop. For each VAE dtype (fp32, bf16, fp16) and each n this times the decode of
seed-size latents (1 x 16 x 14 x 72 x 96: 768x576, 53 frames) and the encode of the video it gives (best of
`--repeats` after an untimed first call), with the peak memory the call added above the VAE's weights and its output's
relative error against the fp32 decode (encode) at n = 1, diffusers' own loop. The random VAE is
memory_profiles.build_vae's (seed 3, what the segment benchmark's engines get), channels-last as the engine runs it.

    python bench/vae_chunks.py --json out.json       # on the GPU (bench/device_bench.sh vae_chunks NAME)
    python bench/vae_chunks.py --tiny                # CPU smoke test: a base_dim 8 VAE at 64x64x13, fp32
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from memory_profiles import build_vae, synchronize
from random_models import run_versions

from Wan2GP.conditioning import VaeCodec
from Wan2GP.vae_layers import convolutions_channels_last

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ChunkedCodec(VaeCodec):
    """VaeCodec with n latent frames per decoder call (4n video frames per encoder call) after the first frame."""

    def __init__(self, vae: AutoencoderKLWan, latent_frames_per_call: int) -> None:
        super().__init__(vae)
        self.latent_frames_per_call = latent_frames_per_call

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.latent_frames_per_call == 1:
            return super().encode(pixels)
        batch = pixels.unsqueeze(0).to(device=self.vae.device, dtype=self.vae.dtype)
        # as diffusers' loop: the first frame alone, then whole groups of 4 (a partial last group is dropped)
        whole = 1 + (batch.shape[2] - 1) // self.temporal_factor * self.temporal_factor
        step = self.latent_frames_per_call * self.temporal_factor
        spans = [(0, 1), *((start, min(start + step, whole)) for start in range(1, whole, step))]
        moments = self.vae.quant_conv(causal_calls(self.vae.encoder, batch, spans))
        mode = moments.chunk(2, dim=1)[0].float()  # the posterior's mean, its mode
        return (mode - self._mean.to(mode.device)) / self._std.to(mode.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.latent_frames_per_call == 1:
            return super().decode(latents)
        raw = latents.float() * self._std.to(latents.device) + self._mean.to(latents.device)
        z = self.vae.post_quant_conv(raw.to(self.vae.dtype))
        step = self.latent_frames_per_call
        spans = [(0, 1), *((start, start + step) for start in range(1, z.shape[2], step))]
        pixels = causal_calls(self.vae.decoder, z, spans, first_chunk=True).clamp_(-1.0, 1.0)
        return pixels[0].float()


def seed_size_vae(
    workdir: Path, device: torch.device, *, tiny: bool, size: tuple[int, int, int]
) -> tuple[AutoencoderKLWan, torch.Tensor]:
    """The random A14B VAE (memory_profiles.build_vae, seed 3: what the segment benchmark's engines get; base_dim 8
    when `tiny`), in fp32 and channels-last on a GPU as the engine lays it out, and seeded latents of a video of
    `size` (width, height, frames)."""
    width, height, frames = size
    (workdir / "vae").mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "AutoencoderKLWan", **({"base_dim": 8} if tiny else {})}
    (workdir / "vae" / "config.json").write_text(json.dumps(config))
    vae = build_vae(workdir, device, seed=3)
    if device.type == "cuda":
        convolutions_channels_last(vae)
    spatial, temporal = int(vae.config.scale_factor_spatial), int(vae.config.scale_factor_temporal)
    latent_shape = (1, vae.config.z_dim, (frames - 1) // temporal + 1, height // spatial, width // spatial)
    return vae, torch.randn(latent_shape, generator=torch.Generator().manual_seed(0)).to(device)


def causal_calls(
    network: torch.nn.Module, frames: torch.Tensor, spans: list[tuple[int, int]], *, first_chunk: bool = False
) -> torch.Tensor:
    """`network` (the VAE's encoder or decoder) over `frames`' time spans in order, its causal convolutions carrying
    their cache from one span to the next, the outputs joined in time; `first_chunk`: the decoder's first-span flag."""
    cache: list[Any] = [None] * sum(isinstance(module, WanCausalConv3d) for module in network.modules())
    outputs = []
    for index, (start, end) in enumerate(spans):
        extra = {"first_chunk": True} if first_chunk and index == 0 else {}
        outputs.append(network(frames[:, :, start:end], feat_cache=cache, feat_idx=[0], **extra))
    return torch.cat(outputs, dim=2)


def timed_peak(
    function: Callable[[torch.Tensor], torch.Tensor], given: torch.Tensor, device: torch.device, repeats: int
) -> tuple[float, int, torch.Tensor]:
    """(best seconds of `repeats` calls after an untimed one, peak bytes a call added, the last output)."""
    with torch.inference_mode():
        output = function(given)
        del output
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            started = time.perf_counter()
            output = function(given)
            synchronize(device)
            best = min(best, time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else 0
    return best, peak, output


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference).norm() / reference.norm())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frames-per-call", default="1,2,4,7,13", help="latent frames per call, comma-separated")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda:0")
    width, height, frames = (64, 64, 13) if args.tiny else (768, 576, 53)
    # on the CPU fp32 only: its 16-bit convolutions are slow and say nothing about a GPU's
    dtypes = {"fp32": DTYPES["fp32"]} if args.tiny else DTYPES
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vae_chunks_"))
    base, latents = seed_size_vae(workdir, device, tiny=args.tiny, size=(width, height, frames))
    latent_shape = tuple(latents.shape)
    counts = [int(n) for n in args.frames_per_call.split(",")]
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/vae_chunks.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": run_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": [width, height, frames],
        "latent_shape": list(latent_shape),
        "rows": [],
    }
    reference: dict[str, torch.Tensor] = {}
    for dtype_name, dtype in dtypes.items():
        vae = base if dtype == torch.float32 else copy.deepcopy(base).to(dtype)
        for count in counts:
            codec = ChunkedCodec(vae, count)
            decode_seconds, decode_peak, pixels = timed_peak(codec.decode, latents, device, args.repeats)
            video = reference.get("pixels", pixels).to(device)  # every encode takes the same video
            encode_seconds, encode_peak, encoded = timed_peak(codec.encode, video, device, args.repeats)
            if not reference:
                reference = {"pixels": pixels.float().cpu(), "latents": encoded.float().cpu()}
            row = {
                "dtype": dtype_name,
                "latent_frames_per_call": count,
                "decode_seconds": decode_seconds,
                "decode_peak_gib": decode_peak / 2**30,
                "decode_rel_error": rel_error(pixels.cpu(), reference["pixels"]),
                "decode_max_abs_error": float((pixels.float().cpu() - reference["pixels"]).abs().max()),
                "encode_seconds": encode_seconds,
                "encode_peak_gib": encode_peak / 2**30,
                "encode_rel_error": rel_error(encoded.cpu(), reference["latents"]),
            }
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            del pixels, encoded, video
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))
        del vae
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\ndtype | frames per call | decode s | peak GiB | rel error | encode s | peak GiB | rel error")
    for row in report["rows"]:
        print(
            f"{row['dtype']} | {row['latent_frames_per_call']} | {row['decode_seconds']:.3f} | "
            f"{row['decode_peak_gib']:.2f} | {row['decode_rel_error']:.2e} | {row['encode_seconds']:.3f} | "
            f"{row['encode_peak_gib']:.2f} | {row['encode_rel_error']:.2e}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
