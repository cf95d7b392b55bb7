"""Merged vs unmerged LoRAs at the real Wan 2.2 A14B layer size: forward time and strength-change cost.

Builds a diffusers WanTransformer3DModel with the A14B dimensions (dim 5120 = 40 heads x 128, ffn 13824, text 4096)
but only --layers blocks with random bf16 weights, writes two random rank-32 LoRAs (diffusers/peft keys on every
attention q/k/v/out and ffn Linear), and times through Wan2GP.loras.LoraRuntime:
  - one forward: base (no LoRA), unmerged (both LoRAs active), merged;
  - one strength change (set_step_strengths with new values) in each mode, and the first merge.
Every block is the same, so per-layer cost (and every ratio) carries over to the 40-layer model; the fixed part
(patch embedding, condition embedder, output head) is the same in every mode.
All numbers come from the same process; base / unmerged / merged are interleaved over --rounds rounds.

    python bench/lora_modes.py --layers 8 --tokens 32760     # on a GPU: 832x480x81 -> latent 21x60x104
    python bench/lora_modes.py --tiny                        # CPU smoke test with tiny dims
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import diffusers
import peft
import torch
from diffusers import WanTransformer3DModel
from loguru import logger
from random_models import A14B_CONFIG, TINY_OVERRIDES, build_transformer
from safetensors.torch import save_file

from Wan2GP.loras import LoraRuntime

EXPERT = "high"
# Every Linear a typical Wan LoRA targets inside one block (diffusers names).
TARGET_MODULES = [f"attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")] + [
    "ffn.net.0.proj",
    "ffn.net.2",
]
TEXT_TOKENS = 512  # Wan pads the T5 prompt embedding to 512 tokens
STRENGTHS_A = (1.0, 0.7)
STRENGTHS_B = (0.8, 0.5)

TINY_CONFIG: dict[str, object] = dict(A14B_CONFIG, **TINY_OVERRIDES, rope_max_seq_len=64)


@dataclass
class Timings:
    """Milliseconds, one list entry per measurement, over every round."""

    base_forward: list[float] = field(default_factory=list)
    unmerged_forward: list[float] = field(default_factory=list)
    merged_forward: list[float] = field(default_factory=list)
    unmerged_change: list[float] = field(default_factory=list)
    merged_change: list[float] = field(default_factory=list)
    # a runtime's life around the forwards: LoraRuntime(...) (reads + attaches both files), the first
    # set_step_strengths (merged: the first merge, which also takes the exact host copy of every weight), close()
    unmerged_open: list[float] = field(default_factory=list)
    merged_open: list[float] = field(default_factory=list)
    unmerged_first_set: list[float] = field(default_factory=list)
    merged_first_set: list[float] = field(default_factory=list)
    unmerged_close: list[float] = field(default_factory=list)
    merged_close: list[float] = field(default_factory=list)
    # per-round medians of the forwards, to show the spread between rounds
    round_medians: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------------
# Model, inputs and LoRA files
# --------------------------------------------------------------------------------------------------------------------


def latent_shape_for(tokens: int) -> tuple[int, int, int]:
    """(frames, height, width) of a latent with exactly `tokens` tokens after the 1x2x2 patch, near 832x480's shape.

    32760 -> (21, 60, 104): 832x480, 81 frames.
    """
    frames = 21 if tokens % 21 == 0 else 1
    per_frame = tokens // frames
    pairs = [(h, per_frame // h) for h in range(1, int(math.isqrt(per_frame)) + 1) if per_frame % h == 0]
    patch_h, patch_w = min(pairs, key=lambda pair: abs(math.log(pair[1] / pair[0]) - math.log(52 / 30)))
    return frames, 2 * patch_h, 2 * patch_w


def make_inputs(config: dict[str, object], tokens: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    frames, height, width = latent_shape_for(tokens)
    generator = torch.Generator(device=device).manual_seed(seed)
    return {
        "hidden_states": torch.randn(
            1, int(config["in_channels"]), frames, height, width, generator=generator, device=device
        ).to(torch.bfloat16),
        "encoder_hidden_states": torch.randn(
            1, TEXT_TOKENS, int(config["text_dim"]), generator=generator, device=device
        ).to(torch.bfloat16),
        "timestep": torch.tensor([700.0], device=device),
    }


def write_random_lora(path: Path, model: WanTransformer3DModel, rank: int, seed: int) -> int:
    """A diffusers/peft-format LoRA ("transformer.blocks.N.<module>.lora_A/B.weight") on every target Linear.

    Sized so that each LoRA at strength 1 changes a weight by ~10% of its norm (a visible, realistic effect).
    Returns the number of modules.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for block_index, block in enumerate(model.blocks):
        for module_name in TARGET_MODULES:
            linear = block.get_submodule(module_name)
            down = torch.randn(rank, linear.in_features, generator=generator) / math.sqrt(linear.in_features)
            up = torch.randn(linear.out_features, rank, generator=generator) * (0.1 / math.sqrt(rank))
            key = f"transformer.blocks.{block_index}.{module_name}"
            tensors[f"{key}.lora_A.weight"] = down.to(torch.bfloat16).contiguous()
            tensors[f"{key}.lora_B.weight"] = up.to(torch.bfloat16).contiguous()
    save_file(tensors, str(path))
    return len(tensors) // 2


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward(model: WanTransformer3DModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs, return_dict=False)[0]


