"""`python -m source.cli compare [--models A,B,C] [--output-dir DIR] [--tiny] [--repeat N]`: the baseline comparison
run. Every model generates from the same inputs (a prompt, a seed, and a guide and a mask video for VACE models or the
bundled keyframes for image-to-video ones, all made here), one after the other on one engine, as a GPU pod would.

Writes DIR/results.json (a status, the time, the frames, the forward passes and the peak memory per model and round),
one mp4 per model and DIR/contact_sheet.png (a row of frames per model). Exit status 0 only when every model
succeeded in every round. `--tiny` runs each model's architecture on its tiny random-weight model instead (anywhere,
in seconds); `--repeat N` runs the whole set N times and reports how much memory each round left behind.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from loguru import logger

from source.cli.catalog_args import catalog_from, catalog_options
from source.media.images import contact_sheet, evenly_spaced
from source.media.video import read_frames, write_frames
from Wan2GP.catalog import Catalog, CatalogError, ModelDefinition

# The seed's baseline set (test_model_comparison.py): Wan 2.1 VACE, the Wan 2.2 "fake VACE" cocktail, text-to-image.
DEFAULT_MODELS = ("vace_14B", "vace_14B_fake_cocktail_2_2", "optimised-t2i")
PROMPT = "a red kite flies over a green hill under a blue sky, the camera slowly follows it"
SEED = 20240611
REAL_RESOLUTION = "832x480"
REAL_FRAMES = 33
KEYFRAMES_DIR = Path(__file__).resolve().parents[1] / "assets" / "keyframes"
EXIT_FAILED = 1
_ERROR_CHARS = 2000


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "compare",
        parents=[catalog_options()],
        help="the baseline comparison: every model on the same inputs, results.json, videos and a contact sheet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        metavar="A,B,C",
        help=f"catalog model ids, comma-separated [default: {','.join(DEFAULT_MODELS)}]",
    )
    parser.add_argument("--output-dir", type=Path, metavar="DIR", help="[default: outputs/compare_<date-time>]")
    parser.add_argument("--tiny", action="store_true", help="run each model's architecture on its tiny model")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="run the set N times [default 1]")
    parser.add_argument(
        "--resolution", metavar="WxH", help=f"[default: {REAL_RESOLUTION}; with --tiny the tiny model's own]"
    )
    parser.add_argument("--frames", type=int, metavar="N", help=f"[default: {REAL_FRAMES}; with --tiny 9]")
    parser.add_argument("--device", metavar="DEV", help="torch device [default: cuda when available, else cpu]")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="the engine's cache [default: $WAN2GP_CACHE]")
    parser.add_argument("--lora-dir", type=Path, metavar="DIR", help="where built-in LoRAs are fetched to")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Inputs:
    """What every model of the run generates from."""

    prompt: str
    seed: int
    resolution: str | None  # None: each (tiny) model's own
    frames: int
    guide: Path
    mask: Path
    keyframes: tuple[Path, Path]

    def as_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "resolution": self.resolution,
            "frames": self.frames,
            "guide": str(self.guide),
            "mask": str(self.mask),
            "keyframes": [str(path) for path in self.keyframes],
        }


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        print(f"error: --repeat: expected a number >= 1, got {args.repeat}", file=sys.stderr)
        return 2
    requested = [name.strip() for name in args.models.split(",") if name.strip()]
    try:
        catalog = catalog_from(args)
        plan = [(name, _model_to_run(catalog, name, tiny=args.tiny)) for name in requested]
    except CatalogError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not plan:
        print("error: --models: expected at least one model id", file=sys.stderr)
        return 2
    out = args.output_dir or Path("outputs") / f"compare_{datetime.now():%Y%m%d_%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    logger.remove()  # this command reports through its own lines and the engine's progress bar
    logger.add(sys.stderr, level="INFO", format="{message}")

    from Wan2GP.engine import WanEngine  # torch: only for this command

    engine = WanEngine(device=args.device, cache_dir=args.cache_dir, catalog=catalog, lora_dir=args.lora_dir)
    size = args.resolution or (None if args.tiny else REAL_RESOLUTION)
    frames = args.frames or (9 if args.tiny else REAL_FRAMES)
    inputs = make_inputs(out / "inputs", size or _common_size(plan), frames)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    for round_index in range(1, args.repeat + 1):
        round_started = time.perf_counter()
        for position, (name, definition) in enumerate(plan, start=1):
            logger.info(f"compare: round {round_index}/{args.repeat}, model {position}/{len(plan)}: {name}")
            results.append(_generate(engine, name, definition, inputs, out, round_index, size, args.lora_dir))
        engine.unload()  # what stays allocated with no model loaded is what the round leaked
        rounds.append(
            {
                "round": round_index,
                "seconds": round(time.perf_counter() - round_started, 3),
                "memory_after_bytes": _memory_in_use(engine.device),
            }
        )
    first_round = [result for result in results if result["round"] == 1]
    sheet = _contact_sheet(first_round, out / "contact_sheet.png")
    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(engine.device),
        "tiny": args.tiny,
        "models": requested,
        "repeat": args.repeat,
        "inputs": inputs.as_json(),
        "results": results,
        "rounds": rounds,
        "memory_growth_bytes": rounds[-1]["memory_after_bytes"] - rounds[0]["memory_after_bytes"],
        "memory_kind": "cuda allocated" if engine.device.type == "cuda" else "process resident set",
        "contact_sheet": str(sheet) if sheet else None,
        "total_seconds": round(time.perf_counter() - started, 3),
        "all_ok": all(result["status"] == "ok" for result in results),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    for result in first_round:
        shown = f"{result['seconds']:.1f}s, {result['frames']} frames" if result["status"] == "ok" else result["error"]
        print(f"{result['model']}: {result['status']} ({shown})")
    print(f"results: {out / 'results.json'}")
    return 0 if report["all_ok"] else EXIT_FAILED


# ------------------------------------------------------------------------------------------------------ the parts


def _model_to_run(catalog: Catalog, name: str, *, tiny: bool) -> ModelDefinition:
    """The definition `name` runs as: itself, or with --tiny a tiny model of its architecture with as many experts;
    else one of its kind of conditioning with as many experts; else of its architecture; else of its kind."""
    definition = catalog.get(name, warn=False)
    if not tiny or definition.is_tiny:
        return definition
    tinies = [catalog.get(model_id) for model_id in catalog.ids() if catalog.get(model_id).is_tiny]
    for candidates in (
        [t for t in tinies if t.architecture == definition.architecture and t.experts == definition.experts],
        [t for t in tinies if t.spec.kind == definition.spec.kind and t.experts == definition.experts],
        [t for t in tinies if t.architecture == definition.architecture],
        [t for t in tinies if t.spec.kind == definition.spec.kind],
    ):
        if candidates:
            return candidates[0]
    raise CatalogError(f"model {name!r}: no tiny model of architecture {definition.architecture} in the catalog")


def _common_size(plan: list[tuple[str, ModelDefinition]]) -> str:
    """One size every (tiny) model of the run generates at: the largest of their own defaults."""
    width, height = max((definition.default_resolution() for _, definition in plan), key=lambda wh: wh[0] * wh[1])
    return f"{width}x{height}"


def make_inputs(folder: Path, size: str, frames: int) -> Inputs:
    """The guide video (a bright disc crossing a colour gradient), the mask video (white = generate: a box over the
    middle; black = keep the guide) and the first and last bundled keyframes."""
    from Wan2GP.limits import parse_resolution, snap_resolution

    width, height = snap_resolution(*parse_resolution(size))
    folder.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:height, 0:width]
    guide = np.empty((frames, height, width, 3), dtype=np.uint8)
    for index in range(frames):
        progress = index / max(1, frames - 1)
        guide[index, ..., 0] = (xs * 255 // max(1, width - 1)).astype(np.uint8)
        guide[index, ..., 1] = (ys * 255 // max(1, height - 1)).astype(np.uint8)
        guide[index, ..., 2] = int(255 * progress)
        centre_x, centre_y, radius = width * (0.15 + 0.7 * progress), height / 2, max(2.0, min(width, height) / 6)
        guide[index][(xs - centre_x) ** 2 + (ys - centre_y) ** 2 <= radius**2] = (255, 255, 255)
    mask = np.zeros_like(guide)
    mask[:, height // 4 : height - height // 4, width // 4 : width - width // 4] = 255
    guide_path, mask_path = folder / "guide.mp4", folder / "mask.mp4"
    write_frames(guide, guide_path, fps=16, lossless_rgb=True)
    write_frames(mask, mask_path, fps=16, lossless_rgb=True)
    keyframes = sorted(KEYFRAMES_DIR.glob("*.png"))
    return Inputs(PROMPT, SEED, size, frames, guide_path, mask_path, (keyframes[0], keyframes[-1]))


def _generate(
    engine: Any,
    name: str,
    definition: ModelDefinition,
    inputs: Inputs,
    out: Path,
    round_index: int,
    size: str | None,
    lora_dir: Path | None,
) -> dict[str, Any]:
    import torch

    params: dict[str, Any] = {
        "model": definition.id,
        "prompt": inputs.prompt,
        "seed": inputs.seed,
        "video_length": inputs.frames,
        "output_filename": name if round_index == 1 else f"{name}_round{round_index}",
    }
    if size:
        params["resolution"] = size
    if definition.is_vace:
        params.update(video_guide=str(inputs.guide), video_mask=str(inputs.mask), video_prompt_type="VM")
    if definition.spec.takes_start_image:
        params["image_start"] = str(inputs.keyframes[0])
    if definition.spec.takes_end_image:
        params["image_end"] = str(inputs.keyframes[1])
    result: dict[str, Any] = {"model": name, "ran_as": definition.id, "round": round_index, "status": "failed"}
    result |= {"error": None, "seconds": None, "frames": None, "width": None, "height": None}
    result |= {"forward_passes": None, "peak_memory_bytes": None, "output": None}
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    started = time.perf_counter()
    try:
        if definition.loras:
            params["builtin_lora_files"] = [str(path) for path in _fetch_builtin_loras(definition, lora_dir, engine)]
        generated = engine.generate(params, output_dir=out)
    except Exception as error:  # one model failing is a result of the comparison, not the end of it
        result["error"] = f"{type(error).__name__}: {error}"[:_ERROR_CHARS]
        result["seconds"] = round(time.perf_counter() - started, 3)
        logger.error(f"compare: {name} failed: {result['error']}")
        return result
    result |= {
        "status": "ok",
        "seconds": round(time.perf_counter() - started, 3),
        "frames": generated.frames,
        "width": generated.width,
        "height": generated.height,
        "forward_passes": generated.forward_passes,
        "peak_memory_bytes": _peak_memory(engine.device),
        "output": str(generated.path),
    }
    return result


def _fetch_builtin_loras(definition: ModelDefinition, lora_dir: Path | None, engine: Any) -> list[Path]:
    """The definition's built-in LoRAs (usually Hub URLs) through the worker's LoRA store, with the worker's caps."""
    from source.storage.downloads import DownloadLimits, hub_endpoint_host
    from source.storage.lora_store import LoraStore
    from source.storage.network import NetworkPolicy
    from source.worker.settings import WorkerSettings

    store = LoraStore(
        lora_dir or engine.lora_dir,
        limits=DownloadLimits(
            max_bytes=int(WorkerSettings.max_lora_mb * 1024 * 1024),
            total_seconds=WorkerSettings.download_seconds,
            stall_seconds=WorkerSettings.stall_seconds,
        ),
        network=NetworkPolicy(trusted_hosts=frozenset(host for host in (hub_endpoint_host(),) if host)),
    )
    return [store.fetch(source) for source in definition.loras]


def _peak_memory(device: Any) -> int:
    """CUDA: the peak allocated since this model started. CPU: the process's peak resident set so far (Linux: KiB)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _memory_in_use(device: Any) -> int:
    """CUDA: bytes allocated now. CPU: the resident set now (/proc/self/statm), after a garbage collection."""
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
        return int(torch.cuda.memory_allocated(device))
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return resident_pages * resource.getpagesize()


def _contact_sheet(results: list[dict[str, Any]], out: Path, samples: int = 6) -> Path | None:
    rows, labels = [], []
    for result in results:
        if result["status"] != "ok":
            continue
        frames = read_frames(Path(result["output"]))
        rows.append([PIL.Image.fromarray(frame) for frame in evenly_spaced(frames, samples)])
        labels.append(result["model"])
    return contact_sheet(rows, out, height=96, labels=labels) if rows else None
