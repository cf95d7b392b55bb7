"""Issue 18's measurements on one host with several GPUs: one segment over N GPUs with context parallelism, and a
run's segments spread one engine per GPU, each against one GPU, on the same random full-size weights.

The segment is memory_profiles' seed segment (Wan 2.2 I2V A14B, 768x576x53, start and end image, 6 euler steps,
guidance 3/1/1, two rank-64 LoRAs). Every process builds the same seed's random components on its own GPU
(memory_profiles.RandomComponents, the engine's component_loader), resident.

1. one GPU: `--segments` segments in a row through one WanEngine on GPU 0 (the first also loads): the reference
   latents of segment 1, the warm seconds per segment, and their sum for the run;
2. context parallelism: N ranks (torch.multiprocessing, NCCL; gloo on CPU processes with --tiny), the worker's
   `--context-parallel N` engines (ContextParallelLeader on rank 0, `follow` on the others); rank 0 renders segment 1
   twice: the warm seconds against one GPU's, and the latents' relative error against one GPU's;
3. one engine per GPU (what `--gpus all` runs: the queue hands each worker its own segments): N processes, each
   loads, waits for the others, then renders its share of the `--segments` segments (segment i on GPU i mod N); the
   run's seconds are from the common start to the last one done, against one GPU's sum.

    python bench/context_parallel.py --json out.json    # on a host with 2 or more GPUs (bench/device_bench.sh)
    python bench/context_parallel.py --tiny             # CPU smoke test: 2 CPU processes, tiny dims
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing
from loguru import logger
from memory_profiles import (
    MODEL_ID,
    RandomComponents,
    prepare_workdir,
    segment_params,
    synchronize,
    write_keyframes,
    write_loras,
)
from random_models import run_versions

from Wan2GP.catalog import load_catalog
from Wan2GP.context_parallel import (
    ContextParallelLeader,
    follow,
    start_rank_group,
    stop_followers,
    stop_rank_group,
    use_local_rendezvous,
)
from Wan2GP.engine import WanEngine


def _device(tiny: bool, index: int) -> torch.device:
    return torch.device("cpu") if tiny else torch.device("cuda", index)


def _engine(setup: dict[str, Any], device: torch.device, rank_group=None) -> WanEngine:
    return WanEngine(
        device=str(device),
        cache_dir=Path(setup["cache_dir"]),
        catalog=load_catalog(extra_dirs=[Path(setup["defaults_dir"])]),
        placement="resident",
        component_loader=RandomComponents(tiny=setup["tiny"], seed=0, build_device=device),
        rank_group=rank_group,
    )


def _segment(setup: dict[str, Any], index: int) -> dict[str, Any]:
    return dict(setup["params"], seed=setup["params"]["seed"] + index)


def _timed_render(engine: Any, params: dict[str, Any], device: torch.device) -> tuple[float, Any]:
    request = engine.resolve(params)
    synchronize(device)
    started = time.perf_counter()
    rendered = engine.render(request)
    synchronize(device)
    return time.perf_counter() - started, rendered


def one_gpu(setup: dict[str, Any]) -> dict[str, Any]:
    device = _device(setup["tiny"], 0)
    engine = _engine(setup, device)
    engine.load(MODEL_ID, width=setup["width"], height=setup["height"], num_frames=setup["frames"])
    seconds = []
    for index in range(setup["segments"]):
        elapsed, rendered = _timed_render(engine, _segment(setup, index), device)
        seconds.append(elapsed)
        if index == 0:
            torch.save(rendered.latents.float().cpu(), Path(setup["workdir"]) / "one_gpu_latents.pt")
        print(f"[one GPU] segment {index + 1}: {elapsed:.2f} s", flush=True)
    engine.unload()
    warm = seconds[1:] or seconds
    return {"segment_seconds": seconds, "warm_segment_seconds": min(warm), "run_seconds": sum(seconds)}


def _context_parallel_rank(rank: int, world_size: int, setup: dict[str, Any]) -> None:
    device = _device(setup["tiny"], rank)
    group = start_rank_group(rank, world_size, device)
    engine = _engine(setup, device, rank_group=group)
    engine.load(MODEL_ID, width=setup["width"], height=setup["height"], num_frames=setup["frames"])
    if rank == 0:
        leader = ContextParallelLeader(engine, group)
        seconds = []
        for _ in range(2):  # the same segment twice: the second is warm
            elapsed, rendered = _timed_render(leader, _segment(setup, 0), device)
            seconds.append(elapsed)
            print(f"[context parallel x{world_size}] segment 1: {elapsed:.2f} s", flush=True)
        torch.save(rendered.latents.float().cpu(), Path(setup["workdir"]) / "context_parallel_latents.pt")
        (Path(setup["workdir"]) / "context_parallel.json").write_text(json.dumps({"segment_seconds": seconds}))
        stop_followers()
    else:
        follow(engine, group)
    engine.unload()
    stop_rank_group()


def _fleet_worker(rank: int, world_size: int, setup: dict[str, Any], barrier: Any) -> None:
    device = _device(setup["tiny"], rank)
    engine = _engine(setup, device)
    engine.load(MODEL_ID, width=setup["width"], height=setup["height"], num_frames=setup["frames"])
    mine = [index for index in range(setup["segments"]) if index % world_size == rank]
    barrier.wait()  # every worker loaded: a --gpus fleet loads once, before its first task
    started = time.time()
    seconds = [_timed_render(engine, _segment(setup, index), device)[0] for index in mine]
    result = {"segments": mine, "seconds": seconds, "started": started, "finished": time.time()}
    (Path(setup["workdir"]) / f"fleet_{rank}.json").write_text(json.dumps(result))
    engine.unload()


def _spawn(function: Any, world_size: int, *args: Any) -> None:
    use_local_rendezvous()
    torch.multiprocessing.spawn(function, args=(world_size, *args), nprocs=world_size)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: 2 CPU processes, tiny dims, 64x64x9")
    parser.add_argument("--size", default="768x576x53", help="WIDTHxHEIGHTxFRAMES")
    parser.add_argument("--segments", type=int, default=4, help="segments of the run spread one engine per GPU")
    parser.add_argument("--gpus", type=int, help="default: every visible GPU")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    world_size = args.gpus or (2 if args.tiny else torch.cuda.device_count())
    if world_size < 2:
        raise SystemExit(f"needs 2 or more GPUs; this host has {torch.cuda.device_count()}")
    width, height, frames = (64, 64, 9) if args.tiny else (int(value) for value in args.size.split("x"))
    workdir, defaults_dir, cache_dir = prepare_workdir(args.workdir, prefix="context_parallel_", tiny=args.tiny)
    build = _device(args.tiny, 0)
    params = segment_params(
        width=width,
        height=height,
        frames=frames,
        loras=write_loras(workdir, tiny=args.tiny, device=build),
        keyframes=write_keyframes(workdir, width, height),
    )
    setup = dict(
        tiny=args.tiny,
        workdir=str(workdir),
        cache_dir=str(cache_dir),
        defaults_dir=str(defaults_dir),
        params=params,
        width=width,
        height=height,
        frames=frames,
        segments=args.segments,
    )
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/context_parallel.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": run_versions(),
        "device": torch.cuda.get_device_name(0) if not args.tiny else "cpu",
        "gpus": world_size,
        "size": [width, height, frames],
        "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
    }
    report["one_gpu"] = one_gpu(setup)

    _spawn(_context_parallel_rank, world_size, setup)
    split = json.loads((workdir / "context_parallel.json").read_text())
    reference = torch.load(workdir / "one_gpu_latents.pt")
    latents = torch.load(workdir / "context_parallel_latents.pt")
    split["warm_segment_seconds"] = split["segment_seconds"][-1]
    split["speedup_vs_one_gpu"] = report["one_gpu"]["warm_segment_seconds"] / split["warm_segment_seconds"]
    split["latents_rel_error_vs_one_gpu"] = float((latents - reference).norm() / reference.norm())
    report["context_parallel"] = split

    barrier = torch.multiprocessing.get_context("spawn").Barrier(world_size)
    _spawn(_fleet_worker, world_size, setup, barrier)
    workers = [json.loads((workdir / f"fleet_{rank}.json").read_text()) for rank in range(world_size)]
    run_seconds = max(worker["finished"] for worker in workers) - min(worker["started"] for worker in workers)
    report["engine_per_gpu"] = {
        "workers": workers,
        "run_seconds": run_seconds,
        "speedup_vs_one_gpu": report["one_gpu"]["run_seconds"] / run_seconds,
    }
    print(
        f"\none segment, warm: {report['one_gpu']['warm_segment_seconds']:.2f} s on one GPU, "
        f"{split['warm_segment_seconds']:.2f} s on {world_size} (x{split['speedup_vs_one_gpu']:.2f}), latents "
        f"{split['latents_rel_error_vs_one_gpu']:.2e} apart\n{args.segments} segments: "
        f"{report['one_gpu']['run_seconds']:.2f} s on one GPU, {run_seconds:.2f} s one engine per GPU "
        f"(x{report['engine_per_gpu']['speedup_vs_one_gpu']:.2f})"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
