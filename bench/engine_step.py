"""Our denoising loop (Wan2GP.sampler.denoise) at the real Wan 2.2 I2V A14B size on one GPU.

Builds both experts as diffusers WanTransformer3DModel with the i2v A14B config (in 36 / out 16 channels, 40 heads x
128, ffn 13824, 40 layers, text 4096) and a UMT5 encoder of umt5-xxl size, all with random weights made directly on
the GPU (meta-device init, `to_empty`, in-place random fill; bf16 except diffusers' fp32 modules), all resident at
once. Then runs Wan2GP.sampler.denoise with a plan from Wan2GP.schedule.build_plan (default: 4 euler steps, shift 5,
2 phases: guidance 3.5 on the high expert for steps 0-1, then 1.0 on the low expert) at 832x480x81 (latent
1x16x21x60x104), times every step with CUDA events (the first step of each run is reported apart: warm-up), and
reports seconds per forward, TFLOP/s against the FLOP anchor (1.678e15 per forward), the ratio to the ideal 2.12 s,
resident and peak GPU memory, and the forward passes the sampler counted. `--backends` compares diffusers attention
backends ("native" = torch SDPA's own choice, "_native_cudnn" = SDPA forced to cuDNN) in the same process, taking
turns over `--rounds` rounds.

    python bench/engine_step.py --json out.json     # on a GPU
    python bench/engine_step.py --tiny              # CPU smoke test: tiny dims, 2 layers, 64x64x9
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from loguru import logger
from random_models import A14B_CONFIG, TINY_OVERRIDES, build_text_encoder, build_transformer, run_versions
from transformers import UMT5EncoderModel

from Wan2GP.sampler import Conditioning, DenoiseResult, denoise
from Wan2GP.schedule import GenerationPlan, StepPlan, build_plan, phase_thresholds

GIB = 1024**3
TEXT_TOKENS = 512  # Wan pads the UMT5 prompt embedding to 512 tokens
I2V_IMAGE_CHANNELS = 20  # 4 mask channels + 16 latent channels of the encoded start image
LATENT_CHANNELS = 16
# peers_and_anchors.md §3: one A14B forward at 832x480x81 and the ideal time at a measured-class 790 TFLOP/s
ANCHOR_FLOP_PER_FORWARD = 1.678e15
ANCHOR_IDEAL_SECONDS = 2.12
ANCHOR_RATE = 790e12

I2V_A14B_CONFIG: dict[str, Any] = dict(A14B_CONFIG, in_channels=36)  # Wan 2.2 i2v: no CLIP image branch
TINY_TRANSFORMER_CONFIG: dict[str, Any] = dict(I2V_A14B_CONFIG, **TINY_OVERRIDES, num_layers=2)
UMT5_XXL_CONFIG: dict[str, Any] = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    is_encoder_decoder=False,
    use_cache=False,
    tie_word_embeddings=False,
)
TINY_UMT5_CONFIG: dict[str, Any] = dict(UMT5_XXL_CONFIG, vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2)


@dataclass(frozen=True)
class Size:
    transformer_config: dict[str, Any]
    text_config: dict[str, Any]
    frames: int  # pixel frames
    height: int
    width: int

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        return (1, LATENT_CHANNELS, (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8)

    @property
    def tokens(self) -> int:
        _, _, t, h, w = self.latent_shape
        _, ph, pw = self.transformer_config["patch_size"]
        return t * (h // ph) * (w // pw)


REAL_SIZE = Size(I2V_A14B_CONFIG, UMT5_XXL_CONFIG, frames=81, height=480, width=832)
TINY_SIZE = Size(TINY_TRANSFORMER_CONFIG, TINY_UMT5_CONFIG, frames=9, height=64, width=64)


def size_dims(size: Size) -> tuple[int, int, int]:
    return size.frames, size.height, size.width


def flop_per_forward(size: Size) -> float:
    """The §3 anchor's count (matmuls and attention cores only; 1 MAC = 2 FLOP), for any size."""
    config = size.transformer_config
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    ffn, layers, tokens, text = config["ffn_dim"], config["num_layers"], size.tokens, TEXT_TOKENS
    per_block = (
        8 * tokens * dim**2  # self-attention q, k, v, o
        + 4 * tokens * dim**2  # cross-attention q, o
        + 4 * text * dim**2  # cross-attention k, v on the text
        + 4 * tokens * dim * ffn  # ffn up and down
        + 4 * tokens**2 * dim  # self-attention QK^T and PV
        + 4 * tokens * text * dim  # cross-attention QK^T and PV
    )
    return float(layers * per_block)


