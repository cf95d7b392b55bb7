"""The seed segment through our WanEngine against stock diffusers, in one process, on the same random full-size weights.

The seed segment of issue 19: Wan 2.2 I2V A14B (both experts), 768x576, 53 frames, start and end image, 6 euler steps
in 3 phases with guidance 3/1/1 (the bundled `wan_2_2_i2v_lightning_baseline_3_3` settings), with and without two
rank-64 LoRAs (multipliers `0.75;1.0;0` and `0;0;1.0`, every attention and FFN Linear of the 40 blocks). The random
components are built once on the GPU from a seed (memory_profiles.RandomComponents, the engine's component_loader)
and shared: our engine renders through `WanEngine.render` (what the worker runs, less the mp4 write), stock diffusers
runs `WanImageToVideoPipeline` on the very same modules (2 phases, guidance 3 on the high expert and 1 on the low one,
switching where our plan switches; it runs the unconditional pass on every step).

Each variant renders `--runs` segments in a row; the first loads (or compiles) and is reported apart, the others are
"warm", as the worker's second segment of a travel run. Reported per run: the engine's stage timings (load with the
LoRA attach, encode, denoise, decode), forwards, and every transformer forward's time (CUDA events around the
module's call, both sides alike). Variants:

- `ours`, `ours_loras`: the engine as it is (bf16 weights, SDPA attention), with stock's VAE (fp32, diffusers' layers);
- `stock`: WanImageToVideoPipeline, total time and forwards;
- `compiled`, `compiled_loras` (in `--variants`): a second engine, `WanEngine(compile_backend="inductor")` as the
  worker's `--compile` makes it, on the same seed's weights: diffusers' `compile_repeated_blocks` on both experts
  (one compiled block reused by the 40; its first run compiles);
- `fast`, `fast_loras`: the worker's `--fast`, fp8 weights and activations in the blocks' Linear layers (torchao,
  `transformer_weights="fp8_dynamic"`), compiled; with the error of one high-noise forward against the eager
  bf16 one on the same seeded inputs, and of the final latents against `ours`;
- the VAE: the `ours` run's final latents decoded in fp32 (stock's, channels-last on a GPU), by a bf16 copy, an fp16
  copy (the engine's default dtype on a GPU), the fp16 copy with Wan2GP.vae_layers' forwards (the later engines', where
  the first engine, whose VAE stock shares, keeps diffusers') and an fp32 copy in the NCDHW layout: time and error;
  `--vae-dtype` sets the later engines' VAE dtype;
- the LoRAs merged with their exact originals on the device: each strength change of the seed segment, and the close;
- for `compiled` and `fast`: one high-noise forward under torch.profiler, its device time split into attention, matmul
  and the rest (`kernel_profile`), to show where a forward's time goes;
- `--attention` (sdpa, flash4, cudnn_fp8, auto: `WanEngine(attention=...)`) is the attention kernel of the later
  engines (the first one shares its modules with stock and keeps SDPA): `ours_attention`, `ours_attention_loras`
  (uncompiled, as the worker runs without --compile or --fast, with the error of one forward against the SDPA one),
  `compiled*`, `fast*` (auto: cudnn_fp8 there where it runs); each kernel that can run here is also timed alone on the
  seed segment's self-attention (`attention_check`: 1x24192 tokens x 40 heads x 128), with its error against fp32,
  and cuDNN's fp8 operator is compared with the emulation the CPU tests check (`fp8_operator_check`);
  `--attention-check-only` stops after that (a minute's probe before a long run).

    python bench/segment_vs_stock.py --json out.json --variants ours,stock,compiled   # on an H200
    python bench/segment_vs_stock.py --tiny                                           # CPU smoke test
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
from loguru import logger
from memory_profiles import (
    MODEL_ID,
    RandomComponents,
    one_forward_inputs,
    prepare_workdir,
    segment_params,
    synchronize,
    write_keyframes,
    write_loras,
)
from random_models import run_versions
from vae_chunks import timed_peak

from Wan2GP.attention import (
    ATTENTION_PRODUCTS,
    cudnn_fp8_unavailable,
    emulated_fp8_attention,
    flash3_unavailable,
    flash4_unavailable,
    scaled_fp8_attention,
    to_fp8,
)
from Wan2GP.catalog import ATTENTION_KERNELS, DTYPES, load_catalog
from Wan2GP.conditioning import VaeCodec
from Wan2GP.engine import WanEngine
from Wan2GP.loading import LoadedModel
from Wan2GP.request import GenerationRequest
from Wan2GP.vae_layers import use_fast_layers

VARIANTS = (
    "ours_loras",
    "ours",
    "stock",
    "ours_attention",
    "ours_attention_loras",
    "compiled",
    "compiled_loras",
    "fast",
    "fast_loras",
)


class ForwardTimer:
    """Every forward of the given transformers, timed with CUDA events (or the wall clock on the CPU) around the
    module's call; read after a synchronize."""

    def __init__(self, transformers: Mapping[str, torch.nn.Module], device: torch.device) -> None:
        self.device = device
        self.pending: list[tuple[Any, Any]] = []
        self.handles = []
        for transformer in transformers.values():
            self.handles.append(transformer.register_forward_pre_hook(self._start))
            self.handles.append(transformer.register_forward_hook(self._stop))

    def _now(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, *_: Any) -> None:
        self.pending.append((self._now(), None))

    def _stop(self, *_: Any) -> None:
        start, _ = self.pending[-1]
        self.pending[-1] = (start, self._now())

    def seconds(self) -> list[float]:
        synchronize(self.device)
        if self.device.type == "cuda":
            times = [start.elapsed_time(stop) / 1000 for start, stop in self.pending]
        else:
            times = [stop - start for start, stop in self.pending]
        self.pending = []
        return times

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextmanager
def timed_forwards(transformers: Mapping[str, torch.nn.Module], device: torch.device) -> Iterator[ForwardTimer]:
    timer = ForwardTimer(transformers, device)
    try:
        yield timer
    finally:
        timer.close()


