"""The fast path's forward with each attention kernel, on a few real-size Wan 2.2 A14B blocks (H200).

A whole seed segment under `--fast` spends minutes compiling before its first forward; this measures what an attention
kernel changes in a few minutes instead: a Wan 2.2 I2V A14B transformer cut to `--layers` blocks (random weights from
a seed, bench/random_models.py), quantized as the engine's fast path quantizes it (fp8 weights and activations,
Wan2GP.quantization), each kernel installed as the engine installs it (Wan2GP.attention) and its blocks compiled as the
engine compiles them (compile_repeated_blocks, full graph). Per kernel: the first call (the compile), the median of
`--repeats` forwards at the seed segment's size (768x576x53: 24,192 tokens, 512 text tokens), and the relative norm
error against the same model in bf16, eager, with SDPA. Every kernel gets a fresh model built from the same seed.

    python bench/attention_block.py --json out.json          # on the GPU (bench/device_bench.sh attention_block NAME)
    python bench/attention_block.py --tiny                   # CPU smoke test: tiny dims, sdpa and cudnn_fp8's emulation
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from random_models import A14B_CONFIG, TINY_OVERRIDES, build_transformer, run_versions

from Wan2GP.attention import AttentionKernels, cudnn_fp8_unavailable, install_attention_kernel
from Wan2GP.quantization import FAST_FORMAT, fp8_matmuls_available, quantize_transformer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_inputs(config: dict[str, Any], device: torch.device, *, frames: int, height: int, width: int) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(3)
    latent = (1, config["in_channels"], (frames - 1) // 4 + 1, height // 8, width // 8)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return dict(
        hidden_states=torch.randn(latent, generator=generator).to(device, dtype),
        timestep=torch.tensor([900.0], device=device),
        encoder_hidden_states=torch.randn((1, 512, config["text_dim"]), generator=generator).to(device, dtype),
        return_dict=False,
    )


def build(config: dict[str, Any], device: torch.device, *, fast: bool) -> torch.nn.Module:
    model = build_transformer(config, device, seed=0)
    if device.type == "cpu":
        model = model.float()
    if fast:
        quantize_transformer(model, FAST_FORMAT, work_device=device, keep_on=device)
    return model


def measure(
    model: torch.nn.Module, inputs: dict, device: torch.device, repeats: int
) -> tuple[float, float, torch.Tensor]:
    """(first call seconds, median forward seconds, the output)."""
    with torch.inference_mode():
        synchronize(device)
        started = time.perf_counter()
        out = model(**inputs)[0]
        synchronize(device)
        first = time.perf_counter() - started
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = model(**inputs)[0]
            synchronize(device)
            seconds.append(time.perf_counter() - started)
    return first, statistics.median(seconds), out.float()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--kernels", default="sdpa,cudnn_fp8")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="unused; device_bench.sh passes one")
    args = parser.parse_args(argv)

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda:0")
    config = {**A14B_CONFIG, "in_channels": 36, "num_layers": args.layers, **(TINY_OVERRIDES if args.tiny else {})}
    frames, height, width = (9, 64, 64) if args.tiny else (53, 576, 768)
    inputs = forward_inputs(config, device, frames=frames, height=height, width=width)
    fast = fp8_matmuls_available(device)  # a CPU keeps the weights as they are, as the engine's --fast does there
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/attention_block.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": run_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "layers": args.layers,
        "size": [width, height, frames],
        "weights": FAST_FORMAT if fast else "native",
        "kernels": {},
    }
    reference_model = build(config, device, fast=False)
    _, reference_seconds, reference = measure(reference_model, inputs, device, args.repeats)
    report["reference_bf16_eager_sdpa_seconds"] = reference_seconds
    del reference_model
    for kernel in args.kernels.split(","):
        why = cudnn_fp8_unavailable(device, torch.bfloat16) if kernel == "cudnn_fp8" and device.type == "cuda" else None
        if why is not None:
            report["kernels"][kernel] = {"unavailable": why}
            continue
        model = build(config, device, fast=fast)
        install_attention_kernel(model, AttentionKernels(kernel, "sdpa"))
        model.compile_repeated_blocks(fullgraph=True, backend="inductor" if device.type == "cuda" else "eager")
        try:
            first, median, out = measure(model, inputs, device, args.repeats)
        except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
            report["kernels"][kernel] = {"error": f"{type(error).__name__}: {error}"}
            continue
        finally:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report["kernels"][kernel] = {
            "first_call_seconds": first,
            "forward_seconds": median,
            "per_layer_seconds": median / args.layers,
            "rel_error_vs_bf16_eager_sdpa": float((out - reference).norm() / reference.norm()),
        }
        print(kernel, json.dumps(report["kernels"][kernel]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
