"""The Wan VAE's layers at the seed segment's size: diffusers' forwards against Wan2GP.vae_layers' (H200).

At 768x576x53 the VAE's decode is 199 TFLOP of convolutions and its encode 118 (torch's FLOP counter), which the fp16
VAE ran in 1.21 s and 0.71 s (bench/README.md): about 165 TFLOP/s. A causal 3-D convolution with kt temporal taps is
a sum of kt 2-D convolutions over time-shifted frames, so it can run on cuDNN's 2-D kernels with the frames as the
batch. The convolutions compared:

- `native`: diffusers' `WanCausalConv3d` (`F.pad`, then one cuDNN 3-D convolution on NDHWC tensors);
- `im2col`: the kt shifted frame stacks joined along the channels (kt*C input channels, one copy of the input), then
  one 2-D convolution whose weight has the taps folded into its input channels;
- `framewise`: the engine's `FramewiseCausalConv3d`, kt 2-D convolutions on the shifted frame stacks (views of the
  input), their outputs summed, the spatial padding inside the convolution.

Measured: the three main decoder convolutions alone (96, 192 and 384 channels at their resolutions, 6 input frames:
4 plus the 2 cached), each with cuDNN's algorithm search off and on (`torch.backends.cudnn.benchmark`); the whole
decode and encode through `VaeCodec` (best of `--repeats` after an untimed call) with each convolution swapped into
a copy of the VAE, and with the engine's `use_fast_layers` (`fast_layers`: the framewise convolution, a fused RMS
norm, upsampling in fp16, residual blocks that take their input channels-last and run each norm and its SiLU as one
function; `fast_layers_compiled`: those functions and the blocks' output add compiled by inductor with the
convolutions' biases in them, as the worker's --compile runs them), each against the fp32 native VAE, and the engine's
decode stage (the decode, then uint8 frames on the host); and the kernels of one decode of each and the ops of one
decode and one encode by input shape (torch.profiler, the largest by time).

    python bench/vae_convs.py --json out.json        # on the GPU (bench/device_bench.sh vae_convs NAME)
    python bench/vae_convs.py --dtype float32 ...    # the VAE in float32, as --vae-dtype float32 runs it
    python bench/vae_convs.py --tiny                 # CPU smoke test: a base_dim 8 VAE at 64x64x13, fp32
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from block_fusions import timed
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from memory_profiles import synchronize
from random_models import run_versions
from vae_chunks import rel_error, seed_size_vae, timed_peak

from Wan2GP.conditioning import VaeCodec
from Wan2GP.vae_layers import (
    FramewiseCausalConv3d,
    batch_as_frames,
    causal_time_padding,
    convolutions_channels_last,
    use_fast_layers,
)
from Wan2GP.video_io import pixels_to_uint8


class Im2colCausalConv3d(WanCausalConv3d):
    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        x = causal_time_padding(self, x, cache_x)
        kt, st = self.kernel_size[0], self.stride[0]
        t_out = (x.shape[2] - kt) // st + 1
        last = st * (t_out - 1) + 1
        channels_last = x.permute(0, 2, 3, 4, 1)
        stacked = torch.cat([channels_last[:, k : k + last : st] for k in range(kt)], dim=-1)  # (N, T, H, W, kt*C)
        n, _, h, w, c = stacked.shape
        weight = self.weight.permute(0, 2, 1, 3, 4).reshape(self.out_channels, c, *self.kernel_size[1:])
        out = F.conv2d(
            stacked.reshape(n * t_out, h, w, c).permute(0, 3, 1, 2),
            weight.contiguous(memory_format=torch.channels_last),
            self.bias,
            padding=(self._padding[2], self._padding[0]),
        )
        return batch_as_frames(out.contiguous(memory_format=torch.channels_last), n)


def _compile_backend() -> str:
    return "inductor" if torch.cuda.is_available() else "eager"  # dynamo's eager backend on the CPU (--tiny)


# the conv-only and whole-layer variants of a VAE, applied to a copy of it
def _conv_only(kind: type[WanCausalConv3d]) -> Callable[[AutoencoderKLWan], None]:
    def switch(vae: AutoencoderKLWan) -> None:
        for module in vae.modules():
            if type(module) is WanCausalConv3d:
                module.__class__ = kind

    return switch


VARIANTS: dict[str, Callable[[AutoencoderKLWan], Any]] = {
    "native": lambda vae: None,  # diffusers' layers: what the engine ran before
    "im2col": _conv_only(Im2colCausalConv3d),
    "framewise": _conv_only(FramewiseCausalConv3d),  # the engine's convolution alone
    "fast_layers": use_fast_layers,  # the engine's: convolution, RMS norm, upsampling, residual block
    # and with --compile: the residual blocks' functions compiled, the convolutions' biases in them
    "fast_layers_compiled": lambda vae: use_fast_layers(vae, compile_backend=_compile_backend()),
}
CONVOLUTIONS: dict[str, type[WanCausalConv3d]] = {
    "native": WanCausalConv3d,
    "im2col": Im2colCausalConv3d,
    "framewise": FramewiseCausalConv3d,
}


@contextlib.contextmanager
def cudnn_search(enabled: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def top_kernels(
    function: Callable[[torch.Tensor], torch.Tensor], given: torch.Tensor, device: torch.device, count: int = 16
) -> dict[str, Any]:
    """CUDA kernel time of one call of function(given), in all and by kernel name (the `count` largest)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as trace:
        function(given)
        synchronize(device)
    totals: dict[str, float] = {}
    for event in trace.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] = totals.get(event.name, 0.0) + event.device_time / 1e6
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    return {"kernel_seconds": sum(totals.values()), "top": [[name[:160], s] for name, s in ranked[:count]]}