def time_forwards(
    model: WanTransformer3DModel, inputs: dict[str, torch.Tensor], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Milliseconds per forward: CUDA events on a GPU (after warm-up), perf_counter on the CPU."""
    for _ in range(warmup):
        forward(model, inputs)
    synchronize(device)
    times: list[float] = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward(model, inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            forward(model, inputs)
            times.append((time.perf_counter() - began) * 1e3)
    return times


def time_host_call(call: Callable[[], None], device: torch.device) -> float:
    """Wall milliseconds of a call that mixes host work and device work (a strength change), device idle before."""
    synchronize(device)
    began = time.perf_counter()
    call()
    synchronize(device)
    return (time.perf_counter() - began) * 1e3


def time_changes(runtime: LoraRuntime, device: torch.device, changes: int) -> list[float]:
    """Alternate between two strength sets (equal values are a no-op); even count, so it ends on STRENGTHS_A."""
    times = []
    for index in range(changes):
        strengths = STRENGTHS_B if index % 2 == 0 else STRENGTHS_A
        times.append(time_host_call(lambda s=strengths: runtime.set_step_strengths(EXPERT, s), device))
    return times


def relative_difference(output: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |out - ref| / max |ref|, ||out - ref|| / ||ref||) in float64."""
    out, ref = output.double(), reference.double()
    max_rel = ((out - ref).abs().max() / ref.abs().max()).item()
    norm_rel = (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref)).item()
    return max_rel, norm_rel


def forward_flops(config: dict[str, object], layers: int, tokens: int) -> float:
    """Matmul FLOPs of the blocks (linears + attention), to read achieved TFLOP/s off the base time."""
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    ffn = int(config["ffn_dim"])
    linears = 2 * tokens * (6 * dim * dim + 2 * dim * ffn) + 2 * TEXT_TOKENS * 2 * dim * dim  # attn2 k/v on text
    attention = 4 * tokens * tokens * dim + 4 * tokens * TEXT_TOKENS * dim
    return layers * (linears + attention)


