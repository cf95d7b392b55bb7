"""Memory profiles: the seed segment through WanEngine under VRAM budgets, against the resident run in one process.

The seed segment of the issue: Wan 2.2 I2V A14B (both experts), 768x576, 53 frames, start and end image, 6 euler
steps in 3 phases with guidance 3/1/1 (the bundled `wan_2_2_i2v_lightning_baseline_3_3` settings), two rank-64
LoRAs with multipliers `0.75;1.0;0` and `0;0;1.0` (614 MB each, every attention and FFN Linear of the 40 blocks).

Weights are random and full-size, built on the GPU from a seed (bench/random_models.py: a CPU init of 68 GB would take
longer than the benchmark) by the engine's `component_loader` hook, then moved to pinned host memory for the parts the
placement offloads. Only configs and the tokenizer are written to disk: the engine plans the placement from them like
from a real weights folder. Building needs the whole GPU for a moment, so the loader lifts the memory cap while it
builds and restores it once the offloaded parts have left the device and the cache is emptied; peak memory is read
per segment (reset after loading), so the build never counts.

For each profile (resident, then each `--budgets` entry, `GB` or `GB:WEIGHTS` with WEIGHTS int8 or fp8 to force
8-bit transformer weights): `torch.cuda.set_per_process_memory_fraction(budget / card)` stands in for the smaller
card, a new WanEngine takes its default budget from that cap, and `--segments` segments run in a row (the first loads
the model). Reported per segment: stage timings, peak allocated and reserved device memory, host memory (process RSS
and pinned bytes), the final latents' relative error against the resident run's. Then the VAE: the resident run's
latents decoded whole and tiled (time, peak, max and mean difference); and, with `--forward-check`, one transformer
forward at the segment's size in 16 bits and with each 8-bit format (time, relative error). cuDNN runs deterministic,
so that two runs of one profile give the same latents.

    python bench/memory_profiles.py --json out.json --budgets 48,24,24:int8 --segments 3   # on the GPU
    python bench/memory_profiles.py --tiny                                         # CPU smoke test, forced placements
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan
from loguru import logger
from random_models import (
    A14B_CONFIG,
    TINY_OVERRIDES,
    build_text_encoder,
    build_transformer,
    fill_random,
    run_versions,
)
from safetensors.torch import save_file
from transformers import AutoTokenizer, UMT5Config

from Wan2GP.catalog import ModelDefinition, default_catalog_dir, load_catalog
from Wan2GP.conditioning import VaeCodec
from Wan2GP.engine import WanEngine
from Wan2GP.loading import LoadedModel, component_dtypes
from Wan2GP.model_folders import TRANSFORMER_SUBFOLDERS, tiny_model_folder
from Wan2GP.quantization import FAST_FORMAT, QUANTIZED_FORMATS, fp8_matmuls_available, quantize_transformer
from Wan2GP.tiny import ensure_tiny_model

GIB = 2**30
MODEL_ID = "bench_i2v_a14b"
BASE_DEFINITION = "wan_2_2_i2v_lightning_baseline_3_3"  # 6 euler steps, 3 phases, guidance 3/1/1, switch at phase 2
I2V_A14B = dict(A14B_CONFIG, in_channels=36, rope_max_seq_len=1024)
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"
)
TINY_TRANSFORMER = dict(I2V_A14B, **TINY_OVERRIDES, num_layers=2)
TINY_UMT5 = dict(UMT5_XXL, vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
LORA_RANK = 64
LORA_MODULES = [f"attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")] + [
    "ffn.net.0.proj",
    "ffn.net.2",
]


# ---------------------------------------------------------------------------------------------------------------------
# The model folder (configs only) and its definition


def write_model_folder(folder: Path, *, tiny: bool, cache_dir: Path) -> None:
    transformer = TINY_TRANSFORMER if tiny else I2V_A14B
    for subfolder in TRANSFORMER_SUBFOLDERS.values():
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
        config = dict(transformer, _class_name="WanTransformer3DModel", patch_size=list(transformer["patch_size"]))
        (folder / subfolder / "config.json").write_text(json.dumps(config))
    (folder / "vae").mkdir(exist_ok=True)
    vae_config = {"_class_name": "AutoencoderKLWan", **({"base_dim": 8} if tiny else {})}
    (folder / "vae" / "config.json").write_text(json.dumps(vae_config))
    UMT5Config(**(TINY_UMT5 if tiny else UMT5_XXL)).save_pretrained(folder / "text_encoder")
    # the tiny models' Unigram tokenizer: token ids only decide which rows of the random table are read
    tiny = ensure_tiny_model(tiny_model_folder(cache_dir, "wan_tiny_i2v_2_2"), "i2v_2_2", 2, 0)
    shutil.copytree(tiny / "tokenizer", folder / "tokenizer", dirs_exist_ok=True)


def write_definition(defaults_dir: Path, model_folder: Path) -> None:
    base = json.loads((default_catalog_dir() / f"{BASE_DEFINITION}.json").read_text())
    base["model"]["name"] = "Benchmark: Wan 2.2 I2V A14B, random weights"
    base["model"]["weights"] = {"local_dir": str(model_folder)}
    (defaults_dir / f"{MODEL_ID}.json").write_text(json.dumps(base))


def prepare_workdir(given: Path | None, *, prefix: str, tiny: bool) -> tuple[Path, Path, Path]:
    """A benchmark's working folder holding the benchmark model (configs only, `model/`), its definition
    (`defaults/`) and a model cache (`cache/`): (workdir, defaults_dir, cache_dir)."""
    workdir = given or Path(tempfile.mkdtemp(prefix=prefix))
    model_folder, defaults_dir, cache_dir = workdir / "model", workdir / "defaults", workdir / "cache"
    for folder in (model_folder, defaults_dir, cache_dir):
        folder.mkdir(parents=True, exist_ok=True)
    write_model_folder(model_folder, tiny=tiny, cache_dir=cache_dir)
    write_definition(defaults_dir, model_folder)
    return workdir, defaults_dir, cache_dir


class RandomComponents:
    """The engine's component_loader: random full-size components from a seed, each on the device its placement
    gives (offloaded parts in pinned host memory, built on the GPU and copied out)."""

    def __init__(self, *, tiny: bool, seed: int, build_device: torch.device) -> None:
        self.tiny, self.seed, self.build_device = tiny, seed, build_device
        self.cap: float | None = None  # the memory fraction to restore after building

    def __call__(
        self,
        definition: ModelDefinition,
        weights_dir: Path,
        device: torch.device,
        devices: Mapping[str, torch.device],
        transformer_weights: str,
    ) -> LoadedModel:
        if self.build_device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, self.build_device)
        try:
            transformers_by_expert = {
                expert: self.transformer(index, devices["transformer"], transformer_weights)
                for index, expert in enumerate(("high", "low"))
            }
            text_encoder = build_text_encoder(TINY_UMT5 if self.tiny else UMT5_XXL, self.build_device, self.seed + 2)
            # as from_pretrained ties them (transformers 5.23): one 2 GB token table, not two
            text_encoder.encoder.embed_tokens = text_encoder.shared
            text_encoder = to_device(text_encoder, devices["text_encoder"])
            vae = build_vae(weights_dir, self.build_device, self.seed + 3)
            vae = to_device(vae.to(component_dtypes(definition, device)[1]), devices["vae"])
        finally:
            if self.build_device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
                if self.cap is not None:
                    torch.cuda.set_per_process_memory_fraction(self.cap, self.build_device)
        transformer_dtype, vae_dtype, text_dtype = component_dtypes(definition, device)
        return LoadedModel(
            definition=definition,
            weights_dir=weights_dir,
            device=device,
            transformers=transformers_by_expert,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=AutoTokenizer.from_pretrained(weights_dir / "tokenizer"),
            transformer_dtype=transformer_dtype,
            vae_dtype=vae_dtype,
            text_dtype=text_dtype,
        )

    def transformer(self, index: int, target: torch.device, weights: str) -> torch.nn.Module:
        """One expert, quantized the way the engine's loader does it (Wan2GP.quantization) when `weights` says so."""
        module = build_transformer(TINY_TRANSFORMER if self.tiny else I2V_A14B, self.build_device, self.seed + index)
        if weights != "native" and not self.tiny:  # on the GPU it was built on, then where the placement wants it
            quantize_transformer(module, weights, work_device=self.build_device, keep_on=self.build_device)
        module = to_device(module, target)
        if weights != "native" and self.tiny:  # on the CPU: after the float32 cast, as the engine runs there
            quantize_transformer(module, weights, work_device=self.build_device, keep_on=target)
        return module