def run_engine(
    name: str, engine: WanEngine, request: GenerationRequest, *, runs: int, device: torch.device
) -> tuple[dict[str, Any], torch.Tensor]:
    rows = []
    latents = None
    for index in range(runs):
        model = engine.load(MODEL_ID, width=request.width, height=request.height, num_frames=request.num_frames)
        with timed_forwards(model.transformers, device) as timer:
            synchronize(device)
            started = time.perf_counter()
            rendered = engine.render(request)
            synchronize(device)
            wall = time.perf_counter() - started
            forwards = timer.seconds()
        latents = rendered.latents
        row = {
            "run": index + 1,
            "seconds": wall,
            "timings": {key: value for key, value in rendered.timings.items()},
            "forwards": dict(rendered.forward_passes),
            "forward_seconds": forwards,
        }
        print(f"[{name}] run {index + 1}: {wall:.2f} s {json.dumps(row['timings'])} forwards {row['forwards']}")
        rows.append(row)
    assert latents is not None
    return summarize(name, rows), latents


def summarize(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    warm = rows[1:] or rows
    forwards = [seconds for row in warm for seconds in row["forward_seconds"]]
    summary = {
        "name": name,
        "runs": rows,
        "warm_seconds_median": statistics.median(row["seconds"] for row in warm),
        "forward_seconds_median": statistics.median(forwards) if forwards else None,
        "forward_count": len(warm[-1]["forward_seconds"]),
    }
    if "timings" in warm[-1]:
        summary["warm_timings_median"] = {
            stage: statistics.median(row["timings"].get(stage, 0.0) for row in warm) for stage in warm[-1]["timings"]
        }
    return summary


def stock_pipeline(model: LoadedModel, request: GenerationRequest) -> tuple[WanImageToVideoPipeline, float]:
    """WanImageToVideoPipeline on the engine's own modules; its boundary where our plan switches experts."""
    steps = request.plan.steps
    first_low = next((step for step in steps if step.expert == "low"), None)
    boundary = float(first_low.timestep) / 1000 if first_low is not None else None
    scheduler = FlowMatchEulerDiscreteScheduler(shift=float(request.plan.flow_shift))
    pipe = WanImageToVideoPipeline(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=model.vae,
        scheduler=scheduler,
        transformer=model.transformers["high"],
        transformer_2=model.transformers.get("low"),
        boundary_ratio=boundary,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, boundary


def run_stock(
    engine: WanEngine, request: GenerationRequest, *, runs: int, device: torch.device, guidance: tuple[float, float]
) -> dict[str, Any]:
    model = engine.load(MODEL_ID, width=request.width, height=request.height, num_frames=request.num_frames)
    pipe, boundary = stock_pipeline(model, request)
    start, end = (
        image if isinstance(image, PIL.Image.Image) else PIL.Image.open(image)
        for image in (request.image_start, request.image_end)
    )
    rows = []
    for index in range(runs):
        with timed_forwards(model.transformers, device) as timer:
            synchronize(device)
            started = time.perf_counter()
            pipe(
                image=start.convert("RGB"),
                last_image=end.convert("RGB"),
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                height=request.height,
                width=request.width,
                num_frames=request.num_frames,
                num_inference_steps=request.plan.num_inference_steps,
                guidance_scale=guidance[0],
                guidance_scale_2=guidance[1],
                generator=torch.Generator(device=device).manual_seed(request.seed),
                output_type="np",
            )
            synchronize(device)
            wall = time.perf_counter() - started
            forwards = timer.seconds()
        print(f"[stock] run {index + 1}: {wall:.2f} s, {len(forwards)} forwards, boundary {boundary}")
        rows.append({"run": index + 1, "seconds": wall, "forward_seconds": forwards})
    summary = summarize("stock", rows)
    summary["boundary_ratio"] = boundary
    summary["guidance"] = list(guidance)
    return summary


def one_forward(transformer: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.inference_mode():
        return transformer(**inputs)[0].float().cpu()


def fp32_forward_errors(
    components: RandomComponents,
    inputs: dict[str, Any],
    forwards: Mapping[str, torch.Tensor],
    device: torch.device,
) -> dict[str, float]:
    """Each of `forwards` (one high-noise forward per variant, on `inputs`) against the same forward by an fp32 copy of
    the seed's high-noise expert on the same inputs: how far each bf16 path is from exact arithmetic, which says
    whether two bf16 paths' distance from each other is one's error or both's rounding."""
    transformer = components.transformer(0, device, "native").float()
    exact = one_forward(
        transformer,
        {
            name: value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for name, value in inputs.items()
        },
    )
    del transformer
    return {name: float((forward - exact).norm() / exact.norm()) for name, forward in forwards.items()}


# Substrings of CUDA kernel names (and of aten op names on a CPU run) that say what a kernel does; first match wins.
KERNEL_KINDS = (
    ("attention", ("sdpa", "fmha", "flash", "attention", "scaled_dot_product")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "addmm", "aten::mm", "aten::bmm", "matmul", "scaled_mm")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(mark in lowered for mark in marks)), "other")


def span_and_busy_seconds(intervals: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(start, end) microsecond intervals -> (seconds from the first start to the last end, seconds covered by at least
    one interval): nested or overlapping intervals (CPU ops inside ops, kernels on two streams) count once."""
    if not intervals:
        return 0.0, 0.0
    busy = 0.0
    covered_until = -math.inf
    for start, end in sorted(intervals):
        if end > covered_until:
            busy += end - max(start, covered_until)
            covered_until = end
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    return span / 1e6, busy / 1e6


def kernel_profile(module: torch.nn.Module, inputs: dict[str, Any], device: torch.device, *, top: int = 12) -> dict:
    """One forward (after a warm one) under torch.profiler: the device time of its kernels by kind (attention,
    matmul, other: norms, modulation, RoPE, activations, copies) and the longest kernels. On a CPU the aten ops'
    self times stand in for kernels."""
    on_gpu = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CUDA if on_gpu else torch.profiler.ProfilerActivity.CPU]
    with torch.inference_mode():
        module(**inputs)
        synchronize(device)
        with torch.profiler.profile(activities=activities) as profiler:
            module(**inputs)
            synchronize(device)
    kind = torch.autograd.DeviceType.CUDA if on_gpu else torch.autograd.DeviceType.CPU
    intervals = [
        (event.time_range.start, event.time_range.end) for event in profiler.events() if event.device_type == kind
    ]
    seconds: dict[str, float] = {}
    for event in profiler.key_averages():
        spent = (event.self_device_time_total if on_gpu else event.self_cpu_time_total) / 1e6
        if spent > 0:
            seconds[event.key] = seconds.get(event.key, 0.0) + spent
    total = sum(seconds.values())
    by_kind = {kind: 0.0 for kind in ("attention", "matmul", "other")}
    for name, spent in seconds.items():
        by_kind[kernel_kind(name)] += spent
    longest = sorted(seconds.items(), key=lambda item: -item[1])[:top]
    span, busy = span_and_busy_seconds(intervals)
    return {
        "total_seconds": total,
        # from the first kernel's start to the last one's end, and the part of it no kernel ran: launch gaps
        "span_seconds": span,
        "idle_seconds": span - busy,
        "seconds_by_kind": by_kind,
        "share_by_kind": {kind: spent / total for kind, spent in by_kind.items()} if total else {},
        "longest": [{"kernel": name[:160], "kind": kernel_kind(name), "seconds": spent} for name, spent in longest],
    }


def attention_check(
    device: torch.device, *, tokens: int = 24192, heads: int = 40, head_dim: int = 128, repeats: int = 10
) -> dict[str, Any]:
    """Each attention kernel that can run on `device` on one random bf16 self-attention of the given size (the seed
    segment's by default): median time, TFLOP/s (4 * tokens^2 * heads * head_dim FLOPs) and relative error against
    the same product in fp32 (SDPA's memory-efficient kernel on a GPU). cudnn_fp8 is timed as the engine calls it
    (with its scaling into fp8 and back), and its operator alone is compared with `emulated_fp8_attention` on the
    same fp8 operands (the first 4 heads): the check that cuDNN computes what the emulation the CPU tests rely on
    says."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device="cpu").manual_seed(7)
    query, key, value = (
        torch.randn((1, tokens, heads, head_dim), generator=generator).to(device, dtype) for _ in range(3)
    )
    with torch.inference_mode():
        reference = ATTENTION_PRODUCTS["sdpa"](query.float(), key.float(), value.float())
    unavailable = {"flash3": flash3_unavailable, "flash4": flash4_unavailable, "cudnn_fp8": cudnn_fp8_unavailable}
    report: dict[str, Any] = {"shape": [1, tokens, heads, head_dim], "dtype": str(dtype)}
    for name, product in ATTENTION_PRODUCTS.items():
        why = unavailable[name](device, dtype) if name in unavailable else None
        if why is not None:
            report[name] = {"unavailable": why}
            continue
        seconds = []
        try:
            with torch.inference_mode():
                for repeat in range(repeats + 2):  # two warm-ups: flash4 compiles its kernel on the first call
                    synchronize(device)
                    started = time.perf_counter()
                    out = product(query, key, value)
                    synchronize(device)
                    if repeat >= 2:
                        seconds.append(time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
            report[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        median = statistics.median(seconds)
        report[name] = {
            "seconds": median,
            "tflops": 4 * tokens**2 * heads * head_dim / median / 1e12,
            "rel_error_vs_fp32": float((out.float() - reference).norm() / reference.norm()),
        }
        if name == "cudnn_fp8":
            report[name]["operator_vs_emulation"] = fp8_operator_check(query, key, value, heads=min(heads, 4))
    return report


def fp8_operator_check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, heads: int) -> dict[str, Any]:
    """scaled_fp8_attention (cuDNN on a GPU) against emulated_fp8_attention on the same fp8 operands, for the first
    `heads` heads (the emulation holds a tokens x tokens score matrix per head): relative norm error and the largest
    difference in fp8 units of the output; then the operator alone timed on all heads."""
    with torch.inference_mode():
        (query8, query_descale), (key8, key_descale), (value8, value_descale) = (
            to_fp8(tensor) for tensor in (query, key, value)
        )
        descales = (query_descale, key_descale, value_descale)
        kernel = scaled_fp8_attention(query8, key8, value8, *descales)[:, :, :heads].float()
        emulated = torch.cat(
            [
                emulated_fp8_attention(*(t[:, :, head : head + 1] for t in (query8, key8, value8)), *descales)
                for head in range(heads)
            ],
            dim=2,
        ).float()
        seconds = []
        for repeat in range(7):
            synchronize(query.device)
            started = time.perf_counter()
            scaled_fp8_attention(query8, key8, value8, *descales)
            synchronize(query.device)
            if repeat >= 2:
                seconds.append(time.perf_counter() - started)
    return {
        "heads_compared": heads,
        "rel_error": float((kernel - emulated).norm() / emulated.norm()),
        "max_abs_diff_fp8_units": float((kernel - emulated).abs().max()),
        "operator_seconds": statistics.median(seconds),
    }


def vae_decode_check(vae: torch.nn.Module, latents: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """Stock's fp32 decode (on a GPU its convolutions channels-last, NDHWC, as the engine runs them) against other ways
    to decode the same latents with the same VAE weights: a bf16 copy, an fp16 copy (the engine's default dtype on a
    GPU), the fp16 copy with Wan2GP.vae_layers' forwards (what the later engines run), and an fp32 copy in the default
    NCDHW layout, each timed by vae_chunks.timed_peak after an untimed call (cuDNN's first calls at a shape), with its
    error against the fp32 decode; and each one's i2v encode of a video that long.
    cuDNN's algorithm search (torch.backends.cudnn.benchmark) changed nothing on the H200
    (bench/results/speed_h200.json) and is no longer tried."""
    report: dict[str, Any] = {}
    decoded = {}
    ways = {"fp32": vae}
    if device.type == "cuda":
        ways["bf16"] = copy.deepcopy(vae).to(torch.bfloat16)
        ways["fp16"] = copy.deepcopy(vae).to(torch.float16)
        ways["fp16_wan2gp_layers"] = copy.deepcopy(ways["fp16"])
        use_fast_layers(ways["fp16_wan2gp_layers"])  # the later engines' layers, uncompiled
        ways["fp32_ncdhw"] = _contiguous(copy.deepcopy(vae))
    for name, module in ways.items():
        codec = VaeCodec(module)
        report[f"{name}_seconds"], _, pixels = timed_peak(codec.decode, latents.to(device), device, repeats=1)
        decoded[name] = pixels.float().cpu()
        # the i2v encode of a video this long (the engine encodes start frame, blank middle and end frame)
        report[f"{name}_encode_seconds"], _, encoded = timed_peak(codec.encode, pixels.to(device), device, repeats=1)
        del encoded
    for name, pixels in decoded.items():
        if name != "fp32":
            difference = pixels - decoded["fp32"]
            report[f"{name}_rel_error"] = float(difference.norm() / decoded["fp32"].norm())
            report[f"{name}_max_abs_error"] = float(difference.abs().max())  # pixels in [-1, 1]
    del ways
    gc.collect()
    return report


def _contiguous(module: torch.nn.Module) -> torch.nn.Module:
    for parameter in module.parameters():
        parameter.data = parameter.data.contiguous()
    return module


def lora_merge_costs(
    transformers: Mapping[str, torch.nn.Module], paths: Sequence[Path], request: GenerationRequest, device: torch.device
) -> dict[str, Any]:
    """The seed's LoRAs in merged mode with the exact originals on the device (as the engine keeps them when the
    budget has room): each strength change of the seed segment timed, then the next segment's two changes (returns to
    kept merged weights, where the room held them: device_copy_gib counts those too), then the close that restores
    the weights."""
    from Wan2GP.loras import LoraRuntime

    steps = [
        (step.expert, 1 if step.guidance == 1.0 else 2, tuple(step.lora_multipliers)) for step in request.plan.steps
    ]
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()  # what the allocator holds unused is room too
    room = torch.cuda.mem_get_info(device)[0] - 8 * 2**30 if device.type == "cuda" else 2**62
    report: dict[str, Any] = {}
    with LoraRuntime(transformers, paths, mode="merged", steps=steps, device_copy_room=room) as runtime:
        report["device_copy_gib"] = runtime.device_copy_bytes / 2**30
        changes = [("high", (0.75, 0.0), "first_merge_high"), ("high", (1.0, 0.0), "re_merge_high")]
        changes += [("low", (0.0, 1.0), "first_merge_low"), ("high", (0.75, 0.0), "re_merge_high_next_segment")]
        changes += [("high", (1.0, 0.0), "re_merge_high_next_segment_second")]
        for expert, strengths, label in changes:
            synchronize(device)
            started = time.perf_counter()
            runtime.set_step_strengths(expert, strengths)
            synchronize(device)
            report[f"{label}_seconds"] = time.perf_counter() - started
        synchronize(device)
        started = time.perf_counter()
    synchronize(device)
    report["close_seconds"] = time.perf_counter() - started
    print("lora merge costs:", json.dumps(report))
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny dims, 64x64x9")
    parser.add_argument("--size", default="768x576x53", help="WIDTHxHEIGHTxFRAMES")
    parser.add_argument("--runs", type=int, default=2, help="segments in a row per variant (the first: cold)")
    parser.add_argument(
        "--variants",
        default="ours_loras,ours,stock",
        help=f"comma-separated, from {','.join(VARIANTS)} (stock always runs: the reference)",
    )
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend of the compiled variants (tests: eager)"
    )
    parser.add_argument(
        "--attention",
        default="sdpa",
        choices=ATTENTION_KERNELS,
        help="attention kernel of the engines built after the first (ours_attention, compiled, fast); the first shares "
        "stock's modules and keeps SDPA",
    )
    parser.add_argument(
        "--attention-check-only",
        action="store_true",
        help="time the attention kernels alone (attention_check), then stop: a minute's probe before a long run",
    )
    parser.add_argument(
        "--fp32-reference",
        action="store_true",
        help="at the end, one high-noise forward of an fp32 copy of the same weights: every variant's one-forward "
        "error against it (needs the fp32 expert's 57 GB on the device)",
    )
    parser.add_argument(
        "--vae-dtype",
        choices=DTYPES,
        help="VAE dtype of the engines built after the first (default: the worker's, the definition's: float16); the "
        "first shares stock's modules and keeps float32",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO")

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda:0")
    width, height, frames = (int(value) for value in args.size.split("x"))
    if args.tiny:
        width, height, frames = 64, 64, 9
    workdir, defaults_dir, cache_dir = prepare_workdir(args.workdir, prefix="segment_vs_stock_", tiny=args.tiny)
    catalog = load_catalog(extra_dirs=[defaults_dir])
    loras = write_loras(workdir, tiny=args.tiny, device=device)
    keyframes = write_keyframes(workdir, width, height)
    with_loras = segment_params(width=width, height=height, frames=frames, loras=loras, keyframes=keyframes)
    without = {key: value for key, value in with_loras.items() if key not in ("activated_loras", "loras_multipliers")}

    def make_engine(
        compile_backend: str | None = None,
        weights: str | None = None,
        attention: str = "sdpa",
        vae_dtype: str | None = None,
        stock_vae_layers: bool = False,
    ) -> WanEngine:
        return WanEngine(
            device=str(device),
            cache_dir=cache_dir,
            catalog=catalog,
            placement="resident",
            component_loader=RandomComponents(tiny=args.tiny, seed=0, build_device=device),
            compile_backend=compile_backend,
            transformer_weights=weights,
            vae_dtype=vae_dtype,
            stock_vae_layers=stock_vae_layers,
            attention=attention,
        )

    # The first engine's modules are stock's too: its VAE in fp32, as diffusers' Wan examples load it, with diffusers'
    # own layers (the later engines run Wan2GP.vae_layers').
    engine = make_engine(vae_dtype="float32", stock_vae_layers=True)
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/segment_vs_stock.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": run_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": [width, height, frames],
        "attention": args.attention,
        "variants": {},
    }
    variants = report["variants"]
    wanted = {name.strip() for name in args.variants.split(",")} | {"stock"}
    unknown = wanted - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(VARIANTS)}")

    def save() -> None:  # after every variant: a run cut short by its time limit keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    report["attention_check"] = (
        attention_check(device, tokens=256, heads=2, head_dim=16) if args.tiny else attention_check(device)
    )
    if args.tiny:  # the operator is its emulation on a CPU: this only keeps the GPU check's code running
        query, key, value = (torch.randn((1, 64, 2, 16)) for _ in range(3))
        report["attention_check"]["fp8_operator_on_cpu"] = fp8_operator_check(query, key, value, heads=2)
    print("attention kernels:", json.dumps(report["attention_check"]), flush=True)
    save()
    if args.attention_check_only:
        return report
    requests = {False: engine.resolve(without), True: engine.resolve(with_loras)}
    latents: dict[str, torch.Tensor] = {}
    for name in ("ours_loras", "ours"):
        if name in wanted:
            variants[name], latents[name] = run_engine(
                name, engine, requests[name == "ours_loras"], runs=args.runs, device=device
            )
            save()
    engine.detach_loras()  # stock and the LoRA runtime below run on the base weights
    request = requests[False]
    high_guidance = request.plan.steps[0].guidance
    variants["stock"] = run_stock(engine, request, runs=args.runs, device=device, guidance=(high_guidance, 1.0))
    model = engine.load(MODEL_ID, width=width, height=height, num_frames=frames)
    # the latents an eager variant rendered, else seeded noise of their shape (the decode's time is the same)
    z_dim, spatial = model.vae.config.z_dim, 2 ** len(model.vae.config.temperal_downsample)
    shape = (1, z_dim, (frames - 1) // 4 + 1, height // spatial, width // spatial)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    report["vae_decode"] = vae_decode_check(model.vae, next(iter(latents.values()), noise), device)
    save()
    if "ours_loras" in wanted:
        report["lora_merge_costs"] = lora_merge_costs(model.transformers, loras, requests[True], device)
        save()
    forward_inputs = one_forward_inputs(
        model.transformers["high"].config, device, width=width, height=height, frames=frames
    )
    reference_forward = one_forward(model.transformers["high"], forward_inputs)
    forwards = {"ours": reference_forward}  # one high-noise forward per variant, for the fp32 comparison
    del model
    # Each later engine is built on the same seed's weights after the one before is unloaded (stock and the eager
    # variants above ran on modules nothing else touched): --attention's kernel uncompiled, the worker's --compile,
    # then its --fast.
    for later, compile_backend, weights in (
        ("ours_attention", None, None),
        ("compiled", args.compile_backend, None),
        ("fast", args.compile_backend, "fp8_dynamic"),
    ):
        names = [name for name in (later, f"{later}_loras") if name in wanted]
        if not names:
            continue
        engine.unload()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        engine = make_engine(compile_backend, weights, args.attention, args.vae_dtype)
        for name in names:
            eager = "ours_loras" if name.endswith("_loras") else "ours"
            try:
                variants[name], rendered = run_engine(
                    name, engine, requests[name.endswith("_loras")], runs=args.runs, device=device
                )
            except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
                variants[name] = {"error": f"{type(error).__name__}: {error}"}
                continue
            if eager in latents:
                reference = latents[eager].float()
                variants[name][f"latents_rel_error_vs_{eager}"] = float(
                    (rendered.float() - reference).norm() / reference.norm()
                )
            if name == later:
                variants[name]["weights"] = engine.placement.weights
                high = engine.load(MODEL_ID, width=width, height=height, num_frames=frames).transformers["high"]
                forwards[name] = one_forward(high, forward_inputs)
                variants[name]["one_forward_rel_error_vs_eager"] = float(
                    (forwards[name] - reference_forward).norm() / reference_forward.norm()
                )
                variants[name]["kernel_profile"] = kernel_profile(high, forward_inputs, device)
                print(f"[{name}] one forward's kernels:", json.dumps(variants[name]["kernel_profile"]), flush=True)
            save()
        if f"{later}_loras" in names and later != "ours_attention":
            # the merge costs on this engine's weights (float8 under --fast: quantized again at every change)
            engine.detach_loras()
            transformers = engine.load(MODEL_ID, width=width, height=height, num_frames=frames).transformers
            report[f"lora_merge_costs_{later}"] = lora_merge_costs(transformers, loras, requests[True], device)
            save()

    if args.fp32_reference:
        engine.unload()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report["one_forward_rel_error_vs_fp32"] = fp32_forward_errors(
            RandomComponents(tiny=args.tiny, seed=0, build_device=device), forward_inputs, forwards, device
        )
        print("one forward against fp32:", json.dumps(report["one_forward_rel_error_vs_fp32"]), flush=True)
        save()

    stock = variants["stock"]
    print("\nvariant | warm s | x stock | per forward s | x stock per forward | forwards | stages")
    for name, variant in variants.items():
        if "error" in variant:
            print(f"{name} | failed: {variant['error']}")
            continue
        variant["speedup_vs_stock"] = stock["warm_seconds_median"] / variant["warm_seconds_median"]
        if variant["forward_seconds_median"] and stock["forward_seconds_median"]:
            variant["forward_speedup_vs_stock"] = stock["forward_seconds_median"] / variant["forward_seconds_median"]
        print(
            f"{name} | {variant['warm_seconds_median']:.2f} | {variant['speedup_vs_stock']:.3f} | "
            f"{variant['forward_seconds_median'] or float('nan'):.3f} | "
            f"{variant.get('forward_speedup_vs_stock', float('nan')):.3f} | {variant['forward_count']} | "
            f"{json.dumps({k: round(v, 2) for k, v in variant.get('warm_timings_median', {}).items()})}"
        )
    print("vae decode:", json.dumps(report["vae_decode"]))
    save()
    return report


if __name__ == "__main__":
    main()