# --------------------------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    config = dict(TINY_CONFIG if args.tiny else A14B_CONFIG, num_layers=args.layers, in_channels=args.in_channels)
    frames, height, width = latent_shape_for(args.tokens)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU)"
    print(f"torch {torch.__version__} | diffusers {diffusers.__version__} | peft {peft.__version__} | device: {gpu}")
    print(
        f"model: {args.layers} layers, dim {int(config['num_attention_heads']) * int(config['attention_head_dim'])}, "
        f"ffn {config['ffn_dim']}, in_channels {config['in_channels']}, bf16 | tokens {args.tokens} "
        f"(latent {frames}x{height}x{width}) + {TEXT_TOKENS} text tokens | 2 LoRAs rank {args.rank} on "
        f"{len(TARGET_MODULES)} Linears/block | strengths {STRENGTHS_A} <-> {STRENGTHS_B}"
    )

    began = time.perf_counter()
    model = build_transformer(config, device, seed=0)
    inputs = make_inputs(config, args.tokens, device, seed=1)
    synchronize(device)
    print(
        f"built in {time.perf_counter() - began:.1f} s, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params"
    )

    timings = Timings()
    outputs: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as folder:
        lora_paths = [Path(folder) / f"lora{index}.safetensors" for index in range(2)]
        modules = [write_random_lora(path, model, args.rank, seed=10 + i) for i, path in enumerate(lora_paths)]
        print(f"LoRA files: {modules[0]} modules each, {lora_paths[0].stat().st_size / 2**20:.1f} MiB each")

        outputs["base"] = forward(model, inputs).clone()
        for round_index in range(args.rounds):
            medians: dict[str, float] = {}

            base = time_forwards(model, inputs, device, args.warmup, args.repeats)
            timings.base_forward += base
            medians["base"] = median(base)

            for mode in ("unmerged", "merged"):
                forwards, output = _measure_mode(mode, model, inputs, lora_paths, device, args, timings)
                medians[mode] = median(forwards)
                if round_index == 0:
                    outputs[mode] = output
            timings.round_medians.append(medians)
            print(f"round {round_index + 1}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in medians.items()))

        outputs["base_after_close"] = forward(model, inputs).clone()

    return _summarise(args, config, device, gpu, timings, outputs)


def _measure_mode(
    mode: str,
    model: WanTransformer3DModel,
    inputs: dict[str, torch.Tensor],
    lora_paths: list[Path],
    device: torch.device,
    args: argparse.Namespace,
    timings: Timings,
) -> tuple[list[float], torch.Tensor]:
    """One runtime's life in `mode`: open, first strengths, forwards, strength changes, close; every part timed."""
    opened: list[LoraRuntime] = []
    getattr(timings, f"{mode}_open").append(
        time_host_call(lambda: opened.append(LoraRuntime({EXPERT: model}, lora_paths, mode=mode)), device)
    )
    runtime = opened[0]
    try:
        if runtime.mode != mode:
            raise RuntimeError(f"asked for {mode} mode, the runtime chose {runtime.mode}")
        _check_on_device(model, device)
        getattr(timings, f"{mode}_first_set").append(
            time_host_call(lambda: runtime.set_step_strengths(EXPERT, STRENGTHS_A), device)
        )
        forwards = time_forwards(model, inputs, device, args.warmup, args.repeats)
        getattr(timings, f"{mode}_forward").extend(forwards)
        getattr(timings, f"{mode}_change").extend(time_changes(runtime, device, args.changes))
        output = forward(model, inputs).clone()  # at STRENGTHS_A: time_changes ends where it began
    finally:
        getattr(timings, f"{mode}_close").append(time_host_call(runtime.close, device))
    return forwards, output


def _check_on_device(model: torch.nn.Module, device: torch.device) -> None:
    misplaced = [name for name, p in model.named_parameters() if p.device.type != device.type]
    if misplaced:
        raise RuntimeError(f"parameters not on {device}: {misplaced[:3]}")


def _summarise(
    args: argparse.Namespace,
    config: dict[str, object],
    device: torch.device,
    gpu: str,
    timings: Timings,
    outputs: dict[str, torch.Tensor],
) -> dict[str, object]:
    base = median(timings.base_forward)
    medians = {name: median(values) for name, values in asdict(timings).items() if name != "round_medians"}
    unmerged, merged = medians["unmerged_forward"], medians["merged_forward"]
    merged_vs_unmerged = relative_difference(outputs["merged"], outputs["unmerged"])
    lora_effect = relative_difference(outputs["unmerged"], outputs["base"])
    restored = (outputs["base_after_close"] - outputs["base"]).abs().max().item()
    saved_per_forward = unmerged - merged
    # Forwards between two strength changes from which merged costs less than unmerged (re-merge amortised).
    break_even_change = medians["merged_change"] / saved_per_forward if saved_per_forward > 0 else math.inf
    # Whole runtime (one request, one expert, constant strengths): open + first set + K forwards + close.
    overhead = {
        mode: medians[f"{mode}_open"] + medians[f"{mode}_first_set"] + medians[f"{mode}_close"]
        for mode in ("unmerged", "merged")
    }
    extra_overhead = overhead["merged"] - overhead["unmerged"]
    break_even_request = max(0.0, extra_overhead / saved_per_forward) if saved_per_forward > 0 else math.inf

    def line(label: str, value: float, detail: str = "") -> None:
        print(f"{label:<38}: {value:10.3f}{detail}")

    print()
    print(
        f"== summary: {args.layers} layers, {args.tokens} tokens, device {gpu} (medians over {args.rounds} rounds) =="
    )
    for mode, label in (("base", "base (no LoRA)"), ("unmerged", "unmerged (2 LoRAs)"), ("merged", "merged (2 LoRAs)")):
        value = medians[f"{mode}_forward"]
        n = len(getattr(timings, f"{mode}_forward"))
        line(f"forward ms, {label}", value, f"  (n={n}, {value / args.layers:.2f} ms/layer)")
    for name, label in (
        ("unmerged_change", "strength change ms, unmerged"),
        ("merged_change", "strength change ms, merged (re-merge)"),
        ("unmerged_open", "LoraRuntime() ms, unmerged"),
        ("merged_open", "LoraRuntime() ms, merged"),
        ("unmerged_first_set", "first set_step_strengths ms, unmerged"),
        ("merged_first_set", "first set_step_strengths ms, merged"),
        ("unmerged_close", "close() ms, unmerged"),
        ("merged_close", "close() ms, merged"),
    ):
        line(label, medians[name], f"  (n={len(getattr(timings, name))})")
    line("ratio unmerged/base forward", unmerged / base)
    line("ratio merged/base forward", merged / base)
    line("re-merge / one base forward", medians["merged_change"] / base)
    line("unmerged change / one base forward", medians["unmerged_change"] / base)
    line("first merge / one base forward", medians["merged_first_set"] / base)
    line("open+first set+close / base fwd, unm.", overhead["unmerged"] / base)
    line("open+first set+close / base fwd, mer.", overhead["merged"] / base)
    print(f"break-even: merged wins if >= {break_even_change:.2f} forwards run between two strength changes")
    print(f"break-even: per runtime (constant strengths) merged wins if it runs >= {break_even_request:.2f} forwards")
    if device.type == "cuda":
        tflops = forward_flops(config, args.layers, args.tokens) / (base * 1e-3) / 1e12
        print(
            f"base blocks matmul rate: {tflops:.1f} TFLOP/s | peak memory "
            f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        )
    print(
        f"merged vs unmerged output: max rel diff {merged_vs_unmerged[0]:.3e}, norm rel diff "
        f"{merged_vs_unmerged[1]:.3e} (LoRA effect vs base: max {lora_effect[0]:.3e}, norm {lora_effect[1]:.3e})"
    )
    # bf16 weights rounded once after the merge vs the bf16 LoRA branch: agree to bf16 rounding, far below the effect
    agree = merged_vs_unmerged[1] < 2e-2 and merged_vs_unmerged[1] < 0.1 * lora_effect[1]
    print(f"merged == unmerged within bf16 tolerance: {'PASS' if agree else 'FAIL'}")
    print(f"base output after close() vs before: max abs diff {restored:.3e}")
    print(f"round medians: {timings.round_medians}")

    return {
        "device": gpu,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "layers": args.layers,
        "tokens": args.tokens,
        "latent": latent_shape_for(args.tokens),
        "rank": args.rank,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()},
        "medians_ms": medians,
        "ratios": {
            "unmerged_over_base": unmerged / base,
            "merged_over_base": merged / base,
            "remerge_over_base_forward": medians["merged_change"] / base,
            "first_merge_over_base_forward": medians["merged_first_set"] / base,
            "break_even_forwards_between_changes": break_even_change,
            "break_even_forwards_per_runtime": break_even_request,
        },
        "merged_vs_unmerged": {"max_rel": merged_vs_unmerged[0], "norm_rel": merged_vs_unmerged[1], "pass": agree},
        "lora_effect": {"max_rel": lora_effect[0], "norm_rel": lora_effect[1]},
        "base_after_close_max_abs_diff": restored,
        "timings_ms": asdict(timings),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=None, help="transformer blocks (default 8; --tiny: 2)")
    parser.add_argument("--tokens", type=int, default=None, help="video tokens (default 32760; --tiny: 84)")
    parser.add_argument("--in-channels", type=int, default=16, choices=(16, 36), help="16 = T2V, 36 = I2V")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 32; --tiny: 4)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per mode per round")
    parser.add_argument("--changes", type=int, default=4, help="timed strength changes per mode per round (even)")
    parser.add_argument("--rounds", type=int, default=2, help="base/unmerged/merged interleaved this many times")
    parser.add_argument("--tiny", action="store_true", help="tiny dims (2 layers) for a CPU smoke test")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is there")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    args.layers = args.layers or (2 if args.tiny else 8)
    args.tokens = args.tokens or (84 if args.tiny else 32760)
    args.rank = args.rank or (4 if args.tiny else 32)
    if args.changes < 2 or args.changes % 2:
        parser.error("--changes: expected an even number >= 2 (strengths alternate and must end where they began)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO")  # the runtime logs every strength change at DEBUG
    result = run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