def build_vae(weights_dir: Path, device: torch.device, seed: int) -> AutoencoderKLWan:
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(weights_dir, subfolder="vae"))
    vae = vae.to_empty(device=device)
    fill_random(vae, torch.Generator(device=device).manual_seed(seed))
    return vae.float().eval().requires_grad_(False)


def to_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Where the placement wants it (offloaded parts to ordinary host memory: the engine page-locks them itself, as it
    does weights read from disk). Built on the CPU (--tiny): float32, as the engine runs there."""
    if all(tensor.device.type == "cpu" for tensor in module.parameters()):
        return module.float()
    return module.to(device)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def write_loras(folder: Path, *, tiny: bool, device: torch.device) -> list[Path]:
    """Two rank-64 LoRAs (diffusers/peft keys) on every attention and FFN Linear of every block, bf16."""
    config = TINY_TRANSFORMER if tiny else I2V_A14B
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    shapes = {"ffn.net.0.proj": (dim, config["ffn_dim"]), "ffn.net.2": (config["ffn_dim"], dim)}
    rank = 4 if tiny else LORA_RANK
    paths = []
    for index in range(2):
        generator = torch.Generator(device=device).manual_seed(100 + index)
        tensors = {}
        for block in range(config["num_layers"]):
            for module in LORA_MODULES:
                fan_in, fan_out = shapes.get(module, (dim, dim))
                prefix = f"transformer.blocks.{block}.{module}"
                down = torch.randn(rank, fan_in, generator=generator, device=device) / fan_in**0.5
                up = torch.randn(fan_out, rank, generator=generator, device=device) * (0.5 / rank**0.5)
                tensors[f"{prefix}.lora_A.weight"] = down.to(torch.bfloat16).cpu()
                tensors[f"{prefix}.lora_B.weight"] = up.to(torch.bfloat16).cpu()
        path = folder / f"bench_lora_{index}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


def write_keyframes(folder: Path, width: int, height: int) -> tuple[Path, Path]:
    y, x = np.mgrid[0:height, 0:width]
    start = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    end = np.ascontiguousarray(start[::-1, ::-1, ::-1])
    paths = folder / "start.png", folder / "end.png"
    PIL.Image.fromarray(start).save(paths[0])
    PIL.Image.fromarray(end).save(paths[1])
    return paths


def segment_params(
    *, width: int, height: int, frames: int, loras: Sequence[Path], keyframes: tuple[Path, Path]
) -> dict[str, Any]:
    return dict(
        model=MODEL_ID,
        prompt="a slow dolly shot through a sunlit greenhouse, leaves moving in the wind",
        resolution=f"{width}x{height}",
        video_length=frames,
        image_start=str(keyframes[0]),
        image_end=str(keyframes[1]),
        activated_loras=[str(path) for path in loras],
        loras_multipliers="0.75;1.0;0 0;0;1.0",
        seed=12345,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Measurements


def host_memory() -> dict[str, float]:
    """Process RSS and pinned host bytes (torch's host allocator), in GiB."""
    rss = 0.0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024 / GIB
    pinned = None
    if torch.cuda.is_available() and hasattr(torch.cuda, "host_memory_stats"):
        stats = torch.cuda.host_memory_stats()
        pinned = stats.get("allocated_bytes.current", stats.get("allocated_bytes", {}).get("current", 0)) / GIB
        reserved = stats.get("reserved_bytes.current", stats.get("segment.current", 0))
        return {"rss_gib": rss, "pinned_allocated_gib": pinned, "pinned_reserved_raw": reserved}
    return {"rss_gib": rss}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_profile(
    name: str,
    *,
    device: torch.device,
    catalog: Any,
    loader: RandomComponents,
    cache_dir: Path,
    params: dict[str, Any],
    segments: int,
    budget_gib: float | None,
    forced: str | None,
    reference: torch.Tensor | None,
    weights: str | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    cap = None
    if budget_gib is not None and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        cap = budget_gib * GIB / total
        torch.cuda.set_per_process_memory_fraction(cap, device)
    loader.cap = cap
    engine = WanEngine(
        device=str(device),
        cache_dir=cache_dir,
        catalog=catalog,
        placement=forced,
        transformer_weights=weights,
        component_loader=loader,
    )
    request = engine.resolve(params)
    started = time.perf_counter()
    engine.load(MODEL_ID, width=request.width, height=request.height, num_frames=request.num_frames)
    load_seconds = time.perf_counter() - started
    placement = engine.placement
    print(f"[{name}] {placement.describe()}, load {load_seconds:.1f} s, host {host_memory()}", flush=True)
    results = []
    latents = first = None
    for index in range(segments):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        started = time.perf_counter()
        rendered = engine.render(request)
        synchronize(device)
        wall = time.perf_counter() - started
        row = {
            "segment": index + 1,
            "engine_pinned_gib": engine.pinned_host_bytes / GIB,
            "seconds": wall,
            "timings": dict(rendered.timings),
            "forward_passes": dict(rendered.forward_passes),
            "host": host_memory(),
        }
        if device.type == "cuda":
            row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
        latents = rendered.latents.float().cpu()
        if reference is not None:
            row["latents_rel_error"] = float((latents - reference).norm() / reference.norm())
        if first is None:
            first = latents
        row["latents_rel_error_vs_first_segment"] = float((latents - first).norm() / first.norm())
        print(f"[{name}] segment {index + 1}: {json.dumps(row)}", flush=True)
        results.append(row)
    engine.unload()
    del engine
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    assert latents is not None and first is not None
    warm = [row["seconds"] for row in results[1:]] or [results[0]["seconds"]]
    summary = {
        "name": name,
        "budget_gib": budget_gib,
        "placement": placement.kind,
        "weights": placement.weights,
        "resident_blocks": placement.resident_blocks,
        "vae_tiling": placement.vae_tiling,
        "placement_needed_gib": placement.needed / GIB,
        "load_seconds": load_seconds,
        "warm_segment_seconds_median": statistics.median(warm),
        "segments": results,
        "host_after_unload": host_memory(),
    }
    return summary, first  # the first segment: the reference for the other profiles


def vae_tiling_check(
    device: torch.device, loader: RandomComponents, weights_dir: Path, latents: torch.Tensor
) -> dict[str, Any]:
    """The resident run's latents decoded whole and tiled (diffusers' default tiles) on the same random VAE."""
    vae = build_vae(weights_dir, device, loader.seed + 3)
    codec = VaeCodec(vae)
    out: dict[str, Any] = {}
    decoded = {}
    for tiled in (False, True):
        vae.enable_tiling() if tiled else vae.disable_tiling()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        started = time.perf_counter()
        with torch.inference_mode():
            decoded[tiled] = codec.decode(latents.to(device)).cpu()
        synchronize(device)
        key = "tiled" if tiled else "whole"
        out[f"{key}_seconds"] = time.perf_counter() - started
        if device.type == "cuda":
            out[f"{key}_peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    difference = (decoded[True] - decoded[False]).abs()
    out.update(
        max_abs_difference=float(difference.max()),
        mean_abs_difference=float(difference.mean()),
        mean_abs_pixel=float(decoded[False].abs().mean()),
        shape=list(decoded[False].shape),
    )
    return out


def one_forward_inputs(config: Any, device: torch.device, *, width: int, height: int, frames: int) -> dict[str, Any]:
    """Seeded inputs of one high-noise expert forward at the segment's size (latent with the image condition's
    channels, 512 text tokens, timestep 900), in the run dtype of `device`."""
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    generator = torch.Generator(device=device).manual_seed(7)
    latent = (config.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    return dict(
        hidden_states=torch.randn(1, *latent, generator=generator, device=device, dtype=dtype),
        timestep=torch.tensor([900.0], device=device),
        encoder_hidden_states=torch.randn(1, 512, config.text_dim, generator=generator, device=device, dtype=dtype),
        return_dict=False,
    )


def forward_check(
    device: torch.device, loader: RandomComponents, *, width: int, height: int, frames: int, repeats: int = 2
) -> dict[str, Any]:
    """One high-noise expert forward at the segment's size: 16-bit, then each 8-bit format on a copy of the same
    weights; seconds (best of `repeats`) and the relative error of the output against the 16-bit one."""
    transformer = loader.transformer(0, device, "native")
    inputs = one_forward_inputs(transformer.config, device, width=width, height=height, frames=frames)
    latent = inputs["hidden_states"].shape[1:]

    def timed(module: torch.nn.Module) -> tuple[torch.Tensor, float]:
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            with torch.inference_mode():
                output = module(**inputs)[0]
            synchronize(device)
            best = min(best, time.perf_counter() - started)
        return output.float(), best

    reference, seconds = timed(transformer)
    report: dict[str, Any] = {"tokens": latent[1] * latent[2] * latent[3] // 4, "native_seconds": seconds}
    # the fast path's fp8 activations only where torchao runs fp8 matmuls (not on the --tiny CPU run)
    for weights in [name for name in QUANTIZED_FORMATS if name != FAST_FORMAT or fp8_matmuls_available(device)]:
        quantized = copy.deepcopy(transformer)
        quantize_transformer(quantized, weights, work_device=device, keep_on=device)
        output, seconds = timed(quantized)
        report[weights] = {
            "seconds": seconds,
            "time_vs_native": seconds / report["native_seconds"],
            "rel_error": float((output - reference).norm() / reference.norm()),
        }
        del quantized, output
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("forward check:", json.dumps(report), flush=True)
    return report


def parse_profiles(budgets: str) -> list[tuple[str, float, str | None]]:
    """`48,24,24:int8` -> (name, budget GB, forced transformer weights or None for the definition's "auto")."""
    profiles = []
    for entry in filter(None, budgets.split(",")):
        budget, _, weights = entry.partition(":")
        if weights and weights not in QUANTIZED_FORMATS + ("native",):
            raise SystemExit(f"--budgets: {entry!r}: expected GB or GB:WEIGHTS with WEIGHTS native, int8 or fp8")
        profiles.append((f"{budget} GB{' ' + weights if weights else ''}", float(budget), weights or None))
    return profiles


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny dims, forced placements")
    parser.add_argument("--budgets", default="48,24", help="GB budgets after the resident run, e.g. 48,24")
    parser.add_argument("--segments", type=int, default=3, help="segments in a row per budget")
    parser.add_argument("--resident-segments", type=int, default=2, help="segments of the resident reference run")
    parser.add_argument("--size", default="768x576x53", help="WIDTHxHEIGHTxFRAMES")
    parser.add_argument("--forward-check", action="store_true", help="one forward in 16 and 8 bits: time, error")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args(argv)
    logger.remove()  # the engine's INFO lines (placement, loads), not every step's LoRA strengths
    logger.add(sys.stderr, level="INFO")
    # Deterministic cuDNN: without it an earlier run gave one profile's later segments latents 9.3e-3 apart from an
    # identical run's (bench/README.md), most likely other convolution algorithms in the float32 VAE.
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda:0")
    width, height, frames = (int(value) for value in args.size.split("x"))
    if args.tiny:
        width, height, frames = 64, 64, 9
    workdir, defaults_dir, cache_dir = prepare_workdir(args.workdir, prefix="memory_profiles_", tiny=args.tiny)
    model_folder = workdir / "model"
    catalog = load_catalog(extra_dirs=[defaults_dir])
    loras = write_loras(workdir, tiny=args.tiny, device=device)
    params = segment_params(
        width=width, height=height, frames=frames, loras=loras, keyframes=write_keyframes(workdir, width, height)
    )
    loader = RandomComponents(tiny=args.tiny, seed=0, build_device=device)
    common = dict(device=device, catalog=catalog, loader=loader, cache_dir=cache_dir, params=params)

    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/memory_profiles.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": run_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": [width, height, frames],
        "profiles": [],
    }
    resident, reference = run_profile(
        "resident", segments=args.resident_segments, budget_gib=None, forced=None, reference=None, **common
    )
    report["profiles"].append(resident)
    if args.tiny:
        others = [(placement, None, placement, None) for placement in ("offload_encoders", "stream_blocks")]
        others.append(("stream_blocks int8", None, "stream_blocks", "int8"))
    else:
        others = [(name, budget, None, weights) for name, budget, weights in parse_profiles(args.budgets)]
    for name, budget, forced, weights in others:
        summary, _ = run_profile(
            name,
            segments=args.segments,
            budget_gib=budget,
            forced=forced,
            weights=weights,
            reference=reference,
            **common,
        )
        summary["time_vs_resident"] = summary["warm_segment_seconds_median"] / resident["warm_segment_seconds_median"]
        report["profiles"].append(summary)
    report["vae_tiling"] = vae_tiling_check(device, loader, model_folder, reference)
    if args.forward_check or args.tiny:
        report["forward_check"] = forward_check(device, loader, width=width, height=height, frames=frames)

    print(
        "\nprofile | placement | warm segment s | x resident | peak alloc GiB | rss GiB | page-locked GiB"
        " | torch pinned GiB | rel err"
    )
    for profile in report["profiles"]:
        last = profile["segments"][-1]
        weights = f" {profile['weights']}" if profile["weights"] != "native" else ""
        print(
            f"{profile['name']} | {profile['placement']}{weights}{' +tiled VAE' if profile['vae_tiling'] else ''} | "
            f"{profile['warm_segment_seconds_median']:.2f} | {profile.get('time_vs_resident', 1.0):.3f} | "
            f"{last.get('peak_allocated_gib', float('nan')):.2f} | {last['host']['rss_gib']:.1f} | "
            f"{last['engine_pinned_gib']:.1f} | "
            f"{last['host'].get('pinned_allocated_gib') or float('nan'):.1f} | {last.get('latents_rel_error', 0.0):.2e}"
        )
    print("vae tiling:", json.dumps(report["vae_tiling"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
