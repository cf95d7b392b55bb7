"""`worker.py --context-parallel 2` as real processes on the CPU (gloo ranks, source/worker/ranks.py): the worker is
rank 0 and claims the task, a spawned rank 1 shares every forward; the video equals a one-process engine's, rank 0
stops rank 1 when it exits, and a rank that dies takes the worker down (it could not finish a generation without it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
import pytest
from loop_helpers import wait_until

from source.queue import TaskQueue, TaskStatus
from source.worker import SettingsError, settings_from_values
from source.worker.gpus import GpuWorkers, group_gpus
from source.worker.loop import EXIT_FATAL
from source.worker.ranks import torchrun_rank
from Wan2GP.engine import WanEngine
from Wan2GP.video_io import read_video

PARAMS = {"model": "wan_tiny_t2v", "prompt": "a red cat", "video_length": 13, "seed": 3, "guidance_scale": 3.0}


def _cp_worker(spawn_worker, url: str, model_cache: Path, *args: str, worker_id: str | None = None):
    return spawn_worker(
        url,
        "--device",
        "cpu",
        "--context-parallel",
        "2",
        "--model-cache-dir",
        str(model_cache),
        *args,
        worker_id=worker_id,
    )


def _follower(worker) -> psutil.Process:
    """Rank 1: the worker's spawned child that runs torch.multiprocessing's spawn entry point."""
    children = [
        child for child in psutil.Process(worker.process.pid).children() if "--multiprocessing-fork" in child.cmdline()
    ]
    assert len(children) == 1, [child.cmdline() for child in children]
    return children[0]


@pytest.mark.slow
def test_a_two_rank_worker_gives_the_video_one_process_gives(
    sqlite_queue: TaskQueue, sqlite_url: str, spawn_worker, model_cache: Path, tmp_path: Path
) -> None:
    reference = WanEngine(device="cpu", cache_dir=model_cache).generate(PARAMS, output_dir=tmp_path / "reference")
    task_id = sqlite_queue.enqueue("t2v", PARAMS)
    worker = _cp_worker(spawn_worker, sqlite_url, model_cache, "--once")
    assert worker.wait(timeout=240) == 0, worker.log_text()[-3000:]
    task = sqlite_queue.get(task_id)
    assert task.status is TaskStatus.COMPLETE, task.error_message
    split = read_video(Path(task.output_location)).frames
    assert split.shape == (13, 64, 64, 3)
    assert np.array_equal(split, read_video(reference.path).frames)
    messages = [record["message"] for record in worker.records()]
    assert "rank 1 of 2 on cpu: following rank 0" in messages and "rank 1: rank 0 stopped" in messages
    # the follower logs under its own id; only rank 0 claims
    assert {r["extra"]["worker_id"] for r in worker.records() if r["message"].startswith("rank 1")} == {
        f"{worker.worker_id}-rank1"
    }
    assert worker.claimed() == [task_id]


@pytest.mark.slow
def test_a_dead_rank_ends_the_worker(sqlite_queue: TaskQueue, sqlite_url: str, spawn_worker, model_cache: Path) -> None:
    """Rank 0 would wait for the dead rank in its next collective: it exits instead (SIGTERM to rank 0 ends both
    ranks the way --once does, through the same stop: the test above)."""
    orphaned = _cp_worker(spawn_worker, sqlite_url, model_cache, worker_id="orphaned")
    wait_until(lambda: "following rank 0" in orphaned.log_text(), timeout=60, what="rank 1 to start")
    _follower(orphaned).kill()
    assert orphaned.wait(timeout=30) == EXIT_FATAL, orphaned.log_text()[-3000:]
    assert "context-parallel rank 1 exited" in orphaned.log_text()


def test_gpus_are_grouped_per_context_parallel_worker() -> None:
    assert group_gpus(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
    assert group_gpus(["3", "1"], 1) == ["3", "1"]
    assert group_gpus(["4", "5", "6", "7"], 4) == ["4,5,6,7"]
    with pytest.raises(ValueError, match="selects 3 GPUs, which do not split into workers of --context-parallel 2"):
        group_gpus(["0", "1", "2"], 2)


def test_the_context_parallel_setting_is_bounded_and_takes_no_single_device(tmp_path: Path) -> None:
    base = {"db": f"sqlite:///{tmp_path / 'q.db'}"}
    assert settings_from_values(base, environ={}).context_parallel == 1
    assert settings_from_values(base, environ={"HW_CONTEXT_PARALLEL": "4"}).context_parallel == 4
    assert settings_from_values({**base, "context_parallel": 2, "device": "cpu"}, environ={}).device == "cpu"
    for bad in (0, 9):
        with pytest.raises(SettingsError, match=r"context_parallel \(--context-parallel, HW_CONTEXT_PARALLEL\)"):
            settings_from_values({**base, "context_parallel": bad}, environ={})
    with pytest.raises(SettingsError, match="uses the first 2 visible GPUs"):
        settings_from_values({**base, "context_parallel": 2, "device": "cuda:1"}, environ={})


def test_a_torchrun_rank_is_read_from_its_environment() -> None:
    assert torchrun_rank({}) is None
    assert torchrun_rank({"RANK": "1", "WORLD_SIZE": "2"}) is None
    assert torchrun_rank({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == (3, 1, 4)


def test_a_context_parallel_workers_id_names_its_gpus() -> None:
    workers = GpuWorkers(["0,1", "2,3"], base_worker_id="pod", command=lambda worker_id: [])
    assert [(child.gpu, child.worker_id) for child in workers.children] == [
        ("0,1", "pod-gpu0+1"),
        ("2,3", "pod-gpu2+3"),
    ]