def decode_stage(codec: VaeCodec) -> Callable[[torch.Tensor], Any]:
    """The engine's decode stage: the decode, then the frames as uint8 on the host."""
    return lambda latents: pixels_to_uint8(codec.decode(latents))


def top_ops(
    function: Callable[[torch.Tensor], torch.Tensor], given: torch.Tensor, device: torch.device, count: int = 25
) -> list[dict[str, Any]]:
    """The aten ops of one call of function(given) by their own device time, grouped by input shapes: which op and
    which tensors each kernel above belongs to."""
    from torch.profiler import ProfilerActivity, profile

    with (
        torch.inference_mode(),
        profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as trace,
    ):
        function(given)
        synchronize(device)
    rows = sorted(trace.key_averages(group_by_input_shape=True), key=lambda row: -row.self_device_time_total)
    return [
        {
            "op": row.key,
            "input_shapes": str(row.input_shapes)[:300],
            "calls": row.count,
            "device_seconds": row.self_device_time_total / 1e6,
        }
        for row in rows[:count]
        if row.self_device_time_total > 0
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="the whole-VAE variants, comma-separated")
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="the VAE's dtype on a GPU (--vae-dtype)"
    )
    parser.add_argument(
        "--cudnn-search", choices=("both", "off"), default="both", help="also time with cudnn.benchmark on (a GPU)"
    )
    args = parser.parse_args(argv)
    variants = [name.strip() for name in args.variants.split(",")]
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(VARIANTS)}")
    searches = (
        (False, True) if args.cudnn_search == "both" and torch.cuda.is_available() and not args.tiny else (False,)
    )
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda:0")
    width, height, frames = (64, 64, 13) if args.tiny else (768, 576, 53)
    # the CPU runs float32 only: its 16-bit convolutions are slow and say nothing about a GPU's
    dtype = torch.float32 if device.type == "cpu" else getattr(torch, args.dtype)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vae_convs_"))
    reference_vae, latents = seed_size_vae(workdir, device, tiny=args.tiny, size=(width, height, frames))
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/vae_convs.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": run_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": [width, height, frames],
        "dtype": str(dtype),
        "layers": [],
        "codec": [],
        "profiles": {},
    }

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    # 1. the decoder's three main convolutions alone: C channels at H x W, 4 frames plus the 2 cached
    base = int(reference_vae.config.base_dim)
    for channels, scale in ((base, 1), (2 * base, 2), (4 * base, 4)):
        generator = torch.Generator(device=device).manual_seed(channels)
        native = WanCausalConv3d(channels, channels, 3, padding=1).to(device).requires_grad_(False)
        native.weight.normal_(0, 0.02, generator=generator)
        shape = (1, channels, 4, height // scale, width // scale)
        x = torch.randn(shape, device=device, generator=generator).contiguous(memory_format=torch.channels_last_3d)
        cache = torch.randn((1, channels, 2, *shape[3:]), device=device, generator=generator)
        with torch.inference_mode():
            exact = native(x, cache.contiguous(memory_format=torch.channels_last_3d))
        flop = 2 * 27 * channels * channels * 4 * shape[3] * shape[4]
        for name, kind in CONVOLUTIONS.items():
            conv = copy.deepcopy(native).to(dtype)
            conv.__class__ = kind
            if device.type == "cuda":
                convolutions_channels_last(conv)
            given = (x.to(dtype), cache.to(dtype).contiguous(memory_format=torch.channels_last_3d))
            for search in searches:
                with cudnn_search(search):
                    seconds, out = timed(conv, given, device, 10 if not args.tiny else 2)
                row = {
                    "channels": channels,
                    "height": shape[3],
                    "width": shape[4],
                    "convolution": name,
                    "cudnn_benchmark": search,
                    "ms": seconds * 1e3,
                    "tflops": flop / seconds / 1e12,
                    "rel_error_vs_fp32": rel_error(out.cpu(), exact.float().cpu()),
                    "output_channels_last": bool(out.is_contiguous(memory_format=torch.channels_last_3d)),
                }
                report["layers"].append(row)
                print(json.dumps(row), flush=True)
        save()

    # 2. the whole decode and encode through VaeCodec, each variant in a copy of the VAE
    with torch.inference_mode():
        reference_pixels = VaeCodec(reference_vae).decode(latents)
        reference_latents = VaeCodec(reference_vae).encode(reference_pixels.to(device))
    in_dtype = copy.deepcopy(reference_vae).to(dtype)
    for name in variants:
        switch = VARIANTS[name]
        vae = copy.deepcopy(in_dtype)
        switch(vae)
        codec = VaeCodec(vae)
        for search in searches:
            with cudnn_search(search):
                decode_seconds, decode_peak, pixels = timed_peak(codec.decode, latents, device, args.repeats)
                video = reference_pixels.to(device)
                encode_seconds, encode_peak, encoded = timed_peak(codec.encode, video, device, args.repeats)
                stage_seconds, _, _ = timed_peak(decode_stage(codec), latents, device, args.repeats)
            row = {
                "variant": name,
                "cudnn_benchmark": search,
                "decode_seconds": decode_seconds,
                "decode_peak_gib": decode_peak / 2**30,
                "decode_rel_error_vs_fp32": rel_error(pixels.cpu(), reference_pixels.cpu()),
                "decode_max_abs_error": float((pixels.float().cpu() - reference_pixels.cpu()).abs().max()),
                "decode_to_uint8_seconds": stage_seconds,
                "encode_seconds": encode_seconds,
                "encode_peak_gib": encode_peak / 2**30,
                "encode_rel_error_vs_fp32": rel_error(encoded.cpu(), reference_latents.cpu()),
            }
            report["codec"].append(row)
            print(json.dumps(row), flush=True)
            del pixels, encoded, video
            save()
        if device.type == "cuda":
            with cudnn_search(False):
                report["profiles"][name] = top_kernels(codec.decode, latents, device)
                report["profiles"][name]["decode_ops"] = top_ops(codec.decode, latents, device)
                report["profiles"][name]["encode_ops"] = top_ops(codec.encode, reference_pixels.to(device), device)
            print(name, json.dumps(report["profiles"][name], indent=1), flush=True)
            save()
        del vae, codec
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(
        "\nvariant | cudnn.benchmark | decode s | to uint8 s | peak GiB | rel error vs fp32 | encode s | "
        "rel error vs fp32"
    )
    for row in report["codec"]:
        print(
            f"{row['variant']} | {row['cudnn_benchmark']} | {row['decode_seconds']:.3f} | "
            f"{row['decode_to_uint8_seconds']:.3f} | {row['decode_peak_gib']:.2f} | "
            f"{row['decode_rel_error_vs_fp32']:.2e} | {row['encode_seconds']:.3f} | {row['encode_rel_error_vs_fp32']:.2e}"
        )
    save()
    return report


if __name__ == "__main__":
    main()
