"""Context parallelism on CPU processes: two gloo ranks split every transformer forward of a tiny i2v generation with
diffusers' Ulysses attention (the same hooks and attention path NCCL runs on GPUs), and must give the latents one
process gives. The ranks run in a subprocess (context_parallel_ranks.py); the reference runs here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from context_parallel_ranks import MODEL, WORLD_SIZE, request_params
from engine_helpers import gradient_image

from Wan2GP.context_parallel import RankGroup, check_divisible
from Wan2GP.engine import WanEngine
from Wan2GP.request import InvalidGenerationParams

RANKS_SCRIPT = Path(__file__).with_name("context_parallel_ranks.py")


@pytest.fixture(scope="module")
def two_ranks(cache_dir: Path, engine: WanEngine, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("context_parallel")
    image = out / "start.png"
    gradient_image(64, 48).save(image)
    engine.load(MODEL)  # built here, once: the ranks then read a finished folder
    completed = subprocess.run(
        [sys.executable, str(RANKS_SCRIPT), str(cache_dir), str(out), str(image)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return {
        "image": str(image),
        "latents": torch.load(out / "latents.pt"),
        "ranks": [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)],
        "log": completed.stderr,
    }


def test_two_ranks_give_the_latents_of_one_process(two_ranks: dict, engine: WanEngine) -> None:
    reference = engine.render(engine.resolve(request_params(two_ranks["image"]))).latents
    split = two_ranks["latents"]
    assert split.shape == reference.shape
    error = ((split - reference).norm() / reference.norm()).item()
    assert error < 1e-5, f"relative error {error:.2e} between two ranks and one process"


def test_each_rank_attends_over_half_the_tokens(two_ranks: dict) -> None:
    # 64x48 -> an 8x6 latent grid, 2x2 patches: 12 tokens a latent frame, 3 latent frames for 9 frames -> 36 tokens
    for rank in two_ranks["ranks"]:
        assert rank["attention_tokens"] == [36 // WORLD_SIZE]


def test_a_token_count_that_does_not_split_is_refused_on_every_rank(two_ranks: dict) -> None:
    leader, follower = two_ranks["ranks"]
    refused = [error for error in leader["errors"] if error.startswith("InvalidGenerationParams")]
    assert len(refused) == 1 and "48x48x9 makes 27 transformer tokens" in refused[0]
    assert "generation failed (as on rank 0)" in two_ranks["log"] and "27 transformer tokens" in two_ranks["log"]
    assert follower["forwards_total"] == sum(leader["forwards_full"].values()) + leader["forwards_cancelled"], (
        "the refused request ran no forward on either rank"
    )


def test_a_cancel_on_rank_0_stops_every_rank_at_the_same_step(two_ranks: dict) -> None:
    leader, follower = two_ranks["ranks"]
    assert any(error.startswith("GenerationCancelled: cancelled before step 3/4") for error in leader["errors"])
    # guidance 3 on every step: two forwards a step, two steps before the cancel
    assert leader["forwards_cancelled"] == 4
    assert follower["forwards_total"] - sum(leader["forwards_full"].values()) == 4
    assert "rank 1: generation cancelled by rank 0" in two_ranks["log"]
    assert "rank 1: rank 0 stopped" in two_ranks["log"]


def test_check_divisible_names_the_resolution() -> None:
    group = RankGroup(rank=0, world_size=4, device=torch.device("cpu"), mesh=None)
    check_divisible((1, 16, 3, 6, 8), (1, 2, 2), group, width=64, height=48, num_frames=9)  # 3*3*4 = 36 tokens
    with pytest.raises(InvalidGenerationParams) as raised:
        check_divisible((1, 16, 3, 6, 6), (1, 2, 2), group, width=48, height=48, num_frames=9)  # 27 tokens
    assert tuple(raised.value.fields) == ("resolution",)
    assert "--context-parallel 4" in str(raised.value)