# --------------------------------------------------------------------------------------------------------------------
# Random-weight models made on the device
# --------------------------------------------------------------------------------------------------------------------


def parameter_gib(model: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / GIB


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Marks the start and the end of every step: CUDA events on a GPU (no sync inside the loop), else perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._marks: list[Any] = []

    def mark(self, *_: object) -> None:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self._cuda:
            return [start.elapsed_time(end) / 1000.0 for start, end in zip(self._marks, self._marks[1:], strict=False)]
        return [end - start for start, end in zip(self._marks, self._marks[1:], strict=False)]


def forwards_in(step: StepPlan) -> int:
    return 2 if step.guidance != 1.0 else 1


def make_plan(steps: int, switch_after: int, guidance_high: float, guidance_low: float) -> GenerationPlan:
    threshold, _ = phase_thresholds("euler", steps, 5.0, [switch_after, steps - switch_after])
    return build_plan(
        num_inference_steps=steps,
        sample_solver="euler",
        flow_shift=5.0,
        guidance_phases=2,
        guidance_scale=guidance_high,
        guidance2_scale=guidance_low,
        switch_threshold=threshold,
    )


def make_conditioning(size: Size, device: torch.device, seed: int, needs_negative: bool) -> Conditioning:
    generator = torch.Generator(device=device).manual_seed(seed)
    text_dim = size.transformer_config["text_dim"]
    _, _, frames, height, width = size.latent_shape

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    return Conditioning(
        prompt_embeds=randn(1, TEXT_TOKENS, text_dim).to(torch.bfloat16),
        negative_embeds=randn(1, TEXT_TOKENS, text_dim).to(torch.bfloat16) if needs_negative else None,
        image_channels=randn(1, I2V_IMAGE_CHANNELS, frames, height, width).to(torch.bfloat16),
        first_frame_latents=randn(1, LATENT_CHANNELS, 1, height, width),
    )


def time_text_encoder(encoder: UMT5EncoderModel, device: torch.device, repeats: int) -> list[float]:
    """Seconds per encode of one padded 512-token prompt (the encoder's share of a generation)."""
    generator = torch.Generator(device=device).manual_seed(7)
    ids = torch.randint(0, encoder.config.vocab_size, (1, TEXT_TOKENS), generator=generator, device=device)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for index in range(repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            out = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            synchronize(device)
            if index > 0:  # the first one is warm-up
                times.append(time.perf_counter() - start)
            if not torch.isfinite(out).all():
                raise RuntimeError("text encoder output is not finite")
    return times


def probe_sdpa_kernels(size: Size, device: torch.device) -> list[str]:
    """Names of the GPU kernels that plain torch SDPA (what diffusers' "native" calls) runs at the real shape."""
    config = size.transformer_config
    shape = (1, config["num_attention_heads"], size.tokens, config["attention_head_dim"])
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(3))
    torch.nn.functional.scaled_dot_product_attention(q, k, v)
    synchronize(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
        synchronize(device)
    return sorted({event.name for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA})


def run_once(
    plan: GenerationPlan,
    transformers_by_expert: dict[str, WanTransformer3DModel],
    conditioning: Conditioning,
    size: Size,
    device: torch.device,
    seed: int,
) -> tuple[DenoiseResult, list[float], float]:
    clock = StepClock(device)
    synchronize(device)
    wall_start = time.perf_counter()
    clock.mark()
    with torch.inference_mode():  # as Wan2GP.engine runs it
        result = denoise(
            plan=plan,
            transformers=transformers_by_expert,
            conditioning=conditioning,
            latent_shape=size.latent_shape,
            generator=torch.Generator(device=device).manual_seed(seed),
            model_dtype=torch.bfloat16,
            on_step=clock.mark,
        )
    synchronize(device)
    return result, clock.seconds(), time.perf_counter() - wall_start


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def gib_allocated(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    size = TINY_SIZE if args.tiny else REAL_SIZE
    if args.layers is not None:  # fewer/more blocks (the anchor numbers are for 40)
        size = Size(dict(size.transformer_config, num_layers=args.layers), size.text_config, *size_dims(size))
    backends = args.backends or (["native", "_native_cudnn"] if device.type == "cuda" else ["native"])
    report: dict[str, Any] = {
        "versions": run_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": {"latent_shape": list(size.latent_shape), "tokens": size.tokens, "text_tokens": TEXT_TOKENS},
        "flop_per_forward_counted": flop_per_forward(size),
        "anchor": {
            "flop_per_forward": ANCHOR_FLOP_PER_FORWARD,
            "ideal_s": ANCHOR_IDEAL_SECONDS,
            "rate": ANCHOR_RATE,
        },
        "memory_gib": {},
        "runs": [],
    }
    if device.type == "cuda":
        report["memory_gib"]["device_total"] = torch.cuda.mem_get_info(device)[1] / GIB
    # the anchor's number at the real size (our count reproduces it), our count at any other size
    flop = ANCHOR_FLOP_PER_FORWARD if size == REAL_SIZE else report["flop_per_forward_counted"]

    started = time.perf_counter()
    transformers_by_expert: dict[str, WanTransformer3DModel] = {}
    for index, expert in enumerate(("high", "low")):
        transformers_by_expert[expert] = build_transformer(size.transformer_config, device, seed=index)
        model = transformers_by_expert[expert]
        report[f"{expert}_expert"] = {"params": parameter_count(model), "param_gib": parameter_gib(model)}
        report["memory_gib"][f"after_{expert}_expert"] = gib_allocated(device)
        logger.info(
            f"{expert} expert: {parameter_count(model) / 1e9:.3f} B params, {parameter_gib(model):.2f} GiB "
            f"(allocated {gib_allocated(device)})"
        )
    if not args.no_text_encoder:
        try:
            encoder = build_text_encoder(size.text_config, device, seed=2)
            report["text_encoder"] = {"params": parameter_count(encoder), "param_gib": parameter_gib(encoder)}
            report["memory_gib"]["after_text_encoder"] = gib_allocated(device)
            logger.info(
                f"UMT5 encoder: {parameter_count(encoder) / 1e9:.3f} B params, {parameter_gib(encoder):.2f} GiB "
                f"(allocated {gib_allocated(device)})"
            )
            report["text_encoder"]["encode_s"] = time_text_encoder(encoder, device, repeats=3)
            logger.info(f"UMT5 encode of {TEXT_TOKENS} tokens: {report['text_encoder']['encode_s']} s")
        except torch.OutOfMemoryError as error:
            report["text_encoder"] = {"error": f"did not fit beside both experts: {error}"}
            logger.warning(report["text_encoder"]["error"])
    report["build_s"] = time.perf_counter() - started
    resident = gib_allocated(device)
    report["memory_gib"]["resident"] = resident
    if device.type == "cuda":
        try:
            report["sdpa_native_kernels"] = probe_sdpa_kernels(size, device)
        except RuntimeError as error:  # the profiler is a nice-to-have; the timings do not need it
            report["sdpa_native_kernels"] = [f"probe failed: {error}"]
        logger.info(f"torch SDPA kernels at the real shape: {report['sdpa_native_kernels']}")

    plan = make_plan(args.steps, args.switch_after, args.guidance, args.guidance2)
    report["plan"] = [
        {"index": s.index, "timestep": s.timestep, "guidance": s.guidance, "expert": s.expert} for s in plan.steps
    ]
    needs_negative = any(s.guidance != 1.0 for s in plan.steps)
    conditioning = make_conditioning(size, device, seed=11, needs_negative=needs_negative)
    forwards = [forwards_in(s) for s in plan.steps]

    for round_index in range(args.rounds):
        for backend in backends:
            for model in transformers_by_expert.values():
                model.set_attention_backend(backend)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            result, step_s, wall_s = run_once(plan, transformers_by_expert, conditioning, size, device, args.seed)
            latents = result.latents
            entry = {
                "round": round_index,
                "backend": backend,
                "step_s": step_s,
                "forwards_per_step": forwards,
                "s_per_forward_by_step": [s / f for s, f in zip(step_s, forwards, strict=True)],
                "wall_s": wall_s,
                "forward_passes": result.forward_passes,
                "peak_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
                "latents_finite": bool(torch.isfinite(latents).all()),
                "latents_std": float(latents.std()),
            }
            steady = slice(1, None)
            entry["steady_s_per_forward"] = sum(step_s[steady]) / sum(forwards[steady])
            report["runs"].append(entry)
            logger.info(
                f"round {round_index} {backend}: steps {[round(s, 3) for s in step_s]} s, "
                f"s/forward {[round(s, 3) for s in entry['s_per_forward_by_step']]}, "
                f"passes {result.forward_passes}, peak {entry['peak_gib']}, finite {entry['latents_finite']}"
            )
            if args.json:  # after every run, so a run cut short still leaves its numbers
                Path(args.json).write_text(json.dumps(report, indent=2))

    report["summary"] = summarize(report["runs"], backends, flop)
    report["memory_gib"]["peak_overall"] = (
        torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    )
    return report


def summarize(runs: Sequence[dict[str, Any]], backends: Sequence[str], flop: float) -> dict[str, Any]:
    """Per backend: the warm-up first step (first round) and the median s/forward over every later step."""
    summary = {}
    for backend in backends:
        mine = [r for r in runs if r["backend"] == backend]
        steady = [s for r in mine for s in r["s_per_forward_by_step"][1:]]
        later_first_steps = [r["s_per_forward_by_step"][0] for r in mine[1:]]
        median = statistics.median(steady)
        cfg_steps = [
            s
            for r in mine
            for i, (s, f) in enumerate(zip(r["step_s"], r["forwards_per_step"], strict=True))
            if i and f == 2
        ]
        summary[backend] = {
            "first_step_s_per_forward_round0": mine[0]["s_per_forward_by_step"][0],
            "first_step_s_per_forward_later_rounds": later_first_steps,
            "median_s_per_forward": median,
            "min_s_per_forward": min(steady),
            "max_s_per_forward": max(steady),
            "n_steady_steps": len(steady),
            "median_cfg_step_s": statistics.median(cfg_steps) if cfg_steps else None,
            "tflops": flop / median / 1e12,
            "ratio_to_ideal": median / ANCHOR_IDEAL_SECONDS,
            "fraction_of_790": flop / median / ANCHOR_RATE,
            "peak_gib": max((r["peak_gib"] or 0.0) for r in mine),
        }
    return summary


def print_table(report: dict[str, Any]) -> None:
    print(f"\ndevice: {report['device']}; versions: {report['versions']}")
    print(f"latent {report['size']['latent_shape']}, {report['size']['tokens']} tokens")
    print(f"FLOP per forward: counted {report['flop_per_forward_counted']:.4g} (anchor {ANCHOR_FLOP_PER_FORWARD:.4g})")
    for key in ("high_expert", "low_expert", "text_encoder"):
        if key in report:
            print(f"{key}: {json.dumps(report[key])}")
    print(f"memory GiB: {json.dumps(report['memory_gib'])}")
    print(f"build s: {report['build_s']:.1f}")
    print(
        "\n| backend | warm-up step s/fwd | median s/fwd (min-max, n) | CFG step s | TFLOP/s | /2.12 s ideal | peak GiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for backend, s in report["summary"].items():
        cfg = f"{s['median_cfg_step_s']:.3f}" if s["median_cfg_step_s"] is not None else "-"
        print(
            f"| {backend} | {s['first_step_s_per_forward_round0']:.3f} | {s['median_s_per_forward']:.3f} "
            f"({s['min_s_per_forward']:.3f}-{s['max_s_per_forward']:.3f}, {s['n_steady_steps']}) | {cfg} | "
            f"{s['tflops']:.1f} | {s['ratio_to_ideal']:.3f} | {s['peak_gib']:.2f} |"
        )
    passes = {r["backend"]: r["forward_passes"] for r in report["runs"]}
    print(f"forward_passes: {passes}; all latents finite: {all(r['latents_finite'] for r in report['runs'])}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny dims, 2 layers, 64x64x9 (CPU smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--switch-after", type=int, default=2, help="steps on the high expert (phase 1)")
    parser.add_argument("--guidance", type=float, default=3.5, help="phase 1 (high expert) guidance")
    parser.add_argument("--guidance2", type=float, default=1.0, help="phase 2 (low expert) guidance")
    parser.add_argument("--layers", type=int, help="override the number of transformer blocks")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backends", nargs="*", help="diffusers attention backends, e.g. native _native_cudnn")
    parser.add_argument("--no-text-encoder", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="write every number here")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print_table(report)
    if not all(r["latents_finite"] for r in report["runs"]):
        raise SystemExit("non-finite latents")


if __name__ == "__main__":
    main()
