"""A two-rank context-parallel run on CPU processes (gloo), for tests/engine/test_context_parallel.py.

`python context_parallel_ranks.py CACHE_DIR OUT_DIR IMAGE` is rank 0 and spawns rank 1. Each builds a WanEngine on
the group; rank 0 leads (ContextParallelLeader), rank 1 follows. They run, in order: a full i2v render (rank 0 saves
its latents), a request whose token count does not split over two ranks (refused on both, the group goes on), a
render cancelled by rank 0 after its second step, then rank 0 stops the follower. Each rank writes what it saw to
OUT_DIR/rank<r>.json: the sequence lengths its attention layers were given, its transformer forwards, its errors.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import torch
import torch.multiprocessing

from Wan2GP.context_parallel import (
    ContextParallelLeader,
    follow,
    start_rank_group,
    stop_followers,
    stop_rank_group,
    use_local_rendezvous,
)
from Wan2GP.engine import GenerationCancelled, ProgressEvent, WanEngine
from Wan2GP.request import InvalidGenerationParams

MODEL = "wan_tiny_i2v_2_2"
WORLD_SIZE = 2


def request_params(image: str, **overrides: object) -> dict:
    params = dict(
        model=MODEL,
        prompt="a lighthouse at dusk",
        image_start=image,
        resolution="64x48",
        video_length=9,
        num_inference_steps=4,
        guidance_scale=3.0,
        seed=11,
    )
    params.update(overrides)
    return params


def _record_attention(engine: WanEngine, seen: dict) -> None:
    for name, transformer in engine.load(MODEL, width=64, height=48, num_frames=9).transformers.items():
        seen["forwards"][name] = 0

        def count(_module, _args, name=name):
            seen["forwards"][name] += 1

        transformer.register_forward_pre_hook(count)
        attention = transformer.blocks[0].attn1

        def sequence(_module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            seen["attention_tokens"].add(int(hidden.shape[1]))

        attention.register_forward_pre_hook(sequence, with_kwargs=True)


def _rank(rank: int, cache_dir: str, out_dir: str, image: str) -> None:
    group = start_rank_group(rank, WORLD_SIZE, torch.device("cpu"))
    engine = WanEngine(device="cpu", cache_dir=Path(cache_dir), rank_group=group)
    seen: dict = {"attention_tokens": set(), "forwards": {}, "errors": []}
    _record_attention(engine, seen)
    if rank == 0:
        leader = ContextParallelLeader(engine, group)
        rendered = leader.render(leader.resolve(request_params(image)))
        torch.save(rendered.latents, Path(out_dir) / "latents.pt")
        seen["forwards_full"] = dict(seen["forwards"])
        try:
            leader.render(leader.resolve(request_params(image, resolution="48x48")))
        except InvalidGenerationParams as error:
            seen["errors"].append(f"InvalidGenerationParams: {error}")
        cancel = threading.Event()

        def cancel_after_second_step(event: ProgressEvent) -> None:
            if event.stage == "denoise" and event.step == 2:
                cancel.set()

        before = sum(seen["forwards"].values())
        try:
            leader.render(leader.resolve(request_params(image)), progress=cancel_after_second_step, cancel=cancel)
        except GenerationCancelled as error:
            seen["errors"].append(f"GenerationCancelled: {error}")
        seen["forwards_cancelled"] = sum(seen["forwards"].values()) - before
        stop_followers()
    else:
        follow(engine, group)
        # the follower's own view of the three generations: full, refused, cancelled
        seen["forwards_total"] = sum(seen["forwards"].values())
    seen["attention_tokens"] = sorted(seen["attention_tokens"])
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(seen))
    stop_rank_group()


def _follower(index: int, cache_dir: str, out_dir: str, image: str) -> None:
    _rank(index + 1, cache_dir, out_dir, image)


def main(cache_dir: str, out_dir: str, image: str) -> None:
    """Rank 0 here, rank 1 spawned (as the worker's launcher does it: one interpreter fewer to start)."""
    use_local_rendezvous()
    followers = torch.multiprocessing.start_processes(
        _follower, args=(cache_dir, out_dir, image), nprocs=WORLD_SIZE - 1, join=False, start_method="spawn"
    )
    _rank(0, cache_dir, out_dir, image)
    while not followers.join():
        pass


if __name__ == "__main__":
    main(*sys.argv[1:4])
